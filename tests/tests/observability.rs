//! Running where users run it: a real Prometheus server scraping the agent, `promtool`
//! on the exposition, and traffic attributed to the container and pod of its process
//! (processes placed in cgroups this test creates, a kubelet-style pod directory).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use e2e::*;
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

#[test]
fn traffic_is_attributed_to_its_container_and_pod() {
    if !prerequisites() {
        return;
    }
    // A kubelet-style pod directory: namespace from the service-account volume, name
    // from the managed hosts file.
    let dir = scratch_dir("k8s");
    let pod = dir.join("pods").join(UID);
    let sa = pod.join("volumes/kubernetes.io~projected/kube-api-access-x7k2p");
    std::fs::create_dir_all(&sa).unwrap();
    std::fs::write(sa.join("namespace"), "shop").unwrap();
    std::fs::write(
        pod.join("etc-hosts"),
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n10.244.1.7\tcheckout-7d9f5\n",
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

    // The server runs inside the pod's container cgroup (systemd driver, containerd).
    let cgroup = Cgroup::create(
        &cgroup2_root(),
        &format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{CONTAINER}.scope",
            UID.replace('-', "_")
        ),
    );
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

#[test]
fn a_real_prometheus_scrapes_the_agent() {
    if !prerequisites() {
        return;
    }
    let agent = Agent::start(&[]).unwrap();
    let port = free_port();
    let _server = python_api_server("127.0.0.1", port).unwrap();

    let dir = scratch_dir("prometheus");
    let prom_port = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: observer\n    static_configs:\n      - targets: ['{}']\n",
            agent.addr
        ),
    )
    .unwrap();
    let _prom = Proc::spawn(
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
