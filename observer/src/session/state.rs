//! One session's state and the small bounded structures it is made of.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

pub(crate) use crate::clock::{since, unix_secs, within};
use crate::{
    identity::{CredentialKind, CredentialSource, Fingerprint, JwtClaims, JwtError},
    score::{HealthState, Rate, Reason, ScoreConfig, ScoreInput, ViewKind},
};

use super::{
    across::AcrossStats,
    dims::Network,
    view::SessionSummary,
    window::{
        distinct, within_until, Bits, Bounded, Counts, DimStat, KeyChange, RateEwma, Ring, Seen,
    },
    Direction,
};
use crate::identity::TierConfig;

/// A session's use against its access tier.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Consumption {
    pub tier: String,
    /// Current rate, requests per second.
    pub rate: f64,
    /// The tier's rate (0: unlimited).
    pub rate_limit: f64,
    pub requests_today: u64,
    /// The tier's daily quota (0: unlimited).
    pub requests_per_day: u64,
    /// `rate / rate_limit`, when limited.
    pub rate_ratio: Option<f64>,
    /// `requests_today / requests_per_day`, when limited.
    pub quota_ratio: Option<f64>,
    /// Above the rate or the quota.
    pub over: bool,
}

impl Consumption {
    /// The larger of the two ratios (how close to its limits the consumer is).
    pub fn ratio(&self) -> f64 {
        self.rate_ratio
            .unwrap_or(0.0)
            .max(self.quota_ratio.unwrap_or(0.0))
    }
}

/// Index of a status class in `[1xx, 2xx, 3xx, 4xx, 5xx, other]`.
pub(crate) fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => 5,
    }
}

/// One route (method + template) of a session.
#[derive(Clone, Debug)]
pub(crate) struct RouteStats {
    pub requests: u64,
    pub status: [u64; 6],
    pub rate: RateEwma,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// Distinct ids per time bucket; only for routes with id segments.
    pub ids: Option<Ring<Bits>>,
    /// Protocols the route was called over ([`PROTOCOLS`] bits).
    pub protocols: u8,
    /// Database and cache calls the route's requests caused (downstream capture).
    pub db_calls: u64,
}

/// Protocol names, one bit each in [`RouteStats::protocols`].
pub(crate) const PROTOCOLS: [&str; 3] = ["http1", "http2", "grpc"];

/// The [`RouteStats::protocols`] bit of a protocol name.
pub(crate) fn protocol_bit(name: &str) -> u8 {
    PROTOCOLS
        .iter()
        .position(|p| *p == name)
        .map_or(0, |i| 1 << i)
}

impl Seen for RouteStats {
    fn last_seen(&self) -> SystemTime {
        self.last_seen
    }
}

impl RouteStats {
    pub(crate) fn new(t: SystemTime) -> Self {
        Self {
            requests: 0,
            status: [0; 6],
            rate: RateEwma::default(),
            first_seen: t,
            last_seen: t,
            ids: None,
            protocols: 0,
            db_calls: 0,
        }
    }

    /// Names of the protocols the route was called over.
    pub(crate) fn protocol_names(&self) -> Vec<&'static str> {
        PROTOCOLS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.protocols & (1 << i) != 0)
            .map(|(_, p)| *p)
            .collect()
    }

    /// Distinct ids seen on this route within the window ending at `now`.
    pub(crate) fn distinct_ids(&self, now: SystemTime) -> u64 {
        self.ids.as_ref().map_or(0, |r| distinct(r.live(now)))
    }
}

/// Times at which event-like signals were last seen.
#[derive(Clone, Debug, Default)]
pub(crate) struct Marks {
    pub network_agent_switch: Option<SystemTime>,
    pub expired_jwt_accepted: Option<SystemTime>,
    pub jwt_not_yet_valid: Option<SystemTime>,
    pub jwt_alg_none: Option<SystemTime>,
    /// Only from untrusted networks (elsewhere these are findings, not signals).
    pub credential_in_query: Option<SystemTime>,
    pub plaintext_credential: Option<SystemTime>,
    /// Last use while frozen; cleared by unfreeze.
    pub frozen_use: Option<SystemTime>,
    /// Requests on a route causing far more database work than the route's baseline.
    pub downstream_heavy: Option<SystemTime>,
    /// Database authentication or permission errors caused by a request.
    pub db_auth_errors: Option<SystemTime>,
}

pub(crate) fn mark(slot: &mut Option<SystemTime>, t: SystemTime) {
    if slot.is_none_or(|s| t > s) {
        *slot = Some(t);
    }
}

/// One session: everything kept about one credential (or one anonymous client group)
/// in one direction.
#[derive(Debug)]
pub(crate) struct Session {
    pub id: Arc<str>,
    pub direction: Direction,
    /// The credential; `None` for anonymous sessions and views.
    pub fingerprint: Option<Fingerprint>,
    pub kind: Option<CredentialKind>,
    /// A view across credentials (per network or route) rather than one credential's.
    pub across: Option<Box<AcrossStats>>,
    /// Where the credential was found (source, configured name), at most 4.
    pub locations: Vec<(CredentialSource, Arc<str>)>,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    pub requests: u64,
    pub rate: RateEwma,
    pub networks: Bounded<Network, DimStat>,
    pub agents: Bounded<Arc<str>, DimStat>,
    /// Boxed: a session's table of routes stays small (growing a large one costs much
    /// more than allocating small records).
    pub routes: Bounded<Arc<str>, Box<RouteStats>>,
    pub status: [u64; 6],
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub latency_sum: Duration,
    pub latency_max: Duration,
    /// Bit `h` set: active during UTC hour `h`.
    pub active_hours: u32,
    /// Local processes (comm) that served or made the requests, at most 4.
    pub processes: Vec<Arc<str>>,
    /// Containers/pods of those processes, at most 4.
    pub workloads: Vec<Arc<crate::workload::Workload>>,
    pub tls_requests: u64,
    pub plaintext_requests: u64,
    /// Exchanges of this session's connections that happened but were not seen whole
    /// (their records were lost): `requests / (requests + lost_exchanges)` is how
    /// completely the session was captured.
    pub lost_exchanges: u64,
    pub jwt: Option<Box<JwtClaims>>,
    pub jwt_error: Option<JwtError>,
    pub window: Ring<Counts>,
    pub last_pair: Option<(Network, Arc<str>)>,
    /// Times the client network changed (most recent last, at most `MAX_SWITCHES`).
    pub switches: Vec<SystemTime>,
    pub marks: Marks,
    pub frozen: bool,
    pub frozen_uses: u64,
    /// The credential's durable hash (computed once, when the session was made).
    pub durable: Option<crate::identity::DurableHash>,
    /// Access tier of the credential (`[tiers]`).
    pub tier: Option<Arc<str>>,
    /// Requests per UTC day: (day number, count) of the current day.
    pub day: (u64, u64),
    // Results of the last scoring pass.
    pub score: u8,
    pub state: HealthState,
    pub reasons: Vec<Reason>,
    /// Nothing can change this session's assessment until it is used again.
    pub settled: bool,
    /// `(scored at, until)`: scored unchanged at any time in this span, the session gets
    /// the assessment it got when last scored (see [`Session::quiet_until`]); scoring
    /// passes within it skip it. Cleared by any change ([`Session::touch`]).
    pub quiet: Option<(SystemTime, SystemTime)>,
    /// The summary of it made after it was last scored (time-independent fields only),
    /// shared by snapshots until it changes ([`Session::touch`] drops it).
    pub summary: Option<Arc<SessionSummary>>,
    /// Fleet mode: the other nodes' entries for this credential, as last read.
    pub fleet: Option<Box<crate::fleet::entry::FleetView>>,
    /// Downstream calls the session's requests caused (counts, errors, fingerprints and
    /// DNS names, bounded).
    pub downstream: Option<Box<crate::downstream::Summary>>,
}

pub(crate) const MAX_LOCATIONS: usize = 4;
pub(crate) const MAX_PROCESSES: usize = 4;
pub(crate) const SESSION_BUCKETS: usize = 10;

pub(crate) const MAX_SWITCHES: usize = 16;

/// A rate this close below a threshold counts as possibly reaching it in
/// [`Session::quiet_until`] (its decay is computed in floating point).
const RATE_MARGIN: f64 = 1.0 + 1e-9;
/// "Until further notice" for [`Session::quiet_until`].
const QUIET_FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Per-session limits, from the config.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_networks: usize,
    pub max_agents: usize,
    pub max_routes: usize,
    pub window: Duration,
}

impl Session {
    /// Share of the session's exchanges seen whole.
    pub fn capture_completeness(&self) -> f64 {
        let all = self.requests + self.lost_exchanges;
        if all == 0 {
            1.0
        } else {
            self.requests as f64 / all as f64
        }
    }

    pub(crate) fn new(
        id: Arc<str>,
        direction: Direction,
        fingerprint: Option<Fingerprint>,
        t: SystemTime,
        limits: &Limits,
    ) -> Self {
        Self {
            id,
            direction,
            fingerprint,
            kind: None,
            across: None,
            locations: Vec::new(),
            first_seen: t,
            last_seen: t,
            requests: 0,
            rate: RateEwma::default(),
            networks: Bounded::new(limits.max_networks),
            agents: Bounded::new(limits.max_agents),
            routes: Bounded::new(limits.max_routes),
            status: [0; 6],
            request_bytes: 0,
            response_bytes: 0,
            latency_sum: Duration::ZERO,
            latency_max: Duration::ZERO,
            active_hours: 0,
            processes: Vec::new(),
            workloads: Vec::new(),
            tls_requests: 0,
            plaintext_requests: 0,
            lost_exchanges: 0,
            jwt: None,
            jwt_error: None,
            window: Ring::new(limits.window, SESSION_BUCKETS),
            last_pair: None,
            switches: Vec::new(),
            marks: Marks::default(),
            frozen: false,
            frozen_uses: 0,
            durable: None,
            tier: None,
            day: (0, 0),
            score: 100,
            state: HealthState::Healthy,
            reasons: Vec::new(),
            settled: false,
            quiet: None,
            summary: None,
            fleet: None,
            downstream: None,
        }
    }

    /// The session changed (a new exchange, a freeze): the next pass scores it.
    pub(crate) fn touch(&mut self) {
        self.settled = false;
        self.quiet = None;
        self.summary = None;
    }

    /// The last instant up to which scoring this session, unchanged, gives the assessment
    /// it gets at `now` from `input` (its [`Session::score_input`] at `now`), for later
    /// times; `None` when it may change at any time, so that every pass has to score it.
    ///
    /// Without new traffic, what scoring reads changes in two ways only. Counts over the
    /// window (buckets, networks, agents, switches, event marks, ids per route, a view's
    /// credentials and routes): each item enters or leaves the window at a known instant,
    /// and the earliest of these bounds the span. Rates, which only decay: a rate signal
    /// that is off (rate below its threshold) stays off, so the span is bounded only when
    /// none can be on; over a tier likewise (rate and today's count only go down).
    pub(crate) fn quiet_until(
        &self,
        input: &ScoreInput,
        tiers: &TierConfig,
        cfg: &ScoreConfig,
        now: SystemTime,
    ) -> Option<SystemTime> {
        let window = cfg.window();
        let forever = || now.checked_add(QUIET_FOREVER).unwrap_or(now);
        if let Some(across) = &self.across {
            return Some(across.facts_until(now, window).unwrap_or_else(forever));
        }
        // The rates at `now`, as scored.
        let may_spike = |r: &Rate| r.current * RATE_MARGIN >= cfg.rate_spike_min;
        let over_limit = cfg.rate_limit > 0.0 && input.rate.current * RATE_MARGIN > cfg.rate_limit;
        if over_limit || may_spike(&input.rate) || input.route_rates.iter().any(may_spike) {
            return None;
        }
        if input.over_tier {
            return None;
        }
        if self.tier.is_some() {
            if let Some(c) = self.consumption(tiers, cfg, now) {
                let today = unix_secs(now) as u64 / 86_400;
                if c.rate_ratio.is_some_and(|r| r * RATE_MARGIN > 1.0) || self.day.0 > today {
                    return None;
                }
            }
        }
        let concurrent = Duration::from_secs(cfg.concurrent_secs);
        let m = &self.marks;
        let marks = [
            m.network_agent_switch,
            m.expired_jwt_accepted,
            m.jwt_not_yet_valid,
            m.jwt_alg_none,
            m.credential_in_query,
            m.plaintext_credential,
            m.downstream_heavy,
            m.db_auth_errors,
        ]
        .into_iter()
        .flatten()
        .map(|t| within_until(t, now, window));
        let switches = self
            .switches
            .iter()
            .map(|t| within_until(*t, now, concurrent));
        // Networks count within the window and within `concurrent_secs`.
        let networks = self.networks.map.values().flat_map(|d| {
            [
                within_until(d.last_seen, now, window),
                within_until(d.last_seen, now, concurrent),
            ]
        });
        let route_ids = self
            .routes
            .map
            .values()
            .map(|r| r.ids.as_ref().and_then(|ids| ids.live_until(now)));
        // Other nodes' entries count until they leave the window.
        let fleet = self.fleet.iter().flat_map(|v| {
            let now_secs = unix_secs(now) as u64;
            v.expiries(cfg.window_secs)
                .filter(move |t| *t > now_secs)
                .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t))
        });
        let until = [
            self.window.live_until(now),
            self.agents.live_until(now, window),
        ]
        .into_iter()
        .chain(fleet.map(Some))
        .chain(networks)
        .chain(marks)
        .chain(switches)
        .chain(route_ids)
        .flatten()
        .min();
        Some(until.unwrap_or_else(forever))
    }

    pub(crate) fn hit_network(&mut self, n: Network, t: SystemTime) -> KeyChange<Network> {
        let (d, change) = self.networks.entry_noted(n, t, || DimStat::new(t));
        d.hit(t);
        change
    }

    pub(crate) fn hit_agent(&mut self, a: &Arc<str>, t: SystemTime) -> KeyChange<Arc<str>> {
        let (d, change) = self
            .agents
            .entry_noted(Arc::clone(a), t, || DimStat::new(t));
        d.hit(t);
        change
    }

    /// Note a change of client network at `t`.
    pub(crate) fn switched_network(&mut self, t: SystemTime) {
        if self.switches.len() >= MAX_SWITCHES {
            self.switches.remove(0);
        }
        self.switches.push(t);
    }

    /// Count a request in its UTC day.
    pub(crate) fn count_day(&mut self, t: SystemTime) {
        let day = unix_secs(t) as u64 / 86_400;
        if day > self.day.0 {
            self.day = (day, 0);
        }
        if day == self.day.0 {
            self.day.1 += 1;
        }
    }

    /// Use against the credential's tier at `now`; `None` without a tier.
    pub(crate) fn consumption(
        &self,
        tiers: &TierConfig,
        cfg: &ScoreConfig,
        now: SystemTime,
    ) -> Option<Consumption> {
        let tier = self.tier.as_ref()?;
        let limits = tiers.limits(tier)?;
        let rate = self.rate.current(now, cfg.rate_short_secs);
        let today = unix_secs(now) as u64 / 86_400;
        let requests_today = if self.day.0 == today { self.day.1 } else { 0 };
        let ratio = |used: f64, allowed: f64| (allowed > 0.0).then(|| used / allowed);
        let rate_ratio = ratio(rate, limits.rate_per_sec);
        let quota_ratio = ratio(requests_today as f64, limits.requests_per_day as f64);
        Some(Consumption {
            tier: tier.to_string(),
            rate,
            rate_limit: limits.rate_per_sec,
            requests_today,
            requests_per_day: limits.requests_per_day,
            over: rate_ratio.is_some_and(|r| r > 1.0) || quota_ratio.is_some_and(|r| r > 1.0),
            rate_ratio,
            quota_ratio,
        })
    }

    /// `network`, `route` or the credential kind (`anonymous` without one).
    pub(crate) fn kind_name(&self) -> &'static str {
        match self.across.as_ref().map(|a| a.kind) {
            Some(ViewKind::Network) => "network",
            Some(ViewKind::Route) => "route",
            None => self.kind.map_or("anonymous", CredentialKind::as_str),
        }
    }

    /// A rate, with its baseline once the series has warmed up.
    fn rate_of(
        rate: &RateEwma,
        first_seen: SystemTime,
        requests: u64,
        cfg: &ScoreConfig,
        now: SystemTime,
    ) -> Rate {
        let age = since(now, first_seen);
        let warmed = requests >= cfg.warmup_requests && age.as_secs() >= cfg.warmup_secs;
        Rate {
            current: rate.current(now, cfg.rate_short_secs),
            baseline: warmed.then(|| rate.baseline(now, cfg.rate_baseline_secs, age)),
        }
    }

    /// Client networks within the window as the agent prints them (what a fleet entry
    /// lists), at most [`crate::fleet::entry::MAX_ENTRY_NETWORKS`], most used first.
    pub(crate) fn fleet_networks(&self, now: SystemTime, window: Duration) -> Vec<String> {
        let mut live: Vec<(&Network, u64)> = self
            .networks
            .live(now, window)
            .filter(|(n, _)| matches!(n, Network::Net { .. }))
            .map(|(n, d)| (n, d.requests))
            .collect();
        live.sort_by_key(|a| std::cmp::Reverse(a.1));
        live.into_iter()
            .take(crate::fleet::entry::MAX_ENTRY_NETWORKS)
            .map(|(n, _)| n.to_string())
            .collect()
    }

    /// The facts scoring reads, at `now`.
    pub(crate) fn score_input(
        &self,
        cfg: &ScoreConfig,
        now: SystemTime,
        over_tier: bool,
    ) -> ScoreInput {
        let window = cfg.window();
        if let Some(across) = &self.across {
            return ScoreInput {
                inbound: true,
                across: Some((across.kind, across.facts(now, window))),
                ..Default::default()
            };
        }
        let concurrent = Duration::from_secs(cfg.concurrent_secs);
        let recent = |t: Option<SystemTime>| t.is_some_and(|t| within(t, now, window));
        let (mut requests, mut auth_failures, mut not_found) = (0u64, 0u64, 0u64);
        for c in self.window.live(now) {
            requests += u64::from(c.requests);
            auth_failures += u64::from(c.auth_failures);
            not_found += u64::from(c.not_found);
        }
        let m = &self.marks;
        let events = [
            (m.expired_jwt_accepted, Reason::ExpiredJwtAccepted),
            (m.jwt_not_yet_valid, Reason::JwtNotYetValid),
            (m.jwt_alg_none, Reason::JwtAlgNone),
            (m.credential_in_query, Reason::CredentialInQuery),
            (m.plaintext_credential, Reason::PlaintextCredential),
            (m.downstream_heavy, Reason::DownstreamHeavy),
            (m.db_auth_errors, Reason::DbAuthErrors),
        ]
        .into_iter()
        .filter(|(t, _)| recent(*t))
        .map(|(_, r)| r)
        .collect();
        let networks = self
            .networks
            .live(now, window)
            .filter(|(n, _)| matches!(n, Network::Net { .. }))
            .count();
        // The fleet's view: its union of networks also feeds the network count.
        let fleet = self.fleet.as_ref().map(|v| {
            v.facts(
                &self.fleet_networks(now, window),
                requests > 0,
                unix_secs(now) as u64,
                cfg.window_secs,
            )
        });
        ScoreInput {
            inbound: self.direction == Direction::Inbound,
            networks: fleet.map_or(networks, |f| f.networks.max(networks)),
            fleet,
            network_switches: self
                .switches
                .iter()
                .filter(|t| within(**t, now, concurrent))
                .count() as u32,
            recent_networks: self
                .networks
                .live(now, concurrent)
                .filter(|(n, _)| matches!(n, Network::Net { .. }))
                .count(),
            agents: self.agents.live(now, window).count(),
            network_agent_switch: recent(m.network_agent_switch),
            rate: Self::rate_of(&self.rate, self.first_seen, self.requests, cfg, now),
            route_rates: self
                .routes
                .map
                .values()
                .map(|r| Self::rate_of(&r.rate, r.first_seen, r.requests, cfg, now))
                .collect(),
            requests,
            auth_failures,
            not_found,
            max_route_ids: self
                .routes
                .map
                .values()
                .map(|r| r.distinct_ids(now))
                .max()
                .unwrap_or(0),
            events,
            frozen_use: m.frozen_use.is_some(),
            over_tier,
            across: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        assert_eq!(class_index(200), 1);
        assert_eq!(class_index(404), 3);
        assert_eq!(class_index(599), 4);
        assert_eq!(class_index(0), 5);
        assert_eq!(class_index(600), 5);
    }
}
