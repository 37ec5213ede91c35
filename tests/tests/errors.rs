//! Bad starts end with a clear message and a failure exit, never a hang or a panic:
//! a busy port, a bad config file, missing privileges.

use std::{net::TcpListener, process::Command, time::Duration};

use e2e::*;

/// Run the agent with `args`; it must exit non-zero within 20 s. Returns stderr.
fn failing_start(cmd: &mut Command) -> String {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(Duration::from_secs(20), || child.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the agent did not exit");
    };
    let mut stderr = String::new();
    use std::io::Read as _;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "exit {status}; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn busy_port_is_a_clear_error() {
    if !prerequisites() {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = failing_start(Command::new(agent_bin()).args(["--listen", &addr]));
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(err.contains("already in use"), "{err}");
}

#[test]
fn bad_config_names_the_key() {
    if !prerequisites() {
        return;
    }
    let dir = scratch_dir("badconfig");
    let file = dir.join("observer.toml");
    std::fs::write(&file, "[scoring]\nweights = { multi_netwrk = 5 }\n").unwrap();
    let err = failing_start(Command::new(agent_bin()).arg("--config").arg(&file));
    assert!(err.contains("multi_netwrk"), "{err}");
    std::fs::write(&file, "[capture]\ncapture_bytes = 0\n").unwrap();
    let err = failing_start(Command::new(agent_bin()).arg("--config").arg(&file));
    assert!(err.contains("capture.capture_bytes"), "{err}");
    let err =
        failing_start(Command::new(agent_bin()).args(["--config", "/nonexistent/observer.toml"]));
    assert!(
        err.contains("cannot read config file /nonexistent/observer.toml"),
        "{err}"
    );
}

#[test]
fn missing_privileges_are_a_clear_error() {
    if !prerequisites() {
        return;
    }
    // The same binary as an unprivileged user with no capabilities.
    let port = free_port().to_string();
    let err = failing_start(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ])
            .arg(agent_bin())
            .args(["--listen", &format!("127.0.0.1:{port}")]),
    );
    assert!(
        err.contains("missing privileges"),
        "the error should say what is missing: {err}"
    );
}
