//! The per-host fingerprint key and the fingerprints it makes.
//!
//! A fingerprint is `HMAC-SHA-256(key, domain || 0x00 || credential)`, truncated to 48 bits
//! and shown as 12 hex digits after a prefix naming the kind (`tok_5f2c9a1e0b7d`). Without
//! the key a fingerprint cannot be recomputed from a guessed credential; after
//! [`FingerprintKey::rotate`] new fingerprints cannot be linked to old ones.

use std::{
    fmt, fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use hmac::{Hmac, Mac};
use serde::{Serialize, Serializer};
use sha2::Sha256;

/// Hex digits kept from the HMAC.
pub const FINGERPRINT_HEX: usize = 12;
/// Bytes of key material.
pub const KEY_BYTES: usize = 32;

/// A keyed hash of a credential (or of a JWT `sub`/`jti`), e.g. `tok_5f2c9a1e0b7d`.
/// Cheap to clone; safe to print and export.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(Arc<str>);

impl Fingerprint {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before `_` (`tok`, `key`, `usr`, `ck`, `sub`, `jti`, `anon`).
    pub fn prefix(&self) -> &str {
        self.0.split('_').next().unwrap_or_default()
    }

    /// Accept a fingerprint typed by an operator (freeze API): `<prefix>_<12 hex>`.
    pub fn parse(s: &str) -> Option<Self> {
        let (prefix, hex) = s.split_once('_')?;
        let prefix_ok = !prefix.is_empty()
            && prefix.len() <= 8
            && prefix.bytes().all(|b| b.is_ascii_lowercase());
        let hex_ok = hex.len() == FINGERPRINT_HEX
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        (prefix_ok && hex_ok).then(|| Self(Arc::from(s)))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Why a key could not be made, loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no randomness available: {0}")]
    Random(String),
    #[error("fingerprint key must be {} hex digits", KEY_BYTES * 2)]
    BadHex,
    #[error("fingerprint key file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("fingerprint key file {path}: must hold {} hex digits", KEY_BYTES * 2)]
    BadFile { path: PathBuf },
}

/// The per-host HMAC key. Never printed (its `Debug` shows only the generation).
pub struct FingerprintKey {
    bytes: [u8; KEY_BYTES],
    /// Incremented by every rotation.
    generation: u64,
    /// File the key was loaded from; rotation writes the new key there.
    path: Option<PathBuf>,
}

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FingerprintKey")
            .field("generation", &self.generation)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Drop for FingerprintKey {
    fn drop(&mut self) {
        self.bytes.fill(0);
    }
}

pub(crate) fn random_bytes() -> Result<[u8; KEY_BYTES], KeyError> {
    let mut bytes = [0u8; KEY_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(bytes)
}

pub(crate) fn parse_hex_key(s: &str) -> Option<[u8; KEY_BYTES]> {
    let s = s.trim();
    if s.len() != KEY_BYTES * 2 {
        return None;
    }
    let mut out = [0u8; KEY_BYTES];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Write `bytes` as hex to `path` with mode 0600 (via a temporary file and a rename).
pub(crate) fn write_key_file(path: &Path, bytes: &[u8; KEY_BYTES]) -> Result<(), KeyError> {
    let io_err = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).map_err(io_err)?;
    let mut text = to_hex(bytes);
    text.push('\n');
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    // Best effort: do not leave the hex text in freed memory.
    text.into_bytes().fill(0);
    written.map_err(io_err)?;
    fs::rename(&tmp, path).map_err(io_err)
}

impl FingerprintKey {
    /// A fresh random key, kept in memory only.
    pub fn random() -> Result<Self, KeyError> {
        Ok(Self::from_bytes(random_bytes()?))
    }

    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self {
            bytes,
            generation: 0,
            path: None,
        }
    }

    /// A key given as 64 hex digits (e.g. from the config file).
    pub fn from_hex(hex: &str) -> Result<Self, KeyError> {
        parse_hex_key(hex)
            .map(Self::from_bytes)
            .ok_or(KeyError::BadHex)
    }

    /// Load the key from `path` (64 hex digits), creating the file with a random key and
    /// mode 0600 when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let bytes = match fs::read_to_string(path) {
            Ok(text) => parse_hex_key(&text).ok_or_else(|| KeyError::BadFile {
                path: path.to_path_buf(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let bytes = random_bytes()?;
                write_key_file(path, &bytes)?;
                tracing::info!(path = %path.display(), "created fingerprint key file");
                bytes
            }
            Err(source) => {
                return Err(KeyError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(Self {
            bytes,
            generation: 0,
            path: Some(path.to_path_buf()),
        })
    }

    /// The key the identity config asks for: `key` if given, else `key_file`, else random.
    pub fn from_config(config: &super::IdentityConfig) -> Result<Self, KeyError> {
        if let Some(secret) = &config.key {
            return Self::from_hex(secret.expose());
        }
        if let Some(path) = &config.key_file {
            return Self::load_or_create(path);
        }
        Self::random()
    }

    /// Replace the key with a new random one (and rewrite the key file if the key came
    /// from one). Fingerprints made after this cannot be linked to those made before.
    pub fn rotate(&mut self) -> Result<(), KeyError> {
        let bytes = random_bytes()?;
        if let Some(path) = &self.path {
            write_key_file(path, &bytes)?;
        }
        self.bytes = bytes;
        self.generation += 1;
        Ok(())
    }

    /// How many times the key was rotated since it was made or loaded.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Fingerprint `raw` in a domain (which keeps e.g. a `sub` apart from a token with the
    /// same text), shown with `prefix`.
    pub fn fingerprint(&self, prefix: &str, domain: &str, raw: &[u8]) -> Fingerprint {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.bytes).expect("HMAC takes any key size");
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(raw);
        let digest = mac.finalize().into_bytes();
        let hex = to_hex(&digest[..FINGERPRINT_HEX / 2]);
        Fingerprint(Arc::from(format!("{prefix}_{hex}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "observer-key-test-{}-{name}-{}",
            std::process::id(),
            to_hex(&random_bytes().unwrap()[..4])
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn fingerprint_shape_and_stability() {
        let key = FingerprintKey::from_bytes([7; KEY_BYTES]);
        let a = key.fingerprint("tok", "cred", b"secret");
        let b = key.fingerprint("tok", "cred", b"secret");
        assert_eq!(a, b);
        assert_eq!(a.as_str().len(), 4 + FINGERPRINT_HEX);
        assert!(a.as_str().starts_with("tok_"));
        assert_eq!(a.prefix(), "tok");
        assert!(Fingerprint::parse(a.as_str()).is_some());
        // Domain separation.
        assert_ne!(
            a.as_str()[4..],
            key.fingerprint("tok", "sub", b"secret").as_str()[4..]
        );
    }

    #[test]
    fn different_keys_different_fingerprints() {
        let k1 = FingerprintKey::from_bytes([1; KEY_BYTES]);
        let k2 = FingerprintKey::from_bytes([2; KEY_BYTES]);
        assert_ne!(
            k1.fingerprint("tok", "cred", b"x"),
            k2.fingerprint("tok", "cred", b"x")
        );
    }

    #[test]
    fn rotation_unlinks() {
        let mut key = FingerprintKey::random().unwrap();
        let before = key.fingerprint("tok", "cred", b"x");
        key.rotate().unwrap();
        assert_eq!(key.generation(), 1);
        assert_ne!(before, key.fingerprint("tok", "cred", b"x"));
    }

    #[test]
    fn hex_key() {
        let hex = "00".repeat(31) + "ff";
        let key = FingerprintKey::from_hex(&hex).unwrap();
        assert_eq!(key.bytes[31], 0xff);
        assert!(FingerprintKey::from_hex("abcd").is_err());
        assert!(FingerprintKey::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn debug_hides_key() {
        let key = FingerprintKey::from_bytes([0xab; KEY_BYTES]);
        let printed = format!("{key:?}");
        assert!(!printed.contains("abab"), "{printed}");
        assert!(!printed.contains("171"), "{printed}");
    }

    #[test]
    fn key_file_created_0600_and_reloaded() {
        let dir = tmpdir("file");
        let path = dir.join("fp.key");
        let k1 = FingerprintKey::load_or_create(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let k2 = FingerprintKey::load_or_create(&path).unwrap();
        assert_eq!(
            k1.fingerprint("key", "cred", b"a"),
            k2.fingerprint("key", "cred", b"a")
        );
        // Rotation rewrites the file.
        let mut k3 = FingerprintKey::load_or_create(&path).unwrap();
        k3.rotate().unwrap();
        let k4 = FingerprintKey::load_or_create(&path).unwrap();
        assert_eq!(
            k3.fingerprint("key", "cred", b"a"),
            k4.fingerprint("key", "cred", b"a")
        );
        assert_ne!(
            k1.fingerprint("key", "cred", b"a"),
            k4.fingerprint("key", "cred", b"a")
        );
        fs::write(&path, "not hex").unwrap();
        assert!(matches!(
            FingerprintKey::load_or_create(&path),
            Err(KeyError::BadFile { .. })
        ));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(Fingerprint::parse("tok_5f2c9a1e0b7d").is_some());
        assert!(Fingerprint::parse("tok_5f2c9a1e0b7").is_none());
        assert!(Fingerprint::parse("tok_5f2c9a1e0b7g").is_none());
        assert!(Fingerprint::parse("TOK_5f2c9a1e0b7d").is_none());
        assert!(Fingerprint::parse("5f2c9a1e0b7d").is_none());
    }
}
