//! `cargo xtask bench downstream`: downstream capture (`[downstream] enabled`) must not
//! change the overhead goals of the HTTP path. Two workloads, each in alternating rounds
//! of three runs (without the agent, the agent with downstream capture off, the agent
//! with it on), in one run on the same machine so the ratios are meaningful:
//!
//! - the HTTP path: nginx plaintext under wrk, as in `bench overhead`; prints the
//!   median requests/s, the ratio on/off and the agent's CPU per reported exchange;
//! - the downstream path: `redis-benchmark` (GET and SET) against a throwaway
//!   `redis-server`: with downstream capture on the agent parses every call of its
//!   client connections; prints its requests/s, the ratio on/off, the agent's CPU and
//!   the downstream calls it counted (proof that the on variant did the work).

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::bench::{cpu_seconds, median, metric_sum, wrk, Agent, Nginx, CASES};

/// What the bench runs (`cargo xtask bench downstream --help`).
pub struct Options {
    pub rounds: usize,
    pub seconds: u64,
    pub connections: u32,
    pub redis_requests: u64,
}

/// One run's variant.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// Downstream capture off (`[downstream] enabled = false`).
    Off,
    /// Downstream capture on (`[downstream] enabled = true`, the default).
    On,
}

impl Variant {
    fn enabled(self) -> bool {
        self == Self::On
    }
}

/// The agent's configuration files for both variants, in a directory of this process
/// (removed when dropped).
struct Configs {
    dir: PathBuf,
}

impl Configs {
    fn write() -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("observer-bench-downstream-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let me = Self { dir };
        for v in [Variant::Off, Variant::On] {
            std::fs::write(me.path(v), config_text(v.enabled()))
                .with_context(|| format!("writing {}", me.path(v).display()))?;
        }
        Ok(me)
    }

    fn path(&self, v: Variant) -> PathBuf {
        let name = if v.enabled() { "on" } else { "off" };
        self.dir.join(format!("downstream-{name}.toml"))
    }
}

impl Drop for Configs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The agent's TOML configuration of a variant.
fn config_text(enabled: bool) -> String {
    format!("[downstream]\nenabled = {enabled}\n")
}

/// What the agent cost and reported during one loaded run.
struct AgentRun {
    cpu_s: f64,
    /// HTTP exchanges reported (server and client ends).
    exchanges: u64,
    /// `api_observer_downstream_calls_total`, every series.
    downstream_calls: u64,
}

impl AgentRun {
    /// Agent CPU per reported HTTP exchange, microseconds (0 without exchanges).
    fn us_per_exchange(&self) -> f64 {
        if self.exchanges == 0 {
            return 0.0;
        }
        self.cpu_s * 1e6 / self.exchanges as f64
    }
}

/// Run `f` under the agent started with `--config` of `variant`, and measure it.
fn with_agent<T>(
    bin: &Path,
    configs: &Configs,
    variant: Variant,
    f: impl FnOnce() -> Result<T>,
) -> Result<(T, AgentRun)> {
    let config = configs.path(variant);
    let agent =
        Agent::start(bin, &["--config", &config.display().to_string()]).with_context(|| {
            format!(
                "starting the agent with --config {} ({}); if it refused the unknown key \
                 `downstream`, {} is older than downstream capture: rebuild it",
                config.display(),
                config_text(variant.enabled()).replace('\n', " ").trim(),
                bin.display()
            )
        })?;
    let cpu_before = cpu_seconds(agent.pid())?;
    let result = f();
    std::thread::sleep(Duration::from_millis(1500)); // let the agent drain
    let metrics = agent.metrics();
    let cpu_s = cpu_seconds(agent.pid())? - cpu_before;
    drop(agent);
    Ok((
        result?,
        AgentRun {
            cpu_s,
            exchanges: metric_sum(&metrics, "http_server_request_duration_seconds_count")
                + metric_sum(&metrics, "http_client_request_duration_seconds_count"),
            downstream_calls: metric_sum(&metrics, "api_observer_downstream_calls_total"),
        },
    ))
}

/// The three runs of a round: without the agent, downstream off, downstream on.
struct Round {
    without: f64,
    off: (f64, AgentRun),
    on: (f64, AgentRun),
}

/// `rounds` rounds of `load` (returning requests/s), each one run without the agent, one
/// with downstream capture off and one with it on.
fn rounds(
    bin: &Path,
    configs: &Configs,
    n: usize,
    mut load: impl FnMut() -> Result<f64>,
) -> Result<Vec<Round>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let without = load()?;
        let off = with_agent(bin, configs, Variant::Off, &mut load)?;
        let on = with_agent(bin, configs, Variant::On, &mut load)?;
        out.push(Round { without, off, on });
    }
    Ok(out)
}

/// Medians over the rounds: requests/s without, off, on.
fn rates(rounds: &[Round]) -> (f64, f64, f64) {
    (
        median(rounds.iter().map(|r| r.without).collect()),
        median(rounds.iter().map(|r| r.off.0).collect()),
        median(rounds.iter().map(|r| r.on.0).collect()),
    )
}

/// Median of a figure of the agent runs of one variant.
fn agent_median(rounds: &[Round], v: Variant, f: impl Fn(&AgentRun) -> f64) -> f64 {
    median(
        rounds
            .iter()
            .map(|r| if v.enabled() { &r.on.1 } else { &r.off.1 })
            .map(f)
            .collect(),
    )
}

pub fn run(bin: &Path, o: &Options) -> Result<()> {
    if o.rounds == 0 || o.seconds == 0 || o.connections == 0 || o.redis_requests == 0 {
        bail!("--rounds, --seconds, --connections and --redis-requests must be at least 1");
    }
    crate::peers::ensure_commands(&["nginx", "wrk", "openssl", "redis-server", "redis-cli"])?;
    // redis-benchmark comes with redis-cli (Debian's redis-tools).
    Command::new("redis-benchmark")
        .arg("--version")
        .output()
        .context("running redis-benchmark (apt-get install redis-tools)")?;
    let configs = Configs::write()?;
    http_path(bin, &configs, o)?;
    redis_path(bin, &configs, o)
}

/// Workload 1: nginx plaintext under wrk (the overhead bench's `plaintext` case).
fn http_path(bin: &Path, configs: &Configs, o: &Options) -> Result<()> {
    let case = CASES
        .iter()
        .find(|c| c.name == "plaintext")
        .context("no plaintext case in bench.rs")?;
    let _nginx = Nginx::start(&[case])?;
    let url = case.url();
    let (seconds, connections) = (o.seconds, o.connections);
    wrk(&url, 1, connections, None)?; // warm-up
    let mut errors = 0;
    let runs = rounds(bin, configs, o.rounds, || {
        let t = wrk(&url, seconds, connections, None)?;
        errors += t.errors;
        Ok(t.per_s)
    })?;
    for (i, r) in runs.iter().enumerate() {
        println!(
            "http-path round {}: without {:.0} req/s, downstream off {:.0} req/s (agent cpu {:.2} s, {} exchanges), downstream on {:.0} req/s (agent cpu {:.2} s, {} exchanges)",
            i + 1,
            r.without,
            r.off.0,
            r.off.1.cpu_s,
            r.off.1.exchanges,
            r.on.0,
            r.on.1.cpu_s,
            r.on.1.exchanges
        );
    }
    let (without, off, on) = rates(&runs);
    let us = |v| agent_median(&runs, v, AgentRun::us_per_exchange);
    println!(
        "downstream http-path ({url} under wrk, {connections} keep-alive connections, {seconds} s x {} rounds):",
        o.rounds
    );
    println!(
        "downstream http-path: median req/s without {without:.0} | downstream off {off:.0} | downstream on {on:.0}; ratio on/off {:.3}; agent cpu per exchange off {:.2} us | on {:.2} us",
        on / off,
        us(Variant::Off),
        us(Variant::On)
    );
    if errors > 0 {
        println!("WARNING: wrk saw {errors} socket errors or error responses over the runs");
    }
    Ok(())
}

/// Workload 2: redis-benchmark (GET, SET) against a throwaway redis-server; with
/// downstream capture on, the agent parses the client's calls.
fn redis_path(bin: &Path, configs: &Configs, o: &Options) -> Result<()> {
    let redis = Redis::start(&configs.dir)?;
    let (port, connections, n) = (redis.port, o.connections, o.redis_requests);
    redis_benchmark(port, connections, n.min(10_000))?; // warm-up
    let runs = rounds(bin, configs, o.rounds, || {
        redis_benchmark(port, connections, n)
    })?;
    for (i, r) in runs.iter().enumerate() {
        println!(
            "redis-path round {}: without {:.0} req/s, downstream off {:.0} req/s (agent cpu {:.2} s, {} downstream calls), downstream on {:.0} req/s (agent cpu {:.2} s, {} downstream calls)",
            i + 1,
            r.without,
            r.off.0,
            r.off.1.cpu_s,
            r.off.1.downstream_calls,
            r.on.0,
            r.on.1.cpu_s,
            r.on.1.downstream_calls
        );
    }
    let (without, off, on) = rates(&runs);
    let cpu = |v| agent_median(&runs, v, |r| r.cpu_s);
    let calls = agent_median(&runs, Variant::On, |r| r.downstream_calls as f64);
    println!(
        "downstream redis-path (redis-benchmark -t get,set -n {n} -c {connections}, {} rounds):",
        o.rounds
    );
    println!(
        "downstream redis-path: median req/s without {without:.0} | downstream off {off:.0} | downstream on {on:.0}; ratio on/off {:.3}; agent cpu off {:.2} s | on {:.2} s; downstream calls (on, median) {calls:.0}",
        on / off,
        cpu(Variant::Off),
        cpu(Variant::On)
    );
    let silent = runs.iter().filter(|r| r.on.1.downstream_calls == 0).count();
    if silent == 0 {
        let us = agent_median(&runs, Variant::On, |r| {
            r.cpu_s * 1e6 / r.downstream_calls as f64
        });
        println!("  agent cpu per downstream call (on, median): {us:.2} us");
    } else {
        println!(
            "WARNING: api_observer_downstream_calls_total stayed 0 in {silent} of {} runs with \
             downstream capture on: the agent parsed no Redis call there, so the on variant \
             measured no downstream work (is the agent's Redis parser in this build?)",
            runs.len()
        );
    }
    Ok(())
}

/// redis-benchmark's GET and SET over `connections` clients, `n` requests each;
/// requests/s over both.
fn redis_benchmark(port: u16, connections: u32, n: u64) -> Result<f64> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &connections.to_string(), "-n", &n.to_string()])
        .args(["-t", "get,set", "-q"])
        .stdin(Stdio::null())
        .output()
        .context("running redis-benchmark (apt-get install redis-tools)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rates = parse_redis_benchmark(&text);
    if !out.status.success() || rates.len() != 2 {
        bail!(
            "redis-benchmark failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The same count of each: the rate over both is the harmonic mean.
    Ok(2.0 / rates.iter().map(|(_, r)| 1.0 / r).sum::<f64>())
}

/// `SET: 98039.22 requests per second, p50=0.271 msec` lines of `redis-benchmark -q`
/// (progress updates in between end with `\r`): `(test, requests/s)`.
fn parse_redis_benchmark(text: &str) -> Vec<(String, f64)> {
    text.split(['\r', '\n'])
        .filter_map(|l| {
            let (test, rest) = l.split_once(':')?;
            let (rate, _) = rest.split_once(" requests per second")?;
            let rate: f64 = rate.trim().parse().ok()?;
            (rate > 0.0).then(|| (test.trim().to_string(), rate))
        })
        .collect()
}

/// A `redis-server` on a free loopback port, with no persistence, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(dir: &Path) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = dir.join("redis.log");
        let child = Command::new("redis-server")
            .args(["--save", "", "--appendonly", "no"])
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (apt-get install redis-server)")?;
        let mut me = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = me.child.try_wait()? {
                bail!(
                    "redis-server exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if me.ping() {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!("redis-server on port {port} did not answer PING");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ping(&self) -> bool {
        let addr = ([127, 0, 0, 1], self.port).into();
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            return false;
        }
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "PING"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_benchmark_quiet_report() {
        let text = "SET: rps=91234.0 (overall: 90000.0) avg_msec=0.300 (overall: 0.310)\r\
            SET: 98039.22 requests per second, p50=0.271 msec\n\
            GET: rps=0.0 (overall: nan) avg_msec=nan (overall: nan)\r\
            GET: 102040.82 requests per second, p50=0.255 msec\n\n";
        assert_eq!(
            parse_redis_benchmark(text),
            [
                ("SET".to_string(), 98039.22),
                ("GET".to_string(), 102040.82)
            ]
        );
        // Redis 6 and older print no percentile.
        assert_eq!(
            parse_redis_benchmark("PING_INLINE: 1000.00 requests per second\n").len(),
            1
        );
        assert!(parse_redis_benchmark("ERROR: connection refused\n").is_empty());
    }

    #[test]
    fn configs_per_variant() {
        assert_eq!(config_text(false), "[downstream]\nenabled = false\n");
        assert_eq!(config_text(true), "[downstream]\nenabled = true\n");
        let configs = Configs::write().unwrap();
        let off = std::fs::read_to_string(configs.path(Variant::Off)).unwrap();
        let on = std::fs::read_to_string(configs.path(Variant::On)).unwrap();
        assert!(off.contains("enabled = false") && on.contains("enabled = true"));
        let dir = configs.dir.clone();
        drop(configs);
        assert!(!dir.exists());
    }
}
