//! HTTP/2 end to end: real servers and clients speaking h2 over TLS (ALPN, seen through
//! the OpenSSL, Go and node probes), h2c with prior knowledge, h2c reached by an HTTP/1.1
//! `Upgrade: h2c`, and gRPC over h2c. Each test starts its own agent and peers, then
//! asserts the exact exchanges the agent printed: (role, method, path, status), the
//! protocol, TLS, addresses, body sizes, gRPC outcomes, and one session across HTTP/1.1
//! and HTTP/2.

use std::{collections::BTreeSet, path::Path, process::Command, time::Duration};

use e2e::*;
use serde_json::Value;

/// (role, comm, method, path, status).
type Row = (String, String, String, String, u64);

fn row(role: &str, comm: &str, method: &str, path: &str, status: u64) -> Row {
    (role.into(), comm.into(), method.into(), path.into(), status)
}

/// The rows of `ex`, sorted.
fn rows(ex: &[Value]) -> Vec<Row> {
    let mut v: Vec<Row> = ex
        .iter()
        .map(|e| {
            let (role, method, path, status) = summary(e);
            let comm = e["comm"].as_str().unwrap_or_default().to_string();
            (role, comm, method, path, status)
        })
        .collect();
    v.sort();
    v
}

/// (role, method, path, status) of `ex`, sorted: where `comm` is not asserted (grpcio's
/// C-core threads report theirs, e.g. `event_engine`).
fn rows_any_comm(ex: &[Value]) -> Vec<(String, String, String, u64)> {
    let mut v: Vec<_> = ex.iter().map(summary).collect();
    v.sort();
    v
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// The exchanges as the agent printed them, one per line, and the parse issues it
/// counted (those not 0), for failure messages.
fn dump(agent: &Agent, ex: &[Value]) -> String {
    let mut text: String = ex.iter().map(|e| format!("{e}\n")).collect();
    text.push_str("parse issues:\n");
    for line in agent.metrics().lines() {
        if line.starts_with("api_observer_http_parse_issues_total{") && !line.ends_with(" 0") {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// Every exchange is HTTP/2, with `tls` as given, and no gRPC details unless `grpc`.
fn assert_h2(ex: &[Value], tls: bool, grpc: bool) {
    for e in ex {
        assert_eq!(e["protocol"], "http2", "not HTTP/2: {e}");
        assert_eq!(e["tls"], tls, "tls flag: {e}");
        if !grpc {
            assert!(e["grpc"].is_null(), "gRPC details on a plain exchange: {e}");
        }
    }
}

/// `client` on 127.0.0.1 with a real port, `server` on 127.0.0.1:`port`, on both roles.
fn assert_addresses(ex: &[Value], port: u16) {
    for e in ex {
        let client = client_addr(e).unwrap_or_else(|| panic!("no client address: {e}"));
        assert_eq!(client.ip().to_string(), "127.0.0.1", "{e}");
        assert_ne!(client.port(), 0, "{e}");
        assert_eq!(e["server"], format!("127.0.0.1:{port}"), "{e}");
    }
}

/// The HTTP/2 parse issues that must stay 0 for well-formed traffic seen from its start.
/// (Only HTTP/2 ones: the agent sees the whole machine, where other tests may send
/// malformed HTTP/1 on purpose.)
fn assert_no_h2_issues(agent: &Agent) {
    let metrics = agent.metrics();
    for issue in [
        "h2_midstream_join",
        "h2_frame_resync",
        "hpack_unknown_reference",
        "hpack_error",
        "header_list_too_large",
    ] {
        assert_eq!(
            parse_issue_count(&metrics, issue),
            Some(0.0),
            "parse issue {issue}:\n{}",
            metrics
                .lines()
                .filter(|l| l.contains("parse_issues_total{"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// `curl -w` lines `local_port http_code http_version`: (ports, codes); panics unless
/// every response came over HTTP/2.
fn curl_h2_lines(out: &str) -> (Vec<u16>, Vec<u16>) {
    let mut ports = Vec::new();
    let mut codes = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 3, "curl -w line: {line:?}");
        assert_eq!(f[2], "2", "curl did not use HTTP/2: {out}");
        ports.push(f[0].parse().unwrap());
        codes.push(f[1].parse().unwrap());
    }
    (ports, codes)
}

/// curl arguments fetching `paths` of `base` on one connection, writing
/// `local_port http_code http_version` per response.
fn curl_args(first: &[&str], base: &str, paths: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = first.iter().map(|s| s.to_string()).collect();
    args.extend([
        "-w".into(),
        "%{local_port} %{http_code} %{http_version}\\n".into(),
    ]);
    for p in paths {
        args.extend(["-o".into(), "/dev/null".into(), format!("{base}{p}")]);
    }
    args
}

fn run_curl(args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&args).unwrap()
}

/// A file of `n` bytes in `dir`.
fn body_file(dir: &Path, n: usize) -> std::path::PathBuf {
    let path = dir.join(format!("body-{n}.bin"));
    std::fs::write(&path, vec![b'x'; n]).unwrap();
    path
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn by_path<'a>(ex: &'a [Value], role: &str, path: &str) -> Vec<&'a Value> {
    ex.iter()
        .filter(|e| e["role"] == role && e["path"] == path)
        .collect()
}

#[test]
fn nginx_h2_over_tls_with_curl_seen_from_both_ends() {
    if !(prerequisites() && require_tools(&["openssl", "nginx", "curl"])) {
        return;
    }
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let port = free_port();
    let (nginx, _cert) = Nginx::start_h2_tls(port, "").unwrap();
    let base = format!("https://127.0.0.1:{port}");

    // Three requests on one connection (curl multiplexes them on one h2 connection).
    let out = run_curl(&curl_args(
        &["-k", "--http2"],
        &base,
        &["/index.html", "/empty", "/missing?q=1"],
    ));
    let (ports, codes) = curl_h2_lines(&out);
    assert_eq!(codes, [200, 204, 404], "{out}");
    assert!(
        ports.iter().all(|p| *p == ports[0]),
        "one connection: {out}"
    );
    // A POST with a 1000-byte body.
    let body = body_file(&nginx.dir, 1000);
    let out = run_curl(&curl_args(
        &[
            "-k",
            "--http2",
            "-X",
            "POST",
            "--data-binary",
            &format!("@{}", body.display()),
        ],
        &base,
        &["/upload"],
    ));
    let (post_port, codes) = curl_h2_lines(&out);
    assert_eq!(codes, [201], "{out}");

    let ex = agent.exchanges_for_port(port, 8);
    assert_eq!(
        rows(&ex),
        sorted(vec![
            row("server", "nginx", "GET", "/index.html", 200),
            row("server", "nginx", "GET", "/empty", 204),
            row("server", "nginx", "GET", "/missing", 404),
            row("server", "nginx", "POST", "/upload", 201),
            row("client", "curl", "GET", "/index.html", 200),
            row("client", "curl", "GET", "/empty", 204),
            row("client", "curl", "GET", "/missing", 404),
            row("client", "curl", "POST", "/upload", 201),
        ]),
        "exchanges:\n{}",
        dump(&agent, &ex)
    );
    assert_h2(&ex, true, false);
    assert_addresses(&ex, port);
    for e in &ex {
        let expected_port = if e["path"] == "/upload" {
            post_port[0]
        } else {
            ports[0]
        };
        assert_eq!(client_addr(e).unwrap().port(), expected_port, "{e}");
    }
    for e in by_path(&ex, "server", "/missing")
        .into_iter()
        .chain(by_path(&ex, "client", "/missing"))
    {
        assert_eq!(e["query_keys"], serde_json::json!(["q"]), "{e}");
    }
    // Body sizes come from DATA frames: the upload on both ends, index.html's 17 bytes,
    // nothing for the 204.
    // curl sends the upload's DATA before it reads the answer. nginx answers `return
    // 201` without reading the body: what it had read by then may be all or none of it.
    for e in by_path(&ex, "client", "/upload") {
        assert_eq!(e["request_body_bytes"], 1000, "{e}");
    }
    for e in by_path(&ex, "server", "/upload") {
        let n = e["request_body_bytes"].as_u64().unwrap_or(u64::MAX);
        assert!(n == 0 || n == 1000, "{e}");
    }
    for role in ["server", "client"] {
        for e in by_path(&ex, role, "/index.html") {
            assert_eq!(e["request_body_bytes"], 0, "{e}");
            assert_eq!(e["response_body_bytes"], "hello from nginx\n".len(), "{e}");
        }
        for e in by_path(&ex, role, "/empty") {
            assert_eq!(e["response_body_bytes"], 0, "{e}");
        }
    }
    assert_no_h2_issues(&agent);
}

#[test]
fn nginx_h2c_prior_knowledge_with_curl_nghttp_and_h2load() {
    if !(prerequisites() && require_tools(&["nginx", "curl", "nghttp", "h2load"])) {
        return;
    }
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let port = free_port();
    let nginx = Nginx::start_h2c(port, "").unwrap();
    std::fs::write(nginx.dir.join("html/load.txt"), "load\n").unwrap();
    let base = format!("http://127.0.0.1:{port}");

    // curl 7.88 cannot reuse a prior-knowledge connection: one request per curl.
    let out = run_curl(&curl_args(
        &["--http2-prior-knowledge"],
        &base,
        &["/index.html"],
    ));
    let (curl_port, codes) = curl_h2_lines(&out);
    assert_eq!(codes, [200], "{out}");

    // nghttp: three requests on one connection (it also sends PRIORITY frames for idle
    // streams first, so its requests are streams 13, 15 and 17), then a POST.
    run_ok(Command::new("nghttp").args([
        "-n",
        &format!("{base}/index.html"),
        &format!("{base}/missing"),
        &format!("{base}/empty?x=1"),
    ]));
    let body = body_file(&nginx.dir, 1000);
    run_ok(
        Command::new("nghttp")
            .args(["-n", "-d"])
            .arg(&body)
            .arg(format!("{base}/upload")),
    );

    // h2load: 200 requests, 4 connections, 10 concurrent streams on each.
    let load = run_ok(Command::new("h2load").args([
        "-n",
        "200",
        "-c",
        "4",
        "-m",
        "10",
        &format!("{base}/load.txt"),
    ]));
    assert!(
        load.contains("200 succeeded") && load.contains("Application protocol: h2c"),
        "{load}"
    );

    let total = 2 * (1 + 3 + 1 + 200);
    let ex = agent.exchanges_for_port(port, total);
    let mut expected = vec![
        row("server", "nginx", "GET", "/index.html", 200),
        row("client", "curl", "GET", "/index.html", 200),
        row("server", "nginx", "GET", "/index.html", 200),
        row("server", "nginx", "GET", "/missing", 404),
        row("server", "nginx", "GET", "/empty", 204),
        row("server", "nginx", "POST", "/upload", 201),
        row("client", "nghttp", "GET", "/index.html", 200),
        row("client", "nghttp", "GET", "/missing", 404),
        row("client", "nghttp", "GET", "/empty", 204),
        row("client", "nghttp", "POST", "/upload", 201),
    ];
    for _ in 0..200 {
        expected.push(row("server", "nginx", "GET", "/load.txt", 200));
        expected.push(row("client", "h2load", "GET", "/load.txt", 200));
    }
    let got = rows(&ex);
    if got != sorted(expected.clone()) {
        let count = |v: &[Row], r: &Row| v.iter().filter(|x| *x == r).count();
        let distinct: BTreeSet<&Row> = expected.iter().chain(got.iter()).collect();
        let diff: Vec<String> = distinct
            .into_iter()
            .filter(|r| count(&got, r) != count(&expected, r))
            .map(|r| {
                format!(
                    "{r:?}: expected {}, seen {}",
                    count(&expected, r),
                    count(&got, r)
                )
            })
            .collect();
        panic!(
            "{} exchanges, {total} expected; differences:\n{}\nexchanges other than h2load's:\n{}",
            ex.len(),
            diff.join("\n"),
            dump(
                &agent,
                &ex.iter()
                    .filter(|e| e["path"] != "/load.txt")
                    .cloned()
                    .collect::<Vec<_>>()
            )
        );
    }
    assert_h2(&ex, false, false);
    assert_addresses(&ex, port);
    for e in ex.iter().filter(|e| e["comm"] == "curl") {
        assert_eq!(client_addr(e).unwrap().port(), curl_port[0], "{e}");
    }
    // nghttp's three GETs share one connection; h2load's 200 requests are on 4.
    let nghttp_ports: BTreeSet<u16> = ex
        .iter()
        .filter(|e| e["comm"] == "nghttp" && e["method"] == "GET")
        .map(|e| client_addr(e).unwrap().port())
        .collect();
    assert_eq!(nghttp_ports.len(), 1, "{nghttp_ports:?}");
    let load_ports: Vec<u16> = ex
        .iter()
        .filter(|e| e["role"] == "server" && e["path"] == "/load.txt")
        .map(|e| client_addr(e).unwrap().port())
        .collect();
    let distinct: BTreeSet<u16> = load_ports.iter().copied().collect();
    assert_eq!(distinct.len(), 4, "h2load connections: {distinct:?}");
    for p in &distinct {
        assert_eq!(
            load_ports.iter().filter(|x| *x == p).count(),
            50,
            "requests on connection {p}"
        );
    }
    for e in ex.iter().filter(|e| e["path"] == "/empty") {
        assert_eq!(e["query_keys"], serde_json::json!(["x"]), "{e}");
    }
    for e in ex.iter().filter(|e| e["path"] == "/upload") {
        assert_eq!(e["request_body_bytes"], 1000, "{e}");
    }
    for e in ex.iter().filter(|e| e["path"] == "/load.txt") {
        assert_eq!(e["response_body_bytes"], 5, "{e}");
    }
    assert_no_h2_issues(&agent);
}

/// nghttpx taking `Upgrade: h2c` on a cleartext frontend and forwarding to nginx
/// (HTTP/1.1) behind it: (nginx, nghttpx, frontend port, backend port).
fn nghttpx_before_nginx() -> (Nginx, Proc, u16, u16) {
    let backend = free_port();
    let nginx = Nginx::start(backend, "").unwrap();
    let port = free_port();
    let dir = scratch_dir("nghttpx");
    let nghttpx = Proc::spawn(
        "nghttpx",
        Command::new("nghttpx")
            .args(["--conf", "/dev/null", "--single-process", "--workers", "1"])
            .arg(format!("--frontend=127.0.0.1,{port};no-tls"))
            .arg(format!("--backend=127.0.0.1,{backend}"))
            .arg(format!(
                "--errorlog-file={}",
                dir.join("error.log").display()
            ))
            .arg(format!("--pid-file={}", dir.join("nghttpx.pid").display())),
    )
    .unwrap();
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
    (nginx, nghttpx, port, backend)
}

/// (role, method, path, status) of GET /index.html, /empty and /missing, for both roles.
fn upgrade_rows() -> Vec<(String, String, String, u64)> {
    let mut v = Vec::new();
    for role in ["server", "client"] {
        for (path, status) in [("/index.html", 200), ("/empty", 204), ("/missing", 404)] {
            v.push((
                role.to_string(),
                "GET".to_string(),
                path.to_string(),
                status,
            ));
        }
    }
    v.sort();
    v
}

#[test]
fn h2c_upgrade_from_http1_with_curl_through_nghttpx() {
    if !(prerequisites() && require_tools(&["nginx", "curl", "nghttpx"])) {
        return;
    }
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let (_nginx, _nghttpx, port, backend) = nghttpx_before_nginx();

    // curl --http2 on http:// sends its first request as HTTP/1.1 with `Upgrade: h2c`;
    // the answer to it comes on HTTP/2 stream 1, the next requests are streams 3 and 5.
    let out = run_curl(&curl_args(
        &["--http2"],
        &format!("http://127.0.0.1:{port}"),
        &["/index.html", "/empty", "/missing"],
    ));
    let (ports, codes) = curl_h2_lines(&out);
    assert_eq!(codes, [200, 204, 404], "{out}");
    assert!(
        ports.iter().all(|p| *p == ports[0]),
        "one connection: {out}"
    );

    let ex = agent.exchanges_for_port(port, 6);
    assert_eq!(
        rows_any_comm(&ex),
        upgrade_rows(),
        "exchanges:\n{}",
        dump(&agent, &ex)
    );
    assert_h2(&ex, false, false);
    assert_addresses(&ex, port);
    for e in &ex {
        assert_eq!(client_addr(e).unwrap().port(), ports[0], "{e}");
        if e["role"] == "client" {
            assert_eq!(e["comm"], "curl", "{e}");
        }
    }
    // Behind the proxy: plain HTTP/1.1 between nghttpx and nginx.
    let back = agent.exchanges_for_port(backend, 6);
    assert_eq!(
        rows_any_comm(&back),
        upgrade_rows(),
        "{}",
        dump(&agent, &back)
    );
    for e in &back {
        assert_eq!(e["protocol"], "http1", "{e}");
    }
    assert_no_h2_issues(&agent);
}

/// The same upgrade with a fixed timing: the client reads only after the 101, the
/// server's SETTINGS and the whole answer on stream 1 have arrived (one read), once as
/// is and once peeking at a byte (`MSG_PEEK`) before each read, as curl does before it
/// reuses a connection: a peeked byte is read again by the next call, so it must not
/// count as data twice.
#[test]
fn h2c_upgrade_answer_in_one_read_and_peeking_client() {
    if !(prerequisites() && require_tools(&["nginx", "nghttpx"])) {
        return;
    }
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let (_nginx, _nghttpx, port, _backend) = nghttpx_before_nginx();
    let client = workspace_root().join("tests/servers/h2c_upgrade_client.py");
    let mut client_ports = Vec::new();
    for peek in [false, true] {
        let mut cmd = Command::new("python3");
        cmd.arg(&client);
        if peek {
            cmd.arg("--peek");
        }
        cmd.args([
            &port.to_string(),
            "300",
            "/index.html",
            "/empty",
            "/missing",
        ]);
        let out = run_ok(&mut cmd);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[1..],
            ["1 200 /index.html", "3 204 /empty", "5 404 /missing"],
            "{out}"
        );
        let local: u16 = lines[0]
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{out}"));
        client_ports.push((peek, local));
    }
    let ex = agent.exchanges_for_port(port, 12);
    for (peek, local) in client_ports {
        let conn: Vec<Value> = ex
            .iter()
            .filter(|e| client_addr(e).is_some_and(|a| a.port() == local))
            .cloned()
            .collect();
        assert_eq!(
            rows_any_comm(&conn),
            upgrade_rows(),
            "peek {peek}, connection from port {local}:\n{}",
            dump(&agent, &ex)
        );
        assert_h2(&conn, false, false);
    }
    assert_eq!(ex.len(), 12, "{}", dump(&agent, &ex));
}

#[test]
fn go_net_http_h2_server_and_client_over_tls() {
    if !(prerequisites() && require_tools(&["openssl", "go", "curl"])) {
        return;
    }
    let bin = build_go_program("goh2").unwrap();
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let dir = scratch_dir("goh2-cert");
    let cert = Cert::make(&dir).unwrap();
    let port = free_port();
    let server = Proc::spawn(
        "goh2 server",
        Command::new(&bin)
            .args(["server", &port.to_string()])
            .arg(&cert.cert)
            .arg(&cert.key),
    )
    .unwrap();
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
    let target = wait_tls_attached(&agent, &["/goh2"], server.child.id()).unwrap();
    assert_eq!(target["library"], "go", "{target}");

    // Go's default client negotiates h2 through ALPN; it exits non-zero otherwise.
    let url = format!("https://127.0.0.1:{port}");
    let out = run_ok(
        Command::new(&bin)
            .args(["client", &url])
            .arg(&cert.cert)
            .args(["4", "good"]),
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "HTTP/2.0 200 /api/items/0",
            "HTTP/2.0 200 /api/items/1",
            "HTTP/2.0 200 /api/items/2",
            "HTTP/2.0 200 /api/items/3",
            "HTTP/2.0 201 /api/items",
            "HTTP/2.0 200 /api/private",
        ]
    );
    let out = run_curl(&curl_args(&["-k", "--http2"], &url, &["/api/private"]));
    assert_eq!(curl_h2_lines(&out).1, [401], "{out}");

    let ex = agent.exchanges_for_port(port, 14);
    let mut expected = Vec::new();
    for role in ["server", "client"] {
        for i in 0..4 {
            expected.push(row(role, "goh2", "GET", &format!("/api/items/{i}"), 200));
        }
        expected.push(row(role, "goh2", "POST", "/api/items", 201));
        expected.push(row(role, "goh2", "GET", "/api/private", 200));
    }
    expected.push(row("server", "goh2", "GET", "/api/private", 401));
    expected.push(row("client", "curl", "GET", "/api/private", 401));
    assert_eq!(
        rows(&ex),
        sorted(expected),
        "exchanges:\n{}",
        dump(&agent, &ex)
    );
    assert_h2(&ex, true, false);
    assert_addresses(&ex, port);
    // The Go client used one connection for its six requests.
    let go_ports: BTreeSet<u16> = ex
        .iter()
        .filter(|e| e["role"] == "client" && e["comm"] == "goh2")
        .map(|e| client_addr(e).unwrap().port())
        .collect();
    assert_eq!(go_ports.len(), 1, "{go_ports:?}");
    for e in ex.iter().filter(|e| e["path"] == "/api/items") {
        assert_eq!(e["request_body_bytes"], 1000, "{e}");
    }
}

/// The node HTTP/2 server (over TLS, or h2c with prior knowledge) and the node client
/// against it, then curl with no token; returns the port and its exchanges.
fn node_h2(agent: &Agent, tls: bool) -> (u16, Vec<Value>) {
    let dir = scratch_dir("node-h2");
    let port = free_port();
    let mut cmd = Command::new("node");
    cmd.arg(workspace_root().join("tests/servers/h2_server.js"));
    let cert;
    if tls {
        cert = Cert::make(&dir).unwrap();
        cmd.args(["tls", &port.to_string()])
            .arg(&cert.cert)
            .arg(&cert.key);
    } else {
        cmd.args(["plain", &port.to_string()]);
    }
    let server = Proc::spawn("node h2 server", &mut cmd).unwrap();
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
    if tls {
        let target =
            wait_tls_attached(agent, &["/node", "/libssl.so.3"], server.child.id()).unwrap();
        assert_eq!(target["library"], "openssl", "{target}");
    }
    let url = format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" });
    let out = run_ok(
        Command::new("node")
            .arg(workspace_root().join("tests/servers/h2_client.js"))
            .args([&url, "3", "good"]),
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "200 /node/items/1",
            "200 /node/items/2",
            "200 /node/items/3",
            "201 /node/upload",
            "200 /node/private",
        ]
    );
    let first: &[&str] = if tls {
        &["-k", "--http2"]
    } else {
        &["--http2-prior-knowledge"]
    };
    let out = run_curl(&curl_args(first, &url, &["/node/private"]));
    assert_eq!(curl_h2_lines(&out).1, [401], "{out}");
    let ex = agent.exchanges_for_port(port, 12);
    drop(server);
    (port, ex)
}

fn node_expected() -> Vec<Row> {
    let mut expected = Vec::new();
    for role in ["server", "client"] {
        for i in 1..=3 {
            expected.push(row(role, "node", "GET", &format!("/node/items/{i}"), 200));
        }
        expected.push(row(role, "node", "POST", "/node/upload", 201));
        expected.push(row(role, "node", "GET", "/node/private", 200));
    }
    expected.push(row("server", "node", "GET", "/node/private", 401));
    expected.push(row("client", "curl", "GET", "/node/private", 401));
    sorted(expected)
}

fn assert_node_exchanges(ex: &[Value], port: u16) {
    assert_addresses(ex, port);
    // The node client made one session: one connection for its five requests.
    let ports: BTreeSet<u16> = ex
        .iter()
        .filter(|e| e["role"] == "client" && e["comm"] == "node")
        .map(|e| client_addr(e).unwrap().port())
        .collect();
    assert_eq!(ports.len(), 1, "{ports:?}");
    for e in ex.iter().filter(|e| e["path"] == "/node/upload") {
        assert_eq!(e["request_body_bytes"], 1000, "{e}");
        assert_eq!(e["response_body_bytes"], "stored 1000\n".len(), "{e}");
    }
}

#[test]
fn node_http2_secure_server_and_client() {
    if !(prerequisites() && require_tools(&["openssl", "node", "curl"])) {
        return;
    }
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let (port, ex) = node_h2(&agent, true);
    assert_eq!(
        rows(&ex),
        node_expected(),
        "exchanges:\n{}",
        dump(&agent, &ex)
    );
    assert_h2(&ex, true, false);
    assert_node_exchanges(&ex, port);
}

#[test]
fn node_http2_cleartext_server_and_client() {
    if !(prerequisites() && require_tools(&["node", "curl"])) {
        return;
    }
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let (port, ex) = node_h2(&agent, false);
    assert_eq!(
        rows(&ex),
        node_expected(),
        "exchanges:\n{}",
        dump(&agent, &ex)
    );
    assert_h2(&ex, false, false);
    assert_node_exchanges(&ex, port);
    assert_no_h2_issues(&agent);
}

/// (role, path, grpc.status, request_messages, response_messages) of a gRPC exchange.
type GrpcRow = (String, String, Option<u64>, u64, u64);

#[test]
fn grpc_unary_streaming_and_failed_calls() {
    if !(prerequisites() && require_python_modules(&["grpc"])) {
        return;
    }
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let port = free_port();
    let _server = Proc::spawn(
        "grpc server",
        Command::new("python3")
            .arg(workspace_root().join("tests/servers/grpc_server.py"))
            .arg(port.to_string()),
    )
    .unwrap();
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
    let client = workspace_root().join("tests/servers/grpc_client.py");
    // Every kind of call with a token the server refuses for Secret...
    let out = run_ok(
        Command::new("python3")
            .arg(&client)
            .args([&port.to_string(), "not-the-token"]),
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "SayHello 0 1",
            "ListFeatures 0 3",
            "RecordRoute 0 1",
            "Chat 0 2",
            "Secret 16 0",
        ]
    );
    // ...then Secret with the right one.
    let out =
        run_ok(
            Command::new("python3")
                .arg(&client)
                .args([&port.to_string(), "good", "Secret"]),
        );
    assert_eq!(out.trim(), "Secret 0 1");

    let ex = agent.exchanges_for_port(port, 12);
    let calls = [
        "/demo.Greeter/SayHello",
        "/demo.Greeter/ListFeatures",
        "/demo.Greeter/RecordRoute",
        "/demo.Greeter/Chat",
        "/demo.Greeter/Secret",
        "/demo.Greeter/Secret",
    ];
    let mut expected = Vec::new();
    for role in ["server", "client"] {
        for path in calls {
            expected.push((role.to_string(), "POST".to_string(), path.to_string(), 200));
        }
    }
    assert_eq!(
        rows_any_comm(&ex),
        sorted(expected),
        "exchanges:\n{}",
        dump(&agent, &ex)
    );
    assert_h2(&ex, false, true);
    assert_addresses(&ex, port);

    let grpc_rows: Vec<GrpcRow> = sorted(
        ex.iter()
            .map(|e| {
                let g = &e["grpc"];
                assert!(g.is_object(), "no gRPC details: {e}");
                (
                    e["role"].as_str().unwrap_or_default().to_string(),
                    e["path"].as_str().unwrap_or_default().to_string(),
                    g["status"].as_u64(),
                    g["request_messages"].as_u64().unwrap_or(u64::MAX),
                    g["response_messages"].as_u64().unwrap_or(u64::MAX),
                )
            })
            .collect(),
    );
    let mut expected: Vec<GrpcRow> = Vec::new();
    for role in ["server", "client"] {
        for (path, status, requests, responses) in [
            ("SayHello", 0, 1, 1),
            ("ListFeatures", 0, 1, 3),
            ("RecordRoute", 0, 4, 1),
            ("Chat", 0, 2, 2),
            ("Secret", 16, 1, 0),
            ("Secret", 0, 1, 1),
        ] {
            expected.push((
                role.to_string(),
                format!("/demo.Greeter/{path}"),
                Some(status),
                requests,
                responses,
            ));
        }
    }
    assert_eq!(
        grpc_rows,
        sorted(expected),
        "exchanges:\n{}",
        dump(&agent, &ex)
    );
    // `grpc-message` is "denied" on the refused call; its text is never printed.
    for e in &ex {
        let g = &e["grpc"];
        if g["status"] == 16 {
            assert_eq!(g["message_len"], 6, "{e}");
        } else {
            assert!(g["message_len"].is_null() || g["message_len"] == 0, "{e}");
        }
        assert!(!e.to_string().contains("denied"), "{e}");
    }
    assert_no_h2_issues(&agent);
}

/// The sessions of `direction` whose detail has a route containing each of `needles`.
fn sessions_with_routes(agent: &Agent, direction: &str, needles: &[&str]) -> Vec<Value> {
    let list = agent_json(agent, &format!("/api/sessions?direction={direction}"))
        .ok()
        .and_then(|l| l.as_array().cloned())
        .unwrap_or_default();
    list.iter()
        .filter(|s| s["kind"] == "bearer")
        .filter_map(|s| {
            agent_json(
                agent,
                &format!("/api/sessions/{}", encode_segment(s["id"].as_str()?)),
            )
            .ok()
        })
        .filter(|d| {
            let routes = d["routes"].to_string();
            needles.iter().all(|n| routes.contains(n))
        })
        .collect()
}

#[test]
fn one_bearer_session_across_http1_and_http2() {
    if !(prerequisites() && require_tools(&["openssl", "nginx", "curl"])) {
        return;
    }
    const TOKEN: &str = "h2-and-h1-opaque-token-0005";
    let agent = Agent::start(&[]).unwrap();
    let port = free_port();
    let (_nginx, _cert) = Nginx::start_h2_tls(port, "").unwrap();
    let base = format!("https://127.0.0.1:{port}");
    let auth = format!("Authorization: Bearer {TOKEN}");
    let h2_paths = ["/index.html", "/h2only/alpha", "/h2only/beta"];
    let h1_paths = ["/empty", "/h1only/alpha"];
    let out = run_curl(&curl_args(
        &["-k", "--http2", "-H", &auth],
        &base,
        &h2_paths,
    ));
    assert_eq!(curl_h2_lines(&out).1, [200, 404, 404], "{out}");
    let out = run_curl(&curl_args(
        &["-k", "--http1.1", "-H", &auth],
        &base,
        &h1_paths,
    ));
    let versions: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(versions, ["1.1", "1.1"], "{out}");

    // The exchanges themselves: each path over the protocol it was sent with.
    let ex = agent.exchanges_for_port(port, 10);
    assert_eq!(ex.len(), 10, "{}", dump(&agent, &ex));
    for e in &ex {
        let path = e["path"].as_str().unwrap_or_default();
        let protocol = if h2_paths.contains(&path) {
            "http2"
        } else {
            "http1"
        };
        assert_eq!(e["protocol"], protocol, "{e}");
    }

    // One inbound session (nginx) and one outbound (curl), each with all five requests.
    for (direction, process) in [("inbound", "nginx"), ("outbound", "curl")] {
        let found = wait_for(Duration::from_secs(15), || {
            let s = sessions_with_routes(&agent, direction, &["/h2only/alpha", "/h1only/alpha"]);
            s.iter().any(|d| d["requests"] == 5).then_some(s)
        });
        let sessions = found.unwrap_or_else(|| {
            panic!(
                "no {direction} bearer session with the five requests; sessions: {}\n\
                 exchanges:\n{}",
                agent_json(&agent, "/api/sessions").unwrap_or_default(),
                dump(&agent, &ex)
            )
        });
        assert_eq!(sessions.len(), 1, "{sessions:#?}");
        let d = &sessions[0];
        assert_eq!(d["requests"], 5, "{d:#}");
        assert_eq!(d["tls_requests"], 5, "{d:#}");
        assert_eq!(d["plaintext_requests"], 0, "{d:#}");
        assert!(
            d["processes"]
                .as_array()
                .is_some_and(|p| p.iter().any(|x| x == process)),
            "{d:#}"
        );
        assert!(!d.to_string().contains(TOKEN), "raw token in {d:#}");
        // Each route lists the protocols it was called over: here exactly one.
        let routes = d["routes"].as_array().cloned().unwrap_or_default();
        let protocols_of = |needle: &str| -> Vec<String> {
            let mut v: Vec<String> = routes
                .iter()
                .filter(|r| r["route"].as_str().is_some_and(|x| x.ends_with(needle)))
                .flat_map(|r| {
                    r["protocols"]
                        .as_array()
                        .unwrap_or_else(|| panic!("no protocols on route {r}"))
                        .iter()
                        .map(|v| v.as_str().unwrap_or_default().to_string())
                        .collect::<Vec<_>>()
                })
                .collect();
            v.sort();
            v
        };
        for p in h2_paths {
            assert_eq!(protocols_of(p), ["http2"], "route {p}: {d:#}");
        }
        for p in h1_paths {
            assert_eq!(protocols_of(p), ["http1"], "route {p}: {d:#}");
        }
    }
}
