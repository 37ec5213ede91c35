//! Prometheus series of the session table, registered on a given registry.
//!
//! - `api_observer_sessions{state,direction}`: sessions per state and direction.
//! - `api_observer_session_signals_total{signal}`: times a signal became active.
//! - `api_observer_session_health_score{session}`: score of the K riskiest sessions only
//!   (by session id: a fingerprint, never a raw identity); stale series are removed.
//! - `api_observer_session_evictions_total`: sessions dropped (idle TTL or table size).
//! - `api_observer_findings{finding}`: hosts/routes with a finding (plaintext credentials,
//!   credentials in query strings).
//! - `api_observer_session_tier_usage_ratio{session,tier}`: use against the access tier
//!   (the larger of rate and daily quota ratios) of the K largest consumers only.
//! - `api_observer_session_capture_completeness{session}`: share of exchanges seen whole
//!   of the K least completely captured sessions (those that lost any), and
//!   `api_observer_sessions_incomplete`: how many sessions lost any.

use std::collections::{BTreeMap, HashSet};

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::score::{HealthState, Reason};

use super::{findings::FindingKind, Direction, SessionTable};

/// The session table's series. Call [`SessionMetrics::update`] after each scoring pass.
pub struct SessionMetrics {
    sessions: IntGaugeVec,
    signals: IntCounterVec,
    health: GaugeVec,
    evictions: IntCounter,
    findings: IntGaugeVec,
    tier_usage: GaugeVec,
    completeness: GaugeVec,
    incomplete: prometheus::IntGauge,
    exported_completeness: HashSet<String>,
    top_k: usize,
    exported: HashSet<String>,
    exported_usage: HashSet<(String, String)>,
    last_signals: BTreeMap<Reason, u64>,
    last_evictions: u64,
}

impl SessionMetrics {
    pub fn new(registry: &Registry, top_k: usize) -> prometheus::Result<Self> {
        let sessions = IntGaugeVec::new(
            Opts::new(
                "api_observer_sessions",
                "Sessions by health state and direction.",
            ),
            &["state", "direction"],
        )?;
        let signals = IntCounterVec::new(
            Opts::new(
                "api_observer_session_signals_total",
                "Times a health signal became active on a session.",
            ),
            &["signal"],
        )?;
        let health = GaugeVec::new(
            Opts::new(
                "api_observer_session_health_score",
                "Health score (100 healthy .. 0) of the riskiest sessions.",
            ),
            &["session"],
        )?;
        let evictions = IntCounter::new(
            "api_observer_session_evictions_total",
            "Sessions dropped for idleness or to bound the table.",
        )?;
        let findings = IntGaugeVec::new(
            Opts::new(
                "api_observer_findings",
                "Host/route pairs with a finding about the API or its transport.",
            ),
            &["finding"],
        )?;
        let tier_usage = GaugeVec::new(
            Opts::new(
                "api_observer_session_tier_usage_ratio",
                "Use against the access tier (rate or daily quota, the larger; 1 = at the limit) of the largest consumers.",
            ),
            &["session", "tier"],
        )?;
        let completeness = GaugeVec::new(
            Opts::new(
                "api_observer_session_capture_completeness",
                "Share of a session's exchanges seen whole (records lost make it less than 1), for the least complete sessions.",
            ),
            &["session"],
        )?;
        let incomplete = prometheus::IntGauge::new(
            "api_observer_sessions_incomplete",
            "Sessions with exchanges that were not seen whole (records lost).",
        )?;
        registry.register(Box::new(completeness.clone()))?;
        registry.register(Box::new(incomplete.clone()))?;
        registry.register(Box::new(findings.clone()))?;
        registry.register(Box::new(tier_usage.clone()))?;
        for f in FindingKind::ALL {
            findings.with_label_values(&[f.as_str()]);
        }
        registry.register(Box::new(sessions.clone()))?;
        registry.register(Box::new(signals.clone()))?;
        registry.register(Box::new(health.clone()))?;
        registry.register(Box::new(evictions.clone()))?;
        for r in Reason::ALL {
            signals.with_label_values(&[r.as_str()]);
        }
        for st in HealthState::ALL {
            for d in Direction::ALL {
                sessions.with_label_values(&[st.as_str(), d.as_str()]);
            }
        }
        Ok(Self {
            sessions,
            signals,
            health,
            evictions,
            findings,
            tier_usage,
            completeness,
            incomplete,
            exported_completeness: HashSet::new(),
            top_k,
            exported: HashSet::new(),
            exported_usage: HashSet::new(),
            last_signals: BTreeMap::new(),
            last_evictions: 0,
        })
    }

    /// Bring the series up to date with the table.
    pub fn update(&mut self, table: &SessionTable) {
        for f in FindingKind::ALL {
            self.findings
                .with_label_values(&[f.as_str()])
                .set(table.findings().count(f) as i64);
        }
        let digest = table.digest(self.top_k);
        let usage = digest.top_consumers;
        let now: HashSet<(String, String)> = usage
            .iter()
            .map(|(id, t, _)| (id.clone(), t.clone()))
            .collect();
        for (id, tier) in self.exported_usage.difference(&now) {
            let _ = self.tier_usage.remove_label_values(&[id, tier]);
        }
        for (id, tier, ratio) in &usage {
            self.tier_usage.with_label_values(&[id, tier]).set(*ratio);
        }
        self.exported_usage = now;
        let (least, n) = digest.least_complete;
        self.incomplete.set(n as i64);
        let now: HashSet<String> = least.iter().map(|(id, _)| id.clone()).collect();
        for stale in self.exported_completeness.difference(&now) {
            let _ = self.completeness.remove_label_values(&[stale]);
        }
        for (id, share) in &least {
            self.completeness.with_label_values(&[id]).set(*share);
        }
        self.exported_completeness = now;
        let counts = digest.state_counts;
        for st in HealthState::ALL {
            for d in Direction::ALL {
                let n = counts.get(&(st, d)).copied().unwrap_or(0);
                self.sessions
                    .with_label_values(&[st.as_str(), d.as_str()])
                    .set(n as i64);
            }
        }
        let c = table.counters();
        for (r, n) in &c.signals {
            let last = self.last_signals.entry(*r).or_default();
            if *n > *last {
                self.signals
                    .with_label_values(&[r.as_str()])
                    .inc_by(*n - *last);
                *last = *n;
            }
        }
        let ev = c.evictions();
        if ev > self.last_evictions {
            self.evictions.inc_by(ev - self.last_evictions);
            self.last_evictions = ev;
        }
        let top = digest.riskiest;
        let now: HashSet<String> = top.iter().map(|(id, _)| id.clone()).collect();
        for stale in self.exported.difference(&now) {
            let _ = self.health.remove_label_values(&[stale]);
        }
        for (id, score) in &top {
            self.health.with_label_values(&[id]).set(f64::from(*score));
        }
        self.exported = now;
    }
}

#[cfg(test)]
mod tests {
    use prometheus::{Encoder as _, TextEncoder};

    use super::*;
    use crate::{
        identity::FingerprintKey,
        session::{
            testutil::{at, ExchangeBuilder},
            SessionTableConfig,
        },
    };

    fn text(reg: &Registry) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&reg.gather(), &mut buf).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn series_follow_the_table() {
        let reg = Registry::new();
        let mut m = SessionMetrics::new(&reg, 1).unwrap();
        let mut cfg = SessionTableConfig::default();
        cfg.sessions.max_sessions = 3;
        let mut t = SessionTable::new(cfg, FingerprintKey::random().unwrap());
        // Two risky sessions (credential in the query), one healthy.
        t.observe(
            &ExchangeBuilder::new().query("api_key=CANARY-A").build(),
            at(0.0),
        );
        t.observe(
            &ExchangeBuilder::new()
                .query("api_key=CANARY-B")
                .tls(false)
                .at(1.0)
                .build(),
            at(1.0),
        );
        t.observe(
            &ExchangeBuilder::new().bearer("CANARY-C").at(2.0).build(),
            at(2.0),
        );
        t.score(at(3.0));
        m.update(&t);
        let out = text(&reg);
        assert!(
            // One healthy session, and the two healthy views across the three
            // credentials (their network, their route).
            out.contains(r#"api_observer_sessions{direction="inbound",state="healthy"} 3"#),
            "{out}"
        );
        assert!(out.contains(r#"api_observer_sessions{direction="inbound",state="suspicious"} 2"#));
        assert!(out.contains(r#"api_observer_sessions{direction="inbound",state="unhealthy"} 0"#));
        assert!(
            out.contains(r#"api_observer_session_signals_total{signal="credential_in_query"} 2"#)
        );
        assert!(
            out.contains(r#"api_observer_session_signals_total{signal="plaintext_credential"} 1"#)
        );
        assert!(out.contains(r#"api_observer_session_signals_total{signal="enumeration"} 0"#));
        // Top-1: the worst session only.
        assert_eq!(out.matches("api_observer_session_health_score{").count(), 1);
        assert!(out.contains("} 50"), "{out}");
        assert!(!out.contains("CANARY"));

        // A fourth session evicts one; the worst session's series goes when it expires.
        t.observe(&ExchangeBuilder::new().bearer("D").at(4.0).build(), at(4.0));
        assert_eq!(t.expire(at(4000.0)), 3);
        t.score(at(4000.0));
        m.update(&t);
        let out = text(&reg);
        assert!(
            out.contains("api_observer_session_evictions_total 4"),
            "{out}"
        );
        assert_eq!(out.matches("api_observer_session_health_score{").count(), 0);
        // Signal counters do not double count on later passes.
        assert!(
            out.contains(r#"api_observer_session_signals_total{signal="credential_in_query"} 2"#)
        );
    }

    #[test]
    fn registers_on_given_registry_only_once() {
        let reg = Registry::new();
        let _m = SessionMetrics::new(&reg, 5).unwrap();
        assert!(SessionMetrics::new(&reg, 5).is_err());
        assert!(SessionMetrics::new(&Registry::new(), 5).is_ok());
    }
}
