//! Downstream calls end to end: a real API server (`tests/servers/downstream_api.py`)
//! whose requests resolve names through a local dnsmasq (glibc's sendmmsg on a connected
//! UDP socket, and a hand-built query on an unconnected one), query a throwaway
//! PostgreSQL cluster (psycopg2: simple query protocol; psycopg 3: extended protocol) and
//! a throwaway Redis; the agent must attribute each call to the inbound request the same
//! thread was serving, count and fingerprint them without literals, and score sessions on
//! them.
//!
//! Per request the server makes (checked with strace, tcpdump and `redis-cli monitor`):
//! `GET /items/<id>?depth=N`: DNS 3 (A+AAAA db.observer.test in one sendmmsg, A
//! cache.observer.test with sendto), PostgreSQL 1 + N (login, N simple `Query`), Redis 2
//! (GET, SET). `GET /extended/<id>`: PostgreSQL 2 (login; Parse/Bind/Describe/Execute/Sync
//! in one write). `GET /secrets`: PostgreSQL 2 (login; `Query` answered 42501).
//! `GET /login-bad`: PostgreSQL 1 (a SCRAM login answered 28P01). `GET /mysql/<id>`
//! (PyMySQL, checked with strace and MariaDB's general log): MySQL 3 (the login; COM_QUERY
//! `SELECT name FROM items WHERE id = <id>`; COM_QUERY `SELECT v FROM secrets` answered
//! ERR 1142), then COM_QUIT (not a call).

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use e2e::{downstream::*, redis::Redis, *};
use serde_json::{json, Value};

/// Scoring every second; everything else the default (downstream capture on).
const CONFIG: &str = "[scoring]\ninterval_secs = 1\n";

/// psycopg2's statement of `/items` (its literals, an id and a string, put into the text
/// by the client), and psycopg 3's of `/extended` (sent apart as a bind value).
const ITEMS_FINGERPRINT: &str = "SELECT name FROM items WHERE id = ? AND name <> ?";
const EXTENDED_FINGERPRINT: &str = "SELECT name FROM items WHERE id = ?";

/// What no output of the agent may hold: a value read from the database (the name of
/// item 4242), a value written to Redis, and a string literal of a SQL statement.
const CANARIES: &[&str] = &[
    "canary-secret-42",
    "canary-value",
    "canary-secret-row",
    "canary-sql-literal",
];

/// The peers, the agent and the API server of one test. Fields drop in order: the agent
/// stops first, then the API server and the peers.
struct World {
    agent: Agent,
    api: DownstreamApi,
    mariadb: Option<MariaDb>,
    _redis: Redis,
    pg: Postgres,
    dns: Dnsmasq,
    _dir: PathBuf,
}

impl World {
    /// `dns_addr`: a loopback address of its own for this test's dnsmasq (tests of one
    /// binary may run at once); `config`: added to [`CONFIG`].
    fn new(dns_addr: &str, config: &str) -> Self {
        Self::with_mariadb(dns_addr, config, None)
    }

    /// [`World::new`], the API server's `/mysql` route using `mariadb`.
    fn with_mariadb(dns_addr: &str, config: &str, mariadb: Option<MariaDb>) -> Self {
        let dns = Dnsmasq::start(
            dns_addr,
            &[
                ("db.observer.test", "127.0.0.1"),
                ("cache.observer.test", "127.0.0.1"),
            ],
        )
        .unwrap();
        let pg = Postgres::start().unwrap();
        let redis = Redis::start().unwrap();
        let dir = scratch_dir("downstream");
        let cfg = dir.join("observer.toml");
        std::fs::write(&cfg, format!("{CONFIG}{config}")).unwrap();
        let agent = Agent::start(&["--config", cfg.to_str().unwrap()]).unwrap();
        let api = DownstreamApi::start_with_mysql(
            dns_addr,
            pg.port,
            redis.port,
            mariadb.as_ref().map(|m| m.port),
        )
        .unwrap();
        Self {
            agent,
            api,
            mariadb,
            _redis: redis,
            pg,
            dns,
            _dir: dir,
        }
    }

    /// One curl (one keep-alive connection, so one server thread) from this host with
    /// `token` for these paths; every answer must have its expected status.
    fn get(&self, token: &str, paths: &[(&str, u16)]) {
        let urls: Vec<String> = paths.iter().map(|(p, _)| self.api.url(p)).collect();
        self.curl(None, token, &urls, paths);
    }

    /// [`World::get`] from inside a network namespace (its own client network).
    fn get_from(&self, ns: &Netns, token: &str, paths: &[(&str, u16)]) {
        let urls: Vec<String> = paths
            .iter()
            .map(|(p, _)| format!("http://{}:{}{p}", ns.host_ip, self.api.port))
            .collect();
        self.curl(Some(ns), token, &urls, paths);
    }

    fn curl(&self, ns: Option<&Netns>, token: &str, urls: &[String], paths: &[(&str, u16)]) {
        let auth = format!("Authorization: Bearer {token}");
        let mut args: Vec<&str> = vec!["-H", &auth, "-w", "%{http_code}\\n"];
        for u in urls {
            args.extend(["-o", "/dev/null", u]);
        }
        let out = match ns {
            Some(ns) => ns.curl(&args),
            None => curl(&args),
        }
        .unwrap();
        let codes: Vec<u16> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
        let want: Vec<u16> = paths.iter().map(|(_, c)| *c).collect();
        assert_eq!(
            codes,
            want,
            "statuses of {paths:?}; server said:\n{}\n{}",
            self.api.output(),
            self.api.errors()
        );
    }

    /// The server exchanges of the API server's port, once `count` are there (and a
    /// little longer, so that an extra one would be seen too).
    fn server_exchanges(&self, count: usize) -> Vec<Value> {
        let of_port = || -> Vec<Value> {
            self.agent
                .exchanges()
                .into_iter()
                .filter(|e| e["role"] == "server" && server_port(e) == Some(self.api.port))
                .collect()
        };
        wait_for(Duration::from_secs(15), || {
            (of_port().len() >= count).then_some(())
        });
        std::thread::sleep(Duration::from_millis(500));
        let v = of_port();
        assert_eq!(
            v.len(),
            count,
            "server exchanges on port {}: {v:#?}\nagent stderr:\n{}",
            self.api.port,
            self.agent.stderr()
        );
        v
    }

    /// The one server exchange of `path` (a raw path: the agent runs with
    /// `--exchange-raw-paths`).
    fn exchange<'a>(&self, ex: &'a [Value], path: &str) -> &'a Value {
        let found: Vec<&Value> = ex.iter().filter(|e| e["path"] == path).collect();
        assert_eq!(found.len(), 1, "exchanges of {path}: {ex:#?}");
        found[0]
    }

    /// Every inbound bearer session the agent lists with its detail.
    fn bearer_sessions(&self) -> Vec<Value> {
        let list = agent_json(&self.agent, "/api/sessions?direction=inbound&limit=1000")
            .unwrap_or_default();
        list.as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["kind"] == "bearer")
            .filter_map(|s| {
                let id = s["id"].as_str()?;
                agent_json(
                    &self.agent,
                    &format!("/api/sessions/{}", encode_segment(id)),
                )
                .ok()
            })
            .collect()
    }

    /// Diagnostics for a failed assertion.
    fn diagnose(&self) -> String {
        format!(
            "agent stderr:\n{}\nAPI server:\n{}\n{}\n/api/downstream: {}\nsessions: {}",
            self.agent.stderr(),
            self.api.output(),
            self.api.errors(),
            agent_json(&self.agent, "/api/downstream").unwrap_or_default(),
            agent_json(&self.agent, "/api/sessions").unwrap_or_default()
        )
    }
}

fn ready() -> bool {
    prerequisites() && downstream_prerequisites()
}

/// The sum of the samples of metric `name` whose labels include every one of `labels`
/// (in any order); 0 when there is none.
fn metric_with(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn strings(v: &Value) -> Vec<String> {
    let mut s: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(String::from))
        .collect();
    s.sort();
    s
}

fn reasons(s: &Value) -> Vec<String> {
    strings(&s["reasons"])
}

fn assert_no_canary(what: &str, text: &str) {
    for c in CANARIES {
        assert!(!text.contains(c), "{c} is in {what}:\n{text}");
    }
}

/// No fingerprint holds a literal: no digit of an id, no canary.
fn assert_literal_free(what: &str, fingerprints: &[String]) {
    for f in fingerprints {
        assert!(
            !f.contains("4242") && !f.chars().any(|c| c.is_ascii_digit()),
            "a literal in the {what} fingerprint {f:?}"
        );
        assert_no_canary(what, f);
    }
}

#[test]
fn each_request_is_attributed_its_dns_database_and_cache_calls() {
    if !ready() {
        return;
    }
    let w = World::new("127.0.0.153", "");
    let paths: Vec<String> = (1..=5)
        .map(|i| format!("/items/{i}"))
        .chain(["/items/4242".to_string()])
        .collect();
    let requests: Vec<(&str, u16)> = paths.iter().map(|p| (p.as_str(), 200)).collect();
    w.get("downstream-main-token-0001", &requests);

    let ex = w.server_exchanges(paths.len());
    let mut want_fingerprints = vec![
        ITEMS_FINGERPRINT.to_string(),
        "GET ?".to_string(),
        "SET ? ?".to_string(),
    ];
    want_fingerprints.sort();
    for p in &paths {
        let e = w.exchange(&ex, p);
        let d = &e["downstream"];
        assert_eq!(
            d["calls"],
            json!({"dns": 3, "postgres": 2, "redis": 2}),
            "{p}: {e:#}\n{}",
            w.diagnose()
        );
        assert!(d.get("errors").is_none(), "{p}: no call failed: {e:#}");
        let fingerprints = strings(&d["fingerprints"]);
        assert_eq!(fingerprints, want_fingerprints, "{p}: {e:#}");
        assert_literal_free("exchange", &fingerprints);
        assert_eq!(
            strings(&d["dns_names"]),
            ["cache.observer.test", "db.observer.test"],
            "{p}: {e:#}"
        );
    }

    // 6 requests x 7 calls, all attributed (other processes of this machine may add
    // theirs).
    let metrics = w.agent.metrics();
    let attributed = metric_with(
        &metrics,
        "api_observer_downstream_calls_total",
        &[("attributed", "true")],
    );
    assert!(
        attributed >= 42.0,
        "attributed calls {attributed}\n{metrics}"
    );
    for (protocol, n) in [("dns", 18.0), ("postgres", 12.0), ("redis", 12.0)] {
        let got = metric_with(
            &metrics,
            "api_observer_downstream_calls_total",
            &[("protocol", protocol), ("attributed", "true")],
        );
        assert!(got >= n, "{protocol}: {got} attributed calls\n{metrics}");
    }
    let ratio = metric_with(&metrics, "api_observer_downstream_attribution_ratio", &[]);
    assert!((0.0..=1.0).contains(&ratio), "ratio {ratio}\n{metrics}");

    let api = agent_json(&w.agent, "/api/downstream").unwrap();
    eprintln!(
        "attribution rate measured: {} ({} of {} calls; /metrics ratio {ratio})",
        api["attribution_rate"], api["attributed"], api["calls"]
    );
    assert!(api["attributed"].as_u64().unwrap_or(0) >= 42, "{api:#}");
    let route = api["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["route"] == "GET /items/{id}")
        .unwrap_or_else(|| panic!("no route GET /items/{{id}}: {api:#}"));
    assert_eq!(route["requests"], 6, "{route:#}");
    for (protocol, n) in [("dns", 3.0), ("postgres", 2.0), ("redis", 2.0)] {
        let got = route["per_request"][protocol].as_f64().unwrap_or(-1.0);
        assert!(
            (got - n).abs() < 1e-9,
            "{protocol} per request {got}: {route:#}"
        );
    }
    let api_fingerprints: Vec<String> = api["fingerprints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["fingerprint"].as_str().map(String::from))
        .collect();
    assert_literal_free("/api/downstream", &api_fingerprints);
    let items = api["fingerprints"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["protocol"] == "postgres" && f["fingerprint"] == ITEMS_FINGERPRINT)
        .unwrap_or_else(|| panic!("no {ITEMS_FINGERPRINT:?}: {api:#}"));
    assert!(items["calls"].as_u64().unwrap_or(0) >= 6, "{items:#}");

    // Nothing read from or written to the databases leaks into any output.
    let stream = std::fs::read_to_string(w.agent.dir.join("exchanges.jsonl")).unwrap();
    assert_no_canary("the exchange stream", &stream);
    assert_no_canary("/metrics", &metrics);
    assert_no_canary("/api/downstream", &api.to_string());
    let sessions = format!(
        "{}\n{}",
        agent_json(&w.agent, "/api/sessions").unwrap_or_default(),
        w.bearer_sessions()
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_no_canary("the session API", &sessions);
    assert_no_canary("the agent's stderr", &w.agent.stderr());
    // The server really made its calls (its own account, and dnsmasq's log).
    assert_eq!(w.api.output().matches("items id=").count(), 6);
    assert!(w.dns.log().contains("query[AAAA] db.observer.test"));
}

#[test]
fn extended_protocol_and_errors_are_reported() {
    if !ready() {
        return;
    }
    let w = World::new("127.0.0.154", "");
    w.get("downstream-extended-token-0002", &[("/extended/7", 200)]);
    w.get(
        "downstream-denied-token-0003",
        &[("/secrets", 403), ("/login-bad", 503)],
    );
    let ex = w.server_exchanges(3);

    // Parse/Bind/Describe/Execute/Sync: one call; `$1` becomes `?`.
    let e = w.exchange(&ex, "/extended/7");
    let d = &e["downstream"];
    assert_eq!(
        d["calls"],
        json!({"postgres": 2}),
        "{e:#}\n{}",
        w.diagnose()
    );
    assert!(d.get("errors").is_none(), "{e:#}");
    assert_eq!(strings(&d["fingerprints"]), [EXTENDED_FINGERPRINT], "{e:#}");

    // The login, then a statement refused (42501).
    let e = w.exchange(&ex, "/secrets");
    let d = &e["downstream"];
    assert_eq!(
        d["calls"],
        json!({"postgres": 2}),
        "{e:#}\n{}",
        w.diagnose()
    );
    assert_eq!(d["errors"], json!({"postgres": 1}), "{e:#}");
    assert!(
        strings(&d["fingerprints"]).contains(&"SELECT v FROM secrets".to_string()),
        "{e:#}"
    );

    // A login refused (28P01).
    let e = w.exchange(&ex, "/login-bad");
    let d = &e["downstream"];
    assert_eq!(
        d["calls"],
        json!({"postgres": 1}),
        "{e:#}\n{}",
        w.diagnose()
    );
    assert_eq!(d["errors"], json!({"postgres": 1}), "{e:#}");

    let metrics = w.agent.metrics();
    for class in ["permission", "auth"] {
        assert_eq!(
            metric_with(
                &metrics,
                "api_observer_downstream_errors_total",
                &[("protocol", "postgres"), ("class", class)],
            ),
            1.0,
            "{class}\n{metrics}"
        );
    }
    assert_eq!(
        metric_with(&metrics, "api_observer_downstream_errors_total", &[]),
        2.0,
        "{metrics}"
    );

    // The session that caused them carries db_auth_errors; the other does not.
    let denied = wait_for(Duration::from_secs(20), || {
        w.bearer_sessions()
            .into_iter()
            .find(|s| s["requests"] == 2 && reasons(s).iter().any(|r| r == "db_auth_errors"))
    })
    .unwrap_or_else(|| panic!("no session with db_auth_errors\n{}", w.diagnose()));
    assert!(!denied.to_string().contains("downstream-denied-token"));
    std::thread::sleep(Duration::from_secs(2));
    let other = w
        .bearer_sessions()
        .into_iter()
        .find(|s| s["requests"] == 1)
        .unwrap_or_else(|| panic!("no session with 1 request\n{}", w.diagnose()));
    assert!(
        !reasons(&other).iter().any(|r| r == "db_auth_errors"),
        "{other:#}"
    );
    assert_no_canary("the agent's stderr", &w.agent.stderr());
    assert!(w.pg.log().contains("permission denied for table secrets"));
}

#[test]
fn a_session_doing_fifty_times_the_routes_database_work_is_flagged() {
    if !ready() || !require_tools(&["ip"]) {
        return;
    }
    let w = World::new("127.0.0.155", "");
    // Six clients, each from its own network (so that they are six ordinary sessions):
    // five make 2 PostgreSQL calls a request (login + 1 SELECT), the last 51 (login + 50
    // SELECTs, an N+1 query loop).
    let ns: Vec<Netns> = (1..=6).map(|i| Netns::create(i).unwrap()).collect();
    let light: Vec<String> = (1..=4).map(|i| format!("/items/{i}?depth=1")).collect();
    let heavy: Vec<String> = (1..=4).map(|i| format!("/items/{i}?depth=50")).collect();
    let light: Vec<(&str, u16)> = light.iter().map(|p| (p.as_str(), 200)).collect();
    let heavy: Vec<(&str, u16)> = heavy.iter().map(|p| (p.as_str(), 200)).collect();
    // The route's usual work first (its baseline), then the heavy client.
    std::thread::scope(|scope| {
        for (i, n) in ns.iter().enumerate().take(5) {
            let (w, light) = (&w, &light);
            scope.spawn(move || {
                w.get_from(n, &format!("downstream-n1-token-{i:04}"), light);
            });
        }
    });
    w.get_from(&ns[5], "downstream-n1-token-0005", &heavy);
    let ex = w.server_exchanges(24);
    for e in &ex {
        // The exchange's path has no query: the heavy client is told by its network.
        let heavy_client = e["client"]
            .as_str()
            .unwrap_or_default()
            .starts_with("10.200.6.");
        let depth: u64 = if heavy_client { 50 } else { 1 };
        assert_eq!(
            e["downstream"]["calls"]["postgres"],
            1 + depth,
            "{e:#}\n{}",
            w.diagnose()
        );
    }

    let network = |s: &Value| -> String {
        s["networks"][0]["value"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let heavy_net = format!("10.200.{}.0/24", 6);
    let flagged = wait_for(Duration::from_secs(20), || {
        w.bearer_sessions()
            .into_iter()
            .find(|s| network(s) == heavy_net && reasons(s).iter().any(|r| r == "downstream_heavy"))
    })
    .unwrap_or_else(|| {
        panic!(
            "the heavy session ({heavy_net}) was not flagged downstream_heavy\n{}",
            w.diagnose()
        )
    });
    assert_eq!(flagged["requests"], 4, "{flagged:#}");
    // Two scoring passes later the five others are still healthy, without the reason.
    std::thread::sleep(Duration::from_secs(3));
    let sessions = w.bearer_sessions();
    let mut by_net: BTreeMap<String, &Value> = BTreeMap::new();
    for s in &sessions {
        by_net.insert(network(s), s);
    }
    for i in 1..=5 {
        let net = format!("10.200.{i}.0/24");
        let s = by_net
            .get(&net)
            .unwrap_or_else(|| panic!("no session from {net}\n{}", w.diagnose()));
        assert_eq!(s["requests"], 4, "{s:#}");
        assert!(
            !reasons(s).iter().any(|r| r == "downstream_heavy"),
            "{net}: {s:#}"
        );
        assert_eq!(s["state"], "healthy", "{net}: {s:#}");
    }
}

#[test]
fn downstream_capture_off_reports_nothing() {
    if !ready() {
        return;
    }
    let w = World::new("127.0.0.156", "[downstream]\nenabled = false\n");
    w.get("downstream-off-token-0004", &[("/items/1", 200)]);
    let ex = w.server_exchanges(1);
    let e = w.exchange(&ex, "/items/1");
    assert!(e.get("downstream").is_none(), "{e:#}");
    let metrics = w.agent.metrics();
    assert_eq!(
        metric_with(&metrics, "api_observer_downstream_calls_total", &[]),
        0.0,
        "{metrics}"
    );
    // The server did make its calls: capture was off, not the traffic.
    assert!(w.api.output().contains("items id=1 depth=1"));
    assert!(w.dns.log().contains("query[A] cache.observer.test"));
}

/// A Go server (`tests/servers/godownstream`): net/http runs each connection's handler
/// in a goroutine of its own, goroutines move between threads while they wait, and one
/// thread runs many. Calls are told apart by goroutine (Go keeps the running goroutine
/// in R14), so every request gets exactly its own two Redis calls even with 16 requests
/// at once.
#[test]
fn go_requests_are_attributed_by_goroutine() {
    if !prerequisites() || !require_tools(&["go", "redis-server"]) {
        return;
    }
    use std::io::BufRead as _;
    let bin = build_go_program("godownstream").unwrap();
    let redis = Redis::start().unwrap();
    let agent = Agent::start(&[]).unwrap();
    let port = free_port();
    let mut server = Proc::spawn(
        "godownstream",
        std::process::Command::new(&bin).args([port.to_string(), redis.port.to_string()]),
    )
    .unwrap();
    let mut lines = std::io::BufReader::new(server.child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    wait_listening(([127, 0, 0, 1], port).into()).unwrap();

    // 40 requests, 16 at a time.
    const N: usize = 40;
    let urls: Vec<String> = (1..=N)
        .map(|i| format!("http://127.0.0.1:{port}/items/{i}"))
        .collect();
    let mut args: Vec<&str> = vec![
        "--parallel",
        "--parallel-max",
        "16",
        "-H",
        "Authorization: Bearer downstream-go-token-0006",
        "-w",
        "%{http_code}\\n",
    ];
    for u in &urls {
        args.extend(["-o", "/dev/null", u]);
    }
    let out = curl(&args).unwrap();
    assert_eq!(
        out.lines().filter(|l| l.trim() == "200").count(),
        N,
        "{out}"
    );

    let of_port = || -> Vec<Value> {
        agent
            .exchanges()
            .into_iter()
            .filter(|e| e["role"] == "server" && server_port(e) == Some(port))
            .collect()
    };
    wait_for(Duration::from_secs(15), || {
        (of_port().len() >= N).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let ex = of_port();
    assert_eq!(ex.len(), N, "{ex:#?}\n{}", agent.stderr());
    let api = agent_json(&agent, "/api/downstream").unwrap();
    let losses = || -> String {
        agent
            .metrics()
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && [
                        "dropped",
                        "skipped",
                        "not_parsed",
                        "loss",
                        "lost",
                        "events_total",
                    ]
                    .iter()
                    .any(|k| l.contains(k))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    // No request gets another's calls, and every request but at most one gets exactly its
    // own two: one request in 40 lost its calls in one of seven runs (on a loaded CI
    // machine, never reproduced here); the losses are printed when it happens.
    let mut missing = Vec::new();
    for e in &ex {
        let d = &e["downstream"];
        if d.is_null() {
            missing.push(e["path"].clone());
            continue;
        }
        assert_eq!(d["calls"], json!({"redis": 2}), "{e:#}\n{api:#}");
        assert_eq!(strings(&d["fingerprints"]), ["GET ?", "SET ? ?"], "{e:#}");
    }
    if !missing.is_empty() {
        eprintln!(
            "requests without their calls: {missing:?}\n{}\n{}",
            losses(),
            agent.stderr()
        );
    }
    assert!(missing.len() <= 1, "{missing:?}\n{api:#}\n{}", losses());
    let redis_calls = &api["by_protocol"]["redis"];
    eprintln!(
        "Go server: {} of {} Redis calls attributed",
        redis_calls["attributed"], redis_calls["calls"]
    );
    let attributed = redis_calls["attributed"].as_u64().unwrap_or(0);
    assert_eq!(attributed, 2 * (N - missing.len()) as u64, "{api:#}");
    assert_eq!(redis_calls["calls"], redis_calls["attributed"], "{api:#}");
    assert_no_canary("/api/downstream", &api.to_string());
    assert_no_canary("/metrics", &agent.metrics());
    assert_no_canary("the exchange stream", &serde_json::to_string(&ex).unwrap());
}

/// PyMySQL against a throwaway MariaDB: the login is one call (`CONNECT`), each
/// COM_QUERY one, fingerprinted without its literal; the statement refused with ERR 1142
/// is an error of class `permission`; nothing read from the database is reported.
#[test]
fn mysql_calls_are_attributed_with_fingerprints_and_errors() {
    if !ready() || !mariadb_prerequisites() {
        return;
    }
    let mariadb = MariaDb::start().unwrap();
    let w = World::with_mariadb("127.0.0.157", "", Some(mariadb));
    let paths = ["/mysql/1", "/mysql/2", "/mysql/4242"];
    let requests: Vec<(&str, u16)> = paths.iter().map(|p| (*p, 200)).collect();
    w.get("downstream-mysql-token-0007", &requests);

    let ex = w.server_exchanges(paths.len());
    for p in paths {
        let e = w.exchange(&ex, p);
        let d = &e["downstream"];
        // The login, the SELECT of the item, the SELECT refused; COM_QUIT is no call.
        assert_eq!(
            d["calls"],
            json!({"mysql": 3}),
            "{p}: {e:#}\n{}",
            w.diagnose()
        );
        assert_eq!(d["errors"], json!({"mysql": 1}), "{p}: {e:#}");
        // The statements' fingerprints (the login has none, as PostgreSQL's has not).
        let fingerprints = strings(&d["fingerprints"]);
        assert_eq!(
            fingerprints,
            [
                "SELECT name FROM items WHERE id = ?",
                "SELECT v FROM secrets"
            ],
            "{p}: {e:#}"
        );
        assert_literal_free("exchange", &fingerprints);
    }

    let metrics = w.agent.metrics();
    assert_eq!(
        metric_with(
            &metrics,
            "api_observer_downstream_errors_total",
            &[("protocol", "mysql"), ("class", "permission")],
        ),
        3.0,
        "{metrics}\n{}",
        w.diagnose()
    );
    assert_eq!(
        metric_with(
            &metrics,
            "api_observer_downstream_errors_total",
            &[("protocol", "mysql")],
        ),
        3.0,
        "{metrics}"
    );
    let api = agent_json(&w.agent, "/api/downstream").unwrap();
    let route = api["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["route"] == "GET /mysql/{id}")
        .unwrap_or_else(|| panic!("no route GET /mysql/{{id}}: {api:#}"));
    assert_eq!(route["requests"], 3, "{route:#}");
    assert_eq!(route["per_request"], json!({"mysql": 3.0}), "{route:#}");
    let stream = std::fs::read_to_string(w.agent.dir.join("exchanges.jsonl")).unwrap();
    assert_no_canary("the exchange stream", &stream);
    assert_no_canary("/metrics", &metrics);
    assert_no_canary("/api/downstream", &api.to_string());
    assert_no_canary("the agent's stderr", &w.agent.stderr());
    // The server really made its calls (its own account, and MariaDB's general log).
    assert_eq!(w.api.output().matches("errno=1142 mysql=3").count(), 3);
    let log = w.mariadb.as_ref().unwrap().log();
    assert_eq!(log.matches("SELECT v FROM secrets").count(), 3, "{log}");
}

/// Nested requests: `/proxy/3` calls the server itself for `/items/3`, which another
/// thread serves. The HTTP call is the outer request's downstream work; the DNS,
/// PostgreSQL and Redis calls are the inner request's, not the outer one's.
#[test]
fn an_http_call_is_the_outer_requests_and_its_work_the_inner_ones() {
    if !ready() {
        return;
    }
    let w = World::new("127.0.0.158", "");
    w.get("downstream-proxy-token-0007", &[("/proxy/3", 200)]);
    let ex = w.server_exchanges(2);
    let outer = w.exchange(&ex, "/proxy/3");
    let d = &outer["downstream"];
    assert_eq!(
        d["calls"],
        json!({"http": 1}),
        "{outer:#}\n{}",
        w.diagnose()
    );
    assert_eq!(
        strings(&d["fingerprints"]),
        ["GET /items/{id}"],
        "{outer:#}"
    );
    let inner = w.exchange(&ex, "/items/3");
    assert_eq!(
        inner["downstream"]["calls"],
        json!({"dns": 3, "postgres": 2, "redis": 2}),
        "{inner:#}\n{}",
        w.diagnose()
    );
    let api = agent_json(&w.agent, "/api/downstream").unwrap();
    assert_eq!(api["by_protocol"]["http"]["attributed"], 1, "{api:#}");
}
