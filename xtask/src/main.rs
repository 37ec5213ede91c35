//! `cargo xtask`: installs the toolchain parts the eBPF build needs, then drives run,
//! test and bench. The build itself is plain cargo (the agent's build.rs builds the
//! kernel object), so xtask is not a second build system.

mod bench;
mod downstream;
mod fleet;
mod floor;
mod memory;
mod peers;
mod startup;
mod testrun;
mod toolchain;
mod verdicts;

use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the eBPF build needs (nightly rust-src, bpf-linker) and, as root on
    /// Debian, the test peers; idempotent.
    Setup,
    /// Build the agent (release) with its eBPF object.
    Build,
    /// Build and run the agent as root; extra arguments go to the agent.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests, then the end-to-end tests against the real kernel.
    /// Installs missing test peers (root on Debian); ends with `N passed, N failed, N
    /// skipped` and fails on any skip unless `--allow-skips`.
    Test {
        /// Accept skipped tests (missing peers, not root) instead of failing the run.
        #[arg(long)]
        allow_skips: bool,
        /// Extra arguments for the test binaries (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// `cargo fmt --check` and `cargo clippy --all-targets -D warnings` on the workspace.
    Lint,
    /// Benchmarks, measured side by side in one run.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => {
            toolchain::ensure()?;
            peers::ensure(false)?;
        }
        Cmd::Build => {
            let env = toolchain::ensure()?;
            build(&env)?;
        }
        Cmd::Run { args } => {
            let env = toolchain::ensure()?;
            build(&env)?;
            let args = if args.is_empty() {
                vec!["--exchanges-jsonl".to_string(), "-".to_string()]
            } else {
                args
            };
            let status = Command::new(workspace_root().join("target/release/observer"))
                .args(&args)
                .status()
                .context("starting the agent")?;
            if !status.success() {
                bail!("observer exited with {status}");
            }
        }
        Cmd::Test { allow_skips, args } => {
            let env = toolchain::ensure()?;
            peers::ensure(allow_skips)?;
            // SAFETY: geteuid has no preconditions.
            if unsafe { libc::geteuid() } != 0 && !allow_skips {
                bail!(
                    "the end-to-end tests load eBPF programs and need root: run \
                     `sudo -E cargo xtask test` (or --allow-skips to count them as skipped)"
                );
            }
            build(&env)?;
            std::process::exit(test(&env, allow_skips, &args)?);
        }
        Cmd::Lint => {
            let env = toolchain::ensure()?;
            cargo(&env, &["fmt", "--all", "--check"], &[])?;
            cargo(
                &env,
                &[
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "observer-ebpf",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
                &[],
            )?;
        }
        Cmd::Bench { which } => {
            let env = toolchain::ensure()?;
            build(&env)?;
            bench::run(which, &workspace_root().join("target/release/observer"))?;
        }
    }
    Ok(())
}

/// Unit tests, then every end-to-end file; prints the summary line last and returns the
/// exit code.
fn test(env: &toolchain::Env, allow_skips: bool, args: &[String]) -> Result<i32> {
    let root = workspace_root();
    let skip_log = root.join("target/xtask-test-skips.log");
    let _ = std::fs::remove_file(&skip_log);
    let bin = root.join("target/release/observer");
    let test_env = [
        ("OBSERVER_SKIP_LOG", skip_log.to_str().unwrap_or_default()),
        ("OBSERVER_BIN", bin.to_str().unwrap_or_default()),
    ];
    let mut totals = testrun::Totals::default();
    let mut cargo_ok = true;
    // Unit tests of every crate (no root needed).
    let unit = [
        "test",
        "--workspace",
        "--exclude",
        "e2e",
        "--exclude",
        "observer-ebpf",
        "--no-fail-fast",
    ];
    cargo_ok &= testrun::cargo_tests(cargo_command(env, &unit, &test_env), &mut totals)?;
    // End-to-end tests: every file, one test at a time (each with its own agent and
    // servers), none stopping the others.
    let mut e2e = vec![
        "test",
        "--package",
        "e2e",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ];
    e2e.extend(args.iter().map(String::as_str));
    cargo_ok &= testrun::cargo_tests(cargo_command(env, &e2e, &test_env), &mut totals)?;

    let skips = testrun::read_skips(&skip_log);
    for s in &skips {
        println!("skipped: {s}");
    }
    let (passed, failed, skipped) = testrun::summary(totals, skips.len());
    let ok = cargo_ok && failed == 0 && (skipped == 0 || allow_skips);
    if !cargo_ok && failed == 0 {
        println!("cargo test failed before reporting results (build error?)");
    }
    if skipped > 0 && !allow_skips {
        println!("skipped tests fail the run (pass --allow-skips to accept them)");
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    Ok(if ok { 0 } else { 1 })
}

fn build(env: &toolchain::Env) -> Result<()> {
    cargo(env, &["build", "--release", "--package", "observer"], &[])
}

/// `cargo <args>` at the workspace root with the toolchain's PATH and `extra_env`.
fn cargo_command(env: &toolchain::Env, args: &[&str], extra_env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args)
        .current_dir(workspace_root())
        .env("PATH", &env.path);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd
}

fn cargo(env: &toolchain::Env, args: &[&str], extra_env: &[(&str, &str)]) -> Result<()> {
    let status = cargo_command(env, args, extra_env)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}
