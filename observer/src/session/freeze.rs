//! Freezing: an operator marks a credential (or a JWT subject) as frozen, and any later
//! use of it is the `frozen_credential` signal.
//!
//! Two layers. The per-request check is a set of frozen fingerprints under the current
//! key (`frozen`). A freeze of a credential is also kept as its durable hash
//! ([`durable`](super::durable)), which survives key rotation and (with a state
//! directory) restarts: when a session is made, its credentials' durable hashes are
//! computed once and a match puts the new fingerprint back in the set.
//!
//! A freeze by fingerprint is durable when a live session holds that fingerprint (its
//! durable hash was computed when it was made); otherwise (no such session, or a JWT
//! `sub_`/`jti_`) it is a plain fingerprint freeze, dropped at the next key rotation.

use std::time::SystemTime;

use serde::Serialize;

use super::{
    durable::{self, DurableEntry, StateError, FROZEN_FILE},
    state::{unix_secs, Session},
    view::SessionSummary,
    SessionTable,
};
use crate::identity::{credential_candidates, CredentialInputError, DurableHash, Fingerprint};

/// Fingerprint prefixes that can be frozen: credentials and JWT subjects/ids.
pub const FREEZABLE: &[&str] = &["tok", "key", "usr", "ck", "sub", "jti"];

/// Prefix of durable freeze ids.
pub const FREEZE_ID_PREFIX: &str = "frz";

/// Why a freeze request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FreezeError {
    #[error("not a fingerprint (expected e.g. tok_5f2c9a1e0b7d)")]
    Invalid,
    #[error("too many frozen fingerprints")]
    Full,
    #[error(transparent)]
    Credential(#[from] CredentialInputError),
    #[error("could not save the frozen credentials: {0}")]
    Store(String),
}

/// One line of `GET /api/frozen`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FrozenItem {
    /// `frz_…` for a durable freeze, else the fingerprint.
    pub id: String,
    /// Kept across key rotations and restarts.
    pub durable: bool,
    pub kind: Option<String>,
    /// The (first) fingerprint under the current key, when known.
    pub fingerprint: Option<Fingerprint>,
    pub fingerprints: Vec<Fingerprint>,
    /// Unix seconds (durable freezes).
    pub frozen_at: Option<f64>,
}

/// What a credential lookup (or freeze by credential) found: per kind the credential
/// could be, its fingerprints and the sessions holding them. Never the credential.
#[derive(Clone, Debug, Serialize)]
pub struct CredentialMatch {
    pub kind: &'static str,
    pub fingerprints: Vec<Fingerprint>,
    /// Its durable freeze id (`frz_…`).
    pub freeze_id: String,
    pub frozen: bool,
    pub sessions: Vec<SessionSummary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CredentialReport {
    pub matches: Vec<CredentialMatch>,
    /// Freeze / unfreeze: whether anything changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
}

impl SessionTable {
    fn sessions_of<'a>(&'a mut self, fp: &'a Fingerprint) -> impl Iterator<Item = &'a mut Session> {
        self.sessions.values_mut().filter(move |s| {
            s.fingerprint.as_ref() == Some(fp)
                || s.jwt.as_ref().and_then(|c| c.sub.as_ref()) == Some(fp)
        })
    }

    pub(super) fn mark_frozen(&mut self, fp: &Fingerprint, frozen: bool) {
        for s in self.sessions_of(fp) {
            s.frozen = frozen;
            s.touch();
            if !frozen {
                s.marks.frozen_use = None;
            }
        }
    }

    /// Load the freeze key and the durable freezes from `state_dir`, if one is
    /// configured. Returns how many durable freezes were loaded. Call once, at start.
    pub fn open_state(&mut self) -> Result<usize, StateError> {
        let Some(dir) = self.state_dir.clone() else {
            return Ok(0);
        };
        // Fleet mode keeps the freeze key derived from the shared secret.
        if !self.key.is_fleet() {
            self.freeze_key = durable::load_key(&dir)?;
        } else {
            durable::ensure_dir(&dir)?;
        }
        let path = dir.join(FROZEN_FILE);
        let entries = durable::load(&path)?;
        self.durable = entries.into_iter().map(|e| (e.hash, e)).collect();
        self.frozen_file = Some(path);
        Ok(self.durable.len())
    }

    pub(super) fn save_durable(&self) -> Result<(), FreezeError> {
        match &self.frozen_file {
            Some(path) => durable::save(path, self.durable.values()).map_err(|e| {
                tracing::error!("{e}");
                FreezeError::Store(e.to_string())
            }),
            None => Ok(()),
        }
    }

    /// A durable freeze's fingerprint became known: freeze it in the per-request set.
    pub(super) fn link(&mut self, hash: &DurableHash, fp: &Fingerprint) {
        let Some(e) = self.durable.get_mut(hash) else {
            return;
        };
        if !e.fingerprints.contains(fp) {
            e.fingerprints.push(fp.clone());
        }
        if self.frozen.insert(fp.clone()) {
            self.mark_frozen(fp, true);
        }
    }

    /// Add a durable entry (not saved). Returns whether it is new.
    pub(super) fn add_durable(
        &mut self,
        hash: DurableHash,
        kind: &str,
    ) -> Result<bool, FreezeError> {
        if self.durable.contains_key(&hash) {
            return Ok(false);
        }
        if self.durable.len() >= self.sessions_cfg.max_frozen {
            return Err(FreezeError::Full);
        }
        self.durable.insert(
            hash,
            DurableEntry {
                hash,
                kind: kind.to_string(),
                frozen_at: unix_secs(self.now.max(SystemTime::now())),
                fingerprints: Vec::new(),
            },
        );
        Ok(true)
    }

    /// Freeze a fingerprint (a credential's, or a JWT `sub_…`): any later use is the
    /// `frozen_credential` signal. Durable when a live session holds the fingerprint.
    /// Returns whether anything was newly frozen.
    pub fn freeze(&mut self, fingerprint: &str) -> Result<bool, FreezeError> {
        let fp = Fingerprint::parse(fingerprint)
            .filter(|f| FREEZABLE.contains(&f.prefix()))
            .ok_or(FreezeError::Invalid)?;
        let held: Vec<(DurableHash, &'static str)> = self
            .sessions
            .values()
            .filter(|s| s.fingerprint.as_ref() == Some(&fp))
            .filter_map(|s| Some((s.durable?, s.kind.map_or("unknown", |k| k.as_str()))))
            .collect();
        let mut changed = false;
        if !self.frozen.contains(&fp) {
            if self.frozen.len() >= self.sessions_cfg.max_frozen {
                return Err(FreezeError::Full);
            }
            self.frozen.insert(fp.clone());
            self.mark_frozen(&fp, true);
            changed = true;
        }
        let mut added = false;
        for (hash, kind) in held {
            added |= self.add_durable(hash, kind)?;
            self.link(&hash, &fp);
        }
        if added {
            self.save_durable()?;
        }
        Ok(changed || added)
    }

    /// Lift a freeze, by fingerprint or by durable id (`frz_…`); the sessions'
    /// `frozen_credential` signal clears on the next pass. Returns whether it was frozen.
    pub fn unfreeze(&mut self, id: &str) -> Result<bool, FreezeError> {
        let fp = Fingerprint::parse(id).ok_or(FreezeError::Invalid)?;
        let hashes: Vec<DurableHash> = if fp.prefix() == FREEZE_ID_PREFIX {
            self.durable
                .keys()
                .filter(|h| h.id() == id)
                .copied()
                .collect()
        } else {
            self.durable
                .values()
                .filter(|e| e.fingerprints.contains(&fp))
                .map(|e| e.hash)
                .chain(
                    self.sessions
                        .values()
                        .filter(|s| s.fingerprint.as_ref() == Some(&fp))
                        .filter_map(|s| s.durable),
                )
                .collect()
        };
        self.lift(&hashes, &[fp])
    }

    /// Remove these durable freezes and fingerprints (and the fingerprints the durable
    /// ones were linked to).
    pub(super) fn lift(
        &mut self,
        hashes: &[DurableHash],
        fps: &[Fingerprint],
    ) -> Result<bool, FreezeError> {
        let mut fps = fps.to_vec();
        let mut removed_durable = false;
        for h in hashes {
            if let Some(e) = self.durable.remove(h) {
                removed_durable = true;
                fps.extend(e.fingerprints);
            }
        }
        let mut changed = removed_durable;
        for fp in &fps {
            if self.frozen.remove(fp) {
                changed = true;
                self.mark_frozen(fp, false);
            }
        }
        if removed_durable {
            self.save_durable()?;
        }
        Ok(changed)
    }

    /// Frozen credentials: durable freezes (by id), then plain fingerprint freezes.
    pub fn frozen(&self) -> Vec<FrozenItem> {
        let mut linked = std::collections::HashSet::new();
        let mut out: Vec<FrozenItem> = self
            .durable
            .values()
            .map(|e| {
                linked.extend(e.fingerprints.iter().cloned());
                FrozenItem {
                    id: e.hash.id(),
                    durable: true,
                    kind: Some(e.kind.clone()),
                    fingerprint: e.fingerprints.first().cloned(),
                    fingerprints: e.fingerprints.clone(),
                    frozen_at: Some(e.frozen_at),
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        let mut plain: Vec<&Fingerprint> = self
            .frozen
            .iter()
            .filter(|f| !linked.contains(*f))
            .collect();
        plain.sort();
        out.extend(plain.into_iter().map(|f| FrozenItem {
            id: f.to_string(),
            durable: false,
            kind: None,
            fingerprint: Some(f.clone()),
            fingerprints: vec![f.clone()],
            frozen_at: None,
        }));
        out
    }

    /// Forget the current-key fingerprints of durable freezes and drop plain
    /// fingerprint freezes (key rotation). Returns how many plain ones were dropped.
    pub(super) fn unlink_all(&mut self) -> usize {
        let linked: std::collections::HashSet<Fingerprint> = self
            .durable
            .values_mut()
            .flat_map(|e| std::mem::take(&mut e.fingerprints))
            .collect();
        let plain = self.frozen.iter().filter(|f| !linked.contains(*f)).count();
        self.frozen.clear();
        plain
    }

    /// Sessions and freezes matching a raw credential (one line: a bare value, `Bearer
    /// xyz`, `Basic base64`, `user:password`). The credential is hashed and dropped.
    pub fn lookup_credential(&self, input: &str) -> Result<CredentialReport, FreezeError> {
        let mut matches = Vec::new();
        for c in credential_candidates(input)? {
            let fingerprints = c.fingerprints(&self.key);
            let hash = c.durable(&self.freeze_key);
            let mut sessions: Vec<SessionSummary> = self
                .sessions
                .values()
                .filter(|s| {
                    s.fingerprint
                        .as_ref()
                        .is_some_and(|f| fingerprints.contains(f))
                })
                .map(|s| self.summary(s))
                .collect();
            sessions.sort_by(|a, b| a.id.cmp(&b.id));
            matches.push(CredentialMatch {
                kind: c.kind.as_str(),
                frozen: self.durable.contains_key(&hash)
                    || fingerprints.iter().any(|f| self.frozen.contains(f)),
                freeze_id: hash.id(),
                fingerprints,
                sessions,
            });
        }
        Ok(CredentialReport {
            matches,
            changed: None,
        })
    }

    /// Freeze a raw credential, durably: under each kind it is seen as in a live
    /// session, or under every kind it could be when no session holds it.
    pub fn freeze_credential(&mut self, input: &str) -> Result<CredentialReport, FreezeError> {
        let candidates = credential_candidates(input)?;
        let seen: Vec<bool> = candidates
            .iter()
            .map(|c| {
                let fps = c.fingerprints(&self.key);
                self.sessions
                    .values()
                    .any(|s| s.fingerprint.as_ref().is_some_and(|f| fps.contains(f)))
            })
            .collect();
        let any_seen = seen.contains(&true);
        let mut added = false;
        let mut linked = false;
        for (c, seen) in candidates.iter().zip(seen) {
            if any_seen && !seen {
                continue;
            }
            let hash = c.durable(&self.freeze_key);
            added |= self.add_durable(hash, c.kind.as_str())?;
            for fp in c.fingerprints(&self.key) {
                linked |= !self.frozen.contains(&fp);
                self.link(&hash, &fp);
            }
        }
        if added {
            self.save_durable()?;
        }
        let mut report = self.lookup_credential(input)?;
        report.changed = Some(added || linked);
        Ok(report)
    }

    /// Lift the freezes of a raw credential (every kind it could be).
    pub fn unfreeze_credential(&mut self, input: &str) -> Result<CredentialReport, FreezeError> {
        let mut hashes = Vec::new();
        let mut fps = Vec::new();
        for c in credential_candidates(input)? {
            hashes.push(c.durable(&self.freeze_key));
            fps.extend(c.fingerprints(&self.key));
        }
        let changed = self.lift(&hashes, &fps)?;
        let mut report = self.lookup_credential(input)?;
        report.changed = Some(changed);
        Ok(report)
    }
}
