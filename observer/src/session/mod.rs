//! Sessions: exchanges grouped per credential fingerprint (or, without a credential, per
//! client network and user-agent family), with the reduced dimensions scoring needs, and
//! views across credentials (per client network, per route) for abuse spread over many.
//!
//! [`SessionTable`] owns the sessions, the fingerprint key, the frozen fingerprints, the
//! findings and the counters. The agent calls [`SessionTable::observe`] for each
//! exchange, [`SessionTable::score`] every `scoring.interval_secs` and
//! [`SessionTable::expire`] now and then. What the API shows is in [`view`], freezing in
//! [`freeze`], findings in [`findings`]. Every time is passed in (`now`), so tests
//! control the clock.
//!
//! Server-side exchanges ([`Role::Server`]) make inbound sessions; client-side ones (calls
//! this host makes) make outbound sessions, kept apart (ids prefixed `out:`), so a request
//! seen from both ends on loopback is counted once per direction.

pub(crate) mod across;
#[cfg(test)]
mod cache_tests;
pub mod config;
pub mod dims;
pub mod durable;
pub mod findings;
mod fleet;
pub mod freeze;
#[cfg(test)]
mod freeze_tests;
#[cfg(test)]
mod incremental_tests;
pub mod metrics;
pub mod privacy;
#[cfg(test)]
mod signal_tests;
pub(crate) mod state;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
pub mod view;
pub(crate) mod window;

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    hash::BuildHasher,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{
    exchange::{Exchange, Role},
    identity::{
        CredentialCache, CredentialSource, DurableHash, Extractor, Fingerprint, FingerprintKey,
        FreezeKey, Identity, KeyError, TierConfig, TierRules, TokenFormat,
    },
    score::{self, Reason, ScoreConfig, TrustedNetworks, ViewKind},
};

use across::{AcrossStats, Use, ID_BUCKETS};
pub use config::{SessionConfig, SessionTableConfig};
pub use dims::{ClientIpMode, Network};
pub use durable::StateError;
use findings::{FindingKind, Findings};
pub use fleet::{freeze_diff, FleetDetail, FleetPublication, FreezeMarks};
pub use freeze::{CredentialReport, FreezeError, FrozenItem, FREEZABLE};
use state::{
    class_index, mark, since, unix_secs, Limits, RouteStats, Session, MAX_LOCATIONS, MAX_PROCESSES,
};
pub use view::{ListQuery, SessionDetail, SessionSummary, StateChange};
use window::{fast_map, keyed_state, FastMap};

/// Keyed hasher of values kept as hashes (path ids, credentials in views, cache keys of
/// `User-Agent` headers).
type IdHasher = foldhash::quality::SeedableRandomState;

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

/// Prefix of outbound session ids.
pub const OUTBOUND_PREFIX: &str = "out:";

/// Prefix of network view ids (`net:10.0.3.0/24`).
pub const NETWORK_VIEW_PREFIX: &str = "net:";
/// Prefix of route view ids (`route:POST /login`).
pub const ROUTE_VIEW_PREFIX: &str = "route:";
/// Most views across credentials; beyond it the least recently used are dropped.
pub const MAX_VIEWS: usize = 4096;
/// A view is listed once it has seen this many credentials (one credential's view would
/// only repeat its session).
pub const VIEW_MIN_CREDENTIALS: usize = 2;
/// Most route keys kept for reuse (beyond it the cache starts over).
const MAX_ROUTE_KEYS: usize = 4096;
/// Most user-agent families and product fingerprints cached (per key).
const MAX_AGENT_CACHE: usize = 4096;
/// Most anonymous session fingerprints (per network and agent) cached (per key).
const MAX_ANON_CACHE: usize = 4096;
/// Most network view ids cached.
const MAX_NETWORK_VIEW_KEYS: usize = 4096;

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

/// All sessions, their scoring and the fingerprint key.
pub struct SessionTable {
    sessions_cfg: SessionConfig,
    scoring: ScoreConfig,
    tiers: TierConfig,
    trusted: TrustedNetworks,
    limits: Limits,
    extractor: Extractor,
    key: FingerprintKey,
    /// What extraction made of credentials seen lately (by keyed hash, never raw).
    credentials: CredentialCache,
    /// Scratch buffers of `observe`: the exchange's identities and an outbound id.
    identities: Vec<Identity>,
    id_buf: String,
    sessions: FastMap<Arc<str>, Session>,
    /// What the sessions hold across them (for the privacy report).
    held: privacy::Held,
    /// Views across credentials (per network, per route), bounded by `MAX_VIEWS`.
    views: FastMap<Arc<str>, Session>,
    /// Network view ids (`net:10.0.3.0/24`) by network (no formatting per exchange).
    network_views: FastMap<Network, Arc<str>>,
    /// Frozen fingerprints under the current key (the per-request check).
    frozen: HashSet<Fingerprint>,
    /// Durable freezes by durable hash (see [`freeze`]).
    durable: BTreeMap<DurableHash, durable::DurableEntry>,
    /// Key of durable hashes: from `state_dir/freeze.key`, else random per run.
    freeze_key: FreezeKey,
    state_dir: Option<std::path::PathBuf>,
    /// `state_dir/frozen.json`, once [`SessionTable::open_state`] loaded it.
    frozen_file: Option<std::path::PathBuf>,
    findings: Findings,
    /// Keyed per process: hashes of path ids and credentials in views are never linkable
    /// across runs.
    id_hasher: IdHasher,
    /// Route keys in use (see `route_key`) with their route view ids, and the buffer they
    /// are built in.
    route_keys: FastMap<Arc<str>, Arc<str>>,
    route_buf: String,
    /// `User-Agent` headers (by keyed per-process hash) to their client family or
    /// keyed product fingerprint.
    agent_cache: FastMap<u64, Arc<str>>,
    /// Anonymous sessions' fingerprints by client network and agent.
    anon_ids: FastMap<(Network, Arc<str>), Fingerprint>,
    /// [`FingerprintKey::stamp`] of the key `agent_cache` and `anon_ids` were made with.
    cache_stamp: u64,
    counters: TableCounters,
    /// Latest time seen by any call (views are relative to it).
    now: SystemTime,
    /// Lower bounds of every session's (and view's) `last_seen` and of every session's
    /// `first_seen`: while neither is old enough, nothing can expire.
    expiry_floor: (SystemTime, SystemTime),
    /// When the current fingerprint key came into use (set by the first rotation check).
    key_since: Option<SystemTime>,
    /// When the key last rotated.
    last_rotation: Option<SystemTime>,
    rotate_every: Duration,
    /// Fleet mode: this node's name (the detail's fleet view names it).
    fleet_node: Option<Arc<str>>,
    /// `[downstream]`, when downstream capture is on: requests' database work is judged
    /// against their route's baseline.
    downstream: Option<crate::downstream::DownstreamConfig>,
    /// Database calls per request of each route's recent requests, with the session that
    /// made each (`[downstream]` on).
    route_work: FastMap<Arc<str>, RouteWork>,
}

/// The last requests of one route: (session hash, database calls), a ring.
#[derive(Default)]
struct RouteWork {
    recent: Vec<(u64, u32)>,
    next: usize,
}

/// Requests kept per route for its baseline, routes kept, and the fewest requests of
/// other sessions a baseline needs.
const ROUTE_WORK_REQUESTS: usize = 64;
const MAX_ROUTE_WORK: usize = 2048;
const MIN_BASELINE_REQUESTS: usize = 8;

impl RouteWork {
    fn push(&mut self, session: u64, calls: u32) {
        if self.recent.len() < ROUTE_WORK_REQUESTS {
            self.recent.push((session, calls));
        } else {
            self.recent[self.next] = (session, calls);
        }
        self.next = (self.next + 1) % ROUTE_WORK_REQUESTS;
    }

    /// The median database calls per request of sessions other than `session`, when
    /// they made enough requests.
    fn baseline(&self, session: u64) -> Option<f64> {
        let mut others: Vec<u32> = self
            .recent
            .iter()
            .filter(|(s, _)| *s != session)
            .map(|(_, c)| *c)
            .collect();
        if others.len() < MIN_BASELINE_REQUESTS {
            return None;
        }
        let mid = others.len() / 2;
        let (_, m, _) = others.select_nth_unstable(mid);
        Some(f64::from(*m))
    }
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
        // Validated with the config; a bad list here trusts nothing.
        let trusted = TrustedNetworks::parse(&config.scoring.trusted_networks).unwrap_or_default();
        let fleet_freeze_key = key.fleet_freeze_key();
        Self {
            rotate_every: Duration::from_secs(config.identity.rotate_every_secs),
            key_since: None,
            last_rotation: None,
            extractor: Extractor::new(&config.identity).with_tiers(TierRules::new(&config.tiers)),
            sessions_cfg: config.sessions,
            scoring: config.scoring,
            tiers: config.tiers,
            trusted,
            limits,
            cache_stamp: key.stamp(),
            key,
            credentials: CredentialCache::new(),
            identities: Vec::new(),
            id_buf: String::new(),
            sessions: fast_map(),
            held: privacy::Held::default(),
            views: fast_map(),
            network_views: fast_map(),
            frozen: HashSet::new(),
            durable: BTreeMap::new(),
            // Fleet mode: derived from the shared secret (the same on every node). Else,
            // with a state directory, replaced by its key in `open_state`.
            freeze_key: fleet_freeze_key.unwrap_or_else(|| {
                FreezeKey::random().unwrap_or_else(|e| {
                    tracing::warn!("no randomness for the freeze key ({e}); using a fixed one");
                    FreezeKey::from_bytes([0x5a; 32])
                })
            }),
            state_dir: config.state_dir.clone(),
            frozen_file: None,
            findings: Findings::default(),
            id_hasher: keyed_state(),
            agent_cache: fast_map(),
            anon_ids: fast_map(),
            route_keys: fast_map(),
            route_buf: String::new(),
            counters: TableCounters::default(),
            now: SystemTime::UNIX_EPOCH,
            expiry_floor: (SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH),
            fleet_node: None,
            downstream: None,
            route_work: window::fast_map(),
        }
    }

    /// Fleet mode: this node's name.
    /// Judge the downstream work of inbound requests (downstream capture is on).
    pub fn set_downstream(&mut self, config: crate::downstream::DownstreamConfig) {
        self.downstream = Some(config);
    }

    pub fn set_fleet_node(&mut self, node: &str) {
        self.fleet_node = Some(Arc::from(node));
    }

    pub fn scoring_config(&self) -> &ScoreConfig {
        &self.scoring
    }

    pub fn session_config(&self) -> &SessionConfig {
        &self.sessions_cfg
    }

    pub fn tier_config(&self) -> &TierConfig {
        &self.tiers
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

    /// Findings about the APIs (plaintext credentials, credentials in query strings).
    pub fn findings(&self) -> &Findings {
        &self.findings
    }

    /// Generation of the fingerprint key: rotations so far, or the epoch in fleet mode.
    pub fn key_generation(&self) -> u64 {
        self.key.generation()
    }

    fn tick(&mut self, now: SystemTime) {
        self.now = self.now.max(now);
    }

    /// The client family of a `User-Agent`: a known family (`curl/8`, `Chrome/120`), or a
    /// keyed fingerprint of any other product name (`ua_3f9c0a1b2c3d`), never the raw
    /// text.
    fn agent_of(&mut self, ua: Option<&str>) -> Arc<str> {
        // Cached by an unkeyed per-process hash of the header: a client's next request
        // costs one hash, no parsing and no allocation; the header itself is not kept.
        let h = self.id_hasher.hash_one(("ua", ua));
        if let Some(family) = self.agent_cache.get(&h) {
            return Arc::clone(family);
        }
        let family: Arc<str> = match dims::agent_family(ua) {
            dims::Agent::Known(family) => Arc::from(family),
            dims::Agent::Product(name) => Arc::from(
                self.key
                    .fingerprint("ua", "user-agent", name.as_bytes())
                    .as_str(),
            ),
        };
        if self.agent_cache.len() >= MAX_AGENT_CACHE {
            self.agent_cache.clear();
        }
        self.agent_cache.insert(h, Arc::clone(&family));
        family
    }

    /// `GET /users/{id}`, shared by every session and view that names it, and the id of
    /// its route view (`route:GET /users/{id}`): built in a scratch buffer and looked up,
    /// so a known route costs no allocation.
    fn route_key(&mut self, ex: &Exchange) -> (Arc<str>, Arc<str>) {
        let mut key = std::mem::take(&mut self.route_buf);
        key.clear();
        ex.route.write_key(&mut key);
        let route = match self.route_keys.get_key_value(key.as_str()) {
            Some((r, v)) => (Arc::clone(r), Arc::clone(v)),
            None => {
                if self.route_keys.len() >= MAX_ROUTE_KEYS {
                    self.route_keys.clear();
                }
                let r: Arc<str> = Arc::from(key.as_str());
                let v: Arc<str> = Arc::from(format!("{ROUTE_VIEW_PREFIX}{key}"));
                self.route_keys.insert(Arc::clone(&r), Arc::clone(&v));
                (r, v)
            }
        };
        self.route_buf = key;
        route
    }

    /// The id of the view of network `n` (`net:10.0.3.0/24`).
    fn network_view_key(&mut self, n: Network) -> Arc<str> {
        if let Some(k) = self.network_views.get(&n) {
            return Arc::clone(k);
        }
        if self.network_views.len() >= MAX_NETWORK_VIEW_KEYS {
            self.network_views.clear();
        }
        let mut key = String::new();
        let _ = write!(key, "{NETWORK_VIEW_PREFIX}{n}");
        let key: Arc<str> = Arc::from(key);
        self.network_views.insert(n, Arc::clone(&key));
        key
    }

    /// The fingerprint of the anonymous group of `network` and `agent` (the id of its
    /// session).
    fn anon_id(&mut self, network: Network, agent: &Arc<str>) -> Fingerprint {
        let k = (network, Arc::clone(agent));
        if let Some(f) = self.anon_ids.get(&k) {
            return f.clone();
        }
        let group = format!("{network}\0{agent}");
        let f = self.key.fingerprint("anon", "anon", group.as_bytes());
        if self.anon_ids.len() >= MAX_ANON_CACHE {
            self.anon_ids.clear();
        }
        self.anon_ids.insert(k, f.clone());
        f
    }

    /// Forget what the key-dependent caches hold if the key changed since.
    fn check_key_caches(&mut self) {
        if self.cache_stamp != self.key.stamp() {
            self.agent_cache.clear();
            self.anon_ids.clear();
            self.credentials.clear();
            self.cache_stamp = self.key.stamp();
        }
    }

    /// Make the session `id` (missing from the table).
    fn new_session(
        &mut self,
        id: Arc<str>,
        direction: Direction,
        fingerprint: Option<&Fingerprint>,
        durable: Option<DurableHash>,
        t: SystemTime,
    ) {
        if self.sessions.len() >= self.sessions_cfg.max_sessions {
            let held = &mut self.held;
            evict_oldest(
                &mut self.sessions,
                &mut self.counters.evicted_capacity,
                |s| held.remove(s),
            );
        }
        let mut s = Session::new(
            Arc::clone(&id),
            direction,
            fingerprint.cloned(),
            t,
            &self.limits,
        );
        s.frozen = fingerprint.is_some_and(|f| self.frozen.contains(f));
        s.durable = durable;
        self.held.add(direction);
        self.sessions.insert(id, s);
        self.counters.sessions_created += 1;
    }

    /// The view `id`, made when missing. Looked up by `&str`: an existing view costs no
    /// allocation.
    fn view_mut(&mut self, id: &str, kind: ViewKind, t: SystemTime) -> &mut Session {
        if !self.views.contains_key(id) {
            if self.views.len() >= MAX_VIEWS {
                evict_oldest(&mut self.views, &mut self.counters.evicted_capacity, |_| {});
            }
            let id: Arc<str> = Arc::from(id);
            let mut v = Session::new(Arc::clone(&id), Direction::Inbound, None, t, &self.limits);
            v.across = Some(Box::new(AcrossStats::new(kind, self.limits.window)));
            self.views.insert(id, v);
        }
        self.views.get_mut(id).expect("present or just inserted")
    }

    /// Add one exchange. Its credentials are fingerprinted here and not kept raw.
    pub fn observe(&mut self, ex: &Exchange, now: SystemTime) {
        self.tick(now);
        self.counters.exchanges += 1;
        let direction = Direction::of(ex.role);
        if direction == Direction::Outbound && !self.sessions_cfg.track_outbound {
            return;
        }
        let mut identities = std::mem::take(&mut self.identities);
        let mut id_buf = std::mem::take(&mut self.id_buf);
        self.observe_with(ex, now, direction, &mut identities, &mut id_buf);
        identities.clear();
        self.identities = identities;
        self.id_buf = id_buf;
    }

    /// [`SessionTable::observe`] with its scratch buffers.
    fn observe_with(
        &mut self,
        ex: &Exchange,
        now: SystemTime,
        direction: Direction,
        identities: &mut Vec<Identity>,
        id_buf: &mut String,
    ) {
        // The event's time, never after `now`.
        let t = ex.started_at.min(now);
        let t_secs = unix_secs(t);
        // Whatever this exchange makes or updates is seen at `t` at the earliest.
        self.expiry_floor.0 = self.expiry_floor.0.min(t);
        self.expiry_floor.1 = self.expiry_floor.1.min(t);
        self.check_key_caches();
        self.extractor
            .extract_cached(ex, &self.key, &mut self.credentials, identities);
        let identities: &[Identity] = identities;
        let peer = match ex.role {
            Role::Server => ex.client.ip(),
            Role::Client => ex.server.ip(),
        }
        .to_canonical();
        let remote_peer = !peer.is_loopback() && !peer.is_unspecified();
        // Judged on the full address, before it is truncated.
        let trusted = self.trusted.contains(peer);
        let cfg = &self.sessions_cfg;
        let network = dims::network_of(peer, cfg.client_ip, cfg.ipv4_prefix, cfg.ipv6_prefix);
        let agent = self.agent_of(ex.header("user-agent"));
        let (route, route_view) = self.route_key(ex);
        let id_hash = ex.route.has_ids().then(|| {
            let hasher = &self.id_hasher;
            ex.route
                .ids(&ex.path)
                .map(|seg| hasher.hash_one(seg))
                .fold(0u64, |acc, h| acc.rotate_left(17) ^ h)
        });

        let primary = identities.first();
        let anon;
        let base_id: &Arc<str> = match primary {
            Some(id) => id.fingerprint.shared(),
            None => {
                anon = self.anon_id(network, &agent);
                anon.shared()
            }
        };
        let id: &str = match direction {
            Direction::Inbound => base_id,
            Direction::Outbound => {
                id_buf.clear();
                id_buf.push_str(OUTBOUND_PREFIX);
                id_buf.push_str(base_id);
                id_buf.as_str()
            }
        };
        let exists = self.sessions.contains_key(id);
        // A new session: its credentials' durable hashes, once (a durable freeze made
        // under an earlier key, or before a restart, is linked to the new fingerprint).
        let mut durable = None;
        if !exists && primary.is_some() {
            let with_durable = self
                .extractor
                .extract_durable(ex, &self.key, &self.freeze_key);
            durable = with_durable.first().and_then(|i| i.durable);
            if !self.durable.is_empty() {
                for i in &with_durable {
                    if let Some(h) = &i.durable {
                        self.link(h, &i.fingerprint);
                    }
                }
            }
        }
        let frozen_hit = identities.iter().any(|i| {
            self.frozen.contains(&i.fingerprint)
                || i.jwt()
                    .and_then(|c| c.sub.as_ref())
                    .is_some_and(|s| self.frozen.contains(s))
        });

        // Facts about the API rather than the session.
        if direction == Direction::Inbound && primary.is_some() {
            let host = ex
                .header("host")
                .map(findings::host_name)
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| ex.server.to_string().into());
            if !ex.tls && remote_peer {
                self.findings
                    .record(FindingKind::PlaintextCredential, &host, &route, !trusted, t);
            }
            if identities
                .iter()
                .any(|i| i.source == CredentialSource::Query)
            {
                self.findings
                    .record(FindingKind::CredentialInQuery, &host, &route, !trusted, t);
            }
        }

        // Views across credentials (inbound, credentialed traffic only). A credential
        // failing because its JWT expired is a refresh, not a guess: no view sees it.
        let refresh = primary.is_some_and(|p| {
            matches!(ex.outcome(), 401 | 403)
                && p.jwt().and_then(|c| c.exp).is_some_and(|exp| {
                    t_secs as i64 > exp.saturating_add(self.scoring.jwt_leeway_secs as i64)
                })
        });
        if let (Direction::Inbound, Some(p), false) = (direction, primary, refresh) {
            let u = Use {
                credential: self.id_hasher.hash_one(p.fingerprint.as_str()),
                status: ex.outcome(),
                route: &route,
                ids: id_hash,
            };
            for kind in [ViewKind::Network, ViewKind::Route] {
                let key = match kind {
                    ViewKind::Network if matches!(network, Network::Net { .. }) => {
                        self.network_view_key(network)
                    }
                    ViewKind::Network => continue,
                    ViewKind::Route => Arc::clone(&route_view),
                };
                let v = self.view_mut(&key, kind, t);
                v.touch();
                v.first_seen = v.first_seen.min(t);
                v.last_seen = v.last_seen.max(t);
                v.requests += 1;
                v.status[class_index(ex.outcome())] += 1;
                // The networks a view covers (bounded like a session's).
                let _ = v.hit_network(network, t);
                if let Some(a) = v.across.as_mut() {
                    a.record(&u, t);
                }
            }
        }

        if !exists {
            let id: Arc<str> = match direction {
                Direction::Inbound => Arc::clone(base_id),
                Direction::Outbound => Arc::from(id),
            };
            self.new_session(id, direction, primary.map(|p| &p.fingerprint), durable, t);
        }
        let Some(s) = self.sessions.get_mut(id) else {
            return;
        };
        let sc = &self.scoring;
        s.touch();
        s.first_seen = s.first_seen.min(t);
        s.last_seen = s.last_seen.max(t);
        s.requests += 1;
        s.rate.record(t, sc.rate_short_secs, sc.rate_baseline_secs);
        if let Some(tier) = primary.and_then(|p| p.tier.as_ref()) {
            if s.tier.as_ref() != Some(tier) {
                s.tier = Some(Arc::clone(tier));
            }
            s.count_day(t);
        }

        // Network + agent switch: both differ from the previous request's and both are new.
        if let Some((last_net, last_agent)) = &s.last_pair {
            let net_changed = *last_net != network;
            if s.requests > sc.switch_min_requests
                && net_changed
                && **last_agent != *agent
                && !s.networks.map.contains_key(&network)
                && !s.agents.map.contains_key(&agent)
            {
                mark(&mut s.marks.network_agent_switch, t);
            }
            if net_changed {
                s.switched_network(t);
            }
        }
        s.last_pair = Some((network, Arc::clone(&agent)));
        let change = s.hit_network(network, t);
        self.held.network(network, change);
        let change = s.hit_agent(&agent, t);
        self.held.agent(&agent, change);

        // Route, with distinct ids.
        let r = s
            .routes
            .entry_at(Arc::clone(&route), t, || Box::new(RouteStats::new(t)));
        r.requests += 1;
        r.protocols |= state::protocol_bit(ex.protocol_name());
        r.status[class_index(ex.outcome())] += 1;
        r.rate.record(t, sc.rate_short_secs, sc.rate_baseline_secs);
        r.last_seen = r.last_seen.max(t);
        if let Some(combined) = id_hash {
            let ring = r
                .ids
                .get_or_insert_with(|| window::Ring::new(sc.window(), ID_BUCKETS));
            if let Some(bits) = ring.at_secs(t_secs) {
                bits.insert(combined);
            }
        }

        // Downstream work: the route's database calls per request against its baseline
        // over other sessions; database authentication errors.
        if let (Some(dc), Direction::Inbound) = (&self.downstream, direction) {
            let work = ex.downstream.as_deref();
            let calls = work.map_or(0, |w| w.database_calls());
            r.db_calls += calls;
            let session = self.id_hasher.hash_one(id);
            if self.route_work.len() >= MAX_ROUTE_WORK && !self.route_work.contains_key(&route) {
                self.route_work.clear();
            }
            let rw = self.route_work.entry(Arc::clone(&route)).or_default();
            let mean = r.db_calls as f64 / r.requests as f64;
            if r.requests >= dc.heavy_min_requests
                && mean >= dc.heavy_factor
                && rw
                    .baseline(session)
                    .is_some_and(|b| mean >= dc.heavy_factor * b.max(1.0))
            {
                mark(&mut s.marks.downstream_heavy, t);
            }
            rw.push(session, u32::try_from(calls).unwrap_or(u32::MAX));
            if let Some(w) = work {
                if w.auth_errors > 0 {
                    mark(&mut s.marks.db_auth_errors, t);
                }
                s.downstream.get_or_insert_default().merge(w);
            }
        }

        // Outcomes.
        s.status[class_index(ex.outcome())] += 1;
        if let Some(c) = s.window.at_secs(t_secs) {
            c.requests += 1;
            if matches!(ex.outcome(), 401 | 403) {
                c.auth_failures += 1;
            }
            if ex.outcome() == 404 {
                c.not_found += 1;
            }
        }
        s.request_bytes += ex.request_body_bytes;
        s.response_bytes += ex.response_body_bytes.unwrap_or(0);
        s.latency_sum += ex.latency;
        s.latency_max = s.latency_max.max(ex.latency);
        let hour = (t_secs as u64 / 3600) % 24;
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
        s.lost_exchanges += u64::from(ex.lost_before);

        // Credentials.
        if let Some(p) = primary {
            self.counters.authenticated += 1;
            s.kind.get_or_insert(p.kind);
            match &p.format {
                TokenFormat::Jwt(c) if s.jwt.is_none() => s.jwt = Some(c.clone()),
                TokenFormat::JwtMalformed(e) => s.jwt_error = Some(*e),
                _ => {}
            }
            // Exposure is evidence about this session only from an untrusted network.
            if !ex.tls && remote_peer && !trusted {
                mark(&mut s.marks.plaintext_credential, t);
            }
        }
        let t_unix = t_secs as i64;
        let leeway = sc.jwt_leeway_secs as i64;
        let ok = (200..300).contains(&ex.outcome());
        for i in identities {
            if i.source == CredentialSource::Query && !trusted {
                mark(&mut s.marks.credential_in_query, t);
            }
            if s.fingerprint.as_ref() == Some(&i.fingerprint)
                && !s
                    .locations
                    .iter()
                    .any(|(src, l)| *src == i.source && **l == *i.location)
                && s.locations.len() < MAX_LOCATIONS
            {
                s.locations.push((i.source, Arc::clone(&i.location)));
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

    /// Drop sessions idle for `idle_ttl_secs` and sessions older than `max_age_secs`;
    /// returns how many.
    pub fn expire(&mut self, now: SystemTime) -> usize {
        self.tick(now);
        let ttl = Duration::from_secs(self.sessions_cfg.idle_ttl_secs);
        let max_age = Duration::from_secs(self.sessions_cfg.max_age_secs);
        let (last, first) = self.expiry_floor;
        if since(now, last) < ttl && since(now, first) < max_age {
            // Every session and view was seen more recently than that.
            return 0;
        }
        // The floors again, from what stays.
        let mut floor = (now, now);
        self.views.retain(|_, v| {
            let keep = since(now, v.last_seen) < ttl;
            if keep {
                floor.0 = floor.0.min(v.last_seen);
            }
            keep
        });
        let (mut idle, mut old) = (0, 0);
        let held = &mut self.held;
        self.sessions.retain(|_, s| {
            if since(now, s.last_seen) >= ttl {
                idle += 1;
            } else if since(now, s.first_seen) >= max_age {
                old += 1;
            } else {
                floor.0 = floor.0.min(s.last_seen);
                floor.1 = floor.1.min(s.first_seen);
                return true;
            }
            held.remove(s);
            false
        });
        self.expiry_floor = floor;
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
        for s in self.sessions.values_mut().chain(self.views.values_mut()) {
            if s.settled {
                continue;
            }
            // Unchanged since it was last scored, and nothing it is scored on can have
            // changed with time since: scoring it again would give the same assessment.
            if s.quiet
                .is_some_and(|(scored, until)| scored <= now && now <= until)
            {
                s.settled = since(now, s.last_seen) > settle_after;
                continue;
            }
            let over_tier = s
                .consumption(&self.tiers, &self.scoring, now)
                .is_some_and(|c| c.over);
            let input = s.score_input(&self.scoring, now, over_tier);
            let a = score::evaluate(&input, &self.scoring);
            for r in &a.reasons {
                if !s.reasons.contains(r) {
                    *self.counters.signals.entry(*r).or_default() += 1;
                }
            }
            if a.state != s.state {
                changes.push(StateChange {
                    session_id: s.id.to_string(),
                    direction: s.direction,
                    kind: s.kind_name(),
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
            s.quiet = s
                .quiet_until(&input, &self.tiers, &self.scoring, now)
                .map(|until| (now, until));
            s.settled = since(now, s.last_seen) > settle_after;
            // Only scoring and changes (which make the session scored here) alter what
            // a summary shows: a settled or quiet session's is still current.
            s.refresh_summary();
        }
        self.counters.state_changes += changes.len() as u64;
        changes.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        changes
    }

    /// Drop every session (frozen fingerprints stay). Returns how many were dropped.
    pub fn purge(&mut self) -> usize {
        let n = self.sessions.len();
        self.sessions.clear();
        self.held.clear();
        self.views.clear();
        // Id hashes from before cannot be matched against later ones.
        self.id_hasher = keyed_state();
        self.agent_cache.clear();
        self.anon_ids.clear();
        self.credentials.clear();
        self.counters.purged += n as u64;
        n
    }

    /// Rotate the fingerprint key. Sessions were made with the old key and can no longer
    /// match: they are dropped. Durable freezes stay (their fingerprints under the new key
    /// are learnt on the credential's next use); plain fingerprint freezes (no live
    /// session when frozen, JWT subjects) are dropped, and their count returned.
    pub fn rotate_key(&mut self) -> Result<usize, KeyError> {
        self.key.rotate()?;
        Ok(self.forget_old_key())
    }

    /// After the key changed: drop what was made with the old one; returns the plain
    /// fingerprint freezes dropped.
    fn forget_old_key(&mut self) -> usize {
        self.purge();
        let frozen = self.unlink_all();
        if frozen > 0 {
            tracing::warn!(
                frozen,
                "fingerprint key rotated: frozen fingerprints without a durable hash dropped"
            );
        }
        frozen
    }
}

/// Drop the least recently used entries of `map` (1%, at least one); counts them, and
/// shows each to `dropped`.
fn evict_oldest(
    map: &mut FastMap<Arc<str>, Session>,
    counter: &mut u64,
    mut dropped: impl FnMut(&Session),
) {
    let n = (map.len() / 100).max(1);
    let mut by_age: Vec<(SystemTime, Arc<str>)> = map
        .values()
        .map(|s| (s.last_seen, Arc::clone(&s.id)))
        .collect();
    if n < by_age.len() {
        by_age.select_nth_unstable(n);
    }
    for (_, id) in by_age.into_iter().take(n) {
        if let Some(s) = map.remove(&id) {
            dropped(&s);
        }
        *counter += 1;
    }
}
