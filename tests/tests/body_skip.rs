//! Pay only for the heads: once the agent has read a head that declares a long body
//! (Content-Length, a chunk size), the kernel counts the body's bytes without copying
//! them, and the next exchange on the connection is still paired right.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::Command,
    time::Duration,
};

use e2e::*;

/// A keep-alive server whose `/big/<i>` answers 2 MiB, written 64 KiB at a time (a slow
/// download), and `/small/<i>` a few bytes; each status tells which request it answers.
/// The client fetches what each stdin line names.
const SERVER_AND_CLIENT: &str = r#"
import http.client, http.server, sys, threading, time
BIG = 2 * 1024 * 1024
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        kind, i = self.path.split("/")[1:3]
        i = int(i)
        self.send_response(230 + i)
        self.send_header("Content-Length", str(BIG if kind == "big" else 5))
        self.end_headers()
        if kind == "big":
            for _ in range(BIG // 65536):
                self.wfile.write(b"b" * 65536)
                time.sleep(0.005)
        else:
            self.wfile.write(b"small")
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
print(srv.server_address[1], flush=True)
conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1])
for line in sys.stdin:
    conn.request("GET", line.strip())
    r = conn.getresponse()
    body = r.read()
    print(r.status, len(body), flush=True)
"#;

/// (role, path, status, response body bytes) of each exchange, sorted.
fn body_rows(seen: &[serde_json::Value]) -> Vec<(String, String, u64, u64)> {
    let mut rows: Vec<(String, String, u64, u64)> = seen
        .iter()
        .map(|e| {
            (
                e["role"].as_str().unwrap_or_default().to_string(),
                e["path"].as_str().unwrap_or_default().to_string(),
                e["status"].as_u64().unwrap_or_default(),
                e["response_body_bytes"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn long_bodies_are_counted_in_the_kernel_not_copied() {
    if !prerequisites() {
        return;
    }
    let agent = Agent::start(&[]).unwrap();
    let mut app = Proc::spawn(
        "server+client",
        Command::new("python3").args(["-c", SERVER_AND_CLIENT]),
    )
    .unwrap();
    let mut lines = BufReader::new(app.child.stdout.take().unwrap()).lines();
    let port: u16 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    let before = agent.metrics();
    let paths: Vec<String> = (0..8)
        .map(|i| {
            if i % 2 == 0 {
                format!("/big/{i}")
            } else {
                format!("/small/{i}")
            }
        })
        .collect();
    for (i, path) in paths.iter().enumerate() {
        writeln!(app.child.stdin.as_mut().unwrap(), "{path}").unwrap();
        let answer = lines.next().unwrap().unwrap();
        let size = if i % 2 == 0 { 2 * 1024 * 1024 } else { 5 };
        assert_eq!(answer, format!("{} {size}", 230 + i));
    }
    // Both ends are traced: each exchange is reported by the server and by the client.
    let got = body_rows(&agent.exchanges_for_port(port, 2 * paths.len()));
    let mut want: Vec<(String, String, u64, u64)> = ["client", "server"]
        .iter()
        .flat_map(|role| {
            paths.iter().enumerate().map(move |(i, p)| {
                let size = if i % 2 == 0 { 2 * 1024 * 1024 } else { 5 };
                (role.to_string(), p.clone(), 230 + i as u64, size)
            })
        })
        .collect();
    want.sort();
    assert_eq!(got, want);

    let after = agent.metrics();
    let delta = |name: &str| metric_total(&after, name) - metric_total(&before, name);
    let bodies = 4.0 * 2.0 * 1024.0 * 1024.0;
    let skipped = delta("api_observer_capture_skipped_bytes_total");
    let records = delta("api_observer_capture_events_total{kind=\"data\"}");
    eprintln!(
        "body bytes {bodies}, both ends: {}; skipped {skipped}; data records {records}; lost {}",
        2.0 * bodies,
        delta("api_observer_capture_lost_bytes_total")
    );
    // Each body is 32 writes and at least as many reads: without skipping that alone is
    // over 250 records. The agent needs a moment to read the head and order the skip;
    // most of each body comes after that.
    assert!(
        skipped > bodies,
        "only {skipped} of {} body bytes (both ends) counted without copying",
        2.0 * bodies
    );
    assert!(records < 200.0, "{records} data records for 8 exchanges");
    assert_eq!(delta("api_observer_capture_lost_bytes_total"), 0.0);
    std::thread::sleep(Duration::from_millis(10));
}

/// HTTP/2: once the agent has read the head of a long DATA frame (nginx sends frames of
/// up to `http2_chunk_size` when the client accepts them), the reads and writes that lie
/// inside the rest of the frame are counted in the kernel, not copied; the bodies still
/// add up, both ends.
#[test]
fn long_http2_data_frames_are_counted_in_the_kernel_not_copied() {
    if !(prerequisites() && require_tools(&["nginx", "h2load"])) {
        return;
    }
    let port = free_port();
    let nginx = Nginx::start_h2c(port, "http2_chunk_size 1m; sendfile on;").unwrap();
    const HUGE: usize = 4 << 20;
    std::fs::write(nginx.dir.join("html/huge.bin"), vec![b'h'; HUGE]).unwrap();
    // h2load reads 8 KiB at a time: copied whole, so that no frame head falls in an
    // uncopied tail (which costs the frame until the parser finds whole frames again).
    let agent = Agent::start(&["--capture-bytes", "8192"]).unwrap();
    let before = agent.metrics();
    // Four downloads as concurrent streams of one connection; h2load takes frames of up
    // to 1 MiB and opens its flow-control windows wide.
    let out = Command::new("h2load")
        .args([
            "-n", "4", "-c", "1", "-m", "4", "-f", "1M", "-w", "30", "-W", "30",
        ])
        .arg(format!("http://127.0.0.1:{port}/huge.bin"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("4 succeeded"), "{text}");
    let got = body_rows(&agent.exchanges_for_port(port, 8));
    let want: Vec<(String, String, u64, u64)> = ["client", "server"]
        .iter()
        .flat_map(|role| {
            (0..4).map(move |_| (role.to_string(), "/huge.bin".to_string(), 200, HUGE as u64))
        })
        .collect();
    assert_eq!(got, want);
    let after = agent.metrics();
    let delta = |name: &str| metric_total(&after, name) - metric_total(&before, name);
    let skipped = delta("api_observer_capture_skipped_bytes_total");
    eprintln!(
        "h2 body bytes (both ends) {}; skipped {skipped}; data records {}",
        8 * HUGE,
        delta("api_observer_capture_events_total{kind=\"data\"}")
    );
    assert!(
        skipped > (1 << 20) as f64,
        "only {skipped} HTTP/2 body bytes counted without copying"
    );
    assert_eq!(delta("api_observer_capture_lost_bytes_total"), 0.0);
    assert_eq!(
        parse_issue_count(&after, "truncated").unwrap_or(0.0),
        parse_issue_count(&before, "truncated").unwrap_or(0.0)
    );
}
