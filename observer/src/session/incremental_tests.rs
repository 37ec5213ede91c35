//! The incremental parts of the scoring loop give what recomputing everything gives:
//! scoring skips only sessions whose assessment cannot have changed, snapshots share
//! summaries only while they are current, and the counts kept as sessions change equal
//! counts made from scratch. Random traffic over 40 minutes of simulated time, with a
//! pass every few seconds (and some long gaps), each pass checked against a reference.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, SystemTime},
};

use crate::{
    identity::{jwt::make_token, FingerprintKey, TierConfig, TierLimits},
    score::{self, HealthState, Reason},
    session::{
        state::{since, Session},
        testutil::{at, ExchangeBuilder, T0},
        Direction, ListQuery, SessionConfig, SessionTable, SessionTableConfig, StateChange,
    },
};

/// A small deterministic generator (xorshift64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const CLIENTS: &[&str] = &[
    "203.0.113.7",
    "198.51.100.9",
    "192.0.2.33",
    "10.1.2.3",
    "100.64.0.5",
    "203.0.114.1",
];
const AGENTS: &[&str] = &[
    "curl/8.5.0",
    "python-requests/2.31.0",
    "okhttp/4.12.0",
    "Go-http-client/1.1",
];

/// One random exchange at `secs`.
fn exchange(rng: &mut Rng, secs: f64) -> ExchangeBuilder {
    let mut b = ExchangeBuilder::new()
        .client(&format!(
            "{}:{}",
            rng.pick(CLIENTS),
            40_000 + rng.below(1000)
        ))
        .ua(rng.pick(AGENTS))
        .status([200, 200, 200, 201, 401, 403, 404, 500][rng.below(8) as usize])
        .tls(rng.below(6) != 0)
        .at(secs);
    b = match rng.below(4) {
        0 => b.method("POST").path("/login"),
        1 => b.path("/"),
        _ => b.path(&format!("/items/{}", rng.below(400))),
    };
    match rng.below(40) {
        0 => b.bearer(&make_token(r#"{"alg":"none"}"#, r#"{"sub":"x"}"#)),
        1 => b.bearer(&make_token(
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"exp":{}}}"#, T0 - 600),
        )),
        2..=5 => b,
        n => b.bearer(&format!("INC-TOKEN-{}", n % 16)),
    }
}

/// What the scoring pass at `now` did before passes became incremental: every session
/// not settled scored from scratch. Returns the state changes, each scored session's
/// assessment and the signal counters after the pass.
#[allow(clippy::type_complexity)]
fn reference_pass(
    t: &SessionTable,
    now: std::time::SystemTime,
) -> (
    Vec<StateChange>,
    HashMap<String, score::Assessment>,
    BTreeMap<Reason, u64>,
) {
    let mut signals = t.counters.signals.clone();
    let mut changes = Vec::new();
    let mut scored = HashMap::new();
    for s in t.sessions.values().chain(t.views.values()) {
        if s.settled {
            continue;
        }
        let over_tier = s
            .consumption(&t.tiers, &t.scoring, now)
            .is_some_and(|c| c.over);
        let a = score::evaluate(&s.score_input(&t.scoring, now, over_tier), &t.scoring);
        for r in &a.reasons {
            if !s.reasons.contains(r) {
                *signals.entry(*r).or_default() += 1;
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
        scored.insert(s.id.to_string(), a);
    }
    changes.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    (changes, scored, signals)
}

/// The privacy report's counts, from scratch.
fn held_from_scratch(t: &SessionTable) -> (usize, usize, usize, usize) {
    let mut networks = HashSet::new();
    let mut agents = HashSet::new();
    let (mut inbound, mut outbound) = (0, 0);
    for s in t.sessions.values() {
        networks.extend(s.networks.map.keys().copied());
        agents.extend(s.agents.map.keys().cloned());
        match s.direction {
            Direction::Inbound => inbound += 1,
            Direction::Outbound => outbound += 1,
        }
    }
    (inbound, outbound, networks.len(), agents.len())
}

/// The snapshot's session list equals the table's list made from scratch.
fn check_ranked(t: &SessionTable, when: &str) {
    let all = ListQuery {
        limit: Some(usize::MAX),
        ..ListQuery::default()
    };
    let ranked: Vec<serde_json::Value> = t
        .ranked()
        .iter()
        .map(|r| serde_json::to_value(r.summary()).unwrap())
        .collect();
    let listed: Vec<serde_json::Value> = t
        .list(&all)
        .iter()
        .map(|s| serde_json::to_value(s).unwrap())
        .collect();
    assert_eq!(ranked, listed, "{when}");
}

/// What scoring reads of a session at `now`, but for its rates (which decay
/// continuously: `quiet_until` only bounds their signals).
fn inputs_but_rates(s: &Session, t: &SessionTable, now: SystemTime) -> score::ScoreInput {
    let over_tier = s
        .consumption(&t.tiers, &t.scoring, now)
        .is_some_and(|c| c.over);
    score::ScoreInput {
        rate: score::Rate::default(),
        route_rates: Vec::new(),
        ..s.score_input(&t.scoring, now, over_tier)
    }
}

/// Scoring pass at `secs` (then expiry, as the agent does), checked against the
/// reference; returns the state changes.
fn checked_pass(t: &mut SessionTable, secs: f64) -> usize {
    let now = at(secs);
    // Sessions this pass skips as quiet: nothing scoring reads of them has changed
    // since they were scored (a stronger check than their assessments being equal).
    for s in t.sessions.values().chain(t.views.values()) {
        if let (false, Some((scored, until))) = (s.settled, s.quiet) {
            if scored <= now && now <= until {
                assert_eq!(
                    inputs_but_rates(s, t, now),
                    inputs_but_rates(s, t, scored),
                    "{} skipped at {secs}",
                    s.id
                );
            }
        }
    }
    let (want, scored, signals) = reference_pass(t, now);
    let got = t.score(now);
    assert_eq!(got, want, "changes at {secs}");
    assert_eq!(t.counters.signals, signals, "signals at {secs}");
    for (id, a) in &scored {
        let s = t
            .sessions
            .get(id.as_str())
            .or_else(|| t.views.get(id.as_str()));
        let s = s.expect("scored session");
        assert_eq!(
            (s.score, s.state, &s.reasons),
            (a.score, a.state, &a.reasons),
            "{id} at {secs}"
        );
    }
    check_ranked(t, &format!("after the pass at {secs}"));
    // Expiry drops what it did when it walked every session and view.
    let ttl = Duration::from_secs(t.sessions_cfg.idle_ttl_secs);
    let max_age = Duration::from_secs(t.sessions_cfg.max_age_secs);
    let expiring = |s: &Session| since(now, s.last_seen) >= ttl;
    let idle = t.sessions.values().filter(|s| expiring(s)).count();
    let old = t
        .sessions
        .values()
        .filter(|s| !expiring(s) && since(now, s.first_seen) >= max_age)
        .count();
    let views = t.views.values().filter(|v| !expiring(v)).count();
    let before = (t.counters.evicted_idle, t.counters.expired_max_age);
    assert_eq!(t.expire(now), idle + old, "expired at {secs}");
    assert_eq!(
        (t.counters.evicted_idle, t.counters.expired_max_age),
        (before.0 + idle as u64, before.1 + old as u64)
    );
    assert_eq!(t.views.len(), views);
    let r = t.privacy_report(now);
    let c = &r.counts;
    assert_eq!(
        (
            c.inbound,
            c.outbound,
            c.distinct_networks,
            c.distinct_agents
        ),
        held_from_scratch(t),
        "held counts at {secs}"
    );
    let d = t.digest(5);
    assert_eq!(d.state_counts, t.state_counts());
    assert_eq!(d.riskiest, t.riskiest(5));
    assert_eq!(d.least_complete, t.least_complete(5));
    assert_eq!(d.top_consumers, t.top_consumers(5));
    got.len()
}

/// Random traffic from `start` to `end` (seconds after `T0`): bursts, guessing from
/// one network, enumeration, freezes, quiet spells; a pass every 5 s or after a longer
/// gap, each checked.
fn simulate(config: SessionTableConfig, seed: u64, (start, end): (f64, f64)) -> (u64, usize) {
    let mut t = SessionTable::new(config, FingerprintKey::from_bytes([7; 32]));
    let mut rng = Rng(seed);
    let mut now = start;
    let mut changes = 0;
    let mut skipped = 0;
    while now < end {
        let step = match rng.below(20) {
            0 => 30.0 + rng.below(400) as f64 + 0.25,
            _ => 5.0,
        };
        let from = now;
        now += step;
        let t_in = |rng: &mut Rng| from + (rng.below(1000) as f64 / 1000.0) * step;
        match rng.below(12) {
            0..=4 => {}
            5..=8 => {
                for _ in 0..rng.below(20) {
                    let secs = t_in(&mut rng);
                    // Now and then one reported late: it started long before.
                    let started = match rng.below(10) {
                        0 => (secs - rng.below(1500) as f64).max(0.0),
                        _ => secs,
                    };
                    let ex = exchange(&mut rng, started).build();
                    t.observe(&ex, at(secs));
                }
            }
            9 => {
                // A burst: one credential, many requests within a second or two.
                let token = format!("INC-TOKEN-{}", rng.below(16));
                let start = t_in(&mut rng);
                for i in 0..rng.below(400) {
                    let ex = ExchangeBuilder::new()
                        .bearer(&token)
                        .path(&format!("/items/{i}"))
                        .at(start + i as f64 / 200.0)
                        .build();
                    t.observe(&ex, ex.started_at);
                }
            }
            10 => {
                // Guessing: fresh credentials failing from one network on one route.
                let start = t_in(&mut rng);
                let round = rng.below(1_000_000);
                for c in 0..(5 + rng.below(20)) {
                    for k in 0..(1 + rng.below(3)) {
                        let ex = ExchangeBuilder::new()
                            .bearer(&format!("GUESS-{round}-{c}"))
                            .method("POST")
                            .path("/login")
                            .client("198.51.100.77:5000")
                            .status(401)
                            .at(start + (c * 3 + k) as f64 * 0.1)
                            .build();
                        t.observe(&ex, ex.started_at);
                    }
                }
            }
            _ => {
                // Freeze or unfreeze a credential seen.
                let id = t
                    .list(&ListQuery {
                        kind: Some("bearer".into()),
                        ..ListQuery::default()
                    })
                    .first()
                    .map(|s| s.id.clone());
                if let Some(id) = id {
                    if rng.below(2) == 0 {
                        let _ = t.freeze(&id);
                    } else {
                        let _ = t.unfreeze(&id);
                    }
                }
                check_ranked(&t, &format!("after a freeze at {now}"));
            }
        }
        // Published between passes (after a write, or traffic since): summaries of
        // changed sessions are made anew.
        check_ranked(&t, &format!("before the pass at {now}"));
        let quiet_before = t
            .sessions
            .values()
            .chain(t.views.values())
            .filter(|s| !s.settled && s.quiet.is_some())
            .count();
        skipped += quiet_before;
        changes += checked_pass(&mut t, now);
    }
    assert!(changes > 0, "the traffic changed no state");
    (t.counters().state_changes, skipped)
}

#[test]
fn incremental_passes_equal_full_passes() {
    let mut small = SessionConfig {
        idle_ttl_secs: 900,
        max_sessions: 40,
        max_networks: 3,
        max_agents: 2,
        max_routes: 8,
        ..SessionConfig::default()
    };
    small.max_age_secs = 1500;
    let tiers = TierConfig {
        default: "free".into(),
        levels: [(
            "free".to_string(),
            TierLimits {
                rate_per_sec: 1.0,
                requests_per_day: 300,
            },
        )]
        .into_iter()
        .collect(),
        ..TierConfig::default()
    };
    let configs = [
        SessionTableConfig::default(),
        SessionTableConfig {
            sessions: small,
            ..SessionTableConfig::default()
        },
        SessionTableConfig {
            tiers,
            ..SessionTableConfig::default()
        },
    ];
    // The tiers' run crosses a UTC day (at T0 + 6400 s): daily counts start over.
    let runs = [
        (0x9e37_79b9_7f4a_7c15u64, (0.0, 2400.0)),
        (0x0123_4567_89ab_cdef, (0.0, 2400.0)),
        (0x5555_aaaa_1234_4321, (4800.0, 7200.0)),
    ];
    for (i, (config, (seed, span))) in configs.into_iter().zip(runs).enumerate() {
        let (changes, skipped) = simulate(config, seed, span);
        assert!(changes > 0, "config {i}");
        // The passes did skip sessions (else this tests nothing).
        assert!(skipped > 0, "config {i}: no session was ever skipped");
    }
}

fn table() -> SessionTable {
    SessionTable::new(
        SessionTableConfig::default(),
        FingerprintKey::from_bytes([3; 32]),
    )
}

fn only(t: &SessionTable) -> &Session {
    assert_eq!(t.sessions.len(), 1);
    t.sessions.values().next().unwrap()
}

#[test]
fn a_session_changed_after_a_pass_is_scored_again() {
    let mut t = table();
    let tok = || {
        ExchangeBuilder::new()
            .bearer("CHANGED-TOKEN")
            .ua("curl/8.5.0")
    };
    let ex = tok().build();
    t.observe(&ex, at(0.0));
    t.score(at(5.0));
    let quiet = only(&t).quiet.expect("nothing can change soon");
    assert!(quiet.1 > at(10.0), "{quiet:?}");
    // Within that span, failures arrive: the next pass sees them.
    for i in 0..60 {
        let ex = tok().status(401).at(6.0 + f64::from(i) * 0.01).build();
        t.observe(&ex, ex.started_at);
    }
    assert!(only(&t).quiet.is_none());
    let changes = t.score(at(10.0));
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(only(&t).reasons.contains(&Reason::AuthFailures));
    // A freeze changes it too (once its rate has decayed, it is quiet again).
    let id = only(&t).id.to_string();
    t.score(at(60.0));
    assert!(only(&t).quiet.is_some());
    t.freeze(&id).unwrap();
    assert!(only(&t).quiet.is_none());
}

#[test]
fn a_time_based_transition_happens_without_new_traffic() {
    // 100 successes, then 15 failures: 13% of the window's requests fail, below
    // `auth_failures_ratio` (20%). Once the successes' bucket leaves the window, all
    // the window's requests are failures: the signal appears with no new request.
    let mut t = table();
    let tok = || {
        ExchangeBuilder::new()
            .bearer("TIMED-TOKEN")
            .ua("curl/8.5.0")
    };
    for i in 0..100 {
        let ex = tok().at(f64::from(i) * 0.2).build();
        t.observe(&ex, ex.started_at);
    }
    for i in 0..15 {
        let ex = tok().status(401).at(100.0 + f64::from(i)).build();
        t.observe(&ex, ex.started_at);
    }
    let mut appeared = None;
    let mut secs = 115.0;
    let mut skipped = 0;
    while secs < 1000.0 {
        secs += 5.0;
        if only(&t).quiet.is_some_and(|(_, u)| at(secs) <= u) {
            skipped += 1;
        }
        let (want, _, _) = reference_pass(&t, at(secs));
        let got = t.score(at(secs));
        assert_eq!(got, want, "at {secs}");
        if appeared.is_none() && only(&t).reasons.contains(&Reason::AuthFailures) {
            appeared = Some(secs);
        }
    }
    let appeared = appeared.expect("auth_failures appeared");
    // The window's buckets are 30 s, aligned to Unix time.
    assert!((270.0..=330.0).contains(&appeared), "at {appeared}");
    // ...and left again once the failures' bucket left too.
    assert!(!only(&t).reasons.contains(&Reason::AuthFailures));
    assert_eq!(only(&t).state, HealthState::Healthy);
    assert!(skipped > 10, "{skipped} passes skipped the session");
}

#[test]
fn quiet_span_ends_where_the_window_moves() {
    let mut t = table();
    let ex = ExchangeBuilder::new()
        .bearer("SPAN-TOKEN")
        .ua("curl/8.5.0")
        .client("203.0.113.9:1000")
        .build();
    t.observe(&ex, at(0.0));
    t.score(at(1.0));
    let (scored, until) = only(&t).quiet.expect("quiet");
    assert_eq!(scored, at(1.0));
    // The first item to leave a window: its network leaves `concurrent_secs` (60 s).
    assert_eq!(until, at(0.0) + Duration::from_secs(60));
    // A rate that may still cross a threshold (here `rate_spike_min`) is scored every
    // pass.
    let mut t = table();
    for i in 0..40 {
        let ex = ExchangeBuilder::new()
            .bearer("BUSY-TOKEN")
            .at(f64::from(i) * 0.01)
            .build();
        t.observe(&ex, ex.started_at);
    }
    t.score(at(1.0));
    assert!(only(&t).quiet.is_none());
}

/// Score every 5 s from `from` to `to`, each pass checked against the reference.
fn passes(t: &mut SessionTable, from: f64, to: f64) {
    let mut secs = from;
    while secs <= to {
        checked_pass(t, secs);
        secs += 5.0;
    }
}

#[test]
fn signals_that_only_turn_off_with_time_are_scored_until_they_do() {
    // Over the rate limit (and no spike: its minimum is out of reach): on until the
    // rate decays, with no new request.
    let mut config = SessionTableConfig::default();
    config.scoring.rate_limit = 5.0;
    config.scoring.rate_spike_min = 1e6;
    let mut t = SessionTable::new(config, FingerprintKey::from_bytes([5; 32]));
    for i in 0..100 {
        let ex = ExchangeBuilder::new()
            .bearer("LIMIT-TOKEN")
            .at(f64::from(i) * 0.01)
            .build();
        t.observe(&ex, ex.started_at);
    }
    checked_pass(&mut t, 1.0);
    assert!(only(&t).reasons.contains(&Reason::RateLimit));
    passes(&mut t, 5.0, 60.0);
    assert!(!only(&t).reasons.contains(&Reason::RateLimit));

    // Over the daily quota: on until the UTC day ends (T0 + 6400 s), with no new
    // request.
    let config = SessionTableConfig {
        tiers: TierConfig {
            default: "free".into(),
            levels: [(
                "free".to_string(),
                TierLimits {
                    rate_per_sec: 0.0,
                    requests_per_day: 100,
                },
            )]
            .into_iter()
            .collect(),
            ..TierConfig::default()
        },
        ..SessionTableConfig::default()
    };
    let mut t = SessionTable::new(config, FingerprintKey::from_bytes([5; 32]));
    for i in 0..150 {
        let ex = ExchangeBuilder::new()
            .bearer("QUOTA-TOKEN")
            .at(6250.0 + f64::from(i) * 0.66)
            .build();
        t.observe(&ex, ex.started_at);
    }
    checked_pass(&mut t, 6350.0);
    assert!(only(&t).reasons.contains(&Reason::OverTier));
    passes(&mut t, 6355.0, 6420.0);
    assert!(!only(&t).reasons.contains(&Reason::OverTier));
}

#[test]
fn expiry_sees_sessions_made_older_by_late_exchanges() {
    let mut config = SessionTableConfig::default();
    config.sessions.max_age_secs = 100;
    let mut t = SessionTable::new(config, FingerprintKey::from_bytes([9; 32]));
    let tok = || ExchangeBuilder::new().bearer("LATE-TOKEN");
    let ex = tok().at(1040.0).build();
    t.observe(&ex, at(1040.0));
    assert_eq!(t.expire(at(1050.0)), 0);
    // Nothing is old enough: the next expiry has nothing to look at...
    assert_eq!(t.expire(at(1055.0)), 0);
    // ...until an exchange that started long ago is reported: the session is now older
    // than `max_age_secs`.
    let ex = tok().at(800.0).build();
    t.observe(&ex, at(1058.0));
    assert_eq!(t.expire(at(1060.0)), 1);
    assert_eq!(t.counters().expired_max_age, 1);
    assert!(t.is_empty());
}
