//! What `GET /api/downstream` shows: attribution, per-protocol counts, per-route work per
//! request, and the bounded tables of statement fingerprints and targets.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use serde_json::{json, Value};

use super::{Protocol, Record, Summary};

/// Most routes, fingerprints and targets kept (later ones are counted as `other`).
const MAX_ROUTES: usize = 500;
const MAX_FINGERPRINTS: usize = 1000;
const MAX_TARGETS: usize = 256;

#[derive(Default)]
struct Tally {
    calls: u64,
    errors: u64,
    nanos: u64,
}

/// A target: the DNS name it was resolved from (when known) and its calls.
#[derive(Default)]
struct Target {
    name: Option<Arc<str>>,
    tally: Tally,
}

#[derive(Default)]
struct RouteWork {
    requests: u64,
    calls: [u64; 5],
}

/// The agent-wide downstream tallies since start.
#[derive(Default)]
pub struct DownstreamStats {
    calls: u64,
    attributed: u64,
    by_protocol: [(u64, u64, u64); 5],
    unattributed: HashMap<&'static str, u64>,
    routes: crate::session::window::FastMap<Arc<str>, RouteWork>,
    fingerprints: HashMap<(Protocol, String), Tally>,
    targets: HashMap<(Protocol, SocketAddr), Target>,
    /// Fingerprints, targets and routes not kept (the tables were full).
    other: u64,
    /// Reused buffer for route keys (no allocation per request).
    key: String,
}

impl DownstreamStats {
    pub fn record(&mut self, r: &Record) {
        let c = &r.call;
        let i = c.protocol.index();
        self.calls += 1;
        let p = &mut self.by_protocol[i];
        p.0 += 1;
        match r.attributed {
            Ok(()) => {
                self.attributed += 1;
                p.1 += 1;
            }
            Err(why) => *self.unattributed.entry(why.as_str()).or_default() += 1,
        }
        let failed = u64::from(c.error.is_some());
        p.2 += failed;
        let nanos = c.ended_ns.saturating_sub(c.started_ns);
        if let Some(fp) = &c.fingerprint {
            let key = (c.protocol, fp.clone());
            if self.fingerprints.len() < MAX_FINGERPRINTS || self.fingerprints.contains_key(&key) {
                let t = self.fingerprints.entry(key).or_default();
                t.calls += 1;
                t.errors += failed;
                t.nanos += nanos;
            } else {
                self.other += 1;
            }
        }
        if let Some(addr) = r.target {
            let key = (c.protocol, addr);
            if self.targets.len() < MAX_TARGETS || self.targets.contains_key(&key) {
                let target = self.targets.entry(key).or_default();
                if r.target_name.is_some() {
                    target.name.clone_from(&r.target_name);
                }
                let t = &mut target.tally;
                t.calls += 1;
                t.errors += failed;
                t.nanos += nanos;
            } else {
                self.other += 1;
            }
        }
    }

    /// A server request on route (`method`, `path` template) and the downstream work it
    /// caused (`None`: none).
    pub fn request(&mut self, method: &str, path: &str, work: Option<&Summary>) {
        self.key.clear();
        self.key.push_str(method);
        self.key.push(' ');
        self.key.push_str(path);
        if !self.routes.contains_key(self.key.as_str()) {
            if self.routes.len() >= MAX_ROUTES {
                self.other += 1;
                return;
            }
            self.routes
                .insert(Arc::from(self.key.as_str()), RouteWork::default());
        }
        let Some(w) = self.routes.get_mut(self.key.as_str()) else {
            return;
        };
        w.requests += 1;
        if let Some(s) = work {
            for (a, b) in w.calls.iter_mut().zip(s.calls) {
                *a += b;
            }
        }
    }

    pub fn json(&self) -> Value {
        let rate = if self.calls == 0 {
            Value::Null
        } else {
            json!(self.attributed as f64 / self.calls as f64)
        };
        let by_protocol: serde_json::Map<String, Value> = Protocol::ALL
            .iter()
            .filter(|p| self.by_protocol[p.index()].0 > 0)
            .map(|p| {
                let (calls, attributed, errors) = self.by_protocol[p.index()];
                (
                    p.as_str().to_string(),
                    json!({"calls": calls, "attributed": attributed, "errors": errors}),
                )
            })
            .collect();
        let mut routes: Vec<(&Arc<str>, &RouteWork)> =
            self.routes.iter().filter(|(_, w)| w.requests > 0).collect();
        routes.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(b.0)));
        let routes: Vec<Value> = routes
            .into_iter()
            .map(|(route, w)| {
                let per: serde_json::Map<String, Value> = Protocol::ALL
                    .iter()
                    .filter(|p| w.calls[p.index()] > 0)
                    .map(|p| {
                        (
                            p.as_str().to_string(),
                            json!(w.calls[p.index()] as f64 / w.requests as f64),
                        )
                    })
                    .collect();
                json!({"route": &**route, "requests": w.requests, "per_request": per})
            })
            .collect();
        let mut fps: Vec<_> = self.fingerprints.iter().collect();
        fps.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then(a.0.cmp(b.0)));
        let fingerprints: Vec<Value> = fps
            .into_iter()
            .map(|((p, fp), t)| {
                json!({
                    "protocol": p.as_str(), "fingerprint": fp, "calls": t.calls,
                    "errors": t.errors, "mean_ms": t.nanos as f64 / t.calls.max(1) as f64 / 1e6,
                })
            })
            .collect();
        let mut targets: Vec<_> = self.targets.iter().collect();
        targets.sort_by(|a, b| b.1.tally.calls.cmp(&a.1.tally.calls).then(a.0.cmp(b.0)));
        let targets: Vec<Value> = targets
            .into_iter()
            .map(|((p, addr), target)| {
                let t = &target.tally;
                json!({
                    "protocol": p.as_str(), "address": addr.to_string(),
                    "dns_name": target.name.as_deref(), "calls": t.calls, "errors": t.errors,
                    "mean_ms": t.nanos as f64 / t.calls.max(1) as f64 / 1e6,
                })
            })
            .collect();
        json!({
            "calls": self.calls,
            "attributed": self.attributed,
            "attribution_rate": rate,
            "unattributed": self.unattributed,
            "by_protocol": by_protocol,
            "routes": routes,
            "fingerprints": fingerprints,
            "targets": targets,
            "not_kept": self.other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::downstream::{Call, ErrorClass, Unattributed};

    fn record(protocol: Protocol, fp: &str, attributed: bool, error: bool) -> Record {
        Record {
            call: Call {
                protocol,
                operation: "SELECT".into(),
                fingerprint: Some(fp.into()),
                dns_name: None,
                answers: Vec::new(),
                started_ns: 1_000_000,
                ended_ns: 3_000_000,
                error: error.then_some(ErrorClass::Permission),
            },
            target: Some("127.0.0.1:5432".parse().unwrap()),
            target_name: Some(Arc::from("db.internal")),
            attributed: if attributed {
                Ok(())
            } else {
                Err(Unattributed::SharedThread)
            },
        }
    }

    #[test]
    fn attribution_routes_fingerprints_and_targets() {
        let mut s = DownstreamStats::default();
        let fp = "SELECT v FROM t WHERE id = ?";
        s.record(&record(Protocol::Postgres, fp, true, false));
        s.record(&record(Protocol::Postgres, fp, true, true));
        s.record(&record(Protocol::Postgres, fp, false, false));
        s.record(&record(Protocol::Redis, "GET ?", true, false));
        let mut work = Summary::default();
        work.calls[Protocol::Postgres.index()] = 3;
        s.request("GET", "/items/{id}", Some(&work));
        s.request("GET", "/items/{id}", None);
        let j = s.json();
        assert_eq!(j["calls"], 4);
        assert_eq!(j["attributed"], 3);
        assert_eq!(j["attribution_rate"], 0.75);
        assert_eq!(j["unattributed"]["shared_thread"], 1);
        assert_eq!(
            j["by_protocol"]["postgres"],
            json!({"calls": 3, "attributed": 2, "errors": 1})
        );
        assert_eq!(
            j["routes"][0],
            json!({"route": "GET /items/{id}", "requests": 2, "per_request": {"postgres": 1.5}})
        );
        assert_eq!(j["fingerprints"][0]["fingerprint"], fp);
        assert_eq!(j["fingerprints"][0]["calls"], 3);
        assert_eq!(j["fingerprints"][0]["mean_ms"], 2.0);
        assert_eq!(j["targets"][0]["dns_name"], "db.internal");
        assert_eq!(j["targets"][0]["calls"], 3);
    }

    #[test]
    fn nothing_seen_has_no_rate() {
        assert_eq!(
            DownstreamStats::default().json()["attribution_rate"],
            Value::Null
        );
    }
}
