//! `cargo xtask bench startup`: how long from spawning the agent until it is attached
//! (its "attached N of M probes" log line) and healthy (`/healthz` says ok), with the TLS
//! scan off (`[tls] enabled = false`: no library or process is looked at) and on (the
//! default: the system libssl and every running program are looked at for TLS code). The
//! median of several starts, each from a fresh process.

use std::{
    io::BufRead as _,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::bench::{http_get, AGENT_PORT};

/// The goal for a start without the TLS scan.
const GOAL: Duration = Duration::from_secs(1);

/// One start, times from the spawn.
struct Start {
    /// The "attached N of M probes" line, and its N and M.
    attached: Option<(Duration, u32, u32)>,
    /// The TLS attachment's summary line ("tls: ...").
    tls: Option<Duration>,
    healthy: Duration,
}

/// `(N, M)` of a log line saying "attached N of M probes".
fn attached_counts(line: &str) -> Option<(u32, u32)> {
    let rest = &line[line.find("attached ")? + "attached ".len()..];
    let (n, rest) = rest.split_once(" of ")?;
    let (m, rest) = rest.split_once(' ')?;
    rest.starts_with("probes")
        .then(|| Some((n.parse().ok()?, m.parse().ok()?)))?
}

fn start_once(bin: &Path, config: Option<&Path>) -> Result<Start> {
    let spawned = Instant::now();
    let mut cmd = Command::new(bin);
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{AGENT_PORT}"),
        "--log-level",
        "info",
    ]);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the agent")?;
    let stderr = child.stderr.take().context("agent stderr")?;
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send((spawned.elapsed(), line)).is_err() {
                break;
            }
        }
    });
    let healthy = loop {
        if http_get(AGENT_PORT, "/healthz").is_ok_and(|b| b.contains("\"ok\"")) {
            break Ok(spawned.elapsed());
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(anyhow::anyhow!("agent exited early: {status}"));
        }
        if spawned.elapsed() > Duration::from_secs(30) {
            break Err(anyhow::anyhow!("agent not healthy after 30 s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // SAFETY: kill(2) on our own child; SIGINT lets the agent detach cleanly.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    let _ = reader.join();
    let lines: Vec<(Duration, String)> = rx.try_iter().collect();
    let healthy = healthy.with_context(|| {
        let log: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
        format!("agent log:\n{}", log.join("\n"))
    })?;
    Ok(Start {
        attached: lines
            .iter()
            .find_map(|(t, l)| attached_counts(l).map(|(n, m)| (*t, n, m))),
        tls: lines
            .iter()
            .find(|(_, l)| l.contains("tls: "))
            .map(|(t, _)| *t),
        healthy,
    })
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

pub fn run(bin: &Path, runs: usize) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the agent loads eBPF programs: run the startup benchmark as root");
    }
    let dir = std::env::temp_dir().join(format!("observer-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let off = dir.join("tls-off.toml");
    std::fs::write(&off, "[tls]\nenabled = false\n")?;
    let variants: [(&str, Option<&Path>); 2] = [
        ("TLS scan off ([tls] enabled = false)", Some(&off)),
        ("TLS scan on (default)", None),
    ];
    let mut result = Ok(());
    println!("startup (spawn -> attached -> /healthz ok), median of {runs} starts:");
    for (label, config) in variants {
        let mut starts = Vec::new();
        for _ in 0..runs.max(1) {
            match start_once(bin, config) {
                Ok(s) => starts.push(s),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if starts.is_empty() {
            break;
        }
        let healthy: Vec<Duration> = starts.iter().map(|s| s.healthy).collect();
        let (lo, hi) = (
            healthy.iter().min().copied().unwrap_or_default(),
            healthy.iter().max().copied().unwrap_or_default(),
        );
        let healthy = median(healthy).unwrap_or_default();
        let attached = median(
            starts
                .iter()
                .filter_map(|s| s.attached.map(|a| a.0))
                .collect(),
        );
        let probes = starts.iter().find_map(|s| s.attached.map(|a| (a.1, a.2)));
        let tls = median(starts.iter().filter_map(|s| s.tls).collect());
        println!("  {label}:");
        if let (Some(t), Some((n, m))) = (attached, probes) {
            println!("    attached {n} of {m} probes after {}", ms(t));
        }
        if let Some(t) = tls.filter(|_| config.is_none()) {
            println!("    TLS scan done after {}", ms(t));
        }
        let goal = if config.is_some() {
            format!(
                "   (goal <= {}: {})",
                ms(GOAL),
                if healthy <= GOAL { "met" } else { "NOT met" }
            )
        } else {
            String::new()
        };
        println!(
            "    healthy after {} (min {}, max {}){goal}",
            ms(healthy),
            ms(lo),
            ms(hi)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attached_line() {
        let line = "\u{1b}[2m2025-06-03T10:00:00.123Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \
                    observer::agent: attached 27 of 27 probes";
        assert_eq!(attached_counts(line), Some((27, 27)));
        assert_eq!(attached_counts("attached 3 of 5 probes"), Some((3, 5)));
        assert_eq!(
            attached_counts("tls: 1 target(s) attached, 0 could not"),
            None
        );
        assert_eq!(attached_counts("attached x of 5 probes"), None);
    }
}
