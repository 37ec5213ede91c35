//! Throwaway Redis servers for the fleet tests: one `redis-server` on a free loopback port
//! (no persistence, killed on drop) that can be stopped and started again on the same
//! port, and a local three-master Redis Cluster. Both are the Debian packages'
//! `redis-server` and `redis-cli`, driven as a user would.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::{free_port, scratch_dir, wait_for};

/// `redis-cli -h 127.0.0.1 -p <port> <args>`; returns its stdout (raw: redis-cli does not
/// quote when its output is not a terminal). Fails when redis-cli fails or answers an
/// error (`ERR ...`, `WRONGTYPE ...`), which redis-cli prints with a zero exit status.
pub fn cli(port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running redis-cli")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let first = stdout.lines().next().unwrap_or_default();
    if !out.status.success()
        || ["ERR", "WRONGTYPE", "MOVED", "CLUSTERDOWN", "NOAUTH"]
            .iter()
            .any(|e| first.starts_with(e))
    {
        bail!(
            "redis-cli -p {port} {}: {} {stdout}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// One `redis-server` process on a loopback port.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    /// A fresh server on a free port: nothing saved, nothing appended, loopback only.
    pub fn start() -> Result<Self> {
        Self::start_with(free_port(), &scratch_dir("redis"), &[])
    }

    /// A server on `port` with its files (log, cluster config) in `dir` and `extra`
    /// arguments.
    pub fn start_with(port: u16, dir: &Path, extra: &[&str]) -> Result<Self> {
        let mut me = Self {
            port,
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        me.spawn()?;
        Ok(me)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = self.dir.join(format!("redis-{}.log", self.port));
        let child = Command::new("redis-server")
            .args(["--save", "", "--appendonly", "no"])
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        let ready = wait_for(Duration::from_secs(10), || {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return Some(false);
            }
            cli(self.port, &["PING"])
                .ok()
                .filter(|o| o.trim() == "PONG")
                .map(|_| true)
        });
        if ready != Some(true) {
            bail!(
                "redis-server on port {} did not answer PING; log:\n{}",
                self.port,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(())
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        cli(self.port, args)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kill the server (SIGKILL: an outage, not a shutdown) and wait until the port
    /// refuses connections.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait().context("waiting for redis-server")?;
        }
        let addr = format!("127.0.0.1:{}", self.port).parse()?;
        wait_for(Duration::from_secs(5), || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .is_err()
                .then_some(())
        })
        .with_context(|| format!("port {} still accepts after the kill", self.port))
    }

    /// Start the server again on the same port (empty: nothing was saved).
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.stop()?;
        }
        self.spawn()
    }

    /// Every key of this server (`--scan`; one node of a cluster lists its own).
    pub fn keys(&self) -> Result<Vec<String>> {
        Ok(self
            .cli(&["--scan"])?
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    }

    /// `DBSIZE`.
    pub fn dbsize(&self) -> Result<u64> {
        self.cli(&["DBSIZE"])?
            .trim()
            .parse()
            .context("DBSIZE is not a number")
    }

    /// `PTTL key` in milliseconds: -1 no expiry, -2 no such key.
    pub fn pttl(&self, key: &str) -> Result<i64> {
        self.cli(&["PTTL", key])?
            .trim()
            .parse()
            .context("PTTL is not a number")
    }

    /// Everything a key holds, read by its type (raw bytes, lossily as text): a string
    /// (HyperLogLogs are strings), a hash's fields and values, a set's or sorted set's
    /// members (with scores), a list, a stream's entries.
    pub fn value_text(&self, key: &str) -> Result<String> {
        let kind = self.cli(&["TYPE", key])?.trim().to_string();
        let read: &[&str] = match kind.as_str() {
            "string" => &["GET"],
            "hash" => &["HGETALL"],
            "set" => &["SMEMBERS"],
            "zset" => &["ZRANGE", "0", "-1", "WITHSCORES"],
            "list" => &["LRANGE", "0", "-1"],
            "stream" => &["XRANGE", "-", "+"],
            "none" => return Ok(String::new()),
            other => bail!("key {key}: unexpected type {other}"),
        };
        let mut args = vec![read[0], key];
        args.extend(&read[1..]);
        self.cli(&args)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis Cluster of masters only, on loopback, each with its own cluster bus port.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
}

impl RedisCluster {
    /// `masters` nodes (at least three), joined with `redis-cli --cluster create` and
    /// waited for until every node says `cluster_state:ok`.
    pub fn start(masters: usize) -> Result<Self> {
        let dir = scratch_dir("redis-cluster");
        let mut nodes = Vec::new();
        for _ in 0..masters {
            let port = free_port();
            // The bus port defaults to port + 10000, which may be taken or past 65535.
            let bus = free_port().to_string();
            let conf = dir.join(format!("nodes-{port}.conf"));
            let conf = conf.to_str().context("scratch path is not UTF-8")?;
            nodes.push(Redis::start_with(
                port,
                &dir,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf,
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "5000",
                ],
            )?);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .context("running redis-cli --cluster create")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !text.contains("All 16384 slots covered") {
            bail!(
                "redis-cli --cluster create failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let me = Self { nodes };
        wait_for(Duration::from_secs(20), || {
            me.nodes
                .iter()
                .all(|n| {
                    n.cli(&["CLUSTER", "INFO"])
                        .is_ok_and(|i| i.lines().any(|l| l.trim() == "cluster_state:ok"))
                })
                .then_some(())
        })
        .context("the cluster never reached cluster_state:ok")?;
        Ok(me)
    }

    /// The seed URLs, `redis://127.0.0.1:<port>` each.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }

    /// `redis-cli -c` (follows redirections) through the first node.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-c"];
        all.extend(args);
        cli(self.nodes[0].port, &all)
    }
}
