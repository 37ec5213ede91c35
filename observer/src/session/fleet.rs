//! The session table's side of fleet mode: what this node publishes about its sessions,
//! the other nodes' entries merged back into scoring, and freezes made elsewhere.
//! No store here: the [`crate::fleet`] module talks to it, never under the table's lock.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::SystemTime,
};

use serde::Serialize;

use super::{state::unix_secs, Direction, SessionTable};
use crate::{
    fleet::entry::{Entry, FleetView, Merged, ENTRY_VERSION, MAX_ENTRY_FAMILIES},
    identity::{DurableHash, Fingerprint},
};

/// One live credentialed session as this node publishes it.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetPublication {
    /// The session's id in this table.
    pub id: Arc<str>,
    pub direction: Direction,
    pub fingerprint: Fingerprint,
    pub entry: Entry,
}

/// The freezes a table holds, as the fleet shares them: durable hashes (hex, with their
/// kind) and fingerprints under the current key. Never a credential.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FreezeMarks {
    pub durable: BTreeMap<String, String>,
    pub fingerprints: BTreeSet<String>,
}

/// What the fleet knows of one session, shown in its detail.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FleetDetail {
    pub nodes: Vec<String>,
    pub networks: Vec<String>,
    pub families: Vec<String>,
    pub requests: u64,
}

impl SessionTable {
    /// The entries to publish at `now`: every credentialed session used within the
    /// window (an idle one's entry simply expires with its TTL).
    pub fn fleet_publications(&self, now: SystemTime) -> Vec<FleetPublication> {
        let window = self.scoring.window();
        self.sessions
            .values()
            .filter(|s| super::state::within(s.last_seen, now, window))
            .filter_map(|s| {
                let fingerprint = s.fingerprint.clone()?;
                let mut agents: Vec<(&Arc<str>, u64)> = s
                    .agents
                    .live(now, window)
                    .map(|(a, d)| (a, d.requests))
                    .collect();
                agents.sort_by_key(|a| std::cmp::Reverse(a.1));
                let failures = s.window.live(now).map(|c| u64::from(c.auth_failures)).sum();
                Some(FleetPublication {
                    id: Arc::clone(&s.id),
                    direction: s.direction,
                    fingerprint,
                    entry: Entry {
                        v: ENTRY_VERSION,
                        kind: s.kind_name().to_string(),
                        c: s.status,
                        f: failures,
                        n: s.fleet_networks(now, window),
                        a: agents
                            .into_iter()
                            .take(MAX_ENTRY_FAMILIES)
                            .map(|(a, _)| a.to_string())
                            .collect(),
                        s: s.score,
                        r: s.reasons.iter().map(|r| r.as_str().to_string()).collect(),
                        t: unix_secs(s.last_seen) as u64,
                    },
                })
            })
            .collect()
    }

    /// The other nodes' entries, read back while publishing: each session whose view
    /// changed is marked for the next scoring pass. Returns how many changed.
    pub fn merge_fleet(&mut self, views: Vec<(Arc<str>, FleetView)>) -> usize {
        let mut changed = 0;
        for (id, view) in views {
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            let new = (!view.is_empty()).then(|| Box::new(view));
            if s.fleet != new {
                s.fleet = new;
                s.touch();
                changed += 1;
            }
        }
        changed
    }

    /// What the fleet knows of session `id` (this node's entry merged with the others').
    pub(super) fn fleet_detail(&self, id: &str, node: Option<&str>) -> Option<FleetDetail> {
        let s = self.sessions.get(id)?;
        let view = s.fleet.as_ref()?;
        let own = self
            .fleet_publications(self.now)
            .into_iter()
            .find(|p| *p.id == *id)
            .map(|p| p.entry);
        let here = node.unwrap_or("this node");
        let m = Merged::of(
            own.iter()
                .map(|e| (here, e))
                .chain(view.remote.iter().map(|(n, e)| (n.as_str(), e))),
        )?;
        Some(FleetDetail {
            nodes: m.nodes,
            networks: m.networks,
            families: m.families,
            requests: m.requests,
        })
    }

    /// The freezes held now (for sharing with the fleet: diff before and after a write).
    pub fn freeze_marks(&self) -> FreezeMarks {
        FreezeMarks {
            durable: self
                .durable
                .values()
                .map(|e| (e.hash.to_hex(), e.kind.clone()))
                .collect(),
            fingerprints: self.frozen.iter().map(|f| f.to_string()).collect(),
        }
    }

    /// Apply a freeze (or unfreeze) another node made: durable hashes (hex → kind) and
    /// fingerprints under the current key. Bad items are skipped. Returns whether
    /// anything changed.
    pub fn apply_fleet_freeze(
        &mut self,
        freeze: bool,
        durable: &BTreeMap<String, String>,
        fingerprints: &BTreeSet<String>,
    ) -> bool {
        let hashes: Vec<(DurableHash, &str)> = durable
            .iter()
            .filter_map(|(h, k)| Some((DurableHash::from_hex(h)?, k.as_str())))
            .collect();
        let fps: Vec<Fingerprint> = fingerprints
            .iter()
            .filter_map(|f| Fingerprint::parse(f))
            .filter(|f| super::FREEZABLE.contains(&f.prefix()))
            .collect();
        if !freeze {
            let hashes: Vec<DurableHash> = hashes.into_iter().map(|(h, _)| h).collect();
            return match self.lift(&hashes, &fps) {
                Ok(changed) => changed,
                Err(e) => {
                    tracing::warn!("fleet unfreeze: {e}");
                    true
                }
            };
        }
        let mut changed = false;
        let mut added = false;
        for (hash, kind) in hashes {
            match self.add_durable(hash, kind) {
                Ok(new) => added |= new,
                Err(e) => {
                    tracing::warn!("fleet freeze not applied: {e}");
                    continue;
                }
            }
            // Live sessions of that credential (their durable hash is known) freeze now.
            let held: Vec<Fingerprint> = self
                .sessions
                .values()
                .filter(|s| s.durable == Some(hash))
                .filter_map(|s| s.fingerprint.clone())
                .collect();
            for fp in held {
                changed |= !self.frozen.contains(&fp);
                self.link(&hash, &fp);
            }
        }
        for fp in fps {
            if !self.frozen.contains(&fp) && self.frozen.len() < self.sessions_cfg.max_frozen {
                self.frozen.insert(fp.clone());
                self.mark_frozen(&fp, true);
                changed = true;
            }
        }
        if added {
            if let Err(e) = self.save_durable() {
                tracing::warn!("fleet freeze not saved: {e}");
            }
        }
        changed || added
    }
}

/// What changed between two [`FreezeMarks`]: (added, removed).
pub fn freeze_diff(before: &FreezeMarks, after: &FreezeMarks) -> (FreezeMarks, FreezeMarks) {
    let side = |a: &FreezeMarks, b: &FreezeMarks| FreezeMarks {
        durable: a
            .durable
            .iter()
            .filter(|(h, _)| !b.durable.contains_key(*h))
            .map(|(h, k)| (h.clone(), k.clone()))
            .collect(),
        fingerprints: a
            .fingerprints
            .difference(&b.fingerprints)
            .cloned()
            .collect(),
    };
    (side(after, before), side(before, after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        fleet::entry::Skipped,
        identity::FingerprintKey,
        score::{HealthState, Reason},
        session::{
            testutil::{at, ExchangeBuilder},
            SessionTableConfig,
        },
    };

    const SECRET: &[u8] = b"fleet secret for the tests, 32+ bytes long";

    /// One node's table with the fleet key of the tests.
    fn node(name: &str) -> SessionTable {
        let key = FingerprintKey::from_shared_secret(SECRET.to_vec(), 0, at(0.0));
        let mut t = SessionTable::new(SessionTableConfig::default(), key);
        t.set_fleet_node(name);
        t
    }

    fn use_token(t: &mut SessionTable, from: &str, secs: f64) {
        for i in 0..3 {
            let ex = ExchangeBuilder::new()
                .bearer("fleet-token-1")
                .client(from)
                .at(secs + f64::from(i))
                .build();
            t.observe(&ex, at(secs + 10.0));
        }
    }

    /// One publishing round as the fleet task runs it, store left out: `t` reads back
    /// the entries `others` published.
    fn round(t: &mut SessionTable, others: &[(&str, &SessionTable)], now: SystemTime) {
        let published: Vec<(&str, Vec<FleetPublication>)> = others
            .iter()
            .map(|(n, o)| (*n, o.fleet_publications(now)))
            .collect();
        let now_secs = unix_secs(now) as u64;
        let views = t
            .fleet_publications(now)
            .into_iter()
            .map(|p| {
                let fields: Vec<(String, String)> = published
                    .iter()
                    .flat_map(|(n, ps)| {
                        ps.iter()
                            .filter(|q| q.fingerprint == p.fingerprint)
                            .map(|q| (n.to_string(), q.entry.encode()))
                    })
                    .collect();
                let view = FleetView::from_fields(
                    "me",
                    fields.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())),
                    now_secs,
                    300,
                    &mut Skipped::default(),
                );
                (p.id, view)
            })
            .collect();
        t.merge_fleet(views);
    }

    fn verdict(t: &SessionTable) -> (HealthState, Vec<Reason>) {
        let s = t.sessions.values().next().expect("one session");
        (s.state, s.reasons.clone())
    }

    #[test]
    fn two_nodes_two_networks_is_unhealthy_on_both() {
        let (mut a, mut b) = (node("a"), node("b"));
        use_token(&mut a, "198.51.100.7:4000", 0.0);
        use_token(&mut b, "203.0.113.9:4000", 2.0);
        let now = at(20.0);
        a.score(now);
        b.score(now);
        // Each local view alone: one network, healthy.
        assert_eq!(verdict(&a).0, HealthState::Healthy);
        assert_eq!(verdict(&b).0, HealthState::Healthy);
        round(&mut a, &[("b", &b)], now);
        round(&mut b, &[("a", &a)], now);
        a.score(now);
        b.score(now);
        for t in [&a, &b] {
            let (state, reasons) = verdict(t);
            assert_eq!(state, HealthState::Unhealthy, "{reasons:?}");
            assert!(reasons.contains(&Reason::FleetNetworks), "{reasons:?}");
        }
        let id = a.sessions.keys().next().unwrap().to_string();
        let detail = a.get(&id).unwrap();
        let fleet = detail.fleet.expect("fleet detail");
        assert_eq!(fleet.nodes, vec!["a", "b"]);
        assert_eq!(fleet.networks, vec!["198.51.100.0/24", "203.0.113.0/24"]);
        assert_eq!(fleet.requests, 6);
        // Once the other node's use leaves the window, the signal goes.
        let later = at(400.0);
        use_token(&mut a, "198.51.100.7:4000", 390.0);
        a.score(later);
        assert_eq!(verdict(&a).0, HealthState::Healthy, "{:?}", verdict(&a).1);
    }

    #[test]
    fn one_network_or_one_node_is_not_fleet_networks() {
        // Two nodes, one network.
        let (mut a, mut b) = (node("a"), node("b"));
        use_token(&mut a, "198.51.100.7:4000", 0.0);
        use_token(&mut b, "198.51.100.8:4000", 2.0);
        let now = at(20.0);
        round(&mut a, &[("b", &b)], now);
        a.score(now);
        assert_eq!(verdict(&a), (HealthState::Healthy, vec![]));
        // One node (nobody else published): nothing to merge.
        let mut c = node("c");
        use_token(&mut c, "198.51.100.7:4000", 0.0);
        round(&mut c, &[], now);
        c.score(now);
        assert_eq!(verdict(&c), (HealthState::Healthy, vec![]));
        assert!(c.sessions.values().next().unwrap().fleet.is_none());
    }

    #[test]
    fn fleet_networks_feed_the_network_count() {
        let (mut a, mut b, mut c) = (node("a"), node("b"), node("c"));
        use_token(&mut a, "198.51.100.7:4000", 0.0);
        use_token(&mut b, "203.0.113.9:4000", 0.0);
        use_token(&mut c, "192.0.2.9:4000", 0.0);
        let now = at(20.0);
        round(&mut a, &[("b", &b), ("c", &c)], now);
        a.score(now);
        let (_, reasons) = verdict(&a);
        assert!(reasons.contains(&Reason::MultiNetwork), "{reasons:?}");
    }

    #[test]
    fn a_freeze_made_on_one_node_applies_on_another() {
        let (mut a, mut b) = (node("a"), node("b"));
        use_token(&mut b, "203.0.113.9:4000", 0.0);
        let before = a.freeze_marks();
        a.freeze_credential("Bearer fleet-token-1").unwrap();
        let (added, removed) = freeze_diff(&before, &a.freeze_marks());
        assert!(!added.durable.is_empty() && removed.durable.is_empty());
        // Never a credential in what is shared.
        let shared = format!("{added:?}");
        assert!(!shared.contains("fleet-token-1"), "{shared}");
        assert!(b.apply_fleet_freeze(true, &added.durable, &added.fingerprints));
        use_token(&mut b, "203.0.113.9:4000", 30.0);
        b.score(at(40.0));
        let (state, reasons) = verdict(&b);
        assert_eq!(state, HealthState::Unhealthy);
        assert!(reasons.contains(&Reason::FrozenCredential), "{reasons:?}");
        // And the unfreeze.
        let before = a.freeze_marks();
        a.unfreeze_credential("Bearer fleet-token-1").unwrap();
        let (_, removed) = freeze_diff(&before, &a.freeze_marks());
        assert!(b.apply_fleet_freeze(false, &removed.durable, &removed.fingerprints));
        assert!(b.frozen().is_empty());
    }
}
