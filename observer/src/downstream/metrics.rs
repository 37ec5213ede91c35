//! The downstream metrics: calls by protocol and attribution, errors by class, latency,
//! skipped bytes by reason, and the attribution rate.

use prometheus::{Gauge, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use super::{Protocol, Record, Skip};

#[derive(Clone)]
pub struct DownstreamMetrics {
    calls: IntCounterVec,
    unattributed: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    skipped: IntCounterVec,
    ratio: Gauge,
    attributed: u64,
    total: u64,
}

impl DownstreamMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let calls = IntCounterVec::new(
            Opts::new(
                "api_observer_downstream_calls_total",
                "Downstream calls (DNS, databases, caches, HTTP) the traced processes made, \
                 by protocol and whether they were attributed to the request being served.",
            ),
            &["protocol", "attributed"],
        )?;
        let unattributed = IntCounterVec::new(
            Opts::new(
                "api_observer_downstream_unattributed_total",
                "Downstream calls not attributed to a request, by reason (no_request: the \
                 thread served none; shared_thread: the thread serves several connections at \
                 once; no_response; overflow).",
            ),
            &["protocol", "reason"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "api_observer_downstream_errors_total",
                "Downstream calls that failed, by protocol and class (auth, permission, \
                 statement, not_found, server).",
            ),
            &["protocol", "class"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "api_observer_downstream_duration_seconds",
                "Downstream call latency, from the request's first byte sent to its \
                 response's last byte read.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ]),
            &["protocol"],
        )?;
        let skipped = IntCounterVec::new(
            Opts::new(
                "api_observer_downstream_skipped_total",
                "Downstream protocol messages skipped, by protocol and reason (malformed, \
                 truncated, unknown_message, unmatched, lost, encrypted).",
            ),
            &["protocol", "reason"],
        )?;
        let ratio = Gauge::new(
            "api_observer_downstream_attribution_ratio",
            "Share of downstream calls attributed to a request since the agent started.",
        )?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(unattributed.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(skipped.clone()))?;
        registry.register(Box::new(ratio.clone()))?;
        Ok(Self {
            calls,
            unattributed,
            errors,
            duration,
            skipped,
            ratio,
            attributed: 0,
            total: 0,
        })
    }

    pub fn observe(&mut self, r: &Record) {
        let protocol = r.call.protocol.as_str();
        let attributed = r.attributed.is_ok();
        self.calls
            .with_label_values(&[protocol, if attributed { "true" } else { "false" }])
            .inc();
        if let Err(why) = r.attributed {
            self.unattributed
                .with_label_values(&[protocol, why.as_str()])
                .inc();
        }
        if let Some(e) = r.call.error {
            self.errors.with_label_values(&[protocol, e.as_str()]).inc();
        }
        let secs = r.call.ended_ns.saturating_sub(r.call.started_ns) as f64 / 1e9;
        self.duration.with_label_values(&[protocol]).observe(secs);
        self.total += 1;
        self.attributed += u64::from(attributed);
        self.ratio.set(self.attributed as f64 / self.total as f64);
    }

    pub fn skip(&self, protocol: Protocol, why: Skip) {
        self.skipped
            .with_label_values(&[protocol.as_str(), why.as_str()])
            .inc();
    }
}
