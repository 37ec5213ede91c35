//! One session's state and the small bounded structures it is made of.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    identity::{CredentialKind, CredentialSource, Fingerprint, JwtClaims, JwtError},
    score::{HealthState, Reason},
};

use super::{dims::Network, Direction};

/// Unix time in seconds (0 before the epoch).
pub(crate) fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// `a - b`, zero when `b` is later.
pub(crate) fn since(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b).unwrap_or_default()
}

/// Whether `t` lies within `window` before `now` (or after it).
pub(crate) fn within(t: SystemTime, now: SystemTime, window: Duration) -> bool {
    since(now, t) <= window
}

/// An exponentially weighted request rate (requests per second) with two time constants:
/// a short one (the current rate) and a long one (the baseline).
#[derive(Clone, Debug, Default)]
pub(crate) struct RateEwma {
    short: f64,
    long: f64,
    last: Option<SystemTime>,
}

impl RateEwma {
    pub(crate) fn record(&mut self, t: SystemTime, tau_short: f64, tau_long: f64) {
        let dt = self.last.map(|l| since(t, l).as_secs_f64()).unwrap_or(0.0);
        self.short = self.short * (-dt / tau_short).exp() + 1.0 / tau_short;
        self.long = self.long * (-dt / tau_long).exp() + 1.0 / tau_long;
        if self.last.is_none_or(|l| t > l) {
            self.last = Some(t);
        }
    }

    /// The short-term rate at `now`.
    pub(crate) fn current(&self, now: SystemTime, tau_short: f64) -> f64 {
        let dt = self
            .last
            .map(|l| since(now, l).as_secs_f64())
            .unwrap_or(0.0);
        self.short * (-dt / tau_short).exp()
    }

    /// The long-term rate at `now`, corrected for the ramp-up of a young series (`age`:
    /// time since the first request).
    pub(crate) fn baseline(&self, now: SystemTime, tau_long: f64, age: Duration) -> f64 {
        let dt = self
            .last
            .map(|l| since(now, l).as_secs_f64())
            .unwrap_or(0.0);
        let raw = self.long * (-dt / tau_long).exp();
        let ramp = 1.0 - (-age.as_secs_f64().max(1.0) / tau_long).exp();
        raw / ramp
    }
}

/// A ring of time buckets covering a window: `slots.len()` buckets of `bucket_secs`.
#[derive(Clone, Debug)]
pub(crate) struct Ring<T> {
    slots: Box<[(u64, T)]>,
    bucket_secs: u64,
}

impl<T: Default + Clone> Ring<T> {
    pub(crate) fn new(window: Duration, buckets: usize) -> Self {
        let buckets = buckets.max(1);
        let bucket_secs = (window.as_secs() / buckets as u64).max(1);
        Self {
            slots: vec![(0, T::default()); buckets].into_boxed_slice(),
            bucket_secs,
        }
    }

    fn epoch(&self, t: SystemTime) -> u64 {
        // Epoch 0 marks an unused slot; real times are far from it.
        (unix_secs(t) as u64 / self.bucket_secs).max(1)
    }

    /// The bucket for time `t`; `None` when `t` is older than the ring.
    pub(crate) fn at(&mut self, t: SystemTime) -> Option<&mut T> {
        let e = self.epoch(t);
        let n = self.slots.len() as u64;
        let newest = self.slots.iter().map(|(e, _)| *e).max().unwrap_or(0);
        if e + n <= newest {
            return None;
        }
        let slot = &mut self.slots[(e % n) as usize];
        if slot.0 != e {
            *slot = (e, T::default());
        }
        Some(&mut slot.1)
    }

    /// Buckets within the window ending at `now`.
    pub(crate) fn live(&self, now: SystemTime) -> impl Iterator<Item = &T> {
        let e = self.epoch(now);
        let n = self.slots.len() as u64;
        self.slots
            .iter()
            .filter(move |(se, _)| *se != 0 && *se <= e && se + n > e)
            .map(|(_, v)| v)
    }
}

/// Counts of one session's time bucket.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    pub requests: u32,
    pub auth_failures: u32,
    pub not_found: u32,
}

/// Distinct-value estimate (linear counting over a 256-bit bitmap) per time bucket:
/// values themselves are never kept.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Bits([u64; 4]);

impl Bits {
    pub(crate) fn insert(&mut self, h: u64) {
        let bit = (h & 255) as usize;
        self.0[bit / 64] |= 1 << (bit % 64);
    }
}

/// Estimated number of distinct values in the union of `bits`.
pub(crate) fn distinct<'a>(bits: impl Iterator<Item = &'a Bits>) -> u64 {
    let mut union = [0u64; 4];
    for b in bits {
        for (u, w) in union.iter_mut().zip(b.0) {
            *u |= w;
        }
    }
    let zeros: u32 = union.iter().map(|w| w.count_zeros()).sum();
    let m = 256.0f64;
    if zeros == 0 {
        // Saturated: report the largest value the sketch can tell.
        return (m * m.ln()) as u64;
    }
    (-m * (f64::from(zeros) / m).ln()).round() as u64
}

/// Requests seen with one value of a dimension (a network, a user agent).
#[derive(Clone, Debug)]
pub(crate) struct DimStat {
    pub requests: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
}

impl DimStat {
    fn new(t: SystemTime) -> Self {
        Self {
            requests: 0,
            first_seen: t,
            last_seen: t,
        }
    }

    fn hit(&mut self, t: SystemTime) {
        self.requests += 1;
        self.last_seen = self.last_seen.max(t);
        self.first_seen = self.first_seen.min(t);
    }
}

/// Something with a last-seen time (for least-recently-seen eviction).
pub(crate) trait Seen {
    fn last_seen(&self) -> SystemTime;
}

impl Seen for DimStat {
    fn last_seen(&self) -> SystemTime {
        self.last_seen
    }
}

/// A map of at most `cap` entries; inserting into a full map drops the least recently
/// seen entry (counted in `dropped`).
#[derive(Clone, Debug)]
pub(crate) struct Bounded<K, V> {
    pub map: HashMap<K, V>,
    cap: usize,
    pub dropped: u64,
}

impl<K: Hash + Eq + Clone, V: Seen> Bounded<K, V> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            cap: cap.max(1),
            dropped: 0,
        }
    }

    pub(crate) fn entry(&mut self, k: K, make: impl FnOnce() -> V) -> &mut V {
        if !self.map.contains_key(&k) && self.map.len() >= self.cap {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, v)| v.last_seen())
                .map(|(k, _)| k.clone());
            if let Some(old) = oldest {
                self.map.remove(&old);
                self.dropped += 1;
            }
        }
        self.map.entry(k).or_insert_with(make)
    }

    /// Entries seen within `window` before `now`.
    pub(crate) fn live(&self, now: SystemTime, window: Duration) -> impl Iterator<Item = (&K, &V)> {
        self.map
            .iter()
            .filter(move |(_, v)| within(v.last_seen(), now, window))
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
    pub ids: Option<Box<Ring<Bits>>>,
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
        }
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
    pub credential_in_query: Option<SystemTime>,
    pub plaintext_credential: Option<SystemTime>,
    /// Last use while frozen; cleared by unfreeze.
    pub frozen_use: Option<SystemTime>,
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
    /// The credential; `None` for anonymous sessions.
    pub fingerprint: Option<Fingerprint>,
    pub kind: Option<CredentialKind>,
    /// Where the credential was found (source, configured name), at most 4.
    pub locations: Vec<(CredentialSource, Arc<str>)>,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    pub requests: u64,
    pub rate: RateEwma,
    pub networks: Bounded<Network, DimStat>,
    pub agents: Bounded<Arc<str>, DimStat>,
    pub routes: Bounded<Arc<str>, RouteStats>,
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
    pub jwt: Option<Box<JwtClaims>>,
    pub jwt_error: Option<JwtError>,
    pub window: Ring<Counts>,
    pub last_pair: Option<(Network, Arc<str>)>,
    pub marks: Marks,
    pub frozen: bool,
    pub frozen_uses: u64,
    // Results of the last scoring pass.
    pub score: u8,
    pub state: HealthState,
    pub reasons: Vec<Reason>,
    /// Nothing can change this session's assessment until it is used again.
    pub settled: bool,
}

pub(crate) const MAX_LOCATIONS: usize = 4;
pub(crate) const MAX_PROCESSES: usize = 4;
pub(crate) const SESSION_BUCKETS: usize = 10;
pub(crate) const ID_BUCKETS: usize = 5;

/// Per-session limits, from the config.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_networks: usize,
    pub max_agents: usize,
    pub max_routes: usize,
    pub window: Duration,
}

impl Session {
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
            jwt: None,
            jwt_error: None,
            window: Ring::new(limits.window, SESSION_BUCKETS),
            last_pair: None,
            marks: Marks::default(),
            frozen: false,
            frozen_uses: 0,
            score: 100,
            state: HealthState::Healthy,
            reasons: Vec::new(),
            settled: false,
        }
    }

    pub(crate) fn hit_network(&mut self, n: Network, t: SystemTime) {
        self.networks.entry(n, || DimStat::new(t)).hit(t);
    }

    pub(crate) fn hit_agent(&mut self, a: &Arc<str>, t: SystemTime) {
        self.agents.entry(Arc::clone(a), || DimStat::new(t)).hit(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: f64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs_f64(1_700_000_000.0 + s)
    }

    #[test]
    fn ewma_tracks_rate() {
        let mut r = RateEwma::default();
        // 2 req/s for 10 minutes.
        for i in 0..1200 {
            r.record(at(f64::from(i) * 0.5), 10.0, 600.0);
        }
        let now = at(600.0);
        assert!(
            (r.current(now, 10.0) - 2.0).abs() < 0.2,
            "{}",
            r.current(now, 10.0)
        );
        let b = r.baseline(now, 600.0, Duration::from_secs(600));
        assert!((b - 2.0).abs() < 0.2, "{b}");
        // Decays when idle.
        assert!(r.current(at(700.0), 10.0) < 0.01);
    }

    #[test]
    fn ring_window() {
        let mut ring: Ring<u32> = Ring::new(Duration::from_secs(100), 10);
        *ring.at(at(0.0)).unwrap() += 1;
        *ring.at(at(55.0)).unwrap() += 1;
        assert_eq!(ring.live(at(60.0)).sum::<u32>(), 2);
        assert_eq!(ring.live(at(140.0)).sum::<u32>(), 1);
        assert_eq!(ring.live(at(200.0)).sum::<u32>(), 0);
        // Too old to record once newer buckets exist.
        *ring.at(at(300.0)).unwrap() += 1;
        assert!(ring.at(at(100.0)).is_none());
    }

    #[test]
    fn distinct_estimate() {
        use std::hash::{BuildHasher, RandomState};
        let rs = RandomState::new();
        for n in [0u64, 1, 10, 60, 150] {
            let mut b = Bits::default();
            for i in 0..n {
                b.insert(rs.hash_one(i));
            }
            let e = distinct(std::iter::once(&b));
            let tolerance = (n as f64 * 0.25).max(2.0);
            assert!((e as f64 - n as f64).abs() <= tolerance, "{n}: {e}");
        }
    }

    #[test]
    fn bounded_drops_least_recent() {
        let mut b: Bounded<u32, DimStat> = Bounded::new(2);
        b.entry(1, || DimStat::new(at(0.0))).hit(at(0.0));
        b.entry(2, || DimStat::new(at(1.0))).hit(at(1.0));
        b.entry(1, || DimStat::new(at(2.0))).hit(at(2.0));
        b.entry(3, || DimStat::new(at(3.0))).hit(at(3.0));
        assert!(b.map.contains_key(&1) && b.map.contains_key(&3));
        assert_eq!(b.dropped, 1);
        assert_eq!(b.live(at(3.0), Duration::from_secs(1)).count(), 2);
    }

    #[test]
    fn status_classes() {
        assert_eq!(class_index(200), 1);
        assert_eq!(class_index(404), 3);
        assert_eq!(class_index(599), 4);
        assert_eq!(class_index(0), 5);
        assert_eq!(class_index(600), 5);
    }
}
