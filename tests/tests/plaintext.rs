//! Plaintext HTTP/1.x, end to end: real agent, real servers, real clients. Each test
//! asserts the exact exchanges the agent reported for the server port it used.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use e2e::*;
use serde_json::Value;

fn by_role<'a>(ex: &'a [Value], role: &str) -> Vec<&'a Value> {
    ex.iter().filter(|e| e["role"] == role).collect()
}

fn summaries(ex: &[&Value]) -> Vec<(String, String, String, u64)> {
    ex.iter().map(|e| summary(e)).collect()
}

fn expect(role: &str, rows: &[(&str, &str, u64)]) -> Vec<(String, String, String, u64)> {
    rows.iter()
        .map(|(m, p, s)| (role.to_string(), m.to_string(), p.to_string(), *s))
        .collect()
}

#[test]
fn curl_keepalive_against_python_server() {
    if !prerequisites() {
        return;
    }
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let port = free_port();
    let _server = python_api_server("127.0.0.1", port).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let out = curl(&[
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-w",
        "%{local_port} %{http_code}\\n",
        &format!("{base}/hello"),
        &format!("{base}/items/42"),
        &format!("{base}/missing?api_key=secret"),
    ])
    .unwrap();
    let ports = local_ports(&out);
    assert_eq!(ports.len(), 3, "{out}");
    assert!(
        ports.iter().all(|p| *p == ports[0]),
        "keep-alive: one connection: {out}"
    );
    let client: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();

    let ex = agent.exchanges_for_port(port, 6);
    let rows = [
        ("GET", "/hello", 200),
        ("GET", "/items/42", 200),
        ("GET", "/missing", 404),
    ];
    let server = by_role(&ex, "server");
    assert_eq!(summaries(&server), expect("server", &rows), "{ex:#?}");
    let clients = by_role(&ex, "client");
    assert_eq!(summaries(&clients), expect("client", &rows), "{ex:#?}");
    for e in &ex {
        assert_eq!(client_addr(e), Some(client), "{e}");
        assert_eq!(e["server"], format!("127.0.0.1:{port}"));
        assert_eq!(e["tls"], false);
        assert_eq!(e["protocol"], "http1");
    }
    assert!(server.iter().all(|e| e["comm"] == "python3"), "{server:#?}");
    assert!(clients.iter().all(|e| e["comm"] == "curl"), "{clients:#?}");
    // Query values are never printed; their names are.
    assert_eq!(server[2]["query_keys"], serde_json::json!(["api_key"]));
    let all = std::fs::read_to_string(agent.dir.join("exchanges.jsonl")).unwrap();
    assert!(!all.contains("secret"));
}

#[test]
fn nginx_methods_bodies_and_bodyless_responses_on_one_connection() {
    if !prerequisites() {
        return;
    }
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let port = free_port();
    let nginx = Nginx::start(port, "").unwrap();
    let upload = nginx.dir.join("upload.bin");
    std::fs::write(&upload, vec![b'u'; 1024 * 1024]).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let w = "%{local_port} %{http_code}\\n";
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        w,
        &format!("{base}/index.html"),
        "--next",
        "-o",
        "/dev/null",
        "-w",
        w,
        "-I",
        &format!("{base}/index.html"),
        "--next",
        "-o",
        "/dev/null",
        "-w",
        w,
        &format!("{base}/empty"),
        "--next",
        "-o",
        "/dev/null",
        "-w",
        w,
        &format!("{base}/nope"),
        "--next",
        "-o",
        "/dev/null",
        "-w",
        w,
        "--data-binary",
        &format!("@{}", upload.display()),
        &format!("{base}/upload"),
        "--next",
        "-o",
        "/dev/null",
        "-w",
        w,
        &format!("{base}/big.bin"),
        "--next",
        "-o",
        "/dev/null",
        "-w",
        w,
        &format!("{base}/index.html"),
    ])
    .unwrap();
    let ports = local_ports(&out);
    assert_eq!(ports.len(), 7, "{out}");
    assert!(
        ports.iter().all(|p| *p == ports[0]),
        "one connection: {out}"
    );

    let ex = agent.exchanges_for_port(port, 14);
    let rows = [
        ("GET", "/index.html", 200),
        ("HEAD", "/index.html", 200),
        ("GET", "/empty", 204),
        ("GET", "/nope", 404),
        ("POST", "/upload", 201),
        ("GET", "/big.bin", 200),
        ("GET", "/index.html", 200),
    ];
    let server = by_role(&ex, "server");
    assert_eq!(summaries(&server), expect("server", &rows), "{ex:#?}");
    assert_eq!(summaries(&by_role(&ex, "client")), expect("client", &rows));
    assert!(server.iter().all(|e| e["comm"] == "nginx"));
    assert_eq!(server[4]["request_body_bytes"], 1024 * 1024);
    assert_eq!(server[5]["response_body_bytes"], 256 * 1024);
    let client: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    assert!(ex.iter().all(|e| client_addr(e) == Some(client)));
}

#[test]
fn pipelined_requests_are_paired_in_order() {
    if !prerequisites() {
        return;
    }
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let port = free_port();
    let _nginx = Nginx::start(port, "").unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let local = s.local_addr().unwrap();
    // Three requests in one write, the last one closing the connection.
    s.write_all(
        b"GET /index.html HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /nope HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /empty HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 3, "{text}");

    let ex = agent.exchanges_for_port(port, 6);
    let rows = [
        ("GET", "/index.html", 200),
        ("GET", "/nope", 404),
        ("GET", "/empty", 204),
    ];
    assert_eq!(
        summaries(&by_role(&ex, "server")),
        expect("server", &rows),
        "{ex:#?}"
    );
    assert_eq!(
        summaries(&by_role(&ex, "client")),
        expect("client", &rows),
        "{ex:#?}"
    );
    assert!(ex.iter().all(|e| client_addr(e) == Some(local)));
}

const PY_CLIENT: &str = r#"
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
def get(p):
    c.request("GET", p, headers={"User-Agent": "e2e-python/1.0"})
    r = c.getresponse(); r.read(); return r.status
get("/index.html")
print(c.sock.getsockname()[1], flush=True)
sys.stdin.readline()
print(get("/nope"), get("/empty"), flush=True)
"#;

#[test]
fn connection_opened_before_the_agent_started_is_followed() {
    if !prerequisites() {
        return;
    }
    let port = free_port();
    let _nginx = Nginx::start(port, "").unwrap();
    // A Python client with a keep-alive connection, opened and used before the agent runs.
    let mut client = Proc::spawn(
        "python client",
        Command::new("python3").args(["-c", PY_CLIENT, &port.to_string()]),
    )
    .unwrap();
    let mut lines = BufReader::new(client.child.stdout.take().unwrap()).lines();
    let local_port: u16 = lines.next().unwrap().unwrap().trim().parse().unwrap();

    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    writeln!(client.child.stdin.as_mut().unwrap(), "go").unwrap();
    assert_eq!(lines.next().unwrap().unwrap().trim(), "404 204");

    let ex = agent.exchanges_for_port(port, 4);
    let rows = [("GET", "/nope", 404), ("GET", "/empty", 204)];
    assert_eq!(
        summaries(&by_role(&ex, "server")),
        expect("server", &rows),
        "{ex:#?}"
    );
    assert_eq!(
        summaries(&by_role(&ex, "client")),
        expect("client", &rows),
        "{ex:#?}"
    );
    let expected: SocketAddr = format!("127.0.0.1:{local_port}").parse().unwrap();
    for e in &ex {
        assert_eq!(client_addr(e), Some(expected), "{e}");
        assert_eq!(e["server"], format!("127.0.0.1:{port}"));
    }
    let server = by_role(&ex, "server");
    assert!(server.iter().all(|e| e["comm"] == "nginx"), "{server:#?}");
    assert!(by_role(&ex, "client")
        .iter()
        .all(|e| e["comm"] == "python3"));
}

#[test]
fn ipv6_client_and_server() {
    if !prerequisites() {
        return;
    }
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let port = free_port();
    let _server = python_api_server("::1", port).unwrap();
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{local_port} %{http_code}\\n",
        &format!("http://[::1]:{port}/items/7"),
    ])
    .unwrap();
    let lp = local_ports(&out)[0];
    let ex = agent.exchanges_for_port(port, 2);
    let rows = [("GET", "/items/7", 200)];
    assert_eq!(
        summaries(&by_role(&ex, "server")),
        expect("server", &rows),
        "{ex:#?}"
    );
    assert_eq!(
        summaries(&by_role(&ex, "client")),
        expect("client", &rows),
        "{ex:#?}"
    );
    let client: SocketAddr = format!("[::1]:{lp}").parse().unwrap();
    for e in &ex {
        assert_eq!(client_addr(e), Some(client), "{e}");
        assert_eq!(e["server"], format!("[::1]:{port}"));
    }
}

#[test]
fn expect_continue_chunked_bodies_and_chunked_responses() {
    if !prerequisites() {
        return;
    }
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let port = free_port();
    let _server = python_api_server("127.0.0.1", port).unwrap();
    let dir = scratch_dir("bodies");
    let body = dir.join("body.bin");
    std::fs::write(&body, vec![b'b'; 3 * 1024 * 1024]).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let data = format!("@{}", body.display());
    let w = "%{local_port} %{http_code}\\n";
    let out = curl(&[
        "-o",
        "/dev/null",
        "-w",
        w,
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        &data,
        &format!("{base}/upload"),
        "--next",
        "-o",
        "/dev/null",
        "-w",
        w,
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &data,
        &format!("{base}/upload"),
        "--next",
        "-o",
        "/dev/null",
        "-w",
        w,
        &format!("{base}/chunked"),
        "--next",
        "-o",
        "/dev/null",
        "-w",
        w,
        &format!("{base}/status/304"),
        "--next",
        "-o",
        "/dev/null",
        "-w",
        w,
        &format!("{base}/hello"),
    ])
    .unwrap();
    let ports = local_ports(&out);
    assert_eq!(ports.len(), 5, "{out}");
    assert!(
        ports.iter().all(|p| *p == ports[0]),
        "one connection: {out}"
    );
    let ex = agent.exchanges_for_port(port, 10);
    let rows = [
        ("POST", "/upload", 201),
        ("POST", "/upload", 201),
        ("GET", "/chunked", 200),
        ("GET", "/status/304", 304),
        ("GET", "/hello", 200),
    ];
    let server = by_role(&ex, "server");
    assert_eq!(summaries(&server), expect("server", &rows), "{ex:#?}");
    assert_eq!(summaries(&by_role(&ex, "client")), expect("client", &rows));
    assert_eq!(server[0]["request_body_bytes"], 3 * 1024 * 1024);
}

#[test]
fn exchange_reaches_metrics_and_stream_within_a_second_and_stop_detaches() {
    if !prerequisites() {
        return;
    }
    let before = our_programs();
    let mut agent = Agent::start(FULL_ADDRESSES).unwrap();
    let loaded: Vec<u32> = our_programs().difference(&before).copied().collect();
    assert!(
        !loaded.is_empty(),
        "the agent's programs are visible to bpftool"
    );
    let port = free_port();
    let _server = python_api_server("127.0.0.1", port).unwrap();
    curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/hello")]).unwrap();
    let done = Instant::now();
    let seen = wait_for(Duration::from_secs(1), || {
        agent
            .exchanges()
            .iter()
            .any(|e| server_port(e) == Some(port) && e["role"] == "server")
            .then_some(())
    });
    assert!(seen.is_some(), "exchange not in the stream within 1 s");
    let metrics = agent.metrics();
    assert!(done.elapsed() < Duration::from_secs(2));
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("http_server_request_duration_seconds_count{")
                && l.contains("http_request_method=\"GET\"")
                && l.contains("http_response_status_code=\"200\"")
                && l.contains(&format!("server_port=\"{port}\""))
                && l.contains("url_scheme=\"http\"")
        })
        .unwrap_or_else(|| panic!("no request counter in:\n{metrics}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value >= 1.0, "{line}");
    assert!(metrics.contains("http_server_request_duration_seconds_bucket{"));
    assert!(metrics.contains("api_observer_build_info{version=\""));
    assert!(metrics.contains("process_resident_memory_bytes "));
    assert!(metrics.contains("api_observer_capture_events_total{kind=\"data\"}"));
    assert!(metrics.contains("api_observer_capture_dropped_total{reason=\"ringbuf_full\"} 0"));

    // A clean stop detaches every program this agent loaded.
    let status = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}\n{}", agent.stderr());
    let left: Vec<u32> = our_programs()
        .into_iter()
        .filter(|id| loaded.contains(id))
        .collect();
    assert!(left.is_empty(), "programs left loaded after stop: {left:?}");
}

/// Ids of loaded BPF programs with the names of the agent's hooks (from bpftool).
fn our_programs() -> std::collections::BTreeSet<u32> {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("bpftool (apt-get install bpftool)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("name exit_sendfile") || l.contains("name tcp_rcv_space"))
        .filter_map(|l| l.split(':').next()?.trim().parse().ok())
        .collect()
}

#[test]
fn garbage_and_non_http_traffic_do_not_disturb_the_agent() {
    if !prerequisites() {
        return;
    }
    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    let port = free_port();
    let _nginx = Nginx::start(port, "").unwrap();
    // Binary garbage, a TLS-looking record, and an oversized header: each on its own
    // connection, then a normal request.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let garbage: Vec<u8> = (0..20_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let huge = format!(
        "GET /index.html HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "y".repeat(100_000)
    );
    for payload in [garbage, vec![0x16, 3, 1, 0, 200, 1], huge.into_bytes()] {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let _ = s.write_all(&payload);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    curl(&[
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{port}/index.html"),
    ])
    .unwrap();
    let ex = agent.exchanges_for_port(port, 2);
    let ok: Vec<_> = ex
        .iter()
        .filter(|e| e["path"] == "/index.html" && e["status"] == 200)
        .collect();
    assert_eq!(ok.len(), 2, "the normal request on both sides: {ex:#?}");
    let (code, _) = http_get(agent.addr, "/healthz").unwrap();
    assert_eq!(code, 200);
}
