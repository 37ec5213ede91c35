//! Scoring from plain facts: each signal fires on its facts, a near miss does not.

use super::*;

fn cfg() -> ScoreConfig {
    ScoreConfig::default()
}

fn reasons(input: &ScoreInput) -> Vec<Reason> {
    evaluate(input, &cfg()).reasons
}

#[test]
fn nothing_is_healthy() {
    let a = evaluate(&ScoreInput::default(), &cfg());
    assert_eq!(
        (a.score, a.state, a.reasons),
        (100, HealthState::Healthy, vec![])
    );
}

#[test]
fn concurrent_networks_needs_back_and_forth() {
    let mut i = ScoreInput {
        inbound: true,
        networks: 2,
        recent_networks: 2,
        network_switches: 1,
        ..Default::default()
    };
    // One move is a client that moved.
    assert_eq!(reasons(&i), vec![]);
    i.network_switches = 2;
    assert_eq!(reasons(&i), vec![]);
    // Three networks within seconds: nobody travels that fast.
    i.recent_networks = 3;
    assert_eq!(reasons(&i), vec![Reason::ConcurrentNetworks]);
    i.recent_networks = 2;
    i.network_switches = 3;
    let a = evaluate(&i, &cfg());
    assert_eq!(a.reasons, vec![Reason::ConcurrentNetworks]);
    assert_eq!(a.state, HealthState::Unhealthy);
    // Outbound calls are not judged by their client side.
    i.inbound = false;
    assert_eq!(reasons(&i), vec![]);
}

#[test]
fn stuffing_needs_many_failing_credentials_and_a_majority() {
    let failing = CredentialUse {
        requests: 1,
        failures: 1,
        successes: 0,
        fresh: true,
    };
    let ok = CredentialUse {
        requests: 5,
        failures: 0,
        successes: 5,
        fresh: true,
    };
    let view = |fail: usize, good: usize| ScoreInput {
        across: Some((
            ViewKind::Network,
            AcrossFacts {
                credentials: [vec![failing; fail], vec![ok; good]].concat(),
                requests: (fail + 5 * good) as u64,
                top_id_route: (0, 0),
            },
        )),
        ..Default::default()
    };
    assert_eq!(reasons(&view(11, 2)), vec![Reason::CredentialStuffing]);
    assert_eq!(evaluate(&view(11, 2), &cfg()).state, HealthState::Unhealthy);
    assert_eq!(reasons(&view(10, 0)), vec![]);
    // A big office where a few users mistype: not stuffing.
    assert_eq!(reasons(&view(12, 40)), vec![]);
    // A failure followed by a success is a typo, not a guess.
    let typo = CredentialUse {
        requests: 2,
        failures: 1,
        successes: 1,
        fresh: true,
    };
    let mut v = view(0, 0);
    if let Some((_, f)) = &mut v.across {
        f.credentials = vec![typo; 30];
    }
    assert_eq!(reasons(&v), vec![]);
}

#[test]
fn spraying_counts_identities_with_few_attempts() {
    let view = |attempts: u64, n: usize| ScoreInput {
        across: Some((
            ViewKind::Route,
            AcrossFacts {
                credentials: vec![
                    CredentialUse {
                        requests: attempts,
                        failures: attempts,
                        successes: 0,
                        fresh: true,
                    };
                    n
                ],
                requests: attempts * n as u64,
                top_id_route: (0, 0),
            },
        )),
        ..Default::default()
    };
    assert_eq!(reasons(&view(1, 10)), vec![Reason::PasswordSpraying]);
    assert_eq!(reasons(&view(2, 9)), vec![]);
    // Many attempts per identity is brute force on each (the session's auth_failures).
    assert_eq!(reasons(&view(20, 10)), vec![]);
}

#[test]
fn token_rotation_needs_fresh_credentials_walking_ids_on_one_route() {
    let fresh = CredentialUse {
        requests: 3,
        failures: 0,
        successes: 3,
        fresh: true,
    };
    let view = |creds: usize, ids: u64, route_requests: u64, requests: u64| ScoreInput {
        across: Some((
            ViewKind::Network,
            AcrossFacts {
                credentials: vec![fresh; creds],
                requests,
                top_id_route: (ids, route_requests),
            },
        )),
        ..Default::default()
    };
    assert_eq!(
        reasons(&view(40, 120, 120, 120)),
        vec![Reason::TokenRotation]
    );
    // Many users behind one address, browsing many pages: not one route walked.
    assert_eq!(reasons(&view(40, 60, 60, 150)), vec![]);
    // Few ids: users reading their own objects.
    assert_eq!(reasons(&view(40, 20, 120, 120)), vec![]);
    assert_eq!(reasons(&view(19, 120, 120, 120)), vec![]);
}

#[test]
fn over_tier_and_rate_limit_off() {
    let mut c = cfg();
    c.rate_limit = 0.0;
    let i = ScoreInput {
        rate: Rate {
            current: 1e6,
            baseline: None,
        },
        over_tier: true,
        ..Default::default()
    };
    assert_eq!(evaluate(&i, &c).reasons, vec![Reason::OverTier]);
    assert_eq!(evaluate(&i, &c).state, HealthState::Suspicious);
}

#[test]
fn trusted_networks_are_validated() {
    let mut c = cfg();
    c.trusted_networks = vec!["10.0.0.0/8".into(), "nope".into()];
    assert_eq!(c.validate().unwrap_err().0, "scoring.trusted_networks");
    c.trusted_networks.clear();
    assert!(c.validate().is_ok());
}

#[test]
fn brute_force_is_sustained_guessing() {
    let i = |failures: u64, requests: u64| ScoreInput {
        requests,
        auth_failures: failures,
        ..Default::default()
    };
    assert_eq!(
        evaluate(&i(60, 70), &cfg()).reasons,
        vec![Reason::AuthFailures, Reason::BruteForce]
    );
    assert_eq!(evaluate(&i(60, 70), &cfg()).state, HealthState::Unhealthy);
    // A burst of a dozen: suspicious, not yet guessing.
    assert_eq!(evaluate(&i(12, 12), &cfg()).state, HealthState::Suspicious);
    // Many failures within much successful traffic: only the burst signal.
    assert_eq!(
        evaluate(&i(60, 300), &cfg()).reasons,
        vec![Reason::AuthFailures]
    );
}
