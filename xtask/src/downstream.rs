//! `cargo xtask bench downstream`: downstream capture (`[downstream] enabled`) must not
//! change the overhead goals of the HTTP path. Two workloads, each in alternating rounds
//! of three runs (without the agent, the agent with downstream capture off, the agent
//! with it on), in one run on the same machine so the ratios are meaningful:
//!
//! - the HTTP path: nginx plaintext under wrk, as in `bench overhead`; prints the
//!   median requests/s, the ratio on/off and the agent's CPU per reported exchange;
//! - the downstream path: a Go HTTP API server (`tests/servers/godownstream`) under wrk,
//!   each request making two Redis calls on a connection of its own to a throwaway
//!   `redis-server`: with downstream capture on, the agent parses every call and
//!   attributes it to its request (by goroutine); prints requests/s, the ratio on/off,
//!   the agent's CPU per request and the calls it attributed (proof that the on variant
//!   did the work).

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    bench::{cpu_seconds, median, metric_by_label, metric_sum, wrk, Agent, Nginx, CASES},
    fleet::Redis,
};

/// What the bench runs (`cargo xtask bench downstream --help`).
pub struct Options {
    pub rounds: usize,
    pub seconds: u64,
    pub connections: u32,
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
    /// Those attributed to a request.
    attributed: u64,
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
            attributed: metric_by_label(
                &metrics,
                "api_observer_downstream_calls_total",
                "attributed",
            )
            .get("true")
            .copied()
            .unwrap_or(0),
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
    if o.rounds == 0 || o.seconds == 0 || o.connections == 0 {
        bail!("--rounds, --seconds and --connections must be at least 1");
    }
    crate::peers::ensure_commands(&["nginx", "wrk", "openssl", "redis-server", "redis-cli", "go"])?;
    let configs = Configs::write()?;
    http_path(bin, &configs, o)?;
    api_path(bin, &configs, o)
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

/// Workload 2: the Go API server under wrk; each request makes two Redis calls.
fn api_path(bin: &Path, configs: &Configs, o: &Options) -> Result<()> {
    let server_bin = build_api_server(&configs.dir)?;
    let redis = Redis::start()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let _server = ApiServer::start(&server_bin, port, redis.port)?;
    let url = format!("http://127.0.0.1:{port}/items/7");
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
            "api-path round {}: without {:.0} req/s, downstream off {:.0} req/s (agent cpu {:.2} s), downstream on {:.0} req/s (agent cpu {:.2} s, {} of {} downstream calls attributed)",
            i + 1,
            r.without,
            r.off.0,
            r.off.1.cpu_s,
            r.on.0,
            r.on.1.cpu_s,
            r.on.1.attributed,
            r.on.1.downstream_calls
        );
    }
    let (without, off, on) = rates(&runs);
    let us = |v| agent_median(&runs, v, AgentRun::us_per_exchange);
    println!(
        "downstream api-path (Go server, 2 Redis calls per request, {url} under wrk, {connections} connections, {seconds} s x {} rounds):",
        o.rounds
    );
    println!(
        "downstream api-path: median req/s without {without:.0} | downstream off {off:.0} | downstream on {on:.0}; ratio on/off {:.3}; agent cpu per reported exchange off {:.2} us | on {:.2} us",
        on / off,
        us(Variant::Off),
        us(Variant::On)
    );
    let rate = agent_median(&runs, Variant::On, |r| {
        r.attributed as f64 / r.downstream_calls.max(1) as f64
    });
    println!("  downstream calls attributed (on, median share): {rate:.3}");
    let silent = runs.iter().filter(|r| r.on.1.downstream_calls == 0).count();
    if silent > 0 {
        println!(
            "WARNING: api_observer_downstream_calls_total stayed 0 in {silent} of {} runs with \
             downstream capture on: the on variant measured no downstream work",
            runs.len()
        );
    }
    if errors > 0 {
        println!("WARNING: wrk saw {errors} socket errors or error responses over the runs");
    }
    Ok(())
}

/// Build `tests/servers/godownstream` (standard library only, nothing downloaded) into
/// `dir`.
fn build_api_server(dir: &Path) -> Result<PathBuf> {
    let out_bin = dir.join("godownstream");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&out_bin)
        .arg(".")
        .current_dir(crate::workspace_root().join("tests/servers/godownstream"))
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GO111MODULE", "on")
        .env("GOTOOLCHAIN", "local")
        .output()
        .context("running go build (apt-get install golang-go)")?;
    if !out.status.success() {
        bail!(
            "go build of godownstream failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out_bin)
}

/// The Go API server, killed on drop.
struct ApiServer {
    child: Child,
}

impl ApiServer {
    fn start(bin: &Path, port: u16, redis_port: u16) -> Result<Self> {
        let child = Command::new(bin)
            .args([port.to_string(), redis_port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the Go API server")?;
        let me = Self { child };
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = ([127, 0, 0, 1], port).into();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                bail!("the Go API server did not listen on port {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
