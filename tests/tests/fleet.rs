//! One identity across a fleet: agents given the same `shared_secret_file` make the same
//! fingerprint for the same credential (within an epoch); an agent with another secret
//! makes another one. All agents trace the same host, so one request to one API server
//! is seen by every agent.

use std::{os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use e2e::*;
use serde_json::Value;

const TOKEN: &str = "fleet-e2e-bearer-7c41d9a2";
/// A route nobody else uses: the host may carry other tests' bearer traffic.
const ROUTE: &str = "/fleetcheck";

/// A secret file of `fill` bytes, mode 0600.
fn secret_file(dir: &Path, name: &str, fill: u8) -> String {
    let path = dir.join(name);
    std::fs::write(&path, [fill; 48]).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

fn config(dir: &Path, name: &str, secret: &str) -> String {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[identity]\nshared_secret_file = \"{secret}\"\nrotate_every_secs = 86400\n\
             [scoring]\ninterval_secs = 1\n"
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// The id of the (only) inbound bearer session that used [`ROUTE`], once the agent
/// shows it.
fn bearer_session(agent: &Agent) -> String {
    let found = wait_for(Duration::from_secs(15), || {
        let list = agent_json(agent, "/api/sessions?direction=inbound").ok()?;
        let ids: Vec<String> = list
            .as_array()?
            .iter()
            .filter_map(|s| s["id"].as_str())
            .filter(|id| id.starts_with("tok_"))
            .filter(|id| {
                agent_json(agent, &format!("/api/sessions/{id}"))
                    .is_ok_and(|d| d["routes"].to_string().contains(ROUTE))
            })
            .map(str::to_string)
            .collect();
        match ids.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        }
    });
    found.unwrap_or_else(|| {
        panic!(
            "no single bearer session on {ROUTE}; sessions: {}\nstderr:\n{}",
            agent_json(agent, "/api/sessions").unwrap_or_default(),
            agent.stderr()
        )
    })
}

#[test]
fn agents_sharing_a_secret_make_the_same_fingerprint() {
    if !prerequisites() {
        return;
    }
    let dir = scratch_dir("fleet");
    let shared = secret_file(&dir, "fleet.secret", 0x5a);
    let other = secret_file(&dir, "other.secret", 0xa5);
    let a = Agent::start(&["--config", &config(&dir, "a.toml", &shared)]).unwrap();
    let b = Agent::start(&["--config", &config(&dir, "b.toml", &shared)]).unwrap();
    let c = Agent::start(&["--config", &config(&dir, "c.toml", &other)]).unwrap();

    let port = free_port();
    let _server = python_api_server("127.0.0.1", port).unwrap();
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        &format!("Authorization: Bearer {TOKEN}"),
        &format!("http://127.0.0.1:{port}{ROUTE}"),
    ])
    .unwrap();

    let (fa, fb, fc) = (bearer_session(&a), bearer_session(&b), bearer_session(&c));
    assert_eq!(
        fa, fb,
        "the same secret, the same fingerprint on both agents"
    );
    assert_ne!(fa, fc, "another secret, another fingerprint");

    for agent in [&a, &b, &c] {
        let report: Value = agent_json(agent, "/privacy").unwrap();
        let rotation = &report["rotation"];
        assert_eq!(rotation["mode"], "fleet", "{report}");
        let epoch = rotation["epoch"].as_u64().expect("an epoch");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            epoch == now / 86_400 || epoch + 1 == now / 86_400,
            "{report}"
        );
        assert_eq!(rotation["key_generation"].as_u64(), Some(epoch));
        let text = report.to_string();
        assert!(!text.contains(TOKEN), "{text}");
    }
    // The secret never appears in the logs.
    for agent in [&a, &b, &c] {
        let log = agent.stderr();
        assert!(!log.contains("ZZZZZZZZ") && !log.contains(TOKEN), "{log}");
    }
}

#[test]
fn a_readable_secret_file_stops_the_agent_with_its_path() {
    if !prerequisites() {
        return;
    }
    let dir = scratch_dir("fleet-bad");
    let secret = secret_file(&dir, "open.secret", 0x11);
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = match Agent::start(&["--config", &config(&dir, "bad.toml", &secret)]) {
        Ok(_) => panic!("the agent started with a world-readable secret"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&secret), "{err}");
    assert!(err.contains("0644"), "{err}");
}
