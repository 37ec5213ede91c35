//! The small bounded structures sessions and views are made of: request rates, rings of
//! time buckets, distinct-value sketches and maps with a size bound.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use crate::clock::{since, unix_secs, within};

/// Hasher of the table's in-memory maps: foldhash, seeded per map (much cheaper than
/// SipHash for the short keys hashed on every exchange).
pub(crate) type FastState = foldhash::fast::RandomState;
/// A map with [`FastState`].
pub(crate) type FastMap<K, V> = HashMap<K, V, FastState>;

/// A new empty [`FastMap`].
pub(crate) fn fast_map<K, V>() -> FastMap<K, V> {
    HashMap::with_hasher(FastState::default())
}

/// A foldhash state keyed with operating-system randomness (a per-process shared seed
/// and a per-call seed), for hashes kept as values (ids, credentials in views, cache
/// keys of headers): never linkable across runs or across [`keyed_state`] calls. Falls
/// back to foldhash's own per-process seeding when no randomness is available.
pub(crate) fn keyed_state() -> foldhash::quality::SeedableRandomState {
    static SHARED: OnceLock<Option<foldhash::SharedSeed>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| getrandom::u64().ok().map(foldhash::SharedSeed::from_u64));
    match (shared, getrandom::u64()) {
        (Some(shared), Ok(seed)) => foldhash::quality::SeedableRandomState::with_seed(seed, shared),
        _ => foldhash::quality::SeedableRandomState::random(),
    }
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
    /// The latest epoch of any slot (0: none used); slots only ever move to later epochs.
    newest: u64,
}

impl<T: Default + Clone> Ring<T> {
    pub(crate) fn new(window: Duration, buckets: usize) -> Self {
        let buckets = buckets.max(1);
        let bucket_secs = (window.as_secs() / buckets as u64).max(1);
        Self {
            slots: vec![(0, T::default()); buckets].into_boxed_slice(),
            bucket_secs,
            newest: 0,
        }
    }

    fn epoch(&self, t: SystemTime) -> u64 {
        self.epoch_of_secs(unix_secs(t))
    }

    fn epoch_of_secs(&self, secs: f64) -> u64 {
        // Epoch 0 marks an unused slot; real times are far from it.
        (secs as u64 / self.bucket_secs).max(1)
    }

    /// The bucket for time `t`; `None` when `t` is older than the ring.
    pub(crate) fn at(&mut self, t: SystemTime) -> Option<&mut T> {
        self.at_secs(unix_secs(t))
    }

    /// [`Ring::at`] for the time `unix_secs(t)` (computed once by callers that use it
    /// more than once).
    pub(crate) fn at_secs(&mut self, secs: f64) -> Option<&mut T> {
        let e = self.epoch_of_secs(secs);
        let n = self.slots.len() as u64;
        if e + n <= self.newest {
            return None;
        }
        // A slot is only ever given a later epoch than it had (an epoch `n` or more
        // later than `e` returned above), so `newest` is the largest of them.
        self.newest = self.newest.max(e);
        let slot = &mut self.slots[(e % n) as usize];
        if slot.0 != e {
            *slot = (e, T::default());
        }
        Some(&mut slot.1)
    }

    /// The last instant up to which [`Ring::live`] yields the same buckets as at `now`
    /// (later times only: the ring itself unchanged); `None` when that holds forever.
    pub(crate) fn live_until(&self, now: SystemTime) -> Option<SystemTime> {
        let e = self.epoch(now);
        let n = self.slots.len() as u64;
        // The next epoch at which a bucket joins (a later one) or leaves the window.
        let next = self
            .slots
            .iter()
            .filter(|(se, _)| *se != 0)
            .filter_map(|(se, _)| {
                if *se > e {
                    Some(*se)
                } else if se + n > e {
                    Some(se + n)
                } else {
                    None
                }
            })
            .min()?;
        // `epoch` divides whole seconds: any time up to this second is in an epoch before
        // `next`.
        let secs = next.checked_mul(self.bucket_secs)?.saturating_sub(1);
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
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
    pub(crate) fn new(t: SystemTime) -> Self {
        Self {
            requests: 0,
            first_seen: t,
            last_seen: t,
        }
    }

    pub(crate) fn hit(&mut self, t: SystemTime) {
        self.requests += 1;
        self.last_seen = self.last_seen.max(t);
        self.first_seen = self.first_seen.min(t);
    }
}

/// Something with a last-seen time (for least-recently-seen eviction).
pub(crate) trait Seen {
    fn last_seen(&self) -> SystemTime;
}

impl<T: Seen + ?Sized> Seen for Box<T> {
    fn last_seen(&self) -> SystemTime {
        (**self).last_seen()
    }
}

impl Seen for DimStat {
    fn last_seen(&self) -> SystemTime {
        self.last_seen
    }
}

/// How one [`Bounded::entry_noted`] changed the keys of the map.
#[derive(Debug)]
pub(crate) struct KeyChange<K> {
    /// The key was new.
    pub added: bool,
    /// The key dropped to make room for it.
    pub dropped: Option<K>,
}

/// A map of at most `cap` entries; inserting into a full map drops the least recently
/// seen entry (counted in `dropped`).
///
/// Finding that entry does not walk the map each time: a walk lists every entry by its
/// last-seen time, and later evictions take the oldest listed entry that is unchanged
/// since, as long as it is no later than the earliest time anything was touched at
/// since the walk (entries only ever move later: see [`Bounded::entry`]). Otherwise the
/// map is walked again.
#[derive(Clone, Debug)]
pub(crate) struct Bounded<K, V> {
    pub map: FastMap<K, V>,
    cap: usize,
    pub dropped: u64,
    /// Made at the first eviction (most maps never fill).
    evict: Option<Box<Evictions<K>>>,
}

/// The eviction candidates of a [`Bounded`] map.
#[derive(Clone, Debug)]
struct Evictions<K> {
    /// `(last seen, key)` of every entry at the last walk, latest first.
    listed: Vec<(SystemTime, K)>,
    /// The earliest `t` of [`Bounded::entry`] since the last walk: every entry touched or
    /// added since was last seen at this time or later.
    touched: Option<SystemTime>,
}

impl<K: Hash + Eq + Clone, V: Seen> Bounded<K, V> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            map: fast_map(),
            cap: cap.max(1),
            dropped: 0,
            evict: None,
        }
    }

    /// The entry of `k`, made with `make` when missing. The caller leaves the entry last
    /// seen at `t` or later (its last-seen time never goes back).
    pub(crate) fn entry_at(&mut self, k: K, t: SystemTime, make: impl FnOnce() -> V) -> &mut V {
        self.entry_noted(k, t, make).0
    }

    /// [`Bounded::entry_at`] without a time: the next eviction walks the map.
    #[cfg(test)]
    pub(crate) fn entry(&mut self, k: K, make: impl FnOnce() -> V) -> &mut V {
        if let Some(e) = self.evict.as_deref_mut() {
            e.listed.clear();
        }
        let t = SystemTime::UNIX_EPOCH;
        let (v, _) = self.entry_noted(k, t, make);
        v
    }

    /// [`Bounded::entry`], and how the set of keys changed.
    pub(crate) fn entry_noted(
        &mut self,
        k: K,
        t: SystemTime,
        make: impl FnOnce() -> V,
    ) -> (&mut V, KeyChange<K>) {
        let mut dropped = None;
        if self.map.len() >= self.cap && !self.map.contains_key(&k) {
            if let Some(old) = self.least_recent() {
                self.map.remove(&old);
                self.dropped += 1;
                dropped = Some(old);
            }
        }
        if let Some(e) = self.evict.as_deref_mut() {
            e.touched = Some(e.touched.map_or(t, |m| m.min(t)));
        }
        let (v, added) = match self.map.entry(k) {
            std::collections::hash_map::Entry::Occupied(o) => (o.into_mut(), false),
            std::collections::hash_map::Entry::Vacant(v) => (v.insert(make()), true),
        };
        (v, KeyChange { added, dropped })
    }

    /// The key of the least recently seen entry (any one of them on a tie).
    fn least_recent(&mut self) -> Option<K> {
        if self.evict.is_none() {
            // A full map: from now on every new key removes one. Room for twice the keys
            // keeps the table sparse, so removals leave no tombstones that would make
            // inserts rebuild it.
            self.map.reserve(self.cap);
        }
        let e = self.evict.get_or_insert_with(|| {
            Box::new(Evictions {
                listed: Vec::new(),
                touched: None,
            })
        });
        loop {
            let usable = e
                .listed
                .last()
                .is_some_and(|(seen, _)| e.touched.is_none_or(|t| *seen <= t));
            if !usable {
                // Walk the map: every entry listed as it is now.
                e.listed.clear();
                e.listed
                    .extend(self.map.iter().map(|(k, v)| (v.last_seen(), k.clone())));
                if e.listed.is_empty() {
                    return None;
                }
                e.listed
                    .sort_unstable_by_key(|(seen, _)| std::cmp::Reverse(*seen));
                e.touched = None;
            }
            let (seen, k) = e.listed.pop()?;
            // Unchanged since listed (else it was touched: later than `touched`).
            if self.map.get(&k).is_some_and(|v| v.last_seen() == seen) {
                return Some(k);
            }
        }
    }

    /// Entries seen within `window` before `now`.
    pub(crate) fn live(&self, now: SystemTime, window: Duration) -> impl Iterator<Item = (&K, &V)> {
        self.map
            .iter()
            .filter(move |(_, v)| within(v.last_seen(), now, window))
    }

    /// The last instant up to which [`Bounded::live`] yields the same entries as at
    /// `now` (the map itself unchanged); `None` when that holds forever.
    pub(crate) fn live_until(&self, now: SystemTime, window: Duration) -> Option<SystemTime> {
        self.map
            .values()
            .filter_map(|v| within_until(v.last_seen(), now, window))
            .min()
    }
}

/// The last instant up to which `within(t, _, window)` keeps the value it has at `now`
/// (for later times); `None` when it keeps it forever. It is true until `t + window`,
/// false after.
pub(crate) fn within_until(t: SystemTime, now: SystemTime, window: Duration) -> Option<SystemTime> {
    if within(t, now, window) {
        t.checked_add(window)
    } else {
        None
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

    /// The eviction lists give what a walk of the map gives: the dropped entry is always
    /// one of the least recently seen, with times going back now and then (exchanges
    /// end out of order) and keys coming back after being dropped.
    #[test]
    fn bounded_evicts_as_a_walk_would() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for cap in [1usize, 2, 8, 32] {
            let mut b: Bounded<u64, DimStat> = Bounded::new(cap);
            let mut model: HashMap<u64, SystemTime> = HashMap::new();
            let mut clock = 0.0;
            let mut evictions = 0;
            for _ in 0..20_000 {
                clock += 0.01 * next(100) as f64;
                // Mostly now, sometimes a while back, sometimes exactly an earlier time.
                let t = match next(10) {
                    0 => at((clock - next(3000) as f64 * 0.01).max(0.0)),
                    1 => at((clock * 10.0).floor() / 10.0),
                    _ => at(clock),
                };
                let k = next(cap as u64 * 3);
                let (d, change) = b.entry_noted(k, t, || DimStat::new(t));
                d.hit(t);
                if let Some(old) = change.dropped {
                    evictions += 1;
                    let least = *model.values().min().unwrap();
                    assert_eq!(model[&old], least, "cap {cap}");
                    model.remove(&old);
                } else {
                    assert!(model.contains_key(&k) || model.len() < cap);
                }
                assert_eq!(change.added, !model.contains_key(&k));
                let seen = model.entry(k).or_insert(t);
                *seen = (*seen).max(t);
                assert_eq!(b.map.len(), model.len());
                for (k, v) in &b.map {
                    assert_eq!(v.last_seen, model[k]);
                }
            }
            assert!(evictions > 1000, "cap {cap}: {evictions}");
            assert_eq!(b.dropped, evictions);
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
}
