use super::*;
use crate::{
    identity::{jwt::make_token, JwtError},
    score::HealthState,
    session::{
        testutil::{at, ExchangeBuilder},
        view::ExpState,
    },
};

/// Per-credential (and anonymous) sessions only, without the views across credentials.
fn credential_sessions(t: &SessionTable, q: &ListQuery) -> Vec<SessionSummary> {
    t.list(q)
        .into_iter()
        .filter(|s| s.kind != "network" && s.kind != "route")
        .collect()
}

fn table_with(f: impl FnOnce(&mut SessionTableConfig)) -> SessionTable {
    let mut cfg = SessionTableConfig::default();
    f(&mut cfg);
    SessionTable::new(cfg, FingerprintKey::random().unwrap())
}

fn table() -> SessionTable {
    table_with(|_| {})
}

/// Observe at the exchange's own start time.
fn obs(t: &mut SessionTable, b: ExchangeBuilder) {
    let ex = b.build();
    t.observe(&ex, ex.started_at);
}

fn only_id(t: &SessionTable) -> String {
    let l = t.list(&ListQuery::default());
    assert_eq!(l.len(), 1, "{l:?}");
    l[0].id.clone()
}

#[test]
fn one_session_per_fingerprint() {
    let mut t = table();
    obs(&mut t, ExchangeBuilder::new().bearer("A1"));
    obs(
        &mut t,
        ExchangeBuilder::new()
            .bearer("A1")
            .client("198.51.100.9:1")
            .at(1.0),
    );
    obs(&mut t, ExchangeBuilder::new().bearer("B1").at(2.0));
    assert_eq!(t.len(), 2);
    let l = credential_sessions(&t, &ListQuery::default());
    let a = l.iter().find(|s| s.requests == 2).unwrap();
    assert!(a.id.starts_with("tok_"));
    assert_eq!(a.kind, "bearer");
    assert_eq!(a.fingerprint.as_ref().unwrap().as_str(), a.id);
    assert_eq!(a.networks, 2);
    assert_eq!(t.counters().authenticated, 3);
    assert_eq!(t.counters().sessions_created, 2);
}

#[test]
fn anonymous_grouped_by_network_and_agent_family() {
    let mut t = table();
    obs(
        &mut t,
        ExchangeBuilder::new()
            .ua("curl/8.5.0")
            .client("192.0.2.10:1"),
    );
    // Same /24, same family (other minor version): same session.
    obs(
        &mut t,
        ExchangeBuilder::new()
            .ua("curl/8.4.0")
            .client("192.0.2.99:2"),
    );
    // Other network or other family: other sessions.
    obs(
        &mut t,
        ExchangeBuilder::new()
            .ua("curl/8.5.0")
            .client("192.0.3.10:1"),
    );
    obs(
        &mut t,
        ExchangeBuilder::new()
            .ua("python-requests/2.31")
            .client("192.0.2.10:1"),
    );
    assert_eq!(t.len(), 3);
    let l = t.list(&ListQuery::default());
    assert!(l
        .iter()
        .all(|s| s.id.starts_with("anon_") && s.kind == "anonymous"));
    assert!(l.iter().any(|s| s.requests == 2));
}

#[test]
fn inbound_and_outbound_kept_apart() {
    // Loopback: the client process and the server process are both traced.
    let mut t = table();
    let tok = "LOOPBACK-TOKEN";
    for (i, role) in [Role::Server, Role::Client].into_iter().enumerate() {
        obs(
            &mut t,
            ExchangeBuilder::new()
                .bearer(tok)
                .role(role)
                .tls(false)
                .client("127.0.0.1:40000")
                .server("127.0.0.1:8080")
                .at(i as f64 * 0.001),
        );
    }
    assert_eq!(t.len(), 2);
    let inbound = t.list(&ListQuery {
        direction: Some(Direction::Inbound),
        ..ListQuery::default()
    });
    let outbound = t.list(&ListQuery {
        direction: Some(Direction::Outbound),
        ..ListQuery::default()
    });
    assert_eq!(inbound.len(), 1);
    assert_eq!(inbound[0].requests, 1);
    assert_eq!(outbound.len(), 1);
    assert_eq!(
        outbound[0].id,
        format!("{OUTBOUND_PREFIX}{}", inbound[0].id)
    );
    // Loopback plaintext is not a plaintext credential.
    t.score(at(1.0));
    assert_eq!(t.list(&ListQuery::default())[0].score, 100);

    let mut t = table_with(|c| c.sessions.track_outbound = false);
    obs(
        &mut t,
        ExchangeBuilder::new().bearer(tok).role(Role::Client),
    );
    assert!(t.is_empty());
}

#[test]
fn dimensions_recorded() {
    let mut t = table();
    let b = || ExchangeBuilder::new().header("x-api-key", "KEY-DIMS");
    obs(
        &mut t,
        b().ua("curl/8.5.0").path("/users/42/orders").latency_ms(10),
    );
    obs(
        &mut t,
        b().ua("Go-http-client/1.1")
            .path("/users/43/orders")
            .status(404)
            .tls(false)
            .client("[2001:db8:aa:bb::1:7]:443")
            .at(3600.0)
            .latency_ms(30),
    );
    obs(
        &mut t,
        b().method("post").path("/users").status(201).at(3601.0),
    );
    let id = only_id(&t);
    let d = t.get(&id).unwrap();
    assert_eq!(d.summary.kind, "api_key");
    assert_eq!(d.summary.requests, 3);
    let nets: Vec<&str> = d.networks.iter().map(|n| n.value.as_str()).collect();
    assert_eq!(nets, vec!["203.0.113.0/24", "2001:db8:aa::/48"]);
    let agents: Vec<&str> = d.agents.iter().map(|n| n.value.as_str()).collect();
    assert_eq!(agents, vec!["Go-http-client/1", "curl/8", "none"]);
    let routes: Vec<(&str, u64)> = d
        .routes
        .iter()
        .map(|r| (r.route.as_str(), r.requests))
        .collect();
    assert_eq!(
        routes,
        vec![("GET /users/{id}/orders", 2), ("POST /users", 1)]
    );
    assert_eq!(d.routes[0].status.c4xx, 1);
    // The first id fell out of the window an hour ago.
    assert_eq!(d.routes[0].distinct_ids, 1);
    assert_eq!((d.status.c2xx, d.status.c4xx), (2, 1));
    assert_eq!(d.response_bytes, 300);
    assert!((d.latency_max_ms - 30.0).abs() < 1e-9);
    assert!((d.latency_mean_ms - 15.0).abs() < 1e-9);
    // T0 is 22:13:20 UTC; +1 h is 23:xx.
    assert_eq!(d.active_hours, vec![22, 23]);
    assert_eq!(d.processes, vec!["api-server"]);
    assert_eq!((d.tls_requests, d.plaintext_requests), (2, 1));
    assert_eq!(d.credential_locations.len(), 1);
    assert_eq!(d.credential_locations[0].name, "x-api-key");
}

#[test]
fn client_ip_modes() {
    for (mode, want) in [
        (ClientIpMode::Full, "203.0.113.7/32"),
        (ClientIpMode::Drop, "redacted"),
        (ClientIpMode::Truncate, "203.0.113.0/24"),
    ] {
        let mut t = table_with(|c| c.sessions.client_ip = mode);
        obs(&mut t, ExchangeBuilder::new().bearer("T"));
        let d = t.get(&only_id(&t)).unwrap();
        assert_eq!(d.networks[0].value, want);
        let json = serde_json::to_string(&d).unwrap();
        if mode != ClientIpMode::Full {
            assert!(!json.contains("203.0.113.7"), "{json}");
        }
    }
}

#[test]
fn jwt_facts_kept() {
    let mut t = table();
    let tok = make_token(
        r#"{"alg":"RS256","typ":"JWT"}"#,
        &format!(
            r#"{{"sub":"u1","exp":{},"iss":"idp","aud":"api"}}"#,
            testutil::T0 + 60
        ),
    );
    obs(&mut t, ExchangeBuilder::new().bearer(&tok));
    let d = t.get(&only_id(&t)).unwrap();
    let j = d.jwt.unwrap();
    assert_eq!(j.claims.alg.as_deref(), Some("RS256"));
    assert_eq!(j.exp_state, ExpState::Valid);
    obs(
        &mut t,
        ExchangeBuilder::new().bearer(&tok).at(120.0).status(401),
    );
    assert_eq!(
        t.get(&only_id(&t)).unwrap().jwt.unwrap().exp_state,
        ExpState::Expired
    );
    let mut t = table();
    obs(&mut t, ExchangeBuilder::new().bearer("a.b.c"));
    assert_eq!(
        t.get(&only_id(&t)).unwrap().jwt_error,
        Some(JwtError::BadBase64)
    );
}

#[test]
fn idle_ttl_expiry() {
    let mut t = table_with(|c| c.sessions.idle_ttl_secs = 60);
    obs(&mut t, ExchangeBuilder::new().bearer("OLD"));
    obs(&mut t, ExchangeBuilder::new().bearer("NEW").at(50.0));
    assert_eq!(t.expire(at(59.0)), 0);
    assert_eq!(t.expire(at(61.0)), 1);
    assert_eq!(t.len(), 1);
    assert_eq!(t.counters().evicted_idle, 1);
    assert_eq!(t.expire(at(200.0)), 1);
    assert!(t.is_empty());
    assert_eq!(t.counters().evictions(), 2);
}

#[test]
fn max_size_evicts_oldest_idle() {
    let mut t = table_with(|c| c.sessions.max_sessions = 3);
    for (i, tok) in ["S0", "S1", "S2"].iter().enumerate() {
        obs(&mut t, ExchangeBuilder::new().bearer(tok).at(i as f64));
    }
    // S0 used again: S1 is now the least recently used.
    obs(&mut t, ExchangeBuilder::new().bearer("S0").at(10.0));
    obs(&mut t, ExchangeBuilder::new().bearer("S3").at(11.0));
    assert_eq!(t.len(), 3);
    assert_eq!(t.counters().evicted_capacity, 1);
    let reqs: Vec<u64> = credential_sessions(&t, &ListQuery::default())
        .iter()
        .map(|s| s.requests)
        .collect();
    assert_eq!(reqs.iter().sum::<u64>(), 4, "S0 (2), S2, S3 remain");
}

#[test]
fn per_session_maps_bounded() {
    let mut t = table_with(|c| {
        c.sessions.max_networks = 4;
        c.sessions.max_agents = 2;
        c.sessions.max_routes = 3;
    });
    for i in 0..10 {
        obs(
            &mut t,
            ExchangeBuilder::new()
                .bearer("BOUNDED")
                .client(&format!("10.0.{i}.1:1"))
                .ua(["curl/8", "Wget/1", "okhttp/4"][i % 3])
                .path(&format!("/r{i}"))
                .at(i as f64),
        );
    }
    let d = t.get(&only_id(&t)).unwrap();
    assert_eq!(d.networks.len(), 4);
    assert_eq!(d.agents.len(), 2);
    assert_eq!(d.routes.len(), 3);
    assert_eq!(d.dropped.networks, 6);
    assert_eq!(d.dropped.routes, 7);
    // The most recent values are kept.
    assert!(d.networks.iter().any(|n| n.value == "10.0.9.0/24"));
    assert!(d.routes.iter().any(|r| r.route == "GET /r9"));
}

#[test]
fn freeze_and_unfreeze() {
    let mut t = table();
    obs(&mut t, ExchangeBuilder::new().bearer("FROZEN-TOK"));
    let id = only_id(&t);
    assert_eq!(t.freeze("nonsense"), Err(FreezeError::Invalid));
    assert_eq!(t.freeze("anon_5f2c9a1e0b7d"), Err(FreezeError::Invalid));
    assert_eq!(t.freeze(&id), Ok(true));
    assert_eq!(t.freeze(&id), Ok(false));
    assert_eq!(t.frozen().len(), 1);
    // Freezing alone is not a signal; a later use is.
    t.score(at(1.0));
    let s = &t.list(&ListQuery::default())[0];
    assert!(s.frozen);
    assert_eq!(s.state, HealthState::Healthy);
    obs(&mut t, ExchangeBuilder::new().bearer("FROZEN-TOK").at(2.0));
    let ch = t.score(at(3.0));
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].to, HealthState::Unhealthy);
    assert_eq!(ch[0].reasons, vec![Reason::FrozenCredential]);
    assert_eq!(t.counters().frozen_uses, 1);
    assert_eq!(t.get(&id).unwrap().frozen_uses, 1);
    // Still unhealthy long after (not windowed) ...
    assert!(t.score(at(2000.0)).is_empty());
    // ... until unfrozen.
    assert_eq!(t.unfreeze(&id), Ok(true));
    assert_eq!(t.unfreeze(&id), Ok(false));
    let ch = t.score(at(2001.0));
    assert_eq!(ch[0].to, HealthState::Healthy);
    // A credential frozen before its session exists.
    let mut t = table();
    obs(&mut t, ExchangeBuilder::new().bearer("LATER"));
    let id = only_id(&t);
    t.purge();
    t.freeze(&id).unwrap();
    obs(&mut t, ExchangeBuilder::new().bearer("LATER").at(5.0));
    t.score(at(6.0));
    assert_eq!(
        t.list(&ListQuery::default())[0].reasons,
        vec![Reason::FrozenCredential]
    );
    // Frozen outbound use counts too.
    obs(
        &mut t,
        ExchangeBuilder::new()
            .bearer("LATER")
            .role(Role::Client)
            .at(7.0),
    );
    t.score(at(8.0));
    assert!(t
        .list(&ListQuery::default())
        .iter()
        .all(|s| s.state == HealthState::Unhealthy));
}

#[test]
fn freeze_by_jwt_subject() {
    let mut t = table();
    let tok1 = make_token(r#"{"alg":"HS256"}"#, r#"{"sub":"user-9","jti":"1"}"#);
    let tok2 = make_token(r#"{"alg":"HS256"}"#, r#"{"sub":"user-9","jti":"2"}"#);
    obs(&mut t, ExchangeBuilder::new().bearer(&tok1));
    let sub = t
        .get(&only_id(&t))
        .unwrap()
        .jwt
        .unwrap()
        .claims
        .sub
        .unwrap();
    assert!(t.freeze(sub.as_str()).unwrap());
    // Another token of the same subject.
    obs(&mut t, ExchangeBuilder::new().bearer(&tok2).at(1.0));
    t.score(at(2.0));
    let l = credential_sessions(&t, &ListQuery::default());
    assert_eq!(l.len(), 2);
    assert_eq!(l[0].reasons, vec![Reason::FrozenCredential]);
    assert_eq!(l[1].state, HealthState::Healthy);
}

#[test]
fn purge_and_rotation() {
    let mut t = table();
    obs(&mut t, ExchangeBuilder::new().bearer("ROT"));
    let before = only_id(&t);
    t.freeze(&before).unwrap();
    // A freeze of a fingerprint with no live session is not durable: dropped.
    t.freeze("tok_0123456789ab").unwrap();
    assert_eq!(t.rotate_key().unwrap(), 1);
    // The live session's freeze is durable: kept, its fingerprint unknown until next use.
    assert!(t.is_empty());
    let f = t.frozen();
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].durable && f[0].fingerprint.is_none() && f[0].id.starts_with("frz_"));
    assert_eq!(t.key_generation(), 1);
    obs(&mut t, ExchangeBuilder::new().bearer("ROT").at(1.0));
    assert_ne!(only_id(&t), before);
    assert_eq!(
        t.frozen()[0].fingerprint.as_ref().map(|f| f.to_string()),
        Some(only_id(&t))
    );
    assert!(t.list(&ListQuery::default())[0].frozen);
    assert_eq!(t.counters().frozen_uses, 1);
    assert_eq!(t.purge(), 1);
    assert_eq!(t.counters().purged, 2);
}

#[test]
fn list_filter_sort_limit() {
    let mut t = table();
    obs(&mut t, ExchangeBuilder::new().bearer("GOOD"));
    obs(&mut t, ExchangeBuilder::new().query("api_key=BAD").at(1.0));
    obs(
        &mut t,
        ExchangeBuilder::new()
            .query("api_key=WORSE")
            .tls(false)
            .at(2.0),
    );
    t.score(at(3.0));
    let l = credential_sessions(&t, &ListQuery::default());
    let scores: Vec<u8> = l.iter().map(|s| s.score).collect();
    assert_eq!(scores, vec![50, 75, 100]);
    let l = t.list(&ListQuery {
        state: Some(HealthState::Suspicious),
        limit: Some(1),
        ..ListQuery::default()
    });
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].score, 50);
    assert!(t
        .list(&ListQuery {
            direction: Some(Direction::Outbound),
            ..ListQuery::default()
        })
        .is_empty());
    assert!(t.get("tok_000000000000").is_none());
    let q: ListQuery = serde_json::from_str(r#"{"state":"unhealthy","limit":5}"#).unwrap();
    assert_eq!(q.state, Some(HealthState::Unhealthy));
}

#[test]
fn config_tables() {
    let c: SessionConfig = toml::from_str(
        r#"
        idle_ttl_secs = 60
        client_ip = "drop"
        "#,
    )
    .unwrap();
    assert_eq!(c.idle_ttl_secs, 60);
    assert_eq!(c.client_ip, ClientIpMode::Drop);
    assert_eq!(c.max_sessions, SessionConfig::default().max_sessions);
    assert!(toml::from_str::<SessionConfig>("bogus = 1").is_err());
    assert!(toml::from_str::<SessionConfig>(r#"client_ip = "half""#).is_err());
    assert!(SessionConfig::default().validate().is_ok());
    let bad = SessionConfig {
        ipv4_prefix: 33,
        ..SessionConfig::default()
    };
    assert_eq!(bad.validate().unwrap_err().0, "sessions.ipv4_prefix");
    let s: ScoreConfig = toml::from_str(
        r#"
        rate_limit = 10.0
        [weights]
        credential_in_query = 0
        "#,
    )
    .unwrap();
    assert_eq!(s.rate_limit, 10.0);
    assert_eq!(s.weights.credential_in_query, 0);
    assert_eq!(s.weights.frozen_credential, 100);
    assert!(toml::from_str::<ScoreConfig>("[weights]\nnope = 1").is_err());
    assert!(ScoreConfig::default().validate().is_ok());
    // The whole default config round-trips through TOML.
    let text = toml::to_string(&SessionConfig::default()).unwrap();
    assert_eq!(
        toml::from_str::<SessionConfig>(&text).unwrap(),
        SessionConfig::default()
    );
    let text = toml::to_string(&ScoreConfig::default()).unwrap();
    assert_eq!(
        toml::from_str::<ScoreConfig>(&text).unwrap(),
        ScoreConfig::default()
    );
}

/// Canary secrets planted in every credential position never show up in any view.
#[test]
fn views_never_contain_raw_credentials() {
    use base64::{engine::general_purpose::STANDARD, Engine as _};
    let canaries = [
        "CANARYbearer0001",
        "CANARYapikey0002",
        "CANARYquery0003",
        "CANARYcookie0004",
        "CANARYuser0005",
        "CANARYpass0006",
        "CANARYsub0007",
        "CANARYjti0008",
        "CANARYopaque0009",
    ];
    let jwt = make_token(
        r#"{"alg":"none"}"#,
        r#"{"sub":"CANARYsub0007","jti":"CANARYjti0008","exp":1}"#,
    );
    let basic = STANDARD.encode("CANARYuser0005:CANARYpass0006");
    let mut t = table();
    let exchanges = [
        ExchangeBuilder::new().bearer(&jwt),
        ExchangeBuilder::new().bearer("CANARYbearer0001"),
        ExchangeBuilder::new().header("x-api-key", "CANARYapikey0002"),
        ExchangeBuilder::new().query("api_key=CANARYquery0003&token=CANARYopaque0009"),
        ExchangeBuilder::new().header("cookie", "a=b; sessionid=CANARYcookie0004"),
        ExchangeBuilder::new().header("authorization", &format!("Basic {basic}")),
        ExchangeBuilder::new()
            .bearer("CANARYbearer0001")
            .role(Role::Client)
            .server("198.51.100.77:80")
            .tls(false),
    ];
    for (i, b) in exchanges.into_iter().enumerate() {
        obs(
            &mut t,
            b.tls(i % 2 == 0)
                .client("198.51.100.23:5555")
                .path("/accounts/CANARYpathsegment0010x/x")
                .at(i as f64),
        );
    }
    let changes = t.score(at(10.0));
    assert!(!changes.is_empty());
    let mut printed = String::new();
    printed += &format!(
        "{t:?}\n{changes:?}\n{}\n",
        serde_json::to_string(&changes).unwrap()
    );
    printed += &format!(
        "{:?}\n{}\n",
        t.counters(),
        serde_json::to_string(t.counters()).unwrap()
    );
    let list = t.list(&ListQuery::default());
    printed += &format!("{list:?}\n{}\n", serde_json::to_string(&list).unwrap());
    for s in &list {
        let d = t.get(&s.id).unwrap();
        printed += &format!("{d:?}\n{}\n", serde_json::to_string(&d).unwrap());
    }
    for c in canaries
        .iter()
        .chain(&[basic.as_str(), jwt.as_str(), "CANARYpathsegment0010x"])
    {
        assert!(!printed.contains(c), "{c} leaked");
    }
    assert!(!printed.contains("198.51.100.23"), "full client IP leaked");
    assert!(!printed.contains("198.51.100.77"), "full server IP leaked");
    assert!(printed.contains("198.51.100.0/24"));
    assert!(printed.contains("jwt_alg_none"));
}

#[test]
fn table_can_be_shared_between_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SessionTable>();
    send_sync::<metrics::SessionMetrics>();
}

#[test]
fn capture_completeness_counts_what_was_lost() {
    let mut t = table();
    for i in 0..8 {
        let mut ex = ExchangeBuilder::new()
            .bearer("lossy-token-aaaaaaaaaa")
            .at(f64::from(i))
            .build();
        // Two exchanges of this session's connection were lost along the way.
        ex.lost_before = u32::from(i == 3 || i == 6);
        t.observe(&ex, ex.started_at);
    }
    obs(
        &mut t,
        ExchangeBuilder::new()
            .bearer("whole-token-bbbbbbbbbb")
            .at(1.0),
    );
    let mut l = credential_sessions(&t, &ListQuery::default());
    l.sort_by(|a, b| a.capture_completeness.total_cmp(&b.capture_completeness));
    assert_eq!((l[0].requests, l[0].lost_exchanges), (8, 2));
    assert!((l[0].capture_completeness - 0.8).abs() < 1e-9);
    assert_eq!((l[1].lost_exchanges, l[1].capture_completeness), (0, 1.0));
    let (least, n) = t.least_complete(5);
    assert_eq!(n, 1);
    assert_eq!(least, vec![(l[0].id.clone(), l[0].capture_completeness)]);
}
