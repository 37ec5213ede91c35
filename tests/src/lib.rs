//! End-to-end harness: the real agent (`OBSERVER_BIN`, built by `cargo xtask test`), real
//! servers (Python, nginx) and real clients, on this machine's kernel.
//!
//! Tests need root, BPF and their peers (`cargo xtask test` installs the peers). Without
//! them a test skips: it says why, records the skip in `OBSERVER_SKIP_LOG` so that
//! `cargo xtask test` counts it as skipped (never as passed), and returns.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

pub mod dashboard;
pub mod downstream;
pub mod redis;
pub mod scenarios;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Whether the prerequisites are here; when not, the test is recorded as skipped.
#[must_use]
pub fn prerequisites() -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing.push("BTF (/sys/kernel/btf/vmlinux)".into());
    }
    if !agent_bin().exists() {
        missing.push(format!(
            "agent binary {} (run through `cargo xtask test`)",
            agent_bin().display()
        ));
    }
    missing.extend(
        ["curl", "python3", "nginx"]
            .into_iter()
            .filter(|t| !installed(t))
            .map(String::from),
    );
    available_or_skip(&missing)
}

/// Whether a command is on PATH.
fn installed(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the tools a test needs are installed; when not, the test is recorded as skipped.
#[must_use]
pub fn require_tools(tools: &[&str]) -> bool {
    let missing: Vec<String> = tools
        .iter()
        .filter(|t| !installed(t))
        .map(|t| t.to_string())
        .collect();
    available_or_skip(&missing)
}

/// `true` when nothing is missing; otherwise record a skip.
fn available_or_skip(missing: &[String]) -> bool {
    if missing.is_empty() {
        return true;
    }
    skip(&format!("prerequisites missing: {}", missing.join(", ")));
    false
}

/// Record that the current test cannot run: on stderr, and as one line in the file named
/// by `OBSERVER_SKIP_LOG`, which `cargo xtask test` counts (a skip is never a pass).
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(log) = std::env::var_os("OBSERVER_SKIP_LOG") {
        let line = format!("{test}: {reason}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("cannot record a skip in {}: {e}", log.to_string_lossy());
        }
    }
}

pub fn agent_bin() -> PathBuf {
    std::env::var_os("OBSERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/observer"))
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A fresh scratch directory for one test.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "observer-e2e-{}-{}-{name}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A minimal HTTP/1.0 request from the test process (used for the agent's own endpoint
/// and for Prometheus); returns (status, body).
pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: agent\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    parse_response(&text)
}

/// `GET` with [`http_request`].
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    http_request(addr, "GET", path)
}

/// Poll `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent under test, writing its exchange stream to a file.
pub struct Agent {
    child: Child,
    /// The metrics port (`/metrics`, `/healthz`).
    pub addr: SocketAddr,
    pub dir: PathBuf,
    jsonl: PathBuf,
    /// The control socket (the JSON API).
    pub socket: PathBuf,
}

impl Agent {
    /// Start an agent whose exchange stream prints raw paths (the tests compare them).
    pub fn start(extra: &[&str]) -> Result<Self> {
        Self::launch(extra, true)
    }

    /// Start an agent with the default exchange stream: route templates, no raw paths.
    pub fn start_default_stream(extra: &[&str]) -> Result<Self> {
        Self::launch(extra, false)
    }

    fn launch(extra: &[&str], raw_paths: bool) -> Result<Self> {
        let dir = scratch_dir("agent");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let jsonl = dir.join("exchanges.jsonl");
        // Each agent its own control socket (unless the test chose one), so tests never
        // meet another agent's socket, or one running on the host.
        let config_socket = extra
            .iter()
            .position(|a| *a == "--config")
            .and_then(|i| extra.get(i + 1))
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|text| configured_socket(&text));
        let flag_socket = extra
            .iter()
            .position(|a| *a == "--control-socket")
            .and_then(|i| extra.get(i + 1))
            .map(PathBuf::from);
        let mut own_socket = Vec::new();
        let socket = match (flag_socket, config_socket) {
            (Some(s), _) | (None, Some(s)) => s,
            (None, None) => {
                let s = dir.join("control.sock");
                own_socket.push("--control-socket".to_string());
                own_socket.push(s.display().to_string());
                s
            }
        };
        let child = Command::new(agent_bin())
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--exchanges-jsonl")
            .arg(&jsonl)
            .args(&own_socket)
            .args(raw_paths.then_some("--exchange-raw-paths"))
            .args(extra)
            .stdout(std::fs::File::create(dir.join("stdout"))?)
            .stderr(std::fs::File::create(dir.join("stderr"))?)
            .spawn()
            .context("starting the agent")?;
        let mut agent = Self {
            child,
            addr,
            dir,
            jsonl,
            socket,
        };
        let healthy = wait_for(Duration::from_secs(30), || {
            if let Ok(Some(_)) = agent.child.try_wait() {
                return Some(false);
            }
            http_get(agent.addr, "/healthz")
                .ok()
                .filter(|(code, _)| *code == 200)
                .map(|_| true)
        });
        if healthy != Some(true) {
            bail!("agent did not become healthy; stderr:\n{}", agent.stderr());
        }
        Ok(agent)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// Every exchange reported so far.
    pub fn exchanges(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.jsonl)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Exchanges whose server port is `port`, waiting until `count` of them are there
    /// (and a little longer, so that an extra, wrong one would be seen too).
    pub fn exchanges_for_port(&self, port: u16, count: usize) -> Vec<Value> {
        let of_port = || -> Vec<Value> {
            self.exchanges()
                .into_iter()
                .filter(|e| server_port(e) == Some(port))
                .collect()
        };
        wait_for(Duration::from_secs(10), || {
            let v = of_port();
            (v.len() >= count).then_some(())
        });
        std::thread::sleep(Duration::from_millis(300));
        of_port()
    }

    pub fn metrics(&self) -> String {
        http_get(self.addr, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT, then wait for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("agent did not stop within 10 s of SIGINT");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.stop();
        }
    }
}

/// The control socket a configuration file sets (`control_socket = "..."` at the top,
/// or `socket = "..."` in `[control]`).
fn configured_socket(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|l| {
        let (key, value) = l.split_once('=')?;
        matches!(key.trim(), "control_socket" | "socket")
            .then(|| PathBuf::from(value.trim().trim_matches('"')))
    })
}

/// A minimal HTTP/1.0 request over a Unix socket with `headers` and `body`; returns
/// (status, body).
pub fn unix_request(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String)> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: agent\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&String::from_utf8_lossy(&raw))
}

fn parse_response(text: &str) -> Result<(u16, String)> {
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn server_port(e: &Value) -> Option<u16> {
    e["server"]
        .as_str()?
        .parse::<SocketAddr>()
        .ok()
        .map(|a| a.port())
}

pub fn client_addr(e: &Value) -> Option<SocketAddr> {
    e["client"].as_str()?.parse().ok()
}

/// The fields a test compares: (role, method, path, status).
pub fn summary(e: &Value) -> (String, String, String, u64) {
    (
        e["role"].as_str().unwrap_or_default().to_string(),
        e["method"].as_str().unwrap_or_default().to_string(),
        e["path"].as_str().unwrap_or_default().to_string(),
        e["status"].as_u64().unwrap_or_default(),
    )
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            child,
            name: name.into(),
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait until something accepts connections on `addr`.
pub fn wait_listening(addr: SocketAddr) -> Result<()> {
    wait_for(Duration::from_secs(15), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200))
            .ok()
            .map(|_| ())
    })
    .with_context(|| format!("nothing listening on {addr}"))
}

/// The test API server (`tests/servers/api.py`): HTTP/1.1 keep-alive, routes for every
/// scenario.
pub fn python_api_server(bind: &str, port: u16) -> Result<Proc> {
    let script = workspace_root().join("tests/servers/api.py");
    let p = Proc::spawn(
        "api.py",
        Command::new("python3")
            .arg(script)
            .arg(bind)
            .arg(port.to_string()),
    )?;
    let host = if bind.contains(':') {
        format!("[{bind}]:{port}")
    } else {
        format!("{bind}:{port}")
    };
    wait_listening(host.parse()?)?;
    Ok(p)
}

/// nginx in its own prefix, serving static files and a few fixed answers.
pub struct Nginx {
    pub dir: PathBuf,
    pub port: u16,
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, made with `openssl`.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Cert {
    pub fn make(dir: &Path) -> Result<Self> {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            bail!(
                "openssl req failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self { cert, key })
    }
}

impl Nginx {
    pub fn start(port: u16, extra_server: &str) -> Result<Self> {
        Self::start_with(port, None, false, extra_server)
    }

    /// nginx serving HTTPS (HTTP/1.1) with a fresh self-signed certificate.
    pub fn start_tls(port: u16, extra_server: &str) -> Result<(Self, Cert)> {
        let dir = scratch_dir("nginx-cert");
        let cert = Cert::make(&dir)?;
        let nginx = Self::start_with(port, Some(&cert), false, extra_server)?;
        Ok((nginx, cert))
    }

    /// nginx serving cleartext HTTP/2 with prior knowledge (h2c; nginx does not take
    /// `Upgrade: h2c`, and this port speaks only HTTP/2).
    pub fn start_h2c(port: u16, extra_server: &str) -> Result<Self> {
        Self::start_with(port, None, true, extra_server)
    }

    /// nginx serving HTTPS with HTTP/2 and HTTP/1.1 (chosen by ALPN) with a fresh
    /// self-signed certificate.
    pub fn start_h2_tls(port: u16, extra_server: &str) -> Result<(Self, Cert)> {
        let dir = scratch_dir("nginx-cert");
        let cert = Cert::make(&dir)?;
        let nginx = Self::start_with(port, Some(&cert), true, extra_server)?;
        Ok((nginx, cert))
    }

    /// Plain-HTTP nginx run from a copy of its binary called `name` (at most 15 bytes),
    /// so that its processes' `comm` is `name`: a server an agent can be told to ignore
    /// (`[privacy] ignore_processes`) while another agent watches it.
    pub fn start_named(name: &str, port: u16, extra_server: &str) -> Result<Self> {
        if name.len() > 15 {
            bail!("{name}: a process name (comm) holds at most 15 bytes");
        }
        let installed = Command::new("sh")
            .args(["-c", "command -v nginx"])
            .output()
            .context("looking for nginx")?;
        let installed = String::from_utf8_lossy(&installed.stdout)
            .trim()
            .to_string();
        if installed.is_empty() {
            bail!("nginx is not on PATH");
        }
        let bin = scratch_dir("nginx-bin").join(name);
        std::fs::copy(&installed, &bin)
            .with_context(|| format!("copying {installed} to {}", bin.display()))?;
        Self::start_from(&bin, port, None, false, extra_server)
    }

    /// The pid of the master process (from its pid file).
    pub fn master_pid(&self) -> Result<u32> {
        let text = std::fs::read_to_string(self.dir.join("nginx.pid"))?;
        text.trim().parse().context("nginx.pid holds no pid")
    }

    fn start_with(port: u16, tls: Option<&Cert>, http2: bool, extra_server: &str) -> Result<Self> {
        Self::start_from(Path::new("nginx"), port, tls, http2, extra_server)
    }

    fn start_from(
        bin: &Path,
        port: u16,
        tls: Option<&Cert>,
        http2: bool,
        extra_server: &str,
    ) -> Result<Self> {
        let dir = scratch_dir("nginx");
        // `listen ... http2` is what nginx 1.22 (Debian 12) knows; later versions still
        // take it (with a deprecation notice for `http2 on;`).
        let h2 = if http2 { " http2" } else { "" };
        let (ssl, tls_conf) = match tls {
            Some(c) => (
                " ssl",
                format!(
                    "  ssl_certificate {};\n  ssl_certificate_key {};\n",
                    c.cert.display(),
                    c.key.display()
                ),
            ),
            None => ("", String::new()),
        };
        std::fs::create_dir_all(dir.join("html"))?;
        std::fs::write(dir.join("html/index.html"), "hello from nginx\n")?;
        std::fs::write(dir.join("html/big.bin"), vec![b'x'; 256 * 1024])?;
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon on;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d};\n proxy_temp_path {d};\n\
             fastcgi_temp_path {d};\n uwsgi_temp_path {d};\n scgi_temp_path {d};\n\
             server {{\n  listen 127.0.0.1:{port}{ssl}{h2};\n  listen [::1]:{port}{ssl}{h2};\n  root {d}/html;\n{tls_conf}\
               location = /empty {{ return 204; }}\n\
               location = /upload {{ client_max_body_size 10m; return 201 \"stored\\n\"; }}\n\
               {extra_server}\n }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let status = Command::new(bin)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(&dir)
            .status()
            .with_context(|| format!("starting {}", bin.display()))?;
        if !status.success() {
            bail!(
                "nginx failed: {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
        }
        wait_listening(format!("127.0.0.1:{port}").parse()?)?;
        Ok(Self { dir, port })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("nginx")
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .arg("-p")
            .arg(&self.dir)
            .args(["-s", "stop"])
            .status();
    }
}

/// Agent flags for tests that assert exact client addresses and ports: ask for them in
/// full (the default truncates client addresses to their network).
pub const FULL_ADDRESSES: &[&str] = &["--client-ip", "full"];

/// The local ports of curl output written with `-w '%{local_port} ...\n'`, one per line.
pub fn local_ports(curl_out: &str) -> Vec<u16> {
    curl_out
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Run curl; returns its stdout. `-w '%{local_port}'` style output is the caller's.
pub fn curl(args: &[&str]) -> Result<String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!(
            "curl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace joined to the host by a veth pair, so that a client inside it
/// really comes from its own address (`10.<a>.<b>.2`, the host side being `.1`).
pub struct Netns {
    pub name: String,
    host_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Remove namespaces and veth links that earlier test runs left behind (a killed run
/// never reaches its `Drop`): their names carry the pid of the test process that made
/// them, and a pid that is gone means nobody uses them. A leftover host-side veth would
/// otherwise hold the same subnet and take the traffic.
fn remove_leftover_namespaces() {
    let dead = |name: &str, prefix: &str| -> bool {
        name.strip_prefix(prefix)
            .and_then(|rest| rest.split('n').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| {
                pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
            })
    };
    let list = |args: &[&str]| -> String {
        Command::new("ip")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    for line in list(&["netns", "list"]).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if dead(name, "obs") {
            let _ = ip(&["netns", "del", name]);
        }
    }
    for line in list(&["-o", "link", "show"]).lines() {
        // "7: obh1234n1@if6: <...>"
        let name = line
            .split(':')
            .nth(1)
            .map(|n| n.trim().split('@').next().unwrap_or_default())
            .unwrap_or_default();
        if dead(name, "obh") {
            let _ = ip(&["link", "del", name]);
        }
    }
}

impl Netns {
    /// `index` picks the subnet `10.200.<index>.0/24`.
    pub fn create(index: u8) -> Result<Self> {
        remove_leftover_namespaces();
        // Interface names are at most 15 bytes: "obh" + pid (<= 7 digits) + "n" + index.
        let tag = std::process::id();
        let name = format!("obs{tag}n{index}");
        let host_if = format!("obh{tag}n{index}");
        let ns_if = format!("obc{tag}n{index}");
        let host_ip = format!("10.200.{index}.1");
        let ns_ip = format!("10.200.{index}.2");
        let _ = ip(&["netns", "del", &name]);
        let _ = ip(&["link", "del", &host_if]);
        ip(&["netns", "add", &name])?;
        let me = Self {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_ip}/24"),
            "dev",
            &ns_if,
        ])?;
        ip(&["-n", &name, "link", "set", &ns_if, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(me)
    }

    /// Run curl inside the namespace; returns its stdout.
    pub fn curl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "curl",
                "-sS",
                "--max-time",
                "10",
            ])
            .args(args)
            .output()
            .context("running curl in a namespace")?;
        if !out.status.success() {
            bail!(
                "curl in {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// GET a JSON document from the agent's API (over its control socket).
pub fn agent_json(agent: &Agent, path: &str) -> Result<Value> {
    let (code, body) = agent_request(agent, "GET", path)?;
    if code != 200 {
        bail!("{path}: {code} {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

/// Send a request to the agent's API (over its control socket); returns (status, body).
pub fn agent_request(agent: &Agent, method: &str, path: &str) -> Result<(u16, String)> {
    unix_request(&agent.socket, method, path, &[], b"")
}

/// Percent-encode a path segment (session ids of views hold `/`, `:` and spaces).
pub fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether `python3` can import these modules; when not, the test is recorded as skipped.
#[must_use]
pub fn require_python_modules(modules: &[&str]) -> bool {
    let missing: Vec<String> = modules
        .iter()
        .filter(|m| {
            !Command::new("python3")
                .args(["-c", &format!("import {m}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|m| format!("python module {m}"))
        .collect();
    available_or_skip(&missing)
}

/// Build the Go program in `tests/servers/<name>` (standard library only) with the
/// machine's Go toolchain into a scratch directory; returns the binary. Nothing is
/// downloaded (`GOPROXY=off`).
pub fn build_go_program(name: &str) -> Result<PathBuf> {
    let dir = scratch_dir(name);
    let out_bin = dir.join(name);
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&out_bin)
        .arg(".")
        .current_dir(workspace_root().join("tests/servers").join(name))
        .env("GOCACHE", dir.join("cache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GO111MODULE", "on")
        .env("GOTOOLCHAIN", "local")
        .output()
        .context("running go build")?;
    if !out.status.success() {
        bail!(
            "go build of {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out_bin)
}

/// The agent's TLS targets (`/api/tls`).
pub fn tls_target_list(agent: &Agent) -> Vec<Value> {
    agent_json(agent, "/api/tls")
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Wait until `/api/tls` lists `pid` under an attached target whose path ends with one
/// of `path_ends`; returns that target.
pub fn wait_tls_attached(agent: &Agent, path_ends: &[&str], pid: u32) -> Result<Value> {
    wait_for(Duration::from_secs(10), || {
        tls_target_list(agent).into_iter().find(|t| {
            t["attached"] == true
                && t["path"]
                    .as_str()
                    .is_some_and(|p| path_ends.iter().any(|end| p.ends_with(end)))
                && t["pids"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|x| x.as_u64() == Some(u64::from(pid))))
        })
    })
    .with_context(|| {
        format!(
            "{path_ends:?} (pid {pid}) never attached; /api/tls: {:?}\n{}",
            tls_target_list(agent),
            agent.stderr()
        )
    })
}

/// The value of `api_observer_http_parse_issues_total{issue="<issue>"}` in a `/metrics`
/// text, if the series is there.
pub fn parse_issue_count(metrics: &str, issue: &str) -> Option<f64> {
    let series = format!("api_observer_http_parse_issues_total{{issue=\"{issue}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
}

/// The sum of every sample of the series whose line starts with `name` (a metric name,
/// or a name with its labels) in a `/metrics` text; 0 when there is none.
pub fn metric_total(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
