//! TLS, end to end: the agent sees HTTP inside TLS through the library probes, on the
//! server and the client side, with the same addresses as plaintext and `tls=true`, and
//! the ciphertext seen by the syscall hooks produces nothing. Real nginx, node, caddy
//! (Go), Python, curl and a Go 1.19 client; every server here starts after the agent.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use e2e::*;
use serde_json::Value;

fn tls_prerequisites(tools: &[&str]) -> bool {
    prerequisites() && require_tools(tools)
}

/// (role, comm, method, path, status) of each exchange, in report order.
fn rows(ex: &[Value]) -> Vec<(String, String, String, String, u64)> {
    ex.iter()
        .map(|e| {
            let (role, method, path, status) = summary(e);
            let comm = e["comm"].as_str().unwrap_or_default().to_string();
            (role, comm, method, path, status)
        })
        .collect()
}

fn sorted(
    mut v: Vec<(String, String, String, String, u64)>,
) -> Vec<(String, String, String, String, u64)> {
    v.sort();
    v
}

fn row(
    role: &str,
    comm: &str,
    method: &str,
    path: &str,
    status: u64,
) -> (String, String, String, String, u64) {
    (role.into(), comm.into(), method.into(), path.into(), status)
}

fn assert_all_tls(ex: &[Value]) {
    for e in ex {
        assert_eq!(e["tls"], true, "exchange not marked TLS: {e}");
    }
}

/// Client and server address of every exchange: `client` on 127.0.0.1 with the port
/// the client used, `server` on the server port.
fn assert_addresses(ex: &[Value], port: u16) {
    for e in ex {
        let client = client_addr(e).unwrap_or_else(|| panic!("no client address: {e}"));
        assert_eq!(client.ip().to_string(), "127.0.0.1", "{e}");
        assert_ne!(client.port(), 0, "{e}");
        assert_eq!(e["server"], format!("127.0.0.1:{port}"), "{e}");
    }
}

/// Wait until `pid` is covered by an attached target whose path ends with one of
/// `path_ends`; returns that target.
fn wait_covered(agent: &Agent, path_ends: &[&str], pid: u32) -> Value {
    wait_tls_attached(agent, path_ends, pid).unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn nginx_tls_with_curl_and_python_clients_keepalive_and_large_body() {
    if !tls_prerequisites(&["openssl", "nginx", "curl", "python3"]) {
        return;
    }
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let port = free_port();
    let (_nginx, _cert) = Nginx::start_tls(port, "").unwrap();
    // nginx, curl and Python use the system libssl, attached at start for every process.
    let libssl = tls_target_list(&agent)
        .into_iter()
        .find(|t| {
            t["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/libssl.so.3"))
        })
        .unwrap_or_else(|| panic!("libssl.so.3 not attached: {:?}", tls_target_list(&agent)));
    assert_eq!(libssl["attached"], true, "{libssl}");
    assert_eq!(libssl["system"], true, "{libssl}");

    let base = format!("https://127.0.0.1:{port}");
    let out = curl(&[
        "-k",
        "--http1.1",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-w",
        "%{local_port} %{http_code}\\n",
        &format!("{base}/index.html"),
        &format!("{base}/empty"),
        &format!("{base}/missing"),
    ])
    .unwrap();
    let curl_ports = local_ports(&out);
    assert_eq!(curl_ports.len(), 3, "{out}");
    assert!(
        curl_ports.iter().all(|p| *p == curl_ports[0]),
        "keep-alive: {out}"
    );

    // Python: 40 requests on one connection, then a 3 MiB upload.
    let py = Command::new("python3")
        .arg(workspace_root().join("tests/servers/https_client.py"))
        .args([&port.to_string(), "40", &(3 * 1024 * 1024).to_string()])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let statuses = String::from_utf8_lossy(&py.stdout);
    assert_eq!(statuses.lines().filter(|l| *l == "404").count(), 40);
    assert_eq!(statuses.lines().last(), Some("201"));

    // 3 curl + 41 python exchanges, each seen once by nginx and once by its client.
    let ex = agent.exchanges_for_port(port, 2 * 44);
    assert_all_tls(&ex);
    assert_addresses(&ex, port);
    let mut expected = vec![
        row("server", "nginx", "GET", "/index.html", 200),
        row("server", "nginx", "GET", "/empty", 204),
        row("server", "nginx", "GET", "/missing", 404),
        row("client", "curl", "GET", "/index.html", 200),
        row("client", "curl", "GET", "/empty", 204),
        row("client", "curl", "GET", "/missing", 404),
    ];
    for i in 0..40 {
        expected.push(row("server", "nginx", "GET", &format!("/py/{i}"), 404));
        expected.push(row("client", "python3", "GET", &format!("/py/{i}"), 404));
    }
    expected.push(row("server", "nginx", "POST", "/upload", 201));
    expected.push(row("client", "python3", "POST", "/upload", 201));
    assert_eq!(sorted(rows(&ex)), sorted(expected));

    // curl's exchanges carry the port curl used, on both sides.
    for e in ex
        .iter()
        .filter(|e| e["path"] == "/index.html" || e["path"] == "/empty" || e["path"] == "/missing")
    {
        assert_eq!(client_addr(e).unwrap().port(), curl_ports[0], "{e}");
    }
    // Only headers were kept of the upload: its body is counted, not parsed.
    let upload: Vec<_> = ex.iter().filter(|e| e["path"] == "/upload").collect();
    for e in upload {
        assert_eq!(e["request_body_bytes"], 3 * 1024 * 1024, "{e}");
    }
    let metrics = agent.metrics();
    for issue in ["malformed", "unpaired_response", "truncated"] {
        assert!(
            metrics.contains(&format!(
                "api_observer_http_parse_issues_total{{issue=\"{issue}\"}} 0"
            )),
            "{issue} is not 0:\n{metrics}"
        );
    }
    assert!(
        metrics.lines().any(|l| l.starts_with("http_server_request_duration_seconds_count{error_type=\"\",http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"/index.html\",k8s_namespace_name=\"\",k8s_pod_name=\"\",network_protocol_version=\"1.1\",server_address=\"127.0.0.1\",")
            && l.ends_with(",url_scheme=\"https\"} 1")),
        "{metrics}"
    );
}

#[test]
fn node_https_server_and_client_started_after_the_agent() {
    if !tls_prerequisites(&["openssl", "node"]) {
        return;
    }
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let dir = scratch_dir("node-tls");
    let cert = Cert::make(&dir).unwrap();
    let port = free_port();
    let server = Proc::spawn(
        "node server",
        Command::new("node")
            .arg(workspace_root().join("tests/servers/https_server.js"))
            .arg(port.to_string())
            .arg(&cert.cert)
            .arg(&cert.key),
    )
    .unwrap();
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
    // The official node builds link OpenSSL statically and export it: the node binary
    // itself is the target, found on exec (Debian's own nodejs uses libssl.so.3).
    let target = wait_covered(&agent, &["/node", "/libssl.so.3"], server.child.id());
    assert_eq!(target["library"], "openssl");
    assert!(
        target["symbols"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s == "SSL_read"),
        "{target}"
    );

    let out = Command::new("node")
        .arg(workspace_root().join("tests/servers/https_client.js"))
        .args([&port.to_string(), "5"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let curl_out = curl(&["-k", &format!("https://127.0.0.1:{port}/missing/x")]).unwrap();
    assert!(curl_out.starts_with("node GET /missing/x"), "{curl_out}");

    let ex = agent.exchanges_for_port(port, 12);
    assert_all_tls(&ex);
    assert_addresses(&ex, port);
    let mut expected = Vec::new();
    for i in 1..=5 {
        expected.push(row("server", "node", "GET", &format!("/node/{i}"), 200));
        expected.push(row("client", "node", "GET", &format!("/node/{i}"), 200));
    }
    expected.push(row("server", "node", "GET", "/missing/x", 404));
    expected.push(row("client", "curl", "GET", "/missing/x", 404));
    assert_eq!(sorted(rows(&ex)), sorted(expected));

    // The server exits: its program's probes are released.
    let pid = server.child.id();
    drop(server);
    let released = wait_for(Duration::from_secs(15), || {
        let still = tls_target_list(&agent).into_iter().any(|t| {
            t["pids"]
                .as_array()
                .is_some_and(|p| p.iter().any(|x| x.as_u64() == Some(pid as u64)))
        });
        (!still).then_some(())
    });
    assert!(
        released.is_some(),
        "pid {pid} still listed: {:?}",
        tls_target_list(&agent)
    );
}

fn caddy_config(dir: &std::path::Path, port: u16, cert: &Cert) -> PathBuf {
    let path = dir.join("Caddyfile");
    std::fs::write(
        &path,
        format!(
            "{{\n\tadmin off\n\tauto_https off\n\tdefault_sni localhost\n\tservers {{\n\t\tprotocols h1\n\t}}\n}}\n\
             https://localhost:{port} {{\n\ttls {} {}\n\trespond /caddy/* \"caddy ok\" 200\n\trespond \"none\" 404\n}}\n",
            cert.cert.display(),
            cert.key.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn caddy_go_tls_server_with_curl() {
    if !tls_prerequisites(&["openssl", "caddy", "curl"]) {
        return;
    }
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let dir = scratch_dir("caddy");
    let cert = Cert::make(&dir).unwrap();
    let port = free_port();
    let config = caddy_config(&dir, port, &cert);
    let caddy = Proc::spawn(
        "caddy",
        Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&config)
            .env("HOME", &dir)
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_CONFIG_HOME", dir.join("config")),
    )
    .unwrap();
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
    // Debian's caddy is stripped: its functions come from .gopclntab.
    let target = wait_covered(&agent, &["/caddy"], caddy.child.id());
    assert_eq!(target["library"], "go");
    assert!(
        target["go_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("go1.")),
        "{target}"
    );

    let resolve = format!("localhost:{port}:127.0.0.1");
    let base = format!("https://localhost:{port}");
    let out = curl(&[
        "-k",
        "--http1.1",
        "--resolve",
        &resolve,
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\\n",
        &format!("{base}/caddy/a?x=1"),
        &format!("{base}/elsewhere"),
    ])
    .unwrap();
    assert_eq!(out, "200\n404\n");

    let ex = agent.exchanges_for_port(port, 4);
    assert_all_tls(&ex);
    assert_addresses(&ex, port);
    assert_eq!(
        sorted(rows(&ex)),
        sorted(vec![
            row("server", "caddy", "GET", "/caddy/a", 200),
            row("server", "caddy", "GET", "/elsewhere", 404),
            row("client", "curl", "GET", "/caddy/a", 200),
            row("client", "curl", "GET", "/elsewhere", 404),
        ])
    );
}

/// Build `tests/servers/goclient` with the machine's Go toolchain.
fn build_go_client() -> PathBuf {
    let dir = scratch_dir("goclient");
    let out_bin = dir.join("goclient");
    let status = Command::new("go")
        .args(["build", "-o"])
        .arg(&out_bin)
        .arg(".")
        .current_dir(workspace_root().join("tests/servers/goclient"))
        .env("GOCACHE", dir.join("cache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "on")
        .env("GOTOOLCHAIN", "local")
        .status()
        .unwrap();
    assert!(status.success(), "go build failed");
    out_bin
}

#[test]
fn go_client_against_nginx_tls() {
    if !tls_prerequisites(&["openssl", "nginx", "go"]) {
        return;
    }
    let client = build_go_client();
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let port = free_port();
    let (_nginx, _cert) = Nginx::start_tls(port, "").unwrap();
    let started = Instant::now();
    // The client waits 500 ms before its first request: the agent probes a program
    // with its own TLS code once it has seen its exec (see the client's source).
    let out = Command::new(&client)
        .args([&format!("https://127.0.0.1:{port}"), "6", "500"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 6);
    assert!(started.elapsed() < Duration::from_secs(20));

    let ex = agent.exchanges_for_port(port, 12);
    assert_all_tls(&ex);
    assert_addresses(&ex, port);
    let mut expected = Vec::new();
    for i in 0..6 {
        expected.push(row("server", "nginx", "GET", &format!("/go/{i}"), 404));
        expected.push(row("client", "goclient", "GET", &format!("/go/{i}"), 404));
    }
    assert_eq!(sorted(rows(&ex)), sorted(expected));
    // The Go client is one connection (keep-alive): every client exchange has one port.
    let ports: std::collections::BTreeSet<_> = ex
        .iter()
        .filter_map(|e| client_addr(e).map(|a| a.port()))
        .collect();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert!(
        agent.stderr().contains("tls: attached go"),
        "no attach line for the Go client:\n{}",
        agent.stderr()
    );
}

#[test]
fn process_filter_reports_only_the_listed_programs() {
    if !tls_prerequisites(&["openssl", "nginx", "curl"]) {
        return;
    }
    let dir = scratch_dir("tls-filter");
    let config = dir.join("observer.toml");
    std::fs::write(&config, "[tls]\nexecutables = [\"curl\"]\n").unwrap();
    let agent =
        Agent::start(&["--client-ip", "full", "--config", config.to_str().unwrap()]).unwrap();
    let port = free_port();
    let (_nginx, _cert) = Nginx::start_tls(port, "").unwrap();
    let out = curl(&[
        "-k",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\\n",
        &format!("https://127.0.0.1:{port}/index.html"),
    ])
    .unwrap();
    assert_eq!(out, "200\n");
    // Only curl's side: nginx is filtered out in the kernel, and its ciphertext is not
    // mistaken for HTTP.
    let ex = agent.exchanges_for_port(port, 1);
    assert_eq!(
        rows(&ex),
        vec![row("client", "curl", "GET", "/index.html", 200)]
    );
    assert_all_tls(&ex);
}

#[test]
fn tls_server_running_before_the_agent_is_found_at_start() {
    if !tls_prerequisites(&["openssl", "node", "curl"]) {
        return;
    }
    let dir = scratch_dir("node-tls-early");
    let cert = Cert::make(&dir).unwrap();
    let port = free_port();
    let server = Proc::spawn(
        "node server",
        Command::new("node")
            .arg(workspace_root().join("tests/servers/https_server.js"))
            .arg(port.to_string())
            .arg(&cert.cert)
            .arg(&cert.key),
    )
    .unwrap();
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    // Found by the start-up scan of running processes, not by an exec event.
    let target = wait_covered(&agent, &["/node", "/libssl.so.3"], server.child.id());
    assert_eq!(target["library"], "openssl");
    // Each file is one target, however many processes map it.
    let targets = tls_target_list(&agent);
    let mut paths: Vec<_> = targets.iter().filter_map(|t| t["path"].as_str()).collect();
    let listed = paths.len();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), listed, "a file is attached twice: {targets:?}");
    let path = target["path"].as_str().unwrap();
    let series =
        format!("api_observer_tls_target_processes{{library=\"openssl\",path=\"{path}\"}}");
    assert!(
        agent.metrics().lines().any(|l| l.starts_with(&series)),
        "no {series} in /metrics"
    );

    let out = curl(&["-k", &format!("https://127.0.0.1:{port}/early")]).unwrap();
    assert!(out.starts_with("node GET /early"), "{out}");
    let ex = agent.exchanges_for_port(port, 2);
    assert_all_tls(&ex);
    assert_addresses(&ex, port);
    assert_eq!(
        sorted(rows(&ex)),
        sorted(vec![
            row("server", "node", "GET", "/early", 200),
            row("client", "curl", "GET", "/early", 200),
        ])
    );
}

/// Run counts of the agent's TLS library programs (`kernel.bpf_stats_enabled` on).
fn tls_program_runs() -> u64 {
    let Ok(out) = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
    else {
        return 0;
    };
    let progs: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    progs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("ssl_")))
        .filter_map(|p| p["run_cnt"].as_u64())
        .sum()
}

/// The worker process of an nginx started by the tests.
fn nginx_worker(nginx: &Nginx) -> u32 {
    let master = std::fs::read_to_string(nginx.dir.join("nginx.pid")).unwrap();
    let out = Command::new("pgrep")
        .args(["-P", master.trim()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("nginx worker")
}

/// A filter by pid or cgroup attaches the library probes per process: a process left
/// out never traps in its TLS library (not even to be filtered out in the kernel), and
/// one let in is seen.
#[test]
fn processes_left_out_by_pid_never_trap() {
    if !tls_prerequisites(&["openssl", "nginx", "curl", "bpftool", "pgrep"]) {
        return;
    }
    let port = free_port();
    let (nginx, _cert) = Nginx::start_tls(port, "").unwrap();
    let worker = nginx_worker(&nginx);
    let url = format!("https://127.0.0.1:{port}/index.html");
    let fetch = |n: usize| {
        for _ in 0..n {
            let out = curl(&["-k", "-o", "/dev/null", "-w", "%{http_code}", &url]).unwrap();
            assert_eq!(out, "200");
        }
    };
    let stats = "/proc/sys/kernel/bpf_stats_enabled";
    let was = std::fs::read_to_string(stats).unwrap_or_default();
    std::fs::write(stats, "1").unwrap();

    // The nginx worker alone is observed: its side is seen, curl's is not.
    let dir = scratch_dir("tls-per-process");
    let config = dir.join("observer.toml");
    std::fs::write(&config, format!("[tls]\npids = [{worker}]\n")).unwrap();
    let agent = Agent::start(&["--config", config.to_str().unwrap()]).unwrap();
    wait_tls_attached(&agent, &["/libssl.so.3"], worker).unwrap();
    fetch(3);
    let ex = agent.exchanges_for_port(port, 3);
    assert_eq!(
        rows(&ex),
        vec![row("server", "nginx", "GET", "/index.html", 200); 3]
    );
    assert_all_tls(&ex);
    drop(agent);

    // No process observed: all of nginx's and curl's TLS calls run free.
    std::fs::write(&config, "[tls]\npids = [1]\n").unwrap();
    let agent = Agent::start(&["--config", config.to_str().unwrap()]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let before = tls_program_runs();
    fetch(10);
    let after = tls_program_runs();
    let _ = std::fs::write(stats, was.trim());
    assert_eq!(
        after - before,
        0,
        "TLS programs ran for processes the filter leaves out"
    );
    assert!(agent.exchanges_for_port(port, 0).is_empty());
}
