//! Capture health: records, bytes, drops by reason, connections, probes.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use observer_common::drop_reason;

use super::decode::{Direction, Event};
use crate::conn::ConnStats;

pub struct CaptureMetrics {
    pub events: IntCounterVec,
    pub bytes: IntCounterVec,
    pub dropped: IntCounterVec,
    pub connections: IntGauge,
    /// Connections whose protocol is not one the agent parses (followed no further).
    pub not_parsed: IntCounter,
    pub probes: IntGaugeVec,
    /// Gaps in followed connections (records that never reached the agent), the bytes in
    /// them, and the exchanges they cost.
    gaps: IntCounter,
    lost_bytes: IntCounter,
    /// Long body bytes the kernel counted without copying, as the agent asked.
    skipped_bytes: IntCounter,
    lost_exchanges: IntCounter,
    /// Connections forgotten after going idle (their close was not seen): not a loss.
    swept: IntCounter,
    /// Entries in the kernel's socket table, and those swept from it (closed unseen).
    pub kernel_sockets: IntGauge,
    pub kernel_sockets_swept: IntCounter,
    /// `dropped{reason="connection_evicted"}`, resolved once: folded in every batch.
    evicted: IntCounter,
    /// The connection table's counters as last folded in.
    conn_seen: ConnStats,
    kernel_seen: [u64; drop_reason::COUNT as usize],
    /// Per-record counters resolved once: no label hashing per kernel record.
    per_kind: [IntCounter; 6],
    ingress_bytes: IntCounter,
    egress_bytes: IntCounter,
}

impl CaptureMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let events = IntCounterVec::new(
            Opts::new(
                "api_observer_capture_events_total",
                "Kernel records received, by kind.",
            ),
            &["kind"],
        )?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "api_observer_capture_bytes_total",
                "Bytes moved through traced sockets, by direction (ingress = read by the traced process).",
            ),
            &["direction"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "api_observer_capture_dropped_total",
                "Records or connections lost, by reason (kernel ring buffer full, decode errors, table evictions).",
            ),
            &["reason"],
        )?;
        let connections = IntGauge::new(
            "api_observer_capture_connections",
            "Connections currently followed by the agent.",
        )?;
        let not_parsed = IntCounter::new(
            "api_observer_connections_not_parsed_total",
            "Connections not followed because their bytes are not a protocol the agent parses (TLS ciphertext without a hooked library, RTSP, database protocols, ...).",
        )?;
        let probes = IntGaugeVec::new(
            Opts::new(
                "api_observer_probe_attached",
                "1 when a kernel probe is attached, 0 when it failed (see the log for why).",
            ),
            &["attach_point"],
        )?;
        let gaps = IntCounter::new(
            "api_observer_capture_gaps_total",
            "Places where a followed connection's records never reached the agent (the kernel's byte count jumped): the parser skipped the gap and resynchronised.",
        )?;
        let lost_bytes = IntCounter::new(
            "api_observer_capture_lost_bytes_total",
            "Bytes in those gaps.",
        )?;
        let lost_exchanges = IntCounter::new(
            "api_observer_capture_lost_exchanges_total",
            "Exchanges that happened but were not reported whole because of a gap (counted against the session of the connection's next exchange).",
        )?;
        let skipped_bytes = IntCounter::new(
            "api_observer_capture_skipped_bytes_total",
            "Body bytes of known length (Content-Length, chunk sizes) the kernel counted without copying them, as the agent asked once it had read the head.",
        )?;
        let swept = IntCounter::new(
            "api_observer_connections_swept_total",
            "Connections forgotten after going idle without a close the agent saw.",
        )?;
        let kernel_sockets = IntGauge::new(
            "api_observer_kernel_sockets",
            "Sockets in the kernel's table at the last sweep (at most capture.max_connections; beyond it new sockets are not followed and counted as dropped, reason sockets_full).",
        )?;
        let kernel_sockets_swept = IntCounter::new(
            "api_observer_kernel_sockets_swept_total",
            "Entries removed from the kernel's socket table because their socket was closed unseen (process exit, dup2, exec).",
        )?;
        registry.register(Box::new(kernel_sockets.clone()))?;
        for c in [
            &gaps,
            &lost_bytes,
            &skipped_bytes,
            &lost_exchanges,
            &swept,
            &kernel_sockets_swept,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(not_parsed.clone()))?;
        registry.register(Box::new(probes.clone()))?;
        // Every drop reason exists from the start so that rate() works at once.
        for name in drop_reason::NAMES {
            dropped.with_label_values(&[name]);
        }
        let per_kind = ["accept", "connect", "addresses", "close", "data", "exec"]
            .map(|kind| events.with_label_values(&[kind]));
        let evicted = dropped.with_label_values(&["connection_evicted"]);
        Ok(Self {
            evicted,
            per_kind,
            ingress_bytes: bytes.with_label_values(&["ingress"]),
            egress_bytes: bytes.with_label_values(&["egress"]),
            events,
            bytes,
            dropped,
            connections,
            not_parsed,
            probes,
            gaps,
            lost_bytes,
            skipped_bytes,
            lost_exchanges,
            swept,
            kernel_sockets,
            kernel_sockets_swept,
            conn_seen: ConnStats::default(),
            kernel_seen: [0; drop_reason::COUNT as usize],
        })
    }

    /// Count one decoded kernel record (and its bytes).
    pub fn record(&self, event: &Event<'_>) {
        let kind = match event {
            Event::Accept(_) => 0,
            Event::Connect(_) => 1,
            Event::Addresses(_) => 2,
            Event::Close { .. } => 3,
            Event::Exec { .. } => 5,
            Event::Data { direction, len, .. } => {
                match direction {
                    Direction::Ingress => self.ingress_bytes.inc_by(*len),
                    Direction::Egress => self.egress_bytes.inc_by(*len),
                }
                4
            }
        };
        self.per_kind[kind].inc();
    }

    /// Fold the kernel's cumulative per-reason counters into the counter.
    pub fn update_kernel_drops(&mut self, totals: [u64; drop_reason::COUNT as usize]) {
        for (i, total) in totals.into_iter().enumerate() {
            let delta = total.saturating_sub(self.kernel_seen[i]);
            if delta > 0 {
                self.dropped
                    .with_label_values(&[drop_reason::NAMES[i]])
                    .inc_by(delta);
                self.kernel_seen[i] = total;
            }
        }
    }

    /// Fold the connection table's cumulative counters in.
    pub fn update_conns(&mut self, stats: &ConnStats) {
        let last = self.conn_seen;
        let delta = |now: u64, then: u64| now.saturating_sub(then);
        self.evicted.inc_by(delta(stats.evicted, last.evicted));
        self.not_parsed
            .inc_by(delta(stats.unknown_protocol, last.unknown_protocol));
        self.gaps.inc_by(delta(stats.losses, last.losses));
        self.lost_bytes
            .inc_by(delta(stats.lost_bytes, last.lost_bytes));
        self.skipped_bytes
            .inc_by(delta(stats.skipped_bytes, last.skipped_bytes));
        self.lost_exchanges
            .inc_by(delta(stats.lost_exchanges, last.lost_exchanges));
        self.swept.inc_by(delta(stats.swept, last.swept));
        self.conn_seen = *stats;
    }

    /// Sum of every drop counter (for logs and the benchmark).
    pub fn total_dropped(&self) -> u64 {
        let mut families = Vec::new();
        families.extend(prometheus::core::Collector::collect(&self.dropped));
        families
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_drops_are_folded_as_deltas() {
        let registry = Registry::new();
        let mut m = CaptureMetrics::register(&registry).unwrap();
        m.update_kernel_drops([3, 0, 1, 0, 0]);
        m.update_kernel_drops([5, 0, 1, 0, 0]);
        assert_eq!(m.dropped.with_label_values(&["ringbuf_full"]).get(), 5);
        assert_eq!(m.dropped.with_label_values(&["inflight_full"]).get(), 1);
        assert_eq!(m.total_dropped(), 6);
    }
}
