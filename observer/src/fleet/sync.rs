//! The agent's fleet tasks: publishing each scoring round (and reading the other nodes'
//! entries back into the table), the lease, and freezes shared over the channel.

use std::{sync::Arc, time::Duration};

use axum::http::Method;
use futures_util::StreamExt as _;

use super::{decode_freeze, unix_now, Fleet, FreezeMessage};
use crate::{
    export::{
        audit::{AuditFingerprints, Caller},
        server::AppState,
    },
    session::FleetPublication,
};

/// What one scoring round hands the fleet task.
#[derive(Clone, Debug)]
pub struct Round {
    pub epoch: u64,
    pub publications: Arc<Vec<FleetPublication>>,
}

/// Backoff of the freeze subscription: from this...
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(500);
/// ...doubling up to this.
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(30);

/// Publish each round handed over by the scoring loop (the latest one; none is queued)
/// and merge the other nodes' entries into the table (marked for the next pass).
pub async fn publish_loop(
    fleet: Arc<Fleet>,
    state: Arc<AppState>,
    mut rounds: tokio::sync::watch::Receiver<Option<Round>>,
    period: Duration,
) {
    fleet.check().await;
    // A round may take at most one scoring period; a slower store skips rounds.
    let limit = period.max(Duration::from_secs(1));
    while rounds.changed().await.is_ok() {
        let Some(round) = rounds.borrow_and_update().clone() else {
            continue;
        };
        let now = unix_now();
        let published = tokio::time::timeout(
            limit,
            fleet.publish_round(round.epoch, &round.publications, now),
        )
        .await;
        match published {
            Ok(Ok(views)) => {
                fleet.metrics.ok();
                let changed = state
                    .sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .merge_fleet(views);
                if changed > 0 {
                    tracing::debug!(changed, "fleet views merged");
                }
            }
            Ok(Err(e)) => fleet.failed("publish", &e),
            Err(_) => fleet.failed("publish", &super::StoreError::Timeout(limit)),
        }
        match fleet.lease_round(round.epoch, now).await {
            Ok(_) => {}
            Err(e) => {
                fleet.failed("lease", &e);
                // Unsure whether the lease is still held: export nothing fleet-wide.
                fleet.metrics.follow();
            }
        }
    }
}

/// Apply a fleet freeze message to the table; returns the fingerprints and durable ids
/// it changed (for the audit), empty when nothing changed.
fn apply(state: &AppState, msg: &FreezeMessage) -> Vec<String> {
    let mut table = state.sessions.lock().unwrap_or_else(|e| e.into_inner());
    // Fingerprints of another epoch cannot match here; durable hashes always can.
    let fingerprints = if msg.epoch == table.key_generation() {
        msg.fingerprints.clone()
    } else {
        Default::default()
    };
    if !table.apply_fleet_freeze(msg.freeze, &msg.durable, &fingerprints) {
        return Vec::new();
    }
    msg.durable
        .keys()
        .filter_map(|h| crate::identity::DurableHash::from_hex(h).map(|h| h.id()))
        .chain(fingerprints.iter().cloned())
        .collect()
}

/// Follow the freeze channel: load the store's freezes when (re)subscribed, then apply
/// each freeze or unfreeze another node makes, audited with that node as the caller.
pub async fn freeze_loop(fleet: Arc<Fleet>, state: Arc<AppState>) {
    let channel = format!("{}:freeze", fleet.prefix);
    let mut backoff = RESUBSCRIBE_MIN;
    loop {
        match subscribe(&fleet, &state, &channel).await {
            Ok(()) => backoff = RESUBSCRIBE_MIN,
            Err(e) => tracing::debug!("fleet freeze channel: {e}"),
        }
        fleet.metrics.failed("subscribe");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RESUBSCRIBE_MAX);
    }
}

/// One subscription, until the connection ends.
async fn subscribe(fleet: &Fleet, state: &AppState, channel: &str) -> anyhow::Result<()> {
    let mut pubsub = fleet.store.pubsub().await?;
    tokio::time::timeout(super::store::CALL_TIMEOUT, pubsub.subscribe(channel))
        .await
        .map_err(|_| anyhow::anyhow!("subscribing timed out"))??;
    // Freezes made while this agent was away (or before it started).
    let epoch = state
        .sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .key_generation();
    match fleet.load_freezes(epoch).await {
        Ok(all) => {
            let changed = apply(state, &all);
            if !changed.is_empty() {
                tracing::info!(
                    freezes = changed.len(),
                    "fleet freezes loaded from the store"
                );
                state.republish.notify_one();
            }
            fleet.metrics.ok();
        }
        Err(e) => fleet.failed("read", &e),
    }
    // And this node's freezes, should the store have come back empty.
    let (epoch, marks) = {
        let table = state.sessions.lock().unwrap_or_else(|e| e.into_inner());
        (table.key_generation(), table.freeze_marks())
    };
    match fleet.restore_freezes(epoch, &marks).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(freezes = n, "fleet freezes written back to the store"),
        Err(e) => fleet.failed("freeze", &e),
    }
    let mut messages = pubsub.into_on_message();
    while let Some(msg) = messages.next().await {
        let Some(freeze) = decode_freeze(msg.get_payload_bytes()) else {
            fleet
                .metrics
                .skipped
                .with_label_values(&["malformed"])
                .inc();
            continue;
        };
        if freeze.node == fleet.node {
            continue;
        }
        let changed = apply(state, &freeze);
        if changed.is_empty() {
            continue;
        }
        tracing::info!(
            origin = %freeze.node,
            freeze = freeze.freeze,
            "fleet {} applied",
            if freeze.freeze { "freeze" } else { "unfreeze" }
        );
        if let Some(audit) = &state.audit {
            let method = if freeze.freeze {
                Method::PUT
            } else {
                Method::DELETE
            };
            let mut response = axum::response::Response::new(axum::body::Body::empty());
            let path = format!("/api/frozen/{}", changed[0]);
            response.extensions_mut().insert(AuditFingerprints(changed));
            audit.record(
                &Caller::Fleet(freeze.node.clone()),
                &method,
                &path,
                &response,
            );
        }
        state.republish.notify_one();
    }
    anyhow::bail!("the freeze channel closed")
}
