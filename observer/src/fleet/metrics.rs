//! The fleet's own metrics (`api_observer_fleet_*`). The fleet-wide gauges exist only
//! on the agent holding the lease, so the fleet is not counted once per node.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::score::HealthState;

/// Store operations whose failures are counted.
pub const OPS: [&str; 6] = ["connect", "publish", "read", "freeze", "lease", "subscribe"];

#[derive(Clone)]
pub struct FleetMetrics {
    pub up: IntGauge,
    pub errors: IntCounterVec,
    pub published: IntCounter,
    pub skipped: IntCounterVec,
    pub leader: IntGauge,
    /// Leader only: fleet-wide live sessions by state.
    pub sessions: IntGaugeVec,
    /// Leader only: nodes that published within the retention (no labels; a vector so
    /// the series can be removed when the lease is lost).
    pub nodes: IntGaugeVec,
}

impl FleetMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            up: IntGauge::new(
                "api_observer_fleet_up",
                "1 when the last fleet store operation succeeded, else 0.",
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "api_observer_fleet_errors_total",
                    "Failed fleet store operations, by operation.",
                ),
                &["op"],
            )?,
            published: IntCounter::new(
                "api_observer_fleet_published_total",
                "Session entries this agent wrote to the fleet store.",
            )?,
            skipped: IntCounterVec::new(
                Opts::new(
                    "api_observer_fleet_entries_skipped_total",
                    "Fleet entries read back and not used, by reason (malformed, other_version).",
                ),
                &["reason"],
            )?,
            leader: IntGauge::new(
                "api_observer_fleet_leader",
                "1 on the agent holding the fleet lease (it exports the fleet-wide gauges).",
            )?,
            sessions: IntGaugeVec::new(
                Opts::new(
                    "api_observer_fleet_sessions",
                    "Fleet-wide live sessions by state (exported by the lease holder only).",
                ),
                &["state"],
            )?,
            nodes: IntGaugeVec::new(
                Opts::new(
                    "api_observer_fleet_nodes",
                    "Nodes that published within the retention (exported by the lease holder only).",
                ),
                &[],
            )?,
        };
        registry.register(Box::new(m.up.clone()))?;
        registry.register(Box::new(m.errors.clone()))?;
        registry.register(Box::new(m.published.clone()))?;
        registry.register(Box::new(m.skipped.clone()))?;
        registry.register(Box::new(m.leader.clone()))?;
        registry.register(Box::new(m.sessions.clone()))?;
        registry.register(Box::new(m.nodes.clone()))?;
        for op in OPS {
            m.errors.with_label_values(&[op]);
        }
        for r in ["malformed", "other_version"] {
            m.skipped.with_label_values(&[r]);
        }
        Ok(m)
    }

    /// A store operation failed.
    pub fn failed(&self, op: &str) {
        self.errors.with_label_values(&[op]).inc();
        self.up.set(0);
    }

    pub fn ok(&self) {
        self.up.set(1);
    }

    /// Holding the lease: set the fleet-wide gauges.
    pub fn lead(&self, by_state: [(HealthState, i64); 3], nodes: i64) {
        self.leader.set(1);
        for (state, n) in by_state {
            self.sessions.with_label_values(&[state.as_str()]).set(n);
        }
        self.nodes.with_label_values(&[]).set(nodes);
    }

    /// Not (or no longer) holding the lease: the fleet-wide series go away.
    pub fn follow(&self) {
        self.leader.set(0);
        self.sessions.reset();
        self.nodes.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(r: &Registry) -> Vec<String> {
        r.gather()
            .iter()
            .filter(|f| !f.get_metric().is_empty())
            .map(|f| f.get_name().to_string())
            .collect()
    }

    #[test]
    fn fleet_gauges_only_while_leading() {
        let r = Registry::new();
        let m = FleetMetrics::register(&r).unwrap();
        let n = names(&r);
        assert!(n.contains(&"api_observer_fleet_errors_total".to_string()));
        assert!(!n.contains(&"api_observer_fleet_sessions".to_string()));
        assert_eq!(
            r.gather()
                .iter()
                .find(|f| f.get_name() == "api_observer_fleet_errors_total")
                .unwrap()
                .get_metric()
                .len(),
            OPS.len()
        );
        m.lead(
            [
                (HealthState::Healthy, 5),
                (HealthState::Suspicious, 1),
                (HealthState::Unhealthy, 2),
            ],
            3,
        );
        let n = names(&r);
        assert!(n.contains(&"api_observer_fleet_sessions".to_string()));
        assert!(n.contains(&"api_observer_fleet_nodes".to_string()));
        assert_eq!(m.leader.get(), 1);
        m.follow();
        let n = names(&r);
        assert!(!n.contains(&"api_observer_fleet_sessions".to_string()));
        assert!(!n.contains(&"api_observer_fleet_nodes".to_string()));
        assert_eq!(m.leader.get(), 0);
        m.failed("publish");
        assert_eq!(m.up.get(), 0);
    }
}
