//! `cargo xtask bench fleet`: simulated agents publishing their sessions to a real,
//! throwaway `redis-server` (`observer bench fleet`), and the goals for the fleet
//! store checked against what it prints.

use std::{
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// The goals: store operations per second per agent (pipelined), at most.
const GOAL_OPS_PER_AGENT: f64 = 2_000.0;
/// ... and the fleet query's latency, below.
const GOAL_QUERY_MS: f64 = 50.0;

/// What `observer bench fleet` simulates.
pub struct Load {
    pub agents: usize,
    pub sessions: usize,
    pub interval_secs: u64,
    pub rounds: usize,
}

/// A `redis-server` on a free loopback port, with no persistence, killed on drop (also
/// the downstream bench's).
pub(crate) struct Redis {
    child: Child,
    pub port: u16,
    dir: std::path::PathBuf,
}

impl Redis {
    pub fn start() -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!(
            "observer-bench-redis-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("redis-server")
            .args(["--save", "", "--appendonly", "no"])
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        let mut me = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = me.child.try_wait()? {
                bail!(
                    "redis-server exited ({status}): {}",
                    std::fs::read_to_string(me.dir.join("redis.log")).unwrap_or_default()
                );
            }
            if me.ping() {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!("redis-server on port {} did not answer PING", me.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ping(&mut self) -> bool {
        let addr = ([127, 0, 0, 1], self.port).into();
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            return false;
        }
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "PING"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
    }

    fn used_memory(&self) -> Option<u64> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "INFO", "memory"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:")?.trim().parse().ok())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The figures of the `fleet key=value ...` line `observer bench fleet` prints.
#[derive(Debug, PartialEq)]
pub struct Figures {
    pub ops_per_sec_per_agent: f64,
    pub bytes_per_session: f64,
    pub query_ms_median: f64,
    pub query_ms_max: f64,
}

/// Find and parse the `fleet ...` line; every figure must be there.
pub fn parse(output: &str) -> Result<Figures> {
    let line = output
        .lines()
        .find(|l| l.starts_with("fleet "))
        .context("no `fleet ...` line in the output of observer bench fleet")?;
    let field = |name: &str| -> Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .with_context(|| format!("{name} missing in {line:?}"))?
            .parse()
            .with_context(|| format!("{name} is not a number in {line:?}"))
    };
    Ok(Figures {
        ops_per_sec_per_agent: field("ops_per_sec_per_agent")?,
        bytes_per_session: field("bytes_per_session")?,
        query_ms_median: field("query_ms_median")?,
        query_ms_max: field("query_ms_max")?,
    })
}

/// One line per goal: the figure, the goal, met or NOT met.
pub fn verdicts(f: &Figures) -> Vec<String> {
    let line = |name: &str, value: f64, goal: &str, met: bool| {
        format!(
            "  {name} = {value:.1}   (goal {goal}: {})",
            if met { "goal met" } else { "goal NOT met" }
        )
    };
    vec![
        line(
            "store operations per second per agent",
            f.ops_per_sec_per_agent,
            &format!("<= {GOAL_OPS_PER_AGENT:.0}"),
            f.ops_per_sec_per_agent <= GOAL_OPS_PER_AGENT,
        ),
        line(
            "fleet query, median ms",
            f.query_ms_median,
            &format!("< {GOAL_QUERY_MS:.0}"),
            f.query_ms_median < GOAL_QUERY_MS,
        ),
        line(
            "fleet query, max ms",
            f.query_ms_max,
            &format!("< {GOAL_QUERY_MS:.0}"),
            f.query_ms_max < GOAL_QUERY_MS,
        ),
    ]
}

/// Start the store (unless `endpoint` names one), run the simulation, print its line and
/// the goals.
pub fn run(bin: &Path, load: &Load, endpoint: Option<&str>) -> Result<()> {
    let (redis, endpoint) = match endpoint {
        Some(e) => (None, e.to_string()),
        None => {
            crate::peers::ensure_commands(&["redis-server", "redis-cli"])?;
            let redis = Redis::start()?;
            let url = format!("redis://127.0.0.1:{}", redis.port);
            (Some(redis), url)
        }
    };
    println!(
        "fleet store: {} simulated agents x {} sessions, published every {} s, {} rounds, against {endpoint}",
        load.agents, load.sessions, load.interval_secs, load.rounds
    );
    let out = Command::new(bin)
        .args(["bench", "fleet", "--endpoint", &endpoint])
        .args(["--agents", &load.agents.to_string()])
        .args(["--sessions", &load.sessions.to_string()])
        .args(["--interval-secs", &load.interval_secs.to_string()])
        .args(["--rounds", &load.rounds.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {} bench fleet", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    if !out.status.success() {
        bail!("observer bench fleet failed: {}", out.status);
    }
    let figures = parse(&stdout)?;
    for line in verdicts(&figures) {
        println!("{line}");
    }
    println!(
        "  bytes per session in the store: {:.0}",
        figures.bytes_per_session
    );
    if let Some(bytes) = redis.as_ref().and_then(Redis::used_memory) {
        println!(
            "  redis used_memory after the run: {:.1} MiB",
            bytes as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_line_and_judges_each_goal() {
        let out = "warming up\nfleet ops_per_sec_per_agent=812.5 bytes_per_session=301.2 \
                   query_ms_median=12.25 query_ms_max=61.0 agents=20 sessions=10000\n";
        let f = parse(out).unwrap();
        assert_eq!(
            f,
            Figures {
                ops_per_sec_per_agent: 812.5,
                bytes_per_session: 301.2,
                query_ms_median: 12.25,
                query_ms_max: 61.0,
            }
        );
        let v = verdicts(&f);
        assert_eq!(v.len(), 3);
        assert!(v[0].ends_with("(goal <= 2000: goal met)"), "{}", v[0]);
        assert!(v[1].ends_with("(goal < 50: goal met)"), "{}", v[1]);
        assert!(v[2].ends_with("(goal < 50: goal NOT met)"), "{}", v[2]);
        assert!(parse("fleet ops_per_sec_per_agent=1").is_err());
        assert!(parse("nothing here").is_err());
    }
}
