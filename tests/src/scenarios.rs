//! Labelled verdict scenarios: realistic healthy traffic (false-positive guards) and
//! abusive traffic, each played by clients in their own network namespaces against the
//! test API server while a fresh agent with the DEFAULT scoring calibration watches
//! (only `[scoring] interval_secs = 1` and an alerts file are set).
//!
//! The predicted state of a scenario is the worst state among every inbound session and
//! view (`network`, `route`) the agent lists after the traffic. `tests/tests/verdicts.rs`
//! asserts each scenario; `cargo xtask bench verdicts` runs them all and prints a
//! confusion matrix.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::{
    agent_json, agent_request, encode_segment, free_port, python_api_server, scratch_dir, wait_for,
    workspace_root, Agent, Netns, Proc,
};

/// The agent's configuration for every scenario: defaults, scored every second.
const CONFIG: &str = r#"
[output]
alerts_jsonl = "ALERTS"
[scoring]
interval_secs = 1
"#;

/// Namespaces of the suite are `10.200.<NS_BASE + i>.2` (away from the other e2e files,
/// which use 10.200.1-3).
pub const NS_BASE: u8 = 41;
/// How long an abusive scenario waits, after its traffic, for the expected verdict.
pub const ABUSE_WAIT: Duration = Duration::from_secs(20);
/// How long a healthy scenario waits after its traffic (about four scoring passes).
pub const HEALTHY_SETTLE: Duration = Duration::from_millis(4500);

/// A verdict, ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    Healthy,
    Suspicious,
    Unhealthy,
}

impl State {
    pub const ALL: [Self; 3] = [Self::Healthy, Self::Suspicious, Self::Unhealthy];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "healthy" => Some(Self::Healthy),
            "suspicious" => Some(Self::Suspicious),
            "unhealthy" => Some(Self::Unhealthy),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Suspicious => "suspicious",
            Self::Unhealthy => "unhealthy",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One labelled scenario.
pub struct Scenario {
    pub name: &'static str,
    pub expected: State,
    /// The kind of session or view that must carry `expected_reasons` in the expected
    /// state (`bearer`, `basic`, `api_key`, `cookie`, `network`, `route`); for a healthy
    /// scenario, the kind that must be listed (proof that the traffic was seen). `None`:
    /// any kind.
    pub carrier: Option<&'static str>,
    pub expected_reasons: &'static [&'static str],
    /// A finding `GET /api/findings` must list.
    pub expected_finding: Option<&'static str>,
    pub namespaces: u8,
    pub play: fn(&World) -> Result<()>,
}

/// An inbound session or view as listed by the agent.
#[derive(Clone, Debug)]
pub struct Seen {
    pub id: String,
    pub kind: String,
    pub state: State,
    pub score: u64,
    pub reasons: Vec<String>,
    pub requests: u64,
    pub fingerprint: Option<String>,
}

impl Seen {
    fn from_json(v: &Value) -> Result<Self> {
        let state = v["state"].as_str().unwrap_or_default();
        Ok(Self {
            id: v["id"].as_str().unwrap_or_default().to_string(),
            kind: v["kind"].as_str().unwrap_or_default().to_string(),
            state: State::parse(state).with_context(|| format!("unknown state in {v}"))?,
            score: v["score"].as_u64().unwrap_or_default(),
            reasons: v["reasons"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|c| c.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            requests: v["requests"].as_u64().unwrap_or_default(),
            fingerprint: v["fingerprint"].as_str().map(String::from),
        })
    }
}

/// What the agent said after a scenario's traffic.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The worst state among the listed inbound sessions and views (healthy when none).
    pub predicted: State,
    pub sessions: Vec<Seen>,
    /// Lines of the alerts file.
    pub alerts: Vec<Value>,
    /// `GET /api/findings`; `None` when the agent has no such endpoint (or it failed).
    pub findings: Option<Vec<Value>>,
    pub traffic: Duration,
    pub waited: Duration,
    /// Sessions the agent listed that hold other traffic of the host (not judged).
    pub foreign_sessions: usize,
}

impl Outcome {
    fn new(sessions: Vec<Seen>, alerts: Vec<Value>, findings: Option<Vec<Value>>) -> Self {
        let predicted = sessions
            .iter()
            .map(|s| s.state)
            .max()
            .unwrap_or(State::Healthy);
        Self {
            predicted,
            sessions,
            alerts,
            findings,
            traffic: Duration::ZERO,
            waited: Duration::ZERO,
            foreign_sessions: 0,
        }
    }

    /// Every way this outcome differs from what the scenario expects (empty: it passes).
    pub fn problems(&self, s: &Scenario) -> Vec<String> {
        let mut out = Vec::new();
        if self.predicted != s.expected {
            out.push(format!(
                "predicted {}, expected {}",
                self.predicted, s.expected
            ));
        }
        let of_kind: Vec<&Seen> = self
            .sessions
            .iter()
            .filter(|x| s.carrier.is_none_or(|k| x.kind == k))
            .collect();
        let kind = s.carrier.unwrap_or("any");
        if of_kind.is_empty() {
            out.push(format!("no {kind} session or view listed"));
        } else if !s.expected_reasons.is_empty()
            && !of_kind.iter().any(|x| {
                x.state == s.expected
                    && s.expected_reasons
                        .iter()
                        .all(|r| x.reasons.iter().any(|c| c == r))
            })
        {
            out.push(format!(
                "no {kind} session/view is {} with reasons {:?}",
                s.expected, s.expected_reasons
            ));
        }
        if s.expected == State::Healthy && !self.alerts.is_empty() {
            out.push(format!(
                "{} alert line(s) for a healthy scenario",
                self.alerts.len()
            ));
        }
        if let Some(f) = s.expected_finding {
            match &self.findings {
                None => out.push(format!(
                    "no /api/findings endpoint (expected a {f} finding)"
                )),
                Some(list) if !list.iter().any(|x| x["finding"] == f) => {
                    out.push(format!("no {f} finding in /api/findings"))
                }
                Some(_) => {}
            }
        }
        out
    }

    /// The sessions and views that are not healthy or carry reasons, grouped: `3x bearer
    /// suspicious(75) [plaintext_credential]`; plus how many are healthy without reasons.
    pub fn reasons_summary(&self) -> String {
        let mut groups: BTreeMap<(State, String, u64, Vec<String>), usize> = BTreeMap::new();
        let mut clean = 0;
        for x in &self.sessions {
            if x.state == State::Healthy && x.reasons.is_empty() {
                clean += 1;
                continue;
            }
            let mut reasons = x.reasons.clone();
            reasons.sort();
            *groups
                .entry((x.state, x.kind.clone(), x.score, reasons))
                .or_default() += 1;
        }
        let mut parts: Vec<String> = groups
            .into_iter()
            .rev()
            .map(|((state, kind, score, reasons), n)| {
                let n = if n > 1 {
                    format!("{n}x ")
                } else {
                    String::new()
                };
                format!("{n}{kind} {state}({score}) [{}]", reasons.join(","))
            })
            .collect();
        if clean > 0 {
            parts.push(format!("{clean} healthy without reasons"));
        }
        if parts.is_empty() {
            parts.push("nothing listed".into());
        }
        parts.join("; ")
    }

    pub fn findings_summary(&self) -> String {
        match &self.findings {
            None => "n/a".into(),
            Some(list) => {
                let mut names: Vec<&str> =
                    list.iter().filter_map(|f| f["finding"].as_str()).collect();
                names.sort();
                names.dedup();
                if names.is_empty() {
                    "-".into()
                } else {
                    names.join(",")
                }
            }
        }
    }
}

/// A fresh agent (config above), the test API server on 0.0.0.0, and N namespaces.
pub struct World {
    pub agent: Agent,
    _server: Proc,
    pub port: u16,
    pub ns: Vec<Netns>,
    pub alerts: PathBuf,
    dir: PathBuf,
    plans: AtomicU32,
}

impl World {
    pub fn new(namespaces: u8) -> Result<Self> {
        let dir = scratch_dir("verdicts");
        let alerts = dir.join("alerts.jsonl");
        let config = dir.join("observer.toml");
        let alerts_str = alerts.to_str().context("scratch path is not UTF-8")?;
        std::fs::write(&config, CONFIG.replace("ALERTS", alerts_str))?;
        let agent = Agent::start(&["--config", config.to_str().unwrap_or_default()])?;
        let port = free_port();
        let server = python_api_server("0.0.0.0", port)?;
        let ns = (0..namespaces)
            .map(|i| Netns::create(NS_BASE + i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            agent,
            _server: server,
            port,
            ns,
            alerts,
            dir,
            plans: AtomicU32::new(0),
        })
    }

    fn client(&self, ns: usize, plan: &Plan) -> Result<(Command, usize)> {
        let netns = self.ns.get(ns).context("no such namespace")?;
        let file = self.dir.join(format!(
            "plan-{}.json",
            self.plans.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&file, plan.to_json(&netns.host_ip, self.port).to_string())?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns.name, "python3"])
            .arg(workspace_root().join("tests/servers/client.py"))
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok((cmd, plan.len()))
    }

    /// Play a plan from namespace `ns` (index into `self.ns`); waits for its end.
    pub fn play(&self, ns: usize, plan: &Plan) -> Result<Played> {
        Ok(self.play_together(&[(ns, plan)])?.remove(0))
    }

    /// Play several plans at the same time, each from its namespace; waits for all.
    pub fn play_together(&self, plans: &[(usize, &Plan)]) -> Result<Vec<Played>> {
        let mut children = Vec::new();
        for (ns, plan) in plans {
            let (mut cmd, count) = self.client(*ns, plan)?;
            children.push((cmd.spawn().context("starting client.py")?, count));
        }
        let mut played = Vec::new();
        for (child, count) in children {
            let out = child.wait_with_output()?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            let report: Value = serde_json::from_str(stdout.trim()).with_context(|| {
                format!(
                    "client.py said {stdout:?}, stderr {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?;
            if !out.status.success() || report["answered"].as_u64() != Some(count as u64) {
                bail!("client.py: {count} requests planned, report {report}");
            }
            let statuses = report["statuses"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_u64()?)))
                        .collect()
                })
                .unwrap_or_default();
            played.push(Played { statuses });
        }
        Ok(played)
    }

    /// The client networks of this world's namespaces (`10.200.41.0/24`, ...).
    pub fn networks(&self) -> Vec<String> {
        self.ns
            .iter()
            .map(|n| {
                let prefix = n.ns_ip.rsplit_once('.').map(|(p, _)| p).unwrap_or_default();
                format!("{prefix}.0/24")
            })
            .collect()
    }

    /// Every inbound session and view the agent lists that holds traffic of this world's
    /// namespaces, and how many others it lists.
    ///
    /// The agent sees the whole host: on a shared machine other test runs' traffic shows
    /// up in its list too. A session or view is this world's when one of its networks
    /// (`GET /api/sessions/{id}`) is one of the namespaces' networks; on an isolated host
    /// that is every inbound session. A view whose detail cannot be read counts as ours
    /// when its id names one of our networks, or when it is a route view.
    pub fn sessions(&self) -> Result<(Vec<Seen>, usize)> {
        let list = agent_json(&self.agent, "/api/sessions?direction=inbound&limit=1000")?;
        let ours = self.networks();
        let mut seen = Vec::new();
        let mut foreign = 0;
        for v in list
            .as_array()
            .context("the session list is not an array")?
        {
            let s = Seen::from_json(v)?;
            let detail = agent_json(
                &self.agent,
                &format!("/api/sessions/{}", encode_segment(&s.id)),
            );
            let mine = match detail {
                Ok(d) => d["networks"].as_array().is_some_and(|nets| {
                    nets.iter().any(|n| {
                        n["value"]
                            .as_str()
                            .is_some_and(|n| ours.iter().any(|o| o == n))
                    })
                }),
                Err(_) => s.kind == "route" || ours.iter().any(|o| s.id.contains(o.as_str())),
            };
            if mine {
                seen.push(s);
            } else {
                foreign += 1;
            }
        }
        Ok((seen, foreign))
    }

    /// `GET /api/findings`, `None` when it is not there.
    pub fn findings(&self) -> Option<Vec<Value>> {
        agent_json(&self.agent, "/api/findings")
            .ok()?
            .as_array()
            .cloned()
    }

    pub fn alerts(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.alerts)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// What the agent says now. Alert lines count when they name one of this world's
    /// sessions (or name no session).
    pub fn outcome(&self) -> Result<Outcome> {
        let (sessions, foreign) = self.sessions()?;
        let alerts = self
            .alerts()
            .into_iter()
            .filter(|a| {
                a["session_id"]
                    .as_str()
                    .is_none_or(|id| sessions.iter().any(|s| s.id == id))
            })
            .collect();
        let mut o = Outcome::new(sessions, alerts, self.findings());
        o.foreign_sessions = foreign;
        Ok(o)
    }
}

/// Status counts of one played plan.
#[derive(Clone, Debug, Default)]
pub struct Played {
    pub statuses: BTreeMap<u16, u64>,
}

impl Played {
    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or_default()
    }

    /// Fails (a set-up error: the server did not answer as the scenario needs) unless
    /// `status` was answered exactly `n` times.
    pub fn expect(&self, status: u16, n: u64) -> Result<()> {
        if self.count(status) != n {
            bail!(
                "expected {n} answers {status}, the server gave {:?}",
                self.statuses
            );
        }
        Ok(())
    }
}

/// One request of a plan.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    /// Seconds slept before it.
    pub pause: f64,
}

impl Req {
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            method: "GET",
            path: path.into(),
            headers: Vec::new(),
            body: None,
            pause: 0.0,
        }
    }

    pub fn post(path: impl Into<String>, body: impl Into<String>) -> Self {
        Self {
            method: "POST",
            body: Some(body.into()),
            ..Self::get(path)
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn pause(mut self, secs: f64) -> Self {
        self.pause = secs;
        self
    }
}

/// One keep-alive connection: headers sent on every request, a start delay.
#[derive(Clone, Debug, Default)]
pub struct Conn {
    pub start: f64,
    pub headers: Vec<(String, String)>,
    pub requests: Vec<Req>,
}

impl Conn {
    pub fn new(headers: &[(&str, &str)], requests: Vec<Req>) -> Self {
        Self {
            start: 0.0,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            requests,
        }
    }

    pub fn start(mut self, secs: f64) -> Self {
        self.start = secs;
        self
    }
}

/// Connections played one after the other, or all at once (`parallel`).
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub conns: Vec<Conn>,
    pub parallel: bool,
}

impl Plan {
    pub fn one(conn: Conn) -> Self {
        Self {
            conns: vec![conn],
            parallel: false,
        }
    }

    pub fn len(&self) -> usize {
        self.conns.iter().map(|c| c.requests.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn to_json(&self, host: &str, port: u16) -> Value {
        let conns: Vec<Value> = self
            .conns
            .iter()
            .map(|c| {
                let requests: Vec<Value> = c
                    .requests
                    .iter()
                    .map(|r| {
                        let mut headers = serde_json::Map::new();
                        for (k, v) in c.headers.iter().chain(&r.headers) {
                            headers.insert(k.clone(), Value::String(v.clone()));
                        }
                        json!({
                            "method": r.method,
                            "path": r.path,
                            "headers": headers,
                            "body": r.body,
                            "pause": r.pause,
                        })
                    })
                    .collect();
                json!({ "start": c.start, "requests": requests })
            })
            .collect();
        json!({ "host": host, "port": port, "parallel": self.parallel, "conns": conns })
    }
}

/// Run one scenario in a world of its own: play, then wait for the verdict (abusive:
/// until the expected verdict is there or [`ABUSE_WAIT`] passed; healthy:
/// [`HEALTHY_SETTLE`]). An error means the scenario could not run (set-up), not that the
/// agent judged it wrong.
pub fn run(s: &Scenario) -> Result<Outcome> {
    let world = World::new(s.namespaces).with_context(|| format!("{}: set-up", s.name))?;
    let started = Instant::now();
    (s.play)(&world).with_context(|| format!("{}: playing the traffic", s.name))?;
    let traffic = started.elapsed();
    let settle = Instant::now();
    let mut outcome = if s.expected == State::Healthy {
        std::thread::sleep(HEALTHY_SETTLE);
        world.outcome()?
    } else {
        loop {
            let o = world.outcome()?;
            if o.problems(s).is_empty() || settle.elapsed() > ABUSE_WAIT {
                break o;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    outcome.traffic = traffic;
    outcome.waited = settle.elapsed();
    Ok(outcome)
}

// ---------------------------------------------------------------------------------------
// Traffic material.

pub const BROWSER_UA: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
                              (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
pub const MOBILE_UA: &str = "okhttp/4.12.0";
pub const SCRIPT_UA: &str = "python-requests/2.31.0";
pub const BATCH_UA: &str = "sync-job/3.2";
/// The one account `POST /login` accepts (see tests/servers/api.py).
pub const KNOWN_USER: &str = "alice";
pub const KNOWN_PASSWORD: &str = "wonderland-42";

/// A deterministic, opaque-looking secret (hex) for `tag` and `i`.
pub fn secret(tag: &str, i: u64, len: usize) -> String {
    let mut x = tag.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut out = String::new();
    while out.len() < len {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let _ = write!(out, "{z:016x}");
    }
    out.truncate(len);
    out
}

fn b64(data: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(alphabet[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        if pad {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

pub fn base64(data: &[u8]) -> String {
    b64(
        data,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
        true,
    )
}

pub fn base64url(data: &[u8]) -> String {
    b64(
        data,
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
        false,
    )
}

/// `Basic <base64(user:password)>`.
pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// A JWT with this header and claims; `signature` as is (the agent does not verify).
pub fn jwt(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    )
}

/// An HS256 JWT for `sub` expiring `exp_in` seconds from now (negative: in the past),
/// with a fake signature.
pub fn hs256_jwt(sub: &str, exp_in: i64) -> String {
    let now = unix_now();
    jwt(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"sub": sub, "iss": "https://auth.shop.example", "aud": "shop-api",
                "iat": now.min(now + exp_in) - 600, "exp": now + exp_in}),
        &base64url(&secret(sub, 7, 64).into_bytes()[..32]),
    )
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A realistic app session: `n` requests over several routes, a popular handful of item
/// ids, mostly 200, a 404 at every 20th request; `pause` seconds between requests.
pub fn app_mix(n: usize, pause: f64) -> Vec<Req> {
    const POPULAR: [u32; 7] = [1, 2, 3, 5, 8, 13, 21];
    (0..n)
        .map(|i| {
            let r = match i % 6 {
                _ if i % 20 == 19 => Req::get("/items/999999"),
                0 => Req::get("/account"),
                1 => Req::get(format!("/items?page={}", 1 + i % 4)),
                2 | 4 => Req::get(format!("/items/{}", POPULAR[i % POPULAR.len()])),
                3 => Req::get("/orders"),
                _ => Req::get("/hello"),
            };
            r.pause(if i == 0 { 0.0 } else { pause })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The scenarios.

pub fn all() -> Vec<Scenario> {
    let healthy = |name, carrier, play: fn(&World) -> Result<()>| Scenario {
        name,
        expected: State::Healthy,
        carrier: Some(carrier),
        expected_reasons: &[],
        expected_finding: None,
        namespaces: 1,
        play,
    };
    let unhealthy = |name, carrier, reasons, play: fn(&World) -> Result<()>| Scenario {
        name,
        expected: State::Unhealthy,
        carrier: Some(carrier),
        expected_reasons: reasons,
        expected_finding: None,
        namespaces: 1,
        play,
    };
    vec![
        healthy("healthy_opaque_token", "bearer", healthy_opaque_token),
        healthy("healthy_jwt", "bearer", healthy_jwt),
        healthy("healthy_cookie_session", "cookie", healthy_cookie_session),
        healthy("healthy_batch_client", "api_key", healthy_batch_client),
        Scenario {
            namespaces: 2,
            ..healthy(
                "healthy_client_moves_network",
                "bearer",
                healthy_client_moves_network,
            )
        },
        healthy("healthy_nat_many_users", "bearer", healthy_nat_many_users),
        healthy("healthy_login_typo", "basic", healthy_login_typo),
        Scenario {
            namespaces: 3,
            ..unhealthy(
                "shared_token",
                "bearer",
                &["concurrent_networks"],
                shared_token,
            )
        },
        unhealthy(
            "credential_stuffing",
            "network",
            &["credential_stuffing"],
            credential_stuffing,
        ),
        Scenario {
            namespaces: 3,
            ..unhealthy(
                "password_spraying",
                "route",
                &["password_spraying"],
                password_spraying,
            )
        },
        unhealthy("enumeration", "bearer", &["enumeration"], enumeration),
        unhealthy(
            "expired_jwt_accepted",
            "bearer",
            &["expired_jwt_accepted"],
            expired_jwt_accepted,
        ),
        unhealthy("jwt_alg_none", "bearer", &["jwt_alg_none"], jwt_alg_none),
        Scenario {
            carrier: None,
            expected_finding: Some("credential_in_query"),
            ..healthy("credential_in_query", "", credential_in_query)
        },
        unhealthy(
            "frozen_credential_used",
            "bearer",
            &["frozen_credential"],
            frozen_credential_used,
        ),
        unhealthy(
            "rotating_token_scraper",
            "network",
            &["token_rotation"],
            rotating_token_scraper,
        ),
        Scenario {
            namespaces: 2,
            ..unhealthy(
                "shared_token_two_networks",
                "bearer",
                &["concurrent_networks"],
                shared_token_two_networks,
            )
        },
        unhealthy(
            "login_form_guessing",
            "anonymous",
            &["brute_force"],
            login_form_guessing,
        ),
        Scenario {
            expected: State::Suspicious,
            ..unhealthy(
                "one_key_three_programs",
                "api_key",
                &["multi_agent"],
                one_key_three_programs,
            )
        },
    ]
}

/// The scenario called `name`.
pub fn by_name(name: &str) -> Scenario {
    all()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

/// One opaque bearer token from a mobile app: ~40 requests over ~10 s.
fn healthy_opaque_token(w: &World) -> Result<()> {
    let token = bearer(&secret("opaque", 1, 40));
    let conn = Conn::new(
        &[("Authorization", &token), ("User-Agent", MOBILE_UA)],
        app_mix(40, 0.25),
    );
    w.play(0, &Plan::one(conn))?.expect(404, 2)
}

/// A valid HS256 JWT expiring in an hour, the same kind of traffic.
fn healthy_jwt(w: &World) -> Result<()> {
    let token = bearer(&hs256_jwt("user-1001", 3600));
    let conn = Conn::new(
        &[("Authorization", &token), ("User-Agent", MOBILE_UA)],
        app_mix(40, 0.25),
    );
    w.play(0, &Plan::one(conn))?.expect(404, 2)
}

/// A browser with a session cookie: a page with its assets, then API calls, on two
/// connections as browsers do.
fn healthy_cookie_session(w: &World) -> Result<()> {
    let cookie = format!("session={}; theme=dark", secret("cookie", 3, 32));
    let headers = [
        ("Cookie", cookie.as_str()),
        ("User-Agent", BROWSER_UA),
        ("Accept-Language", "en-GB,en;q=0.9"),
    ];
    let mut pages = Vec::new();
    let mut api = Vec::new();
    for visit in 0..6 {
        pages.push(Req::get(if visit == 0 { "/" } else { "/orders" }).pause(1.2));
        pages.push(Req::get("/static/app.js").pause(0.05));
        pages.push(Req::get("/static/app.css").pause(0.02));
        api.push(Req::get("/account").pause(if visit == 0 { 0.3 } else { 1.0 }));
        api.push(Req::get(format!("/items?page={}", visit + 1)).pause(0.1));
        api.push(Req::get(format!("/items/{}", [4, 9, 4, 12, 30, 9][visit])).pause(0.2));
    }
    api.push(Req::post("/cart", r#"{"item":9,"qty":1}"#).pause(0.4));
    pages.push(Req::get("/favicon.ico").pause(0.1));
    let plan = Plan {
        conns: vec![Conn::new(&headers, pages), Conn::new(&headers, api)],
        parallel: true,
    };
    let played = w.play(0, &plan)?;
    played.expect(404, 1)?;
    played.expect(201, 1)
}

/// A sync job with an API key: ~35 requests/s for ~15 s over one keep-alive
/// connection, paging a collection and uploading small bodies.
fn healthy_batch_client(w: &World) -> Result<()> {
    let requests = (0..520)
        .map(|i| {
            let r = if i % 5 == 4 {
                Req::post("/upload", format!(r#"{{"batch":{i},"rows":[1,2,3]}}"#))
                    .header("Content-Type", "application/json")
            } else {
                Req::get(format!("/items?page={}", 1 + i % 60))
            };
            r.pause(0.0275)
        })
        .collect();
    let key = secret("batch", 4, 32);
    let conn = Conn::new(&[("X-API-Key", &key), ("User-Agent", BATCH_UA)], requests);
    w.play(0, &Plan::one(conn))?.expect(201, 104)
}

/// A laptop moving from one network to another, once: 20 requests from each.
fn healthy_client_moves_network(w: &World) -> Result<()> {
    let token = bearer(&secret("mover", 5, 40));
    let headers = [
        ("Authorization", token.as_str()),
        ("User-Agent", BROWSER_UA),
    ];
    w.play(0, &Plan::one(Conn::new(&headers, app_mix(20, 0.2))))?;
    std::thread::sleep(Duration::from_secs(2));
    w.play(1, &Plan::one(Conn::new(&headers, app_mix(20, 0.2))))?;
    Ok(())
}

/// A corporate NAT: 25 people, each with their own token, the same browser, a few
/// ordinary requests each, overlapping in time.
fn healthy_nat_many_users(w: &World) -> Result<()> {
    const POPULAR: [u32; 5] = [1, 2, 3, 5, 8];
    let tokens: Vec<String> = (0..25).map(|i| bearer(&secret("nat", i, 40))).collect();
    let conns = tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            let n = 3 + i % 4;
            let requests = (0..n)
                .map(|j| {
                    let r = match j {
                        0 => Req::get("/account"),
                        1 => Req::get("/items?page=1"),
                        2 => Req::get(format!("/items/{}", POPULAR[(i + j) % POPULAR.len()])),
                        3 => Req::get("/orders"),
                        _ => Req::get("/static/app.js"),
                    };
                    r.pause(if j == 0 {
                        0.0
                    } else {
                        0.4 + 0.05 * (i % 3) as f64
                    })
                })
                .collect();
            Conn::new(
                &[
                    ("Authorization", token.as_str()),
                    ("User-Agent", BROWSER_UA),
                ],
                requests,
            )
            .start(0.3 * i as f64)
        })
        .collect();
    let played = w.play(
        0,
        &Plan {
            conns,
            parallel: true,
        },
    )?;
    if played.statuses.keys().any(|s| *s != 200) {
        bail!("every NAT request should be a 200: {:?}", played.statuses);
    }
    Ok(())
}

/// Extra guard: A person mistyping their password twice, then logging in and using
/// the app with the issued token.
fn healthy_login_typo(w: &World) -> Result<()> {
    let login = |pw: &str, pause: f64| {
        Req::post("/login", "")
            .header("Authorization", basic(KNOWN_USER, pw))
            .pause(pause)
    };
    let mut requests = vec![
        login("wonderland42", 0.0),
        login("Wonderland-42", 2.5),
        login(KNOWN_PASSWORD, 3.0),
    ];
    let token = bearer(&secret("after-login", 7, 40));
    requests.extend(
        app_mix(12, 0.3)
            .into_iter()
            .map(|r| r.header("Authorization", token.clone())),
    );
    let played = w.play(
        0,
        &Plan::one(Conn::new(&[("User-Agent", BROWSER_UA)], requests)),
    )?;
    played.expect(401, 2)
}

/// One token used at the same time from three networks, interleaved over ~10 s.
fn shared_token(w: &World) -> Result<()> {
    token_shared_by(w, 3, &secret("shared", 8, 40), 12, 0.8, 0.27)
}

/// One bearer token played from `networks` namespaces at once: `requests` each, `pause`
/// apart, each network starting `stagger` seconds after the previous one.
fn token_shared_by(
    w: &World,
    networks: usize,
    token: &str,
    requests: usize,
    pause: f64,
    stagger: f64,
) -> Result<()> {
    let token = bearer(token);
    let plans: Vec<Plan> = (0..networks)
        .map(|n| {
            Plan::one(
                Conn::new(
                    &[("Authorization", token.as_str()), ("User-Agent", SCRIPT_UA)],
                    app_mix(requests, pause),
                )
                .start(stagger * n as f64),
            )
        })
        .collect();
    let plays: Vec<(usize, &Plan)> = plans.iter().enumerate().collect();
    w.play_together(&plays)?;
    Ok(())
}

/// One API key used by three different custom programs from one network: worth a look
/// (the key may have been handed to a third party), not proof of abuse.
fn one_key_three_programs(w: &World) -> Result<()> {
    let key = secret("programs", 5, 32);
    let conns = ["shop-app/2.1", "mobile/5.0 (build 1187)", "client-1/1.0"]
        .iter()
        .map(|ua| {
            Conn::new(
                &[("X-API-Key", key.as_str()), ("User-Agent", *ua)],
                app_mix(8, 0.2),
            )
        })
        .collect();
    w.play(
        0,
        &Plan {
            conns,
            parallel: false,
        },
    )?;
    Ok(())
}

/// One token used by two parties at once, from two networks (the minimum of sharing).
fn shared_token_two_networks(w: &World) -> Result<()> {
    token_shared_by(w, 2, &secret("pair", 3, 40), 10, 0.7, 0.35)
}

/// A login form guessed from one client: the credentials travel in the body, so no
/// credential is seen, only an anonymous client failing again and again.
fn login_form_guessing(w: &World) -> Result<()> {
    let requests = (0..60)
        .map(|i| {
            Req::post(
                "/login",
                format!("{{\"user\":\"alice\",\"password\":\"guess-{i}\"}}"),
            )
            .header("Content-Type", "application/json".to_string())
            .pause(0.03)
        })
        .collect();
    let played = w.play(
        0,
        &Plan::one(Conn::new(&[("User-Agent", SCRIPT_UA)], requests)),
    )?;
    played.expect(401, 60)
}

/// Credential stuffing: 60 leaked user:password pairs, one attempt each, from one
/// network, all failing.
fn credential_stuffing(w: &World) -> Result<()> {
    let conns = (0..6)
        .map(|c| {
            let requests = (0..10)
                .map(|i| {
                    let n = c * 10 + i;
                    Req::post("/login", "")
                        .header(
                            "Authorization",
                            basic(&format!("user{n:03}@mail.example"), &secret("leak", n, 10)),
                        )
                        .pause(0.05)
                })
                .collect();
            Conn::new(&[("User-Agent", SCRIPT_UA)], requests)
        })
        .collect();
    let played = w.play(
        0,
        &Plan {
            conns,
            parallel: false,
        },
    )?;
    played.expect(401, 60)
}

/// Password spraying: 30 accounts, one or two common passwords each, ten accounts
/// from each of three networks, slowly.
fn password_spraying(w: &World) -> Result<()> {
    const FIRST: [&str; 10] = [
        "james", "mary", "robert", "patricia", "john", "jennifer", "michael", "linda", "david",
        "susan",
    ];
    const LAST: [&str; 3] = ["smith", "garcia", "chen"];
    let plans: Vec<Plan> = (0..3)
        .map(|n| {
            let mut requests = Vec::new();
            for (i, first) in FIRST.iter().enumerate() {
                let user = format!("{first}.{}", LAST[n]);
                requests.push(
                    Req::post("/login", "")
                        .header("Authorization", basic(&user, "Winter2024!"))
                        .pause(0.3),
                );
                if i % 2 == 1 {
                    requests.push(
                        Req::post("/login", "")
                            .header("Authorization", basic(&user, "Spring2024!"))
                            .pause(0.3),
                    );
                }
            }
            Plan::one(Conn::new(&[("User-Agent", SCRIPT_UA)], requests).start(0.1 * n as f64))
        })
        .collect();
    let plays: Vec<(usize, &Plan)> = plans.iter().enumerate().collect();
    for p in w.play_together(&plays)? {
        p.expect(401, 15)?;
    }
    Ok(())
}

/// One token walking 160 item ids (some deleted: 404).
fn enumeration(w: &World) -> Result<()> {
    let token = bearer(&secret("walker", 11, 40));
    let requests = (2001..=2160)
        .map(|id| Req::get(format!("/items/{id}")).pause(0.03))
        .collect();
    let conn = Conn::new(
        &[("Authorization", &token), ("User-Agent", SCRIPT_UA)],
        requests,
    );
    let played = w.play(0, &Plan::one(conn))?;
    if played.count(404) == 0 || played.count(200) < 140 {
        bail!("expected mostly 200 and some 404: {:?}", played.statuses);
    }
    Ok(())
}

/// A JWT that expired an hour ago, accepted by the server.
fn expired_jwt_accepted(w: &World) -> Result<()> {
    let token = bearer(&hs256_jwt("user-2002", -3600));
    let requests = (0..10)
        .map(|i| Req::get(if i % 2 == 0 { "/account" } else { "/orders" }).pause(0.2))
        .collect();
    let conn = Conn::new(
        &[("Authorization", &token), ("User-Agent", MOBILE_UA)],
        requests,
    );
    w.play(0, &Plan::one(conn))?.expect(200, 10)
}

/// A JWT with `alg: none` and no signature, accepted by the server.
fn jwt_alg_none(w: &World) -> Result<()> {
    let now = unix_now();
    let token = bearer(&jwt(
        &json!({"alg": "none", "typ": "JWT"}),
        &json!({"sub": "admin", "role": "admin", "iat": now, "exp": now + 3600}),
        "",
    ));
    let requests = (0..10)
        .map(|i| Req::get(if i % 2 == 0 { "/account" } else { "/orders" }).pause(0.2))
        .collect();
    let conn = Conn::new(
        &[("Authorization", &token), ("User-Agent", SCRIPT_UA)],
        requests,
    );
    w.play(0, &Plan::one(conn))?.expect(200, 10)
}

/// A dashboard script sending its API key in the query string: a fact about the
/// client (a finding), not an attack.
fn credential_in_query(w: &World) -> Result<()> {
    let key = secret("query-key", 14, 32);
    let requests = (0..10)
        .map(|i| {
            Req::get(if i % 3 == 0 {
                format!("/account?api_key={key}")
            } else {
                format!("/items?page={}&api_key={key}", 1 + i % 3)
            })
            .pause(0.3)
        })
        .collect();
    let conn = Conn::new(&[("User-Agent", "curl/8.1.2")], requests);
    w.play(0, &Plan::one(conn))?.expect(200, 10)
}

/// A token used a few times, frozen over the API, then used again.
fn frozen_credential_used(w: &World) -> Result<()> {
    let token = bearer(&secret("frozen", 15, 40));
    let headers = [("Authorization", token.as_str()), ("User-Agent", MOBILE_UA)];
    w.play(0, &Plan::one(Conn::new(&headers, app_mix(5, 0.2))))?;
    let fingerprint = wait_for(Duration::from_secs(15), || {
        let s = w
            .sessions()
            .ok()?
            .0
            .into_iter()
            .find(|s| s.kind == "bearer" && s.requests >= 5)?;
        Some(s.fingerprint.unwrap_or(s.id))
    })
    .context("the token's session was not listed")?;
    let (code, body) = agent_request(&w.agent, "PUT", &format!("/api/frozen/{fingerprint}"))?;
    if code != 200 {
        bail!("freezing {fingerprint}: {code} {body}");
    }
    w.play(0, &Plan::one(Conn::new(&headers, app_mix(3, 0.3))))?;
    Ok(())
}

/// A scraper rotating fresh tokens: 40 tokens, 3 requests each, 120 item ids never
/// repeated, one client.
fn rotating_token_scraper(w: &World) -> Result<()> {
    let tokens: Vec<String> = (0..40).map(|i| bearer(&secret("rotate", i, 40))).collect();
    let conns = tokens
        .iter()
        .enumerate()
        .map(|(t, token)| {
            let requests = (0..3)
                .map(|j| Req::get(format!("/items/{}", 3001 + t * 3 + j)).pause(0.05))
                .collect();
            Conn::new(
                &[("Authorization", token.as_str()), ("User-Agent", SCRIPT_UA)],
                requests,
            )
            .start(0.1)
        })
        .collect();
    w.play(
        0,
        &Plan {
            conns,
            parallel: false,
        },
    )?;
    Ok(())
}
