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

use e2e::{dashboard, *};

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

/// Every metric name of the agent's in a text (its `api_observer_*` series, the request
/// histograms, the process metrics), histogram series reduced to their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    dashboard::metric_names(text)
        .into_iter()
        .map(|(name, _)| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| f.ends_with("_seconds"))
                .unwrap_or(name)
                .to_string()
        })
        .collect()
}

#[test]
fn dashboard_and_rules_use_only_metrics_a_real_agent_exports() {
    let dashboard =
        std::fs::read_to_string(deploy().join("grafana/observer-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert!(parsed["panels"].as_array().is_some_and(|p| p.len() >= 6));
    let mut used = metric_names(&dashboard);
    for family in [
        "http_server_request_duration_seconds",
        "http_client_request_duration_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(
            used.contains(family),
            "the dashboard uses {family}: {used:?}"
        );
    }
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

/// The label matchers every selector of `metric` must carry: a query takes every
/// variable its series have labels for.
fn required_matchers(metric: &str) -> Vec<&'static str> {
    let mut m = vec![r#"job=~"$job""#, r#"node=~"$node""#];
    if metric.starts_with("http_server_") || metric.starts_with("http_client_") {
        m.extend([
            r#"k8s_namespace_name=~"$namespace""#,
            r#"k8s_pod_name=~"$pod""#,
        ]);
    }
    if metric.starts_with("http_server_") {
        m.push(r#"http_route=~"$route""#);
    }
    m
}

#[test]
fn dashboard_queries_take_every_variable_they_can() {
    let dash = dashboard::load();
    assert_eq!(dash["schemaVersion"], 39);
    assert_eq!(dash["__inputs"][0]["name"], "DS_PROMETHEUS");
    let list = dash["templating"]["list"].as_array().unwrap();
    assert_eq!(list[0]["name"], "DS_PROMETHEUS");
    assert_eq!(list[0]["type"], "datasource");

    let vars = dashboard::variables(&dash);
    let names: Vec<&str> = vars.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["job", "node", "namespace", "pod", "route"]);
    for v in &vars {
        assert_eq!(v.raw["multi"], true, "{}", v.name);
        assert_eq!(v.raw["includeAll"], true, "{}", v.name);
        assert_eq!(v.raw["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", v.name);
        assert_eq!(v.raw["definition"], v.raw["query"]["query"], "{}", v.name);
        // Empty labels (outside Kubernetes) must match All: `.*`, not the list of values.
        // All jobs is the list of jobs that export the agent's build info.
        let all = if v.name == "job" {
            serde_json::Value::Null
        } else {
            ".*".into()
        };
        assert_eq!(v.raw["allValue"], all, "{}", v.name);
    }
    let by_name = |n: &str| vars.iter().find(|v| v.name == n).unwrap();
    assert_eq!(by_name("node").label, "node");
    assert_eq!(
        by_name("node").selector,
        r#"api_observer_build_info{job=~"$job"}"#
    );
    assert_eq!(by_name("namespace").label, "k8s_namespace_name");
    assert_eq!(by_name("pod").label, "k8s_pod_name");
    assert!(by_name("pod")
        .selector
        .contains(r#"k8s_namespace_name=~"$namespace""#));
    assert_eq!(by_name("route").label, "http_route");
    for m in [
        r#"k8s_namespace_name=~"$namespace""#,
        r#"k8s_pod_name=~"$pod""#,
    ] {
        assert!(by_name("route").selector.contains(m), "{m}");
    }

    let targets = dashboard::targets(&dash);
    assert!(targets.len() >= 15, "{targets:#?}");
    for t in &targets {
        let names = dashboard::metric_names(&t.expr);
        assert!(!names.is_empty(), "{}: no metric in {}", t.panel, t.expr);
        for (metric, end) in names {
            let rest = &t.expr[end..];
            let labels = rest
                .strip_prefix('{')
                .and_then(|r| r.split_once('}'))
                .map(|(l, _)| l)
                .unwrap_or_else(|| panic!("{}: {metric} without matchers", t.panel));
            let matchers: Vec<&str> = labels.split(',').map(str::trim).collect();
            for m in required_matchers(metric) {
                assert!(
                    matchers.contains(&m),
                    "{}: {metric} lacks {m} in {}",
                    t.panel,
                    t.expr
                );
            }
        }
        // Every range is Grafana's, which follows the scrape interval and the zoom.
        for (i, _) in t.expr.match_indices('[') {
            assert!(
                t.expr[i..].starts_with("[$__rate_interval]"),
                "{}: {}",
                t.panel,
                t.expr
            );
        }
    }
}
