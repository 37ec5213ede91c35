//! The control socket end to end: a token given on stdin is frozen over the Unix socket,
//! its next use is unhealthy, and the freeze outlives a restart of the agent with the same
//! state directory. The TCP port does not serve the credential endpoints.

use std::{
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use e2e::*;
use serde_json::Value;

const TOKEN: &str = "control-e2e-token-7f3a";

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("observer.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{}\"\ncontrol_socket = \"{}\"\n[scoring]\ninterval_secs = 1\n",
            dir.join("state").display(),
            dir.join("run/control.sock").display()
        ),
    )
    .unwrap();
    path
}

/// `observer <args> --credential - --socket <sock>` with `input` on stdin.
fn cli_with_stdin(args: &[&str], socket: &Path, input: &str) -> (bool, String, String) {
    let mut child = Command::new(agent_bin())
        .args(args)
        .args(["--credential", "-", "--socket"])
        .arg(socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn token_session(agent: &Agent, requests: u64, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(Duration::from_secs(15), || {
        let list = agent_json(agent, "/api/sessions?direction=inbound").ok()?;
        list.as_array()?
            .iter()
            .find(|s| s["kind"] == "bearer" && s["requests"] == requests && pred(s))
            .cloned()
    })
    .unwrap_or_else(|| {
        panic!(
            "no bearer session with {requests} requests; sessions: {}",
            agent_json(agent, "/api/sessions").unwrap_or_default()
        )
    })
}

fn get(port: u16, n: usize) {
    let auth = format!("Authorization: Bearer {TOKEN}");
    let url = format!("http://127.0.0.1:{port}/hello");
    let mut args = vec!["-H", auth.as_str()];
    for _ in 0..n {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    curl(&args).unwrap();
}

#[test]
fn freeze_by_credential_over_the_socket_survives_restart() {
    if !prerequisites() {
        return;
    }
    let dir = scratch_dir("control");
    let cfg = config(&dir);
    let socket = dir.join("run/control.sock");
    let port = free_port();
    let _server = python_api_server("127.0.0.1", port).unwrap();

    let mut agent = Agent::start(&["--config", cfg.to_str().unwrap()]).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // The TCP port does not take credentials.
    for path in ["/api/lookup", "/api/freeze"] {
        let (code, _) = http_request(agent.addr, "POST", path).unwrap();
        assert_eq!(code, 404, "{path} must not be served on TCP");
    }

    get(port, 2);
    let s = token_session(&agent, 2, |s| s["state"] == "healthy");
    let id = s["id"].as_str().unwrap().to_string();

    // Lookup by the raw token finds the session.
    let (ok, out, err) = cli_with_stdin(&["lookup", "--json"], &socket, &format!("{TOKEN}\n"));
    assert!(ok, "{err}");
    assert!(out.contains(&id), "{out}");
    assert!(!out.contains(TOKEN), "{out}");
    // An empty credential is refused.
    let (ok, _, err) = cli_with_stdin(&["lookup"], &socket, "\n");
    assert!(!ok && err.contains("credential"), "{err}");

    let (ok, out, err) = cli_with_stdin(&["freeze"], &socket, &format!("Bearer {TOKEN}\n"));
    assert!(ok, "{err}");
    assert!(!out.contains(TOKEN), "{out}");
    get(port, 1);
    let s = token_session(&agent, 3, |s| s["state"] == "unhealthy");
    assert!(
        s["reasons"].to_string().contains("frozen_credential"),
        "{s}"
    );
    let frozen = agent_json(&agent, "/api/frozen").unwrap();
    let frz = frozen[0]["id"].as_str().unwrap().to_string();
    assert!(frz.starts_with("frz_"), "{frozen}");
    assert_eq!(frozen[0]["fingerprint"], id.as_str(), "{frozen}");

    // Restart with the same state directory: the socket file was removed at exit.
    agent.stop().unwrap();
    assert!(!socket.exists());
    let state = std::fs::read_to_string(dir.join("state/frozen.json")).unwrap();
    assert!(!state.contains(TOKEN) && !state.contains(&id), "{state}");
    let agent = Agent::start(&["--config", cfg.to_str().unwrap()]).unwrap();
    let frozen = agent_json(&agent, "/api/frozen").unwrap();
    assert_eq!(frozen[0]["id"], frz.as_str(), "{frozen}");
    get(port, 1);
    let s = token_session(&agent, 1, |s| s["state"] == "unhealthy");
    assert!(
        s["reasons"].to_string().contains("frozen_credential"),
        "{s}"
    );
    let frozen = agent_json(&agent, "/api/frozen").unwrap();
    assert_eq!(frozen[0]["fingerprint"], s["id"], "{frozen}");
    assert!(!agent.stderr().contains(TOKEN));
}
