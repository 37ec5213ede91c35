//! What the table keeps, said openly ([`PrivacyReport`]), and the fingerprint key's
//! scheduled rotation.

use std::{borrow::Borrow, hash::Hash, sync::Arc, time::SystemTime};

use serde::Serialize;

use super::{
    dims::{ClientIpMode, Network},
    state::{since, unix_secs, Session},
    window::{FastMap, KeyChange},
    Direction, SessionTable,
};
use crate::identity::KeyError;

/// What one scheduled rotation did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RotationReport {
    /// Unix seconds.
    pub at: f64,
    pub key_generation: u64,
    /// Sessions dropped: their fingerprints were made with the old key and cannot be
    /// linked to the new ones.
    pub sessions_dropped: usize,
    /// Frozen fingerprints dropped for the same reason.
    pub frozen_dropped: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClientAddressPolicy {
    pub mode: ClientIpMode,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
}

#[derive(Clone, Debug, Serialize)]
pub struct Retention {
    pub idle_ttl_secs: u64,
    pub max_age_secs: u64,
    pub storage: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Rotation {
    /// `per_host` (a key of this agent's own) or `fleet` (derived from a secret shared
    /// by every agent: the same fingerprints on every node within an epoch).
    pub mode: &'static str,
    /// 0: never.
    pub every_secs: u64,
    /// Unix seconds of the last rotation, if any since start.
    pub last_rotated: Option<f64>,
    /// Rotations since start (per host) or the current epoch number (fleet).
    pub key_generation: u64,
    /// Fleet mode: the current epoch (`floor(unix time / every_secs)`, 0 without
    /// rotation) and the unix second the next one starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HeldCounts {
    pub sessions: usize,
    pub inbound: usize,
    pub outbound: usize,
    /// Distinct client networks held across sessions (as kept: truncated or redacted).
    pub distinct_networks: usize,
    /// Distinct user-agent families held across sessions.
    pub distinct_agents: usize,
    pub frozen: usize,
}

/// The table's own part of `/privacy`.
#[derive(Clone, Debug, Serialize)]
pub struct PrivacyReport {
    pub collected: Vec<String>,
    pub never_collected: Vec<&'static str>,
    pub client_address: ClientAddressPolicy,
    pub retention: Retention,
    pub rotation: Rotation,
    pub counts: HeldCounts,
    pub generated_at: f64,
}

/// What the sessions hold across them, for [`HeldCounts`]: how many sessions hold each
/// client network and user-agent family, kept as sessions gain, drop and lose them, so
/// that a report costs nothing per session.
#[derive(Debug, Default)]
pub(crate) struct Held {
    networks: FastMap<Network, u32>,
    agents: FastMap<Arc<str>, u32>,
    inbound: usize,
    outbound: usize,
}

impl Held {
    fn count<K: Hash + Eq>(map: &mut FastMap<K, u32>, key: K) {
        *map.entry(key).or_default() += 1;
    }

    fn uncount<K: Hash + Eq + Borrow<Q>, Q: Hash + Eq + ?Sized>(
        map: &mut FastMap<K, u32>,
        key: &Q,
    ) {
        if let Some(n) = map.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                map.remove(key);
            }
        }
    }

    /// A session was made.
    pub(crate) fn add(&mut self, direction: Direction) {
        match direction {
            Direction::Inbound => self.inbound += 1,
            Direction::Outbound => self.outbound += 1,
        }
    }

    /// A session's networks changed (`n` was hit).
    pub(crate) fn network(&mut self, n: Network, change: KeyChange<Network>) {
        if change.added {
            Self::count(&mut self.networks, n);
        }
        if let Some(old) = change.dropped {
            Self::uncount(&mut self.networks, &old);
        }
    }

    /// A session's agents changed (`a` was hit).
    pub(crate) fn agent(&mut self, a: &Arc<str>, change: KeyChange<Arc<str>>) {
        if change.added {
            Self::count(&mut self.agents, Arc::clone(a));
        }
        if let Some(old) = change.dropped {
            Self::uncount(&mut self.agents, &*old);
        }
    }

    /// A session was dropped.
    pub(crate) fn remove(&mut self, s: &Session) {
        match s.direction {
            Direction::Inbound => self.inbound -= 1,
            Direction::Outbound => self.outbound -= 1,
        }
        for n in s.networks.map.keys() {
            Self::uncount(&mut self.networks, n);
        }
        for a in s.agents.map.keys() {
            Self::uncount(&mut self.agents, &**a);
        }
    }

    /// Every session was dropped.
    pub(crate) fn clear(&mut self) {
        *self = Self::default();
    }
}

impl SessionTable {
    /// Rotate the fingerprint key on schedule.
    ///
    /// Per-host key: when `identity.rotate_every_secs` has passed since the current key
    /// came into use (a key kept in a file: since the file was written; else the first
    /// call starts the clock). Fleet key: exactly when the epoch number of `now` differs
    /// from the key's, to the key derived for that epoch, so every agent with the same
    /// secret switches at the same instant.
    ///
    /// Sessions straddling a rotation are dropped, with the frozen fingerprints: what
    /// was learned under the old key cannot be linked to the new fingerprints, by design.
    pub fn maybe_rotate(&mut self, now: SystemTime) -> Result<Option<RotationReport>, KeyError> {
        if let Some(epoch) = self.key.fleet_epoch_at(now) {
            if !self.key.enter_epoch(epoch) {
                return Ok(None);
            }
        } else {
            if self.rotate_every.is_zero() {
                return Ok(None);
            }
            let Some(since_key) = self.key_since else {
                self.key_since = Some(self.key.written().map_or(now, |w| w.min(now)));
                return self.maybe_rotate(now);
            };
            if since(now, since_key) < self.rotate_every {
                return Ok(None);
            }
            self.key.rotate()?;
            self.key_since = Some(now);
        }
        let sessions_dropped = self.sessions.len();
        let frozen_dropped = self.forget_old_key();
        self.last_rotation = Some(now);
        self.counters.rotations += 1;
        Ok(Some(RotationReport {
            at: unix_secs(now),
            key_generation: self.key.generation(),
            sessions_dropped,
            frozen_dropped,
        }))
    }

    /// What is kept, at which precision, for how long, and how much of it right now.
    pub fn privacy_report(&self, now: SystemTime) -> PrivacyReport {
        let c = &self.sessions_cfg;
        let network = match c.client_ip {
            ClientIpMode::Truncate => format!(
                "client network (IPv4 /{}, IPv6 /{}), never the full address",
                c.ipv4_prefix, c.ipv6_prefix
            ),
            ClientIpMode::Full => "client address in full (client_ip = \"full\")".into(),
            ClientIpMode::Drop => "no client address (client_ip = \"drop\")".into(),
        };
        let fleet = self.key.is_fleet();
        let collected = vec![
            if fleet {
                "credential fingerprints (HMAC-SHA-256 with a fleet-wide key derived per epoch from a shared secret, truncated to 48 bits: the same on every node within an epoch)"
            } else {
                "credential fingerprints (HMAC-SHA-256 with a per-host key, truncated to 48 bits)"
            }
            .to_string(),
            network,
            "user-agent family and major version; other clients as a keyed fingerprint of their product name"
                .into(),
            "views per client network and per route: per-process keyed hashes of the credentials seen there, with request and failure counts"
                .into(),
            "findings: host and route templates where credentials travel in plaintext or in query strings, with counts"
                .into(),
            "the access tier name of a credential and its request counts per UTC day (when [tiers] is set)"
                .into(),
            "route templates (method and path with ids replaced by {id})".into(),
            "request counts and rates, status classes, byte and latency totals, active UTC hours"
                .into(),
            "local process name serving or making the requests".into(),
            "JWT claims alg, typ, exp, iat, nbf, iss, aud, scope; sub and jti only as fingerprints"
                .into(),
            format!("in memory only, to skip recomputing them: the fingerprints and claims of up to {} recent credentials, found by a 128-bit keyed hash of the credential (the credential itself is not kept); dropped whenever the key changes", crate::identity::cache::MAX_CACHED),
        ];
        let held = &self.held;
        debug_assert_eq!(held.inbound + held.outbound, self.sessions.len());
        PrivacyReport {
            collected,
            never_collected: vec![
                "raw credentials (tokens, API keys, passwords)",
                "cookie values",
                "query string values",
                "request and response bodies",
                "headers outside the allowlist",
                "JWT subject and id in clear",
            ],
            client_address: ClientAddressPolicy {
                mode: c.client_ip,
                ipv4_prefix: c.ipv4_prefix,
                ipv6_prefix: c.ipv6_prefix,
            },
            retention: Retention {
                idle_ttl_secs: c.idle_ttl_secs,
                max_age_secs: c.max_age_secs,
                storage: {
                    let mut text = match self.key.path() {
                        Some(path) => format!(
                            "sessions in memory only; the fingerprint key in {}",
                            path.display()
                        ),
                        None => "memory only".into(),
                    };
                    if let Some(dir) = &self.state_dir {
                        text.push_str(&format!(
                            "; frozen credentials as keyed hashes (never the credential) in {}",
                            dir.display()
                        ));
                    }
                    text
                },
            },
            rotation: {
                let every_secs = self.rotate_every.as_secs();
                let epoch = fleet.then(|| self.key.generation());
                Rotation {
                    mode: if fleet { "fleet" } else { "per_host" },
                    every_secs,
                    last_rotated: self.last_rotation.map(unix_secs),
                    key_generation: self.key.generation(),
                    epoch,
                    next_rotation: epoch
                        .filter(|_| every_secs > 0)
                        .map(|e| (e.saturating_add(1).saturating_mul(every_secs)) as f64),
                }
            },
            counts: HeldCounts {
                sessions: self.sessions.len(),
                inbound: held.inbound,
                outbound: held.outbound,
                distinct_networks: held.networks.len(),
                distinct_agents: held.agents.len(),
                frozen: self.frozen.len(),
            },
            generated_at: unix_secs(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        exchange::Exchange,
        identity::{FingerprintKey, IdentityConfig},
        session::{
            testutil::{at, ExchangeBuilder, T0},
            SessionConfig, SessionTableConfig,
        },
    };

    fn table(sessions: SessionConfig, rotate_every_secs: u64) -> SessionTable {
        SessionTable::new(
            SessionTableConfig {
                identity: IdentityConfig {
                    rotate_every_secs,
                    ..Default::default()
                },
                sessions,
                ..Default::default()
            },
            FingerprintKey::from_bytes([7; 32]),
        )
    }

    fn with_token(token: &str, ip: &str, secs: f64) -> Exchange {
        ExchangeBuilder::new()
            .client(&format!("{ip}:40000"))
            .at(secs)
            .bearer(token)
            .build()
    }

    #[test]
    fn max_age_expires_busy_sessions_idle_ttl_expires_quiet_ones() {
        let mut t = table(
            SessionConfig {
                idle_ttl_secs: 100,
                max_age_secs: 1000,
                ..Default::default()
            },
            0,
        );
        // "busy" is used every 50 s from t=0; "quiet" once at t=0.
        t.observe(&with_token("busy-token-aaaaaaaa", "10.0.0.1", 0.0), at(0.0));
        t.observe(&with_token("quiet-token-bbbbbbb", "10.0.0.2", 0.0), at(0.0));
        let mut s = 0.0;
        while s < 950.0 {
            s += 50.0;
            t.observe(&with_token("busy-token-aaaaaaaa", "10.0.0.1", s), at(s));
            t.expire(at(s));
        }
        assert_eq!(t.len(), 1, "the quiet session went idle");
        assert_eq!(t.counters().evicted_idle, 1);
        t.observe(
            &with_token("busy-token-aaaaaaaa", "10.0.0.1", 1000.0),
            at(1000.0),
        );
        assert_eq!(t.expire(at(1000.0)), 1, "the busy one reached max age");
        assert_eq!(t.counters().expired_max_age, 1);
        assert!(t.is_empty());
    }

    #[test]
    fn rotation_follows_the_schedule_and_unlinks_fingerprints() {
        let mut t = table(SessionConfig::default(), 3600);
        assert_eq!(t.maybe_rotate(at(0.0)).unwrap(), None, "starts the clock");
        t.observe(
            &with_token("same-token-cccccccc", "10.0.0.1", 10.0),
            at(10.0),
        );
        let before = t.list(&Default::default())[0].id.clone();
        t.freeze(&before).unwrap();
        assert_eq!(
            t.maybe_rotate(at(3599.0)).unwrap(),
            None,
            "not before the period"
        );
        let report = t.maybe_rotate(at(3600.0)).unwrap().expect("rotated");
        assert_eq!(report.sessions_dropped, 1);
        assert_eq!(report.frozen_dropped, 0, "the freeze is durable");
        assert_eq!(report.key_generation, t.key_generation());
        assert!(t.is_empty() && t.frozen().len() == 1);
        t.observe(
            &with_token("same-token-cccccccc", "10.0.0.1", 3700.0),
            at(3700.0),
        );
        let after = t.list(&Default::default())[0].id.clone();
        assert_ne!(before, after, "the same credential, a new fingerprint");
        let r = t.privacy_report(at(3700.0));
        assert_eq!(r.rotation.last_rotated, Some(unix_secs(at(3600.0))));
        assert_eq!(t.counters().rotations, 1);
        assert_eq!(t.maybe_rotate(at(7199.0)).unwrap(), None);
        assert!(t.maybe_rotate(at(7200.0)).unwrap().is_some());
    }

    fn fleet_table(secret: &[u8], rotate_every_secs: u64, start: f64) -> SessionTable {
        SessionTable::new(
            SessionTableConfig {
                identity: IdentityConfig {
                    rotate_every_secs,
                    ..Default::default()
                },
                ..Default::default()
            },
            FingerprintKey::from_shared_secret(secret.to_vec(), rotate_every_secs, at(start)),
        )
    }

    const FLEET: &[u8] = b"a fleet secret of at least thirty-two bytes";

    #[test]
    fn fleet_rotation_at_the_epoch_boundary() {
        // `at(s)` is T0 + s: work in hours from the epoch T0 falls in.
        let e0 = crate::identity::key::epoch_of(at(0.0), 3600);
        let h = |epoch: u64, secs: f64| (epoch * 3600) as f64 - T0 as f64 + secs;
        // Started mid-epoch: the first call does not restart a clock.
        let mut t = fleet_table(FLEET, 3600, h(e0 + 2, 1800.0));
        assert_eq!(t.key_generation(), e0 + 2);
        assert_eq!(t.maybe_rotate(at(h(e0 + 2, 1800.0))).unwrap(), None);
        let s = h(e0 + 2, 1801.0);
        t.observe(&with_token("fleet-token-ffffffff", "10.0.0.1", s), at(s));
        let before = t.list(&Default::default())[0].id.clone();
        assert_eq!(
            t.maybe_rotate(at(h(e0 + 2, 3599.0))).unwrap(),
            None,
            "still the same epoch"
        );
        let r = t
            .maybe_rotate(at(h(e0 + 3, 0.0)))
            .unwrap()
            .expect("the next epoch begins");
        assert_eq!(r.key_generation, e0 + 3);
        assert_eq!(r.sessions_dropped, 1);
        assert!(t.is_empty());
        assert_eq!(t.maybe_rotate(at(h(e0 + 3, 1.0))).unwrap(), None);
        let s = h(e0 + 3, 2.0);
        t.observe(&with_token("fleet-token-ffffffff", "10.0.0.1", s), at(s));
        let after = t.list(&Default::default())[0].id.clone();
        assert_ne!(before, after);
        // Another agent started later in the same epoch makes the same fingerprint.
        let s = h(e0 + 3, 1000.0);
        let mut other = fleet_table(FLEET, 3600, s);
        other.observe(&with_token("fleet-token-ffffffff", "10.0.0.9", s), at(s));
        assert_eq!(other.list(&Default::default())[0].id, after);
        // A jump over several epochs switches straight to the current one.
        let r = t
            .maybe_rotate(at(h(e0 + 10, 5.0)))
            .unwrap()
            .expect("a later epoch");
        assert_eq!(r.key_generation, e0 + 10);
        let report = t.privacy_report(at(h(e0 + 10, 6.0)));
        assert_eq!(report.rotation.mode, "fleet");
        assert_eq!(report.rotation.epoch, Some(e0 + 10));
        assert_eq!(
            report.rotation.next_rotation,
            Some(((e0 + 11) * 3600) as f64)
        );
        assert!(
            report.collected[0].contains("fleet"),
            "{:?}",
            report.collected
        );
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains("\"mode\":\"fleet\""), "{json}");
        assert!(!json.contains("fleet secret"), "{json}");
    }

    #[test]
    fn fleet_without_period_never_rotates() {
        let mut t = fleet_table(FLEET, 0, 5.0);
        for s in [0.0, 1e6, 1e9] {
            assert_eq!(t.maybe_rotate(at(s)).unwrap(), None);
        }
        let r = t.privacy_report(at(1e9));
        assert_eq!(r.rotation.epoch, Some(0));
        assert_eq!(r.rotation.next_rotation, None);
        let host = table(SessionConfig::default(), 60).privacy_report(at(0.0));
        assert_eq!(host.rotation.mode, "per_host");
        assert_eq!(host.rotation.epoch, None);
    }

    #[test]
    fn zero_period_never_rotates() {
        let mut t = table(SessionConfig::default(), 0);
        for s in [0.0, 1e6, 1e9] {
            assert_eq!(t.maybe_rotate(at(s)).unwrap(), None);
        }
    }

    #[test]
    fn report_counts_and_precision() {
        let mut t = table(SessionConfig::default(), 86_400);
        t.observe(
            &with_token("report-token-dddddd1", "192.0.2.10", 1.0),
            at(1.0),
        );
        t.observe(
            &with_token("report-token-dddddd1", "192.0.2.99", 2.0),
            at(2.0),
        );
        t.observe(
            &with_token("report-token-dddddd2", "198.51.100.7", 3.0),
            at(3.0),
        );
        let r = t.privacy_report(at(4.0));
        assert_eq!(r.counts.sessions, 2);
        assert_eq!(r.counts.inbound, 2);
        assert_eq!(
            r.counts.distinct_networks, 2,
            "192.0.2.0/24 and 198.51.100.0/24"
        );
        assert_eq!(r.client_address.ipv4_prefix, 24);
        assert!(r.collected[1].contains("/24"), "{:?}", r.collected);
        assert_eq!(r.retention.storage, "memory only");
        let json = serde_json::to_string(&r).unwrap();
        for planted in ["report-token", "192.0.2.10", "192.0.2.99", "198.51.100.7"] {
            assert!(!json.contains(planted), "{planted} in {json}");
        }
        assert!(json.contains("\"mode\":\"truncate\""));
    }

    #[test]
    fn report_reflects_full_and_drop_modes() {
        for (mode, phrase) in [
            (ClientIpMode::Full, "in full"),
            (ClientIpMode::Drop, "no client"),
        ] {
            let t = table(
                SessionConfig {
                    client_ip: mode,
                    ..Default::default()
                },
                0,
            );
            let r = t.privacy_report(at(0.0));
            assert!(r.collected[1].contains(phrase), "{:?}", r.collected);
            assert_eq!(r.rotation.every_secs, 0);
        }
    }

    #[test]
    fn purge_empties_the_table() {
        let mut t = table(SessionConfig::default(), 0);
        t.observe(&with_token("purge-token-eeeeeee", "10.0.0.1", 1.0), at(1.0));
        assert_eq!(t.purge(), 1);
        assert!(t.is_empty());
        assert_eq!(t.privacy_report(at(2.0)).counts.distinct_networks, 0);
    }

    #[test]
    fn clock_helpers_agree() {
        assert_eq!(since(at(5.0), at(2.0)), Duration::from_secs(3));
    }
}
