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
    std::fs::write(
        &file,
        "[scoring]\ntrusted_networks = [\"10.0.0.0/8\", \"office-lan\"]\n",
    )
    .unwrap();
    let err = failing_start(Command::new(agent_bin()).arg("--config").arg(&file));
    assert!(
        err.contains("scoring.trusted_networks") && err.contains("office-lan"),
        "{err}"
    );
    std::fs::write(
        &file,
        "[tiers]\ndefault = \"gold\"\n[tiers.levels.free]\nrate_per_sec = 1.0\n",
    )
    .unwrap();
    let err = failing_start(Command::new(agent_bin()).arg("--config").arg(&file));
    assert!(
        err.contains("tiers.default") && err.contains("gold"),
        "{err}"
    );
    // Metric naming options: an unknown value or an unknown key is refused, named.
    std::fs::write(&file, "[metrics]\nnaming = \"semconv\"\n").unwrap();
    let err = failing_start(Command::new(agent_bin()).arg("--config").arg(&file));
    assert!(
        err.contains("metrics.naming") && err.contains("semconv"),
        "{err}"
    );
    std::fs::write(&file, "[metrics]\nname_style = \"otel\"\n").unwrap();
    let err = failing_start(Command::new(agent_bin()).arg("--config").arg(&file));
    assert!(err.contains("name_style"), "{err}");
    std::fs::write(&file, "[metrics]\nroutes = [\"/users/{id\"]\n").unwrap();
    let err = failing_start(Command::new(agent_bin()).arg("--config").arg(&file));
    assert!(
        err.contains("metrics.routes") && err.contains("/users/{id"),
        "{err}"
    );
    std::fs::write(&file, "[tiers.levels.free]\nrate_per_sec = -3.0\n").unwrap();
    let err = failing_start(Command::new(agent_bin()).arg("--config").arg(&file));
    assert!(err.contains("tiers.levels.free.rate_per_sec"), "{err}");
    let err =
        failing_start(Command::new(agent_bin()).args(["--config", "/nonexistent/observer.toml"]));
    assert!(
        err.contains("cannot read config file /nonexistent/observer.toml"),
        "{err}"
    );
}

/// Whether tracefs should be mounted in the private mount namespace a test runs in.
#[derive(Clone, Copy)]
enum Tracefs {
    Mounted,
    Unmounted,
}

/// `sh -c` text that, in a fresh private mount namespace (`unshare --mount`), puts tracefs
/// in the wanted state whatever the host's state, then execs the rest of the arguments.
/// The host's mounts are never touched.
fn in_mount_namespace(tracefs: Tracefs) -> Command {
    let setup = match tracefs {
        Tracefs::Unmounted => {
            "umount -l /sys/kernel/tracing 2>/dev/null; \
             umount -l /sys/kernel/debug/tracing 2>/dev/null; \
             umount -l /sys/kernel/debug 2>/dev/null; \
             test ! -d /sys/kernel/tracing/events || { echo 'tracefs still mounted' >&2; exit 97; }"
        }
        Tracefs::Mounted => {
            "test -d /sys/kernel/tracing/events || mount -t tracefs nodev /sys/kernel/tracing; \
             test -d /sys/kernel/tracing/events || { echo 'tracefs not mounted' >&2; exit 97; }"
        }
    };
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!("{setup}\nexec \"$@\""))
        .arg("sh");
    cmd
}

/// The agent as an unprivileged user with no capabilities, with tracefs in `state`.
fn unprivileged_start_error(state: Tracefs) -> String {
    let port = free_port().to_string();
    failing_start(
        in_mount_namespace(state)
            .args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ])
            .arg(agent_bin())
            .args(["--listen", &format!("127.0.0.1:{port}")]),
    )
}

#[test]
fn missing_privileges_are_a_clear_error_with_tracefs_mounted() {
    if !prerequisites() || !require_tools(&["unshare", "setpriv"]) {
        return;
    }
    let err = unprivileged_start_error(Tracefs::Mounted);
    assert!(
        err.contains("missing privileges"),
        "the error should say what is missing: {err}"
    );
}

#[test]
fn missing_privileges_are_a_clear_error_with_tracefs_unmounted() {
    if !prerequisites() || !require_tools(&["unshare", "setpriv"]) {
        return;
    }
    let err = unprivileged_start_error(Tracefs::Unmounted);
    assert!(
        err.contains("missing privileges") && err.contains("tracefs is not mounted"),
        "the error should say what is missing: {err}"
    );
}

/// As root on a machine where tracefs is not mounted (a fresh machine), the agent mounts
/// it, captures, and unmounts it again when it stops.
#[test]
fn root_agent_mounts_tracefs_when_missing() {
    if !prerequisites() || !require_tools(&["unshare"]) {
        return;
    }
    let dir = scratch_dir("tracefs");
    let agent_port = free_port();
    let port = free_port();
    let _server = python_api_server("127.0.0.1", port).unwrap();
    let jsonl = dir.join("exchanges.jsonl");
    // After the agent stops, report from inside the namespace whether tracefs is mounted.
    let script = "\"$@\"; echo \"agent exit $?\"; \
         if test -d /sys/kernel/tracing/events; then echo 'after: mounted'; \
         else echo 'after: unmounted'; fi";
    let mut cmd = in_mount_namespace(Tracefs::Unmounted);
    let mut child = cmd
        .args(["sh", "-c", script, "sh"])
        .arg(agent_bin())
        .args(["--listen", &format!("127.0.0.1:{agent_port}")])
        .arg("--exchanges-jsonl")
        .arg(&jsonl)
        .arg("--control-socket")
        .arg(dir.join("control.sock"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let _stop = KillOnDrop(agent_port);
    let addr = format!("127.0.0.1:{agent_port}").parse().unwrap();
    let healthy = wait_for(Duration::from_secs(30), || {
        http_get(addr, "/healthz").ok().filter(|(c, _)| *c == 200)
    });
    let stderr = || std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
    assert!(healthy.is_some(), "agent not healthy: {}", stderr());
    curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/hello")]).unwrap();
    let seen = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&jsonl)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| server_port(e) == Some(port) && e["role"] == "server")
    })
    .unwrap_or_else(|| panic!("no exchange captured; stderr: {}", stderr()));
    assert_eq!(seen["route"], "/hello");
    assert_eq!(seen["status"], 200);

    // SIGINT the agent: it is the shell's child, found by its listen port's owner.
    let pid = agent_pid_by_listen_arg(agent_port).expect("agent pid");
    // SAFETY: kill(2) on the agent this test started.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = wait_for(Duration::from_secs(15), || child.try_wait().ok().flatten());
    let mut out = String::new();
    use std::io::Read as _;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.is_some_and(|s| s.success()), "{out} {}", stderr());
    assert!(out.contains("agent exit 0"), "{out}");
    assert!(stderr().contains("mounted tracefs"), "{}", stderr());
    assert!(
        out.contains("after: unmounted"),
        "the agent must unmount what it mounted: {out}"
    );
}

/// Kills the agent listening on its port if a test ends early (a failed assertion): a
/// leftover agent would observe, and disturb, every later test.
struct KillOnDrop(u16);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = agent_pid_by_listen_arg(self.0) {
            // SAFETY: kill(2) on the agent this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The pid of the agent started with `--listen 127.0.0.1:<port>`.
fn agent_pid_by_listen_arg(port: u16) -> Option<i32> {
    let bin = agent_bin().canonicalize().ok()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let exe = std::fs::read_link(e.path().join("exe")).ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let listen = format!("127.0.0.1:{port}");
        (exe == bin && cmdline.split(|b| *b == 0).any(|a| a == listen.as_bytes())).then_some(pid)
    })
}

/// `--log-format json`: every line the agent logs is one JSON object with a level, a
/// target and a message, for log shippers; an unknown format is a clear error naming the
/// flag.
#[test]
fn json_logs_are_one_object_per_line_and_an_unknown_format_is_refused() {
    if !prerequisites() {
        return;
    }
    let mut agent = Agent::start(&["--log-format", "json"]).unwrap();
    agent.stop().unwrap();
    let stderr = agent.stderr();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no log lines");
    let mut messages = Vec::new();
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(
            v["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("observer")),
            "{line}"
        );
        assert!(v["timestamp"].is_string(), "{line}");
        messages.push(
            v["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("attached ") && m.ends_with(" probes")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("stopping")),
        "{messages:?}"
    );

    let err = failing_start(Command::new(agent_bin()).args(["--log-format", "xml"]));
    assert!(err.contains("--log-format"), "{err}");
    assert!(err.contains("text, json"), "{err}");
}
