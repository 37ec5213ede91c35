//! The deployment files are checked with the tools users would run: promtool (config,
//! rules and their unit tests), kubernetes-validate, a kustomization check, hadolint;
//! and every metric the dashboard and the alert rules use must exist in the exposition
//! of a real agent.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::{Command, Output},
    time::Duration,
};

use e2e::*;

fn deploy() -> PathBuf {
    workspace_root().join("deploy")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn prometheus_config_rules_and_rule_tests_pass_promtool() {
    if !require_tools(&["promtool"]) {
        return;
    }
    let dir = deploy().join("prometheus");
    run(Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(&dir));
    run(Command::new("promtool")
        .args(["check", "rules", "alerts.yml"])
        .current_dir(&dir));
    let out = run(Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(&dir));
    assert!(String::from_utf8_lossy(&out.stdout).contains("SUCCESS"));
}

#[test]
fn kubernetes_manifests_fit_together_and_validate() {
    if !require_tools(&["python3", "kubernetes-validate"]) {
        return;
    }
    let dir = deploy().join("kubernetes");
    let out = run(Command::new("python3")
        .arg("check_kustomization.py")
        .current_dir(&dir));
    let rendered = String::from_utf8_lossy(&out.stdout);
    // The script also checks that the fleet Secret is mounted read-only (mode 0400) where
    // shared_secret_file points, the startupProbe, read-only tracefs and that the
    // NetworkPolicy admits only the metrics port from selected namespaces.
    for kind in [
        "DaemonSet",
        "Service",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "Secret",
        "NetworkPolicy",
    ] {
        assert!(
            rendered.contains(&format!("kind: {kind}")),
            "{kind} not rendered"
        );
    }
    // The CRDs (ServiceMonitor, PrometheusRule) are unknown to the schemas; the core
    // objects are validated strictly.
    run(Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.37.0"])
        .args([
            "namespace.yaml",
            "serviceaccount.yaml",
            "configmap.yaml",
            "daemonset.yaml",
            "service.yaml",
            "secret.yaml",
            "networkpolicy.yaml",
        ])
        .current_dir(&dir));
}

#[test]
fn fleet_secret_probe_and_network_policy_are_in_place() {
    if !require_tools(&["python3"]) {
        return;
    }
    let dir = deploy().join("kubernetes");
    // Independently of the script: the rendered objects, as JSON.
    let script = "import json,sys,yaml\n\
        docs=[d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]\n\
        print(json.dumps(docs))";
    let out = run(Command::new("python3")
        .args(["-c", script])
        .args([
            "daemonset.yaml",
            "networkpolicy.yaml",
            "secret.yaml",
            "configmap.yaml",
        ])
        .current_dir(&dir));
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let of = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind}"))
    };
    let pod = &of("DaemonSet")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["startupProbe"]["httpGet"]["path"], "/healthz");
    let mounts = container["volumeMounts"].as_array().unwrap();
    let tracefs = mounts
        .iter()
        .find(|m| m["mountPath"] == "/sys/kernel/tracing")
        .unwrap();
    assert_eq!(tracefs["readOnly"], true);
    let secret_name = of("Secret")["metadata"]["name"].clone();
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v.to_string().contains(&format!("\"name\":{secret_name}")))
        .expect("a volume with the Secret");
    let mount = mounts
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the Secret's volume is mounted");
    assert_eq!(mount["readOnly"], true);
    let item = volume.to_string();
    assert!(item.contains("fleet-secret/fleet.secret"), "{item}");
    assert!(item.contains("\"mode\":256"), "mode 0400: {item}");
    let toml = of("ConfigMap")["data"]["observer.toml"].as_str().unwrap();
    assert!(
        toml.contains("shared_secret_file = \"/etc/observer/fleet-secret/fleet.secret\""),
        "{toml}"
    );
    // The placeholder is refused by the agent (too short), never a usable secret.
    let placeholder = of("Secret")["stringData"]["fleet.secret"].as_str().unwrap();
    assert!(placeholder.len() < 32, "{placeholder}");
    let np = &of("NetworkPolicy")["spec"];
    assert_eq!(np["policyTypes"], serde_json::json!(["Ingress"]));
    let rules = np["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{np}");
    assert_eq!(
        rules[0]["ports"],
        serde_json::json!([{"protocol": "TCP", "port": "metrics"}])
    );
    assert!(
        rules[0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            .is_string()
    );
}

#[test]
fn systemd_unit_keeps_state_and_can_read_the_fleet_secret() {
    let unit = std::fs::read_to_string(deploy().join("systemd/observer.service")).unwrap();
    for line in [
        "StateDirectory=observer",
        "StateDirectoryMode=0700",
        "ProtectSystem=strict",
    ] {
        assert!(unit.lines().any(|l| l.trim() == line), "{line} missing");
    }
    // /etc stays readable under ProtectSystem=strict; nothing may hide it.
    for bad in ["InaccessiblePaths=/etc", "TemporaryFileSystem=/etc"] {
        assert!(!unit.contains(bad), "{bad}");
    }
    assert!(unit.contains("/etc/observer/fleet.secret"));
}

#[test]
fn prometheus_rule_matches_the_alert_file() {
    if !require_tools(&["python3"]) {
        return;
    }
    let script = "import json,sys,yaml\n\
        a=yaml.safe_load(open(sys.argv[1]))\n\
        b=yaml.safe_load(open(sys.argv[2]))['spec']\n\
        print(json.dumps(a==b))";
    let out = run(Command::new("python3").args([
        "-c",
        script,
        deploy().join("prometheus/alerts.yml").to_str().unwrap(),
        deploy()
            .join("kubernetes/prometheusrule.yaml")
            .to_str()
            .unwrap(),
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "true");
}

#[test]
fn container_file_passes_hadolint() {
    if !require_tools(&["hadolint"]) {
        return;
    }
    run(Command::new("hadolint").arg(deploy().join("Containerfile")));
}

/// Every `api_observer_*` name in a text, histogram series reduced to their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("api_observer_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| f.ends_with("_seconds"))
            .unwrap_or(name);
        names.insert(family.to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn dashboard_and_rules_use_only_metrics_a_real_agent_exports() {
    let dashboard =
        std::fs::read_to_string(deploy().join("grafana/observer-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 6));
    let mut used = metric_names(&dashboard);
    for f in ["prometheus/alerts.yml", "kubernetes/prometheusrule.yaml"] {
        used.extend(metric_names(
            &std::fs::read_to_string(deploy().join(f)).unwrap(),
        ));
    }
    assert!(used.len() >= 8, "{used:?}");
    if !prerequisites() {
        return;
    }
    // A real agent, after traffic with a risky credential use (an unsigned JWT: only
    // sessions below 100 get a health-score series) and a scoring pass.
    let agent = Agent::start(&[]).unwrap();
    let port = free_port();
    let _server = python_api_server("127.0.0.1", port).unwrap();
    curl(&[
        "-o",
        "/dev/null",
        // {"alg":"none"}.{"sub":"dashboard-check"}. with no signature.
        "-H",
        "Authorization: Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJkYXNoYm9hcmQtY2hlY2sifQ.",
        &format!("http://127.0.0.1:{port}/items/3?api_key=dashboard-check-key"),
    ])
    .unwrap();
    agent.exchanges_for_port(port, 2);
    let exported = wait_for(Duration::from_secs(15), || {
        let m = agent.metrics();
        m.contains("api_observer_session_health_score{")
            .then(|| metric_names(&m))
    })
    .unwrap_or_else(|| {
        panic!(
            "no session series after a scoring pass:\n{}\nsessions: {:?}",
            agent.metrics(),
            agent_json(&agent, "/api/sessions").ok()
        )
    });
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "used but not exported: {missing:?}\nexported: {exported:?}"
    );
}
