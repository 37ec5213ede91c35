//! Consumption against access tiers, end to end: API keys placed in tiers by prefix, a
//! consumer over its tier flagged, the top consumers exported, the CLI column.

use std::{process::Command, time::Duration};

use e2e::*;
use serde_json::Value;

const CONFIG: &str = r#"
[scoring]
interval_secs = 1
[tiers]
default = "free"
api_key_prefixes = [{ prefix = "pk_pro_", tier = "pro" }]
[tiers.levels.free]
rate_per_sec = 2.0
requests_per_day = 1000
[tiers.levels.pro]
rate_per_sec = 100.0
"#;

fn inbound_api_keys(agent: &Agent) -> Vec<Value> {
    agent_json(agent, "/api/sessions?direction=inbound&kind=api_key")
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn consumers_are_shown_against_their_tier() {
    if !prerequisites() {
        return;
    }
    let dir = scratch_dir("tiers");
    let config = dir.join("observer.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let agent = Agent::start(&["--config", config.to_str().unwrap()]).unwrap();
    let port = free_port();
    let _server = python_api_server("127.0.0.1", port).unwrap();
    let url = format!("http://127.0.0.1:{port}/items?page=1");
    // A free-tier key at well over 2 requests/s; a pro key well under its 100/s.
    let mut args: Vec<String> = vec!["-H".into(), "X-API-Key: sk_live_free_canary_771".into()];
    for _ in 0..60 {
        args.extend(["-o".into(), "/dev/null".into(), url.clone()]);
    }
    curl(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let mut args: Vec<String> = vec!["-H".into(), "X-API-Key: pk_pro_canary_338".into()];
    for _ in 0..10 {
        args.extend(["-o".into(), "/dev/null".into(), url.clone()]);
    }
    curl(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();

    let sessions = wait_for(Duration::from_secs(15), || {
        let v = inbound_api_keys(&agent);
        let over = v.iter().any(|s| {
            s["consumption"]["tier"] == "free" && s["reasons"].to_string().contains("over_tier")
        });
        (over && v.len() == 2).then_some(v)
    })
    .unwrap_or_else(|| panic!("no over-tier session: {:#?}", inbound_api_keys(&agent)));
    let free = sessions
        .iter()
        .find(|s| s["consumption"]["tier"] == "free")
        .unwrap();
    assert_eq!(free["requests"], 60, "{free:#}");
    assert_eq!(free["consumption"]["over"], true, "{free:#}");
    assert_eq!(free["consumption"]["requests_today"], 60, "{free:#}");
    assert_eq!(free["consumption"]["requests_per_day"], 1000, "{free:#}");
    assert!(
        free["consumption"]["rate_ratio"].as_f64().unwrap() > 1.0,
        "{free:#}"
    );
    assert_eq!(free["state"], "suspicious", "{free:#}");
    let pro = sessions
        .iter()
        .find(|s| s["consumption"]["tier"] == "pro")
        .unwrap();
    assert_eq!(pro["requests"], 10, "{pro:#}");
    assert_eq!(pro["consumption"]["over"], false, "{pro:#}");
    assert_eq!(pro["state"], "healthy", "{pro:#}");

    // The top consumers as a bounded series; the CLI's TIER column.
    let metrics = agent.metrics();
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("api_observer_session_tier_usage_ratio{"))
        .collect();
    assert!(
        series
            .iter()
            .any(|l| l.contains(free["id"].as_str().unwrap()) && l.contains("tier=\"free\"")),
        "{metrics}"
    );
    let out = Command::new(agent_bin())
        .arg("sessions")
        .arg("--socket")
        .arg(&agent.socket)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(free["id"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains(" free ") && row.contains("%!"), "{row}");

    // Only the tier's name is kept, never the key.
    for text in [metrics, table.to_string(), sessions_text(&agent)] {
        assert!(!text.contains("canary"), "{text}");
    }
}

fn sessions_text(agent: &Agent) -> String {
    agent_request(agent, "GET", "/api/sessions")
        .map(|(_, b)| b)
        .unwrap_or_default()
}
