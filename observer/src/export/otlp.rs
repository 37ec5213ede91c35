//! OTLP export (`[otlp]`): request-duration histograms of every exchange and one span per
//! sampled exchange, sent to an OpenTelemetry Collector (or a vendor's endpoint) over
//! OTLP/HTTP with protobuf (`/v1/metrics`, `/v1/traces`).
//!
//! The capture never waits on the network: [`Otlp::observe`] records into the SDK's
//! in-memory aggregation and, for a sampled exchange, puts a span on a bounded queue (a
//! span that does not fit is dropped and counted). The SDK's periodic reader exports the
//! metrics on its thread, a thread of ours the spans; both go through `Retrying`, which
//! retries a failed export with exponential backoff within the export timeout, then
//! gives the batch up. Everything is counted in Prometheus.
//!
//! Attributes follow the OpenTelemetry HTTP semantic conventions; the route is the
//! caller's privacy-safe label, never the raw path (which may hold personal data), and no
//! query, header value or client address is ever exported.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    net::SocketAddr,
    sync::{
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use opentelemetry::{
    metrics::{Histogram, MeterProvider as _},
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceState},
    InstrumentationScope, KeyValue, Value,
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{
    error::{OTelSdkError, OTelSdkResult},
    metrics::{
        data::ResourceMetrics, exporter::PushMetricExporter, PeriodicReader, SdkMeterProvider,
        Temporality,
    },
    trace::{IdGenerator as _, RandomIdGenerator, SpanData, SpanEvents, SpanExporter, SpanLinks},
    Resource,
};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};

use crate::{
    exchange::{Exchange, Role},
    http::Protocol as HttpProtocol,
    workload::Workload,
};

/// The only protocol spoken: OTLP over HTTP, protobuf bodies.
pub const HTTP_PROTOBUF: &str = "http/protobuf";

/// `[otlp]`: where and how the OTLP export sends.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Base URL of the OTLP/HTTP receiver (`http://collector:4318`); `/v1/metrics` and
    /// `/v1/traces` are appended. Absent: no export.
    pub endpoint: Option<String>,
    /// Only `http/protobuf`.
    pub protocol: String,
    /// Seconds between metric exports (and at most between span batches).
    pub export_interval_secs: u64,
    /// Seconds one export may take, its retries included.
    pub timeout_secs: u64,
    /// Share of exchanges sent as spans, 0..=1 (0: none).
    pub traces_sample_ratio: f64,
    /// Extra request headers (an API key of a vendor's endpoint). Their values are never
    /// logged.
    pub headers: BTreeMap<String, String>,
    /// Most spans waiting for export; beyond it new spans are dropped and counted.
    pub max_queued_spans: usize,
    /// The `service.name` of the exported resource.
    pub service_name: String,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: HTTP_PROTOBUF.into(),
            export_interval_secs: 15,
            timeout_secs: 10,
            traces_sample_ratio: 0.0,
            headers: BTreeMap::new(),
            max_queued_spans: 2048,
            service_name: "api-observer".into(),
        }
    }
}

/// Header values may be credentials: only the names are shown.
impl std::fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpConfig")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("export_interval_secs", &self.export_interval_secs)
            .field("timeout_secs", &self.timeout_secs)
            .field("traces_sample_ratio", &self.traces_sample_ratio)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("max_queued_spans", &self.max_queued_spans)
            .field("service_name", &self.service_name)
            .finish()
    }
}

/// Most spans `otlp.max_queued_spans` may ask for.
const MAX_QUEUED_SPANS: usize = 1 << 20;

impl OtlpConfig {
    /// Check every value; the error names the key and says why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, why: String| Err((format!("otlp.{key}"), why));
        if let Some(endpoint) = &self.endpoint {
            if let Err(why) = check_endpoint(endpoint) {
                return bad("endpoint", why);
            }
        }
        if self.protocol != HTTP_PROTOBUF {
            return bad(
                "protocol",
                format!(
                    "{:?} is not supported (only {HTTP_PROTOBUF:?})",
                    self.protocol
                ),
            );
        }
        if self.export_interval_secs == 0 {
            return bad("export_interval_secs", "must be at least 1".into());
        }
        if self.timeout_secs == 0 {
            return bad("timeout_secs", "must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.traces_sample_ratio) {
            return bad(
                "traces_sample_ratio",
                format!("{} is outside 0..=1", self.traces_sample_ratio),
            );
        }
        if !(1..=MAX_QUEUED_SPANS).contains(&self.max_queued_spans) {
            return bad(
                "max_queued_spans",
                format!(
                    "{} is outside 1..={MAX_QUEUED_SPANS}",
                    self.max_queued_spans
                ),
            );
        }
        if self.service_name.trim().is_empty() {
            return bad("service_name", "must not be empty".into());
        }
        for (name, value) in &self.headers {
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty() || !name.bytes().all(token) {
                return bad("headers", format!("{name:?} is not a header name"));
            }
            // The value is never printed, even in this error.
            if value.chars().any(|c| c.is_control() && c != '\t') {
                return bad(
                    "headers",
                    format!("the value of {name:?} holds a control character"),
                );
            }
        }
        Ok(())
    }
}

/// A base URL the exporters can use, safe to print: http(s), a host, no credentials, no
/// query.
fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let Some(rest) = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
    else {
        return Err(format!(
            "{endpoint:?} does not start with http:// or https://"
        ));
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{endpoint:?} names no host"));
    }
    if authority.contains('@') {
        // Never echo it: the part before `@` is a credential.
        return Err("the URL holds credentials (user:password@); put them in otlp.headers".into());
    }
    if endpoint.contains(['?', '#']) || endpoint.chars().any(|c| c.is_whitespace()) {
        return Err(format!(
            "{endpoint:?} is not a base URL (no query, fragment or spaces)"
        ));
    }
    Ok(())
}

/// `base` + `/v1/<signal>` (the base's own path kept, as for `OTEL_EXPORTER_OTLP_ENDPOINT`).
fn signal_url(base: &str, signal_path: &str) -> String {
    format!("{}{signal_path}", base.trim_end_matches('/'))
}

/// Bucket boundaries of the duration histograms, in seconds: the semantic conventions'
/// advice for `http.server.request.duration` and `http.client.request.duration`.
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Most attempts of one export (the first and its retries).
const MAX_ATTEMPTS: u32 = 4;
/// Wait before the first retry; doubled before each next one.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// A failure is logged at most this often (the counters have every one).
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Longest the agent waits for the last exports when it stops.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// Most spans in one export request.
const MAX_SPAN_BATCH: usize = 512;
/// Most route labels and attribute sets kept at hand (beyond them they are built anew).
const MAX_ROUTES: usize = 1024;
const MAX_ATTRIBUTE_SETS: usize = 4096;

/// Foldhash, seeded per map: cheap for the keys hashed on every exchange.
type Fast = foldhash::fast::RandomState;

/// The Prometheus side of the export.
#[derive(Clone)]
struct Counters {
    metrics: SignalCounters,
    traces: SignalCounters,
    queue_full: IntCounter,
    export_failed: IntCounter,
}

/// Outcomes of one signal's exports.
#[derive(Clone)]
struct SignalCounters {
    ok: IntCounter,
    error: IntCounter,
    retries: IntCounter,
}

impl Counters {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let exports = IntCounterVec::new(
            Opts::new(
                "api_observer_otlp_exports_total",
                "OTLP exports attempted, by signal (metrics, traces) and result (ok, error: \
                 given up after its retries).",
            ),
            &["signal", "result"],
        )?;
        let retries = IntCounterVec::new(
            Opts::new(
                "api_observer_otlp_retries_total",
                "OTLP export attempts repeated after a failure, by signal.",
            ),
            &["signal"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "api_observer_otlp_spans_dropped_total",
                "Sampled spans not delivered: queue_full (the export queue was full), \
                 export_failed (their batch was given up).",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(exports.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        let signal = |s: &str| SignalCounters {
            ok: exports.with_label_values(&[s, "ok"]),
            error: exports.with_label_values(&[s, "error"]),
            retries: retries.with_label_values(&[s]),
        };
        Ok(Self {
            metrics: signal("metrics"),
            traces: signal("traces"),
            queue_full: dropped.with_label_values(&["queue_full"]),
            export_failed: dropped.with_label_values(&["export_failed"]),
        })
    }
}

/// At most one warning per [`WARN_EVERY`], shared by both signals.
#[derive(Default)]
struct WarnLimiter {
    last: Mutex<Option<Instant>>,
}

impl WarnLimiter {
    fn allow(&self) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// An OTLP exporter that counts its exports and retries a failed one with exponential
/// backoff: at most [`MAX_ATTEMPTS`] attempts, none started past the export timeout;
/// then the batch is given up. It runs on the exporting threads only (the SDK's
/// periodic reader, our span thread), so its backoff sleeps block nothing else.
struct Retrying<E> {
    inner: E,
    signal: &'static str,
    counters: SignalCounters,
    /// Spans given up (traces only).
    given_up: Option<IntCounter>,
    timeout: Duration,
    /// Wait before the first retry ([`FIRST_BACKOFF`]).
    backoff: Duration,
    warnings: Arc<WarnLimiter>,
    /// Checked to hold no credential or query: safe to print.
    endpoint: Arc<str>,
}

impl<E> std::fmt::Debug for Retrying<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retrying")
            .field("signal", &self.signal)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl<E> Retrying<E> {
    async fn run<F, Fut>(&self, mut attempt: F) -> OTelSdkResult
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = OTelSdkResult>,
    {
        let start = Instant::now();
        let mut backoff = self.backoff;
        let mut attempts = 1;
        loop {
            let err = match attempt().await {
                Ok(()) => {
                    self.counters.ok.inc();
                    return Ok(());
                }
                Err(e) => e,
            };
            let again = attempts < MAX_ATTEMPTS
                && start.elapsed() + backoff < self.timeout
                && !matches!(err, OTelSdkError::AlreadyShutdown);
            if !again {
                self.counters.error.inc();
                if self.warnings.allow() {
                    // The error says what failed (network, HTTP status), never a header.
                    tracing::warn!(
                        signal = self.signal,
                        endpoint = %self.endpoint,
                        attempts,
                        "otlp: export given up: {err} (counted in \
                         api_observer_otlp_exports_total; logged at most once a minute)"
                    );
                }
                return Err(err);
            }
            self.counters.retries.inc();
            std::thread::sleep(backoff);
            backoff *= 2;
            attempts += 1;
        }
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Retrying<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        self.run(|| self.inner.export(metrics)).await
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

impl<E: SpanExporter> SpanExporter for Retrying<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.run(|| self.inner.export(batch.clone())).await;
        if result.is_err() {
            if let Some(c) = &self.given_up {
                c.inc_by(n);
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The sampling decision: a ratio turned into a threshold on a cheap random draw.
struct Sampler {
    /// Sampled when a draw is below it; 0: never, `u64::MAX`: always.
    threshold: u64,
    /// SplitMix64 state.
    state: u64,
}

impl Sampler {
    fn new(ratio: f64, seed: u64) -> Self {
        let threshold = if ratio <= 0.0 {
            0
        } else if ratio >= 1.0 {
            u64::MAX
        } else {
            // Saturating: a ratio a hair below 1 stays below `u64::MAX`.
            (ratio * 18_446_744_073_709_551_616.0) as u64
        };
        Self {
            threshold,
            state: seed,
        }
    }

    fn sample(&mut self) -> bool {
        match self.threshold {
            0 => false,
            u64::MAX => true,
            t => self.next() < t,
        }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// What makes two exchanges' attributes the same, by value (route by number, workload
/// by address: the entry keeps that workload alive, so the address names it).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct SetKey {
    role: Role,
    method: &'static str,
    status: u16,
    route: u32,
    server: SocketAddr,
    tls: bool,
    http2: bool,
    workload: usize,
}

struct AttributeSet {
    attributes: Vec<KeyValue>,
    _workload: Option<Arc<Workload>>,
}

/// The attribute sets of the exchanges seen lately: an exchange costs a lookup, not a
/// string formatted or allocated.
#[derive(Default)]
struct AttributeSets {
    routes: HashMap<String, u32, Fast>,
    sets: HashMap<SetKey, AttributeSet, Fast>,
}

impl AttributeSets {
    fn get(&mut self, ex: &Exchange, route: &str) -> &[KeyValue] {
        let route_id = match ex.role {
            Role::Client => u32::MAX,
            Role::Server => match self.routes.get(route) {
                Some(n) => *n,
                None => {
                    if self.routes.len() >= MAX_ROUTES {
                        // Numbers are reused from here: sets naming them go too.
                        self.routes.clear();
                        self.sets.clear();
                    }
                    let n = self.routes.len() as u32;
                    self.routes.insert(route.to_string(), n);
                    n
                }
            },
        };
        let named = ex.workload.namespace.is_some() || ex.workload.pod.is_some();
        let key = SetKey {
            role: ex.role,
            method: ex.route.method,
            status: ex.outcome(),
            route: route_id,
            server: ex.server,
            tls: ex.tls,
            http2: ex.protocol == HttpProtocol::Http2,
            workload: if named {
                Arc::as_ptr(&ex.workload) as usize
            } else {
                0
            },
        };
        if self.sets.len() >= MAX_ATTRIBUTE_SETS && !self.sets.contains_key(&key) {
            self.sets.clear();
        }
        &self
            .sets
            .entry(key)
            .or_insert_with(|| AttributeSet {
                attributes: attributes(ex, route),
                _workload: named.then(|| Arc::clone(&ex.workload)),
            })
            .attributes
    }
}

/// `http.request.method`: the bounded method, `_OTHER` for any other (the semantic
/// conventions' name for it).
fn method(ex: &Exchange) -> &'static str {
    match ex.route.method {
        "OTHER" => "_OTHER",
        m => m,
    }
}

/// The semantic-convention attributes of an exchange, for its duration and its span.
/// `route` is the caller's privacy-safe label (server role only); nothing here comes from
/// the raw path, the query, a header value or the client's address.
fn attributes(ex: &Exchange, route: &str) -> Vec<KeyValue> {
    let text = |s: &str| Value::from(Arc::<str>::from(s));
    let mut kv = Vec::with_capacity(9);
    kv.push(KeyValue::new("http.request.method", method(ex)));
    kv.push(KeyValue::new(
        "http.response.status_code",
        i64::from(ex.outcome()),
    ));
    if ex.role == Role::Server {
        kv.push(KeyValue::new("http.route", text(route)));
    }
    // The server's end either way: this host's address for a server, the peer's for a
    // client.
    if !ex.server.ip().is_unspecified() {
        kv.push(KeyValue::new(
            "server.address",
            text(&ex.server.ip().to_string()),
        ));
    }
    if ex.server.port() != 0 {
        kv.push(KeyValue::new("server.port", i64::from(ex.server.port())));
    }
    kv.push(KeyValue::new(
        "url.scheme",
        if ex.tls { "https" } else { "http" },
    ));
    kv.push(KeyValue::new(
        "network.protocol.version",
        match ex.protocol {
            HttpProtocol::Http1 => "1.1",
            HttpProtocol::Http2 => "2",
        },
    ));
    if let Some(ns) = &ex.workload.namespace {
        kv.push(KeyValue::new("k8s.namespace.name", text(ns)));
    }
    if let Some(pod) = &ex.workload.pod {
        kv.push(KeyValue::new("k8s.pod.name", text(pod)));
    }
    kv
}

/// The span of an exchange: SERVER or CLIENT, named `{method} {route}` (server) or
/// `{method}` (client), from the request's first byte to the response head.
fn span(
    ex: &Exchange,
    route: &str,
    attributes: Vec<KeyValue>,
    scope: &InstrumentationScope,
) -> SpanData {
    // The semantic conventions name a span of an unknown method `HTTP`.
    let method = match ex.route.method {
        "OTHER" => "HTTP",
        m => m,
    };
    let status = ex.outcome();
    let (kind, name, failed) = match ex.role {
        Role::Server => (SpanKind::Server, format!("{method} {route}"), status >= 500),
        Role::Client => (SpanKind::Client, method.to_string(), status >= 400),
    };
    let ids = RandomIdGenerator::default();
    SpanData {
        span_context: SpanContext::new(
            ids.new_trace_id(),
            ids.new_span_id(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: SpanId::INVALID,
        parent_span_is_remote: false,
        span_kind: kind,
        name: name.into(),
        start_time: ex.started_at,
        end_time: ex.started_at + ex.latency,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: if failed {
            Status::error("")
        } else {
            Status::Unset
        },
        instrumentation_scope: scope.clone(),
    }
}

/// The resource of every export: `service.name`, `host.name`, and `k8s.node.name` when
/// known (plus what `OTEL_RESOURCE_ATTRIBUTES` and the SDK add).
fn resource(config: &OtlpConfig, node: Option<&str>) -> Resource {
    let mut attributes = Vec::new();
    if let Some(host) = host_name() {
        attributes.push(KeyValue::new("host.name", host));
    }
    if let Some(node) = node.filter(|n| !n.is_empty()) {
        attributes.push(KeyValue::new("k8s.node.name", node.to_string()));
    }
    Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attributes(attributes)
        .build()
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// The exporters' HTTP client: blocking (the exports run on threads of their own), TLS
/// by rustls with ring, the system's roots. Built on a thread of its own: reqwest's
/// blocking client may not be built inside the agent's async runtime.
fn http_client(timeout: Duration) -> anyhow::Result<reqwest::blocking::Client> {
    let provider = crate::export::tls::provider();
    let verifier = rustls_platform_verifier::Verifier::new(Arc::clone(&provider))
        .context("otlp: the system's TLS roots")?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("otlp: TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    std::thread::Builder::new()
        .name("otlp-client".into())
        .spawn(move || {
            reqwest::blocking::Client::builder()
                .timeout(timeout)
                .tls_backend_preconfigured(tls)
                .build()
        })
        .context("otlp: starting the HTTP client")?
        .join()
        .map_err(|_| anyhow::anyhow!("otlp: building the HTTP client panicked"))?
        .context("otlp: building the HTTP client")
}

/// Sampled spans on their way to the exporting thread.
struct SpanQueue {
    queue: SyncSender<SpanData>,
    scope: InstrumentationScope,
    /// Signalled (by dropping) when the thread has sent its last batch.
    done: Receiver<()>,
}

/// The OTLP export of a running agent.
pub struct Otlp {
    meters: SdkMeterProvider,
    server_duration: Histogram<f64>,
    client_duration: Histogram<f64>,
    sets: AttributeSets,
    sampler: Sampler,
    /// None when no span is sampled.
    spans: Option<SpanQueue>,
    queue_full: IntCounter,
}

impl Otlp {
    /// Start the exporters when `config` names an endpoint (`None` otherwise). `node`:
    /// the Kubernetes node's name, for the resource.
    pub fn start(
        config: &OtlpConfig,
        registry: &Registry,
        node: Option<&str>,
    ) -> anyhow::Result<Option<Otlp>> {
        let Some(endpoint) = &config.endpoint else {
            return Ok(None);
        };
        config
            .validate()
            .map_err(|(key, why)| anyhow::anyhow!("invalid value for `{key}`: {why}"))?;
        let counters = Counters::register(registry).context("otlp: metrics")?;
        let timeout = Duration::from_secs(config.timeout_secs);
        let interval = Duration::from_secs(config.export_interval_secs);
        let client = http_client(timeout)?;
        let headers: HashMap<String, String> = config
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let resource = resource(config, node);
        let scope = InstrumentationScope::builder("api-observer")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let warnings = Arc::new(WarnLimiter::default());
        let endpoint: Arc<str> = Arc::from(endpoint.trim_end_matches('/'));

        let metric_exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(signal_url(&endpoint, "/v1/metrics"))
            .with_timeout(timeout)
            .with_headers(headers.clone())
            .with_http_client(client.clone())
            .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
            .build()
            .context("otlp: the metric exporter (otlp.endpoint)")?;
        let reader = PeriodicReader::builder(Retrying {
            inner: metric_exporter,
            signal: "metrics",
            counters: counters.metrics.clone(),
            given_up: None,
            timeout,
            backoff: FIRST_BACKOFF,
            warnings: Arc::clone(&warnings),
            endpoint: Arc::clone(&endpoint),
        })
        .with_interval(interval)
        .build();
        let meters = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(reader)
            .build();
        let meter = meters.meter_with_scope(scope.clone());
        let server_duration = meter
            .f64_histogram("http.server.request.duration")
            .with_unit("s")
            .with_description("Duration of HTTP server requests.")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build();
        let client_duration = meter
            .f64_histogram("http.client.request.duration")
            .with_unit("s")
            .with_description("Duration of HTTP client requests.")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build();

        let spans = if config.traces_sample_ratio > 0.0 {
            let mut exporter = Retrying {
                inner: opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(signal_url(&endpoint, "/v1/traces"))
                    .with_timeout(timeout)
                    .with_headers(headers)
                    .with_http_client(client)
                    .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled())
                    .build()
                    .context("otlp: the span exporter (otlp.endpoint)")?,
                signal: "traces",
                counters: counters.traces.clone(),
                given_up: Some(counters.export_failed.clone()),
                timeout,
                backoff: FIRST_BACKOFF,
                warnings,
                endpoint: Arc::clone(&endpoint),
            };
            exporter.set_resource(&resource);
            let (queue, incoming) = mpsc::sync_channel(config.max_queued_spans);
            let (finished, done) = mpsc::channel();
            std::thread::Builder::new()
                .name("otlp-spans".into())
                .spawn(move || {
                    send_spans(incoming, &exporter, interval);
                    drop(finished);
                })
                .context("otlp: starting the span thread")?;
            Some(SpanQueue { queue, scope, done })
        } else {
            None
        };
        tracing::info!(
            "otlp: exporting to {endpoint} ({HTTP_PROTOBUF}) every {}s, \
             traces_sample_ratio {}, extra headers (names): {:?}",
            config.export_interval_secs,
            config.traces_sample_ratio,
            config.headers.keys().collect::<Vec<_>>()
        );
        Ok(Some(Otlp {
            meters,
            server_duration,
            client_duration,
            sets: AttributeSets::default(),
            sampler: Sampler::new(config.traces_sample_ratio, getrandom::u64().unwrap_or(1)),
            spans,
            queue_full: counters.queue_full,
        }))
    }

    /// Record one exchange (on the capture's hot path: never waits). `route`: the
    /// privacy-safe route label of a server exchange.
    pub fn observe(&mut self, ex: &Exchange, route: &str) {
        // Decided first: an unsampled exchange costs no span at all.
        let sampled = self.spans.is_some() && self.sampler.sample();
        let attributes = self.sets.get(ex, route);
        let seconds = ex.latency.as_secs_f64();
        match ex.role {
            Role::Server => self.server_duration.record(seconds, attributes),
            Role::Client => self.client_duration.record(seconds, attributes),
        }
        if !sampled {
            return;
        }
        if let Some(q) = &self.spans {
            let span = span(ex, route, attributes.to_vec(), &q.scope);
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                q.queue.try_send(span)
            {
                self.queue_full.inc();
            }
        }
    }

    /// Send what is left (the last metrics, the queued spans) and stop, waiting at most
    /// [`SHUTDOWN_WAIT`]; what is not sent by then is abandoned.
    pub fn shutdown(self) {
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        let meters = self.meters;
        let (finished, metrics_done) = mpsc::channel::<()>();
        let metrics = std::thread::Builder::new()
            .name("otlp-shutdown".into())
            .spawn(move || {
                // Its reader sends the last metrics; its own wait is bounded too.
                let _ = meters.shutdown();
                drop(finished);
            });
        let spans_done = self.spans.map(|q| {
            drop(q.queue);
            q.done
        });
        let mut complete = true;
        if metrics.is_ok() {
            complete &= wait_until(&metrics_done, deadline);
        }
        if let Some(done) = spans_done {
            complete &= wait_until(&done, deadline);
        }
        if complete {
            tracing::info!("otlp: stopped");
        } else {
            tracing::warn!(
                "otlp: the last exports did not finish within {}s; abandoned",
                SHUTDOWN_WAIT.as_secs()
            );
        }
    }
}

/// Whether the sender side of `done` went away before `deadline`.
fn wait_until(done: &Receiver<()>, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    matches!(
        done.recv_timeout(left),
        Ok(()) | Err(RecvTimeoutError::Disconnected)
    )
}

/// The span thread: batches of at most [`MAX_SPAN_BATCH`] spans, sent when full or
/// `every` after the last send; the rest when the queue closes.
fn send_spans<E: SpanExporter>(incoming: Receiver<SpanData>, exporter: &E, every: Duration) {
    let mut batch = Vec::new();
    let mut due = Instant::now() + every;
    loop {
        let closed = match incoming.recv_timeout(due.saturating_duration_since(Instant::now())) {
            Ok(span) => {
                batch.push(span);
                if batch.len() < MAX_SPAN_BATCH {
                    continue;
                }
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        if !batch.is_empty() {
            // Failures are counted and logged by the exporter.
            let _ = futures_executor::block_on(exporter.export(std::mem::take(&mut batch)));
        }
        if closed {
            return;
        }
        due = Instant::now() + every;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::testutil::ExchangeBuilder;

    fn invalid(toml_text: &str) -> String {
        let config: OtlpConfig = toml::from_str(toml_text).expect("parses");
        config.validate().expect_err("invalid").0
    }

    #[test]
    fn defaults_are_valid_and_off() {
        let c = OtlpConfig::default();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.endpoint, None);
        assert_eq!(
            (c.protocol.as_str(), c.export_interval_secs, c.timeout_secs),
            ("http/protobuf", 15, 10)
        );
        assert_eq!(
            (
                c.traces_sample_ratio,
                c.max_queued_spans,
                c.service_name.as_str()
            ),
            (0.0, 2048, "api-observer")
        );
        let registry = Registry::new();
        assert!(Otlp::start(&c, &registry, None).unwrap().is_none());
        // Nothing registered when off.
        assert!(registry.gather().is_empty());
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(invalid("endpoint = \"collector:4318\""), "otlp.endpoint");
        assert_eq!(invalid("endpoint = \"ftp://collector\""), "otlp.endpoint");
        assert_eq!(invalid("endpoint = \"http://\""), "otlp.endpoint");
        assert_eq!(
            invalid("endpoint = \"http://h:4318/?k=v\""),
            "otlp.endpoint"
        );
        assert_eq!(invalid("protocol = \"grpc\""), "otlp.protocol");
        assert_eq!(invalid("protocol = \"http/json\""), "otlp.protocol");
        assert_eq!(
            invalid("export_interval_secs = 0"),
            "otlp.export_interval_secs"
        );
        assert_eq!(invalid("timeout_secs = 0"), "otlp.timeout_secs");
        assert_eq!(
            invalid("traces_sample_ratio = 1.5"),
            "otlp.traces_sample_ratio"
        );
        assert_eq!(
            invalid("traces_sample_ratio = -0.1"),
            "otlp.traces_sample_ratio"
        );
        assert_eq!(
            invalid("traces_sample_ratio = nan"),
            "otlp.traces_sample_ratio"
        );
        assert_eq!(invalid("max_queued_spans = 0"), "otlp.max_queued_spans");
        assert_eq!(invalid("service_name = \" \""), "otlp.service_name");
        assert_eq!(
            invalid("headers = { \"bad name\" = \"v\" }"),
            "otlp.headers"
        );
        for ok in [
            "endpoint = \"http://collector:4318\"",
            "endpoint = \"https://otlp.example.com/otlp/\"",
            "endpoint = \"http://[::1]:4318\"",
            "traces_sample_ratio = 1.0",
            "headers = { \"x-api-key\" = \"k\" }",
        ] {
            let c: OtlpConfig = toml::from_str(ok).unwrap();
            assert_eq!(c.validate(), Ok(()), "{ok}");
        }
        let err = crate::config::Config::from_toml("[otlp]\nprotocol = \"grpc\"\n").unwrap_err();
        assert!(err.to_string().contains("otlp.protocol"), "{err}");
        let err = crate::config::Config::from_toml("[otlp]\nendpointt = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("endpointt"), "{err}");
    }

    #[test]
    fn credentials_are_never_echoed() {
        let c = OtlpConfig {
            endpoint: Some("http://user:hunter2@collector:4318".into()),
            ..OtlpConfig::default()
        };
        let (key, why) = c.validate().unwrap_err();
        assert_eq!(key, "otlp.endpoint");
        assert!(!why.contains("hunter2"), "{why}");
        let c = OtlpConfig {
            headers: BTreeMap::from([("x-api-key".into(), "SECRET\nX".into())]),
            ..OtlpConfig::default()
        };
        let (key, why) = c.validate().unwrap_err();
        assert_eq!(key, "otlp.headers");
        assert!(!why.contains("SECRET"), "{why}");
        let c = OtlpConfig {
            headers: BTreeMap::from([("x-api-key".into(), "SECRET".into())]),
            ..OtlpConfig::default()
        };
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("SECRET") && printed.contains("x-api-key"),
            "{printed}"
        );
    }

    #[test]
    fn signal_urls_keep_the_base_path() {
        assert_eq!(
            signal_url("http://collector:4318", "/v1/metrics"),
            "http://collector:4318/v1/metrics"
        );
        assert_eq!(
            signal_url("https://h/otlp/", "/v1/traces"),
            "https://h/otlp/v1/traces"
        );
    }

    #[test]
    fn sampling_bounds() {
        let count = |ratio: f64| {
            let mut s = Sampler::new(ratio, 42);
            (0..10_000).filter(|_| s.sample()).count()
        };
        assert_eq!(count(0.0), 0);
        assert_eq!(count(1.0), 10_000);
        let quarter = count(0.25);
        assert!((2_300..=2_700).contains(&quarter), "{quarter}");
        assert_eq!(count(1e-300), 0);
        assert!(Sampler::new(0.999_999_999_999, 1).threshold < u64::MAX);
    }

    /// The attributes as (name, value) text pairs, in order.
    fn pairs(kv: &[KeyValue]) -> Vec<(String, String)> {
        kv.iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect()
    }

    fn owned(rows: &[(&str, &str)]) -> Vec<(String, String)> {
        rows.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn server_attributes() {
        let ex = ExchangeBuilder::new()
            .path("/users/8812/orders")
            .status(503)
            .server("10.0.0.1:8443")
            .build();
        let kv = attributes(&ex, &ex.route.path);
        assert_eq!(
            pairs(&kv),
            owned(&[
                ("http.request.method", "GET"),
                ("http.response.status_code", "503"),
                ("http.route", "/users/{id}/orders"),
                ("server.address", "10.0.0.1"),
                ("server.port", "8443"),
                ("url.scheme", "https"),
                ("network.protocol.version", "1.1"),
            ])
        );
        assert_eq!(kv[1].value, Value::I64(503));
        assert_eq!(kv[4].value, Value::I64(8443));
        let span = span(
            &ex,
            &ex.route.path,
            kv.clone(),
            &InstrumentationScope::default(),
        );
        assert_eq!(span.name, "GET /users/{id}/orders");
        assert_eq!(span.span_kind, SpanKind::Server);
        assert_eq!(span.status, Status::error(""));
        assert_eq!(span.start_time, ex.started_at);
        assert_eq!(span.end_time, ex.started_at + Duration::from_millis(5));
        assert_eq!(span.attributes, kv);
        assert!(span.span_context.is_valid() && span.span_context.is_sampled());
        // 4xx is the client's fault: not an error of the server's span.
        let ex = ExchangeBuilder::new().status(404).build();
        assert_eq!(span_of(&ex).status, Status::Unset);
    }

    fn span_of(ex: &Exchange) -> SpanData {
        span(
            ex,
            &ex.route.path,
            attributes(ex, &ex.route.path),
            &InstrumentationScope::default(),
        )
    }

    #[test]
    fn client_attributes() {
        let mut ex = ExchangeBuilder::new()
            .role(Role::Client)
            .method("delete")
            .path("/v2/carts/5512")
            .status(404)
            .tls(false)
            .server("[2001:db8::5]:8080")
            .build();
        ex.protocol = HttpProtocol::Http2;
        ex.workload = Arc::new(Workload {
            container_id: Some("c0ffee".into()),
            pod_uid: Some("uid".into()),
            pod: Some("checkout-7d9".into()),
            namespace: Some("shop".into()),
        });
        let kv = attributes(&ex, "/ignored/for/clients");
        assert_eq!(
            pairs(&kv),
            owned(&[
                ("http.request.method", "DELETE"),
                ("http.response.status_code", "404"),
                ("server.address", "2001:db8::5"),
                ("server.port", "8080"),
                ("url.scheme", "http"),
                ("network.protocol.version", "2"),
                ("k8s.namespace.name", "shop"),
                ("k8s.pod.name", "checkout-7d9"),
            ])
        );
        let span = span_of(&ex);
        assert_eq!(span.name, "DELETE");
        assert_eq!(span.span_kind, SpanKind::Client);
        assert_eq!(span.status, Status::error(""));
        // Unknown methods and addresses.
        let ex = ExchangeBuilder::new()
            .method("PURGE")
            .server("0.0.0.0:0")
            .build();
        let kv = attributes(&ex, "/");
        assert_eq!(
            pairs(&kv),
            owned(&[
                ("http.request.method", "_OTHER"),
                ("http.response.status_code", "200"),
                ("http.route", "/"),
                ("url.scheme", "https"),
                ("network.protocol.version", "1.1"),
            ])
        );
        assert_eq!(span_of(&ex).name, "HTTP /");
    }

    #[test]
    fn the_raw_path_never_leaves() {
        let ex = ExchangeBuilder::new()
            .path("/users/alice@example.com/orders/77")
            .query("token=SECRETQ")
            .bearer("SECRETH")
            .client("198.51.100.23:40000")
            .build();
        for role in [Role::Server, Role::Client] {
            let mut ex = ex.clone();
            ex.role = role;
            let span = span_of(&ex);
            let printed = format!("{} {:?}", span.name, span.attributes);
            for raw in [
                "alice",
                "/orders/77",
                "SECRETQ",
                "SECRETH",
                "198.51.100.23",
                "40000",
            ] {
                assert!(!printed.contains(raw), "{raw} in {printed}");
            }
        }
        let mut sets = AttributeSets::default();
        let printed = format!("{:?}", sets.get(&ex, &ex.route.path));
        assert!(printed.contains("/users/{id}/orders/{id}") && !printed.contains("alice"));
    }

    #[test]
    fn attribute_sets_are_reused_and_bounded() {
        let mut sets = AttributeSets::default();
        let a = ExchangeBuilder::new().path("/items/1").build();
        let b = ExchangeBuilder::new().path("/items/2").build();
        let first = sets.get(&a, &a.route.path).as_ptr();
        assert_eq!(sets.get(&b, &b.route.path).as_ptr(), first);
        assert_eq!(sets.sets.len(), 1);
        let c = ExchangeBuilder::new().path("/items/2").status(500).build();
        sets.get(&c, &c.route.path);
        assert_eq!((sets.sets.len(), sets.routes.len()), (2, 1));
        for i in 0..MAX_ROUTES + 5 {
            let route = format!("/r{i}");
            let kv = pairs(sets.get(&a, &route));
            assert_eq!(kv[2], ("http.route".to_string(), route));
        }
        assert!(sets.routes.len() <= MAX_ROUTES && sets.sets.len() <= MAX_ATTRIBUTE_SETS);
    }

    /// An exporter that fails its first `failures` calls (stands in for the OTLP one; the
    /// end-to-end test runs the real one against a real receiver).
    #[derive(Debug, Default)]
    struct Flaky {
        failures: std::sync::atomic::AtomicU32,
        calls: std::sync::atomic::AtomicU32,
    }

    impl SpanExporter for Flaky {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            use std::sync::atomic::Ordering::Relaxed;
            self.calls.fetch_add(1, Relaxed);
            if self.failures.load(Relaxed) == 0 {
                return Ok(());
            }
            self.failures.fetch_sub(1, Relaxed);
            Err(OTelSdkError::InternalFailure(
                "HTTP export failed: network error".into(),
            ))
        }
    }

    fn retrying(failures: u32, timeout: Duration, registry: &Registry) -> Retrying<Flaky> {
        let counters = Counters::register(registry).unwrap();
        Retrying {
            inner: Flaky {
                failures: failures.into(),
                ..Flaky::default()
            },
            signal: "traces",
            counters: counters.traces,
            given_up: Some(counters.export_failed),
            timeout,
            backoff: Duration::from_millis(1),
            warnings: Arc::default(),
            endpoint: Arc::from("http://127.0.0.1:4318"),
        }
    }

    /// `name{labels} value` lines of the registry's exposition.
    fn exposition(registry: &Registry) -> String {
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut out,
        )
        .unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    fn batch(n: usize) -> Vec<SpanData> {
        vec![span_of(&ExchangeBuilder::new().build()); n]
    }

    #[test]
    fn failed_exports_are_retried_with_backoff_then_given_up_and_counted() {
        use std::sync::atomic::Ordering::Relaxed;
        let registry = Registry::new();
        let r = retrying(u32::MAX, Duration::from_secs(10), &registry);
        assert!(futures_executor::block_on(r.export(batch(3))).is_err());
        assert_eq!(r.inner.calls.load(Relaxed), MAX_ATTEMPTS);
        assert_eq!(
            exposition(&registry),
            "api_observer_otlp_exports_total{result=\"error\",signal=\"metrics\"} 0\n\
             api_observer_otlp_exports_total{result=\"error\",signal=\"traces\"} 1\n\
             api_observer_otlp_exports_total{result=\"ok\",signal=\"metrics\"} 0\n\
             api_observer_otlp_exports_total{result=\"ok\",signal=\"traces\"} 0\n\
             api_observer_otlp_retries_total{signal=\"metrics\"} 0\n\
             api_observer_otlp_retries_total{signal=\"traces\"} 3\n\
             api_observer_otlp_spans_dropped_total{reason=\"export_failed\"} 3\n\
             api_observer_otlp_spans_dropped_total{reason=\"queue_full\"} 0\n"
        );

        // A failure then a success: one retry, one export that went through.
        let registry = Registry::new();
        let r = retrying(1, Duration::from_secs(10), &registry);
        assert!(futures_executor::block_on(r.export(batch(2))).is_ok());
        assert_eq!(r.inner.calls.load(Relaxed), 2);
        let text = exposition(&registry);
        assert!(
            text.contains("exports_total{result=\"ok\",signal=\"traces\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("exports_total{result=\"error\",signal=\"traces\"} 0\n"));
        assert!(text.contains("retries_total{signal=\"traces\"} 1\n"));
        assert!(text.contains("{reason=\"export_failed\"} 0\n"));

        // No retry starts past the export timeout.
        let registry = Registry::new();
        let mut r = retrying(u32::MAX, Duration::from_millis(50), &registry);
        r.backoff = Duration::from_millis(60);
        assert!(futures_executor::block_on(r.export(batch(1))).is_err());
        assert_eq!(r.inner.calls.load(Relaxed), 1);
        assert!(exposition(&registry).contains("retries_total{signal=\"traces\"} 0\n"));
    }

    #[test]
    fn warnings_are_limited_to_one_a_minute() {
        let w = WarnLimiter::default();
        assert!(w.allow());
        assert!(!w.allow());
        *w.last.lock().unwrap() = Some(Instant::now() - WARN_EVERY);
        assert!(w.allow());
    }

    #[test]
    fn the_span_thread_sends_full_batches_and_the_rest_at_close() {
        use std::sync::atomic::Ordering::Relaxed;
        let registry = Registry::new();
        let r = retrying(0, Duration::from_secs(10), &registry);
        let (queue, incoming) = mpsc::sync_channel(MAX_SPAN_BATCH * 2);
        for s in batch(MAX_SPAN_BATCH + 7) {
            queue.try_send(s).unwrap();
        }
        drop(queue);
        send_spans(incoming, &r, Duration::from_secs(3600));
        assert_eq!(r.inner.calls.load(Relaxed), 2);
        assert!(
            exposition(&registry).contains("exports_total{result=\"ok\",signal=\"traces\"} 2\n")
        );
    }

    #[test]
    fn resource_names_service_host_and_node() {
        let c = OtlpConfig {
            service_name: "edge-observer".into(),
            ..OtlpConfig::default()
        };
        let r = resource(&c, Some("node-7"));
        let get = |k: &'static str| r.get(&opentelemetry::Key::from_static_str(k));
        assert_eq!(get("service.name"), Some(Value::from("edge-observer")));
        assert_eq!(get("k8s.node.name"), Some(Value::from("node-7")));
        assert_eq!(
            get("host.name").map(|v| v.to_string()),
            host_name(),
            "host.name"
        );
        assert!(host_name().is_some());
        assert_eq!(resource(&c, None).get(&"k8s.node.name".into()), None);
    }
}
