//! HTTP/2 joined mid-connection, end to end: a node `http2` client and server hold one
//! cleartext HTTP/2 connection that was opened and used before the agent started. The
//! agent must pick it up at a frame boundary, report the later streams, and say what it
//! could not know (header table entries inserted before it joined) as counted issues,
//! never as wrong values.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::Command,
};

use e2e::*;
use serde_json::Value;

const SERVER: &str = r#"
const http2 = require('http2');
const server = http2.createServer((req, res) => {
  res.setHeader('content-type', 'text/plain');
  res.end('seen ' + req.url + '\n');
});
server.listen(Number(process.argv[1]), '127.0.0.1', () => console.log('ready'));
"#;

/// One session: a request before the agent runs, then, on a line from stdin, two more
/// (each with a path never sent before) and one repeating the first path.
const CLIENT: &str = r#"
const http2 = require('http2');
const readline = require('readline');
const session = http2.connect('http://127.0.0.1:' + process.argv[1]);
function get(path) {
  return new Promise((resolve, reject) => {
    const req = session.request({ ':path': path, 'authorization': 'Bearer midstream-token' });
    let status = 0;
    req.on('response', (h) => { status = h[':status']; });
    req.on('data', () => {});
    req.on('end', () => resolve(status));
    req.on('error', reject);
    req.end();
  });
}
(async () => {
  const first = await get('/before');
  console.log(session.socket.localPort, first);
  const rl = readline.createInterface({ input: process.stdin });
  for await (const _ of rl) {
    const a = await get('/after/one');
    const b = await get('/after/two');
    const c = await get('/before');
    console.log(a, b, c);
  }
  session.close();
})();
"#;

fn rows(ex: &[Value], role: &str) -> Vec<(String, String, String, u64)> {
    let mut rows: Vec<_> = ex
        .iter()
        .filter(|e| e["role"] == role)
        .map(|e| {
            (
                e["protocol"].as_str().unwrap_or_default().to_string(),
                e["method"].as_str().unwrap_or_default().to_string(),
                e["path"].as_str().unwrap_or_default().to_string(),
                e["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn issue(metrics: &str, reason: &str) -> u64 {
    let key = format!("api_observer_http_parse_issues_total{{issue=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn http2_connection_opened_before_the_agent_is_joined() {
    if !prerequisites() || !require_tools(&["node"]) {
        return;
    }
    let port = free_port();
    let mut server = Proc::spawn(
        "node http2 server",
        Command::new("node").args(["-e", SERVER, &port.to_string()]),
    )
    .unwrap();
    let mut server_out = BufReader::new(server.child.stdout.take().unwrap()).lines();
    assert_eq!(server_out.next().unwrap().unwrap(), "ready");

    let mut client = Proc::spawn(
        "node http2 client",
        Command::new("node").args(["-e", CLIENT, &port.to_string()]),
    )
    .unwrap();
    let mut lines = BufReader::new(client.child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let (local_port, status) = first.trim().split_once(' ').unwrap();
    assert_eq!(status, "200");

    let agent = Agent::start(FULL_ADDRESSES).unwrap();
    writeln!(client.child.stdin.as_mut().unwrap(), "go").unwrap();
    assert_eq!(lines.next().unwrap().unwrap().trim(), "200 200 200");

    let ex = agent.exchanges_for_port(port, 6);
    // The streams after the agent joined, from both ends. (node's encoder never indexes
    // `:path`, so every path is a literal and known; its `:authority` is indexed once, on
    // the first request, before the agent ran: that entry is unknown to the agent.)
    let http2 = |m: &str, p: &str| ("http2".to_string(), m.to_string(), p.to_string(), 200);
    let expected = vec![
        http2("GET", "/after/one"),
        http2("GET", "/after/two"),
        http2("GET", "/before"),
    ];
    assert_eq!(rows(&ex, "server"), expected, "{ex:#?}");
    assert_eq!(rows(&ex, "client"), expected, "{ex:#?}");
    for e in &ex {
        assert_eq!(e["client"], format!("127.0.0.1:{local_port}"), "{e}");
        assert_eq!(e["comm"], "node", "{e}");
        assert_eq!(e["tls"], false, "{e}");
    }
    let metrics = agent.metrics();
    // Both ends of the connection were joined under way.
    assert_eq!(issue(&metrics, "h2_midstream_join"), 2, "{metrics}");
    // Each direction of both sockets found a frame boundary again.
    assert!(issue(&metrics, "h2_frame_resync") >= 4, "{metrics}");
    assert!(issue(&metrics, "hpack_unknown_reference") >= 2, "{metrics}");
    assert_eq!(issue(&metrics, "hpack_error"), 0, "{metrics}");
}
