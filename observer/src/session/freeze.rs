//! Freezing: an operator marks a credential (or a JWT subject) as frozen, and any later
//! use of it is the `frozen_credential` signal.

use super::{state::Session, SessionTable};
use crate::identity::Fingerprint;

/// Fingerprint prefixes that can be frozen: credentials and JWT subjects/ids.
pub const FREEZABLE: &[&str] = &["tok", "key", "usr", "ck", "sub", "jti"];

/// Why a freeze request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FreezeError {
    #[error("not a fingerprint (expected e.g. tok_5f2c9a1e0b7d)")]
    Invalid,
    #[error("too many frozen fingerprints")]
    Full,
}

impl SessionTable {
    fn sessions_of<'a>(&'a mut self, fp: &'a Fingerprint) -> impl Iterator<Item = &'a mut Session> {
        self.sessions.values_mut().filter(move |s| {
            s.fingerprint.as_ref() == Some(fp)
                || s.jwt.as_ref().and_then(|c| c.sub.as_ref()) == Some(fp)
        })
    }

    /// Freeze a fingerprint (a credential's, or a JWT `sub_…`): any later use is the
    /// `frozen_credential` signal. Returns whether it was newly frozen.
    pub fn freeze(&mut self, fingerprint: &str) -> Result<bool, FreezeError> {
        let fp = Fingerprint::parse(fingerprint)
            .filter(|f| FREEZABLE.contains(&f.prefix()))
            .ok_or(FreezeError::Invalid)?;
        if self.frozen.contains(&fp) {
            return Ok(false);
        }
        if self.frozen.len() >= self.sessions_cfg.max_frozen {
            return Err(FreezeError::Full);
        }
        self.frozen.insert(fp.clone());
        for s in self.sessions_of(&fp) {
            s.frozen = true;
            s.settled = false;
        }
        Ok(true)
    }

    /// Lift a freeze; the sessions' `frozen_credential` signal clears on the next pass.
    /// Returns whether it was frozen.
    pub fn unfreeze(&mut self, fingerprint: &str) -> Result<bool, FreezeError> {
        let fp = Fingerprint::parse(fingerprint).ok_or(FreezeError::Invalid)?;
        if !self.frozen.remove(&fp) {
            return Ok(false);
        }
        for s in self.sessions_of(&fp) {
            s.frozen = false;
            s.marks.frozen_use = None;
            s.settled = false;
        }
        Ok(true)
    }

    /// Frozen fingerprints, sorted.
    pub fn frozen(&self) -> Vec<Fingerprint> {
        let mut v: Vec<Fingerprint> = self.frozen.iter().cloned().collect();
        v.sort();
        v
    }
}
