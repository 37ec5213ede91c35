//! Running where users run it: a real Prometheus server scraping the agent, `promtool`
//! on the exposition, and traffic attributed to the container and pod of its process
//! (processes placed in cgroups this test creates, a kubelet-style pod directory).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use e2e::{dashboard, *};
use serde_json::Value;

/// The cgroup v2 mount point, wherever this machine has it.
fn cgroup2_root() -> PathBuf {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup2 mount")
}

/// Nested cgroup directories, removed (deepest first) when dropped.
struct Cgroup {
    root: PathBuf,
    leaf: PathBuf,
    created: Vec<PathBuf>,
}

impl Cgroup {
    /// Create `path` under `root`. A leaf left by an earlier, killed run is reused after
    /// moving out whatever processes it still holds.
    fn create(root: &Path, path: &str) -> Self {
        let mut created = Vec::new();
        let mut dir = root.to_path_buf();
        for part in path.split('/') {
            dir = dir.join(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).unwrap();
                created.push(dir.clone());
            }
        }
        // The leaf is this test's own (its name holds a made-up pod UID): removed at the
        // end even when an earlier run left it.
        if created.last() != Some(&dir) {
            created.push(dir.clone());
        }
        let me = Self {
            root: root.to_path_buf(),
            leaf: dir,
            created,
        };
        me.evacuate();
        me
    }

    fn leaf(&self) -> &Path {
        &self.leaf
    }

    /// Move every process of the leaf back to the root cgroup.
    fn evacuate(&self) {
        let procs = std::fs::read_to_string(self.leaf.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.evacuate();
        for d in self.created.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

const UID: &str = "1234abcd-5678-90ef-1234-567890abcdef";
const CONTAINER: &str = "3f1c0a7b9d2e4f6a8b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a";

/// A kubelet-style pod directory (namespace from the service-account volume, name from
/// the managed hosts file) and an agent configuration that reads it; returns the
/// configuration file.
fn kubelet_pod(uid: &str, namespace: &str, name: &str) -> PathBuf {
    let dir = scratch_dir("k8s");
    let pod = dir.join("pods").join(uid);
    let sa = pod.join("volumes/kubernetes.io~projected/kube-api-access-x7k2p");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("namespace"), namespace).unwrap();
    std::fs::write(
        pod.join("etc-hosts"),
        format!("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n10.244.1.7\t{name}\n"),
    )
    .unwrap();
    let config = dir.join("observer.toml");
    std::fs::write(
        &config,
        format!(
            "[kubernetes]\npod_names = \"on\"\npods_dir = \"{}\"\n",
            dir.join("pods").display()
        ),
    )
    .unwrap();
    config
}

/// The cgroup of a container of pod `uid` (systemd driver, containerd).
fn container_cgroup(uid: &str, container: &str) -> Cgroup {
    Cgroup::create(
        &cgroup2_root(),
        &format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{container}.scope",
            uid.replace('-', "_")
        ),
    )
}

#[test]
fn traffic_is_attributed_to_its_container_and_pod() {
    if !prerequisites() {
        return;
    }
    let config = kubelet_pod(UID, "shop", "checkout-7d9f5");
    // The server runs inside the pod's container cgroup.
    let cgroup = container_cgroup(UID, CONTAINER);
    let port = free_port();
    let server = python_api_server("127.0.0.1", port).unwrap();
    std::fs::write(
        cgroup.leaf().join("cgroup.procs"),
        server.child.id().to_string(),
    )
    .unwrap();

    let agent = Agent::start(&["--config", config.to_str().unwrap()]).unwrap();
    curl(&[
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{port}/items/5"),
    ])
    .unwrap();
    let ex = agent.exchanges_for_port(port, 2);
    let server_side: Vec<&Value> = ex.iter().filter(|e| e["role"] == "server").collect();
    assert_eq!(server_side.len(), 1, "{ex:#?}");
    let e = server_side[0];
    assert_eq!(e["container_id"], CONTAINER, "{e:#}");
    assert_eq!(e["pod_uid"], UID);
    assert_eq!(e["pod"], "checkout-7d9f5");
    assert_eq!(e["namespace"], "shop");
    // curl runs outside any container: no attribution on the client side.
    let client_side: Vec<&Value> = ex.iter().filter(|e| e["role"] == "client").collect();
    assert_eq!(client_side.len(), 1);
    assert!(client_side[0].get("pod").is_none(), "{:#}", client_side[0]);

    let metrics = agent.metrics();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("http_server_request_duration_seconds_count{")
                && l.contains("k8s_namespace_name=\"shop\"")
                && l.contains("k8s_pod_name=\"checkout-7d9f5\"")
                && l.contains("http_route=\"/items/{id}\"")
                && l.ends_with(" 1")
        ),
        "{metrics}"
    );
    drop(server); // leave the cgroup empty so it can be removed
    std::thread::sleep(Duration::from_millis(200));
}

/// A Prometheus instant query's first value.
fn query(prom: std::net::SocketAddr, q: &str) -> Option<f64> {
    let (code, body) =
        http_get(prom, &format!("/api/v1/query?query={}", encode_segment(q))).ok()?;
    if code != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// A real Prometheus scraping the agent every second as job `observer`, with `labels` (a
/// YAML flow mapping such as `{node: n1}`) on every series of the target, as the
/// ServiceMonitor's relabelling gives in Kubernetes. Returns it (killed when dropped)
/// and its address once it listens.
fn start_prometheus(agent: &Agent, labels: Option<&str>) -> (Proc, std::net::SocketAddr) {
    let dir = scratch_dir("prometheus");
    let prom_port = free_port();
    let labels = labels
        .map(|l| format!("        labels: {l}\n"))
        .unwrap_or_default();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: observer\n    static_configs:\n      - targets: ['{}']\n{labels}",
            agent.addr
        ),
    )
    .unwrap();
    let proc = Proc::spawn(
        "prometheus",
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stderr(Stdio::null()),
    )
    .expect("prometheus (apt-get install prometheus)");
    let prom: std::net::SocketAddr = format!("127.0.0.1:{prom_port}").parse().unwrap();
    wait_listening(prom).unwrap();
    (proc, prom)
}

#[test]
fn a_real_prometheus_scrapes_the_agent() {
    if !prerequisites() {
        return;
    }
    let agent = Agent::start(&[]).unwrap();
    let port = free_port();
    let _server = python_api_server("127.0.0.1", port).unwrap();

    let (_prom, prom) = start_prometheus(&agent, None);

    let base = format!("http://127.0.0.1:{port}");
    let out = curl(&[
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-H",
        "X-API-Key: prometheus-test-key",
        &format!("{base}/hello"),
        &format!("{base}/items/1"),
        &format!("{base}/items/2"),
        &format!("{base}/status/404"),
        &format!("{base}/hello"),
    ]);
    out.unwrap();
    let server_port_requests = "sum(http_server_request_duration_seconds_count{job=\"observer\",http_route=\"/items/{id}\",http_response_status_code=\"200\"})";
    let items = wait_for(Duration::from_secs(30), || {
        query(prom, server_port_requests).filter(|v| *v >= 2.0)
    });
    assert_eq!(
        items,
        Some(2.0),
        "two /items/{{id}} requests seen through Prometheus"
    );
    let not_found = wait_for(Duration::from_secs(10), || {
        query(
            prom,
            "sum(http_server_request_duration_seconds_count{http_response_status_code=\"404\",http_route=\"/status/{id}\"})",
        )
    });
    assert_eq!(not_found, Some(1.0));
    assert_eq!(query(prom, "up{job=\"observer\"}"), Some(1.0));
    let sessions = wait_for(Duration::from_secs(20), || {
        query(prom, "sum(api_observer_sessions{direction=\"inbound\"})").filter(|v| *v >= 1.0)
    });
    assert!(sessions.is_some(), "session series scraped");
    let events = query(
        prom,
        "sum(api_observer_capture_events_total{kind=\"data\"})",
    );
    assert!(
        events.is_some_and(|v| v > 0.0),
        "capture series scraped: {events:?}"
    );
    assert_eq!(
        query(
            prom,
            "sum(api_observer_capture_dropped_total{reason=\"ringbuf_full\"})"
        ),
        Some(0.0)
    );
}

/// A Prometheus HTTP API answer's `data`, or the error it gave.
fn prom_api(prom: std::net::SocketAddr, path: &str) -> Result<Value, String> {
    let (code, body) = http_get(prom, path).map_err(|e| format!("{path}: {e}"))?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{path}: {e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{path}: {code} {body}"));
    }
    Ok(v["data"].clone())
}

/// The series an instant query returns.
fn instant(prom: std::net::SocketAddr, q: &str) -> Result<Vec<Value>, String> {
    let data = prom_api(prom, &format!("/api/v1/query?query={}", encode_segment(q)))?;
    match (&data["resultType"], data["result"].as_array()) {
        (t, Some(series)) if t == "vector" => Ok(series.clone()),
        _ => Err(format!("{q}: not a vector: {data}")),
    }
}

/// A series' value (`NaN` when it has none).
fn value(series: &Value) -> f64 {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A series' label (empty when absent).
fn label<'a>(series: &'a Value, name: &str) -> &'a str {
    series["metric"][name].as_str().unwrap_or_default()
}

/// The values of `label` on the series `selector` matches: what Grafana offers for a
/// `label_values(selector, label)` variable.
fn label_values(prom: std::net::SocketAddr, selector: &str, label: &str) -> Vec<String> {
    let data = prom_api(
        prom,
        &format!(
            "/api/v1/label/{label}/values?match%5B%5D={}",
            encode_segment(selector)
        ),
    )
    .unwrap();
    serde_json::from_value(data).unwrap()
}

const DASH_UID: &str = "9f8e7d6c-5b4a-4928-9706-f5e4d3c2b1a0";
const DASH_CONTAINER: &str = "b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6";
const NODE: &str = "e2e-node-1";
const NAMESPACE: &str = "payments";
const POD: &str = "ledger-5c8b9";
const ROUTES: [&str; 3] = ["/hello", "/items/{id}", "/status/{id}"];

/// One curl over one connection: three routes, a 5xx, and a risky credential (an
/// unsigned JWT, a key in the query string) so that a session scores below 100 and gets
/// a health-score series.
fn dashboard_traffic(port: u16) {
    let base = format!("http://127.0.0.1:{port}");
    let urls = [
        format!("{base}/hello"),
        format!("{base}/items/1"),
        format!("{base}/items/2"),
        format!("{base}/status/500"),
        format!("{base}/items/3?api_key=dashboard-drill-key"),
    ];
    // {"alg":"none"}.{"sub":"dashboard-check"}. with no signature.
    let mut args = vec![
        "-H",
        "Authorization: Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJkYXNoYm9hcmQtY2hlY2sifQ.",
    ];
    for url in &urls {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    curl(&args).unwrap();
}

#[test]
fn the_dashboard_drills_down_on_a_live_agent_through_prometheus() {
    if !prerequisites() {
        return;
    }
    let dash = dashboard::load();
    // The API server in a pod's container, so that namespace and pod have values to
    // drill into; curl, the client, stays outside (empty labels that All must match).
    let config = kubelet_pod(DASH_UID, NAMESPACE, POD);
    let cgroup = container_cgroup(DASH_UID, DASH_CONTAINER);
    let port = free_port();
    let server = python_api_server("127.0.0.1", port).unwrap();
    std::fs::write(
        cgroup.leaf().join("cgroup.procs"),
        server.child.id().to_string(),
    )
    .unwrap();
    let agent = Agent::start(&["--config", config.to_str().unwrap()]).unwrap();
    let (_prom, prom) = start_prometheus(&agent, Some(&format!("{{node: {NODE}}}")));

    // Two rounds: rate() sees only what grows after Prometheus first scraped a series.
    // The agent sees every process on this host, so exact counts look at the pod only.
    dashboard_traffic(port);
    let items = format!(
        r#"sum(http_server_request_duration_seconds_count{{k8s_pod_name="{POD}",http_route="/items/{{id}}"}})"#
    );
    let scraped = wait_for(Duration::from_secs(30), || {
        let v = value(instant(prom, &items).ok()?.first()?);
        (v >= 3.0).then_some(v)
    });
    assert_eq!(scraped, Some(3.0), "the first round, through Prometheus");
    dashboard_traffic(port);

    // (a) The template variables, as Grafana evaluates them.
    let variables = dashboard::variables(&dash);
    let values_of = |name: &str, chosen: &[(&str, &str)]| -> Vec<String> {
        let var = variables
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("no variable {name}"));
        let selector = dashboard::substitute(&var.selector, chosen);
        assert!(!selector.contains('$'), "{name}: {selector}");
        label_values(prom, &selector, &var.label)
    };
    let chosen = |node, namespace, pod| {
        [
            ("job", "observer"),
            ("node", node),
            ("namespace", namespace),
            ("pod", pod),
        ]
    };
    let all = chosen(NODE, ".*", ".*");
    assert_eq!(values_of("job", &all), ["observer"]);
    assert_eq!(values_of("node", &all), [NODE]);
    // Other traffic on this host may add namespaces, pods and routes to All.
    let has = |values: Vec<String>, expected: &[&str]| {
        assert!(
            expected.iter().all(|e| values.contains(&e.to_string())),
            "{expected:?} not all in {values:?}"
        );
    };
    has(values_of("namespace", &all), &[NAMESPACE]);
    has(values_of("pod", &all), &[POD]);
    has(values_of("route", &all), &ROUTES);
    // Drilling down narrows the next variable's choices.
    assert_eq!(values_of("pod", &chosen(NODE, NAMESPACE, ".*")), [POD]);
    assert_eq!(values_of("route", &chosen(NODE, NAMESPACE, POD)), ROUTES);
    assert_eq!(values_of("pod", &chosen(NODE, "elsewhere", ".*")), [""; 0]);
    assert_eq!(
        values_of("route", &chosen(NODE, ".*", "other-pod")),
        [""; 0]
    );
    assert_eq!(
        values_of("namespace", &chosen("other-node", ".*", ".*")),
        [""; 0]
    );

    // (b) Every panel query, with All chosen everywhere but the node (`.*`).
    let targets = dashboard::targets(&dash);
    let with = |namespace, pod, route| {
        [
            ("job", "observer"),
            ("node", NODE),
            ("namespace", namespace),
            ("pod", pod),
            ("route", route),
            ("__rate_interval", "1m"),
        ]
    };
    let everything = with(".*", ".*", ".*");
    let ours = with(NAMESPACE, POD, ".*");
    let run = |expr: &str, values: &[(&str, &str)]| -> Vec<Value> {
        let q = dashboard::substitute(expr, values);
        assert!(!q.contains('$'), "a variable left in {q}");
        instant(prom, &q).unwrap_or_else(|e| panic!("{e}"))
    };
    for t in &targets {
        run(&t.expr, &everything);
    }
    // Waits until every query of the panel returns series that `ok` accepts (scrapes,
    // rate() windows and a scoring pass take a few seconds); returns them.
    let panel =
        |title: &str, values: &[(&str, &str)], ok: &dyn Fn(&[Value]) -> bool| -> Vec<Vec<Value>> {
            let queries: Vec<&str> = targets
                .iter()
                .filter(|t| t.panel == title)
                .map(|t| t.expr.as_str())
                .collect();
            assert!(!queries.is_empty(), "no panel {title:?}");
            let results =
                || -> Vec<Vec<Value>> { queries.iter().map(|q| run(q, values)).collect() };
            wait_for(Duration::from_secs(40), || {
                let r = results();
                r.iter().all(|s| !s.is_empty() && ok(s)).then_some(r)
            })
            .unwrap_or_else(|| panic!("{title} with {values:?}: {:#?}", results()))
        };
    // The panels this traffic feeds have data with All chosen.
    let any = |_: &[Value]| true;
    for title in [
        "Request rate by route and status code",
        "Latency p50 / p95 / p99 by route",
        "Error rate by route (5xx share)",
        "Outgoing calls by server address and status code",
        "Outgoing call latency p95 by server address",
        "Sessions by state",
        "Riskiest sessions (lowest health score)",
        "Findings",
        "Capture events by kind",
        "Capture drops by reason",
        "Routes counted as other",
        "Probes attached",
        "Connections followed",
        "Agents by version",
    ] {
        panel(title, &everything, &any);
    }

    // What they show, exactly, for the pod's server.
    let of_route = |series: &[Value], route: &str| -> Vec<f64> {
        series
            .iter()
            .filter(|s| label(s, "http_route") == route)
            .map(value)
            .collect()
    };
    let pairs = |series: &[Value]| {
        let mut p: Vec<(String, String)> = series
            .iter()
            .filter(|s| value(s) > 0.0)
            .map(|s| {
                (
                    label(s, "http_route").to_string(),
                    label(s, "http_response_status_code").to_string(),
                )
            })
            .collect();
        p.sort();
        p
    };
    let expected_pairs = [
        ("/hello", "200"),
        ("/items/{id}", "200"),
        ("/status/{id}", "500"),
    ]
    .map(|(r, c)| (r.to_string(), c.to_string()));
    panel("Request rate by route and status code", &ours, &|s| {
        s.len() == 3 && pairs(s) == expected_pairs
    });
    // p50, p95 and p99 of every route, finite (NaN would mean no rate).
    panel("Latency p50 / p95 / p99 by route", &ours, &|s| {
        s.len() == 3
            && ROUTES
                .iter()
                .all(|r| matches!(of_route(s, r)[..], [v] if v.is_finite() && v > 0.0))
    });
    panel("Error rate by route (5xx share)", &ours, &|s| {
        s.len() == 3
            && of_route(s, "/status/{id}") == [1.0]
            && of_route(s, "/items/{id}") == [0.0]
            && of_route(s, "/hello") == [0.0]
    });
    // curl, outside any pod (empty pod labels), is matched by All and by nothing else.
    panel(
        "Outgoing calls by server address and status code",
        &everything,
        &|s| {
            ["200", "500"].iter().all(|code| {
                s.iter().any(|x| {
                    label(x, "server_address") == "127.0.0.1"
                        && label(x, "http_response_status_code") == *code
                        && value(x) > 0.0
                })
            })
        },
    );
    let outgoing = &targets
        .iter()
        .find(|t| t.panel == "Outgoing calls by server address and status code")
        .unwrap()
        .expr;
    assert_eq!(run(outgoing, &ours), [Value::Null; 0]);
    panel("Sessions by state", &everything, &|s| {
        s.iter()
            .filter(|x| label(x, "direction") == "inbound")
            .map(value)
            .sum::<f64>()
            >= 1.0
    });
    let riskiest = panel(
        "Riskiest sessions (lowest health score)",
        &everything,
        &|s| {
            s.iter().all(|x| {
                label(x, "node") == NODE && !label(x, "session").is_empty() && value(x) < 100.0
            })
        },
    );
    let scores: Vec<f64> = riskiest[0].iter().map(value).collect();
    assert!(
        scores.windows(2).all(|w| w[0] <= w[1]),
        "lowest first: {scores:?}"
    );
    assert!(scores.len() <= 20, "{scores:?}");
    panel("Capture events by kind", &everything, &|s| {
        s.iter()
            .any(|x| label(x, "kind") == "data" && value(x) > 0.0)
    });
    for title in [
        "Agent CPU by node",
        "Agent memory by node",
        "Capture loss (share of records)",
    ] {
        panel(title, &everything, &|s| {
            s.len() == 1 && label(&s[0], "node") == NODE && (0.0..).contains(&value(&s[0]))
        });
    }

    // One route chosen (as Grafana escapes it for a regex), and a namespace without
    // traffic.
    let rate = &targets
        .iter()
        .find(|t| t.panel == "Request rate by route and status code")
        .unwrap()
        .expr;
    let one_route = run(rate, &with(NAMESPACE, POD, r"/items/\\{id\\}"));
    assert_eq!(
        one_route
            .iter()
            .map(|s| label(s, "http_route"))
            .collect::<Vec<_>>(),
        ["/items/{id}"]
    );
    assert_eq!(run(rate, &with("elsewhere", ".*", ".*")), [Value::Null; 0]);

    drop(server); // leave the cgroup empty so it can be removed
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn promtool_accepts_the_exposition() {
    if !prerequisites() {
        return;
    }
    let agent = Agent::start(&[]).unwrap();
    let port = free_port();
    let _server = python_api_server("127.0.0.1", port).unwrap();
    curl(&[
        "-o",
        "/dev/null",
        "-H",
        "Authorization: Bearer promtool-token",
        &format!("http://127.0.0.1:{port}/hello"),
    ])
    .unwrap();
    agent.exchanges_for_port(port, 2);
    std::thread::sleep(Duration::from_secs(6)); // one scoring pass
    let metrics = agent.metrics();
    assert!(metrics.contains("api_observer_sessions{"), "{metrics}");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
