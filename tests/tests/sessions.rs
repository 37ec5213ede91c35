//! Sessions end to end: clients in their own network namespaces (so they really come from
//! distinct addresses) play scenarios against a real server while the agent runs; the
//! tests assert states and reason codes from the JSON API, the alert stream, the CLI and
//! `/metrics`.

use std::{process::Command, time::Duration};

use e2e::*;
use serde_json::Value;

/// Test settings: score every second; a lower enumeration threshold so the test stays
/// short. Everything else is the default (plaintext credentials from the namespaces'
/// private addresses are findings, not signals).
const CONFIG: &str = r#"
[output]
alerts_jsonl = "ALERTS"
[scoring]
interval_secs = 1
enumeration_min_ids = 40
"#;

struct World {
    agent: Agent,
    _server: Proc,
    port: u16,
    ns: Vec<Netns>,
    alerts: std::path::PathBuf,
}

impl World {
    fn new(namespaces: u8) -> Self {
        let dir = scratch_dir("sessions");
        let alerts = dir.join("alerts.jsonl");
        let config = dir.join("observer.toml");
        std::fs::write(&config, CONFIG.replace("ALERTS", alerts.to_str().unwrap())).unwrap();
        let agent = Agent::start(&["--config", config.to_str().unwrap()]).unwrap();
        let port = free_port();
        let server = python_api_server("0.0.0.0", port).unwrap();
        let ns = (1..=namespaces)
            .map(|i| Netns::create(i).unwrap())
            .collect();
        Self {
            agent,
            _server: server,
            port,
            ns,
            alerts,
        }
    }

    fn url(&self, ns: usize, path: &str) -> String {
        format!("http://{}:{}{}", self.ns[ns].host_ip, self.port, path)
    }

    /// One curl (one keep-alive connection) from namespace `ns` with these paths.
    fn get(&self, ns: usize, headers: &[&str], paths: &[&str]) {
        let mut args: Vec<String> = Vec::new();
        for h in headers {
            args.push("-H".into());
            args.push(h.to_string());
        }
        for p in paths {
            args.push("-o".into());
            args.push("/dev/null".into());
            args.push(self.url(ns, p));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ns[ns].curl(&args).unwrap();
    }

    /// The inbound session of `kind` with exactly `requests` requests, once scored.
    fn session(&self, kind: &str, requests: u64, scored: impl Fn(&Value) -> bool) -> Value {
        let found = wait_for(Duration::from_secs(15), || {
            let list = agent_json(&self.agent, "/api/sessions?direction=inbound").ok()?;
            let s = list
                .as_array()?
                .iter()
                .find(|s| s["kind"] == kind && s["requests"] == requests)?
                .clone();
            scored(&s).then_some(s)
        });
        found.unwrap_or_else(|| {
            panic!(
                "no scored {kind} session with {requests} requests; sessions: {}",
                agent_json(&self.agent, "/api/sessions").unwrap_or_default()
            )
        })
    }

    fn detail(&self, id: &str) -> Value {
        agent_json(&self.agent, &format!("/api/sessions/{id}")).unwrap()
    }

    fn alerts(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.alerts)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn reasons(s: &Value) -> Vec<String> {
    s["reasons"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn has_reason(code: &'static str) -> impl Fn(&Value) -> bool {
    move |s| reasons(s).iter().any(|r| r == code)
}

fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn healthy_client_stays_healthy() {
    if !prerequisites() {
        return;
    }
    let w = World::new(1);
    let paths: Vec<String> = (0..20)
        .map(|i| match i % 4 {
            0 => "/hello".to_string(),
            1 => format!("/items/{}", i % 5),
            2 => "/chunked".to_string(),
            _ => "/status/204".to_string(),
        })
        .collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    w.get(
        0,
        &[
            "Authorization: Bearer healthy-opaque-token-0001",
            "User-Agent: curl/8.1.2",
        ],
        &paths,
    );
    // Two scoring passes later it is still healthy.
    let s = w.session("bearer", 20, |_| true);
    std::thread::sleep(Duration::from_secs(3));
    let d = w.detail(s["id"].as_str().unwrap());
    assert_eq!(d["state"], "healthy", "{d:#}");
    assert_eq!(d["score"], 100, "{d:#}");
    assert!(reasons(&d).is_empty(), "{d:#}");
    // The client network is truncated to /24; the user agent reduced to family/major.
    assert_eq!(d["networks"][0]["value"], "10.200.1.0/24", "{d:#}");
    assert_eq!(d["agents"][0]["value"], "curl/8", "{d:#}");
    assert!(!d.to_string().contains("healthy-opaque-token"));
    assert!(
        !d.to_string().contains("10.200.1.2"),
        "full client address kept: {d:#}"
    );
}

#[test]
fn one_token_from_three_networks_at_once() {
    if !prerequisites() {
        return;
    }
    let w = World::new(3);
    std::thread::scope(|scope| {
        for ns in 0..3 {
            let w = &w;
            scope.spawn(move || {
                w.get(
                    ns,
                    &["Authorization: Bearer shared-opaque-token-0002"],
                    &["/hello"; 5],
                );
            });
        }
    });
    let s = w.session("bearer", 15, has_reason("multi_network"));
    assert_ne!(s["state"], "healthy", "{s:#}");
    let d = w.detail(s["id"].as_str().unwrap());
    let mut nets: Vec<&str> = d["networks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["value"].as_str())
        .collect();
    nets.sort();
    assert_eq!(nets, ["10.200.1.0/24", "10.200.2.0/24", "10.200.3.0/24"]);
    let metrics = w.agent.metrics();
    assert!(
        metric(
            &metrics,
            "api_observer_session_signals_total{signal=\"multi_network\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

#[test]
fn credential_stuffing_burst_of_401s() {
    if !prerequisites() {
        return;
    }
    let w = World::new(1);
    // One account tried with twelve passwords: Basic auth keeps only the user part, so
    // they are one session, and every attempt fails.
    for i in 0..12 {
        let header = format!(
            "Authorization: Basic {}",
            base64(format!("alice:guess-{i}").as_bytes())
        );
        w.get(0, &[&header], &["/status/401"]);
    }
    let s = w.session("basic", 12, has_reason("auth_failures"));
    assert_ne!(s["state"], "healthy", "{s:#}");
    assert!(!w
        .detail(s["id"].as_str().unwrap())
        .to_string()
        .contains("guess-"));
}

#[test]
fn enumeration_of_item_ids() {
    if !prerequisites() {
        return;
    }
    let w = World::new(1);
    let paths: Vec<String> = (1..=60).map(|i| format!("/items/{}", 1000 + i)).collect();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    w.get(0, &["Authorization: Bearer enumerating-token-0003"], &paths);
    let s = w.session("bearer", 60, has_reason("enumeration"));
    assert_ne!(s["state"], "healthy", "{s:#}");
    let d = w.detail(s["id"].as_str().unwrap());
    assert!(
        d["routes"].to_string().contains("/items/{id}"),
        "route template: {d:#}"
    );
}

#[test]
fn expired_jwt_accepted_by_the_server() {
    if !prerequisites() {
        return;
    }
    let w = World::new(1);
    let out = Command::new("python3")
        .args([
            "-c",
            "import base64,json,time\n\
             b=lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b'=').decode()\n\
             print(b({'alg':'HS256','typ':'JWT'})+'.'+b({'sub':'user-42','exp':int(time.time())-3600,'iss':'e2e'})+'.c2lnbmF0dXJl')",
        ])
        .output()
        .unwrap();
    let jwt = String::from_utf8(out.stdout).unwrap().trim().to_string();
    w.get(
        0,
        &[&format!("Authorization: Bearer {jwt}")],
        &["/hello", "/hello", "/hello"],
    );
    let s = w.session("bearer", 3, has_reason("expired_jwt_accepted"));
    assert_ne!(s["state"], "healthy", "{s:#}");
    let d = w.detail(s["id"].as_str().unwrap());
    assert_eq!(d["jwt"]["alg"], "HS256", "{d:#}");
    let text = d.to_string();
    assert!(!text.contains(&jwt) && !text.contains("user-42"), "{d:#}");
}

#[test]
fn frozen_token_is_unhealthy_on_its_next_use() {
    if !prerequisites() {
        return;
    }
    let w = World::new(1);
    let auth = "Authorization: Bearer frozen-opaque-token-0004";
    w.get(0, &[auth], &["/hello", "/hello", "/hello"]);
    let s = w.session("bearer", 3, |s| s["state"] == "healthy");
    let id = s["id"].as_str().unwrap().to_string();
    let (code, body) = agent_request(&w.agent, "PUT", &format!("/api/frozen/{id}")).unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, _) = agent_request(&w.agent, "PUT", "/api/frozen/not-a-fingerprint").unwrap();
    assert_eq!(code, 400);
    w.get(0, &[auth], &["/hello"]);
    let s = w.session("bearer", 4, has_reason("frozen_credential"));
    assert_eq!(s["state"], "unhealthy", "{s:#}");
    assert_eq!(s["score"], 0, "{s:#}");

    // The alert stream saw the change, /metrics counts it, the CLI shows it.
    let alerts = wait_for(Duration::from_secs(5), || {
        let a: Vec<Value> = w
            .alerts()
            .into_iter()
            .filter(|a| a["session_id"] == id.as_str() && a["to"] == "unhealthy")
            .collect();
        (!a.is_empty()).then_some(a)
    })
    .expect("an alert for the frozen session");
    assert!(reasons(&alerts[0]).contains(&"frozen_credential".to_string()));
    let metrics = w.agent.metrics();
    assert!(
        metric(
            &metrics,
            "api_observer_session_signals_total{signal=\"frozen_credential\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &metrics,
            "api_observer_sessions{direction=\"inbound\",state=\"unhealthy\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "api_observer_session_health_score{{session=\"{id}\"}} 0"
    )));
    let cli = Command::new(agent_bin())
        .arg("sessions")
        .arg("--socket")
        .arg(&w.agent.socket)
        .args(["--state", "unhealthy"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.contains("unhealthy (frozen)") && row.contains("frozen_credential"),
        "{row}"
    );
    assert!(!table.contains("frozen-opaque-token"));
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
