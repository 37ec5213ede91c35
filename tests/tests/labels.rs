//! Route labels are safe: paths that carry personal data (email addresses, user names,
//! phone numbers, percent-encoded values) or credentials never reach a metric label or
//! the exchange stream, configured route patterns label their paths, and the privacy off
//! switch cannot be walked around by spelling a path differently.

use std::time::Duration;

use e2e::*;

/// Requests and the route each must be counted under (`None`: under the off switch).
const REQUESTS: &[(&str, Option<&str>)] = &[
    (
        "/users/alice@example.com/orders",
        Some("/users/{id}/orders"),
    ),
    ("/users/jsmith", Some("/users/{id}")),
    ("/lookup/john.doe", Some("/lookup/{id}")),
    ("/call/+1-202-555-0143", Some("/call/{id}")),
    ("/call/202-555-0199", Some("/call/{id}")),
    ("/search/J%C3%B3zef%20Nowak", Some("/search/{id}")),
    ("/n/%61%6c%69%63%65", Some("/n/{id}")),
    ("/cb?sk_live_SECRETTOKEN", Some("/cb")),
    ("/items/42?api_key=SECRETKEY&page=2", Some("/items/{id}")),
    ("/shop/red-shirt/reviews", Some("/shop/{slug}/reviews")),
    ("/%69nternal/hidden1", None),
    ("//internal/hidden2", None),
    ("/public/../internal/hidden3", None),
    ("/internal;v=1/hidden4", None),
    ("/INTERNAL/hidden5", None),
];

/// What must never be printed or exported.
const SECRETS: &[&str] = &[
    "alice",
    "jsmith",
    "john",
    "555",
    "Nowak",
    "%C3",
    "%61",
    "SECRETTOKEN",
    "SECRETKEY",
    "red-shirt",
    "hidden",
];

#[test]
fn hostile_paths_never_reach_labels_or_the_stream() {
    if !prerequisites() {
        return;
    }
    let dir = scratch_dir("labels");
    let config = dir.join("observer.toml");
    std::fs::write(
        &config,
        "[metrics]\nroutes = [\"/shop/{slug}/reviews\"]\n\
         [privacy]\nignore_routes = [\"/internal/\"]\nignore_routes_case_insensitive = true\n",
    )
    .unwrap();
    let agent = Agent::start_default_stream(&["--config", config.to_str().unwrap()]).unwrap();
    let port = free_port();
    let _server = python_api_server("127.0.0.1", port).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut args = vec!["--path-as-is".to_string()];
    for (path, _) in REQUESTS {
        args.extend(["-o".into(), "/dev/null".into(), format!("{base}{path}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(&args).unwrap();

    let seen: Vec<&str> = REQUESTS.iter().filter_map(|(_, r)| *r).collect();
    let ex = agent.exchanges_for_port(port, 2 * seen.len());
    let server: Vec<_> = ex.iter().filter(|e| e["role"] == "server").collect();
    let mut routes: Vec<&str> = server.iter().filter_map(|e| e["route"].as_str()).collect();
    routes.sort();
    let mut expected = seen.clone();
    expected.sort();
    assert_eq!(routes, expected, "{server:#?}");
    // curl's side of each exchange is templated alike.
    let mut client: Vec<&str> = ex
        .iter()
        .filter(|e| e["role"] == "client")
        .filter_map(|e| e["route"].as_str())
        .collect();
    client.sort();
    assert_eq!(client, expected);
    for e in &ex {
        assert!(e.get("path").is_none(), "raw path printed by default: {e}");
    }
    let cb = server.iter().find(|e| e["route"] == "/cb").unwrap();
    assert_eq!(cb["query_keys"], serde_json::json!([]), "{cb}");
    let items = server.iter().find(|e| e["route"] == "/items/{id}").unwrap();
    assert_eq!(
        items["query_keys"],
        serde_json::json!(["api_key", "page"]),
        "{items}"
    );

    // The off switch held for every spelling (and only the off switch dropped them).
    let ignored = wait_for(Duration::from_secs(5), || {
        let m = agent.metrics();
        let n = metric_total(&m, "api_observer_privacy_ignored_total");
        (n >= 10.0).then_some(n)
    });
    // Each ignored request is two exchanges: the server's and curl's.
    assert_eq!(ignored, Some(10.0));

    let metrics = agent.metrics();
    let stream = std::fs::read_to_string(agent.dir.join("exchanges.jsonl")).unwrap();
    for secret in SECRETS {
        // Names and labels only: a value may hold the digits 555.
        let leaked: Vec<&str> = metrics
            .lines()
            .filter(|l| {
                l.rsplit_once(' ')
                    .is_some_and(|(series, _)| series.contains(secret))
            })
            .collect();
        assert!(leaked.is_empty(), "{secret} in the metrics: {leaked:?}");
        // Strings only, as for the metrics: a time or a pid may hold the digits 555.
        let strings: Vec<String> = stream
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .flat_map(|v| json_strings(&v))
            .collect();
        assert!(
            strings.iter().all(|t| !t.contains(secret)),
            "{secret} in the exchange stream"
        );
    }
    // Each route counted once, under the OpenTelemetry names.
    for route in seen {
        let count = format!("http_route=\"{route}\"");
        let n: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("http_server_request_duration_seconds_count{"))
            .filter(|l| l.contains(&count) && l.contains(&format!("server_port=\"{port}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        let want = REQUESTS.iter().filter(|(_, r)| *r == Some(route)).count() as f64;
        assert_eq!(n, want, "{route}:\n{metrics}");
    }
}

/// Every string in a JSON value (object keys included).
fn json_strings(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a.iter().flat_map(json_strings).collect(),
        serde_json::Value::Object(o) => o
            .iter()
            .flat_map(|(k, v)| std::iter::once(k.clone()).chain(json_strings(v)))
            .collect(),
        _ => Vec::new(),
    }
}
