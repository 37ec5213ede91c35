//! The agent's two surfaces end to end: the metrics port serves nothing with identity; the
//! control channel (Unix socket by uid, TCP listener by bearer token) serves the API,
//! refuses browsers and other uids, audits every call, survives malformed requests, and a
//! flood of API calls does not cost the capture a single exchange.

use std::{
    io::{Read as _, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use e2e::*;
use serde_json::Value;

const TOKEN: &str = "surface-e2e-token-0123456789abcdef";

/// A config with a state directory (so the audit goes to `<state>/audit.jsonl`), the
/// socket in `dir`, and `extra` in `[control]`.
fn config(dir: &Path, control: &str) -> PathBuf {
    let path = dir.join("observer.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{}\"\n[scoring]\ninterval_secs = 1\n[control]\nsocket = \"{}\"\n{control}\n",
            dir.join("state").display(),
            dir.join("control.sock").display()
        ),
    )
    .unwrap();
    path
}

fn token_file(dir: &Path, mode: u32) -> PathBuf {
    let f = dir.join("ops-token");
    std::fs::write(&f, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
    f
}

fn audit(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("state/audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// An HTTP/1.0 request over TCP with headers; returns (status, body).
fn tcp_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: agent\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[test]
fn api_only_on_the_control_channel_with_credentials_and_audited() {
    if !prerequisites() {
        return;
    }
    let dir = scratch_dir("surface");
    let token = token_file(&dir, 0o600);
    let control_port = free_port();
    let cfg = config(
        &dir,
        &format!(
            "listen = \"127.0.0.1:{control_port}\"\ntoken_file = \"{}\"",
            token.display()
        ),
    );
    let agent = Agent::start(&["--config", cfg.to_str().unwrap()]).unwrap();
    let control: std::net::SocketAddr = format!("127.0.0.1:{control_port}").parse().unwrap();

    // The metrics port: metrics and health, nothing else.
    for path in [
        "/api/sessions",
        "/api/findings",
        "/api/frozen",
        "/privacy",
        "/api/tls",
    ] {
        let (code, body) = http_get(agent.addr, path).unwrap();
        assert_eq!(code, 404, "{path} on the metrics port: {body}");
    }
    let (code, _) = http_request(agent.addr, "POST", "/api/purge").unwrap();
    assert_eq!(code, 404);
    assert_eq!(http_get(agent.addr, "/metrics").unwrap().0, 200);

    // The TCP control listener: 401 without the token or with a wrong one, 200 with it.
    let (code, _) = tcp_request(control, "GET", "/api/sessions", &[]);
    assert_eq!(code, 401);
    let (code, _) = tcp_request(
        control,
        "GET",
        "/api/sessions",
        &[("Authorization", "Bearer wrong-token-0123456789abcdef")],
    );
    assert_eq!(code, 401);
    let bearer = format!("Bearer {TOKEN}");
    let (code, body) = tcp_request(
        control,
        "GET",
        "/api/sessions",
        &[("Authorization", &bearer)],
    );
    assert_eq!(code, 200, "{body}");
    // ... but not from a browser, even with the token.
    let (code, _) = tcp_request(
        control,
        "GET",
        "/api/sessions",
        &[
            ("Authorization", &bearer),
            ("Origin", "http://evil.example"),
        ],
    );
    assert_eq!(code, 403);

    // The socket, as root: 200; with a browser's headers: 403.
    let (code, _) = unix_request(&agent.socket, "GET", "/api/sessions", &[], b"").unwrap();
    assert_eq!(code, 200);
    for h in [
        ("Origin", "http://evil.example"),
        ("Sec-Fetch-Site", "cross-site"),
        ("Sec-Fetch-Mode", "no-cors"),
    ] {
        let (code, body) = unix_request(&agent.socket, "GET", "/api/sessions", &[h], b"").unwrap();
        assert_eq!(code, 403, "{h:?}: {body}");
    }

    // The CLI over the TCP listener with the token file, and over the socket.
    let out = Command::new(agent_bin())
        .args(["sessions", "--agent", &format!("http://{control}")])
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(agent_bin())
        .args(["privacy", "--socket"])
        .arg(&agent.socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    // list (TCP), list (socket), CLI list: at least 3 reads before this one.
    assert!(
        report["reads_last_24h"].as_u64().unwrap() >= 3,
        "{report:#}"
    );

    // A lookup is audited with the fingerprints it matched, never the credential.
    let (code, _) = unix_request(
        &agent.socket,
        "POST",
        "/api/lookup",
        &[],
        b"Bearer audit-secret-credential-42\n",
    )
    .unwrap();
    assert_eq!(code, 200);

    let lines = audit(&dir);
    let text = std::fs::read_to_string(dir.join("state/audit.jsonl")).unwrap();
    assert!(!text.contains("audit-secret-credential-42"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
    let has = |pred: &dyn Fn(&Value) -> bool| lines.iter().any(pred);
    assert!(
        has(&|l| l["who"]["token"] == "ops-token"
            && l["action"] == "list_sessions"
            && l["status"] == 200),
        "{text}"
    );
    assert!(
        has(&|l| l["who"]["uid"] == 0 && l["action"] == "list_sessions"),
        "{text}"
    );
    assert!(
        has(&|l| l["who"]["uid"] == 0 && l["action"] == "privacy"),
        "{text}"
    );
    assert!(
        has(&|l| l["action"] == "lookup"
            && l["who"]["uid"] == 0
            && l["fingerprints"].as_array().is_some_and(|a| !a.is_empty())),
        "{text}"
    );
    // Refusals: 2 without a valid token, 1 browser via TCP, 3 browser via the socket.
    let refused = lines.iter().filter(|l| l["action"] == "refused").count();
    assert_eq!(refused, 6, "{text}");
    assert!(
        has(&|l| l["action"] == "refused"
            && l["status"] == 401
            && l["who"]["unauthenticated"].is_string()),
        "{text}"
    );
    // Every call on the control channel is there: 2 + 1 + 1 + 1 + 3 + 1 + 1 + 1.
    assert_eq!(lines.len(), 11, "{text}");
    let metrics = agent.metrics();
    assert!(
        metrics.contains("api_observer_audit_events_total{action=\"refused\"} 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("api_observer_audit_events_total{action=\"lookup\"} 1"),
        "{metrics}"
    );
}

#[test]
fn another_uid_on_the_socket_is_refused() {
    if !prerequisites() || !require_tools(&["setpriv"]) {
        return;
    }
    let dir = scratch_dir("surface-uid");
    // The directory must let uid 65534 reach the socket; the socket's group (0660) lets
    // it connect, and only the uid check stands in the way.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = config(&dir, "group = \"nogroup\"");
    let agent = Agent::start(&["--config", cfg.to_str().unwrap()]).unwrap();
    let mode = std::fs::metadata(&agent.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);

    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(agent_bin())
            .args(args)
            .arg("--socket")
            .arg(&agent.socket)
            .output()
            .unwrap()
    };
    for args in [&["sessions"][..], &["privacy"][..], &["findings"][..]] {
        let out = as_nobody(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} as nobody succeeded");
        assert!(stderr.contains("403"), "{args:?}: {stderr}");
    }
    // Root still may.
    let (code, _) = agent_request(&agent, "GET", "/api/sessions").unwrap();
    assert_eq!(code, 200);
    let text = std::fs::read_to_string(dir.join("state/audit.jsonl")).unwrap();
    let refused = audit(&dir)
        .iter()
        .filter(|l| l["action"] == "refused" && l["who"]["uid"] == 65534 && l["status"] == 403)
        .count();
    assert_eq!(refused, 3, "{text}");
}

#[test]
fn listed_uid_may_use_the_socket() {
    if !prerequisites() || !require_tools(&["setpriv"]) {
        return;
    }
    let dir = scratch_dir("surface-uids");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = config(&dir, "group = \"nogroup\"\nuids = [65534]");
    let agent = Agent::start(&["--config", cfg.to_str().unwrap()]).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(agent_bin())
        .args(["sessions", "--json", "--socket"])
        .arg(&agent.socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(audit(&dir)
        .iter()
        .any(|l| l["who"]["uid"] == 65534 && l["action"] == "list_sessions"));
}

#[test]
fn malformed_requests_get_4xx_never_a_panic() {
    if !prerequisites() {
        return;
    }
    let agent = Agent::start(&[]).unwrap();
    let raw = |bytes: &[u8]| -> String {
        let mut s = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    };
    let status = |text: &str| -> u16 {
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    };
    // Garbage bytes.
    let out = raw(b"\x00\x01\x02garbage\xff\xfe\r\n\r\n");
    assert_eq!(status(&out), 400, "{out:?}");
    let out = raw(b"GET /api/sessions HTTP/1.1\r\nHost: a\r\nContent-Length: nope\r\n\r\n");
    assert_eq!(status(&out), 400, "{out:?}");
    // A huge body.
    let mut huge =
        b"POST /api/lookup HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n".to_vec();
    huge.extend(vec![b'A'; 1 << 20]);
    let out = raw(&huge);
    assert!((400..500).contains(&status(&out)), "{out:?}");
    let mut chunked =
        b"POST /api/freeze HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..64 {
        chunked.extend(b"4000\r\n");
        chunked.extend(vec![b'B'; 0x4000]);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    let out = raw(&chunked);
    assert!((400..500).contains(&status(&out)), "{out:?}");
    // A body declared huge, never sent in full.
    let out = raw(b"POST /api/freeze HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000\r\n\r\nabc");
    assert!((400..500).contains(&status(&out)), "{out:?}");
    // Bad query and path.
    let (code, _) = agent_request(&agent, "GET", "/api/sessions?state=nope").unwrap();
    assert_eq!(code, 400);
    let (code, _) = agent_request(&agent, "GET", "/api/sessions/%ff%fe").unwrap();
    assert!((400..500).contains(&code));
    // The metrics port too.
    let mut s = std::net::TcpStream::connect(agent.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.is_empty() || status(&text) == 400, "{text:?}");

    // Still healthy and serving.
    assert_eq!(http_get(agent.addr, "/healthz").unwrap().0, 200);
    assert_eq!(agent_request(&agent, "GET", "/api/frozen").unwrap().0, 200);
    assert!(!agent.stderr().contains("panicked"), "{}", agent.stderr());
}

/// Start the agent with `cfg`; it must exit with an error; returns its stderr.
fn failing_start(cfg: &Path) -> String {
    let out = Command::new(agent_bin())
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--config")
        .arg(cfg)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn missing_or_world_readable_token_file_is_a_clear_error() {
    if !prerequisites() {
        return;
    }
    let dir = scratch_dir("surface-token");
    let missing = dir.join("no-such-token");
    let cfg = config(
        &dir,
        &format!(
            "listen = \"127.0.0.1:{}\"\ntoken_file = \"{}\"",
            free_port(),
            missing.display()
        ),
    );
    let err = failing_start(&cfg);
    assert!(err.contains(&missing.display().to_string()), "{err}");

    let token = token_file(&dir, 0o644);
    let cfg = config(
        &dir,
        &format!(
            "listen = \"127.0.0.1:{}\"\ntoken_file = \"{}\"",
            free_port(),
            token.display()
        ),
    );
    let err = failing_start(&cfg);
    assert!(
        err.contains(&token.display().to_string()) && err.contains("readable by everyone"),
        "{err}"
    );

    // listen without token_file names the key.
    let cfg = config(&dir, &format!("listen = \"127.0.0.1:{}\"", free_port()));
    let err = failing_start(&cfg);
    assert!(err.contains("control.token_file"), "{err}");
}

/// A test PKI made with openssl: a CA, a server certificate for 127.0.0.1 and a client
/// certificate (CN `ops-laptop`), keys mode 0600.
struct Pki {
    ca: PathBuf,
    server: PathBuf,
    server_key: PathBuf,
    client: PathBuf,
    client_key: PathBuf,
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    fn make(dir: &Path) -> Self {
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=observer-test-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
            dir,
        );
        for (name, cn, ext) in [
            (
                "server",
                "127.0.0.1",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "ops-laptop", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(
                dir.join(format!("{name}.ext")),
                format!(
                    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n{ext}"
                ),
            )
            .unwrap();
            openssl(
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    &format!("/CN={cn}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
                dir,
            );
            openssl(
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    &format!("{name}.ext"),
                    "-out",
                    &format!("{name}.pem"),
                ],
                dir,
            );
        }
        for key in ["ca.key", "server.key", "client.key"] {
            std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        Self {
            ca: dir.join("ca.pem"),
            server: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }

    /// The client certificate's SHA-256 fingerprint, lowercase hex without colons.
    fn client_sha256(&self) -> String {
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(&self.client)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .rsplit('=')
            .next()
            .unwrap()
            .replace(':', "")
            .to_lowercase()
    }

    fn control(&self, port: u16, token: &Path) -> String {
        format!(
            "listen = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"",
            token.display(),
            self.server.display(),
            self.server_key.display(),
            self.ca.display()
        )
    }
}

/// curl with `args`; (exit success, HTTP code printed by `-w`).
fn curl_code(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn mutual_tls_control_listener_needs_certificate_and_token() {
    if !prerequisites() || !require_tools(&["openssl", "curl"]) {
        return;
    }
    let dir = scratch_dir("surface-mtls");
    let pki = Pki::make(&dir);
    let token = token_file(&dir, 0o600);
    let port = free_port();
    let cfg = config(&dir, &pki.control(port, &token));
    let agent = Agent::start(&["--config", cfg.to_str().unwrap()]).unwrap();
    let url = format!("https://127.0.0.1:{port}/api/sessions");
    let (ca, cert, key) = (
        pki.ca.to_str().unwrap(),
        pki.client.to_str().unwrap(),
        pki.client_key.to_str().unwrap(),
    );
    let bearer = format!("Authorization: Bearer {TOKEN}");

    // Certificate and token: 200.
    let (ok, code) = curl_code(&[
        "--cacert", ca, "--cert", cert, "--key", key, "-H", &bearer, &url,
    ]);
    assert!(ok && code == "200", "with certificate and token: {code}");
    // No client certificate: the handshake is refused, no HTTP answer at all.
    let (ok, code) = curl_code(&["--cacert", ca, "-H", &bearer, &url]);
    assert!(!ok && code == "000", "without a client certificate: {code}");
    // A certificate the CA did not sign (the server's own is signed, so make another).
    let other = scratch_dir("surface-mtls-other");
    let stranger = Pki::make(&other);
    let (ok, code) = curl_code(&[
        "--cacert",
        ca,
        "--cert",
        stranger.client.to_str().unwrap(),
        "--key",
        stranger.client_key.to_str().unwrap(),
        "-H",
        &bearer,
        &url,
    ]);
    assert!(
        !ok && code == "000",
        "with a stranger's certificate: {code}"
    );
    // The certificate without the token: 401.
    let (ok, code) = curl_code(&["--cacert", ca, "--cert", cert, "--key", key, &url]);
    assert!(ok && code == "401", "without the token: {code}");
    // Plain HTTP to the TLS port: no HTTP answer.
    let (ok, code) = curl_code(&[
        "-H",
        &bearer,
        &format!("http://127.0.0.1:{port}/api/sessions"),
    ]);
    assert!(!ok && code == "000", "plain HTTP: {code}");

    // The CLI over mutual TLS, and without its certificate.
    let cli = |with_cert: bool| {
        let mut cmd = Command::new(agent_bin());
        cmd.args(["sessions", "--agent", &format!("https://127.0.0.1:{port}")])
            .arg("--token-file")
            .arg(&token)
            .args(["--cacert", ca]);
        if with_cert {
            cmd.args(["--cert", cert, "--key", key]);
        }
        cmd.output().unwrap()
    };
    let out = cli(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!cli(false).status.success());

    // The audit names the client certificate beside the token.
    let sha256 = pki.client_sha256();
    let lines = audit(&dir);
    let text = std::fs::read_to_string(dir.join("state/audit.jsonl")).unwrap();
    assert!(!text.contains(TOKEN), "{text}");
    let granted: Vec<_> = lines
        .iter()
        .filter(|l| l["action"] == "list_sessions" && l["status"] == 200)
        .collect();
    assert_eq!(granted.len(), 2, "curl and the CLI: {text}");
    for l in granted {
        assert_eq!(l["who"]["token"], "ops-token", "{text}");
        assert_eq!(l["who"]["client_cert"]["cn"], "ops-laptop", "{text}");
        assert_eq!(l["who"]["client_cert"]["sha256"], sha256.as_str(), "{text}");
    }
    let refused: Vec<_> = lines.iter().filter(|l| l["action"] == "refused").collect();
    assert_eq!(
        refused.len(),
        1,
        "only the tokenless call reached HTTP: {text}"
    );
    assert!(
        refused[0]["who"]["unauthenticated"]
            .as_str()
            .is_some_and(|w| w.contains("ops-laptop") && w.contains(&sha256)),
        "{text}"
    );
    assert!(!agent.stderr().contains("panicked"), "{}", agent.stderr());
}

#[test]
fn tls_without_client_ca_needs_only_the_token() {
    if !prerequisites() || !require_tools(&["openssl", "curl"]) {
        return;
    }
    let dir = scratch_dir("surface-tls");
    let pki = Pki::make(&dir);
    let token = token_file(&dir, 0o600);
    let port = free_port();
    let control = pki.control(port, &token);
    let control = control
        .lines()
        .filter(|l| !l.starts_with("client_ca"))
        .collect::<Vec<_>>()
        .join("\n");
    let cfg = config(&dir, &control);
    let _agent = Agent::start(&["--config", cfg.to_str().unwrap()]).unwrap();
    let url = format!("https://127.0.0.1:{port}/api/sessions");
    let ca = pki.ca.to_str().unwrap();
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let (ok, code) = curl_code(&["--cacert", ca, "-H", &bearer, &url]);
    assert!(ok && code == "200", "TLS with the token: {code}");
    let (ok, code) = curl_code(&["--cacert", ca, &url]);
    assert!(ok && code == "401", "TLS without the token: {code}");
    // The agent's certificate is checked by the CLI: without --cacert it refuses to go on.
    let out = Command::new(agent_bin())
        .args(["sessions", "--agent", &format!("https://127.0.0.1:{port}")])
        .arg("--token-file")
        .arg(&token)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--cacert"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = audit(&dir);
    let granted = lines
        .iter()
        .find(|l| l["action"] == "list_sessions")
        .unwrap();
    assert_eq!(granted["who"], serde_json::json!({ "token": "ops-token" }));
}

#[test]
fn bad_tls_files_are_clear_errors() {
    if !prerequisites() || !require_tools(&["openssl"]) {
        return;
    }
    let dir = scratch_dir("surface-tls-errors");
    let pki = Pki::make(&dir);
    let token = token_file(&dir, 0o600);
    let good = pki.control(free_port(), &token);

    // client_ca without a certificate and key names the key.
    let cfg = config(
        &dir,
        &format!(
            "listen = \"127.0.0.1:{}\"\ntoken_file = \"{}\"\nclient_ca = \"{}\"",
            free_port(),
            token.display(),
            pki.ca.display()
        ),
    );
    let err = failing_start(&cfg);
    assert!(err.contains("control.client_ca"), "{err}");

    // A missing certificate file names the key and the path.
    let missing = dir.join("no-such-cert.pem");
    let cfg = config(
        &dir,
        &good.replace(
            &pki.server.display().to_string(),
            &missing.display().to_string(),
        ),
    );
    let err = failing_start(&cfg);
    assert!(
        err.contains("control.tls_cert") && err.contains(&missing.display().to_string()),
        "{err}"
    );

    // A file that is not PEM, as the CA bundle.
    let cfg = config(
        &dir,
        &good.replace(&pki.ca.display().to_string(), &token.display().to_string()),
    );
    let err = failing_start(&cfg);
    assert!(
        err.contains("control.client_ca") && err.contains(&token.display().to_string()),
        "{err}"
    );

    // A key readable by everyone.
    std::fs::set_permissions(&pki.server_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = failing_start(&config(&dir, &good));
    assert!(
        err.contains("control.tls_key")
            && err.contains(&pki.server_key.display().to_string())
            && err.contains("readable by everyone"),
        "{err}"
    );
}

#[test]
fn api_flood_costs_the_capture_nothing() {
    if !prerequisites() || !require_tools(&["wrk"]) {
        return;
    }
    let port = free_port();
    let nginx = Nginx::start(port, "").unwrap();
    let agent = Agent::start(&[]).unwrap();
    // (every drop, the kernel's own: ring buffer full and the other in-kernel reasons)
    let dropped = |metrics: &str| -> (f64, f64) {
        let kernel = [
            "ringbuf_full",
            "read_failed",
            "inflight_full",
            "sockets_full",
            "tls_no_socket",
        ];
        let mut all = 0.0;
        let mut in_kernel = 0.0;
        for l in metrics
            .lines()
            .filter(|l| l.starts_with("api_observer_capture_dropped_total"))
        {
            let Some(v) = l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            all += v;
            if kernel
                .iter()
                .any(|r| l.contains(&format!("reason=\"{r}\"")))
            {
                in_kernel += v;
            }
        }
        (all, in_kernel)
    };
    let before = dropped(&agent.metrics());

    // Many parallel API clients on the socket for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..32 {
        let (stop, ok, other) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&other));
        let socket = agent.socket.clone();
        clients.push(std::thread::spawn(move || {
            let paths = [
                "/api/sessions?limit=1000",
                "/privacy",
                "/api/findings",
                "/api/frozen",
            ];
            let mut n = i;
            while !stop.load(Ordering::Relaxed) {
                let path = paths[n % paths.len()];
                n += 1;
                match unix_request(&socket, "GET", path, &[], b"") {
                    Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => other.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }

    // Real traffic meanwhile: wrk against nginx, keep-alive connections.
    let started = Instant::now();
    let out = Command::new("wrk")
        .args(["-t2", "-c16", "-d5s", "--timeout", "5s"])
        .arg(format!("http://127.0.0.1:{port}/index.html"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wrk: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "  123456 requests in 5.00s, 28.1MB read"
    let requests: usize = report
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's report:\n{report}"));
    assert!(
        requests > 1000,
        "wrk made only {requests} requests:\n{report}"
    );
    // Keep the flood going a little past the traffic.
    while started.elapsed() < Duration::from_secs(6) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let wanted = requests * 99 / 100;
    let seen = agent
        .exchanges_for_port(nginx.port, wanted)
        .iter()
        .filter(|e| e["role"] == "server")
        .count();
    // Kernel drop counters are folded in once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let metrics = agent.metrics();
    let after = dropped(&metrics);
    let ok = ok.load(Ordering::Relaxed);
    let other = other.load(Ordering::Relaxed);
    eprintln!(
        "flood: {ok} API calls answered 200 ({other} not) in {:?}; wrk made {requests} \
         requests, {seen} server exchanges seen; drops {before:?} -> {after:?}",
        started.elapsed()
    );
    assert!(
        seen >= wanted,
        "exchanges lost under the API flood: {seen} of {requests}\n{report}"
    );
    assert_eq!(
        after.1, before.1,
        "kernel ring-buffer drops under the API flood:\n{metrics}"
    );
    assert_eq!(
        after.0, before.0,
        "capture drops under the API flood:\n{metrics}"
    );
    assert!(
        ok > 1000,
        "the API answered only {ok} calls ({other} failed)"
    );
    assert_eq!(other, 0, "API calls failed under the flood");
}
