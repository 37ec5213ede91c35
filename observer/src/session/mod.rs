//! Sessions: exchanges grouped per credential fingerprint (or, without a credential, per
//! client network and user-agent family), with the reduced dimensions scoring needs.
//!
//! [`SessionTable`] owns everything: the identity extractor and fingerprint key, the
//! sessions, the frozen fingerprints and the counters. The agent calls
//! [`SessionTable::observe`] for each exchange, [`SessionTable::score`] every
//! `scoring.interval_secs` and [`SessionTable::expire`] now and then; the JSON API uses
//! [`SessionTable::list`], [`SessionTable::get`], [`SessionTable::freeze`] and
//! [`SessionTable::unfreeze`]. Every time is passed in (`now`), so tests control the
//! clock.
//!
//! Server-side exchanges ([`Role::Server`]) make inbound sessions; client-side ones (calls
//! this host makes) make outbound sessions, kept apart (ids prefixed `out:`), so a request
//! seen from both ends on loopback is counted once per direction.

pub mod dims;
pub mod metrics;
pub mod privacy;
pub(crate) mod state;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::{BuildHasher, RandomState},
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize, Serializer};

use crate::{
    exchange::{Exchange, Role},
    identity::{
        CredentialKind, CredentialSource, Extractor, Fingerprint, FingerprintKey, IdentityConfig,
        JwtClaims, JwtError, KeyError, TokenFormat,
    },
    score::{self, HealthState, Reason, ScoreConfig, StateChange},
};

pub use dims::{ClientIpMode, Network};
use state::{
    class_index, mark, since, unix_secs, Limits, RouteStats, Session, ID_BUCKETS, MAX_LOCATIONS,
    MAX_PROCESSES,
};

/// Which way the traffic of a session goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Requests this host serves.
    Inbound,
    /// Requests this host makes to other APIs.
    Outbound,
}

impl Direction {
    pub const ALL: [Self; 2] = [Self::Inbound, Self::Outbound];

    pub fn of(role: Role) -> Self {
        match role {
            Role::Server => Self::Inbound,
            Role::Client => Self::Outbound,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// Fingerprint prefixes that can be frozen: credentials and JWT subjects/ids.
pub const FREEZABLE: &[&str] = &["tok", "key", "usr", "ck", "sub", "jti"];

/// Prefix of outbound session ids.
pub const OUTBOUND_PREFIX: &str = "out:";

/// `[sessions]`: how sessions are kept.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// A session unused this long is dropped, seconds.
    pub idle_ttl_secs: u64,
    /// A session older than this is dropped however active it is, seconds.
    pub max_age_secs: u64,
    /// Most sessions kept; beyond it the least recently used are dropped.
    pub max_sessions: usize,
    /// Most client networks kept per session (least recently seen dropped).
    pub max_networks: usize,
    /// Most user-agent families kept per session.
    pub max_agents: usize,
    /// Most routes kept per session.
    pub max_routes: usize,
    /// Most frozen fingerprints.
    pub max_frozen: usize,
    /// `truncate` (keep the network), `full` or `drop`.
    pub client_ip: ClientIpMode,
    /// Bits kept of IPv4 client addresses in `truncate` mode.
    pub ipv4_prefix: u8,
    /// Bits kept of IPv6 client addresses in `truncate` mode.
    pub ipv6_prefix: u8,
    /// Keep outbound sessions (calls this host makes).
    pub track_outbound: bool,
    /// Sessions exported as `api_observer_session_health_score` (the riskiest).
    pub metrics_top_k: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            idle_ttl_secs: 1800,
            max_age_secs: 86_400,
            max_sessions: 20_000,
            max_networks: 16,
            max_agents: 8,
            max_routes: 32,
            max_frozen: 10_000,
            client_ip: ClientIpMode::Truncate,
            ipv4_prefix: 24,
            ipv6_prefix: 48,
            track_outbound: true,
            metrics_top_k: 20,
        }
    }
}

impl SessionConfig {
    /// Check the values; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            ("sessions.idle_ttl_secs", self.idle_ttl_secs as usize),
            ("sessions.max_age_secs", self.max_age_secs as usize),
            ("sessions.max_sessions", self.max_sessions),
            ("sessions.max_networks", self.max_networks),
            ("sessions.max_agents", self.max_agents),
            ("sessions.max_routes", self.max_routes),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if self.ipv4_prefix > 32 {
            return Err(("sessions.ipv4_prefix", "must be 0..=32".into()));
        }
        if self.ipv6_prefix > 128 {
            return Err(("sessions.ipv6_prefix", "must be 0..=128".into()));
        }
        Ok(())
    }
}

/// The three config tables the table is built from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SessionTableConfig {
    pub identity: IdentityConfig,
    pub sessions: SessionConfig,
    pub scoring: ScoreConfig,
}

/// Why a freeze request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FreezeError {
    #[error("not a fingerprint (expected e.g. tok_5f2c9a1e0b7d)")]
    Invalid,
    #[error("too many frozen fingerprints")]
    Full,
}

/// Counters for metrics and the privacy report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TableCounters {
    /// Exchanges observed.
    pub exchanges: u64,
    /// Of which carried a credential.
    pub authenticated: u64,
    pub sessions_created: u64,
    /// Sessions dropped after `idle_ttl_secs`.
    pub evicted_idle: u64,
    /// Sessions dropped after `max_age_secs`.
    pub expired_max_age: u64,
    /// Fingerprint key rotations.
    pub rotations: u64,
    /// Sessions dropped to stay within `max_sessions`.
    pub evicted_capacity: u64,
    /// Sessions dropped by `purge` or key rotation.
    pub purged: u64,
    /// Uses of frozen credentials.
    pub frozen_uses: u64,
    pub state_changes: u64,
    /// Times a signal became active on a session.
    pub signals: BTreeMap<Reason, u64>,
}

impl TableCounters {
    pub fn evictions(&self) -> u64 {
        self.evicted_idle + self.evicted_capacity
    }
}

/// Filter and order of [`SessionTable::list`] (also the JSON API's query string).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListQuery {
    pub state: Option<HealthState>,
    pub direction: Option<Direction>,
    /// At most this many (default 100).
    pub limit: Option<usize>,
}

fn ser_unix<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(unix_secs(*t))
}

/// One line of the session list. Holds only fingerprints and reduced values.
#[derive(Clone, Debug, Serialize)]
pub struct SessionSummary {
    pub id: String,
    pub direction: Direction,
    /// `bearer`, `basic`, `api_key`, `cookie` or `anonymous`.
    pub kind: &'static str,
    pub fingerprint: Option<Fingerprint>,
    pub state: HealthState,
    pub score: u8,
    pub reasons: Vec<Reason>,
    #[serde(serialize_with = "ser_unix")]
    pub first_seen: SystemTime,
    #[serde(serialize_with = "ser_unix")]
    pub last_seen: SystemTime,
    pub requests: u64,
    /// Current request rate, per second.
    pub rate: f64,
    pub networks: usize,
    pub agents: usize,
    pub frozen: bool,
}

/// A value of a dimension (network or user-agent family) and its use.
#[derive(Clone, Debug, Serialize)]
pub struct DimensionView {
    pub value: String,
    pub requests: u64,
    #[serde(serialize_with = "ser_unix")]
    pub first_seen: SystemTime,
    #[serde(serialize_with = "ser_unix")]
    pub last_seen: SystemTime,
}

/// Responses per status class.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StatusCounts {
    #[serde(rename = "1xx")]
    pub c1xx: u64,
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    #[serde(rename = "5xx")]
    pub c5xx: u64,
    pub other: u64,
}

impl From<[u64; 6]> for StatusCounts {
    fn from(c: [u64; 6]) -> Self {
        Self {
            c1xx: c[0],
            c2xx: c[1],
            c3xx: c[2],
            c4xx: c[3],
            c5xx: c[4],
            other: c[5],
        }
    }
}

/// One route of a session.
#[derive(Clone, Debug, Serialize)]
pub struct RouteView {
    /// Method and path template, e.g. `GET /users/{id}/orders`.
    pub route: String,
    pub requests: u64,
    pub status: StatusCounts,
    /// Estimated distinct ids requested within the scoring window.
    pub distinct_ids: u64,
    pub rate: f64,
    /// Baseline rate, once warmed up.
    pub baseline_rate: Option<f64>,
    #[serde(serialize_with = "ser_unix")]
    pub last_seen: SystemTime,
}

/// Where a session's credential was found.
#[derive(Clone, Debug, Serialize)]
pub struct LocationView {
    pub source: CredentialSource,
    pub name: String,
}

/// Validity of a JWT's time claims at the session's last use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpState {
    Valid,
    Expired,
    NotYetValid,
    NoExp,
}

/// JWT facts of a session's credential.
#[derive(Clone, Debug, Serialize)]
pub struct JwtView {
    #[serde(flatten)]
    pub claims: JwtClaims,
    pub exp_state: ExpState,
}

/// Removed for the bound on a per-session map.
#[derive(Clone, Debug, Serialize)]
pub struct DroppedCounts {
    pub networks: u64,
    pub agents: u64,
    pub routes: u64,
}

/// Everything shown about one session.
#[derive(Clone, Debug, Serialize)]
pub struct SessionDetail {
    #[serde(flatten)]
    pub summary: SessionSummary,
    pub baseline_rate: Option<f64>,
    pub credential_locations: Vec<LocationView>,
    pub networks: Vec<DimensionView>,
    pub agents: Vec<DimensionView>,
    pub routes: Vec<RouteView>,
    pub dropped: DroppedCounts,
    pub status: StatusCounts,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub latency_mean_ms: f64,
    pub latency_max_ms: f64,
    pub latency_sum_ms: f64,
    /// UTC hours (0..=23) with activity.
    pub active_hours: Vec<u8>,
    pub processes: Vec<String>,
    /// Container, pod and namespace of those processes (when in containers).
    pub workloads: Vec<crate::workload::Workload>,
    pub tls_requests: u64,
    pub plaintext_requests: u64,
    pub jwt: Option<JwtView>,
    pub jwt_error: Option<JwtError>,
    pub frozen_uses: u64,
}

/// All sessions, their scoring and the fingerprint key.
pub struct SessionTable {
    sessions_cfg: SessionConfig,
    scoring: ScoreConfig,
    limits: Limits,
    extractor: Extractor,
    key: FingerprintKey,
    sessions: HashMap<Arc<str>, Session>,
    frozen: HashSet<Fingerprint>,
    /// Keyed per process: hashes of path ids are never linkable across runs.
    id_hasher: RandomState,
    counters: TableCounters,
    /// Latest time seen by any call (views are relative to it).
    now: SystemTime,
    /// When the current fingerprint key came into use (set by the first rotation check).
    key_since: Option<SystemTime>,
    /// When the key last rotated.
    last_rotation: Option<SystemTime>,
    rotate_every: Duration,
    key_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for SessionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTable")
            .field("sessions", &self.sessions.len())
            .field("frozen", &self.frozen.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl SessionTable {
    pub fn new(config: SessionTableConfig, key: FingerprintKey) -> Self {
        let limits = Limits {
            max_networks: config.sessions.max_networks,
            max_agents: config.sessions.max_agents,
            max_routes: config.sessions.max_routes,
            window: config.scoring.window(),
        };
        Self {
            rotate_every: Duration::from_secs(config.identity.rotate_every_secs),
            key_file: config.identity.key_file.clone(),
            key_since: None,
            last_rotation: None,
            extractor: Extractor::new(&config.identity),
            sessions_cfg: config.sessions,
            scoring: config.scoring,
            limits,
            key,
            sessions: HashMap::new(),
            frozen: HashSet::new(),
            id_hasher: RandomState::new(),
            counters: TableCounters::default(),
            now: SystemTime::UNIX_EPOCH,
        }
    }

    pub fn scoring_config(&self) -> &ScoreConfig {
        &self.scoring
    }

    pub fn session_config(&self) -> &SessionConfig {
        &self.sessions_cfg
    }

    /// Request headers the identity stage reads (add them to the capture allowlist).
    pub fn header_names(&self) -> Vec<String> {
        self.extractor.header_names()
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn counters(&self) -> &TableCounters {
        &self.counters
    }

    /// Generation of the fingerprint key (rotations so far).
    pub fn key_generation(&self) -> u64 {
        self.key.generation()
    }

    fn tick(&mut self, now: SystemTime) {
        self.now = self.now.max(now);
    }

    /// Add one exchange. Its credentials are fingerprinted here and not kept raw.
    pub fn observe(&mut self, ex: &Exchange, now: SystemTime) {
        self.tick(now);
        self.counters.exchanges += 1;
        let direction = Direction::of(ex.role);
        if direction == Direction::Outbound && !self.sessions_cfg.track_outbound {
            return;
        }
        // The event's time, never after `now`.
        let t = ex.started_at.min(now);
        let identities = self.extractor.extract(ex, &self.key);
        let peer = match ex.role {
            Role::Server => ex.client.ip(),
            Role::Client => ex.server.ip(),
        }
        .to_canonical();
        let remote_peer = !peer.is_loopback() && !peer.is_unspecified();
        let cfg = &self.sessions_cfg;
        let network = dims::network_of(peer, cfg.client_ip, cfg.ipv4_prefix, cfg.ipv6_prefix);
        let agent: Arc<str> = Arc::from(dims::agent_family(ex.header("user-agent")));

        let primary = identities.first();
        let base_id = match primary {
            Some(id) => id.fingerprint.to_string(),
            None => {
                let group = format!("{network}\0{agent}");
                self.key
                    .fingerprint("anon", "anon", group.as_bytes())
                    .to_string()
            }
        };
        let id: Arc<str> = match direction {
            Direction::Inbound => Arc::from(base_id),
            Direction::Outbound => Arc::from(format!("{OUTBOUND_PREFIX}{base_id}")),
        };
        let frozen_hit = identities.iter().any(|i| {
            self.frozen.contains(&i.fingerprint)
                || i.jwt()
                    .and_then(|c| c.sub.as_ref())
                    .is_some_and(|s| self.frozen.contains(s))
        });

        if !self.sessions.contains_key(&id) {
            if self.sessions.len() >= self.sessions_cfg.max_sessions {
                self.evict_for_capacity();
            }
            let fp = primary.map(|i| i.fingerprint.clone());
            let mut s = Session::new(Arc::clone(&id), direction, fp, t, &self.limits);
            s.frozen = s
                .fingerprint
                .as_ref()
                .is_some_and(|f| self.frozen.contains(f));
            self.sessions.insert(Arc::clone(&id), s);
            self.counters.sessions_created += 1;
        }
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let sc = &self.scoring;
        s.settled = false;
        s.first_seen = s.first_seen.min(t);
        s.last_seen = s.last_seen.max(t);
        s.requests += 1;
        s.rate.record(t, sc.rate_short_secs, sc.rate_baseline_secs);

        // Network + agent switch: both differ from the previous request's and both are new.
        if let Some((last_net, last_agent)) = &s.last_pair {
            if s.requests > sc.switch_min_requests
                && *last_net != network
                && **last_agent != *agent
                && !s.networks.map.contains_key(&network)
                && !s.agents.map.contains_key(&agent)
            {
                mark(&mut s.marks.network_agent_switch, t);
            }
        }
        s.last_pair = Some((network, Arc::clone(&agent)));
        s.hit_network(network, t);
        s.hit_agent(&agent, t);

        // Route, with distinct ids.
        let mut ids = Vec::new();
        let hasher = &self.id_hasher;
        let route = dims::route(&ex.method, &ex.path, &mut ids, |seg| hasher.hash_one(seg));
        let r = s.routes.entry(Arc::from(route), || RouteStats::new(t));
        r.requests += 1;
        r.status[class_index(ex.status)] += 1;
        r.rate.record(t, sc.rate_short_secs, sc.rate_baseline_secs);
        r.last_seen = r.last_seen.max(t);
        if !ids.is_empty() {
            let combined = ids.iter().fold(0u64, |acc, h| acc.rotate_left(17) ^ h);
            let ring = r
                .ids
                .get_or_insert_with(|| Box::new(state::Ring::new(sc.window(), ID_BUCKETS)));
            if let Some(bits) = ring.at(t) {
                bits.insert(combined);
            }
        }

        // Outcomes.
        s.status[class_index(ex.status)] += 1;
        if let Some(c) = s.window.at(t) {
            c.requests += 1;
            if matches!(ex.status, 401 | 403) {
                c.auth_failures += 1;
            }
            if ex.status == 404 {
                c.not_found += 1;
            }
        }
        s.request_bytes += ex.request_body_bytes;
        s.response_bytes += ex.response_body_bytes.unwrap_or(0);
        s.latency_sum += ex.latency;
        s.latency_max = s.latency_max.max(ex.latency);
        let hour = (unix_secs(t) as u64 / 3600) % 24;
        s.active_hours |= 1 << hour;
        if !ex.workload.is_empty()
            && s.workloads.len() < MAX_PROCESSES
            && !s.workloads.iter().any(|w| **w == *ex.workload)
        {
            s.workloads.push(Arc::clone(&ex.workload));
        }
        if !s.processes.contains(&ex.comm) && s.processes.len() < MAX_PROCESSES {
            s.processes.push(Arc::clone(&ex.comm));
        }
        if ex.tls {
            s.tls_requests += 1;
        } else {
            s.plaintext_requests += 1;
        }

        // Credentials.
        if let Some(p) = primary {
            self.counters.authenticated += 1;
            s.kind.get_or_insert(p.kind);
            match &p.format {
                TokenFormat::Jwt(c) if s.jwt.is_none() => s.jwt = Some(c.clone()),
                TokenFormat::JwtMalformed(e) => s.jwt_error = Some(*e),
                _ => {}
            }
            if !ex.tls && remote_peer {
                mark(&mut s.marks.plaintext_credential, t);
            }
        }
        let t_unix = unix_secs(t) as i64;
        let leeway = sc.jwt_leeway_secs as i64;
        let ok = (200..300).contains(&ex.status);
        for i in &identities {
            if i.source == CredentialSource::Query {
                mark(&mut s.marks.credential_in_query, t);
            }
            let loc = (i.source, Arc::clone(&i.location));
            if s.fingerprint.as_ref() == Some(&i.fingerprint)
                && !s.locations.contains(&loc)
                && s.locations.len() < MAX_LOCATIONS
            {
                s.locations.push(loc);
            }
            if let Some(c) = i.jwt() {
                if c.alg_none() {
                    mark(&mut s.marks.jwt_alg_none, t);
                }
                if ok && c.exp.is_some_and(|exp| t_unix > exp.saturating_add(leeway)) {
                    mark(&mut s.marks.expired_jwt_accepted, t);
                }
                if ok && c.nbf.is_some_and(|nbf| t_unix < nbf.saturating_sub(leeway)) {
                    mark(&mut s.marks.jwt_not_yet_valid, t);
                }
            }
        }
        if frozen_hit {
            s.frozen_uses += 1;
            mark(&mut s.marks.frozen_use, t);
            self.counters.frozen_uses += 1;
        }
    }

    /// Drop the least recently used sessions (1% of the table, at least one).
    fn evict_for_capacity(&mut self) {
        let n = (self.sessions.len() / 100).max(1);
        let mut by_age: Vec<(SystemTime, Arc<str>)> = self
            .sessions
            .values()
            .map(|s| (s.last_seen, Arc::clone(&s.id)))
            .collect();
        if n < by_age.len() {
            by_age.select_nth_unstable(n);
        }
        for (_, id) in by_age.into_iter().take(n) {
            self.sessions.remove(&id);
            self.counters.evicted_capacity += 1;
        }
    }

    /// Drop sessions idle for `idle_ttl_secs` and sessions older than `max_age_secs`;
    /// returns how many.
    pub fn expire(&mut self, now: SystemTime) -> usize {
        self.tick(now);
        let ttl = Duration::from_secs(self.sessions_cfg.idle_ttl_secs);
        let max_age = Duration::from_secs(self.sessions_cfg.max_age_secs);
        let before = self.sessions.len();
        self.sessions.retain(|_, s| since(now, s.last_seen) < ttl);
        let idle = before - self.sessions.len();
        self.sessions
            .retain(|_, s| since(now, s.first_seen) < max_age);
        let old = before - idle - self.sessions.len();
        self.counters.evicted_idle += idle as u64;
        self.counters.expired_max_age += old as u64;
        idle + old
    }

    /// One scoring pass: re-assess every session that can have changed and return the
    /// state changes (sorted by session id).
    pub fn score(&mut self, now: SystemTime) -> Vec<StateChange> {
        self.tick(now);
        let settle_after = self.scoring.window()
            + Duration::from_secs(self.scoring.window_secs / 5 + 1)
            + Duration::from_secs_f64(self.scoring.rate_short_secs * 10.0);
        let mut changes = Vec::new();
        for s in self.sessions.values_mut() {
            if s.settled {
                continue;
            }
            let a = score::evaluate(s, &self.scoring, now);
            for r in &a.reasons {
                if !s.reasons.contains(r) {
                    *self.counters.signals.entry(*r).or_default() += 1;
                }
            }
            if a.state != s.state {
                changes.push(StateChange {
                    session_id: s.id.to_string(),
                    direction: s.direction,
                    from: s.state,
                    to: a.state,
                    score: a.score,
                    reasons: a.reasons.clone(),
                    at: now,
                });
            }
            s.score = a.score;
            s.state = a.state;
            s.reasons = a.reasons;
            s.settled = since(now, s.last_seen) > settle_after;
        }
        self.counters.state_changes += changes.len() as u64;
        changes.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        changes
    }

    fn summary(&self, s: &Session) -> SessionSummary {
        SessionSummary {
            id: s.id.to_string(),
            direction: s.direction,
            kind: s.kind.map_or("anonymous", CredentialKind::as_str),
            fingerprint: s.fingerprint.clone(),
            state: s.state,
            score: s.score,
            reasons: s.reasons.clone(),
            first_seen: s.first_seen,
            last_seen: s.last_seen,
            requests: s.requests,
            rate: s.rate.current(self.now, self.scoring.rate_short_secs),
            networks: s.networks.map.len(),
            agents: s.agents.map.len(),
            frozen: s.frozen,
        }
    }

    /// Sessions matching `q`, riskiest (lowest score) first, then most recently used.
    pub fn list(&self, q: &ListQuery) -> Vec<SessionSummary> {
        let mut v: Vec<&Session> = self
            .sessions
            .values()
            .filter(|s| q.state.is_none_or(|st| s.state == st))
            .filter(|s| q.direction.is_none_or(|d| s.direction == d))
            .collect();
        v.sort_by(|a, b| {
            a.score
                .cmp(&b.score)
                .then(b.last_seen.cmp(&a.last_seen))
                .then(a.id.cmp(&b.id))
        });
        v.into_iter()
            .take(q.limit.unwrap_or(100))
            .map(|s| self.summary(s))
            .collect()
    }

    /// Session counts per state and direction.
    pub fn state_counts(&self) -> HashMap<(HealthState, Direction), usize> {
        let mut m = HashMap::new();
        for s in self.sessions.values() {
            *m.entry((s.state, s.direction)).or_default() += 1;
        }
        m
    }

    /// The `k` riskiest sessions that are not healthy-with-full-score: (id, score).
    pub fn riskiest(&self, k: usize) -> Vec<(String, u8)> {
        let mut v: Vec<&Session> = self.sessions.values().filter(|s| s.score < 100).collect();
        v.sort_by(|a, b| a.score.cmp(&b.score).then(a.id.cmp(&b.id)));
        v.into_iter()
            .take(k)
            .map(|s| (s.id.to_string(), s.score))
            .collect()
    }

    /// Everything about one session (by id, e.g. `tok_5f2c9a1e0b7d` or `out:tok_…`).
    pub fn get(&self, id: &str) -> Option<SessionDetail> {
        let s = self.sessions.get(id)?;
        let now = self.now;
        let sc = &self.scoring;
        let dim = |value: String, d: &state::DimStat| DimensionView {
            value,
            requests: d.requests,
            first_seen: d.first_seen,
            last_seen: d.last_seen,
        };
        let mut networks: Vec<DimensionView> = s
            .networks
            .map
            .iter()
            .map(|(n, d)| dim(n.to_string(), d))
            .collect();
        networks.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.value.cmp(&b.value)));
        let mut agents: Vec<DimensionView> = s
            .agents
            .map
            .iter()
            .map(|(a, d)| dim(a.to_string(), d))
            .collect();
        agents.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.value.cmp(&b.value)));
        let warmed = |first: SystemTime, requests: u64| {
            requests >= sc.warmup_requests && since(now, first).as_secs() >= sc.warmup_secs
        };
        let mut routes: Vec<RouteView> = s
            .routes
            .map
            .iter()
            .map(|(route, r)| RouteView {
                route: route.to_string(),
                requests: r.requests,
                status: r.status.into(),
                distinct_ids: r.distinct_ids(now),
                rate: r.rate.current(now, sc.rate_short_secs),
                baseline_rate: warmed(r.first_seen, r.requests).then(|| {
                    r.rate
                        .baseline(now, sc.rate_baseline_secs, since(now, r.first_seen))
                }),
                last_seen: r.last_seen,
            })
            .collect();
        routes.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.route.cmp(&b.route)));
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let last = unix_secs(s.last_seen) as i64;
        let jwt = s.jwt.as_ref().map(|c| JwtView {
            exp_state: match (c.exp, c.nbf) {
                (_, Some(nbf)) if last < nbf => ExpState::NotYetValid,
                (Some(exp), _) if last > exp => ExpState::Expired,
                (Some(_), _) => ExpState::Valid,
                (None, _) => ExpState::NoExp,
            },
            claims: (**c).clone(),
        });
        Some(SessionDetail {
            summary: self.summary(s),
            baseline_rate: warmed(s.first_seen, s.requests).then(|| {
                s.rate
                    .baseline(now, sc.rate_baseline_secs, since(now, s.first_seen))
            }),
            credential_locations: s
                .locations
                .iter()
                .map(|(source, name)| LocationView {
                    source: *source,
                    name: name.to_string(),
                })
                .collect(),
            networks,
            agents,
            routes,
            dropped: DroppedCounts {
                networks: s.networks.dropped,
                agents: s.agents.dropped,
                routes: s.routes.dropped,
            },
            status: s.status.into(),
            request_bytes: s.request_bytes,
            response_bytes: s.response_bytes,
            latency_mean_ms: if s.requests == 0 {
                0.0
            } else {
                ms(s.latency_sum) / s.requests as f64
            },
            latency_max_ms: ms(s.latency_max),
            latency_sum_ms: ms(s.latency_sum),
            active_hours: (0..24u8)
                .filter(|h| s.active_hours & (1 << h) != 0)
                .collect(),
            processes: s.processes.iter().map(|p| p.to_string()).collect(),
            workloads: s.workloads.iter().map(|w| (**w).clone()).collect(),
            tls_requests: s.tls_requests,
            plaintext_requests: s.plaintext_requests,
            jwt,
            jwt_error: s.jwt_error,
            frozen_uses: s.frozen_uses,
        })
    }

    fn sessions_of<'a>(&'a mut self, fp: &'a Fingerprint) -> impl Iterator<Item = &'a mut Session> {
        self.sessions.values_mut().filter(move |s| {
            s.fingerprint.as_ref() == Some(fp)
                || s.jwt.as_ref().and_then(|c| c.sub.as_ref()) == Some(fp)
        })
    }

    /// Freeze a fingerprint (a credential's, or a JWT `sub_…`): any later use is the
    /// `frozen_credential` signal. Returns whether it was newly frozen.
    pub fn freeze(&mut self, fingerprint: &str) -> Result<bool, FreezeError> {
        let fp = Fingerprint::parse(fingerprint)
            .filter(|f| FREEZABLE.contains(&f.prefix()))
            .ok_or(FreezeError::Invalid)?;
        if self.frozen.contains(&fp) {
            return Ok(false);
        }
        if self.frozen.len() >= self.sessions_cfg.max_frozen {
            return Err(FreezeError::Full);
        }
        self.frozen.insert(fp.clone());
        for s in self.sessions_of(&fp) {
            s.frozen = true;
            s.settled = false;
        }
        Ok(true)
    }

    /// Lift a freeze; the sessions' `frozen_credential` signal clears on the next pass.
    /// Returns whether it was frozen.
    pub fn unfreeze(&mut self, fingerprint: &str) -> Result<bool, FreezeError> {
        let fp = Fingerprint::parse(fingerprint).ok_or(FreezeError::Invalid)?;
        if !self.frozen.remove(&fp) {
            return Ok(false);
        }
        for s in self.sessions_of(&fp) {
            s.frozen = false;
            s.marks.frozen_use = None;
            s.settled = false;
        }
        Ok(true)
    }

    /// Frozen fingerprints, sorted.
    pub fn frozen(&self) -> Vec<Fingerprint> {
        let mut v: Vec<Fingerprint> = self.frozen.iter().cloned().collect();
        v.sort();
        v
    }

    /// Drop every session (frozen fingerprints stay). Returns how many were dropped.
    pub fn purge(&mut self) -> usize {
        let n = self.sessions.len();
        self.sessions.clear();
        // Id hashes from before cannot be matched against later ones.
        self.id_hasher = RandomState::new();
        self.counters.purged += n as u64;
        n
    }

    /// Rotate the fingerprint key. Sessions and frozen fingerprints were made with the old
    /// key and can no longer match: they are dropped (the count of dropped freezes is
    /// returned, so the caller can report it).
    pub fn rotate_key(&mut self) -> Result<usize, KeyError> {
        self.key.rotate()?;
        self.purge();
        let frozen = self.frozen.len();
        if frozen > 0 {
            tracing::warn!(
                frozen,
                "fingerprint key rotated: frozen fingerprints dropped"
            );
        }
        self.frozen.clear();
        Ok(frozen)
    }
}
