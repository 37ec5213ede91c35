//! `cargo xtask`: installs the toolchain parts the eBPF build needs, then drives run,
//! test and bench. The build itself is plain cargo (the agent's build.rs builds the
//! kernel object), so xtask is not a second build system.

mod bench;
mod toolchain;

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
    /// Install what the eBPF build needs (nightly rust-src, bpf-linker); idempotent.
    Setup,
    /// Build the agent (release) with its eBPF object.
    Build,
    /// Build and run the agent as root; extra arguments go to the agent.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests, then the end-to-end tests against the real kernel.
    Test {
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
        Cmd::Test { args } => {
            let env = toolchain::ensure()?;
            build(&env)?;
            // Unit tests of every crate (no root needed).
            cargo(
                &env,
                &[
                    "test",
                    "--workspace",
                    "--exclude",
                    "e2e",
                    "--exclude",
                    "observer-ebpf",
                ],
                &[],
            )?;
            // End-to-end tests: one at a time, each with its own agent and servers.
            let bin = workspace_root().join("target/release/observer");
            let mut e2e = vec!["test", "--package", "e2e", "--", "--test-threads=1"];
            e2e.extend(args.iter().map(String::as_str));
            cargo(
                &env,
                &e2e,
                &[("OBSERVER_BIN", bin.to_str().unwrap_or_default())],
            )?;
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

fn build(env: &toolchain::Env) -> Result<()> {
    cargo(env, &["build", "--release", "--package", "observer"], &[])
}

fn cargo(env: &toolchain::Env, args: &[&str], extra_env: &[(&str, &str)]) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args)
        .current_dir(workspace_root())
        .env("PATH", &env.path);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let status = cmd
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
