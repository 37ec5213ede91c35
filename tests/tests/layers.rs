//! Layer agreement: nginx's access log is followed and reconciled with the exchanges the
//! kernel saw. Requests to a location that does not log are counted as missing from the
//! log; forged lines for requests that never happened as not seen by the kernel. What is
//! kept of a line is its route template, never its path or query.

use std::{process::Command, time::Duration};

use e2e::*;

/// A combined-format line as nginx writes it, for a request that never happened.
fn forged_line(path: &str) -> String {
    let out = Command::new("date")
        .env("LC_ALL", "C")
        .args(["-u", "+%d/%b/%Y:%H:%M:%S +0000"])
        .output()
        .expect("date");
    let now = String::from_utf8_lossy(&out.stdout).trim().to_string();
    format!("127.0.0.1 - - [{now}] \"GET {path} HTTP/1.1\" 200 3 \"-\" \"curl/8.0\"\n")
}

fn disagreement(metrics: &str, kind: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("api_observer_layer_disagreement_total{"))
        .filter(|l| l.contains(&format!("kind=\"{kind}\"")) && l.contains("layer=\"access_log\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn unlogged_requests_and_forged_lines_are_counted_exactly() {
    if !prerequisites() {
        return;
    }
    let dir = scratch_dir("layers");
    let log = dir.join("access.log");
    let port = free_port();
    let _nginx = Nginx::start(
        port,
        &format!(
            "access_log {} combined;\n\
             location /users/ {{ return 200 \"user\\n\"; }}\n\
             location /unlogged/ {{ access_log off; return 200 \"quiet\\n\"; }}\n",
            log.display()
        ),
    )
    .unwrap();
    let config = dir.join("observer.toml");
    std::fs::write(
        &config,
        format!(
            "[layers]\ninterval_secs = 1\n\
             access_logs = [{{ path = \"{}\", format = \"combined\", port = {port} }}]\n",
            log.display()
        ),
    )
    .unwrap();
    let agent = Agent::start(&["--config", config.to_str().unwrap()]).unwrap();

    let base = format!("http://127.0.0.1:{port}");
    for (path, n) in [
        ("/users/1001?token=SECRETQ", 4),
        ("/nope", 3),
        ("/", 2),
        ("/unlogged/2002", 3),
    ] {
        for _ in 0..n {
            curl(&["-o", "/dev/null", &format!("{base}{path}")]).unwrap();
        }
    }
    // Two lines for requests nobody made.
    let mut forged = forged_line("/forged/3003?token=SECRETF");
    forged.push_str(&forged_line("/forged/3004"));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .and_then(|mut f| std::io::Write::write_all(&mut f, forged.as_bytes()))
        .unwrap();

    let seen = wait_for(Duration::from_secs(30), || {
        let m = agent.metrics();
        (disagreement(&m, "missing_from_log") >= 3.0
            && disagreement(&m, "not_seen_by_kernel") >= 2.0)
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "no disagreement counted:\n{}",
        agent.metrics()
    );
    // Later windows add nothing.
    std::thread::sleep(Duration::from_secs(3));
    let m = agent.metrics();
    assert_eq!(disagreement(&m, "missing_from_log"), 3.0, "{m}");
    assert_eq!(disagreement(&m, "not_seen_by_kernel"), 2.0, "{m}");
    assert_eq!(
        metric_total(&m, "api_observer_layer_log_lines_total"),
        11.0,
        "{m}"
    );
    assert_eq!(
        metric_total(&m, "api_observer_layer_log_lines_skipped_total"),
        0.0,
        "{m}"
    );

    let layers = agent_json(&agent, "/api/layers").unwrap();
    let text = layers.to_string();
    for secret in ["SECRET", "1001", "2002", "3003"] {
        assert!(!text.contains(secret), "{secret} kept: {text}");
    }
    let l = &layers["access_logs"][0];
    assert_eq!(l["lines_read"], 11, "{text}");
    assert_eq!(l["missing_from_log"], 3, "{text}");
    assert_eq!(l["not_seen_by_kernel"], 2, "{text}");
    let mut totals = std::collections::BTreeMap::<(String, u64), (u64, u64)>::new();
    for w in l["windows"].as_array().unwrap() {
        for r in w["rows"].as_array().unwrap() {
            let t = totals
                .entry((
                    r["route"].as_str().unwrap().to_string(),
                    r["status"].as_u64().unwrap(),
                ))
                .or_default();
            t.0 += r["kernel"].as_u64().unwrap();
            t.1 += r["log"].as_u64().unwrap();
        }
    }
    let totals: Vec<_> = totals
        .into_iter()
        .map(|((route, status), (k, l))| (route, status, k, l))
        .collect();
    assert_eq!(
        totals,
        [
            ("GET /".to_string(), 200, 2, 2),
            ("GET /forged/{id}".to_string(), 200, 0, 2),
            ("GET /nope".to_string(), 404, 3, 3),
            ("GET /unlogged/{id}".to_string(), 200, 3, 0),
            ("GET /users/{id}".to_string(), 200, 4, 4),
        ],
        "{text}"
    );
}
