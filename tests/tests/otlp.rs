//! OTLP export, end to end: the real agent sends its metrics and spans over OTLP/HTTP to a
//! real receiver (`tests/servers/otlp_receiver.py`, protobuf decoded by the published
//! `opentelemetry-proto` package) while curl drives the Python API server; and it keeps
//! capturing, exactly, when nothing listens at the endpoint.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use e2e::*;
use serde_json::{json, Value};

/// What the receiver imports (the second one fails with a protobuf too old for it).
const RECEIVER_MODULES: &[&str] = &[
    "google.protobuf.runtime_version",
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
];

/// The exact durations' bucket boundaries (the semantic conventions' advice).
const BUCKETS: [f64; 15] = [
    0.0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The OTLP/HTTP receiver, writing what it decoded into its directory.
struct Receiver {
    _proc: Proc,
    dir: PathBuf,
    port: u16,
}

impl Receiver {
    fn start() -> anyhow::Result<Self> {
        let dir = scratch_dir("otlp-receiver");
        let port = free_port();
        let proc = Proc::spawn(
            "otlp_receiver.py",
            Command::new("python3")
                .arg(workspace_root().join("tests/servers/otlp_receiver.py"))
                .arg("127.0.0.1")
                .arg(port.to_string())
                .arg(&dir),
        )?;
        wait_listening(format!("127.0.0.1:{port}").parse()?)?;
        Ok(Self {
            _proc: proc,
            dir,
            port,
        })
    }

    /// Every request decoded so far: `{"path": ..., "request": ...}`.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("received.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("the receiver writes JSON lines"))
            .collect()
    }

    /// Every body received, raw, and every decoded line.
    fn everything(&self) -> Vec<u8> {
        let mut all = std::fs::read(self.dir.join("raw.bin")).unwrap_or_default();
        all.extend(std::fs::read(self.dir.join("received.jsonl")).unwrap_or_default());
        all
    }
}

/// An OTLP attribute list as a map: strings stay strings, ints (int64 is a JSON string
/// in protobuf's JSON mapping) become numbers.
fn attributes(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|kv| {
            let v = &kv["value"];
            let value = if let Some(s) = v.get("stringValue") {
                s.clone()
            } else if let Some(i) = v.get("intValue") {
                json!(i
                    .as_str()
                    .and_then(|s| s.parse::<i64>().ok())
                    .expect("int64 as a string"))
            } else {
                v.clone()
            };
            (kv["key"].as_str().unwrap_or_default().to_string(), value)
        })
        .collect()
}

/// The data points of histogram `name` in the last metrics export that has it:
/// (attributes, point), plus that export's resource attributes.
type Point = (BTreeMap<String, Value>, Value);

fn last_histogram(requests: &[Value], name: &str) -> Option<(BTreeMap<String, Value>, Vec<Point>)> {
    requests
        .iter()
        .rev()
        .filter(|r| r["path"] == "/v1/metrics")
        .find_map(|r| {
            let rm = r["request"]["resourceMetrics"].as_array()?;
            for resource in rm {
                for scope in resource["scopeMetrics"].as_array()? {
                    for metric in scope["metrics"].as_array()? {
                        if metric["name"] == name {
                            assert_eq!(metric["unit"], "s", "{metric}");
                            assert_eq!(
                                metric["histogram"]["aggregationTemporality"],
                                "AGGREGATION_TEMPORALITY_CUMULATIVE"
                            );
                            let points = metric["histogram"]["dataPoints"]
                                .as_array()?
                                .iter()
                                .map(|p| (attributes(&p["attributes"]), p.clone()))
                                .collect();
                            return Some((attributes(&resource["resource"]["attributes"]), points));
                        }
                    }
                }
            }
            None
        })
}

fn count(point: &Value) -> u64 {
    point["count"]
        .as_str()
        .and_then(|c| c.parse().ok())
        .unwrap_or_default()
}

/// The points whose `server.port` is `port`, as (attributes, count), sorted.
fn counts_for_port(points: &[Point], port: u16) -> Vec<(BTreeMap<String, Value>, u64)> {
    let mut v: Vec<_> = points
        .iter()
        .filter(|(a, _)| a.get("server.port") == Some(&json!(port)))
        .map(|(a, p)| (a.clone(), count(p)))
        .collect();
    v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    v
}

/// Every span received: (resource attributes, span).
fn spans(requests: &[Value]) -> Vec<(BTreeMap<String, Value>, Value)> {
    let mut out = Vec::new();
    for r in requests.iter().filter(|r| r["path"] == "/v1/traces") {
        for resource in r["request"]["resourceSpans"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let res = attributes(&resource["resource"]["attributes"]);
            for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    out.push((res.clone(), span.clone()));
                }
            }
        }
    }
    out
}

/// The attributes of an exchange on `port`: a server's (with `route`) or a client's.
fn expected(route: Option<&str>, status: u16, port: u16) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::from([
        ("http.request.method".to_string(), json!("GET")),
        ("http.response.status_code".to_string(), json!(status)),
        ("server.address".to_string(), json!("127.0.0.1")),
        ("server.port".to_string(), json!(port)),
        ("url.scheme".to_string(), json!("http")),
        ("network.protocol.version".to_string(), json!("1.1")),
    ]);
    if let Some(route) = route {
        m.insert("http.route".to_string(), json!(route));
    }
    m
}

fn sorted(mut v: Vec<(BTreeMap<String, Value>, u64)>) -> Vec<(BTreeMap<String, Value>, u64)> {
    v.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    v
}

fn config_file(body: &str) -> PathBuf {
    let path = scratch_dir("otlp-config").join("observer.toml");
    std::fs::write(&path, body).unwrap();
    path
}

/// The value of one series in a `/metrics` text (0 when absent).
fn series(metrics: &str, name_and_labels: &str) -> f64 {
    metric_total(metrics, &format!("{name_and_labels} "))
}

/// The raw paths the traffic below uses: none may reach the receiver.
const RAW_PATHS: [&str; 4] = ["/items/42", "/items/7", "/items/34", "/status/503"];

/// curl one keep-alive connection through `/items/42`, `/items/7`, `/items/34` (404:
/// a deleted item), `/status/503` and `/hello`.
fn drive(port: u16) {
    let base = format!("http://127.0.0.1:{port}");
    let mut args = Vec::new();
    for p in RAW_PATHS.iter().chain(&["/hello"]) {
        args.extend(["-o".to_string(), "/dev/null".to_string()]);
        args.push(format!("{base}{p}"));
    }
    args.extend(["-w".to_string(), "%{http_code}\\n".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = curl(&args).unwrap();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["200", "200", "404", "503", "200"],
        "{out}"
    );
}

#[test]
fn metrics_and_spans_reach_a_real_otlp_receiver() {
    if !prerequisites() || !require_python_modules(RECEIVER_MODULES) {
        return;
    }
    let receiver = Receiver::start().unwrap();
    let config = config_file(&format!(
        "[otlp]\nendpoint = \"http://127.0.0.1:{}\"\nexport_interval_secs = 1\n\
         traces_sample_ratio = 1.0\nservice_name = \"e2e-observer\"\n",
        receiver.port
    ));
    let mut agent = Agent::start(&["--config", config.to_str().unwrap()]).unwrap();
    let port = free_port();
    let _server = python_api_server("127.0.0.1", port).unwrap();
    let started = SystemTime::now();
    drive(port);

    let server_expected = sorted(vec![
        (expected(Some("/items/{id}"), 200, port), 2),
        (expected(Some("/items/{id}"), 404, port), 1),
        (expected(Some("/status/{id}"), 503, port), 1),
        (expected(Some("/hello"), 200, port), 1),
    ]);
    let client_expected = sorted(vec![
        (expected(None, 200, port), 3),
        (expected(None, 404, port), 1),
        (expected(None, 503, port), 1),
    ]);
    // Cumulative histograms: the last export holds every request so far.
    let done = wait_for(Duration::from_secs(30), || {
        let r = receiver.requests();
        let server = last_histogram(&r, "http.server.request.duration")?;
        let client = last_histogram(&r, "http.client.request.duration")?;
        let total = |p: &[Point]| counts_for_port(p, port).iter().map(|c| c.1).sum::<u64>();
        let spans = spans(&r)
            .iter()
            .filter(|(_, s)| attributes(&s["attributes"]).get("server.port") == Some(&json!(port)))
            .count();
        (total(&server.1) >= 5 && total(&client.1) >= 5 && spans >= 10).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500));
    let requests = receiver.requests();
    assert!(
        done.is_some(),
        "the receiver never got the exchanges: {requests:#?}\n{}",
        agent.stderr()
    );

    // The raw paths (ids) never left the agent.
    let all = receiver.everything();
    for raw in RAW_PATHS {
        assert!(
            !all.windows(raw.len()).any(|w| w == raw.as_bytes()),
            "{raw} reached the receiver"
        );
    }
    let (resource, server_points) =
        last_histogram(&requests, "http.server.request.duration").unwrap();
    assert_eq!(counts_for_port(&server_points, port), server_expected);
    let (_, client_points) = last_histogram(&requests, "http.client.request.duration").unwrap();
    assert_eq!(counts_for_port(&client_points, port), client_expected);
    assert_eq!(resource["service.name"], "e2e-observer");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(resource["host.name"], host.trim());
    assert!(!resource.contains_key("k8s.node.name"), "{resource:?}");
    for (attrs, point) in server_points.iter().chain(&client_points) {
        if attrs.get("server.port") != Some(&json!(port)) {
            continue;
        }
        let bounds: Vec<f64> = point["explicitBounds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_f64().unwrap())
            .collect();
        assert_eq!(bounds, BUCKETS, "{point}");
        let buckets: Vec<u64> = point["bucketCounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().parse().unwrap())
            .collect();
        assert_eq!(buckets.len(), BUCKETS.len() + 1, "{point}");
        assert_eq!(buckets.iter().sum::<u64>(), count(point), "{point}");
        // Local requests: well under a second each.
        assert!(
            point["sum"].as_f64().unwrap() < count(point) as f64,
            "{point}"
        );
    }

    // One span per exchange (ratio 1), named and attributed by the conventions.
    let spans: Vec<(BTreeMap<String, Value>, Value)> = spans(&requests)
        .into_iter()
        .filter(|(_, s)| attributes(&s["attributes"]).get("server.port") == Some(&json!(port)))
        .collect();
    let from = started.duration_since(UNIX_EPOCH).unwrap().as_nanos() - 1_000_000_000;
    let to = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut seen = Vec::new();
    for (resource, s) in &spans {
        assert_eq!(resource["service.name"], "e2e-observer");
        let attrs = attributes(&s["attributes"]);
        let status = attrs["http.response.status_code"].as_u64().unwrap() as u16;
        let start: u128 = s["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u128 = s["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(from <= start && start <= end && end <= to, "{s}");
        assert_eq!(s["traceId"].as_str().map(str::len), Some(24), "{s}");
        let error = s["status"]["code"] == "STATUS_CODE_ERROR";
        let route = attrs.get("http.route").and_then(|r| r.as_str());
        match s["kind"].as_str().unwrap() {
            "SPAN_KIND_SERVER" => {
                assert_eq!(attrs, expected(route, status, port), "{s}");
                assert_eq!(s["name"], format!("GET {}", route.unwrap()));
                assert_eq!(error, status >= 500, "{s}");
            }
            "SPAN_KIND_CLIENT" => {
                assert_eq!(attrs, expected(None, status, port), "{s}");
                assert_eq!(s["name"], "GET");
                assert_eq!(error, status >= 400, "{s}");
            }
            other => panic!("span kind {other}: {s}"),
        }
        seen.push((
            s["kind"].as_str().unwrap().to_string(),
            s["name"].as_str().unwrap().to_string(),
            status,
        ));
    }
    seen.sort();
    let row = |k: &str, n: &str, st: u16| (k.to_string(), n.to_string(), st);
    assert_eq!(
        seen,
        [
            row("SPAN_KIND_CLIENT", "GET", 200),
            row("SPAN_KIND_CLIENT", "GET", 200),
            row("SPAN_KIND_CLIENT", "GET", 200),
            row("SPAN_KIND_CLIENT", "GET", 404),
            row("SPAN_KIND_CLIENT", "GET", 503),
            row("SPAN_KIND_SERVER", "GET /hello", 200),
            row("SPAN_KIND_SERVER", "GET /items/{id}", 200),
            row("SPAN_KIND_SERVER", "GET /items/{id}", 200),
            row("SPAN_KIND_SERVER", "GET /items/{id}", 404),
            row("SPAN_KIND_SERVER", "GET /status/{id}", 503),
        ]
    );

    let metrics = agent.metrics();
    for signal in ["metrics", "traces"] {
        let ok = format!("api_observer_otlp_exports_total{{result=\"ok\",signal=\"{signal}\"}}");
        let error =
            format!("api_observer_otlp_exports_total{{result=\"error\",signal=\"{signal}\"}}");
        assert!(series(&metrics, &ok) >= 1.0, "{metrics}");
        assert_eq!(series(&metrics, &error), 0.0, "{metrics}");
        let retries = format!("api_observer_otlp_retries_total{{signal=\"{signal}\"}}");
        assert_eq!(series(&metrics, &retries), 0.0, "{metrics}");
    }
    for reason in ["queue_full", "export_failed"] {
        let dropped = format!("api_observer_otlp_spans_dropped_total{{reason=\"{reason}\"}}");
        assert_eq!(series(&metrics, &dropped), 0.0, "{metrics}");
    }
    let status = agent.stop().unwrap();
    assert!(status.success(), "{status}\n{}", agent.stderr());
}

#[test]
fn an_unreachable_endpoint_is_retried_counted_and_never_blocks_capture() {
    if !prerequisites() {
        return;
    }
    let nobody = free_port();
    let config = config_file(&format!(
        "[otlp]\nendpoint = \"http://127.0.0.1:{nobody}\"\nexport_interval_secs = 1\n\
         traces_sample_ratio = 1.0\n[otlp.headers]\nx-api-key = \"e2e-SECRET-header-value\"\n"
    ));
    let mut agent = Agent::start(&["--config", config.to_str().unwrap()]).unwrap();
    let port = free_port();
    let _server = python_api_server("127.0.0.1", port).unwrap();
    drive(port);
    // A second round once exports have failed (and are being retried).
    let metrics_errors = "api_observer_otlp_exports_total{result=\"error\",signal=\"metrics\"}";
    wait_for(Duration::from_secs(20), || {
        (series(&agent.metrics(), metrics_errors) >= 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("no failed export counted: {}", agent.metrics()));
    drive(port);

    // Every exchange captured, exactly.
    let ex = agent.exchanges_for_port(port, 20);
    let mut got: Vec<_> = ex.iter().map(summary).collect();
    got.sort();
    let mut want = Vec::new();
    for role in ["client", "server"] {
        for _ in 0..2 {
            for (path, status) in [
                ("/hello", 200),
                ("/items/34", 404),
                ("/items/42", 200),
                ("/items/7", 200),
                ("/status/503", 503),
            ] {
                want.push((
                    role.to_string(),
                    "GET".to_string(),
                    path.to_string(),
                    status,
                ));
            }
        }
    }
    want.sort();
    assert_eq!(got, want);

    // Failures counted, each after its retries (4 attempts); spans given up counted.
    let metrics = wait_for(Duration::from_secs(20), || {
        let m = agent.metrics();
        let given_up = series(
            &m,
            "api_observer_otlp_spans_dropped_total{reason=\"export_failed\"}",
        );
        (given_up >= 20.0).then_some(m)
    })
    .unwrap_or_else(|| panic!("spans not given up: {}", agent.metrics()));
    for signal in ["metrics", "traces"] {
        let errors = series(
            &metrics,
            &format!("api_observer_otlp_exports_total{{result=\"error\",signal=\"{signal}\"}}"),
        );
        let ok = series(
            &metrics,
            &format!("api_observer_otlp_exports_total{{result=\"ok\",signal=\"{signal}\"}}"),
        );
        let retries = series(
            &metrics,
            &format!("api_observer_otlp_retries_total{{signal=\"{signal}\"}}"),
        );
        assert!(errors >= 1.0, "{signal}: {metrics}");
        assert_eq!(ok, 0.0, "{signal}: {metrics}");
        // Three retries per given-up export, and at most three of one still going.
        assert!(
            retries >= 3.0 * errors && retries <= 3.0 * errors + 3.0,
            "{signal}: {retries} retries for {errors} failed exports"
        );
    }
    assert_eq!(
        series(
            &metrics,
            "api_observer_otlp_spans_dropped_total{reason=\"queue_full\"}"
        ),
        0.0
    );
    assert_eq!(http_get(agent.addr, "/healthz").unwrap().0, 200);

    let stderr = agent.stderr();
    // One warning a minute at most, and never a header's value.
    assert_eq!(
        stderr.matches("otlp: export given up").count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("e2e-SECRET"), "{stderr}");
    // Stopping sends what is left, within its bound (5 s; not "abandoned") even with the
    // endpoint down; the harness allows the whole stop 10 s.
    let status = agent.stop().unwrap();
    let stderr = agent.stderr();
    assert!(status.success(), "{status}\n{stderr}");
    assert!(stderr.contains("otlp: stopped"), "{stderr}");
    assert!(!stderr.contains("e2e-SECRET"));
}
