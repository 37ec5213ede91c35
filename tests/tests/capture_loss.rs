//! Forced loss: the agent is paused (SIGSTOP) while a keep-alive client keeps calling, so
//! the kernel's ring buffer fills and records are dropped. Every exchange reported after
//! that must still pair each request with its own response, the loss must be counted, and
//! the session must show it was not captured whole.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::Command,
    time::Duration,
};

use e2e::*;

/// A keep-alive HTTP/1.1 server whose status tells which request it answers
/// (`/r/<i>` gets `230 + i % 60`), and a client calling it over one connection, in
/// phases started by lines on stdin.
const SERVER_AND_CLIENT: &str = r#"
import http.client, http.server, sys, threading
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        i = int(self.path.rsplit("/", 1)[1])
        body = b"x" * (i % 7)
        self.send_response(230 + i % 60)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
print(srv.server_address[1], flush=True)
conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1])
i = 0
for n in sys.stdin:
    for _ in range(int(n)):
        conn.request("GET", "/r/%d" % i, headers={"Authorization": "Bearer capture-loss-test-token-0001"})
        r = conn.getresponse(); r.read()
        assert r.status == 230 + i % 60
        i += 1
    print(i, flush=True)
"#;

#[test]
fn lost_records_never_shift_pairs_and_are_counted_per_session() {
    if !prerequisites() {
        return;
    }
    let dir = scratch_dir("capture-loss");
    let config = dir.join("observer.toml");
    // A small ring buffer, so that a short pause of the agent overflows it.
    std::fs::write(&config, "[capture]\nring_buffer_bytes = 65536\n").unwrap();
    let agent = Agent::start(&["--config", config.to_str().unwrap()]).unwrap();
    let mut app = Proc::spawn(
        "server+client",
        Command::new("python3").args(["-c", SERVER_AND_CLIENT]),
    )
    .unwrap();
    let mut lines = BufReader::new(app.child.stdout.take().unwrap()).lines();
    let port: u16 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    let mut phase = |n: usize| {
        writeln!(app.child.stdin.as_mut().unwrap(), "{n}").unwrap();
        lines.next().unwrap().unwrap()
    };

    assert_eq!(phase(50), "50");
    // Paused, the agent drains nothing: the ring buffer fills and records are dropped.
    let pid = agent.pid().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let during = phase(1500);
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(during, "1550");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(phase(200), "1750");

    let all = agent.exchanges_for_port(port, 250);
    let mut last_phase = 0;
    for e in &all {
        let path = e["path"].as_str().unwrap_or_default();
        let i: u64 = path.trim_start_matches("/r/").parse().unwrap_or(u64::MAX);
        assert_eq!(
            e["status"].as_u64(),
            Some(230 + i % 60),
            "{} exchange of {path} paired with another request's response",
            e["role"].as_str().unwrap_or("?")
        );
        if i >= 1550 && e["role"] == "server" {
            last_phase += 1;
        }
    }
    // Both ends are traced: each request is reported once by the server and once by the
    // client, unless lost. After the pause, capture resumes (a busy machine may still
    // lose some: counted like the rest).
    eprintln!("{last_phase} of the 200 exchanges after the pause reported by the server end");
    assert!(
        last_phase >= 100,
        "only {last_phase} of the 200 exchanges after the pause were reported"
    );
    assert!(
        all.len() < 2 * 1750,
        "{} exchanges reported: nothing was lost, the test forced no loss",
        all.len()
    );

    // The agent counts a gap when the next record of the connection shows it.
    wait_for(Duration::from_secs(5), || {
        (metric_total(
            &agent.metrics(),
            "api_observer_capture_lost_exchanges_total",
        ) > 0.0)
            .then_some(())
    });
    let m = agent.metrics();
    eprintln!(
        "reported {} of {} exchanges; gaps {}, lost bytes {}, lost exchanges {}, ring full {}",
        all.len(),
        2 * 1750,
        metric_total(&m, "api_observer_capture_gaps_total"),
        metric_total(&m, "api_observer_capture_lost_bytes_total"),
        metric_total(&m, "api_observer_capture_lost_exchanges_total"),
        metric_total(
            &m,
            "api_observer_capture_dropped_total{reason=\"ringbuf_full\"}"
        ),
    );
    assert!(
        metric_total(
            &m,
            "api_observer_capture_dropped_total{reason=\"ringbuf_full\"}"
        ) > 0.0
    );
    assert!(metric_total(&m, "api_observer_capture_gaps_total") > 0.0);
    assert!(metric_total(&m, "api_observer_capture_lost_exchanges_total") > 0.0);

    // The session of the token says how much of it was seen.
    let sessions = wait_for(Duration::from_secs(10), || {
        let list = agent_json(&agent, "/api/sessions?direction=inbound").ok()?;
        let s = list.as_array()?.iter().find(|s| {
            s["kind"] == "bearer" && s["lost_exchanges"].as_u64().is_some_and(|n| n > 0)
        })?;
        Some(s.clone())
    })
    .expect("no inbound session shows lost exchanges");
    let share = sessions["capture_completeness"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "completeness {share}");
    assert!(metric_total(&agent.metrics(), "api_observer_sessions_incomplete") >= 1.0);
}
