//! observer: an eBPF API traffic observer. `main` only wires the CLI to the modules.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use observer::{
    agent,
    cli::{
        self,
        client::{Target, TlsFiles},
        sessions::CredentialAction,
    },
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
        #[command(flatten)]
        to: ControlArgs,
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
        /// The fleet-wide list (every node's sessions, from the fleet store).
        #[arg(long)]
        fleet: bool,
    },
    /// Print what the agent collects, its precision, retention and current counts.
    Privacy {
        #[command(flatten)]
        to: ControlArgs,
    },
    /// Print the facts found about the APIs (credentials in plaintext or in query strings).
    Findings {
        #[command(flatten)]
        to: ControlArgs,
    },
    /// Freeze a credential: any later use of it makes its session unhealthy. By
    /// fingerprint (`tok_…`), or by the credential itself with `--credential -` (read
    /// from stdin).
    Freeze {
        #[arg(required_unless_present = "credential", conflicts_with = "credential")]
        fingerprint: Option<String>,
        #[command(flatten)]
        credential: CredentialArgs,
    },
    /// Unfreeze a credential: by fingerprint, durable id (`frz_…`) or `--credential -`.
    Unfreeze {
        #[arg(required_unless_present = "credential", conflicts_with = "credential")]
        fingerprint: Option<String>,
        #[command(flatten)]
        credential: CredentialArgs,
    },
    /// Find the sessions of a credential given on stdin (`--credential -`): one line, a
    /// bare value, `Bearer xyz`, `Basic base64` or `user:password`.
    Lookup {
        #[command(flatten)]
        credential: CredentialArgs,
    },
    /// Measurements for `cargo xtask bench` (no kernel needed).
    #[command(hide = true)]
    Bench {
        #[command(subcommand)]
        which: observer::benchmark::Bench,
    },
}

/// Where the CLI reaches the agent: its control socket (default), or its TCP control
/// listener with a bearer token.
#[derive(clap::Args, Debug)]
struct ControlArgs {
    /// The agent's control socket.
    #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
    socket: PathBuf,
    /// The agent's TCP control listener (`http://host:port`, or `https://host:port` when
    /// it has `[control] tls_cert`); needs --token-file.
    #[arg(long)]
    agent: Option<String>,
    /// File holding the TCP control listener's bearer token.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// With `--agent https://...`: PEM CA certificate(s) the agent's certificate must
    /// chain to.
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// With `--agent https://...`: PEM client certificate (mutual TLS, `[control]
    /// client_ca`); needs --key.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long)]
    key: Option<PathBuf>,
}

impl ControlArgs {
    fn target(&self) -> anyhow::Result<Target> {
        Target::new(
            &self.socket,
            self.agent.as_deref(),
            self.token_file.as_deref(),
            &TlsFiles {
                cacert: self.cacert.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
            },
        )
    }
}

#[derive(clap::Args, Debug)]
struct CredentialArgs {
    /// `-`: read the raw credential from stdin (one line).
    #[arg(long, value_name = "-")]
    credential: Option<String>,
    #[command(flatten)]
    to: ControlArgs,
    /// Print the JSON the agent returned.
    #[arg(long)]
    json: bool,
}

impl CredentialArgs {
    fn run(&self, action: CredentialAction) -> anyhow::Result<()> {
        let arg = self.credential.as_deref().unwrap_or_default();
        cli::sessions::check_credential_arg(arg)?;
        cli::sessions::credential(&self.to.target()?, action, self.json)
    }
}

#[derive(clap::Args, Debug, Default)]
struct RunArgs {
    /// TOML configuration file (see deploy/observer.toml).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Address of the metrics port (/metrics and /healthz only).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Bytes captured from each read/write (1..=8192).
    #[arg(long)]
    capture_bytes: Option<u32>,
    /// Write every exchange as a JSON line to this file (`-` for stdout).
    #[arg(long)]
    exchanges_jsonl: Option<String>,
    /// Print raw paths in the exchange stream besides route templates (they may name
    /// people; off by default).
    #[arg(long)]
    exchange_raw_paths: bool,
    /// Client addresses in sessions and outputs: full, truncate (default) or drop.
    #[arg(long, value_parser = ["full", "truncate", "drop"])]
    client_ip: Option<String>,
    /// Unix socket of the local control channel (empty: none).
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// Send metrics and sampled spans to this OTLP/HTTP endpoint (`http://collector:4318`;
    /// `[otlp] endpoint`).
    #[arg(long, value_name = "URL", env = "OBSERVER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Fleet mode: the Redis/Valkey store shared by every agent (`redis://host:6379`,
    /// `rediss://...`; `[fleet] endpoint`).
    #[arg(long, value_name = "URL", env = "OBSERVER_FLEET_ENDPOINT")]
    fleet_endpoint: Option<String>,
    /// This node's name in the fleet store (`[fleet] node`; default `$NODE_NAME`, else
    /// the hostname).
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// Log filter (error, warn, info, debug, trace or a tracing directive).
    #[arg(long, default_value = "info", env = "OBSERVER_LOG")]
    log_level: String,
    /// Log line format on stderr: text (for people) or json (one object per line, for log
    /// shippers).
    #[arg(long, default_value = "text", env = "OBSERVER_LOG_FORMAT", value_parser = ["text", "json"])]
    log_format: String,
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
            config.control_socket = None;
            config.control.socket = path.clone();
        }
        if let Some(target) = &self.exchanges_jsonl {
            config.output.exchanges_jsonl = Some(target.clone());
        }
        if self.exchange_raw_paths {
            config.output.exchange_raw_paths = true;
        }
        if let Some(url) = &self.otlp_endpoint {
            config.otlp.endpoint = Some(url.clone());
        }
        if let Some(url) = &self.fleet_endpoint {
            config.fleet.endpoint = Some(url.clone());
            config.fleet.cluster.clear();
        }
        if let Some(name) = &self.node_name {
            config.fleet.node = Some(name.clone());
        }
        config.validate()?;
        Ok(config)
    }
}

fn init_logging(filter: &str, format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("bad log filter {filter:?}"))?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "json" => logs.json().with_current_span(false).init(),
        _ => logs.init(),
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Run(args)) => run(args),
        None => run(cli.run),
        Some(Command::Sessions {
            to,
            state,
            direction,
            limit,
            json,
            fleet,
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
            if fleet {
                return cli::sessions::list_fleet(&to.target()?, &query.join("&"), json);
            }
            cli::sessions::list(&to.target()?, &query.join("&"), json)
        }
        Some(Command::Privacy { to }) => cli::sessions::privacy(&to.target()?),
        Some(Command::Findings { to }) => cli::sessions::findings(&to.target()?),
        Some(Command::Freeze {
            fingerprint,
            credential,
        }) => match fingerprint {
            Some(fp) => cli::sessions::freeze(&credential.to.target()?, &fp, true),
            None => credential.run(CredentialAction::Freeze),
        },
        Some(Command::Unfreeze {
            fingerprint,
            credential,
        }) => match fingerprint {
            Some(fp) => cli::sessions::freeze(&credential.to.target()?, &fp, false),
            None => credential.run(CredentialAction::Unfreeze),
        },
        Some(Command::Lookup { credential }) => {
            if credential.credential.is_none() {
                anyhow::bail!("observer lookup needs --credential - (the credential on stdin)");
            }
            credential.run(CredentialAction::Lookup)
        }
        Some(Command::Bench { which }) => observer::benchmark::run(which),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(&args.log_level, &args.log_format)?;
    let config = args.config()?;
    // The capture (draining the ring buffer, on this thread, in `agent::run`) comes
    // before the agent's API: a flood of API calls must not make the ring buffer
    // overflow. The API's worker threads run at a lower priority; the draining thread
    // keeps the default one, never above the traced programs.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(|| set_thread_nice(API_NICE))
        .enable_all()
        .build()?;
    runtime.block_on(agent::run(config))
}

/// Nice value of the runtime's worker threads (HTTP endpoints, control API).
const API_NICE: i32 = 5;

/// Set the calling thread's nice value (Linux: per thread); failure only costs priority.
fn set_thread_nice(nice: i32) {
    // SAFETY: plain syscalls on the calling thread.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if rc != 0 {
        tracing::debug!(
            "thread priority {nice} not set: {}",
            std::io::Error::last_os_error()
        );
    }
}
