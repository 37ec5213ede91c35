//! The table's caches (credentials, anonymous groups, agents, view ids) give what
//! computing every exchange afresh gives, follow the fingerprint key, and leave every
//! judgement that depends on time to the time of each request.

use crate::{
    exchange::Role,
    identity::{jwt::make_token, FingerprintKey},
    score::Reason,
    session::{
        testutil::{at, ExchangeBuilder, T0},
        ListQuery, SessionTable, SessionTableConfig, OUTBOUND_PREFIX,
    },
};

fn table() -> SessionTable {
    SessionTable::new(
        SessionTableConfig::default(),
        FingerprintKey::random().unwrap(),
    )
}

fn obs(t: &mut SessionTable, b: ExchangeBuilder) {
    let ex = b.build();
    t.observe(&ex, ex.started_at);
}

fn ids(t: &SessionTable) -> Vec<String> {
    let mut v: Vec<String> = t.sessions.keys().map(|k| k.to_string()).collect();
    v.sort();
    v
}

/// A JWT is judged by its claims and the time of each request, not by what was found
/// when it was first seen (and cached).
#[test]
fn cached_jwt_judged_at_each_request() {
    let token = make_token(
        r#"{"alg":"HS256"}"#,
        &format!(r#"{{"sub":"u1","exp":{}}}"#, T0 + 100),
    );
    let mut t = table();
    let b = || ExchangeBuilder::new().bearer(&token);
    obs(&mut t, b().at(0.0));
    t.score(at(1.0));
    assert_eq!(t.list(&ListQuery::default())[0].reasons, vec![]);
    // Past `exp` and the leeway: the same (cached) token is now an expired one accepted.
    obs(&mut t, b().at(200.0));
    let (hits, misses) = t.credentials.stats();
    assert_eq!((hits, misses), (1, 1));
    t.score(at(201.0));
    assert_eq!(
        t.list(&ListQuery::default())[0].reasons,
        vec![Reason::ExpiredJwtAccepted]
    );
    // Refused once expired: a refresh, which no view sees.
    let mut t = table();
    for i in 0..3 {
        obs(&mut t, b().at(f64::from(i)));
    }
    obs(&mut t, b().at(300.0).status(401));
    let route_view = t
        .views
        .values()
        .find(|v| v.id.starts_with("route:"))
        .unwrap();
    assert_eq!(route_view.requests, 3);
}

/// Session ids are the fingerprints computed without any cache, under the current key,
/// before and after a rotation.
#[test]
fn ids_follow_the_key() {
    let mut t = table();
    let anon = || {
        ExchangeBuilder::new()
            .client("198.51.100.20:4000")
            .ua("curl/8.5.0")
    };
    let tok = || {
        ExchangeBuilder::new()
            .bearer("ROTATING-TOKEN")
            .ua("curl/8.5.0")
    };
    let out = || tok().role(Role::Client).server("192.0.2.9:443");
    let expected = |t: &SessionTable| {
        let fp = |prefix: &str, domain: &str, raw: &[u8]| {
            t.key.fingerprint(prefix, domain, raw).to_string()
        };
        let tok = fp("tok", "cred", b"ROTATING-TOKEN");
        let mut v = vec![
            fp("anon", "anon", b"198.51.100.0/24\0curl/8"),
            format!("{OUTBOUND_PREFIX}{tok}"),
            tok,
            fp("anon", "anon", b"203.0.113.0/24\0curl/8"),
        ];
        v.sort();
        v
    };
    for round in 0..3 {
        for i in 0..2 {
            let s = f64::from(round * 10 + i);
            obs(&mut t, anon().at(s));
            obs(&mut t, tok().at(s));
            obs(&mut t, out().at(s));
            obs(&mut t, ExchangeBuilder::new().ua("curl/8.5.0").at(s));
        }
        assert_eq!(ids(&t), expected(&t), "round {round}");
        t.rotate_key().unwrap();
        assert!(t.is_empty());
    }
}

/// An agent's product fingerprint is made under the current key.
#[test]
fn agent_fingerprints_follow_the_key() {
    let mut t = table();
    let agent = |t: &mut SessionTable| {
        obs(
            t,
            ExchangeBuilder::new()
                .bearer("AGENT-TOKEN")
                .ua("ShopApp/1.0"),
        );
        let s = t.sessions.values().next().unwrap();
        s.last_pair.as_ref().unwrap().1.to_string()
    };
    let first = agent(&mut t);
    assert_eq!(
        first,
        t.key.fingerprint("ua", "user-agent", b"shopapp").as_str()
    );
    t.rotate_key().unwrap();
    let second = agent(&mut t);
    assert_ne!(first, second);
    assert_eq!(
        second,
        t.key.fingerprint("ua", "user-agent", b"shopapp").as_str()
    );
}

/// Network and route view ids are made once and stay what formatting them gives.
#[test]
fn view_ids() {
    let mut t = table();
    for i in 0..3 {
        for c in 0..3 {
            obs(
                &mut t,
                ExchangeBuilder::new()
                    .bearer(&format!("VIEW-{c}"))
                    .client(&format!("198.51.{i}.7:1000"))
                    .path(&format!("/items/{i}"))
                    .at(f64::from(i)),
            );
        }
    }
    let mut v: Vec<String> = t.views.keys().map(|k| k.to_string()).collect();
    v.sort();
    assert_eq!(
        v,
        vec![
            "net:198.51.0.0/24",
            "net:198.51.1.0/24",
            "net:198.51.2.0/24",
            "route:GET /items/{id}"
        ]
    );
    assert_eq!(t.views["route:GET /items/{id}"].requests, 9);
}
