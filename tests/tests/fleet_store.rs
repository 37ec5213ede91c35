//! Fleet-wide sessions on a real Redis (issue 17), end to end. Two agents on this host
//! play two nodes: each has its own node name and its own nginx (a copy of the binary
//! under its own name), and ignores the other's server by process name
//! (`[privacy] ignore_processes`), so each sees only its "node's" traffic. Clients come
//! from two network namespaces (two client networks). The agents share a fingerprint
//! secret and a store: a throwaway `redis-server`, or a local three-master Redis Cluster.
//!
//! Every agent also ignores `curl`, the clients: the host's outbound calls would
//! otherwise be a second (outbound) session of each token on every agent.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use e2e::{
    redis::{Redis, RedisCluster},
    scenarios::{jwt, unix_now},
    *,
};
use serde_json::{json, Value};

/// Client namespaces of this file: `10.200.71.0/24` (through node A's server) and
/// `10.200.72.0/24` (through node B's).
const NS_BASE: u8 = 71;
const NODE_A: &str = "fleet-node-a";
const NODE_B: &str = "fleet-node-b";
/// Server process names (a process's `comm` holds at most 15 bytes).
const SERVER_A: &str = "nginx-fleet-a";
const SERVER_B: &str = "nginx-fleet-b";
/// Key prefix in the store: every key the agents write starts with it.
const PREFIX: &str = "obs-e2e";
/// Sessions' idle TTL: the bound of every key's TTL in the store.
const IDLE_TTL_SECS: i64 = 120;
/// How long the fleet view may take to show what both nodes published (a few scoring
/// passes of one second each).
const FLEET_WAIT: Duration = Duration::from_secs(20);
/// How long an agent may take to reconnect to a store that came back (its backoff).
const RECOVERY_WAIT: Duration = Duration::from_secs(60);

/// Where the agents keep the fleet.
enum Store<'a> {
    /// `[fleet] endpoint`.
    Single(&'a Redis),
    /// `[fleet] cluster` (seed nodes).
    Cluster(&'a RedisCluster),
    /// No `[fleet]`: the control agents, which see the same traffic alone.
    None,
}

impl Store<'_> {
    fn toml(&self) -> String {
        let common = format!("key_prefix = \"{PREFIX}\"\n");
        match self {
            Store::Single(r) => format!("[fleet]\nendpoint = \"{}\"\n{common}", r.url()),
            Store::Cluster(c) => {
                let seeds: Vec<String> = c.seeds().iter().map(|s| format!("\"{s}\"")).collect();
                format!("[fleet]\ncluster = [{}]\n{common}", seeds.join(", "))
            }
            Store::None => String::new(),
        }
    }
}

/// One agent playing one node.
struct Node {
    name: &'static str,
    agent: Agent,
    args: Vec<String>,
    audit: PathBuf,
}

impl Node {
    fn restart(&mut self) {
        self.agent.stop().unwrap();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.agent = Agent::start(&args).unwrap();
    }
}

/// Two client networks, two servers (A and B), and the agents.
struct World {
    dir: PathBuf,
    secret: String,
    ns: Vec<Netns>,
    servers: Vec<Nginx>,
}

impl World {
    fn new() -> Self {
        let dir = scratch_dir("fleet-store");
        let secret = dir.join("fleet.secret");
        std::fs::write(&secret, [0x3c; 48]).unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let ns: Vec<Netns> = (0..2)
            .map(|i| Netns::create(NS_BASE + i).unwrap())
            .collect();
        let servers: Vec<Nginx> = [SERVER_A, SERVER_B]
            .iter()
            .zip(&ns)
            .map(|(name, ns)| {
                let port = free_port();
                Nginx::start_named(
                    name,
                    port,
                    &format!(
                        "listen {}:{port};\n location = /fleet {{ return 200 \"ok\\n\"; }}",
                        ns.host_ip
                    ),
                )
                .unwrap()
            })
            .collect();
        // The premise of the set-up: the servers' processes really are told apart by name.
        for (server, name) in servers.iter().zip([SERVER_A, SERVER_B]) {
            let master = server.master_pid().unwrap();
            let workers = wait_for(Duration::from_secs(5), || {
                let w = children(master);
                (!w.is_empty()).then_some(w)
            })
            .unwrap_or_else(|| panic!("no nginx worker under {master}"));
            for pid in std::iter::once(master).chain(workers) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
                assert_eq!(comm.trim(), name, "comm of nginx process {pid}");
            }
        }
        Self {
            dir: dir.clone(),
            secret: secret.display().to_string(),
            ns,
            servers,
        }
    }

    /// The client network of namespace `i`, as the agent prints it.
    fn network(&self, i: usize) -> String {
        format!("10.200.{}.0/24", NS_BASE + i as u8)
    }

    /// An agent for node `i` (0: A, 1: B) on `store`. Node A takes its name from
    /// `--node-name`, node B from `[fleet] node`; control agents (no store) have none.
    fn node(&self, i: usize, store: &Store, extra_toml: &str) -> Node {
        let name = [NODE_A, NODE_B][i];
        let other_server = [SERVER_B, SERVER_A][i];
        let tag = if matches!(store, Store::None) {
            format!("{name}-alone")
        } else {
            name.to_string()
        };
        let audit = self.dir.join(format!("audit-{tag}.jsonl"));
        let mut fleet = store.toml();
        if i == 1 && !fleet.is_empty() {
            fleet.push_str(&format!("node = \"{name}\"\n"));
        }
        let config = self.dir.join(format!("{tag}.toml"));
        std::fs::write(
            &config,
            format!(
                "[output]\naudit_jsonl = \"{}\"\n\
                 [identity]\nshared_secret_file = \"{}\"\nrotate_every_secs = 86400\n\
                 [sessions]\nidle_ttl_secs = {IDLE_TTL_SECS}\n\
                 [scoring]\ninterval_secs = 1\n\
                 [privacy]\nignore_processes = [\"{other_server}\", \"curl\"]\n\
                 {extra_toml}\n{fleet}",
                audit.display(),
                self.secret
            ),
        )
        .unwrap();
        let mut args = vec!["--config".to_string(), config.display().to_string()];
        if i == 0 && !matches!(store, Store::None) {
            args.extend(["--node-name".to_string(), name.to_string()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        Node {
            name,
            agent: Agent::start(&refs).unwrap(),
            args,
            audit,
        }
    }

    /// `n` requests to `/fleet` on one keep-alive connection from namespace `i` to server
    /// `i` with `headers`; every answer must be 200.
    fn get(&self, i: usize, headers: &[&str], n: usize) {
        let url = format!(
            "http://{}:{}/fleet",
            self.ns[i].host_ip, self.servers[i].port
        );
        let mut args: Vec<&str> = vec!["-w", "%{http_code}\\n"];
        for h in headers {
            args.extend(["-H", h]);
        }
        for _ in 0..n {
            args.extend(["-o", "/dev/null", url.as_str()]);
        }
        let out = self.ns[i].curl(&args).unwrap();
        let codes: Vec<&str> = out.lines().collect();
        assert_eq!(codes, vec!["200"; n], "answers from server {i}");
    }
}

/// The pids whose parent is `parent` (from `/proc/<pid>/stat`).
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                        // `pid (comm) state ppid ...`: comm may hold spaces.
                        stat.rsplit_once(')')
                            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
                            == Some(parent)
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// Strings of a JSON list whose items are strings or `{"value": ...}` objects, sorted.
fn texts(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str().or_else(|| i["value"].as_str()))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn reasons(s: &Value) -> Vec<String> {
    texts(&s["reasons"])
}

/// The agent's inbound sessions whose client networks include `network`, with their
/// details, as (summary, detail).
fn sessions_from(agent: &Agent, network: &str) -> Vec<(Value, Value)> {
    let Ok(list) = agent_json(agent, "/api/sessions?direction=inbound&limit=1000") else {
        return Vec::new();
    };
    list.as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|s| {
            let id = s["id"].as_str()?.to_string();
            let d = agent_json(agent, &format!("/api/sessions/{}", encode_segment(&id))).ok()?;
            texts(&d["networks"])
                .iter()
                .any(|n| n == network)
                .then_some((s, d))
        })
        .collect()
}

/// The one session from `network` that satisfies `pred` (on its summary and detail), once
/// the agent shows it.
fn wait_session(
    agent: &Agent,
    network: &str,
    what: &str,
    pred: impl Fn(&Value, &Value) -> bool,
) -> (Value, Value) {
    wait_for(FLEET_WAIT, || {
        let mut found: Vec<(Value, Value)> = sessions_from(agent, network)
            .into_iter()
            .filter(|(s, d)| pred(s, d))
            .collect();
        (found.len() == 1).then(|| found.remove(0))
    })
    .unwrap_or_else(|| {
        panic!(
            "{what}: no single session from {network}; sessions: {:#?}\nstderr:\n{}",
            sessions_from(agent, network),
            agent.stderr()
        )
    })
}

/// `GET /api/fleet/sessions?limit=1000` on `agent`, checked to name `node` and be up.
fn fleet_list(agent: &Agent, node: &str) -> Option<Vec<Value>> {
    let v = agent_json(agent, "/api/fleet/sessions?limit=1000").ok()?;
    assert_eq!(v["node"], node, "{v:#}");
    if v["up"] != true {
        return None;
    }
    v["sessions"].as_array().cloned()
}

/// The fleet session `id` on `agent` once `pred` holds for it.
fn wait_fleet_session(agent: &Agent, node: &str, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(FLEET_WAIT, || {
        fleet_list(agent, node)?
            .into_iter()
            .find(|s| s["session"] == id && pred(s))
    })
    .unwrap_or_else(|| {
        panic!(
            "fleet session {id} never as expected on {node}: {:#}\nstderr:\n{}",
            agent_json(agent, "/api/fleet/sessions?limit=1000").unwrap_or_default(),
            agent.stderr()
        )
    })
}

/// The sum of a metric's samples, or `None` when the agent does not export it.
fn metric(agent: &Agent, name: &str) -> Option<f64> {
    let text = agent.metrics();
    let samples: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!samples.is_empty()).then(|| samples.iter().sum())
}

fn wait_metric(agent: &Agent, name: &str, what: &str, pred: impl Fn(f64) -> bool) -> f64 {
    wait_metric_for(FLEET_WAIT, agent, name, what, pred)
}

fn wait_metric_for(
    timeout: Duration,
    agent: &Agent,
    name: &str,
    what: &str,
    pred: impl Fn(f64) -> bool,
) -> f64 {
    wait_for(timeout, || metric(agent, name).filter(|v| pred(*v))).unwrap_or_else(|| {
        panic!(
            "{name} never {what}: {:?}\n{}\nstderr:\n{}",
            metric(agent, name),
            agent.metrics(),
            agent.stderr()
        )
    })
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn has_peers() -> bool {
    prerequisites() && require_tools(&["redis-server", "redis-cli", "ip"])
}

#[test]
fn redis_helpers_start_restart_and_form_a_cluster() {
    if !require_tools(&["redis-server", "redis-cli"]) {
        return;
    }
    let mut redis = Redis::start().unwrap();
    redis.cli(&["SET", "probe", "1", "EX", "60"]).unwrap();
    assert_eq!(redis.keys().unwrap(), ["probe"]);
    let ttl = redis.pttl("probe").unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
    assert_eq!(redis.value_text("probe").unwrap().trim(), "1");
    let before = redis.pid().unwrap();
    redis.stop().unwrap();
    assert!(redis.cli(&["PING"]).is_err(), "answers after the kill");
    redis.restart().unwrap();
    assert_ne!(redis.pid().unwrap(), before);
    // Nothing survives a restart: no persistence.
    assert_eq!(redis.dbsize().unwrap(), 0);

    let cluster = RedisCluster::start(3).unwrap();
    assert_eq!(cluster.seeds().len(), 3);
    for i in 0..60 {
        cluster
            .cli(&["SET", &format!("k{i}"), "v", "EX", "60"])
            .unwrap();
    }
    let sizes: Vec<u64> = cluster.nodes.iter().map(|n| n.dbsize().unwrap()).collect();
    assert_eq!(sizes.iter().sum::<u64>(), 60, "{sizes:?}");
    assert!(
        sizes.iter().all(|s| *s > 0),
        "keys on every master: {sizes:?}"
    );
    let masters = cluster.cli(&["CLUSTER", "NODES"]).unwrap();
    assert_eq!(masters.matches("master").count(), 3, "{masters}");
}

#[test]
fn one_token_through_two_nodes_from_two_networks_is_unhealthy_on_both() {
    if !has_peers() {
        return;
    }
    let redis = Redis::start().unwrap();
    let w = World::new();
    let store = Store::Single(&redis);
    let a = w.node(0, &store, "");
    let b = w.node(1, &store, "");
    // The same traffic seen by agents without the fleet: each local view alone.
    let a_alone = w.node(0, &Store::None, "");
    let b_alone = w.node(1, &Store::None, "");

    let token = "fleet-store-shared-token-5e0c1a77d2";
    let auth = bearer(token);
    std::thread::scope(|s| {
        s.spawn(|| w.get(0, &[&auth], 6));
        s.spawn(|| w.get(1, &[&auth], 6));
    });
    let (net_a, net_b) = (w.network(0), w.network(1));

    // Alone, each node saw one network and six good requests: healthy, nothing to say.
    let mut id = None;
    for (node, net) in [(&a_alone, &net_a), (&b_alone, &net_b)] {
        let (s, d) = wait_session(&node.agent, net, "local view", |s, _| {
            s["requests"] == 6 && s["state"] == "healthy"
        });
        // Two more scoring passes: still healthy, score 100, no reasons.
        std::thread::sleep(Duration::from_secs(2));
        let d2 = agent_json(
            &node.agent,
            &format!("/api/sessions/{}", s["id"].as_str().unwrap()),
        )
        .unwrap();
        assert_eq!(d2["state"], "healthy", "{d2:#}");
        assert_eq!(d2["score"], 100, "{d2:#}");
        assert!(reasons(&d2).is_empty(), "{d2:#}");
        assert_eq!(texts(&d["networks"]), [net.as_str()], "{d:#}");
        let sid = s["id"].as_str().unwrap().to_string();
        assert!(sid.starts_with("tok_"), "{sid}");
        // Same secret: the same fingerprint on both nodes.
        assert_eq!(*id.get_or_insert(sid.clone()), sid);
        // No fleet: no fleet endpoint.
        let (code, body) = agent_request(&node.agent, "GET", "/api/fleet/sessions").unwrap();
        assert_eq!(code, 404, "{body}");
    }
    let id = id.unwrap();

    // With the fleet: one session, two nodes, two networks, unhealthy on both agents.
    let both_nodes = vec![NODE_A.to_string(), NODE_B.to_string()];
    let both_nets = vec![net_a.clone(), net_b.clone()];
    let families =
        texts(&agent_json(&a_alone.agent, &format!("/api/sessions/{id}")).unwrap()["agents"]);
    for (node, net) in [(&a, &net_a), (&b, &net_b)] {
        let f = wait_fleet_session(&node.agent, node.name, &id, |s| {
            s["requests"] == 12 && s["state"] == "unhealthy"
        });
        assert_eq!(texts(&f["nodes"]), both_nodes, "{f:#}");
        assert_eq!(texts(&f["networks"]), both_nets, "{f:#}");
        assert!(reasons(&f).contains(&"fleet_networks".to_string()), "{f:#}");
        assert_eq!(f["kind"], "bearer", "{f:#}");
        assert_eq!(f["direction"], "inbound", "{f:#}");
        assert_eq!(f["failures"], 0, "{f:#}");
        let answered: Vec<(&String, &Value)> = f["status"]
            .as_object()
            .map(|m| m.iter().filter(|(_, n)| **n != 0).collect())
            .unwrap_or_default();
        assert_eq!(answered, [(&"2xx".to_string(), &json!(12))], "{f:#}");
        assert!(f["score"].as_f64().is_some_and(|s| s < 50.0), "{f:#}");
        assert!(!f["last_seen"].is_null(), "{f:#}");
        assert_eq!(texts(&f["families"]), families, "{f:#}");

        // The local session is judged with the fleet's facts...
        let (s, d) = wait_session(&node.agent, net, "fleet-scored local view", |s, _| {
            s["id"] == id.as_str() && s["state"] == "unhealthy"
        });
        assert!(reasons(&s).contains(&"fleet_networks".to_string()), "{s:#}");
        // ...while its own facts stay this node's: six requests, one network.
        assert_eq!(s["requests"], 6, "{s:#}");
        assert_eq!(texts(&d["networks"]), [net.as_str()], "{d:#}");
        let fleet = &d["fleet"];
        assert_eq!(texts(&fleet["nodes"]), both_nodes, "{d:#}");
        assert_eq!(texts(&fleet["networks"]), both_nets, "{d:#}");
        assert_eq!(texts(&fleet["families"]), families, "{d:#}");
        assert_eq!(fleet["requests"], 12, "{d:#}");
        assert!(!d.to_string().contains(token));
    }

    // The CLI prints the same row.
    let cli = Command::new(agent_bin())
        .args(["sessions", "--fleet", "--socket"])
        .arg(&a.agent.socket)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let row = table
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("{table}"));
    for part in [
        NODE_A,
        NODE_B,
        &net_a,
        &net_b,
        "unhealthy",
        "fleet_networks",
    ] {
        assert!(row.contains(part), "{part} missing: {row}");
    }
    assert!(!table.contains(token), "{table}");

    // The agents without the fleet still say healthy.
    for node in [&a_alone, &b_alone] {
        let d = agent_json(&node.agent, &format!("/api/sessions/{id}")).unwrap();
        assert_eq!(d["state"], "healthy", "{d:#}");
    }
}

#[test]
fn a_freeze_through_one_agent_applies_on_the_other_within_a_second() {
    if !has_peers() {
        return;
    }
    let redis = Redis::start().unwrap();
    let w = World::new();
    let store = Store::Single(&redis);
    let a = w.node(0, &store, "");
    let mut b = w.node(1, &store, "");

    let auth = bearer("fleet-store-freeze-token-90b3f1c6e4");
    w.get(0, &[&auth], 3);
    w.get(1, &[&auth], 3);
    let (s, _) = wait_session(&a.agent, &w.network(0), "before the freeze", |s, _| {
        s["requests"] == 3
    });
    let id = s["id"].as_str().unwrap().to_string();
    wait_session(&b.agent, &w.network(1), "before the freeze", |s, _| {
        s["id"] == id.as_str() && s["requests"] == 3
    });
    assert_eq!(agent_json(&b.agent, "/api/frozen").unwrap(), json!([]));

    let (code, body) = agent_request(&a.agent, "PUT", &format!("/api/frozen/{id}")).unwrap();
    assert_eq!(code, 200, "{body}");
    let frozen_at = Instant::now();
    let on_b = wait_for(Duration::from_secs(1), || {
        let list = agent_json(&b.agent, "/api/frozen").ok()?;
        list.as_array()?
            .iter()
            .find(|f| f["fingerprint"] == id.as_str())
            .cloned()
    });
    let on_b = on_b.unwrap_or_else(|| {
        panic!(
            "B's /api/frozen after {:?}: {}\nB stderr:\n{}",
            frozen_at.elapsed(),
            agent_json(&b.agent, "/api/frozen").unwrap_or_default(),
            b.agent.stderr()
        )
    });
    assert!(
        on_b["id"].as_str().is_some_and(|f| f.starts_with("frz_")),
        "{on_b}"
    );

    // B's next use of the token is a frozen credential.
    w.get(1, &[&auth], 1);
    let (s, _) = wait_session(&b.agent, &w.network(1), "after the freeze", |s, _| {
        s["id"] == id.as_str() && s["requests"] == 4
    });
    wait_for(FLEET_WAIT, || {
        let d = agent_json(&b.agent, &format!("/api/sessions/{id}")).ok()?;
        (d["state"] == "unhealthy" && reasons(&d).contains(&"frozen_credential".to_string()))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("not frozen on B: {s:#}"));

    // B audits the freeze it received (B itself was never asked to freeze anything).
    let lines = audit_lines(&b.audit);
    let freezes: Vec<&Value> = lines.iter().filter(|l| l["action"] == "freeze").collect();
    assert_eq!(freezes.len(), 1, "{lines:#?}");
    assert!(freezes[0].to_string().contains(&id), "{:#}", freezes[0]);
    let a_freezes: Vec<Value> = audit_lines(&a.audit)
        .into_iter()
        .filter(|l| l["action"] == "freeze")
        .collect();
    assert_eq!(a_freezes.len(), 1, "{a_freezes:#?}");
    assert_eq!(a_freezes[0]["path"], format!("/api/frozen/{id}"));

    // B restarted (no state_dir: nothing local survives) loads the freeze from the store.
    b.restart();
    let frozen = wait_for(Duration::from_secs(5), || {
        let list = agent_json(&b.agent, "/api/frozen").ok()?;
        list.as_array()?
            .iter()
            .any(|f| f["fingerprint"] == id.as_str())
            .then_some(())
    });
    assert!(
        frozen.is_some(),
        "the freeze did not survive B's restart: {}",
        agent_json(&b.agent, "/api/frozen").unwrap_or_default()
    );
}

#[test]
fn a_store_outage_keeps_local_verdicts_and_both_agents_recover() {
    if !has_peers() {
        return;
    }
    let mut redis = Redis::start().unwrap();
    let w = World::new();
    let store = Store::Single(&redis);
    let a = w.node(0, &store, "");
    let b = w.node(1, &store, "");
    // Each node publishes the sessions used within the window: one request each first.
    let warm = bearer("fleet-store-warm-up-token-77c2e9d1b0");
    w.get(0, &[&warm], 1);
    w.get(1, &[&warm], 1);
    for node in [&a, &b] {
        wait_metric(&node.agent, "api_observer_fleet_up", "1", |v| v == 1.0);
        wait_metric(
            &node.agent,
            "api_observer_fleet_published_total",
            "above 0",
            |v| v > 0.0,
        );
    }
    // A freeze made before the outage (of the warm-up token, on A).
    let (warm_session, _) = wait_session(&a.agent, &w.network(0), "warm-up token", |s, _| {
        s["requests"] == 1
    });
    let warm_id = warm_session["id"].as_str().unwrap().to_string();
    let (code, body) = agent_request(&a.agent, "PUT", &format!("/api/frozen/{warm_id}")).unwrap();
    assert_eq!(code, 200, "{body}");
    let frozen_key = format!("{PREFIX}:frozen");
    wait_for(Duration::from_secs(5), || {
        (redis.cli(&["HLEN", &frozen_key]).ok()?.trim() == "2").then_some(())
    })
    .expect("the freeze is in the store");
    let errors_before: Vec<f64> = [&a, &b]
        .iter()
        .map(|n| metric(&n.agent, "api_observer_fleet_errors_total").unwrap_or(0.0))
        .collect();

    // Steady traffic through A (40 requests, 100 ms apart, a connection each) while the
    // store goes away under it.
    let steady = bearer("fleet-store-steady-token-4b1d8e02aa");
    let requests = 40;
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..requests {
                w.get(0, &[&steady], 1);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        std::thread::sleep(Duration::from_secs(1));
        redis.stop().unwrap();
    });
    for node in [&a, &b] {
        wait_metric(&node.agent, "api_observer_fleet_up", "0", |v| v == 0.0);
    }
    for (node, before) in [&a, &b].iter().zip(&errors_before) {
        wait_metric(
            &node.agent,
            "api_observer_fleet_errors_total",
            "rising",
            |v| v > *before,
        );
        let (code, body) = agent_request(&node.agent, "GET", "/api/fleet/sessions").unwrap();
        assert_eq!(code, 503, "store down: {body}");
    }

    // Judged during the outage, each on its own node: a JWT with alg none, accepted.
    let now = unix_now();
    let alg_none = |sub: &str| {
        jwt(
            &json!({"alg": "none", "typ": "JWT"}),
            &json!({"sub": sub, "role": "admin", "iat": now, "exp": now + 3600}),
            "",
        )
    };
    let none_a = bearer(&alg_none("fleet-outage-a"));
    let none_b = bearer(&alg_none("fleet-outage-b"));
    w.get(0, &[&none_a], 5);
    w.get(1, &[&none_b], 5);
    let mut judged = Vec::new();
    for (i, node) in [&a, &b].into_iter().enumerate() {
        let (s, _) = wait_session(&node.agent, &w.network(i), "alg none", |s, _| {
            s["requests"] == 5
                && s["state"] == "unhealthy"
                && reasons(s).contains(&"jwt_alg_none".to_string())
        });
        judged.push(s["id"].as_str().unwrap().to_string());
    }
    // No request of the steady token was lost while the store went away.
    wait_session(&a.agent, &w.network(0), "steady token", |s, _| {
        s["requests"] == requests
    });
    for node in [&a, &b] {
        assert_eq!(
            metric(&node.agent, "api_observer_fleet_up"),
            Some(0.0),
            "still down"
        );
    }

    // The store returns on the same port, empty: both agents reconnect and publish again,
    // what they judged meanwhile included.
    let published: Vec<f64> = [&a, &b]
        .iter()
        .map(|n| metric(&n.agent, "api_observer_fleet_published_total").unwrap())
        .collect();
    redis.restart().unwrap();
    for (i, node) in [&a, &b].into_iter().enumerate() {
        wait_metric_for(
            RECOVERY_WAIT,
            &node.agent,
            "api_observer_fleet_up",
            "back to 1",
            |v| v == 1.0,
        );
        wait_metric(
            &node.agent,
            "api_observer_fleet_published_total",
            "growing again",
            |v| v > published[i],
        );
        let f = wait_fleet_session(&node.agent, node.name, &judged[i], |s| s["requests"] == 5);
        assert_eq!(texts(&f["nodes"]), [node.name.to_string()], "{f:#}");
        assert!(reasons(&f).contains(&"jwt_alg_none".to_string()), "{f:#}");
        assert_eq!(f["state"], "unhealthy", "{f:#}");
    }
    assert!(
        redis.dbsize().unwrap() > 0,
        "nothing published after the restart"
    );
    // The store came back empty: the agents wrote their freezes back into it.
    let restored = wait_for(FLEET_WAIT, || {
        let fields = redis.cli(&["HKEYS", &frozen_key]).ok()?;
        (fields.lines().count() == 2).then_some(fields)
    })
    .unwrap_or_else(|| panic!("freezes not written back:\n{}", a.agent.stderr()));
    assert!(restored.contains(&warm_id), "{restored}");
    for node in [&a, &b] {
        assert!(
            !node.agent.stderr().contains("panicked"),
            "{}",
            node.agent.stderr()
        );
    }
}

#[test]
fn a_redis_cluster_store_spreads_sessions_and_propagates_freezes() {
    if !has_peers() {
        return;
    }
    let cluster = RedisCluster::start(3).unwrap();
    let w = World::new();
    let store = Store::Cluster(&cluster);
    let a = w.node(0, &store, "");
    let b = w.node(1, &store, "");
    for node in [&a, &b] {
        wait_metric(&node.agent, "api_observer_fleet_up", "1", |v| v == 1.0);
    }

    // Thirty tokens through A, one request each: thirty sessions of network A.
    let tokens: Vec<String> = (0..30)
        .map(|i| bearer(&format!("fleet-cluster-token-{i:02}-7d3e9b")))
        .collect();
    let url = format!("http://{}:{}/fleet", w.ns[0].host_ip, w.servers[0].port);
    let mut args: Vec<&str> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 {
            args.push("--next");
        }
        args.extend(["-o", "/dev/null", "-H", t, url.as_str()]);
    }
    w.ns[0].curl(&args).unwrap();
    let net_a = w.network(0);
    for node in [&a, &b] {
        wait_for(FLEET_WAIT, || {
            let ours = fleet_list(&node.agent, node.name)?
                .into_iter()
                .filter(|s| texts(&s["networks"]) == [net_a.clone()])
                .filter(|s| texts(&s["nodes"]) == [NODE_A.to_string()])
                .count();
            (ours == 30).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "30 sessions of {net_a} not in {}'s fleet view: {:#}\nstderr:\n{}",
                node.name,
                agent_json(&node.agent, "/api/fleet/sessions?limit=1000").unwrap_or_default(),
                node.agent.stderr()
            )
        });
    }
    let sizes: Vec<u64> = cluster.nodes.iter().map(|n| n.dbsize().unwrap()).collect();
    assert!(
        sizes.iter().all(|s| *s > 0),
        "keys on every master: {sizes:?}"
    );

    // A freeze through A reaches B through the cluster's pub/sub within a second.
    // The thirty token sessions (the network's view across credentials is listed too).
    let id = wait_for(FLEET_WAIT, || {
        let ours: Vec<String> = sessions_from(&a.agent, &net_a)
            .iter()
            .filter_map(|(s, _)| s["id"].as_str().filter(|id| id.starts_with("tok_")))
            .map(String::from)
            .collect();
        (ours.len() == 30).then(|| ours[0].clone())
    })
    .unwrap_or_else(|| panic!("A does not list 30 sessions of {net_a}"));
    let (code, body) = agent_request(&a.agent, "PUT", &format!("/api/frozen/{id}")).unwrap();
    assert_eq!(code, 200, "{body}");
    let seen = wait_for(Duration::from_secs(1), || {
        let list = agent_json(&b.agent, "/api/frozen").ok()?;
        list.as_array()?
            .iter()
            .any(|f| f["fingerprint"] == id.as_str())
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "B's /api/frozen: {}\nB stderr:\n{}",
        agent_json(&b.agent, "/api/frozen").unwrap_or_default(),
        b.agent.stderr()
    );
}

#[test]
fn only_the_lease_holder_exports_fleet_gauges() {
    if !has_peers() {
        return;
    }
    let redis = Redis::start().unwrap();
    let w = World::new();
    let store = Store::Single(&redis);
    let a = w.node(0, &store, "");
    let b = w.node(1, &store, "");
    let auth = bearer("fleet-store-lease-token-c2f7a90e51");
    w.get(0, &[&auth], 2);
    w.get(1, &[&auth], 2);
    let leader = wait_for(FLEET_WAIT, || {
        let flags: Vec<f64> = [&a, &b]
            .iter()
            .map(|n| metric(&n.agent, "api_observer_fleet_leader"))
            .collect::<Option<Vec<f64>>>()?;
        if flags == [1.0, 0.0] {
            Some(0)
        } else if flags == [0.0, 1.0] {
            Some(1)
        } else {
            None
        }
    })
    .unwrap_or_else(|| {
        panic!(
            "not exactly one leader: A {:?}, B {:?}",
            metric(&a.agent, "api_observer_fleet_leader"),
            metric(&b.agent, "api_observer_fleet_leader")
        )
    });
    let (holder, other) = if leader == 0 { (&a, &b) } else { (&b, &a) };
    // Both nodes published, so the holder counts two nodes and at least the shared
    // token's (unhealthy) session.
    wait_metric(&holder.agent, "api_observer_fleet_nodes", "2", |v| v == 2.0);
    wait_metric(
        &holder.agent,
        "api_observer_fleet_sessions{state=\"unhealthy\"}",
        "at least 1",
        |v| v >= 1.0,
    );
    // Several scoring passes later the leadership has not moved and the other agent
    // still exports no fleet-level gauge.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        metric(&holder.agent, "api_observer_fleet_leader"),
        Some(1.0)
    );
    assert_eq!(metric(&other.agent, "api_observer_fleet_leader"), Some(0.0));
    assert_eq!(
        metric(&other.agent, "api_observer_fleet_sessions"),
        None,
        "{}",
        other.agent.metrics()
    );
    assert_eq!(metric(&other.agent, "api_observer_fleet_nodes"), None);
}

#[test]
fn every_fleet_key_expires_and_no_raw_credential_is_stored() {
    if !has_peers() {
        return;
    }
    let redis = Redis::start().unwrap();
    let w = World::new();
    let store = Store::Single(&redis);
    let a = w.node(0, &store, "");
    let b = w.node(1, &store, "");
    let token = "fleet-store-secret-token-e81f0c3b9d";
    let auth = bearer(token);
    w.get(0, &[&auth], 3);
    w.get(1, &[&auth], 3);
    let (s, _) = wait_session(&a.agent, &w.network(0), "stored token", |s, _| {
        s["requests"] == 3
    });
    let id = s["id"].as_str().unwrap().to_string();
    wait_fleet_session(&a.agent, NODE_A, &id, |f| f["requests"] == 6);
    // A freeze, so the freeze hash is there too.
    let (code, body) = agent_request(&a.agent, "PUT", &format!("/api/frozen/{id}")).unwrap();
    assert_eq!(code, 200, "{body}");
    wait_for(Duration::from_secs(2), || {
        agent_json(&b.agent, "/api/frozen")
            .ok()?
            .to_string()
            .contains(&id)
            .then_some(())
    })
    .expect("the freeze reached B");

    let keys = redis.keys().unwrap();
    assert!(!keys.is_empty());
    let mut without_ttl = Vec::new();
    for key in &keys {
        assert!(key.starts_with(PREFIX), "key outside the prefix: {key}");
        let ttl = redis.pttl(key).unwrap();
        match ttl {
            -1 => without_ttl.push(key.clone()),
            // Gone since the scan (a lease moved, a session expired).
            -2 => {}
            ms => assert!(
                ms > 0 && ms <= IDLE_TTL_SECS * 1000,
                "{key}: PTTL {ms} ms beyond idle_ttl_secs {IDLE_TTL_SECS}"
            ),
        }
        let value = redis.value_text(key).unwrap();
        for secret in [token, w.ns[0].ns_ip.as_str(), w.ns[1].ns_ip.as_str()] {
            assert!(!key.contains(secret), "{key}");
            assert!(!value.contains(secret), "{key} holds {secret}: {value}");
        }
    }
    // Only the freeze hash is kept without expiry (freezes outlive sessions).
    assert_eq!(without_ttl.len(), 1, "keys without TTL: {without_ttl:?}");
    assert_eq!(
        redis.cli(&["TYPE", &without_ttl[0]]).unwrap().trim(),
        "hash",
        "{without_ttl:?}"
    );
    // The one freeze: by durable hash (`d:…`, matches across rotations and restarts)
    // and by this epoch's fingerprint (`f:<epoch>:<id>`).
    let fields = redis.cli(&["HKEYS", &without_ttl[0]]).unwrap();
    let mut fields: Vec<&str> = fields.lines().map(str::trim).collect();
    fields.sort();
    assert_eq!(fields.len(), 2, "{fields:?}");
    assert!(
        fields[0].starts_with("d:frz_") || fields[0].starts_with("d:"),
        "{fields:?}"
    );
    assert!(
        fields[1].starts_with("f:") && fields[1].ends_with(&format!(":{id}")),
        "{fields:?}"
    );
}

/// A store that cannot be reached, or refuses the agent's password, is a warning at start
/// and a metric, never a crash: the agent starts, judges locally and says so.
#[test]
fn an_unreachable_or_refusing_store_is_a_warning_and_a_metric() {
    if !has_peers() {
        return;
    }
    let dir = scratch_dir("fleet-bad-store");
    let redis = Redis::start().unwrap();
    redis
        .cli(&["CONFIG", "SET", "requirepass", "right-password-3c1e9a"])
        .unwrap();
    let wrong = dir.join("store.password");
    std::fs::write(&wrong, "wrong-password-0b7f44\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cases = [
        (
            "nothing listens",
            format!("endpoint = \"redis://127.0.0.1:{}\"\n", free_port()),
        ),
        (
            "wrong password",
            format!(
                "endpoint = \"{}\"\npassword_file = \"{}\"\n",
                redis.url(),
                wrong.display()
            ),
        ),
    ];
    for (what, fleet) in cases {
        let config = dir.join("observer.toml");
        std::fs::write(
            &config,
            format!("[scoring]\ninterval_secs = 1\n[fleet]\n{fleet}node = \"lonely\"\n"),
        )
        .unwrap();
        let agent = Agent::start(&["--config", config.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("{what}: the agent must start: {e}"));
        let port = free_port();
        let _server = python_api_server("127.0.0.1", port).unwrap();
        curl(&[
            "-o",
            "/dev/null",
            "-H",
            "Authorization: Bearer lonely-node-token-5d2a",
            &format!("http://127.0.0.1:{port}/hello"),
        ])
        .unwrap();
        // Judged locally all the same.
        agent.exchanges_for_port(port, 2);
        let local = wait_for(Duration::from_secs(10), || {
            let list = agent_json(&agent, "/api/sessions?direction=inbound").ok()?;
            (!list.as_array()?.is_empty()).then_some(list)
        });
        assert!(local.is_some(), "{what}: no local session");
        wait_metric(&agent, "api_observer_fleet_up", "0", |v| v == 0.0);
        wait_metric(&agent, "api_observer_fleet_errors_total", "above 0", |v| {
            v > 0.0
        });
        let (code, body) = agent_request(&agent, "GET", "/api/fleet/sessions").unwrap();
        assert_eq!(code, 503, "{what}: {body}");
        let stderr = agent.stderr();
        assert!(
            stderr.contains("WARN")
                && stderr.contains("judging locally until the fleet store answers"),
            "{what}: no warning:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{what}:\n{stderr}");
        assert!(
            !stderr.contains("wrong-password"),
            "{what}: the password was printed"
        );
    }
}
