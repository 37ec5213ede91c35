//! Pay only for what is parsed: once the agent has classified a connection as a protocol
//! it does not parse, the kernel stops copying its bytes.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::Command,
};

use e2e::*;

/// A line-echo server and a client that speak a binary protocol: one message, then (on
/// a line from stdin) 200 more on the same connection, each echoed.
const ECHO: &str = r#"
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(1)
def serve():
    c, _ = srv.accept()
    while True:
        b = c.recv(4096)
        if not b: break
        c.sendall(b)
threading.Thread(target=serve, daemon=True).start()
cli = socket.create_connection(srv.getsockname())
msg = b"\x00\x17BINARY-PROTOCOL-FRAME\xff" * 4
def roundtrip():
    cli.sendall(msg)
    got = b""
    while len(got) < len(msg): got += cli.recv(4096)
roundtrip()
print("first", flush=True)
sys.stdin.readline()
for _ in range(200): roundtrip()
print("done", flush=True)
sys.stdin.readline()
"#;

fn data_records(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("api_observer_capture_events_total{kind=\"data\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[test]
fn a_connection_not_parsed_stops_producing_records() {
    if !prerequisites() {
        return;
    }
    let agent = Agent::start(&[]).unwrap();
    let mut echo = Proc::spawn("echo", Command::new("python3").args(["-c", ECHO])).unwrap();
    let mut lines = BufReader::new(echo.child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    // The first message was seen and classified; wait until the agent has said so.
    let not_parsed = || {
        agent
            .metrics()
            .lines()
            .find_map(|l| l.strip_prefix("api_observer_connections_not_parsed_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        wait_for(std::time::Duration::from_secs(10), || (not_parsed() >= 1.0)
            .then_some(()))
        .is_some(),
        "the binary connection was never classified:\n{}",
        agent.metrics()
    );
    let before = data_records(&agent.metrics());
    writeln!(echo.child.stdin.as_mut().unwrap(), "go").unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "done");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = data_records(&agent.metrics());
    eprintln!("data records: {before} before the 200 round trips, {after} after");
    // 200 round trips are 800 reads and writes (both ends are traced). What is left is
    // the test's own metrics requests, a few records each.
    assert!(
        after - before < 100,
        "{} data records after the connection was classified (was {before})",
        after - before
    );
}

/// A process that exits closes its sockets without `close()`: the kernel's socket table
/// keeps their entries until the agent's sweep finds them gone.
#[test]
fn sockets_closed_by_exit_are_swept_from_the_kernel_table() {
    if !prerequisites() {
        return;
    }
    let dir = scratch_dir("sweep");
    let config = dir.join("observer.toml");
    std::fs::write(&config, "[capture]\nsweep_interval_secs = 1\n").unwrap();
    let agent = Agent::start(&["--config", config.to_str().unwrap()]).unwrap();
    let swept = || {
        agent
            .metrics()
            .lines()
            .find_map(|l| l.strip_prefix("api_observer_kernel_sockets_swept_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = swept();
    // Ten clients connect to a server that stays, and exit without closing.
    let script = r#"
import os, socket, subprocess, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(16)
port = srv.getsockname()[1]
code = "import os, socket; s = socket.create_connection(('127.0.0.1', %d)); s.sendall(b'x'); os._exit(0)" % port
for _ in range(10):
    subprocess.run([sys.executable, "-c", code], check=True)
kept = [srv.accept()[0] for _ in range(10)]
print("done", flush=True)
sys.stdin.readline()
"#;
    let mut p = Proc::spawn(
        "exiting clients",
        Command::new("python3").args(["-c", script]),
    )
    .unwrap();
    let mut lines = BufReader::new(p.child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "done");
    let got = wait_for(std::time::Duration::from_secs(15), || {
        (swept() - before >= 10.0).then_some(())
    });
    assert!(
        got.is_some(),
        "{} entries swept, 10 expected:\n{}",
        swept() - before,
        agent.metrics()
    );
}

fn events(metrics: &str, kind: &str) -> f64 {
    let prefix = format!("api_observer_capture_events_total{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// UDP sockets `connect` too (every DNS lookup does): they are not followed, so they
/// cost no records, while TCP connects still are.
#[test]
fn udp_sockets_that_connect_are_not_followed() {
    if !prerequisites() {
        return;
    }
    let agent = Agent::start(&[]).unwrap();
    let before = agent.metrics();
    assert!(
        before.contains("api_observer_probe_attached{attach_point=\"sock:inet_sock_set_state\"} 1"),
        "the TCP state hook is not attached"
    );
    let script = r#"
import socket, sys
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); srv.bind(("127.0.0.1", 0))
for i in range(200):
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.connect(srv.getsockname())
    c.send(b"GET /udp HTTP/1.1\r\nHost: x\r\n\r\n")
    data, peer = srv.recvfrom(100)
    srv.sendto(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", peer)
    c.recv(100)
    c.close()
tcp = socket.socket(); tcp.bind(("127.0.0.1", 0)); tcp.listen(8)
for i in range(5):
    socket.create_connection(tcp.getsockname()).close()
print("done", flush=True)
"#;
    let mut p = Proc::spawn("udp", Command::new("python3").args(["-c", script])).unwrap();
    let mut lines = BufReader::new(p.child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "done");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = agent.metrics();
    let connects = events(&after, "connect") - events(&before, "connect");
    let data = events(&after, "data") - events(&before, "data");
    eprintln!("connect records {connects}, data records {data}");
    // The 5 TCP connects are followed (plus the test's own metrics requests); none of the
    // 200 UDP ones, nor their 400 sends and receives.
    assert!(
        (5.0..20.0).contains(&connects),
        "{connects} connect records"
    );
    assert!(data < 50.0, "{data} data records");
    assert!(agent.exchanges().iter().all(|e| e["path"] != "/udp"));
}
