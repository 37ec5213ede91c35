//! observer: an eBPF API traffic observer. `main` only wires the CLI to the modules.

mod agent;
mod capture;
mod config;
mod conn;
mod exchange;
mod export;
mod http;

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use config::Config;

#[derive(Parser, Debug)]
#[command(name = "observer", version, about = "eBPF API traffic observer")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent (the default).
    Run(RunArgs),
}

#[derive(clap::Args, Debug, Default)]
struct RunArgs {
    /// TOML configuration file (see deploy/observer.toml).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Address of the HTTP endpoint (/metrics, /healthz, JSON API).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Bytes captured from each read/write (1..=8192).
    #[arg(long)]
    capture_bytes: Option<u32>,
    /// Write every exchange as a JSON line to this file (`-` for stdout).
    #[arg(long)]
    exchanges_jsonl: Option<String>,
    /// Log filter (error, warn, info, debug, trace or a tracing directive).
    #[arg(long, default_value = "info", env = "OBSERVER_LOG")]
    log_level: String,
}

impl RunArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(n) = self.capture_bytes {
            config.capture.capture_bytes = n;
        }
        if let Some(target) = &self.exchanges_jsonl {
            config.output.exchanges_jsonl = Some(target.clone());
        }
        config.validate()?;
        Ok(config)
    }
}

fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("bad log filter {filter:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Run(args)) => run(args),
        None => run(cli.run),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(&args.log_level)?;
    let config = args.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(agent::run(config))
}
