//! What the API and the CLI show of sessions: summaries, details, state changes. Only
//! fingerprints and reduced values, never a raw credential.

use std::{
    cmp::{Ordering, Reverse},
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::{
    state::{since, unix_secs, Consumption, Session},
    window::DimStat,
    Direction, SessionTable,
};
use crate::{
    clock::ser_unix,
    identity::{CredentialSource, Fingerprint, JwtClaims, JwtError},
    score::{HealthState, Reason},
};

/// A session changed state in a scoring pass (one JSON-lines alert).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StateChange {
    pub session_id: String,
    pub direction: Direction,
    /// `bearer`, ..., `network`, `route`.
    pub kind: &'static str,
    pub from: HealthState,
    pub to: HealthState,
    pub score: u8,
    pub reasons: Vec<Reason>,
    /// Unix time of the pass, seconds.
    #[serde(serialize_with = "ser_unix")]
    pub at: SystemTime,
}

/// Filter and order of [`SessionTable::list`] (also the JSON API's query string).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListQuery {
    pub state: Option<HealthState>,
    pub direction: Option<Direction>,
    /// Only this kind (`bearer`, ..., `anonymous`, `network`, `route`).
    pub kind: Option<String>,
    /// At most this many (default 100).
    pub limit: Option<usize>,
}

/// One line of the session list. Holds only fingerprints and reduced values.
#[derive(Clone, Debug, Serialize)]
pub struct SessionSummary {
    pub id: String,
    pub direction: Direction,
    /// `bearer`, `basic`, `api_key`, `cookie` or `anonymous` for one credential's (or
    /// one anonymous client group's) session; `network` or `route` for a view across
    /// credentials.
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
    /// Share of the session's exchanges seen whole (1 when no record was lost); the
    /// evidence its verdict rests on.
    pub capture_completeness: f64,
    /// Exchanges that happened on its connections but were not seen whole.
    pub lost_exchanges: u64,
    /// Use against the credential's access tier, when tiers are configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumption: Option<Consumption>,
}

/// What the session metrics show, from one pass over the table
/// ([`SessionTable::digest`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Digest {
    pub state_counts: HashMap<(HealthState, Direction), usize>,
    pub riskiest: Vec<(String, u8)>,
    pub least_complete: (Vec<(String, f64)>, usize),
    pub top_consumers: Vec<(String, String, f64)>,
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
    /// Protocols the route was called over: `http1`, `http2`, `grpc`.
    pub protocols: Vec<&'static str>,
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
    /// Views across credentials: distinct credentials remembered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<usize>,
    /// Fleet mode: what every node published of this credential (when others did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<super::FleetDetail>,
    /// Downstream calls the session's requests caused (downstream capture): counts and
    /// errors per protocol, statement fingerprints and DNS names (bounded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downstream: Option<crate::downstream::Summary>,
}

/// One line of a ranked session list: the summary's fields that do not depend on the
/// time (shared with the session while they stay current) and those that do, at the
/// time of the list.
#[derive(Clone, Debug)]
pub struct Ranked {
    base: Arc<SessionSummary>,
    rate: f64,
    consumption: Option<Box<Consumption>>,
}

impl Ranked {
    pub fn state(&self) -> HealthState {
        self.base.state
    }

    pub fn kind(&self) -> &'static str {
        self.base.kind
    }

    pub fn direction(&self) -> Direction {
        self.base.direction
    }

    /// The summary, as [`SessionTable::list`] makes it.
    pub fn summary(&self) -> SessionSummary {
        SessionSummary {
            rate: self.rate,
            consumption: self.consumption.as_deref().cloned(),
            ..(*self.base).clone()
        }
    }
}

impl Session {
    /// The summary's fields that do not depend on the time of reading (`rate` 0, no
    /// consumption).
    fn summary_base(&self) -> SessionSummary {
        SessionSummary {
            id: self.id.to_string(),
            direction: self.direction,
            kind: self.kind_name(),
            fingerprint: self.fingerprint.clone(),
            state: self.state,
            score: self.score,
            reasons: self.reasons.clone(),
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            requests: self.requests,
            rate: 0.0,
            networks: self.networks.map.len(),
            agents: self.agents.map.len(),
            frozen: self.frozen,
            capture_completeness: self.capture_completeness(),
            lost_exchanges: self.lost_exchanges,
            consumption: None,
        }
    }

    /// Whether `base` (a [`Session::summary_base`] of this session) is still what it
    /// would make now. Id, direction and fingerprint never change; the completeness
    /// follows from the counts compared.
    fn summary_matches(&self, base: &SessionSummary) -> bool {
        base.state == self.state
            && base.score == self.score
            && base.requests == self.requests
            && base.lost_exchanges == self.lost_exchanges
            && base.last_seen == self.last_seen
            && base.first_seen == self.first_seen
            && base.networks == self.networks.map.len()
            && base.agents == self.agents.map.len()
            && base.frozen == self.frozen
            && base.kind == self.kind_name()
            && base.reasons == self.reasons
    }

    /// Make the cached summary base current (after scoring it: any other change drops
    /// it, see [`Session::touch`]).
    pub(crate) fn refresh_summary(&mut self) {
        if self
            .summary
            .as_ref()
            .is_none_or(|b| !self.summary_matches(b))
        {
            self.summary = Some(Arc::new(self.summary_base()));
        }
    }

    /// The summary base: the cached one (current, as nothing changed the session since
    /// it was made), else a new one.
    fn shared_summary(&self) -> Arc<SessionSummary> {
        match &self.summary {
            Some(b) => {
                debug_assert!(self.summary_matches(b), "stale summary of {}", self.id);
                Arc::clone(b)
            }
            None => Arc::new(self.summary_base()),
        }
    }
}

/// Order of session lists: riskiest (lowest score) first, then most recently used, then
/// by id.
fn riskiest_first(a: &Session, b: &Session) -> Ordering {
    a.score
        .cmp(&b.score)
        .then(b.last_seen.cmp(&a.last_seen))
        .then(a.id.cmp(&b.id))
}

impl SessionTable {
    pub(super) fn summary(&self, s: &Session) -> SessionSummary {
        SessionSummary {
            rate: s.rate.current(self.now, self.scoring.rate_short_secs),
            consumption: s.consumption(&self.tiers, &self.scoring, self.now),
            ..s.summary_base()
        }
    }

    /// Every listed session in the order of [`SessionTable::list`], as [`Ranked`] lines:
    /// summaries cached by the last scoring pass are shared, not rebuilt.
    pub fn ranked(&self) -> Vec<Ranked> {
        let n = self.sessions.len() + self.views.len();
        // One pass over the sessions (in memory order), then a sort of small keys: the
        // order of `riskiest_first`. Ids are unique, so the order is total (the index
        // never decides) and an unstable sort gives the stable one.
        let mut rows: Vec<Option<Ranked>> = Vec::with_capacity(n);
        let mut keys: Vec<(u8, Reverse<SystemTime>, &str, u32)> = Vec::with_capacity(n);
        for s in self.listed() {
            keys.push((s.score, Reverse(s.last_seen), &s.id, rows.len() as u32));
            rows.push(Some(Ranked {
                base: s.shared_summary(),
                rate: s.rate.current(self.now, self.scoring.rate_short_secs),
                consumption: s
                    .consumption(&self.tiers, &self.scoring, self.now)
                    .map(Box::new),
            }));
        }
        keys.sort_unstable();
        keys.into_iter()
            .filter_map(|(.., i)| rows[i as usize].take())
            .collect()
    }

    /// Sessions matching `q`, riskiest (lowest score) first, then most recently used.
    pub fn list(&self, q: &ListQuery) -> Vec<SessionSummary> {
        let mut v: Vec<&Session> = self
            .listed()
            .filter(|s| q.state.is_none_or(|st| s.state == st))
            .filter(|s| q.kind.as_deref().is_none_or(|k| s.kind_name() == k))
            .filter(|s| q.direction.is_none_or(|d| s.direction == d))
            .collect();
        v.sort_by(|a, b| riskiest_first(a, b));
        v.into_iter()
            .take(q.limit.unwrap_or(100))
            .map(|s| self.summary(s))
            .collect()
    }

    /// Sessions, and the views across credentials that cover several credentials.
    fn listed(&self) -> impl Iterator<Item = &Session> {
        self.sessions
            .values()
            .chain(self.views.values().filter(|v| {
                v.across
                    .as_ref()
                    .is_some_and(|a| a.credentials() >= super::VIEW_MIN_CREDENTIALS)
            }))
    }

    /// Session (and listed view) counts per state and direction.
    pub fn state_counts(&self) -> HashMap<(HealthState, Direction), usize> {
        let mut m = HashMap::new();
        for s in self.listed() {
            *m.entry((s.state, s.direction)).or_default() += 1;
        }
        m
    }

    /// The `k` riskiest sessions that are not healthy-with-full-score: (id, score).
    pub fn riskiest(&self, k: usize) -> Vec<(String, u8)> {
        Self::riskiest_of(self.listed().filter(|s| s.score < 100).collect(), k)
    }

    fn riskiest_of(mut v: Vec<&Session>, k: usize) -> Vec<(String, u8)> {
        v.sort_by(|a, b| a.score.cmp(&b.score).then(a.id.cmp(&b.id)));
        v.into_iter()
            .take(k)
            .map(|s| (s.id.to_string(), s.score))
            .collect()
    }

    /// The `k` sessions captured least completely (records of theirs were lost), as
    /// (id, share of exchanges seen whole), and how many sessions lost any.
    pub fn least_complete(&self, k: usize) -> (Vec<(String, f64)>, usize) {
        Self::least_complete_of(self.listed().filter(|s| s.lost_exchanges > 0).collect(), k)
    }

    fn least_complete_of(v: Vec<&Session>, k: usize) -> (Vec<(String, f64)>, usize) {
        let mut v: Vec<(String, f64)> = v
            .into_iter()
            .map(|s| (s.id.to_string(), s.capture_completeness()))
            .collect();
        let n = v.len();
        v.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        v.truncate(k);
        (v, n)
    }

    /// The `k` consumers closest to (or over) their tier's limits: (id, tier, ratio).
    pub fn top_consumers(&self, k: usize) -> Vec<(String, String, f64)> {
        self.top_consumers_of(self.sessions.values().collect(), k)
    }

    fn top_consumers_of(&self, v: Vec<&Session>, k: usize) -> Vec<(String, String, f64)> {
        let mut v: Vec<(String, String, f64)> = v
            .into_iter()
            .filter_map(|s| {
                let c = s.consumption(&self.tiers, &self.scoring, self.now)?;
                Some((s.id.to_string(), c.tier.clone(), c.ratio()))
            })
            .filter(|(_, _, r)| *r > 0.0)
            .collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
        v.truncate(k);
        v
    }

    /// [`SessionTable::state_counts`], [`SessionTable::riskiest`],
    /// [`SessionTable::least_complete`] and [`SessionTable::top_consumers`] at once, in
    /// one pass over the sessions.
    pub fn digest(&self, k: usize) -> Digest {
        let mut counts = [[0usize; Direction::ALL.len()]; HealthState::ALL.len()];
        let (mut risky, mut incomplete, mut tiered) = (Vec::new(), Vec::new(), Vec::new());
        for s in self.listed() {
            counts[s.state as usize][s.direction as usize] += 1;
            if s.score < 100 {
                risky.push(s);
            }
            if s.lost_exchanges > 0 {
                incomplete.push(s);
            }
            // Only sessions have a tier (views never do); unlisted views are not
            // visited.
            if s.tier.is_some() && s.across.is_none() {
                tiered.push(s);
            }
        }
        // As `state_counts`: only the pairs seen.
        let mut states = HashMap::new();
        for st in HealthState::ALL {
            for d in Direction::ALL {
                let n = counts[st as usize][d as usize];
                if n > 0 {
                    states.insert((st, d), n);
                }
            }
        }
        Digest {
            state_counts: states,
            riskiest: Self::riskiest_of(risky, k),
            least_complete: Self::least_complete_of(incomplete, k),
            top_consumers: self.top_consumers_of(tiered, k),
        }
    }

    /// Everything about one session (by id, e.g. `tok_5f2c9a1e0b7d` or `out:tok_…`).
    pub fn get(&self, id: &str) -> Option<SessionDetail> {
        let s = self.sessions.get(id).or_else(|| self.views.get(id))?;
        let now = self.now;
        let sc = &self.scoring;
        let dim = |value: String, d: &DimStat| DimensionView {
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
                protocols: r.protocol_names(),
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
            credentials: s.across.as_ref().map(|a| a.credentials()),
            fleet: self.fleet_detail(id, self.fleet_node.as_deref()),
            downstream: s.downstream.as_deref().cloned(),
        })
    }
}
