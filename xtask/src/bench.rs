//! `cargo xtask bench overhead`: nginx serving a small static file on loopback under wrk
//! (keep-alive), over plain HTTP and over HTTPS (nginx and wrk both use the system
//! libssl, so both are probed), and under h2load over HTTP/2 (h2c with prior knowledge,
//! and h2 over TLS), alternating runs without and with the agent attached, in one run on
//! the same machine, so the ratio is meaningful on a shared, noisy host.

use std::{
    io::Read as _,
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

#[derive(clap::Subcommand)]
pub enum Which {
    /// Requests/s of nginx under wrk (HTTP/1.1) or h2load (HTTP/2) with and without the
    /// agent.
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
const AGENT_PORT: u16 = 19_464;

/// One kind of traffic: an nginx server of its own, and the load that drives it.
struct Case {
    name: &'static str,
    load: Load,
    port: u16,
    tls: bool,
}

/// Every case; `--case` picks some (see [`selected`]).
const CASES: &[Case] = &[
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
    fn url(&self) -> String {
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

struct Nginx {
    dir: std::path::PathBuf,
}

impl Nginx {
    /// nginx serving the chosen cases' ports only.
    fn start(cases: &[&Case]) -> Result<Self> {
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

fn wait_port(port: u16) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listening on port {port}")
}

fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::Write as _;
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

fn wrk(url: &str, seconds: u64, connections: u32) -> Result<f64> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            url,
        ])
        .output()
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))
}

/// HTTP/2 load: `connections` connections with [`H2_STREAMS`] concurrent streams each,
/// for `seconds`; returns the requests/s h2load reports.
fn h2load(url: &str, seconds: u64, connections: u32) -> Result<f64> {
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
    // "finished in 5.00s, 53209.40 req/s, 6.30MB/s"
    text.lines()
        .find_map(|l| {
            l.strip_prefix("finished in ")?
                .split(", ")
                .find_map(|f| f.strip_suffix(" req/s"))
        })
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no req/s in h2load output:\n{text}"))
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
    fn run(self, url: &str, seconds: u64, connections: u32) -> Result<f64> {
        match self {
            Self::Wrk => wrk(url, seconds, connections),
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
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// Run time (ns) and run count of each loaded kernel program, summed by name
/// (`bpftool prog show`; counted only while `kernel.bpf_stats_enabled` is 1).
fn bpf_prog_stats() -> std::collections::BTreeMap<String, (u64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(o) = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
    else {
        return out;
    };
    let Ok(serde_json::Value::Array(progs)) = serde_json::from_slice(&o.stdout) else {
        return out;
    };
    for p in progs {
        let name = p["name"].as_str().unwrap_or("?").to_string();
        let ns = p["run_time_ns"].as_u64().unwrap_or(0);
        let cnt = p["run_cnt"].as_u64().unwrap_or(0);
        let e = out.entry(name).or_insert((0, 0));
        e.0 += ns;
        e.1 += cnt;
    }
    out
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Kernel time per program between two [`bpf_prog_stats`] snapshots: `(name, ns, runs)`,
/// busiest first.
fn kernel_time(
    before: &std::collections::BTreeMap<String, (u64, u64)>,
    after: &std::collections::BTreeMap<String, (u64, u64)>,
) -> Vec<(String, u64, u64)> {
    let mut v: Vec<_> = after
        .iter()
        .filter_map(|(name, &(ns, cnt))| {
            let (ns0, cnt0) = before.get(name).copied().unwrap_or((0, 0));
            let runs = cnt.saturating_sub(cnt0);
            (runs > 0).then(|| (name.clone(), ns.saturating_sub(ns0), runs))
        })
        .collect();
    v.sort_by_key(|k| std::cmp::Reverse(k.1));
    v
}

struct AgentRun {
    /// Kernel programs' time during the load: `(name, ns, runs)`.
    kernel: Vec<(String, u64, u64)>,
    cpu_s: f64,
    drops: u64,
    requests_seen: u64,
    /// Parse issues of every kind (bytes or messages the parsers could not use).
    parse_issues: u64,
}

fn metric_sum(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn with_agent<T>(bin: &Path, f: impl FnOnce() -> Result<T>) -> Result<(T, AgentRun)> {
    let mut child: Child = Command::new(bin)
        .args([
            "--listen",
            &format!("127.0.0.1:{AGENT_PORT}"),
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::null())
        .spawn()
        .context("starting the agent")?;
    let started = (|| {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if http_get(AGENT_PORT, "/healthz").is_ok_and(|b| b.contains("\"ok\"")) {
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!("agent exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("agent not healthy after 30 s")
    })();
    if let Err(e) = started {
        let _ = child.kill();
        return Err(e);
    }
    let stats_was = std::fs::read_to_string(BPF_STATS).unwrap_or_default();
    let _ = std::fs::write(BPF_STATS, "1");
    let kernel_before = bpf_prog_stats();
    let cpu_before = cpu_seconds(child.id())?;
    let result = f();
    let kernel = kernel_time(&kernel_before, &bpf_prog_stats());
    if !stats_was.trim().is_empty() {
        let _ = std::fs::write(BPF_STATS, stats_was.trim());
    }
    std::thread::sleep(Duration::from_millis(1500)); // let the agent drain and fold drops
    let metrics = http_get(AGENT_PORT, "/metrics").unwrap_or_default();
    let cpu_s = cpu_seconds(child.id())? - cpu_before;
    // SAFETY: kill(2) on our own child; SIGINT lets the agent detach cleanly.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    Ok((
        result?,
        AgentRun {
            kernel,
            cpu_s,
            drops: metric_sum(&metrics, "api_observer_capture_dropped_total"),
            requests_seen: metric_sum(&metrics, "api_observer_http_requests_total"),
            parse_issues: metric_sum(&metrics, "api_observer_http_parse_issues_total"),
        },
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
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
            let _nginx = Nginx::start(&chosen)?;
            for c in chosen {
                overhead(bin, c.name, c.load, &c.url(), rounds, seconds, connections)?;
            }
            Ok(())
        }
    }
}

fn overhead(
    bin: &Path,
    name: &str,
    load: Load,
    url: &str,
    rounds: usize,
    seconds: u64,
    connections: u32,
) -> Result<()> {
    load.run(url, 1, connections)?; // warm-up
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut runs = Vec::new();
    for round in 1..=rounds {
        let base = load.run(url, seconds, connections)?;
        let (traced, agent) = with_agent(bin, || load.run(url, seconds, connections))?;
        println!(
            "{name} round {round}: without {base:.0} req/s, with {traced:.0} req/s; agent cpu {:.2} s, drops {}, requests seen {}, parse issues {}",
            agent.cpu_s, agent.drops, agent.requests_seen, agent.parse_issues
        );
        without.push(base);
        with.push(traced);
        runs.push(agent);
    }
    let (mw, mt) = (median(without), median(with));
    let cpu = median(runs.iter().map(|r| r.cpu_s).collect());
    let drops: u64 = runs.iter().map(|r| r.drops).sum();
    let seen = median(runs.iter().map(|r| r.requests_seen as f64).collect());
    println!(
        "overhead ({name}, nginx under {}, {seconds} s x {rounds} rounds):",
        load.describe(connections)
    );
    println!("  median requests/s without agent: {mw:.0}");
    println!("  median requests/s with agent:    {mt:.0}");
    println!("  ratio with/without:              {:.3}", mt / mw);
    println!(
        "  agent CPU per run (median):      {cpu:.2} s of {seconds} s ({:.0}% of one core)",
        100.0 * cpu / seconds as f64
    );
    println!("  requests reported per run (median): {seen:.0}; drops over all runs: {drops}");
    if seen > 0.0 {
        // Exchanges reported: one per request per traced end (both ends on loopback).
        println!(
            "  agent CPU per reported exchange:  {:.2} us",
            cpu * 1e6 / seen
        );
    }
    // Kernel time of the last round, per program.
    if let Some(last) = runs.last().filter(|r| !r.kernel.is_empty()) {
        let total: u64 = last.kernel.iter().map(|k| k.1).sum();
        println!(
            "  kernel programs (last round): {:.0} ms in all, {:.2} us per reported exchange",
            total as f64 / 1e6,
            if last.requests_seen > 0 {
                total as f64 / 1e3 / last.requests_seen as f64
            } else {
                0.0
            }
        );
        for (name, ns, runs) in last.kernel.iter().take(12) {
            println!(
                "    {name:<24} {runs:>10} runs {:>8.0} ns/run {:>8.1} ms",
                *ns as f64 / *runs as f64,
                *ns as f64 / 1e6
            );
        }
    }
    Ok(())
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

    #[test]
    fn kernel_time_is_the_difference_busiest_first() {
        let before = [("a".to_string(), (100, 10)), ("b".to_string(), (0, 0))].into();
        let after = [
            ("a".to_string(), (400, 40)),
            ("b".to_string(), (900, 3)),
            ("c".to_string(), (5, 0)),
        ]
        .into();
        assert_eq!(
            kernel_time(&before, &after),
            [("b".to_string(), 900, 3), ("a".to_string(), 300, 30)]
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
