//! `cargo xtask bench`: the overhead and cost figures of the agent, measured for real.
//!
//! `overhead`: nginx serving a small static file on loopback under wrk (keep-alive), over
//! plain HTTP and over HTTPS (nginx and wrk both use the system libssl, so both are
//! probed), and under h2load over HTTP/2 (h2c with prior knowledge, and h2 over TLS), in
//! rounds of three runs: without anything, with empty probes on the agent's hooks (the
//! floor of a design that traps on these hooks, see `floor.rs`), and with the agent; in
//! one run on the same machine, so the ratios are meaningful on a shared, noisy host.
//! `startup` (startup.rs), `replay` and `sessions` (memory.rs) and `fleet` (fleet.rs) are
//! the other figures.

use std::{
    collections::BTreeMap,
    io::Read as _,
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

#[derive(clap::Subcommand)]
pub enum Which {
    /// Requests/s of nginx under wrk (HTTP/1.1) or h2load (HTTP/2) without anything, with
    /// empty probes on the agent's hooks (bpftrace), and with the agent; the agent's CPU,
    /// kernel time, records, bytes and drops per exchange. Needs root.
    Overhead {
        /// Alternating rounds (each one run without and one with the agent).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// wrk or h2load connections.
        #[arg(long, default_value_t = 32)]
        connections: u32,
        /// Which traffic: plaintext, tls, both (plaintext and tls: HTTP/1.1 under wrk),
        /// h2c, h2-tls, h2 (h2c and h2-tls: HTTP/2 under h2load, 10 streams per
        /// connection), or all.
        #[arg(long, default_value = "both")]
        case: String,
    },
    /// Time from spawning the agent to attached and healthy, with the TLS scan off and
    /// on (median of several starts). Needs root.
    Startup {
        /// Starts per variant.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Exchanges per second per core of the user-space pipeline over a generated record
    /// stream (`observer bench replay`; no kernel needed).
    Replay {
        /// Exchanges in the stream.
        #[arg(long, default_value_t = 1_000_000)]
        exchanges: u64,
    },
    /// Memory and scoring-loop time with 10k and 100k sessions (`observer bench
    /// sessions`), then a live agent's memory after nginx served that many distinct
    /// bearer tokens under wrk. The live part needs root.
    Sessions {
        /// Session counts measured in the replay.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        sessions: Vec<usize>,
        /// Distinct bearer tokens driven at the live agent (0: skip the live part).
        #[arg(long, default_value_t = 10_000)]
        live_tokens: usize,
    },
    /// The fleet store (`observer bench fleet`): simulated agents publishing their
    /// sessions to a throwaway redis-server every interval, pipelined; prints store
    /// operations per second per agent, bytes per session in the store and the fleet
    /// query's latency, each against the goal (<= 2,000 operations/s per agent, query
    /// under 50 ms). No root needed.
    Fleet {
        /// Simulated agents.
        #[arg(long, default_value_t = 20)]
        agents: usize,
        /// Live sessions each agent publishes.
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Seconds between two publications of one agent.
        #[arg(long, default_value_t = 5)]
        interval_secs: u64,
        /// Publication rounds measured.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// An existing store (redis:// or rediss://) instead of a throwaway
        /// redis-server.
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Downstream capture must not change the overhead goals of the HTTP path: nginx
    /// under wrk, then a Go API server making two Redis calls per request under wrk, each
    /// without the agent, with `[downstream] enabled = false` and with `enabled = true`;
    /// prints the requests/s, the ratio on/off, the agent's CPU and the calls attributed.
    /// Needs root.
    Downstream {
        /// Alternating rounds (each one run without the agent, one with downstream
        /// capture off, one with it on).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// wrk connections.
        #[arg(long, default_value_t = 32)]
        connections: u32,
    },
    /// Session verdicts of the labelled scenarios (tests/src/scenarios.rs) with the
    /// default scoring calibration: a row per scenario, the confusion matrix, precision
    /// and recall of `unhealthy`, alerts over healthy scenarios. Needs root.
    Verdicts {
        /// Only the scenarios whose name contains this.
        #[arg(long)]
        only: Option<String>,
    },
}

/// Concurrent streams per h2load connection.
const H2_STREAMS: u32 = 10;
pub(crate) const AGENT_PORT: u16 = 19_464;

/// One kind of traffic: an nginx server of its own, and the load that drives it.
pub(crate) struct Case {
    pub name: &'static str,
    load: Load,
    pub port: u16,
    pub tls: bool,
}

/// Every case; `--case` picks some (see [`selected`]).
pub(crate) const CASES: &[Case] = &[
    Case {
        name: "plaintext",
        load: Load::Wrk,
        port: 18_080,
        tls: false,
    },
    Case {
        name: "tls",
        load: Load::Wrk,
        port: 18_443,
        tls: true,
    },
    Case {
        name: "h2c",
        load: Load::H2load,
        port: 18_081,
        tls: false,
    },
    Case {
        name: "h2-tls",
        load: Load::H2load,
        port: 18_444,
        tls: true,
    },
];

impl Case {
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/index.html", self.port)
    }

    /// nginx's `server` block for this case (h2load speaks only HTTP/2: with
    /// `listen ... http2` a cleartext port takes HTTP/2 with prior knowledge, a TLS
    /// port offers h2 through ALPN).
    fn server_block(&self, d: &str) -> String {
        let ssl = if self.tls { " ssl" } else { "" };
        let h2 = match self.load {
            Load::H2load => " http2",
            Load::Wrk => "",
        };
        let certs = if self.tls {
            format!("\n ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;")
        } else {
            String::new()
        };
        format!(
            "server {{ listen 127.0.0.1:{}{ssl}{h2}; root {d}/html; keepalive_requests 1000000;{certs} }}\n",
            self.port
        )
    }
}

pub(crate) struct Nginx {
    dir: std::path::PathBuf,
}

impl Nginx {
    /// nginx serving the chosen cases' ports only.
    pub fn start(cases: &[&Case]) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("observer-bench-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("html"))?;
        std::fs::write(dir.join("html/index.html"), "hello, bench\n")?;
        let cert = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .output()
            .context("running openssl (apt-get install openssl)")?;
        if !cert.status.success() {
            bail!(
                "openssl req failed: {}",
                String::from_utf8_lossy(&cert.stderr)
            );
        }
        let d = dir.display().to_string();
        let servers: String = cases.iter().map(|c| c.server_block(&d)).collect();
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};\n\
             fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
             {servers}}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let status = Command::new("nginx")
            .args(["-c"])
            .arg(dir.join("nginx.conf"))
            .args(["-p"])
            .arg(&dir)
            .status()
            .context("starting nginx (apt-get install nginx-light)")?;
        if !status.success() {
            bail!("nginx failed to start; see {}/error.log", dir.display());
        }
        for case in cases {
            wait_port(case.port)?;
        }
        Ok(Self { dir })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("nginx")
            .args(["-c"])
            .arg(self.dir.join("nginx.conf"))
            .args(["-p"])
            .arg(&self.dir)
            .args(["-s", "stop"])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn wait_port(port: u16) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listening on port {port}")
}

pub(crate) fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::Write as _;
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// What one load run measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Throughput {
    pub per_s: f64,
    /// Requests completed in the run.
    pub requests: u64,
    /// Socket errors and error responses (a run with errors measures something else).
    pub errors: u64,
}

/// Sum of the numbers in `text` (`connect 0, read 3, write 0, timeout 1`).
fn numbers_sum(text: &str) -> u64 {
    text.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// `Requests/sec:` and `N requests in ...` of wrk's report.
fn parse_wrk(text: &str) -> Option<Throughput> {
    let per_s = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))?
        .trim()
        .parse()
        .ok()?;
    let requests = text.lines().find_map(|l| {
        let (n, rest) = l.trim().split_once(' ')?;
        rest.starts_with("requests in").then(|| n.parse().ok())?
    })?;
    // "Socket errors: connect 0, read 0, write 0, timeout 0", "Non-2xx or 3xx responses: 7"
    let errors = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("Socket errors:")
                .or_else(|| l.strip_prefix("Non-2xx or 3xx responses:"))
        })
        .map(numbers_sum)
        .sum();
    Some(Throughput {
        per_s,
        requests,
        errors,
    })
}

/// wrk for `seconds` over `connections` keep-alive connections; `script` is a Lua file
/// (with its arguments) that makes the requests.
pub(crate) fn wrk(
    url: &str,
    seconds: u64,
    connections: u32,
    script: Option<(&Path, &[String])>,
) -> Result<Throughput> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")]);
    if let Some((path, _)) = script {
        cmd.arg("-s").arg(path);
    }
    cmd.arg(url);
    if let Some((_, args)) = script {
        cmd.arg("--").args(args);
    }
    let out = cmd.output().context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_wrk(&text).with_context(|| format!("no Requests/sec in wrk output:\n{text}"))
}

/// `finished in 5.00s, 53209.40 req/s, 6.30MB/s` and `requests: 266047 total, ...` of
/// h2load's report.
fn parse_h2load(text: &str) -> Option<Throughput> {
    let per_s = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("finished in ")?
                .split(", ")
                .find_map(|f| f.strip_suffix(" req/s"))
        })?
        .trim()
        .parse()
        .ok()?;
    // "requests: 266047 total, 266367 started, 266047 done, 266047 succeeded, 0 failed,
    // 0 errored, 0 timeout"
    let line = text.lines().find_map(|l| l.strip_prefix("requests: "))?;
    let field = |name: &str| {
        line.split(", ")
            .find_map(|f| f.strip_suffix(name)?.trim().parse::<u64>().ok())
    };
    Some(Throughput {
        per_s,
        requests: field(" total")?,
        errors: field(" failed").unwrap_or(0)
            + field(" errored").unwrap_or(0)
            + field(" timeout").unwrap_or(0),
    })
}

/// HTTP/2 load: `connections` connections with [`H2_STREAMS`] concurrent streams each,
/// for `seconds`.
fn h2load(url: &str, seconds: u64, connections: u32) -> Result<Throughput> {
    let out = Command::new("h2load")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-m{H2_STREAMS}"),
            &format!("-D{seconds}"),
            url,
        ])
        .output()
        .context("running h2load (apt-get install nghttp2-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_h2load(&text).with_context(|| format!("no req/s in h2load output:\n{text}"))
}

/// How a case loads nginx.
#[derive(Clone, Copy)]
enum Load {
    /// wrk: HTTP/1.1 keep-alive connections.
    Wrk,
    /// h2load: HTTP/2 connections with [`H2_STREAMS`] streams each.
    H2load,
}

impl Load {
    fn run(self, url: &str, seconds: u64, connections: u32) -> Result<Throughput> {
        match self {
            Self::Wrk => wrk(url, seconds, connections, None),
            Self::H2load => h2load(url, seconds, connections),
        }
    }

    fn describe(self, connections: u32) -> String {
        match self {
            Self::Wrk => format!("wrk, {connections} keep-alive connections"),
            Self::H2load => {
                format!("h2load, {connections} connections x {H2_STREAMS} streams")
            }
        }
    }
}

/// Whether `--case` `chosen` selects the case `name`.
fn selected(chosen: &str, name: &str) -> bool {
    match chosen {
        "all" => true,
        "both" => matches!(name, "plaintext" | "tls"),
        "h2" => matches!(name, "h2c" | "h2-tls"),
        other => other == name,
    }
}

/// utime + stime of a process, seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// One loaded kernel program, as `bpftool -j prog show` reports it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Prog {
    pub name: String,
    pub kind: String,
    /// Run time and run count (counted only while `kernel.bpf_stats_enabled` is 1).
    pub ns: u64,
    pub runs: u64,
}

/// Programs by id from `bpftool -j prog show`.
pub(crate) type Progs = BTreeMap<u64, Prog>;

fn parse_progs(json: &[u8]) -> Progs {
    let Ok(serde_json::Value::Array(progs)) = serde_json::from_slice(json) else {
        return Progs::new();
    };
    progs
        .iter()
        .filter_map(|p| {
            Some((
                p["id"].as_u64()?,
                Prog {
                    name: p["name"].as_str().unwrap_or("?").to_string(),
                    kind: p["type"].as_str().unwrap_or("?").to_string(),
                    ns: p["run_time_ns"].as_u64().unwrap_or(0),
                    runs: p["run_cnt"].as_u64().unwrap_or(0),
                },
            ))
        })
        .collect()
}

/// Every loaded kernel program now.
pub(crate) fn progs() -> Progs {
    Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .map(|o| parse_progs(&o.stdout))
        .unwrap_or_default()
}

/// Programs that run on traced events (tracepoints, and uprobes, which bpftool shows as
/// kprobes).
fn is_hook(p: &Prog) -> bool {
    matches!(p.kind.as_str(), "tracepoint" | "kprobe" | "raw_tracepoint")
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Counts kernel programs' run time and runs while it lives (`kernel.bpf_stats_enabled`
/// set back as it was when dropped).
pub(crate) struct BpfStats {
    was: String,
}

impl BpfStats {
    pub fn enable() -> Self {
        let was = std::fs::read_to_string(BPF_STATS).unwrap_or_default();
        let _ = std::fs::write(BPF_STATS, "1");
        Self { was }
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if !self.was.trim().is_empty() {
            let _ = std::fs::write(BPF_STATS, self.was.trim());
        }
    }
}

/// Kernel time per program name between two snapshots, of the programs not in
/// `foreign` (loaded before ours started: another agent's count is not ours): `(name,
/// ns, runs)`, busiest first.
pub(crate) fn kernel_time(
    foreign: &Progs,
    before: &Progs,
    after: &Progs,
) -> Vec<(String, u64, u64)> {
    let mut by_name: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (id, p) in after {
        if foreign.contains_key(id) {
            continue;
        }
        let (ns0, runs0) = before.get(id).map_or((0, 0), |b| (b.ns, b.runs));
        let e = by_name.entry(&p.name).or_default();
        e.0 += p.ns.saturating_sub(ns0);
        e.1 += p.runs.saturating_sub(runs0);
    }
    let mut v: Vec<_> = by_name
        .into_iter()
        .filter(|(_, (_, runs))| *runs > 0)
        .map(|(name, (ns, runs))| (name.to_string(), ns, runs))
        .collect();
    v.sort_by_key(|k| std::cmp::Reverse(k.1));
    v
}

/// Runs of the TLS library probes (the agent's `ssl_*` and `go_tls*` programs, or the
/// empty probes on `SSL_*`).
fn tls_traps(kernel: &[(String, u64, u64)]) -> u64 {
    kernel
        .iter()
        .filter(|(name, _, _)| {
            name.starts_with("ssl_") || name.starts_with("go_tls") || name.starts_with("SSL_")
        })
        .map(|k| k.2)
        .sum()
}

/// Sum of every series of a metric in a Prometheus text exposition.
pub(crate) fn metric_sum(metrics: &str, name: &str) -> u64 {
    metric_by_label(metrics, name, "").into_values().sum()
}

/// Values of a metric's series by one label's value (summed over the other labels);
/// with `label` empty, one entry for everything.
pub(crate) fn metric_by_label(metrics: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue; // a longer name with this prefix
        }
        let Some(value) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let key = if label.is_empty() {
            String::new()
        } else {
            let pat = format!("{label}=\"");
            rest.split_once(&pat)
                .and_then(|(_, v)| v.split_once('"'))
                .map(|(v, _)| v.to_string())
                .unwrap_or_default()
        };
        *out.entry(key).or_default() += value as u64;
    }
    out
}

/// The agent, started by a benchmark and stopped (SIGINT: probes detached) when dropped.
pub(crate) struct Agent {
    child: Child,
}

impl Agent {
    /// Start the agent on [`AGENT_PORT`] and wait until `/healthz` says ok.
    pub fn start(bin: &Path, extra: &[&str]) -> Result<Self> {
        let child = Command::new(bin)
            .args([
                "--listen",
                &format!("127.0.0.1:{AGENT_PORT}"),
                "--log-level",
                "warn",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .context("starting the agent")?;
        let mut agent = Self { child };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if http_get(AGENT_PORT, "/healthz").is_ok_and(|b| b.contains("\"ok\"")) {
                return Ok(agent);
            }
            if let Ok(Some(status)) = agent.child.try_wait() {
                bail!("agent exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("agent not healthy after 30 s")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn metrics(&self) -> String {
        http_get(AGENT_PORT, "/metrics").unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child; SIGINT lets the agent detach cleanly.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
    }
}

/// What a run with hooks in the kernel measured besides the load.
#[derive(Default)]
struct HookedRun {
    /// Kernel programs' time during the load: `(name, ns, runs)`.
    kernel: Vec<(String, u64, u64)>,
}

struct AgentRun {
    hooked: HookedRun,
    cpu_s: f64,
    drops: BTreeMap<String, u64>,
    requests_seen: u64,
    /// Parse issues by kind (bytes or messages the parsers could not use).
    parse_issues: BTreeMap<String, u64>,
    /// Kernel records received, and bytes moved through traced sockets.
    records: u64,
    bytes: u64,
}

/// Run `f` with hooks in place (started by `start` and held until the end), counting
/// the kernel time of the programs that were not loaded before.
fn with_hooks<H, T>(
    start: impl FnOnce() -> Result<H>,
    f: impl FnOnce(&H) -> Result<T>,
) -> Result<(T, H, HookedRun)> {
    let foreign = progs();
    let hooks = start()?;
    let stats = BpfStats::enable();
    let before = progs();
    let result = f(&hooks);
    let kernel = kernel_time(&foreign, &before, &progs());
    drop(stats);
    Ok((result?, hooks, HookedRun { kernel }))
}

fn with_agent<T>(bin: &Path, f: impl FnOnce() -> Result<T>) -> Result<(T, AgentRun)> {
    let (result, agent, hooked) = with_hooks(
        || Agent::start(bin, &[]),
        |agent| {
            let cpu_before = cpu_seconds(agent.pid())?;
            Ok((f(), cpu_before))
        },
    )?;
    let (result, cpu_before) = result;
    std::thread::sleep(Duration::from_millis(1500)); // let the agent drain and fold drops
    let metrics = agent.metrics();
    let cpu_s = cpu_seconds(agent.pid())? - cpu_before;
    drop(agent);
    let mut drops = metric_by_label(&metrics, "api_observer_capture_dropped_total", "reason");
    drops.retain(|_, n| *n > 0);
    Ok((
        result?,
        AgentRun {
            hooked,
            cpu_s,
            drops,
            requests_seen: metric_sum(&metrics, "http_server_request_duration_seconds_count")
                + metric_sum(&metrics, "http_client_request_duration_seconds_count"),
            parse_issues: metric_by_label(
                &metrics,
                "api_observer_http_parse_issues_total",
                "issue",
            ),
            records: metric_sum(&metrics, "api_observer_capture_events_total"),
            bytes: metric_sum(&metrics, "api_observer_capture_bytes_total"),
        },
    ))
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

pub fn run(which: Which, bin: &Path) -> Result<()> {
    match which {
        Which::Verdicts { only } => crate::verdicts::run(bin, only.as_deref()),
        Which::Fleet {
            agents,
            sessions,
            interval_secs,
            rounds,
            endpoint,
        } => crate::fleet::run(
            bin,
            &crate::fleet::Load {
                agents,
                sessions,
                interval_secs,
                rounds,
            },
            endpoint.as_deref(),
        ),
        Which::Startup { runs } => crate::startup::run(bin, runs),
        Which::Downstream {
            rounds,
            seconds,
            connections,
        } => crate::downstream::run(
            bin,
            &crate::downstream::Options {
                rounds,
                seconds,
                connections,
            },
        ),
        Which::Replay { exchanges } => {
            hidden_bench(bin, &["replay", "--exchanges", &exchanges.to_string()])
        }
        Which::Sessions {
            sessions,
            live_tokens,
        } => {
            for n in sessions {
                hidden_bench(bin, &["sessions", "--sessions", &n.to_string()])?;
            }
            if live_tokens > 0 {
                crate::peers::ensure_commands(&["nginx", "wrk", "openssl"])?;
                crate::memory::live(bin, live_tokens)?;
            }
            Ok(())
        }
        Which::Overhead {
            rounds,
            seconds,
            connections,
            case,
        } => {
            let chosen: Vec<&Case> = CASES.iter().filter(|c| selected(&case, c.name)).collect();
            if chosen.is_empty() {
                bail!("--case must be plaintext, tls, both, h2c, h2-tls, h2 or all");
            }
            crate::peers::ensure_commands(&[
                "nginx", "wrk", "h2load", "openssl", "bpftool", "bpftrace",
            ])?;
            warn_foreign_hooks();
            let hooks = crate::floor::agent_hooks(bin)?;
            let _nginx = Nginx::start(&chosen)?;
            for c in chosen {
                overhead(bin, &hooks, c, rounds, seconds, connections)?;
            }
            Ok(())
        }
    }
}

/// Run `observer bench <args>` (the measurements that need no kernel) and pass its
/// report on.
fn hidden_bench(bin: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(bin)
        .arg("bench")
        .args(args)
        .status()
        .with_context(|| format!("running {} bench", bin.display()))?;
    if !status.success() {
        bail!("observer bench {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// Programs already hooked into the kernel (another agent, a test) add their cost to
/// every column; say so rather than report figures that look clean.
fn warn_foreign_hooks() {
    let foreign: Vec<Prog> = progs().into_values().filter(is_hook).collect();
    if !foreign.is_empty() {
        let mut names: Vec<&str> = foreign.iter().map(|p| p.name.as_str()).collect();
        names.dedup();
        println!(
            "note: {} tracing programs are already loaded by something else ({}{}); every column below includes their cost",
            foreign.len(),
            names.iter().take(6).copied().collect::<Vec<_>>().join(", "),
            if names.len() > 6 { ", ..." } else { "" }
        );
    }
}

fn overhead(
    bin: &Path,
    hooks: &[String],
    case: &Case,
    rounds: usize,
    seconds: u64,
    connections: u32,
) -> Result<()> {
    let (name, load, url) = (case.name, case.load, case.url());
    load.run(&url, 1, connections)?; // warm-up
    let mut without = Vec::new();
    let mut empty = Vec::new();
    let mut with = Vec::new();
    let mut floors = Vec::new();
    let mut runs = Vec::new();
    for round in 1..=rounds {
        let base = load.run(&url, seconds, connections)?;
        let (floor, _probes, floor_run) = with_hooks(
            || crate::floor::EmptyProbes::start(bin, hooks),
            |_| load.run(&url, seconds, connections),
        )?;
        let (traced, agent) = with_agent(bin, || load.run(&url, seconds, connections))?;
        println!(
            "{name} round {round}: without {:.0} req/s, empty probes {:.0} req/s, agent {:.0} req/s; agent cpu {:.2} s, drops {}, requests seen {}, parse issues {}{}",
            base.per_s, floor.per_s, traced.per_s, agent.cpu_s, drops_text(&agent.drops), agent.requests_seen, drops_text(&agent.parse_issues),
            load_errors(&[base, floor, traced])
        );
        without.push(base.per_s);
        empty.push(floor.per_s);
        with.push(traced);
        floors.push((floor, floor_run));
        runs.push(agent);
    }
    let (mw, me) = (median(without), median(empty));
    let mt = median(with.iter().map(|t| t.per_s).collect());
    let cpu = median(runs.iter().map(|r| r.cpu_s).collect());
    let seen = median(runs.iter().map(|r| r.requests_seen as f64).collect());
    println!(
        "overhead ({name}, nginx under {}, {seconds} s x {rounds} rounds):",
        load.describe(connections)
    );
    println!("  median requests/s:    without {mw:.0} | empty probes {me:.0} | agent {mt:.0}");
    println!(
        "  ratio to without:                      empty probes {:.3} | agent {:.3}",
        me / mw,
        mt / mw
    );
    println!(
        "  (empty probes: bpftrace with empty actions on the agent's {} hooks: the floor of the design)",
        hooks.len()
    );
    println!(
        "  agent CPU per run (median):      {cpu:.2} s of {seconds} s ({:.0}% of one core)",
        100.0 * cpu / seconds as f64
    );
    let mut drops: BTreeMap<String, u64> = BTreeMap::new();
    for r in &runs {
        for (reason, n) in &r.drops {
            *drops.entry(reason.clone()).or_default() += n;
        }
    }
    println!(
        "  requests reported per run (median): {seen:.0}; drops over all runs by reason: {}",
        drops_text(&drops)
    );
    if seen > 0.0 {
        // Exchanges reported: one per request per traced end (both ends on loopback).
        println!(
            "  agent CPU per reported exchange:  {:.2} us",
            cpu * 1e6 / seen
        );
        let per = |f: fn(&AgentRun) -> u64| {
            median(
                runs.iter()
                    .filter(|r| r.requests_seen > 0)
                    .map(|r| f(r) as f64 / r.requests_seen as f64)
                    .collect(),
            )
        };
        println!(
            "  per reported exchange (median):  {:.2} kernel records, {:.0} bytes moved through traced sockets",
            per(|r| r.records),
            per(|r| r.bytes)
        );
    }
    if case.tls {
        let traps = |kernel: &[(String, u64, u64)], t: &Throughput| {
            tls_traps(kernel) as f64 / t.requests.max(1) as f64
        };
        let agent_traps = median(
            runs.iter()
                .zip(&with)
                .map(|(r, t)| traps(&r.hooked.kernel, t))
                .collect(),
        );
        let empty_traps = median(floors.iter().map(|(t, f)| traps(&f.kernel, t)).collect());
        println!(
            "  TLS library traps per request (uprobes + uretprobes, both ends): agent {agent_traps:.2} | empty probes {empty_traps:.2}"
        );
    }
    // Kernel time of the last round, per program.
    if let Some(last) = runs.last().filter(|r| !r.hooked.kernel.is_empty()) {
        let kernel = &last.hooked.kernel;
        let total: u64 = kernel.iter().map(|k| k.1).sum();
        println!(
            "  kernel programs (last round): {:.0} ms in all, {:.2} us per reported exchange",
            total as f64 / 1e6,
            if last.requests_seen > 0 {
                total as f64 / 1e3 / last.requests_seen as f64
            } else {
                0.0
            }
        );
        for (name, ns, runs) in kernel.iter().take(12) {
            println!(
                "    {name:<24} {runs:>10} runs {:>8.0} ns/run {:>8.1} ms",
                *ns as f64 / *runs as f64,
                *ns as f64 / 1e6
            );
        }
    }
    if let Some((t, f)) = floors.last().filter(|(_, f)| !f.kernel.is_empty()) {
        let total: u64 = f.kernel.iter().map(|k| k.1).sum();
        let runs: u64 = f.kernel.iter().map(|k| k.2).sum();
        println!(
            "  empty probes (last round): {runs} runs, {:.0} ns/run, {:.1} runs per request, {:.0} ms in all",
            total as f64 / runs.max(1) as f64,
            runs as f64 / t.requests.max(1) as f64,
            total as f64 / 1e6
        );
    }
    Ok(())
}

/// A warning when a load run (without, empty probes, agent) had errors.
fn load_errors(runs: &[Throughput; 3]) -> String {
    if runs.iter().all(|t| t.errors == 0) {
        return String::new();
    }
    let [a, b, c] = runs.map(|t| t.errors);
    format!("; LOAD ERRORS (without / empty probes / agent): {a} / {b} / {c}")
}

fn drops_text(drops: &BTreeMap<String, u64>) -> String {
    if drops.values().all(|n| *n == 0) {
        return "none".into();
    }
    drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(reason, n)| format!("{reason} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(case: &str) -> Vec<&'static str> {
        CASES
            .iter()
            .filter(|c| selected(case, c.name))
            .map(|c| c.name)
            .collect()
    }

    fn prog(name: &str, ns: u64, runs: u64) -> Prog {
        Prog {
            name: name.into(),
            kind: "tracepoint".into(),
            ns,
            runs,
        }
    }

    #[test]
    fn kernel_time_is_the_difference_by_name_busiest_first_without_foreign_programs() {
        let foreign: Progs = [(9, prog("enter_read", 0, 0))].into();
        let before: Progs = [(1, prog("a", 100, 10)), (2, prog("b", 0, 0))].into();
        let after: Progs = [
            (1, prog("a", 400, 40)),
            (2, prog("b", 900, 3)),
            (3, prog("c", 5, 0)),
            // two programs of one name (an uprobe and a uretprobe) add up
            (4, prog("a", 50, 5)),
            (9, prog("enter_read", 1_000_000, 1000)),
        ]
        .into();
        assert_eq!(
            kernel_time(&foreign, &before, &after),
            [("b".to_string(), 900, 3), ("a".to_string(), 350, 35)]
        );
    }

    #[test]
    fn bpftool_json() {
        let json =
            br#"[{"id":7,"type":"tracepoint","name":"enter_read","run_time_ns":1200,"run_cnt":3},
            {"id":8,"type":"kprobe","name":"SSL_read"},{"type":"kprobe"}]"#;
        let progs = parse_progs(json);
        assert_eq!(progs.len(), 2);
        assert_eq!(progs[&7], prog("enter_read", 1200, 3));
        assert_eq!(progs[&8].kind, "kprobe");
        assert_eq!(progs[&8].runs, 0);
        assert!(is_hook(&progs[&8]));
        assert!(parse_progs(b"not json").is_empty());
    }

    #[test]
    fn tls_traps_count_library_probes_only() {
        let kernel = [
            ("ssl_read".to_string(), 10, 100),
            ("ssl_return".to_string(), 10, 200),
            ("go_tls_read_ret".to_string(), 10, 5),
            ("SSL_write".to_string(), 10, 7),
            ("enter_read".to_string(), 10, 1000),
        ];
        assert_eq!(tls_traps(&kernel), 312);
    }

    #[test]
    fn metrics_by_label() {
        let text = "# HELP api_observer_capture_dropped_total Records lost.\n\
            # TYPE api_observer_capture_dropped_total counter\n\
            api_observer_capture_dropped_total{reason=\"ringbuf_full\"} 12\n\
            api_observer_capture_dropped_total{reason=\"read_failed\"} 0\n\
            api_observer_capture_dropped_total_extra{reason=\"x\"} 5\n\
            api_observer_capture_bytes_total{direction=\"ingress\"} 1000\n\
            api_observer_capture_bytes_total{direction=\"egress\"} 2.5e3\n\
            api_observer_capture_connections 4\n";
        let drops = metric_by_label(text, "api_observer_capture_dropped_total", "reason");
        assert_eq!(
            drops,
            [
                ("read_failed".to_string(), 0),
                ("ringbuf_full".to_string(), 12)
            ]
            .into()
        );
        assert_eq!(metric_sum(text, "api_observer_capture_bytes_total"), 3500);
        assert_eq!(metric_sum(text, "api_observer_capture_connections"), 4);
        assert_eq!(metric_sum(text, "api_observer_missing_total"), 0);
        assert_eq!(drops_text(&drops), "ringbuf_full 12");
        assert_eq!(drops_text(&BTreeMap::new()), "none");
    }

    #[test]
    fn load_reports() {
        let wrk = "Running 3s test @ http://127.0.0.1:18080/index.html\n  1 threads and 32 connections\n\
            \x20 Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
            \x20 137813 requests in 3.00s, 33.78MB read\nRequests/sec:  45913.20\nTransfer/sec:     11.25MB\n";
        assert_eq!(
            parse_wrk(wrk),
            Some(Throughput {
                per_s: 45913.2,
                requests: 137_813,
                errors: 0
            })
        );
        assert_eq!(parse_wrk("Requests/sec: 1\n"), None);
        let failing = format!(
            "{wrk}  Socket errors: connect 0, read 12, write 0, timeout 3\n  Non-2xx or 3xx responses: 5\n"
        );
        assert_eq!(parse_wrk(&failing).map(|t| t.errors), Some(20));
        let h2_failing = "finished in 3.00s, 10.00 req/s, 1MB/s\n\
            requests: 30 total, 30 started, 30 done, 28 succeeded, 1 failed, 1 errored, 0 timeout\n";
        assert_eq!(parse_h2load(h2_failing).map(|t| t.errors), Some(2));
        let h2 = "finished in 3.00s, 53209.40 req/s, 6.30MB/s\n\
            requests: 159628 total, 159948 started, 159628 done, 159628 succeeded, 0 failed, 0 errored, 0 timeout\n";
        assert_eq!(
            parse_h2load(h2),
            Some(Throughput {
                per_s: 53209.4,
                requests: 159_628,
                errors: 0
            })
        );
    }

    #[test]
    fn case_selection() {
        assert_eq!(chosen("both"), ["plaintext", "tls"]);
        assert_eq!(chosen("h2"), ["h2c", "h2-tls"]);
        assert_eq!(chosen("all"), ["plaintext", "tls", "h2c", "h2-tls"]);
        assert_eq!(chosen("h2-tls"), ["h2-tls"]);
        assert!(chosen("h3").is_empty());
    }

    #[test]
    fn h2_servers_speak_http2() {
        let block = |name: &str| {
            CASES
                .iter()
                .find(|c| c.name == name)
                .unwrap()
                .server_block("/d")
        };
        assert!(block("h2c").contains("listen 127.0.0.1:18081 http2;"));
        assert!(block("h2-tls").contains("listen 127.0.0.1:18444 ssl http2;"));
        assert!(block("tls").contains("listen 127.0.0.1:18443 ssl;"));
        assert!(block("plaintext").contains("listen 127.0.0.1:18080;"));
    }
}
