//! Privacy, proven end to end: real traffic through the agent carries planted secrets;
//! afterwards every output the agent produced is scanned and must contain none of them.

use std::{process::Command, time::Duration};

use e2e::*;
use serde_json::Value;

const CONFIG: &str = r#"
[output]
alerts_jsonl = "ALERTS"
[scoring]
interval_secs = 1
[privacy]
ignore_routes = ["/items/"]
"#;

#[test]
fn planted_secrets_never_leave_the_agent() {
    if !prerequisites() {
        return;
    }
    let dir = scratch_dir("canary");
    let alerts = dir.join("alerts.jsonl");
    let config = dir.join("observer.toml");
    std::fs::write(&config, CONFIG.replace("ALERTS", alerts.to_str().unwrap())).unwrap();
    let agent =
        Agent::start(&["--config", config.to_str().unwrap(), "--log-level", "debug"]).unwrap();
    let port = free_port();
    let _server = python_api_server("0.0.0.0", port).unwrap();
    let ns = Netns::create(9).unwrap();

    let out = Command::new("python3")
        .args([
            "-c",
            "import base64,json,time\n\
             b=lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b'=').decode()\n\
             print(b({'alg':'HS256','typ':'JWT'})+'.'+b({'sub':'canary-sub-7731','jti':'canary-jti-2290','exp':int(time.time())+3600})+'.Y2FuYXJ5LXNpZw')",
        ])
        .output()
        .unwrap();
    let jwt = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let secrets = [
        jwt.clone(),
        "canary-sub-7731".to_string(),
        "canary-jti-2290".to_string(),
        "canary-apikey-5512".to_string(),
        "canary-cookie-9034".to_string(),
        "canary-query-4471".to_string(),
        "canary-body-6620".to_string(),
        "canary-basic-pass".to_string(),
        ns.ns_ip.clone(), // the full client address: truncation is on by default
    ];
    let base = format!("http://{}:{port}", ns.host_ip);
    for _ in 0..3 {
        ns.curl(&[
            "-o",
            "/dev/null",
            "-H",
            &format!("Authorization: Bearer {jwt}"),
            &format!("{base}/hello"),
            "--next",
            "-o",
            "/dev/null",
            "-H",
            "X-API-Key: canary-apikey-5512",
            "-H",
            "Cookie: theme=dark; session=canary-cookie-9034",
            &format!("{base}/hello"),
            "--next",
            "-o",
            "/dev/null",
            &format!("{base}/hello?access_token=canary-query-4471&page=2"),
            "--next",
            "-o",
            "/dev/null",
            "-u",
            "canary-user:canary-basic-pass",
            "--data-binary",
            "secret=canary-body-6620",
            &format!("{base}/upload"),
            "--next",
            "-o",
            "/dev/null",
            "-H",
            "X-API-Key: canary-apikey-5512",
            &format!("{base}/items/77"),
        ])
        .unwrap();
    }

    // Wait until the traffic is in: sessions of every kind, scored, and the credential in
    // the query string reported (a finding: the client network is a trusted one).
    let sessions = wait_for(Duration::from_secs(15), || {
        let list = agent_json(&agent, "/api/sessions?direction=inbound").ok()?;
        let list = list.as_array()?.clone();
        let kinds: Vec<&str> = list.iter().filter_map(|s| s["kind"].as_str()).collect();
        let ready = ["bearer", "api_key", "basic"]
            .iter()
            .all(|k| kinds.contains(k))
            && agent_json(&agent, "/api/findings")
                .is_ok_and(|f| f.to_string().contains("credential_in_query"));
        ready.then_some(list)
    })
    .unwrap_or_else(|| {
        panic!(
            "sessions not ready: {}",
            agent_json(&agent, "/api/sessions").unwrap_or_default()
        )
    });

    // Collect every output: each JSON API endpoint, /metrics, /privacy, health, and
    // every file the agent wrote (its stdout, its debug-level stderr, the exchange and
    // alert streams).
    let mut outputs: Vec<(String, String)> = Vec::new();
    for path in [
        "/api/sessions",
        "/api/sessions?direction=outbound",
        "/api/frozen",
        "/api/findings",
        "/privacy",
        "/healthz",
        "/metrics",
    ] {
        let (_, body) = if path.starts_with("/healthz") || path.starts_with("/metrics") {
            http_get(agent.addr, path).unwrap()
        } else {
            agent_request(&agent, "GET", path).unwrap()
        };
        outputs.push((path.to_string(), body));
    }
    for s in &sessions {
        let id = s["id"].as_str().unwrap();
        let (code, body) = agent_request(
            &agent,
            "GET",
            &format!("/api/sessions/{}", encode_segment(id)),
        )
        .unwrap();
        assert_eq!(code, 200);
        outputs.push((format!("/api/sessions/{id}"), body));
    }
    let (code, body) = agent_request(&agent, "POST", "/api/purge").unwrap();
    assert_eq!(code, 200, "{body}");
    outputs.push(("/api/purge".into(), body));
    let mut agent = agent;
    agent.stop().unwrap();
    for entry in std::fs::read_dir(&agent.dir).unwrap().flatten() {
        let text = String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()).into_owned();
        outputs.push((entry.path().display().to_string(), text));
    }
    outputs.push(("alerts".into(), std::fs::read_to_string(&alerts).unwrap()));

    for (name, text) in &outputs {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{name} contains planted secret {secret:?}"
            );
        }
    }

    // Not vacuous: the outputs do describe this traffic.
    let stream = outputs
        .iter()
        .find(|(n, _)| n.ends_with("exchanges.jsonl"))
        .unwrap();
    assert!(
        stream.1.contains("/upload") && stream.1.contains("access_token"),
        "{}",
        stream.1
    );
    assert!(
        stream.1.contains("10.200.9.0/24"),
        "client shown as its network: {}",
        stream.1
    );
    let stderr = outputs.iter().find(|(n, _)| n.ends_with("stderr")).unwrap();
    assert!(stderr.1.contains("DEBUG"), "debug logging was on");
    // The off switch: /items/ was never observed.
    assert!(!stream.1.contains("/items/"), "{}", stream.1);
    let privacy: Value =
        serde_json::from_str(&outputs.iter().find(|(n, _)| n == "/privacy").unwrap().1).unwrap();
    assert!(
        privacy["counts"]["sessions"].as_u64().unwrap() >= 4,
        "{privacy:#}"
    );
    let purge: Value =
        serde_json::from_str(&outputs.iter().find(|(n, _)| n == "/api/purge").unwrap().1).unwrap();
    assert!(purge["purged"].as_u64().unwrap() >= 3, "{purge}");
}

#[test]
fn privacy_report_states_what_is_kept() {
    if !prerequisites() {
        return;
    }
    let agent = Agent::start(&[]).unwrap();
    let report = agent_json(&agent, "/privacy").unwrap();
    assert_eq!(report["client_address"]["mode"], "truncate", "{report:#}");
    assert_eq!(report["client_address"]["ipv4_prefix"], 24);
    assert_eq!(report["retention"]["idle_ttl_secs"], 1800);
    assert!(
        report["rotation"]["every_secs"].as_u64().is_some(),
        "{report:#}"
    );
    assert!(
        report["never_collected"].to_string().contains("bodies"),
        "{report:#}"
    );
    assert!(report["capture"]["header_allowlist"]
        .to_string()
        .contains("authorization"));
    let cli = Command::new(agent_bin())
        .arg("privacy")
        .arg("--socket")
        .arg(&agent.socket)
        .output()
        .unwrap();
    assert!(cli.status.success());
    let printed: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(printed["client_address"], report["client_address"]);
}
