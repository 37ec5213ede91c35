//! `cargo xtask test`: unit tests of every crate, then every end-to-end file (each test
//! with its own agent and peers), never stopping at the first red file, and one summary
//! line `N passed, N failed, N skipped` over all of them.
//!
//! libtest has no runtime skip: a test that cannot run returns early and would count as
//! passed. So a skipping test appends one line to the file named by `OBSERVER_SKIP_LOG`
//! (the harness does it in `e2e::skip`); here those lines move from "passed" to "skipped".

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

/// Totals over every test binary.
#[derive(Default, Debug, PartialEq, Eq, Clone, Copy)]
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

impl Totals {
    /// Add one libtest `test result:` line; other lines are ignored.
    pub fn add_line(&mut self, line: &str) -> bool {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return false;
        };
        let count = |what: &str| -> u64 {
            rest.split(';')
                .find_map(|part| {
                    let part = part.trim();
                    let part = part.rsplit(". ").next().unwrap_or(part);
                    part.strip_suffix(what)?.trim().parse().ok()
                })
                .unwrap_or(0)
        };
        self.passed += count(" passed");
        self.failed += count(" failed");
        self.ignored += count(" ignored");
        true
    }
}

/// Run a `cargo test` command, echoing its output, and add its test results to
/// `totals`. Returns whether cargo itself succeeded (a build error fails with no result
/// line).
pub fn cargo_tests(mut cmd: Command, totals: &mut Totals) -> Result<bool> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo output")?;
        totals.add_line(&line);
        let _ = writeln!(out, "{line}");
    }
    drop(out);
    Ok(child.wait()?.success())
}

/// Skip records written by tests: one line each.
pub fn read_skips(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

/// The final line. Skips were counted as passed by libtest; ignored tests are skips too.
pub fn summary(totals: Totals, skips: usize) -> (u64, u64, u64) {
    let skips = skips as u64;
    (
        totals.passed.saturating_sub(skips),
        totals.failed,
        skips + totals.ignored,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_are_summed() {
        let mut t = Totals::default();
        assert!(t.add_line(
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; \
             finished in 0.01s"
        ));
        assert!(t.add_line(
            "test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 5 filtered out; \
             finished in 9.50s"
        ));
        assert!(!t.add_line("test foo ... ok"));
        assert!(!t.add_line("running 3 tests"));
        assert_eq!(
            t,
            Totals {
                passed: 15,
                failed: 2,
                ignored: 1
            }
        );
        assert_eq!(summary(t, 4), (11, 2, 5));
    }

    #[test]
    fn skip_log_lines() {
        let path = std::env::temp_dir().join(format!("xtask-skips-{}", std::process::id()));
        std::fs::write(&path, "a: no nginx\n\nb: not root\n").unwrap();
        assert_eq!(read_skips(&path), vec!["a: no nginx", "b: not root"]);
        std::fs::remove_file(&path).unwrap();
        assert!(read_skips(&path).is_empty());
    }
}
