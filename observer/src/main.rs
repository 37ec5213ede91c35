//! observer: an eBPF API traffic observer. `main` only wires the CLI to the modules.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use observer::{
    agent,
    cli::{self, sessions::CredentialAction},
    config::{Config, DEFAULT_CONTROL_SOCKET},
};

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
    /// Print the session table of a running agent, riskiest first.
    Sessions {
        /// The agent's HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        agent: String,
        /// Only sessions in this state (healthy, suspicious, unhealthy).
        #[arg(long)]
        state: Option<String>,
        /// inbound (APIs this host serves) or outbound (APIs it calls).
        #[arg(long)]
        direction: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        /// Print the JSON the agent returned instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print what the agent collects, its precision, retention and current counts.
    Privacy {
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        agent: String,
    },
    /// Freeze a credential: any later use of it makes its session unhealthy. By
    /// fingerprint (`tok_…`), or by the credential itself with `--credential -` (read
    /// from stdin, sent only over the control socket).
    Freeze {
        #[arg(required_unless_present = "credential", conflicts_with = "credential")]
        fingerprint: Option<String>,
        #[command(flatten)]
        credential: CredentialArgs,
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        agent: String,
    },
    /// Unfreeze a credential: by fingerprint, durable id (`frz_…`) or `--credential -`.
    Unfreeze {
        #[arg(required_unless_present = "credential", conflicts_with = "credential")]
        fingerprint: Option<String>,
        #[command(flatten)]
        credential: CredentialArgs,
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        agent: String,
    },
    /// Find the sessions of a credential given on stdin (`--credential -`): one line, a
    /// bare value, `Bearer xyz`, `Basic base64` or `user:password`.
    Lookup {
        #[command(flatten)]
        credential: CredentialArgs,
    },
}

#[derive(clap::Args, Debug)]
struct CredentialArgs {
    /// `-`: read the raw credential from stdin (one line).
    #[arg(long, value_name = "-")]
    credential: Option<String>,
    /// The agent's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    socket: PathBuf,
    /// Print the JSON the agent returned.
    #[arg(long)]
    json: bool,
}

impl CredentialArgs {
    fn run(&self, action: CredentialAction) -> anyhow::Result<()> {
        let arg = self.credential.as_deref().unwrap_or_default();
        cli::sessions::check_credential_arg(arg)?;
        cli::sessions::credential(&self.socket, action, self.json)
    }
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
    /// Client addresses in sessions and outputs: full, truncate (default) or drop.
    #[arg(long, value_parser = ["full", "truncate", "drop"])]
    client_ip: Option<String>,
    /// Unix socket of the local control channel (empty: none).
    #[arg(long)]
    control_socket: Option<PathBuf>,
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
        if let Some(mode) = &self.client_ip {
            config.sessions.client_ip =
                serde_json::from_value(serde_json::json!(mode)).context("--client-ip")?;
        }
        if let Some(path) = &self.control_socket {
            config.control_socket = path.clone();
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
        Some(Command::Sessions {
            agent,
            state,
            direction,
            limit,
            json,
        }) => {
            let mut query = Vec::new();
            if let Some(s) = state {
                query.push(format!("state={s}"));
            }
            if let Some(d) = direction {
                query.push(format!("direction={d}"));
            }
            if let Some(l) = limit {
                query.push(format!("limit={l}"));
            }
            cli::sessions::list(&agent, &query.join("&"), json)
        }
        Some(Command::Privacy { agent }) => cli::sessions::privacy(&agent),
        Some(Command::Freeze {
            fingerprint,
            credential,
            agent,
        }) => match fingerprint {
            Some(fp) => cli::sessions::freeze(&agent, &fp, true),
            None => credential.run(CredentialAction::Freeze),
        },
        Some(Command::Unfreeze {
            fingerprint,
            credential,
            agent,
        }) => match fingerprint {
            Some(fp) => cli::sessions::freeze(&agent, &fp, false),
            None => credential.run(CredentialAction::Unfreeze),
        },
        Some(Command::Lookup { credential }) => {
            if credential.credential.is_none() {
                anyhow::bail!("observer lookup needs --credential - (the credential on stdin)");
            }
            credential.run(CredentialAction::Lookup)
        }
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
