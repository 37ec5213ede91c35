//! The audit stream: every call on the control channel (reads of session data, freezes,
//! unfreezes, lookups, purges, and refusals) as one JSON line: who, what, when. Never a
//! raw credential: a lookup records only that it happened and the fingerprints it matched.

use std::{
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{http::Method, response::Response};
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::json;

use super::jsonl::JsonLines;

/// A client certificate as the audit names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject's common name, when it has one.
    pub cn: Option<String>,
    /// SHA-256 of the certificate (DER), lowercase hex.
    pub sha256: String,
}

impl ClientCert {
    fn to_json(&self) -> serde_json::Value {
        json!({ "cn": self.cn, "sha256": self.sha256 })
    }
}

/// Who made an accepted request (kept in the request's extensions for the audit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A Unix socket peer by uid.
    Uid(u32),
    /// A TCP control client by the name of the token file it presented.
    Token(String),
    /// A mutual-TLS control client: the token file's name and its client certificate.
    TokenAndCert(String, ClientCert),
    /// Not (yet) identified: refused requests.
    Unknown(String),
    /// Fleet mode: a freeze or unfreeze made on another node (its name), applied here.
    Fleet(String),
}

impl Caller {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Caller::Uid(uid) => json!({ "uid": uid }),
            Caller::Token(name) => json!({ "token": name }),
            Caller::TokenAndCert(name, cert) => {
                json!({ "token": name, "client_cert": cert.to_json() })
            }
            Caller::Unknown(peer) => json!({ "unauthenticated": peer }),
            Caller::Fleet(node) => json!({ "fleet": node }),
        }
    }
}

/// Fingerprints a credential request matched, attached by its handler to the response.
#[derive(Clone, Debug, Default)]
pub struct AuditFingerprints(pub Vec<String>);

/// What a call did, by method and path.
pub fn action(method: &Method, path: &str) -> &'static str {
    let under = |prefix: &str| path.strip_prefix(prefix).is_some_and(|r| !r.is_empty());
    match (method.as_str(), path) {
        ("GET", "/api/sessions") => "list_sessions",
        ("GET", "/api/fleet/sessions") => "fleet_sessions",
        ("GET", _) if under("/api/sessions/") => "get_session",
        ("GET", "/api/findings") => "findings",
        ("GET", "/api/frozen") => "frozen_list",
        ("GET", "/privacy") => "privacy",
        ("GET", "/api/tls") => "tls_status",
        ("PUT", _) if under("/api/frozen/") => "freeze",
        ("DELETE", _) if under("/api/frozen/") => "unfreeze",
        ("POST", "/api/freeze") => "freeze",
        ("POST", "/api/unfreeze") => "unfreeze",
        ("POST", "/api/lookup") => "lookup",
        ("POST", "/api/purge") => "purge",
        _ => "other",
    }
}

/// Whether an action reads session data (counted in `reads_last_24h`).
pub fn is_read(action: &str) -> bool {
    matches!(
        action,
        "list_sessions" | "get_session" | "findings" | "frozen_list" | "privacy" | "fleet_sessions"
    )
}

const HOURS: usize = 24;

/// Reads per hour over the last day: a ring of (hour, count).
#[derive(Debug, Default)]
pub struct HourlyRing {
    slots: [(u64, u64); HOURS],
}

impl HourlyRing {
    pub fn add(&mut self, unix_secs: u64) {
        let hour = unix_secs / 3600;
        let slot = &mut self.slots[(hour % HOURS as u64) as usize];
        if slot.0 != hour {
            *slot = (hour, 0);
        }
        slot.1 += 1;
    }

    /// Reads in the current hour and the 23 before it.
    pub fn last_24h(&self, unix_secs: u64) -> u64 {
        let hour = unix_secs / 3600;
        self.slots
            .iter()
            .filter(|(h, _)| *h + HOURS as u64 > hour && *h <= hour)
            .map(|(_, n)| n)
            .sum()
    }
}

pub struct Audit {
    /// `None`: to the log.
    sink: Option<Mutex<JsonLines>>,
    events: IntCounterVec,
    reads: Mutex<HourlyRing>,
}

impl Audit {
    /// `target`: a file (appended to) or `-`; `None` writes to the log at info.
    pub fn new(target: Option<&str>, registry: &Registry) -> anyhow::Result<Self> {
        let events = IntCounterVec::new(
            Opts::new(
                "api_observer_audit_events_total",
                "Calls on the control channel, by action (refused: not allowed).",
            ),
            &["action"],
        )?;
        registry.register(Box::new(events.clone()))?;
        let sink = match target {
            Some(t) => Some(Mutex::new(JsonLines::open(t)?)),
            None => None,
        };
        Ok(Self {
            sink,
            events,
            reads: Mutex::new(HourlyRing::default()),
        })
    }

    pub fn record(&self, caller: &Caller, method: &Method, path: &str, response: &Response) {
        let status = response.status().as_u16();
        let refused = matches!(status, 401 | 403);
        let action = if refused {
            "refused"
        } else {
            action(method, path)
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        if is_read(action) {
            self.reads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add(now.as_secs());
        }
        self.events.with_label_values(&[action]).inc();
        let mut line = json!({
            "at": now.as_secs_f64(),
            "who": caller.to_json(),
            "action": action,
            "method": method.as_str(),
            "path": path,
            "status": status,
        });
        if let Some(fps) = response.extensions().get::<AuditFingerprints>() {
            line["fingerprints"] = json!(fps.0);
        }
        match &self.sink {
            Some(sink) => sink.lock().unwrap_or_else(|e| e.into_inner()).write(&line),
            None => tracing::info!(target: "observer::audit", "{line}"),
        }
    }

    /// Reads of session data in the last 24 hours.
    pub fn reads_last_24h(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_24h(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_by_route() {
        let get = Method::GET;
        assert_eq!(action(&get, "/api/sessions"), "list_sessions");
        assert_eq!(action(&get, "/api/sessions/tok_1"), "get_session");
        assert_eq!(action(&get, "/api/sessions/"), "other");
        assert_eq!(action(&Method::PUT, "/api/frozen/tok_1"), "freeze");
        assert_eq!(action(&Method::DELETE, "/api/frozen/tok_1"), "unfreeze");
        assert_eq!(action(&Method::POST, "/api/lookup"), "lookup");
        assert_eq!(action(&Method::POST, "/api/purge"), "purge");
        assert_eq!(action(&get, "/privacy"), "privacy");
        assert!(is_read("privacy") && is_read("frozen_list") && !is_read("lookup"));
    }

    #[test]
    fn hourly_ring_forgets_after_a_day() {
        let mut r = HourlyRing::default();
        let t0 = 1_700_000_000;
        r.add(t0);
        r.add(t0 + 10);
        r.add(t0 + 3600 * 5);
        assert_eq!(r.last_24h(t0 + 3600 * 5), 3);
        assert_eq!(r.last_24h(t0 + 3600 * 23), 3);
        // 24 hours later the first hour is out of the window.
        assert_eq!(r.last_24h(t0 + 3600 * 24), 1);
        // Its slot is reused, not added to.
        r.add(t0 + 3600 * 24);
        assert_eq!(r.last_24h(t0 + 3600 * 24), 2);
        assert_eq!(r.last_24h(t0 + 3600 * 60), 0);
    }

    #[test]
    fn records_to_a_file_without_credentials() {
        let dir = std::env::temp_dir().join(format!("observer-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("audit.jsonl");
        let registry = Registry::new();
        let audit = Audit::new(Some(file.to_str().unwrap()), &registry).unwrap();
        let ok = Response::new(axum::body::Body::empty());
        audit.record(&Caller::Uid(0), &Method::GET, "/api/sessions", &ok);
        let mut lookup = Response::new(axum::body::Body::empty());
        lookup
            .extensions_mut()
            .insert(AuditFingerprints(vec!["tok_aaaaaaaaaaaa".into()]));
        audit.record(
            &Caller::Token("ops".into()),
            &Method::POST,
            "/api/lookup",
            &lookup,
        );
        let mut denied = Response::new(axum::body::Body::empty());
        *denied.status_mut() = axum::http::StatusCode::FORBIDDEN;
        audit.record(&Caller::Uid(65534), &Method::GET, "/privacy", &denied);
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["who"]["uid"], 0);
        assert_eq!(lines[0]["action"], "list_sessions");
        assert_eq!(lines[1]["who"]["token"], "ops");
        assert_eq!(lines[1]["fingerprints"][0], "tok_aaaaaaaaaaaa");
        assert_eq!(lines[2]["action"], "refused");
        assert_eq!(audit.reads_last_24h(), 1);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(text.contains("api_observer_audit_events_total{action=\"lookup\"} 1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
