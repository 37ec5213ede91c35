//! Views across credentials: what many credentials did from one client network, or on
//! one route. Abuse spread over many credentials (stuffing from one network, spraying
//! one route, scrapers rotating fresh tokens) is invisible to any single credential's
//! session; these views see it. They are kept as sessions of kind `network` / `route`
//! and scored by the same machinery ([`crate::score::evaluate`]).
//!
//! A view holds, per credential, a keyed hash (never the credential or its fingerprint)
//! and a few counts, bounded per view.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::score::{AcrossFacts, CredentialUse, ViewKind};

use super::window::{distinct, within_until, Bits, Bounded, Ring, Seen};
use crate::clock::within;

/// Most credentials remembered per view (least recently seen dropped).
pub(crate) const MAX_CREDENTIALS: usize = 128;
/// Buckets of the per-route distinct-id rings (sessions and views).
pub(crate) const ID_BUCKETS: usize = 5;
/// Most routes remembered per network view.
const MAX_ROUTES: usize = 16;

/// One credential within a view.
#[derive(Clone, Debug)]
struct CredentialStat {
    first_seen: SystemTime,
    last_seen: SystemTime,
    requests: u64,
    failures: u64,
    successes: u64,
}

impl Seen for CredentialStat {
    fn last_seen(&self) -> SystemTime {
        self.last_seen
    }
}

/// Requests and distinct ids of one route within a network view, per time bucket (one
/// ring for both: they always cover the same buckets).
#[derive(Clone, Debug)]
struct RouteIds {
    last_seen: SystemTime,
    buckets: Ring<RouteBucket>,
}

/// One time bucket of [`RouteIds`].
#[derive(Clone, Copy, Debug, Default)]
struct RouteBucket {
    requests: u32,
    ids: Bits,
}

impl Seen for RouteIds {
    fn last_seen(&self) -> SystemTime {
        self.last_seen
    }
}

/// What a view across credentials keeps.
#[derive(Clone, Debug)]
pub(crate) struct AcrossStats {
    pub kind: ViewKind,
    credentials: Bounded<u64, CredentialStat>,
    /// Network views only: ids walked per route.
    routes: Bounded<Arc<str>, Box<RouteIds>>,
    window: Duration,
}

/// One exchange as a view sees it.
pub(crate) struct Use<'a> {
    /// Keyed hash of the credential.
    pub credential: u64,
    pub status: u16,
    pub route: &'a Arc<str>,
    /// Combined hash of the path's id segments, when it has any.
    pub ids: Option<u64>,
}

impl AcrossStats {
    pub(crate) fn new(kind: ViewKind, window: Duration) -> Self {
        Self {
            kind,
            credentials: Bounded::new(MAX_CREDENTIALS),
            routes: Bounded::new(MAX_ROUTES),
            window,
        }
    }

    pub(crate) fn record(&mut self, u: &Use<'_>, t: SystemTime) {
        let c = self
            .credentials
            .entry_at(u.credential, t, || CredentialStat {
                first_seen: t,
                last_seen: t,
                requests: 0,
                failures: 0,
                successes: 0,
            });
        c.requests += 1;
        c.last_seen = c.last_seen.max(t);
        c.first_seen = c.first_seen.min(t);
        match u.status {
            401 | 403 => c.failures += 1,
            200..=399 => c.successes += 1,
            _ => {}
        }
        if self.kind == ViewKind::Network {
            let window = self.window;
            let r = self.routes.entry_at(Arc::clone(u.route), t, || {
                Box::new(RouteIds {
                    last_seen: t,
                    buckets: Ring::new(window, ID_BUCKETS),
                })
            });
            r.last_seen = r.last_seen.max(t);
            if let Some(b) = r.buckets.at(t) {
                b.requests += 1;
                if let Some(h) = u.ids {
                    b.ids.insert(h);
                }
            }
        }
    }

    /// The facts scoring reads, at `now`.
    pub(crate) fn facts(&self, now: SystemTime, window: Duration) -> AcrossFacts {
        let credentials: Vec<CredentialUse> = self
            .credentials
            .live(now, window)
            .map(|(_, c)| CredentialUse {
                requests: c.requests,
                failures: c.failures,
                successes: c.successes,
                fresh: within(c.first_seen, now, window),
            })
            .collect();
        let mut requests = 0u64;
        let mut top_id_route = (0u64, 0u64);
        for (_, r) in self.routes.live(now, window) {
            let n: u64 = r.buckets.live(now).map(|b| u64::from(b.requests)).sum();
            requests += n;
            let ids = distinct(r.buckets.live(now).map(|b| &b.ids));
            if ids > top_id_route.0 {
                top_id_route = (ids, n);
            }
        }
        if self.kind == ViewKind::Route {
            requests = credentials.iter().map(|c| c.requests).sum();
        }
        AcrossFacts {
            credentials,
            requests,
            top_id_route,
        }
    }

    /// The last instant up to which [`AcrossStats::facts`] is the same as at `now` (the
    /// view itself unchanged); `None` when it is the same forever. Every fact is a count
    /// over what is live in the window, and each item's liveness changes once, at a
    /// known time.
    pub(crate) fn facts_until(&self, now: SystemTime, window: Duration) -> Option<SystemTime> {
        let credentials = self.credentials.map.values().flat_map(|c| {
            [
                within_until(c.last_seen, now, window),
                within_until(c.first_seen, now, window),
            ]
        });
        let routes = self.routes.map.values().map(|r| r.buckets.live_until(now));
        credentials
            .chain(routes)
            .chain(std::iter::once(self.routes.live_until(now, window)))
            .flatten()
            .min()
    }

    /// Credentials currently remembered (for the view's detail).
    pub(crate) fn credentials(&self) -> usize {
        self.credentials.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    #[test]
    fn counts_failures_successes_and_ids_per_credential() {
        let window = Duration::from_secs(300);
        let mut v = AcrossStats::new(ViewKind::Network, window);
        let route: Arc<str> = Arc::from("GET /items/{id}");
        for cred in 0..5u64 {
            for i in 0..3u64 {
                let u = Use {
                    credential: cred,
                    status: if cred == 0 { 401 } else { 200 },
                    route: &route,
                    ids: Some(cred * 1000 + i),
                };
                v.record(&u, at(cred));
            }
        }
        let f = v.facts(at(10), window);
        assert_eq!(f.credentials.len(), 5);
        assert_eq!(f.credentials.iter().filter(|c| c.failures == 3).count(), 1);
        assert!(f.credentials.iter().all(|c| c.fresh && c.requests == 3));
        assert_eq!(f.requests, 15);
        assert!(
            (13..=17).contains(&f.top_id_route.0),
            "{:?}",
            f.top_id_route
        );
        assert_eq!(f.top_id_route.1, 15);
        // Past the window nothing is live.
        let f = v.facts(at(400), window);
        assert!(f.credentials.is_empty());
        assert_eq!(f.requests, 0);
    }

    #[test]
    fn bounded_per_view() {
        let window = Duration::from_secs(300);
        let mut v = AcrossStats::new(ViewKind::Route, window);
        let route: Arc<str> = Arc::from("POST /login");
        for cred in 0..(MAX_CREDENTIALS as u64 * 3) {
            let u = Use {
                credential: cred,
                status: 401,
                route: &route,
                ids: None,
            };
            v.record(&u, at(cred / 100));
        }
        assert_eq!(v.credentials(), MAX_CREDENTIALS);
    }
}
