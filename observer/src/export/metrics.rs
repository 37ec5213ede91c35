//! Request metrics: the latency of exchanges under OpenTelemetry's semantic-convention
//! names (`http_server_request_duration_seconds`, `http_client_request_duration_seconds`
//! with `http_request_method`, `http_response_status_code`, `http_route`, ...), and the
//! older `api_observer_http_*` names when `[metrics] naming` asks for them.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use serde::{Deserialize, Serialize};

use crate::{
    exchange::{Exchange, Role, UNKNOWN_ADDR},
    export::routes::{RouteLabels, OTHER},
    http::{ParseIssue, Protocol},
    route::RoutePatterns,
    workload::Workload,
};

/// Most label sets whose metrics are kept at hand (beyond it they are looked up anew).
const MAX_CHILDREN: usize = 4096;
/// Most distinct server addresses given their own label value; later ones are `other`.
const MAX_ADDRESSES: usize = 256;

/// Foldhash, seeded per map: cheap for the short keys hashed on every exchange.
type Fast = foldhash::fast::RandomState;

/// Bucket bounds of the duration histograms, seconds: the semantic conventions' advice
/// with three finer buckets below 5 ms (most APIs on one host answer that fast).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
    7.5, 10.0,
];

/// `[metrics]`: names and route labels of the HTTP metrics.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `otel` (OpenTelemetry semantic-convention names), `legacy` (the older
    /// `api_observer_http_*` names) or `both`.
    pub naming: String,
    /// Route patterns (`/users/{user_id}/orders`, `/files/{path...}`): a path that
    /// matches one is labelled with the pattern.
    pub routes: Vec<String>,
    /// Most routes with a label of their own; the rest are `other`.
    pub max_routes: usize,
    /// Seconds of traffic over which the busiest routes win the places.
    pub route_window_secs: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            naming: "otel".into(),
            routes: Vec::new(),
            max_routes: 200,
            route_window_secs: 300,
        }
    }
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !matches!(self.naming.as_str(), "otel" | "legacy" | "both") {
            return Err((
                "metrics.naming".into(),
                format!("{:?} is not otel, legacy or both", self.naming),
            ));
        }
        RoutePatterns::new(&self.routes).map_err(|why| ("metrics.routes".into(), why))?;
        if !(1..=10_000).contains(&self.max_routes) {
            return Err((
                "metrics.max_routes".into(),
                format!("{} is outside 1..=10000", self.max_routes),
            ));
        }
        if self.route_window_secs == 0 {
            return Err((
                "metrics.route_window_secs".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The route patterns (checked by [`validate`](Self::validate)).
    pub fn patterns(&self) -> RoutePatterns {
        RoutePatterns::new(&self.routes).unwrap_or_default()
    }

    fn otel(&self) -> bool {
        self.naming != "legacy"
    }

    fn legacy(&self) -> bool {
        self.naming != "otel"
    }
}

/// The labels of one exchange's metrics, as cheap values: the workload is 0 when it
/// names no namespace or pod (empty labels), else by address (the entry keeps that
/// workload alive, so the address names it for as long as the entry lives).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct LabelSet {
    method: &'static str,
    status: u16,
    route: u32,
    role: Role,
    tls: bool,
    http2: bool,
    /// `None`: one address too many (`other`).
    server: Option<SocketAddr>,
    workload: usize,
}

/// The metrics of one label set: the same ones `with_label_values` gives.
struct Children {
    duration: Option<Histogram>,
    legacy_requests: Option<IntCounter>,
    legacy_duration: Option<Histogram>,
    _workload: Option<Arc<Workload>>,
}

/// Which family a series belongs to (to remove it when its route loses its label).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Family {
    Server,
    Client,
    LegacyRequests,
}

/// The label values of one series, and its family.
type Series = (Family, Vec<String>);

pub struct RequestMetrics {
    /// `http_server_request_duration_seconds` (OpenTelemetry naming).
    pub server_duration: Option<HistogramVec>,
    /// `http_client_request_duration_seconds` (OpenTelemetry naming).
    pub client_duration: Option<HistogramVec>,
    /// `api_observer_http_requests_total` (legacy naming).
    pub requests: Option<IntCounterVec>,
    /// `api_observer_http_request_duration_seconds` (legacy naming).
    pub duration: Option<HistogramVec>,
    pub parse_issues: IntCounterVec,
    routes_labelled: IntGauge,
    routes_other: IntCounter,
    routes: RouteLabels,
    addresses: HashSet<SocketAddr, Fast>,
    /// The metrics of the label sets seen lately: an exchange costs one lookup.
    children: HashMap<LabelSet, Children, Fast>,
    /// The label values of every series with a route label, by route number.
    series: HashMap<u32, HashSet<Series, Fast>, Fast>,
}

/// Label names of the duration histograms (OpenTelemetry attributes, dots as
/// underscores); `route` is `http_route` for servers, `url_template` for clients.
const fn otel_labels(route: &'static str) -> [&'static str; 10] {
    [
        "http_request_method",
        "http_response_status_code",
        "error_type",
        route,
        "server_address",
        "server_port",
        "url_scheme",
        "network_protocol_version",
        "k8s_namespace_name",
        "k8s_pod_name",
    ]
}

impl RequestMetrics {
    pub fn register(registry: &Registry, config: &MetricsConfig) -> prometheus::Result<Self> {
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let vec = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
                labels,
            )?;
            registry.register(Box::new(vec.clone()))?;
            Ok::<_, prometheus::Error>(vec)
        };
        let (server_duration, client_duration) = if config.otel() {
            (
                Some(histogram(
                    "http_server_request_duration_seconds",
                    "Duration of HTTP server requests the traced processes served (OpenTelemetry http.server.request.duration): from the end of the request head to the end of the response head.",
                    &otel_labels("http_route"),
                )?),
                Some(histogram(
                    "http_client_request_duration_seconds",
                    "Duration of HTTP client requests the traced processes made (OpenTelemetry http.client.request.duration).",
                    &otel_labels("url_template"),
                )?),
            )
        } else {
            (None, None)
        };
        let (requests, duration) = if config.legacy() {
            let requests = IntCounterVec::new(
                Opts::new(
                    "api_observer_http_requests_total",
                    "HTTP exchanges seen, by method, route template, status class, role of the traced process, TLS, and (in Kubernetes) namespace and pod of the traced process.",
                ),
                &["method", "route", "status_class", "role", "tls", "namespace", "pod"],
            )?;
            registry.register(Box::new(requests.clone()))?;
            let duration = histogram(
                "api_observer_http_request_duration_seconds",
                "Time from the end of the request head to the end of the response head.",
                &["method", "status_class", "role"],
            )?;
            (Some(requests), Some(duration))
        } else {
            (None, None)
        };
        let parse_issues = IntCounterVec::new(
            Opts::new(
                "api_observer_http_parse_issues_total",
                "Bytes or messages the HTTP parsers could not use, by issue.",
            ),
            &["issue"],
        )?;
        registry.register(Box::new(parse_issues.clone()))?;
        // Every issue exists from the start so that rate() and dashboards work at once.
        for issue in ParseIssue::ALL {
            parse_issues.with_label_values(&[issue.as_str()]);
        }
        let routes_labelled = IntGauge::new(
            "api_observer_http_routes_labelled",
            "Routes that have a label of their own in the HTTP metrics (at most [metrics] max_routes).",
        )?;
        let routes_other = IntCounter::new(
            "api_observer_http_routes_other_total",
            "Exchanges counted under the route label `other` (their route had no place).",
        )?;
        registry.register(Box::new(routes_labelled.clone()))?;
        registry.register(Box::new(routes_other.clone()))?;
        Ok(Self {
            server_duration,
            client_duration,
            requests,
            duration,
            parse_issues,
            routes_labelled,
            routes_other,
            routes: RouteLabels::new(
                config.max_routes,
                Duration::from_secs(config.route_window_secs),
            ),
            addresses: HashSet::default(),
            children: HashMap::default(),
            series: HashMap::default(),
        })
    }

    /// Count one exchange; returns its route label (the one its metrics carry).
    pub fn observe(&mut self, ex: &Exchange, now: SystemTime) -> &str {
        let status = ex.outcome();
        let route = self
            .routes
            .label(&ex.route.path, ex.route.configured, status < 400, now);
        if route == OTHER {
            self.routes_other.inc();
        }
        self.routes_labelled.set(self.routes.labelled() as i64);
        let evicted = self.routes.take_evicted();
        if !evicted.is_empty() {
            self.forget_routes(&evicted);
        }
        let server = if ex.server == UNKNOWN_ADDR
            || self.addresses.contains(&ex.server)
            || self.addresses.len() < MAX_ADDRESSES && self.addresses.insert(ex.server)
        {
            Some(ex.server)
        } else {
            None
        };
        let named = ex.workload.namespace.is_some() || ex.workload.pod.is_some();
        let labels = LabelSet {
            method: ex.route.method,
            status,
            route,
            role: ex.role,
            tls: ex.tls,
            http2: ex.protocol == Protocol::Http2,
            server,
            workload: if named {
                Arc::as_ptr(&ex.workload) as usize
            } else {
                0
            },
        };
        if self.children.len() >= MAX_CHILDREN && !self.children.contains_key(&labels) {
            self.children.clear();
        }
        if !self.children.contains_key(&labels) {
            let c = self.children_of(&labels, ex);
            self.children.insert(labels, c);
        }
        let c = &self.children[&labels];
        let secs = ex.latency.as_secs_f64();
        if let Some(h) = &c.duration {
            h.observe(secs);
        }
        if let Some(n) = &c.legacy_requests {
            n.inc();
        }
        if let Some(h) = &c.legacy_duration {
            h.observe(secs);
        }
        self.routes.name(route)
    }

    /// Look up (create) the series of a label set, remembering those with a route.
    fn children_of(&mut self, l: &LabelSet, ex: &Exchange) -> Children {
        let route = self.routes.name(l.route).to_string();
        let status = l.status.to_string();
        let error = match l.role {
            Role::Server if l.status >= 500 => status.as_str(),
            Role::Client if l.status >= 400 => status.as_str(),
            _ => "",
        };
        let (address, port) = match l.server {
            Some(a) if a == UNKNOWN_ADDR => (String::new(), String::new()),
            Some(a) => (a.ip().to_string(), a.port().to_string()),
            None => ("other".to_string(), String::new()),
        };
        let namespace = ex.workload.namespace.as_deref().unwrap_or("");
        let pod = ex.workload.pod.as_deref().unwrap_or("");
        let otel_values = [
            l.method,
            &status,
            error,
            &route,
            &address,
            &port,
            if l.tls { "https" } else { "http" },
            if l.http2 { "2" } else { "1.1" },
            namespace,
            pod,
        ];
        let (family, vec) = match l.role {
            Role::Server => (Family::Server, &self.server_duration),
            Role::Client => (Family::Client, &self.client_duration),
        };
        let duration = vec.as_ref().map(|v| v.with_label_values(&otel_values));
        let class = crate::exchange::status_class(l.status);
        let role = l.role.as_str();
        let legacy_values = [
            l.method,
            route.as_str(),
            class,
            role,
            if l.tls { "true" } else { "false" },
            namespace,
            pod,
        ];
        let legacy_requests = self
            .requests
            .as_ref()
            .map(|v| v.with_label_values(&legacy_values));
        let legacy_duration = self
            .duration
            .as_ref()
            .map(|v| v.with_label_values(&[l.method, class, role]));
        if l.route != OTHER {
            let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            let series = self.series.entry(l.route).or_default();
            if duration.is_some() {
                series.insert((family, owned(&otel_values)));
            }
            if legacy_requests.is_some() {
                series.insert((Family::LegacyRequests, owned(&legacy_values)));
            }
        }
        Children {
            duration,
            legacy_requests,
            legacy_duration,
            _workload: (l.workload != 0).then(|| Arc::clone(&ex.workload)),
        }
    }

    /// Remove the series of routes that lost their label.
    fn forget_routes(&mut self, routes: &[u32]) {
        self.children.retain(|l, _| !routes.contains(&l.route));
        for route in routes {
            for (family, values) in self.series.remove(route).unwrap_or_default() {
                let values: Vec<&str> = values.iter().map(String::as_str).collect();
                let _ = match family {
                    Family::Server => self
                        .server_duration
                        .as_ref()
                        .map(|v| v.remove_label_values(&values)),
                    Family::Client => self
                        .client_duration
                        .as_ref()
                        .map(|v| v.remove_label_values(&values)),
                    Family::LegacyRequests => self
                        .requests
                        .as_ref()
                        .map(|v| v.remove_label_values(&values)),
                };
            }
        }
    }

    pub fn issue(&self, issue: ParseIssue) {
        self.parse_issues.with_label_values(&[issue.as_str()]).inc();
    }
}

/// `api_observer_build_info{version}` (always 1) and the agent's own process metrics
/// (`process_cpu_seconds_total`, `process_resident_memory_bytes`, open descriptors, ...).
pub fn register_agent_info(registry: &Registry) -> prometheus::Result<()> {
    let info = prometheus::IntGaugeVec::new(
        Opts::new(
            "api_observer_build_info",
            "The agent's version (value always 1).",
        ),
        &["version"],
    )?;
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    registry.register(Box::new(info))?;
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::session::testutil::ExchangeBuilder;

    fn both() -> MetricsConfig {
        MetricsConfig {
            naming: "both".into(),
            ..Default::default()
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    /// The exposition of a registry, as Prometheus would scrape it.
    fn exposition(registry: &Registry) -> String {
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The metrics kept at hand count what `with_label_values` would have.
    #[test]
    fn counts_by_labels() {
        let mut m = RequestMetrics::register(&Registry::new(), &both()).unwrap();
        let pod = Arc::new(Workload {
            namespace: Some("shop".into()),
            pod: Some("api-1".into()),
            ..Default::default()
        });
        let mut expected: BTreeMap<Vec<String>, u64> = BTreeMap::new();
        let mut legacy: BTreeMap<Vec<String>, u64> = BTreeMap::new();
        for i in 0..200u32 {
            let path = ["/a/1", "/b", "/c/2/d"][i as usize % 3];
            let mut ex = ExchangeBuilder::new()
                .path(path)
                .status([200, 404, 500][i as usize % 3 / 2 + i as usize % 2])
                .tls(i % 4 == 0)
                .build();
            if i % 5 == 0 {
                ex.workload = Arc::clone(&pod);
            }
            if i % 7 == 0 {
                // Another workload with the same names: the same labels.
                ex.workload = Arc::new((*pod).clone());
            }
            assert_eq!(m.observe(&ex, now()), ex.route.path);
            let status = ex.status.to_string();
            let labels: Vec<String> = [
                "GET",
                status.as_str(),
                if ex.status >= 500 {
                    status.as_str()
                } else {
                    ""
                },
                ex.route.path.as_str(),
                &ex.server.ip().to_string(),
                &ex.server.port().to_string(),
                if ex.tls { "https" } else { "http" },
                "1.1",
                ex.workload.namespace.as_deref().unwrap_or(""),
                ex.workload.pod.as_deref().unwrap_or(""),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            *expected.entry(labels).or_default() += 1;
            let labels: Vec<String> = [
                ex.route.method,
                ex.route.path.as_str(),
                ex.status_class(),
                ex.role.as_str(),
                if ex.tls { "true" } else { "false" },
                ex.workload.namespace.as_deref().unwrap_or(""),
                ex.workload.pod.as_deref().unwrap_or(""),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            *legacy.entry(labels).or_default() += 1;
        }
        assert!(expected.len() > 6);
        let server = m.server_duration.as_ref().unwrap();
        for (labels, n) in &expected {
            let l: Vec<&str> = labels.iter().map(String::as_str).collect();
            assert_eq!(server.with_label_values(&l).get_sample_count(), *n, "{l:?}");
        }
        let requests = m.requests.as_ref().unwrap();
        for (labels, n) in &legacy {
            let l: Vec<&str> = labels.iter().map(String::as_str).collect();
            assert_eq!(requests.with_label_values(&l).get(), *n, "{l:?}");
        }
    }

    #[test]
    fn naming_chooses_the_families() {
        let registry = Registry::new();
        let mut m = RequestMetrics::register(&registry, &MetricsConfig::default()).unwrap();
        let mut client = ExchangeBuilder::new()
            .path("/v1/charges")
            .status(402)
            .build();
        client.role = Role::Client;
        m.observe(&client, now());
        m.observe(&ExchangeBuilder::new().path("/x").build(), now());
        let text = exposition(&registry);
        assert!(
            text.contains("http_server_request_duration_seconds_bucket{"),
            "{text}"
        );
        assert!(
            text.contains("http_client_request_duration_seconds_count{error_type=\"402\",http_request_method=\"GET\",http_response_status_code=\"402\""),
            "{text}"
        );
        assert!(text.contains("url_template=\"/v1/charges\""), "{text}");
        assert!(!text.contains("api_observer_http_requests_total"), "{text}");
        let registry = Registry::new();
        let legacy = MetricsConfig {
            naming: "legacy".into(),
            ..Default::default()
        };
        let mut m = RequestMetrics::register(&registry, &legacy).unwrap();
        m.observe(&ExchangeBuilder::new().path("/x").build(), now());
        let text = exposition(&registry);
        assert!(text.contains("api_observer_http_requests_total{"), "{text}");
        assert!(!text.contains("http_server_request"), "{text}");
        for (toml, key) in [
            ("naming = \"semconv\"", "metrics.naming"),
            ("routes = [\"users/{id}\"]", "metrics.routes"),
            ("max_routes = 0", "metrics.max_routes"),
            ("route_window_secs = 0", "metrics.route_window_secs"),
            ("nameing = \"otel\"", "nameing"),
        ] {
            let err =
                crate::config::Config::from_toml(&format!("[metrics]\n{toml}\n")).unwrap_err();
            assert!(err.to_string().contains(key), "{toml}: {err}");
        }
    }

    /// Hostile paths leave nothing personal in the exposition, and a route that loses its
    /// place loses its series.
    #[test]
    fn labels_hold_no_personal_data_and_evicted_routes_go() {
        let registry = Registry::new();
        let config = MetricsConfig {
            naming: "both".into(),
            max_routes: 3,
            route_window_secs: 60,
            ..Default::default()
        };
        let mut m = RequestMetrics::register(&registry, &config).unwrap();
        let hostile = [
            "/users/alice@example.com",
            "/users/jsmith/orders",
            "/lookup/john.doe",
            "/call/+1-202-555-0143",
            "/search/J%C3%B3zef",
            "/n/%61%6c%69%63%65",
        ];
        for p in hostile {
            m.observe(&ExchangeBuilder::new().path(p).build(), now());
        }
        let text = exposition(&registry);
        for secret in ["alice", "jsmith", "john", "555", "%", "@", "J"] {
            let leaked: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("http_") || l.starts_with("api_observer_http_requests"))
                .filter(|l| l.contains(secret))
                .collect();
            assert!(leaked.is_empty(), "{secret}: {leaked:?}");
        }
        // Three places, taken; the busiest route of the window takes one at the next.
        let text = exposition(&registry);
        assert!(text.contains("http_route=\"other\""), "{text}");
        for _ in 0..10 {
            m.observe(&ExchangeBuilder::new().path("/busy").build(), now());
        }
        m.observe(
            &ExchangeBuilder::new().path("/busy").build(),
            now() + Duration::from_secs(61),
        );
        let text = exposition(&registry);
        assert!(text.contains("http_route=\"/busy\""), "{text}");
        let routes: HashSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("http_server_request_duration_seconds_count"))
            .filter_map(|l| l.split("http_route=\"").nth(1)?.split('"').next())
            .collect();
        assert!(routes.len() <= 4, "{routes:?}");
        assert!(
            text.contains("api_observer_http_routes_labelled 3"),
            "{text}"
        );
    }
}
