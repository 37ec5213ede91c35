//! The per-host fingerprint key and the fingerprints it makes.
//!
//! A fingerprint is `HMAC-SHA-256(key, domain || 0x00 || credential)`, truncated to 48 bits
//! and shown as 12 hex digits after a prefix naming the kind (`tok_5f2c9a1e0b7d`). Without
//! the key a fingerprint cannot be recomputed from a guessed credential; after
//! [`FingerprintKey::rotate`] new fingerprints cannot be linked to old ones.
//!
//! Fleet mode (`[identity] shared_secret_file`): the key of epoch `N` (`N = floor(unix
//! time / rotate_every_secs)`, always 0 without rotation) is
//! `HKDF-SHA-256(ikm = secret, salt = FLEET_SALT, info = N as big-endian u64)`, so every
//! agent holding the same secret makes the same fingerprints within an epoch, and all of
//! them change key at the same wall-clock instant without talking to each other.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use serde::{Serialize, Serializer};
use sha2::Sha256;

/// Hex digits kept from the HMAC.
pub const FINGERPRINT_HEX: usize = 12;
/// Bytes of key material.
pub const KEY_BYTES: usize = 32;
/// Fewest bytes of a fleet shared secret.
pub const MIN_SECRET_BYTES: usize = 32;
/// HKDF salt of fleet keys (a fixed label: changing it changes every fleet fingerprint).
const FLEET_SALT: &[u8] = b"observer fingerprint key v1";
/// HKDF info of the fleet's freeze key (durable hashes), apart from every epoch's info
/// (eight bytes): the same on every node and in every epoch, so a durable freeze made on
/// one node matches on all of them and survives rotation.
const FLEET_FREEZE_INFO: &[u8] = b"observer fleet freeze key v1";
/// File name of the per-host key inside `state_dir` (when no key is configured).
pub const STATE_KEY_FILE: &str = "fingerprint.key";

/// A keyed hash of a credential (or of a JWT `sub`/`jti`), e.g. `tok_5f2c9a1e0b7d`.
/// Cheap to clone; safe to print and export.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(Arc<str>);

impl Fingerprint {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared text (cloning it costs no allocation).
    pub(crate) fn shared(&self) -> &Arc<str> {
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
    #[error("fleet shared secret file {path}: {problem}")]
    BadSecret { path: PathBuf, problem: String },
}

/// The fleet's shared secret (HKDF input) and the epoch length. Never printed.
struct Fleet {
    secret: Vec<u8>,
    /// 0: a single epoch 0.
    epoch_secs: u64,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.secret.fill(0);
    }
}

/// Epoch number of `now` for epochs of `epoch_secs` seconds (0: always epoch 0; times
/// before 1970 count as epoch 0).
pub fn epoch_of(now: SystemTime, epoch_secs: u64) -> u64 {
    if epoch_secs == 0 {
        return 0;
    }
    now.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / epoch_secs)
        .unwrap_or(0)
}

/// The key of `epoch` derived from a fleet secret.
fn derive_epoch_key(secret: &[u8], epoch: u64) -> [u8; KEY_BYTES] {
    let hk = Hkdf::<Sha256>::new(Some(FLEET_SALT), secret);
    let mut out = [0u8; KEY_BYTES];
    hk.expand(&epoch.to_be_bytes(), &mut out)
        .expect("32 bytes is a valid HKDF-SHA-256 output length");
    out
}

/// Read a fleet secret: the file must exist, hold at least [`MIN_SECRET_BYTES`] bytes
/// (used exactly as they are, newline included) and be readable by its owner only.
pub fn read_shared_secret(path: &Path) -> Result<Vec<u8>, KeyError> {
    let bad = |problem: String| KeyError::BadSecret {
        path: path.to_path_buf(),
        problem,
    };
    let meta = fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "mode {mode:04o} lets group or others read it; chmod 600 (or 400) it"
            )));
        }
    }
    let secret = fs::read(path).map_err(|e| bad(e.to_string()))?;
    if secret.len() < MIN_SECRET_BYTES {
        let n = secret.len();
        let mut secret = secret;
        secret.fill(0);
        return Err(bad(format!(
            "holds {n} bytes, at least {MIN_SECRET_BYTES} are needed \
             (e.g. head -c 32 /dev/urandom > {})",
            path.display()
        )));
    }
    Ok(secret)
}

/// The HMAC key (per host, or per epoch of a fleet secret). Never printed (its `Debug`
/// shows only the generation, the key file and whether it is a fleet key).
pub struct FingerprintKey {
    bytes: [u8; KEY_BYTES],
    /// HMAC state keyed with `bytes` (the key's two padded blocks hashed once), cloned
    /// for each fingerprint. Always made from `bytes` by [`keyed`].
    mac: Hmac<Sha256>,
    /// Per host: incremented by every rotation. Fleet: the epoch number.
    generation: u64,
    /// File the key was loaded from; rotation writes the new key there.
    path: Option<PathBuf>,
    /// Set in fleet mode: keys are derived per epoch, never random.
    fleet: Option<Fleet>,
    /// When a key loaded from a file was written (its modification time): the scheduled
    /// rotation counts from it, so a restart does not extend the key's life.
    written: Option<SystemTime>,
    /// Unique in this process to these key bytes: taken anew by every key made and every
    /// change of key (what was cached under one stamp is stale under another).
    stamp: u64,
}

/// A stamp no key had before.
fn new_stamp() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FingerprintKey")
            .field("generation", &self.generation)
            .field("path", &self.path)
            .field("fleet", &self.fleet.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for FingerprintKey {
    fn drop(&mut self) {
        self.bytes.fill(0);
    }
}

/// An HMAC-SHA-256 state keyed with `bytes`.
fn keyed(bytes: &[u8; KEY_BYTES]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(bytes).expect("HMAC takes any key size")
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
    let mut text = to_hex(bytes);
    text.push('\n');
    let written = crate::private_file::write(path, text.as_bytes());
    // Best effort: do not leave the hex text in freed memory.
    text.into_bytes().fill(0);
    written.map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl FingerprintKey {
    /// A fresh random key, kept in memory only.
    pub fn random() -> Result<Self, KeyError> {
        Ok(Self::from_bytes(random_bytes()?))
    }

    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self {
            mac: keyed(&bytes),
            bytes,
            generation: 0,
            path: None,
            fleet: None,
            written: None,
            stamp: new_stamp(),
        }
    }

    /// The fleet key of the epoch `now` falls in (epochs of `epoch_secs`; 0: one epoch).
    pub fn from_shared_secret(secret: Vec<u8>, epoch_secs: u64, now: SystemTime) -> Self {
        let epoch = epoch_of(now, epoch_secs);
        let bytes = derive_epoch_key(&secret, epoch);
        Self {
            mac: keyed(&bytes),
            bytes,
            generation: epoch,
            path: None,
            fleet: Some(Fleet { secret, epoch_secs }),
            written: None,
            stamp: new_stamp(),
        }
    }

    /// Fleet mode: the epoch `now` falls in. `None` for a per-host key.
    pub fn fleet_epoch_at(&self, now: SystemTime) -> Option<u64> {
        self.fleet.as_ref().map(|f| epoch_of(now, f.epoch_secs))
    }

    /// Fleet mode: the freeze key (of durable hashes) derived from the shared secret,
    /// the same on every node; `None` for a per-host key.
    pub fn fleet_freeze_key(&self) -> Option<crate::identity::FreezeKey> {
        self.fleet.as_ref().map(|f| {
            let hk = Hkdf::<Sha256>::new(Some(FLEET_SALT), &f.secret);
            let mut out = [0u8; KEY_BYTES];
            hk.expand(FLEET_FREEZE_INFO, &mut out)
                .expect("32 bytes is a valid HKDF-SHA-256 output length");
            let key = crate::identity::FreezeKey::from_bytes(out);
            out.fill(0);
            key
        })
    }

    /// Whether the key is derived from a fleet secret.
    pub fn is_fleet(&self) -> bool {
        self.fleet.is_some()
    }

    /// When the key in the key file was written, if it came from one.
    pub fn written(&self) -> Option<SystemTime> {
        self.written
    }

    /// File the per-host key is kept in, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Fleet mode: switch to the key of `epoch` (the generation becomes `epoch`). Returns
    /// whether the key changed; always `false` for a per-host key.
    pub fn enter_epoch(&mut self, epoch: u64) -> bool {
        let Some(fleet) = &self.fleet else {
            return false;
        };
        if epoch == self.generation {
            return false;
        }
        self.bytes = derive_epoch_key(&fleet.secret, epoch);
        self.mac = keyed(&self.bytes);
        self.generation = epoch;
        self.stamp = new_stamp();
        true
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
        let written = fs::metadata(path).and_then(|m| m.modified()).ok();
        Ok(Self {
            mac: keyed(&bytes),
            bytes,
            generation: 0,
            path: Some(path.to_path_buf()),
            fleet: None,
            written,
            stamp: new_stamp(),
        })
    }

    /// The key the identity config asks for: the fleet key of the epoch of `now` if
    /// `shared_secret_file` is set, else `key`, else `key_file`, else
    /// `state_dir/fingerprint.key` when there is a state directory, else random.
    pub fn from_config(
        config: &super::IdentityConfig,
        state_dir: Option<&Path>,
        now: SystemTime,
    ) -> Result<Self, KeyError> {
        if let Some(path) = &config.shared_secret_file {
            let secret = read_shared_secret(path)?;
            return Ok(Self::from_shared_secret(
                secret,
                config.rotate_every_secs,
                now,
            ));
        }
        if let Some(secret) = &config.key {
            return Self::from_hex(secret.expose());
        }
        if let Some(path) = &config.key_file {
            return Self::load_or_create(path);
        }
        if let Some(dir) = state_dir {
            let mut builder = fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::DirBuilderExt as _;
                builder.mode(0o700);
            }
            builder.create(dir).map_err(|source| KeyError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            return Self::load_or_create(&dir.join(STATE_KEY_FILE));
        }
        Self::random()
    }

    /// Replace the key with a new random one (and rewrite the key file if the key came
    /// from one). Fingerprints made after this cannot be linked to those made before.
    /// A fleet key moves to the next epoch instead (never random: see
    /// [`FingerprintKey::enter_epoch`]).
    pub fn rotate(&mut self) -> Result<(), KeyError> {
        if self.fleet.is_some() {
            self.enter_epoch(self.generation.wrapping_add(1));
            return Ok(());
        }
        let bytes = random_bytes()?;
        if let Some(path) = &self.path {
            write_key_file(path, &bytes)?;
        }
        self.bytes = bytes;
        self.mac = keyed(&self.bytes);
        self.generation += 1;
        self.stamp = new_stamp();
        self.written = self.path.as_ref().map(|_| SystemTime::now());
        Ok(())
    }

    /// How many times the key was rotated since it was made or loaded.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Unique in this process to the current key bytes of this key (changes with them).
    pub(crate) fn stamp(&self) -> u64 {
        self.stamp
    }

    /// Fingerprint `raw` in a domain (which keeps e.g. a `sub` apart from a token with the
    /// same text), shown with `prefix`.
    pub fn fingerprint(&self, prefix: &str, domain: &str, raw: &[u8]) -> Fingerprint {
        let mut mac = self.mac.clone();
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(raw);
        let digest = mac.finalize().into_bytes();
        // `prefix_hex` built on the stack: one allocation, the shared string itself.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 32 + FINGERPRINT_HEX];
        let Some(text) = buf.get_mut(..prefix.len() + 1 + FINGERPRINT_HEX) else {
            let hex = to_hex(&digest[..FINGERPRINT_HEX / 2]);
            return Fingerprint(Arc::from(format!("{prefix}_{hex}")));
        };
        let (head, hex) = text.split_at_mut(prefix.len() + 1);
        head[..prefix.len()].copy_from_slice(prefix.as_bytes());
        head[prefix.len()] = b'_';
        for (pair, b) in hex.chunks_exact_mut(2).zip(&digest[..FINGERPRINT_HEX / 2]) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 15)];
        }
        let text = std::str::from_utf8(text).expect("a str and hex digits");
        Fingerprint(Arc::from(text))
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

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_secs(secs)
    }

    const SECRET: &[u8; 40] = b"0123456789abcdef0123456789abcdef-fleet-1";

    #[test]
    fn fleet_same_secret_same_epoch_same_fingerprint() {
        let a = FingerprintKey::from_shared_secret(SECRET.to_vec(), 3600, at(7200));
        let b = FingerprintKey::from_shared_secret(SECRET.to_vec(), 3600, at(10_799));
        assert_eq!(a.generation(), 2);
        assert_eq!(b.generation(), 2);
        assert!(a.is_fleet());
        assert_eq!(
            a.fingerprint("tok", "cred", b"x"),
            b.fingerprint("tok", "cred", b"x")
        );
        // Another epoch, another secret: other fingerprints.
        let c = FingerprintKey::from_shared_secret(SECRET.to_vec(), 3600, at(10_800));
        assert_eq!(c.generation(), 3);
        assert_ne!(
            a.fingerprint("tok", "cred", b"x"),
            c.fingerprint("tok", "cred", b"x")
        );
        let mut other = SECRET.to_vec();
        other[0] ^= 1;
        let d = FingerprintKey::from_shared_secret(other, 3600, at(7200));
        assert_ne!(
            a.fingerprint("tok", "cred", b"x"),
            d.fingerprint("tok", "cred", b"x")
        );
        // No rotation: one epoch, 0, whatever the time.
        let e = FingerprintKey::from_shared_secret(SECRET.to_vec(), 0, at(1));
        let f = FingerprintKey::from_shared_secret(SECRET.to_vec(), 0, at(1_000_000_000));
        assert_eq!(e.generation(), 0);
        assert_eq!(
            e.fingerprint("tok", "cred", b"x"),
            f.fingerprint("tok", "cred", b"x")
        );
        // Debug shows neither the secret nor the key.
        let printed = format!("{a:?}");
        assert!(!printed.contains("0123456789"), "{printed}");
    }

    #[test]
    fn fleet_key_is_hkdf_of_the_epoch() {
        let key = FingerprintKey::from_shared_secret(SECRET.to_vec(), 60, at(125));
        let hk = Hkdf::<Sha256>::new(Some(b"observer fingerprint key v1"), SECRET);
        let mut expected = [0u8; KEY_BYTES];
        hk.expand(&2u64.to_be_bytes(), &mut expected).unwrap();
        assert_eq!(key.bytes, expected);
    }

    #[test]
    fn fleet_enter_epoch_switches_only_on_change() {
        let mut key = FingerprintKey::from_shared_secret(SECRET.to_vec(), 60, at(0));
        let fresh = |e: u64| FingerprintKey::from_shared_secret(SECRET.to_vec(), 60, at(e * 60));
        assert_eq!(key.fleet_epoch_at(at(59)), Some(0));
        assert!(!key.enter_epoch(0));
        assert_eq!(key.fleet_epoch_at(at(60)), Some(1));
        assert!(key.enter_epoch(1));
        assert_eq!(key.generation(), 1);
        assert_eq!(key.bytes, fresh(1).bytes);
        key.rotate().unwrap();
        assert_eq!(
            key.generation(),
            2,
            "a fleet rotation moves to the next epoch"
        );
        assert_eq!(key.bytes, fresh(2).bytes);
        let mut host = FingerprintKey::from_bytes([1; KEY_BYTES]);
        assert_eq!(host.fleet_epoch_at(at(60)), None);
        assert!(!host.enter_epoch(5));
    }

    #[test]
    fn bad_secret_files_name_the_path() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tmpdir("secret");
        let write = |name: &str, bytes: &[u8], mode: u32| {
            let path = dir.join(name);
            fs::write(&path, bytes).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        let check = |path: &Path, phrase: &str| {
            let err = read_shared_secret(path).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains(phrase), "{err}");
            assert!(!err.contains("0123456789"), "{err}");
        };
        check(&dir.join("missing.secret"), "No such file");
        check(&write("short.secret", &SECRET[..31], 0o600), "31 bytes");
        check(&write("open.secret", SECRET, 0o644), "0644");
        check(&write("group.secret", SECRET, 0o640), "0640");
        let good = write("good.secret", SECRET, 0o400);
        assert_eq!(read_shared_secret(&good).unwrap(), SECRET.to_vec());
        let config = super::super::IdentityConfig {
            shared_secret_file: Some(dir.join("open.secret")),
            ..Default::default()
        };
        let err = FingerprintKey::from_config(&config, None, at(0)).unwrap_err();
        assert!(matches!(err, KeyError::BadSecret { .. }), "{err}");
        let config = super::super::IdentityConfig {
            shared_secret_file: Some(good),
            rotate_every_secs: 100,
            ..Default::default()
        };
        let key = FingerprintKey::from_config(&config, Some(&dir), at(250)).unwrap();
        assert!(key.is_fleet() && key.generation() == 2 && key.path().is_none());
        assert!(
            !dir.join(STATE_KEY_FILE).exists(),
            "no per-host key in fleet mode"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn per_host_key_kept_in_the_state_dir() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tmpdir("state").join("state");
        let config = super::super::IdentityConfig::default();
        let k1 = FingerprintKey::from_config(&config, Some(&dir), SystemTime::now()).unwrap();
        let path = dir.join(STATE_KEY_FILE);
        assert_eq!(k1.path(), Some(path.as_path()));
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(k1.written().is_some());
        let k2 = FingerprintKey::from_config(&config, Some(&dir), SystemTime::now()).unwrap();
        assert_eq!(
            k1.fingerprint("tok", "cred", b"x"),
            k2.fingerprint("tok", "cred", b"x"),
            "the same key after a restart"
        );
        // Without a state directory: random per run.
        let k3 = FingerprintKey::from_config(&config, None, SystemTime::now()).unwrap();
        assert!(k3.path().is_none());
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
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
