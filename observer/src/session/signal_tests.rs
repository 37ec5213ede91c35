//! One test per signal, from exchanges through the session table: it fires, and a near
//! miss does not.

use crate::{
    exchange::Role,
    identity::{jwt::make_token, FingerprintKey},
    score::{HealthState, Reason, ScoreConfig},
    session::{
        testutil::{at, ExchangeBuilder, T0},
        ListQuery, SessionTable, SessionTableConfig,
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

/// Score at `now` and return the reasons of the only session.
fn reasons(t: &mut SessionTable, now: f64) -> Vec<Reason> {
    t.score(at(now));
    let l = t.list(&ListQuery::default());
    assert_eq!(l.len(), 1, "{l:?}");
    l[0].reasons.clone()
}

fn tok() -> ExchangeBuilder {
    ExchangeBuilder::new()
        .bearer("SIGNAL-TOKEN")
        .ua("curl/8.5.0")
}

#[test]
fn multi_network() {
    let mut t = table();
    for (i, ip) in ["10.1.0.1:1", "10.2.0.1:1", "10.3.0.1:1"]
        .iter()
        .enumerate()
    {
        // Minutes apart: three places in five minutes, never two at once.
        obs(&mut t, tok().client(ip).at(i as f64 * 90.0));
    }
    assert_eq!(reasons(&mut t, 200.0), vec![Reason::MultiNetwork]);
    // The same three within seconds: at once.
    let mut t = table();
    for (i, ip) in ["10.1.0.1:1", "10.2.0.1:1", "10.3.0.1:1"]
        .iter()
        .enumerate()
    {
        obs(&mut t, tok().client(ip).at(i as f64 * 5.0));
    }
    assert_eq!(
        reasons(&mut t, 15.0),
        vec![Reason::MultiNetwork, Reason::ConcurrentNetworks]
    );

    // Near miss: two networks, or the first use outside the window.
    let mut t = table();
    obs(&mut t, tok().client("10.1.0.1:1"));
    obs(&mut t, tok().client("10.1.0.99:1").at(1.0)); // same /24
    obs(&mut t, tok().client("10.2.0.1:1").at(2.0));
    assert_eq!(reasons(&mut t, 3.0), vec![]);
    obs(&mut t, tok().client("10.3.0.1:1").at(400.0));
    assert_eq!(reasons(&mut t, 401.0), vec![]);
}

#[test]
fn multi_agent() {
    let mut t = table();
    for (i, ua) in ["curl/8.5.0", "python-requests/2.31.0", "okhttp/4.12"]
        .iter()
        .enumerate()
    {
        obs(
            &mut t,
            ExchangeBuilder::new().bearer("T").ua(ua).at(i as f64),
        );
    }
    assert_eq!(reasons(&mut t, 5.0), vec![Reason::MultiAgent]);

    // Near miss: versions of one family count once.
    let mut t = table();
    for (i, ua) in ["curl/8.5.0", "curl/8.4.0", "curl/8.1", "okhttp/4.12"]
        .iter()
        .enumerate()
    {
        obs(
            &mut t,
            ExchangeBuilder::new().bearer("T").ua(ua).at(i as f64),
        );
    }
    assert_eq!(reasons(&mut t, 5.0), vec![]);
}

#[test]
fn network_agent_switch() {
    let mut t = table();
    for i in 0..20 {
        obs(&mut t, tok().at(f64::from(i)));
    }
    obs(
        &mut t,
        ExchangeBuilder::new()
            .bearer("SIGNAL-TOKEN")
            .ua("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0")
            .client("198.51.100.1:1")
            .at(21.0),
    );
    assert_eq!(reasons(&mut t, 22.0), vec![Reason::NetworkAgentSwitch]);
    // It fades after the window.
    assert_eq!(reasons(&mut t, 400.0), vec![]);

    // Near misses: only the network changes; or the session is too young.
    let mut t = table();
    for i in 0..20 {
        obs(&mut t, tok().at(f64::from(i)));
    }
    obs(&mut t, tok().client("198.51.100.1:1").at(21.0));
    assert_eq!(reasons(&mut t, 22.0), vec![]);
    let mut t = table();
    for i in 0..5 {
        obs(&mut t, tok().at(f64::from(i)));
    }
    obs(
        &mut t,
        ExchangeBuilder::new()
            .bearer("SIGNAL-TOKEN")
            .ua("Wget/1.21")
            .client("198.51.100.1:1")
            .at(6.0),
    );
    assert_eq!(reasons(&mut t, 7.0), vec![]);
}

/// `steady` req/s for 600 s, then `burst` req/s for 10 s; reasons at the end.
fn rate_run(steady: f64, burst: f64) -> Vec<Reason> {
    let mut t = table();
    let mut s = 0.0;
    while s < 600.0 {
        obs(&mut t, tok().at(s));
        s += 1.0 / steady;
    }
    let end = s + 10.0;
    while s < end {
        obs(&mut t, tok().at(s));
        s += 1.0 / burst;
    }
    reasons(&mut t, end)
}

#[test]
fn rate_spike() {
    assert_eq!(rate_run(0.5, 20.0), vec![Reason::RateSpike]);
    // Near miss: a burst of only a few times the baseline.
    assert_eq!(rate_run(0.5, 5.0), vec![]);
    // Near miss: no baseline yet (young session).
    let mut t = table();
    for i in 0..200 {
        obs(&mut t, tok().at(f64::from(i) * 0.05));
    }
    assert_eq!(reasons(&mut t, 10.0), vec![]);
}

#[test]
fn rate_spike_per_route() {
    // Steady mixed traffic; then one route (warm, with its own baseline) bursts while the
    // session as a whole stays under 10x its baseline.
    let mut t = table();
    for i in 0..1200 {
        let p = if i % 10 == 0 { "/export" } else { "/items" };
        obs(&mut t, tok().path(p).at(f64::from(i) * 0.5));
    }
    let mut s = 600.0;
    while s < 610.0 {
        obs(&mut t, tok().path("/export").at(s));
        s += 1.0 / 8.0;
    }
    assert_eq!(reasons(&mut t, 610.0), vec![Reason::RateSpike]);
}

#[test]
fn rate_limit() {
    let run = |rps: f64| {
        let mut t = table();
        let mut s = 0.0;
        while s < 10.0 {
            obs(&mut t, tok().at(s));
            s += 1.0 / rps;
        }
        reasons(&mut t, 10.0)
    };
    assert_eq!(run(500.0), vec![Reason::RateLimit]);
    assert_eq!(run(250.0), vec![]);
}

#[test]
fn auth_failures() {
    let run = |failures: u32, ok: u32, status: u16| {
        let mut t = table();
        for i in 0..ok {
            obs(&mut t, tok().at(f64::from(i)));
        }
        for i in 0..failures {
            obs(&mut t, tok().status(status).at(f64::from(ok + i)));
        }
        reasons(&mut t, f64::from(ok + failures))
    };
    assert_eq!(run(10, 0, 401), vec![Reason::AuthFailures]);
    assert_eq!(run(10, 20, 403), vec![Reason::AuthFailures]);
    // Near misses: one failure fewer; or a small share of a busy session.
    assert_eq!(run(9, 0, 401), vec![]);
    assert_eq!(run(10, 90, 403), vec![]);
}

#[test]
fn grpc_auth_failures_are_auth_failures() {
    // gRPC answers HTTP 200 whatever happens: its status is what counts.
    let run = |code: u8| {
        let mut t = table();
        for i in 0..10 {
            obs(
                &mut t,
                tok()
                    .path("/demo.Greeter/Secret")
                    .grpc(code)
                    .at(f64::from(i)),
            );
        }
        reasons(&mut t, 10.0)
    };
    assert_eq!(run(16), vec![Reason::AuthFailures]);
    assert_eq!(run(7), vec![Reason::AuthFailures]);
    assert_eq!(run(0), vec![]);
    assert_eq!(run(5), vec![]);
}

#[test]
fn enumeration() {
    let run = |ids: u32, repeat: u32| {
        let mut t = table();
        let mut n = 0.0;
        for i in 0..ids {
            for _ in 0..repeat {
                obs(&mut t, tok().path(&format!("/users/{}", 1000 + i)).at(n));
                n += 1.0;
            }
        }
        reasons(&mut t, n)
    };
    assert_eq!(run(150, 1), vec![Reason::Enumeration]);
    // Near misses: 10 or 60 ids, or one id many times.
    assert_eq!(run(10, 5), vec![]);
    assert_eq!(run(60, 1), vec![]);
    assert_eq!(run(1, 150), vec![]);
    // Ids spread over more than the window do not add up.
    let mut t = table();
    for i in 0..150 {
        obs(
            &mut t,
            tok().path(&format!("/users/{i}")).at(f64::from(i) * 10.0),
        );
    }
    assert_eq!(reasons(&mut t, 1500.0), vec![]);
}

#[test]
fn not_found_ratio() {
    let run = |total: u32, not_found: u32| {
        let mut t = table();
        for i in 0..total {
            let status = if i < not_found { 404 } else { 200 };
            obs(
                &mut t,
                tok()
                    .path(&format!("/p{i}"))
                    .status(status)
                    .at(f64::from(i)),
            );
        }
        reasons(&mut t, f64::from(total))
    };
    assert_eq!(run(20, 10), vec![Reason::NotFoundRatio]);
    assert_eq!(run(19, 19), vec![]);
    assert_eq!(run(20, 9), vec![]);
}

fn jwt_with(header: &str, payload: &str) -> ExchangeBuilder {
    ExchangeBuilder::new().bearer(&make_token(header, payload))
}

#[test]
fn expired_jwt_accepted() {
    let expired = format!(r#"{{"exp":{}}}"#, T0 - 120);
    let mut t = table();
    obs(&mut t, jwt_with(r#"{"alg":"HS256"}"#, &expired));
    assert_eq!(reasons(&mut t, 1.0), vec![Reason::ExpiredJwtAccepted]);
    // Near misses: refused; or within the leeway.
    let mut t = table();
    obs(&mut t, jwt_with(r#"{"alg":"HS256"}"#, &expired).status(401));
    assert_eq!(reasons(&mut t, 1.0), vec![]);
    let mut t = table();
    let recent = format!(r#"{{"exp":{}}}"#, T0 - 30);
    obs(&mut t, jwt_with(r#"{"alg":"HS256"}"#, &recent));
    assert_eq!(reasons(&mut t, 1.0), vec![]);
}

#[test]
fn jwt_not_yet_valid() {
    let mut t = table();
    obs(
        &mut t,
        jwt_with(r#"{"alg":"HS256"}"#, &format!(r#"{{"nbf":{}}}"#, T0 + 600)),
    );
    assert_eq!(reasons(&mut t, 1.0), vec![Reason::JwtNotYetValid]);
    let mut t = table();
    obs(
        &mut t,
        jwt_with(r#"{"alg":"HS256"}"#, &format!(r#"{{"nbf":{}}}"#, T0 + 30)),
    );
    assert_eq!(reasons(&mut t, 1.0), vec![]);
}

#[test]
fn jwt_alg_none() {
    let mut t = table();
    obs(&mut t, jwt_with(r#"{"alg":"None"}"#, "{}").status(401));
    assert_eq!(reasons(&mut t, 1.0), vec![Reason::JwtAlgNone]);
    let mut t = table();
    obs(&mut t, jwt_with(r#"{"alg":"HS256"}"#, "{}"));
    assert_eq!(reasons(&mut t, 1.0), vec![]);
}

#[test]
fn credential_in_query() {
    let mut t = table();
    obs(
        &mut t,
        ExchangeBuilder::new().query("page=1&access_token=QT"),
    );
    assert_eq!(reasons(&mut t, 1.0), vec![Reason::CredentialInQuery]);
    let mut t = table();
    obs(&mut t, ExchangeBuilder::new().query("page=1&sort=token"));
    assert_eq!(reasons(&mut t, 1.0), vec![]);
}

#[test]
fn plaintext_credential() {
    let mut t = table();
    obs(&mut t, tok().tls(false).client("198.51.100.1:1"));
    assert_eq!(reasons(&mut t, 1.0), vec![Reason::PlaintextCredential]);
    // Outbound: our credential sent in clear to a remote API.
    let mut t = table();
    obs(
        &mut t,
        tok()
            .tls(false)
            .role(Role::Client)
            .client("10.0.0.1:5")
            .server("198.51.100.1:80"),
    );
    assert_eq!(reasons(&mut t, 1.0), vec![Reason::PlaintextCredential]);
    // Near misses: loopback peer, TLS, no credential, unknown peer.
    for b in [
        tok().tls(false).client("127.0.0.1:1"),
        tok().tls(false).client("[::1]:1"),
        tok().tls(true),
        ExchangeBuilder::new().tls(false),
        tok().tls(false).client("0.0.0.0:0"),
    ] {
        let mut t = table();
        obs(&mut t, b);
        assert_eq!(reasons(&mut t, 1.0), vec![]);
    }
}

#[test]
fn frozen_credential() {
    let mut t = table();
    obs(&mut t, tok());
    let id = t.list(&ListQuery::default())[0].id.clone();
    t.freeze(&id).unwrap();
    assert_eq!(reasons(&mut t, 1.0), vec![]);
    obs(&mut t, tok().at(2.0));
    assert_eq!(reasons(&mut t, 3.0), vec![Reason::FrozenCredential]);
    assert_eq!(t.list(&ListQuery::default())[0].score, 0);
}

#[test]
fn ordinary_curl_client_stays_healthy() {
    // 50 sequential GETs of varied pages from one IP, some of them item pages.
    let mut t = table();
    let pages = ["/", "/about", "/docs", "/pricing", "/blog/hello-world"];
    let mut all = Vec::new();
    for i in 0..50u32 {
        let path = if i % 5 == 0 {
            format!("/items/{}", i / 5)
        } else {
            pages[i as usize % pages.len()].to_string()
        };
        obs(
            &mut t,
            ExchangeBuilder::new()
                .ua("curl/8.5.0")
                .tls(false)
                .path(&path)
                .status(if i == 7 { 404 } else { 200 })
                .at(f64::from(i) * 0.02),
        );
        all.extend(t.score(at(f64::from(i) * 0.02)));
    }
    all.extend(t.score(at(5.0)));
    assert!(all.is_empty(), "{all:?}");
    let l = t.list(&ListQuery::default());
    assert_eq!(
        (l.len(), l[0].score, l[0].state),
        (1, 100, HealthState::Healthy)
    );
}

#[test]
fn ordinary_token_session_stays_healthy() {
    // A browser-like client: 1 request every 2 s for 30 minutes over a handful of routes,
    // opening 10 items, an occasional 401 and 404.
    let mut t = table();
    let mut changes = Vec::new();
    for i in 0..900u32 {
        let path = match i % 6 {
            0 => format!("/items/{}", i % 10),
            1 => "/me".into(),
            2 => "/items".into(),
            3 => format!("/items/{}/comments", i % 10),
            _ => "/feed".into(),
        };
        let status = match i % 100 {
            0 => 401,
            50 => 404,
            _ => 200,
        };
        obs(
            &mut t,
            tok().path(&path).status(status).at(f64::from(i) * 2.0),
        );
        if i % 3 == 0 {
            changes.extend(t.score(at(f64::from(i) * 2.0)));
        }
    }
    assert!(changes.is_empty(), "{changes:?}");
}

#[test]
fn states_and_changes() {
    let mut t = table();
    // Healthy first pass: no change reported.
    obs(&mut t, tok());
    assert!(t.score(at(1.0)).is_empty());
    // A credential in the query: suspicious (75).
    obs(&mut t, tok().query("api_key=X").at(2.0));
    let ch = t.score(at(3.0));
    assert_eq!(ch.len(), 1);
    let c = &ch[0];
    assert_eq!(
        (c.from, c.to, c.score),
        (HealthState::Healthy, HealthState::Suspicious, 75)
    );
    // The bearer token is the primary identity: the query key is noted on its session.
    assert_eq!(c.reasons, vec![Reason::CredentialInQuery]);
    // No change, no report.
    assert!(t.score(at(4.0)).is_empty());
    // An unsigned JWT (another session): unhealthy (40) at once.
    obs(&mut t, jwt_with(r#"{"alg":"none"}"#, "{}").at(5.0));
    let ch = t.score(at(6.0));
    assert_eq!(ch.len(), 1, "{ch:?}");
    assert_eq!((ch[0].to, ch[0].score), (HealthState::Unhealthy, 40));
    // Back to healthy once the window has passed.
    let ch = t.score(at(400.0));
    assert_eq!(ch.len(), 2);
    assert!(ch.iter().all(|c| c.to == HealthState::Healthy));
    let json = serde_json::to_value(&ch[0]).unwrap();
    assert_eq!(json["to"], "healthy");
    assert_eq!(json["direction"], "inbound");
    assert!(json["at"].as_f64().unwrap() > T0 as f64);
    assert!(json["session_id"].as_str().unwrap().starts_with("tok_"));
    assert_eq!(t.counters().state_changes, 4);
    assert_eq!(t.counters().signals[&Reason::CredentialInQuery], 1);
}

#[test]
fn score_and_state_arithmetic() {
    let cfg = ScoreConfig::default();
    assert_eq!(cfg.state_of(100), HealthState::Healthy);
    assert_eq!(cfg.state_of(80), HealthState::Healthy);
    assert_eq!(cfg.state_of(79), HealthState::Suspicious);
    assert_eq!(cfg.state_of(50), HealthState::Suspicious);
    assert_eq!(cfg.state_of(49), HealthState::Unhealthy);
    // Every signal alone leaves the healthy state.
    for r in Reason::ALL {
        assert!(
            cfg.state_of(100 - cfg.weights.of(*r)) != HealthState::Healthy,
            "{r:?}"
        );
        assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
    }
    let bad = ScoreConfig {
        suspicious_min: 90,
        ..ScoreConfig::default()
    };
    assert!(bad.validate().is_err());
}

#[test]
fn zero_weight_disables_a_signal() {
    let mut cfg = SessionTableConfig::default();
    cfg.scoring.weights.credential_in_query = 0;
    let mut t = SessionTable::new(cfg, FingerprintKey::random().unwrap());
    obs(&mut t, ExchangeBuilder::new().query("api_key=Z"));
    assert_eq!(reasons(&mut t, 1.0), vec![]);
    assert_eq!(t.list(&ListQuery::default())[0].score, 100);
}

#[test]
fn custom_clients_are_told_apart() {
    let mut t = table();
    for (i, ua) in ["shop-app/2.1", "mobile/5.0", "client-1/1.0"]
        .iter()
        .enumerate()
    {
        obs(
            &mut t,
            ExchangeBuilder::new().bearer("T").ua(ua).at(i as f64),
        );
    }
    assert_eq!(reasons(&mut t, 5.0), vec![Reason::MultiAgent]);
    let id = t.list(&ListQuery::default())[0].id.clone();
    let agents = serde_json::to_string(&t.get(&id).unwrap().agents).unwrap();
    assert!(agents.contains("ua_"), "{agents}");
    for raw in ["shop-app", "mobile", "client-1"] {
        assert!(!agents.contains(raw), "{raw} kept raw: {agents}");
    }

    // Versions of one custom client are one client.
    let mut t = table();
    for (i, ua) in ["shop-app/2.1", "shop-app/2.2", "Shop-App/3.0"]
        .iter()
        .enumerate()
    {
        obs(
            &mut t,
            ExchangeBuilder::new().bearer("T").ua(ua).at(i as f64),
        );
    }
    assert_eq!(reasons(&mut t, 5.0), vec![]);
}

fn basic(user: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:pw"))
}

/// The views across credentials listed by the table, with their reasons.
fn views(t: &mut SessionTable, now: f64) -> Vec<(String, HealthState, Vec<Reason>)> {
    t.score(at(now));
    t.list(&ListQuery::default())
        .into_iter()
        .filter(|s| s.kind == "network" || s.kind == "route")
        .map(|s| (s.id, s.state, s.reasons))
        .collect()
}

#[test]
fn stuffing_from_one_network_is_seen_across_credentials() {
    let mut t = table();
    for i in 0..60 {
        obs(
            &mut t,
            ExchangeBuilder::new()
                .header(
                    "authorization",
                    &format!("Basic {}", basic(&format!("user{i}"))),
                )
                .method("POST")
                .path("/login")
                .status(401)
                .client("10.9.8.7:1000")
                .at(f64::from(i) * 0.2),
        );
    }
    let v = views(&mut t, 15.0);
    let net = v.iter().find(|(id, ..)| id == "net:10.9.8.0/24").unwrap();
    assert_eq!(net.1, HealthState::Unhealthy, "{v:?}");
    assert_eq!(net.2, vec![Reason::CredentialStuffing]);
    // Each credential alone failed once: its own session says nothing.
    let one = t
        .list(&ListQuery::default())
        .into_iter()
        .find(|s| s.kind == "basic")
        .unwrap();
    assert_eq!(one.state, HealthState::Healthy);
}

#[test]
fn many_users_behind_one_address_stay_healthy() {
    let mut t = table();
    let ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    for u in 0..30 {
        for (j, p) in ["/account", "/items/17", "/items/42", "/orders", "/items/99"]
            .iter()
            .enumerate()
        {
            obs(
                &mut t,
                ExchangeBuilder::new()
                    .bearer(&format!("user-token-{u}"))
                    .ua(ua)
                    .path(p)
                    .client("10.1.2.3:4000")
                    .at(f64::from(u) + j as f64 * 0.1),
            );
        }
        // One user mistypes a password once.
        if u == 3 {
            obs(
                &mut t,
                ExchangeBuilder::new()
                    .bearer("stale-token")
                    .status(401)
                    .client("10.1.2.3:4000")
                    .at(f64::from(u)),
            );
        }
    }
    let v = views(&mut t, 40.0);
    assert!(!v.is_empty());
    assert!(
        v.iter()
            .all(|(_, st, r)| *st == HealthState::Healthy && r.is_empty()),
        "{v:?}"
    );
}

#[test]
fn rotating_tokens_walking_ids_are_seen_across_credentials() {
    let mut t = table();
    let mut id = 5000;
    for tok in 0..40 {
        for _ in 0..3 {
            obs(
                &mut t,
                ExchangeBuilder::new()
                    .bearer(&format!("fresh-{tok}"))
                    .ua("python-requests/2.31")
                    .path(&format!("/items/{id}"))
                    .client("10.7.7.7:1000")
                    .at(f64::from(tok) * 0.3),
            );
            id += 1;
        }
    }
    let v = views(&mut t, 15.0);
    let net = v.iter().find(|(id, ..)| id == "net:10.7.7.0/24").unwrap();
    assert_eq!(net.2, vec![Reason::TokenRotation], "{v:?}");
    assert_eq!(net.1, HealthState::Unhealthy);
}

#[test]
fn spraying_over_several_networks_is_seen_on_the_route() {
    let mut t = table();
    for n in 0..3 {
        for u in 0..10 {
            obs(
                &mut t,
                ExchangeBuilder::new()
                    .header(
                        "authorization",
                        &format!("Basic {}", basic(&format!("u{n}-{u}"))),
                    )
                    .method("POST")
                    .path("/login")
                    .status(401)
                    .client(&format!("10.{n}.0.9:1000"))
                    .at(f64::from(n * 10 + u)),
            );
        }
    }
    let v = views(&mut t, 40.0);
    let route = v.iter().find(|(id, ..)| id == "route:POST /login").unwrap();
    assert_eq!(route.2, vec![Reason::PasswordSpraying], "{v:?}");
    // No single network saw enough to call it stuffing.
    assert!(v
        .iter()
        .filter(|(id, ..)| id.starts_with("net:"))
        .all(|(_, st, _)| *st == HealthState::Healthy));
}

#[test]
fn plaintext_from_trusted_networks_is_a_finding_not_a_signal() {
    let mut t = table();
    obs(
        &mut t,
        ExchangeBuilder::new()
            .bearer("T")
            .tls(false)
            .client("10.0.0.5:1")
            .header("host", "api.internal"),
    );
    assert_eq!(reasons(&mut t, 1.0), vec![]);
    let f = t.findings().list();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].host, "api.internal");
    assert_eq!((f[0].requests, f[0].untrusted_requests), (1, 0));
}

/// Five sessions doing the route's usual 2 database calls per request, and one doing
/// `heavy`: the sessions flagged `downstream_heavy`.
fn downstream_flagged(heavy: u64) -> Vec<u64> {
    let mut t = table();
    t.set_downstream(crate::downstream::DownstreamConfig::default());
    for i in 0..5 {
        for r in 0..4 {
            let b = ExchangeBuilder::new()
                .bearer(&format!("LIGHT-TOKEN-{i}"))
                .path(&format!("/items/{r}"))
                .at(f64::from(r) + f64::from(i) / 10.0)
                .downstream(2, 0);
            obs(&mut t, b);
        }
    }
    for r in 0..4 {
        let b = ExchangeBuilder::new()
            .bearer("HEAVY-TOKEN")
            .path(&format!("/items/{r}"))
            .at(5.0 + f64::from(r))
            .downstream(heavy, 0);
        obs(&mut t, b);
    }
    t.score(at(10.0));
    let q = ListQuery {
        kind: Some("bearer".into()),
        ..Default::default()
    };
    t.list(&q)
        .iter()
        .filter(|s| s.reasons.contains(&Reason::DownstreamHeavy))
        .map(|s| s.requests)
        .collect()
}

#[test]
fn downstream_heavy() {
    // 51 calls a request where the route's others make 2: flagged, once it made 3.
    assert_eq!(downstream_flagged(51), [4]);
    // 18 (9x): a near miss.
    assert!(downstream_flagged(18).is_empty());
    assert!(downstream_flagged(2).is_empty());
}

#[test]
fn downstream_heavy_needs_a_baseline() {
    // Alone on its route, a session's work is its own baseline: nothing to compare.
    let mut t = table();
    t.set_downstream(crate::downstream::DownstreamConfig::default());
    for r in 0..6 {
        obs(&mut t, tok().at(f64::from(r)).downstream(100, 0));
    }
    assert!(!reasons(&mut t, 10.0).contains(&Reason::DownstreamHeavy));
}

#[test]
fn db_auth_errors() {
    let mut t = table();
    t.set_downstream(crate::downstream::DownstreamConfig::default());
    obs(&mut t, tok().downstream(2, 0));
    assert!(!reasons(&mut t, 1.0).contains(&Reason::DbAuthErrors));
    obs(&mut t, tok().at(2.0).downstream(1, 1));
    assert!(reasons(&mut t, 3.0).contains(&Reason::DbAuthErrors));
    // Without downstream capture the work is not judged.
    let mut t = table();
    obs(&mut t, tok().downstream(1, 1));
    assert!(!reasons(&mut t, 1.0).contains(&Reason::DbAuthErrors));
}
