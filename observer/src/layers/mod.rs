//! Layer agreement: the web server's access log reconciled with the exchanges the kernel
//! saw. Each configured log is followed ([`follow`]); each line becomes a route template,
//! a status and a time at once ([`parse`]), the raw line is dropped. Server exchanges and
//! log lines are counted per (window, route, status); windows old enough to be complete
//! are compared and the differences counted in
//! `api_observer_layer_disagreement_total{layer="access_log",kind}`.

pub mod follow;
pub mod parse;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};

use crate::{exchange::Exchange, route::RoutePatterns};
use parse::{LogEntry, Skip};

/// `[layers]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LayersConfig {
    /// Access logs to follow and reconcile.
    pub access_logs: Vec<AccessLogConfig>,
    /// Seconds between reconciliations. Windows are a minute long (shorter when this is).
    pub interval_secs: u64,
}

impl Default for LayersConfig {
    fn default() -> Self {
        Self {
            access_logs: Vec::new(),
            interval_secs: 60,
        }
    }
}

/// One access log.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub format: LogFormat,
    /// The server port whose exchanges this log covers; absent: every server exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Field names of the JSON format.
    #[serde(default)]
    pub fields: JsonFields,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// nginx/Apache combined (or common) format.
    #[default]
    Combined,
    /// One JSON object per line.
    Json,
}

/// Field names of a JSON access log; the defaults match nginx
/// `log_format j escape=json '{"time":"$time_iso8601","method":"$request_method","uri":"$request_uri","status":$status}'`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JsonFields {
    pub method: String,
    /// Request URI or path (a query string is cut off at once).
    pub uri: String,
    pub status: String,
    /// ISO 8601, common-log time, or Unix seconds.
    pub time: String,
}

impl Default for JsonFields {
    fn default() -> Self {
        Self {
            method: "method".into(),
            uri: "uri".into(),
            status: "status".into(),
            time: "time".into(),
        }
    }
}

impl LayersConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !(1..=3600).contains(&self.interval_secs) {
            return Err((
                "layers.interval_secs".into(),
                format!("{} is outside 1..=3600", self.interval_secs),
            ));
        }
        if self.access_logs.len() > MAX_LOGS {
            return Err((
                "layers.access_logs".into(),
                format!("at most {MAX_LOGS} logs"),
            ));
        }
        for (i, log) in self.access_logs.iter().enumerate() {
            if log.path.as_os_str().is_empty() {
                return Err((format!("layers.access_logs[{i}].path"), "is empty".into()));
            }
            if log.port == Some(0) {
                return Err((
                    format!("layers.access_logs[{i}].port"),
                    "must not be 0".into(),
                ));
            }
            let f = &log.fields;
            for (name, v) in [
                ("method", &f.method),
                ("uri", &f.uri),
                ("status", &f.status),
                ("time", &f.time),
            ] {
                if v.is_empty() {
                    return Err((
                        format!("layers.access_logs[{i}].fields.{name}"),
                        "is empty".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Window length, seconds: a minute, or the period when it is shorter.
    fn window_secs(&self) -> u64 {
        self.interval_secs.clamp(1, 60)
    }

    /// How long after its end a window is compared: log lines written a little late
    /// still count.
    fn grace_secs(&self) -> u64 {
        (2 * self.interval_secs).max(2)
    }
}

const MAX_LOGS: usize = 16;
/// Windows held per log and side; beyond it the newest are refused (counted).
const MAX_WINDOWS: usize = 64;
/// (route, status) keys per window and side; beyond it new keys are refused (counted).
const MAX_KEYS: usize = 2000;
/// Reconciled windows kept for `GET /api/layers`, per log.
const RECENT_WINDOWS: usize = 10;

/// Counts per window start → "route status" key.
#[derive(Default)]
struct Tally {
    windows: BTreeMap<u64, HashMap<String, u64>>,
}

impl Tally {
    /// Count one; false when a bound refused it.
    fn add(&mut self, window: u64, key: &str) -> bool {
        if !self.windows.contains_key(&window) && self.windows.len() >= MAX_WINDOWS {
            return false;
        }
        let w = self.windows.entry(window).or_default();
        if let Some(c) = w.get_mut(key) {
            *c += 1;
            return true;
        }
        if w.len() >= MAX_KEYS {
            return false;
        }
        w.insert(key.to_string(), 1);
        true
    }

    fn take(&mut self, window: u64) -> HashMap<String, u64> {
        self.windows.remove(&window).unwrap_or_default()
    }
}

/// One (route, status) of a reconciled window.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Row {
    pub route: String,
    pub status: u16,
    pub kernel: u64,
    pub log: u64,
}

/// A reconciled window.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct WindowReport {
    /// Unix seconds, start inclusive, end exclusive.
    pub start: u64,
    pub end: u64,
    pub missing_from_log: u64,
    pub not_seen_by_kernel: u64,
    /// Sorted by route then status.
    pub rows: Vec<Row>,
}

/// Compare one window's counts: kernel > log is missing from the log, log > kernel was
/// not seen by the kernel.
pub fn compare(
    start: u64,
    end: u64,
    kernel: HashMap<String, u64>,
    mut log: HashMap<String, u64>,
) -> WindowReport {
    let mut rows = Vec::with_capacity(kernel.len() + log.len());
    let mut push = |key: &str, k: u64, l: u64| {
        let (route, status) = key.rsplit_once(' ').unwrap_or((key, "0"));
        rows.push(Row {
            route: route.to_string(),
            status: status.parse().unwrap_or(0),
            kernel: k,
            log: l,
        });
    };
    for (key, k) in &kernel {
        let l = log.remove(key).unwrap_or(0);
        push(key, *k, l);
    }
    for (key, l) in &log {
        push(key, 0, *l);
    }
    rows.sort_by(|a, b| (&a.route, a.status).cmp(&(&b.route, b.status)));
    let missing_from_log = rows.iter().map(|r| r.kernel.saturating_sub(r.log)).sum();
    let not_seen_by_kernel = rows.iter().map(|r| r.log.saturating_sub(r.kernel)).sum();
    WindowReport {
        start,
        end,
        missing_from_log,
        not_seen_by_kernel,
        rows,
    }
}

struct LogState {
    config: AccessLogConfig,
    kernel: Tally,
    log: Tally,
    lines_read: u64,
    skipped: BTreeMap<&'static str, u64>,
    missing_from_log: u64,
    not_seen_by_kernel: u64,
    recent: VecDeque<WindowReport>,
}

/// The layer metrics.
#[derive(Clone)]
pub struct LayerMetrics {
    disagreement: IntCounterVec,
    skipped: IntCounterVec,
    lines: IntCounter,
    dropped: IntCounterVec,
}

impl LayerMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let disagreement = IntCounterVec::new(
            Opts::new(
                "api_observer_layer_disagreement_total",
                "Requests one layer saw and another did not, per reconciled window \
                 (access_log: missing_from_log, not_seen_by_kernel).",
            ),
            &["layer", "kind"],
        )?;
        let skipped = IntCounterVec::new(
            Opts::new(
                "api_observer_layer_log_lines_skipped_total",
                "Access-log lines not reconciled, by reason.",
            ),
            &["reason"],
        )?;
        let lines = IntCounter::new(
            "api_observer_layer_log_lines_total",
            "Access-log lines read.",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "api_observer_layer_dropped_total",
                "Exchanges or log lines not counted: a bound on windows or keys was reached, \
                 or their window was already reconciled.",
            ),
            &["side"],
        )?;
        registry.register(Box::new(disagreement.clone()))?;
        registry.register(Box::new(skipped.clone()))?;
        registry.register(Box::new(lines.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        for kind in ["missing_from_log", "not_seen_by_kernel"] {
            disagreement.with_label_values(&["access_log", kind]);
        }
        Ok(Self {
            disagreement,
            skipped,
            lines,
            dropped,
        })
    }
}

/// The shared tallies: the pipeline adds exchanges, the follower thread adds lines and
/// reconciles, the API reads.
pub struct Layers {
    logs: Vec<LogState>,
    window: u64,
    grace: u64,
    /// Windows starting before this are reconciled (or predate the agent).
    reconciled_until: u64,
    metrics: LayerMetrics,
    /// Reused for the key of each exchange.
    key: String,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Layers {
    pub fn new(config: &LayersConfig, metrics: LayerMetrics, now: SystemTime) -> Self {
        let window = config.window_secs();
        Self {
            logs: config
                .access_logs
                .iter()
                .map(|c| LogState {
                    config: c.clone(),
                    kernel: Tally::default(),
                    log: Tally::default(),
                    lines_read: 0,
                    skipped: BTreeMap::new(),
                    missing_from_log: 0,
                    not_seen_by_kernel: 0,
                    recent: VecDeque::new(),
                })
                .collect(),
            window,
            grace: config.grace_secs(),
            // The window the agent starts in is the first compared, from its start on.
            reconciled_until: unix(now) / window * window,
            metrics,
            key: String::new(),
        }
    }

    fn window_of(&self, secs: u64) -> u64 {
        secs / self.window * self.window
    }

    /// Count a server exchange (by when its response went out: when the server logs it).
    pub fn observe(&mut self, ex: &Exchange) {
        if ex.role != crate::exchange::Role::Server {
            return;
        }
        let secs = unix(ex.started_at + ex.latency);
        let window = self.window_of(secs);
        self.key.clear();
        ex.route.write_key(&mut self.key);
        self.key.push(' ');
        push_u16(&mut self.key, ex.status);
        let port = ex.server.port();
        let late = window < self.reconciled_until;
        for log in &mut self.logs {
            if log.config.port.is_some_and(|p| p != port) {
                continue;
            }
            if late || !log.kernel.add(window, &self.key) {
                self.metrics.dropped.with_label_values(&["kernel"]).inc();
            }
        }
    }

    /// Count what a follower read from log `i`.
    pub fn add_lines(&mut self, i: usize, lines: Vec<Result<LogEntry, Skip>>) {
        let window = self.window;
        let until = self.reconciled_until;
        let Some(log) = self.logs.get_mut(i) else {
            return;
        };
        for line in lines {
            log.lines_read += 1;
            self.metrics.lines.inc();
            let skip = match line {
                Ok(e) => {
                    let w = e.time / window * window;
                    if w < until {
                        Some(Skip::Late)
                    } else {
                        let key = format!("{} {}", e.route, e.status);
                        (!log.log.add(w, &key)).then_some(Skip::Full)
                    }
                }
                Err(s) => Some(s),
            };
            if let Some(s) = skip {
                *log.skipped.entry(s.as_str()).or_default() += 1;
                self.metrics.skipped.with_label_values(&[s.as_str()]).inc();
            }
        }
    }

    /// Compare every window that ended at least the grace period before `now`.
    pub fn reconcile(&mut self, now: SystemTime) {
        let now = unix(now);
        let Some(ready_end) = now.checked_sub(self.grace) else {
            return;
        };
        // Windows [w, w + window) with w + window <= ready_end.
        let until = self.window_of(ready_end);
        if until <= self.reconciled_until {
            return;
        }
        for log in &mut self.logs {
            let starts: std::collections::BTreeSet<u64> = log
                .kernel
                .windows
                .range(..until)
                .chain(log.log.windows.range(..until))
                .map(|(w, _)| *w)
                .collect();
            for w in starts {
                let report = compare(w, w + self.window, log.kernel.take(w), log.log.take(w));
                log.missing_from_log += report.missing_from_log;
                log.not_seen_by_kernel += report.not_seen_by_kernel;
                self.metrics
                    .disagreement
                    .with_label_values(&["access_log", "missing_from_log"])
                    .inc_by(report.missing_from_log);
                self.metrics
                    .disagreement
                    .with_label_values(&["access_log", "not_seen_by_kernel"])
                    .inc_by(report.not_seen_by_kernel);
                if log.recent.len() == RECENT_WINDOWS {
                    log.recent.pop_front();
                }
                log.recent.push_back(report);
            }
        }
        self.reconciled_until = until;
    }

    /// `GET /api/layers`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "window_secs": self.window,
            "grace_secs": self.grace,
            "reconciled_until": self.reconciled_until,
            "access_logs": self.logs.iter().map(|l| serde_json::json!({
                "path": l.config.path,
                "format": l.config.format,
                "port": l.config.port,
                "lines_read": l.lines_read,
                "lines_skipped": l.skipped,
                "missing_from_log": l.missing_from_log,
                "not_seen_by_kernel": l.not_seen_by_kernel,
                "windows": l.recent.iter().rev().collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// A status code as text, without formatting machinery (per exchange).
fn push_u16(out: &mut String, n: u16) {
    if n >= 10 {
        push_u16(out, n / 10);
    }
    out.push(char::from(b'0' + (n % 10) as u8));
}

/// How often the follower thread reads the logs.
const POLL: Duration = Duration::from_millis(200);

/// Follow every configured log on a thread of its own (file reads never hold up the
/// pipeline); reconcile each `interval_secs`. Returns `None` when no log is configured.
pub fn start(
    config: &LayersConfig,
    registry: &Registry,
    routes: RoutePatterns,
) -> anyhow::Result<Option<Arc<Mutex<Layers>>>> {
    if config.access_logs.is_empty() {
        return Ok(None);
    }
    let metrics = LayerMetrics::register(registry)?;
    let layers = Arc::new(Mutex::new(Layers::new(config, metrics, SystemTime::now())));
    let shared = Arc::clone(&layers);
    let logs = config.access_logs.clone();
    let interval = Duration::from_secs(config.interval_secs);
    std::thread::Builder::new()
        .name("layers".into())
        .spawn(move || {
            let mut followers: Vec<_> = logs
                .iter()
                .map(|l| follow::Follower::new(l.path.clone()))
                .collect();
            let mut last = std::time::Instant::now();
            // Ends with the process; holds nothing to release.
            loop {
                for (i, (f, conf)) in followers.iter_mut().zip(&logs).enumerate() {
                    let mut read = Vec::new();
                    let polled = f.poll(&mut |line| {
                        read.push(match line {
                            Some(l) => parse::parse_line(conf.format, &conf.fields, &routes, l),
                            None => Err(Skip::TooLong),
                        })
                    });
                    if let Err(e) = polled {
                        tracing::debug!("layers: reading {}: {e}", conf.path.display());
                    }
                    if !read.is_empty() {
                        lock(&shared).add_lines(i, read);
                    }
                }
                if last.elapsed() >= interval {
                    last = std::time::Instant::now();
                    lock(&shared).reconcile(SystemTime::now());
                }
                std::thread::sleep(POLL);
            }
        })?;
    Ok(Some(layers))
}

pub fn lock(layers: &Mutex<Layers>) -> std::sync::MutexGuard<'_, Layers> {
    layers.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn compare_counts_both_ways_exactly() {
        let r = compare(
            60,
            120,
            counts(&[("GET /a 200", 10), ("GET /b 404", 3), ("POST /c 201", 2)]),
            counts(&[("GET /a 200", 7), ("GET /b 404", 3), ("GET /d/{id} 200", 4)]),
        );
        assert_eq!(r.missing_from_log, 3 + 2);
        assert_eq!(r.not_seen_by_kernel, 4);
        let rows: Vec<_> = r
            .rows
            .iter()
            .map(|r| (r.route.as_str(), r.status, r.kernel, r.log))
            .collect();
        assert_eq!(
            rows,
            [
                ("GET /a", 200, 10, 7),
                ("GET /b", 404, 3, 3),
                ("GET /d/{id}", 200, 0, 4),
                ("POST /c", 201, 2, 0),
            ]
        );
    }

    fn layers(interval: u64, start: u64) -> Layers {
        let config = LayersConfig {
            access_logs: vec![AccessLogConfig {
                path: "/x".into(),
                format: LogFormat::Combined,
                port: Some(8080),
                fields: JsonFields::default(),
            }],
            interval_secs: interval,
        };
        let metrics = LayerMetrics::register(&Registry::new()).unwrap();
        Layers::new(&config, metrics, at(start))
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn entry(route: &str, status: u16, time: u64) -> Result<LogEntry, Skip> {
        Ok(LogEntry {
            route: route.into(),
            status,
            time,
        })
    }

    #[test]
    fn windows_are_compared_once_complete_and_late_lines_are_skipped() {
        let mut l = layers(60, 6000);
        {
            let log = &mut l.logs[0];
            for _ in 0..5 {
                log.kernel.add(6000, "GET /a 200");
            }
            log.kernel.add(6060, "GET /a 200");
        }
        l.add_lines(
            0,
            vec![
                entry("GET /a", 200, 6001),
                entry("GET /a", 200, 6059),
                entry("GET /z", 500, 6030),
                entry("GET /a", 200, 5999),
                Err(Skip::Json),
            ],
        );
        // Window [6000, 6060) ends at 6060, grace 120: not before 6180.
        l.reconcile(at(6179));
        assert!(l.logs[0].recent.is_empty());
        l.reconcile(at(6180));
        let log = &l.logs[0];
        assert_eq!(log.recent.len(), 1);
        assert_eq!(log.missing_from_log, 3);
        assert_eq!(log.not_seen_by_kernel, 1);
        assert_eq!(log.lines_read, 5);
        assert_eq!(log.skipped.get("late"), Some(&1));
        assert_eq!(log.skipped.get("json"), Some(&1));
        assert_eq!(
            l.metrics
                .disagreement
                .with_label_values(&["access_log", "missing_from_log"])
                .get(),
            3
        );
        // A line for the reconciled window is late now.
        l.add_lines(0, vec![entry("GET /a", 200, 6010)]);
        assert_eq!(l.logs[0].skipped.get("late"), Some(&2));
        l.reconcile(at(6240));
        assert_eq!(l.logs[0].missing_from_log, 4);
        let status = l.status();
        assert_eq!(status["access_logs"][0]["windows"][0]["start"], 6060);
        assert_eq!(status["access_logs"][0]["lines_skipped"]["late"], 2);
    }

    #[test]
    fn tallies_are_bounded() {
        let mut t = Tally::default();
        for i in 0..MAX_KEYS {
            assert!(t.add(0, &format!("GET /{i} 200")));
        }
        assert!(!t.add(0, "GET /new 200"));
        assert!(t.add(0, "GET /0 200"));
        for w in 1..MAX_WINDOWS as u64 {
            assert!(t.add(w, "GET / 200"));
        }
        assert!(!t.add(MAX_WINDOWS as u64, "GET / 200"));
    }

    #[test]
    fn status_digits() {
        let mut s = String::new();
        for n in [0, 7, 200, 404, 65535] {
            s.clear();
            push_u16(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }
}
