//! Durable credential hashes: what a freeze is remembered by.
//!
//! A fingerprint changes when the fingerprint key rotates (by design: fingerprints made
//! before cannot be linked to those made after). A freeze must outlive that, without the
//! agent keeping the credential. So a frozen credential is also remembered as
//! `HMAC-SHA-256(freeze key, domain || 0x00 || credential)`, in full, with a separate
//! "freeze key" that never rotates (kept in `state_dir/freeze.key` when a state directory
//! is configured, else random per run). The domain and the credential bytes are exactly
//! those the fingerprint is made of, so the same credential always gives the same durable
//! hash, whichever key made its fingerprint.
//!
//! Only frozen credentials' durable hashes are kept, and only they are linkable across
//! rotations, which is the point of freezing them.

use std::{fmt, path::Path};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;

use super::key::{parse_hex_key, random_bytes, to_hex, write_key_file, KeyError, KEY_BYTES};

/// Hex digits of a durable hash shown in a freeze id (`frz_…`).
const ID_HEX: usize = 12;

/// The never-rotated key of durable hashes. Never printed.
pub struct FreezeKey {
    bytes: [u8; KEY_BYTES],
}

impl fmt::Debug for FreezeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FreezeKey(<redacted>)")
    }
}

impl Drop for FreezeKey {
    fn drop(&mut self) {
        self.bytes.fill(0);
    }
}

impl FreezeKey {
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self { bytes }
    }

    /// A random key kept in memory only (no state directory).
    pub fn random() -> Result<Self, KeyError> {
        Ok(Self::from_bytes(random_bytes()?))
    }

    /// Load the key from `path` (64 hex digits), creating it (mode 0600) when missing.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                parse_hex_key(&text)
                    .map(Self::from_bytes)
                    .ok_or_else(|| KeyError::BadFile {
                        path: path.to_path_buf(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes = random_bytes()?;
                write_key_file(path, &bytes)?;
                tracing::info!(path = %path.display(), "created freeze key file");
                Ok(Self::from_bytes(bytes))
            }
            Err(source) => Err(KeyError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The durable hash of `raw` in `domain` (the fingerprint's domain).
    pub fn hash(&self, domain: &str, raw: &[u8]) -> DurableHash {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.bytes).expect("HMAC takes any key size");
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(raw);
        DurableHash(mac.finalize().into_bytes().into())
    }
}

/// A credential's hash under the freeze key. Printed only as its id (`frz_…`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DurableHash([u8; 32]);

impl DurableHash {
    /// Stable id of a freeze: `frz_` and the first 12 hex digits.
    pub fn id(&self) -> String {
        format!("frz_{}", &to_hex(&self.0)[..ID_HEX])
    }

    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        parse_hex_key(s).map(Self)
    }
}

impl fmt::Debug for DurableHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id())
    }
}

impl Serialize for DurableHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for DurableHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_hex(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_stable_and_domain_separated() {
        let k = FreezeKey::from_bytes([5; KEY_BYTES]);
        let a = k.hash("cred", b"secret");
        assert_eq!(a, k.hash("cred", b"secret"));
        assert_ne!(a, k.hash("cookie", b"secret"));
        assert_ne!(
            a,
            FreezeKey::from_bytes([6; KEY_BYTES]).hash("cred", b"secret")
        );
        assert!(a.id().starts_with("frz_") && a.id().len() == 16);
        assert_eq!(DurableHash::from_hex(&a.to_hex()), Some(a));
        assert_eq!(format!("{a:?}"), a.id());
        let k_dbg = format!("{k:?}");
        assert!(!k_dbg.contains("05"), "{k_dbg}");
    }
}
