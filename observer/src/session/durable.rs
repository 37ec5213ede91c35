//! The durable freeze store: `state_dir/freeze.key` and `state_dir/frozen.json`.
//!
//! `frozen.json` holds, per frozen credential, its durable hash (HMAC under the freeze
//! key, see [`crate::identity::durable`]), its kind and when it was frozen; never a
//! credential and never a fingerprint (fingerprints change with the fingerprint key). It
//! is rewritten whole, atomically (a temporary file with mode 0600, then a rename), after
//! every change. A file that cannot be read or parsed stops the agent at start with an
//! error naming it: silently dropping freezes would let a frozen credential back in.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::identity::{DurableHash, Fingerprint, FreezeKey, KeyError};

/// File names inside `state_dir`.
pub const FREEZE_KEY_FILE: &str = "freeze.key";
pub const FROZEN_FILE: &str = "frozen.json";
const VERSION: u32 = 1;

/// Why the state directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("freeze key: {0}")]
    Key(#[from] KeyError),
    #[error("state file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "state file {path} is corrupt ({message}); fix it, or move it aside to start with no \
         durable freezes"
    )]
    Corrupt { path: PathBuf, message: String },
}

/// One durable freeze.
#[derive(Clone, Debug)]
pub struct DurableEntry {
    pub hash: DurableHash,
    /// Credential kind it was frozen as (`bearer`, `api_key`, `cookie`, `basic`).
    pub kind: String,
    /// Unix seconds.
    pub frozen_at: f64,
    /// Its fingerprints under the current key, once known (never persisted).
    pub fingerprints: Vec<Fingerprint>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredEntry {
    hash: DurableHash,
    kind: String,
    frozen_at: f64,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredFile {
    version: u32,
    frozen: Vec<StoredEntry>,
}

/// Create `dir` with mode 0700 if missing.
pub fn ensure_dir(dir: &Path) -> Result<(), StateError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir).map_err(|source| StateError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// The freeze key of `dir` (created if missing).
pub fn load_key(dir: &Path) -> Result<FreezeKey, StateError> {
    ensure_dir(dir)?;
    Ok(FreezeKey::load_or_create(&dir.join(FREEZE_KEY_FILE))?)
}

/// The entries stored at `path`; none when the file does not exist.
pub fn load(path: &Path) -> Result<Vec<DurableEntry>, StateError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let corrupt = |message: String| StateError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let file: StoredFile = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if file.version != VERSION {
        return Err(corrupt(format!("unknown version {}", file.version)));
    }
    Ok(file
        .frozen
        .into_iter()
        .map(|e| DurableEntry {
            hash: e.hash,
            kind: e.kind,
            frozen_at: e.frozen_at,
            fingerprints: Vec::new(),
        })
        .collect())
}

/// Write `entries` to `path` atomically, mode 0600.
pub fn save<'a>(
    path: &Path,
    entries: impl Iterator<Item = &'a DurableEntry>,
) -> Result<(), StateError> {
    let file = StoredFile {
        version: VERSION,
        frozen: entries
            .map(|e| StoredEntry {
                hash: e.hash,
                kind: e.kind.clone(),
                frozen_at: e.frozen_at,
            })
            .collect(),
    };
    let mut text = serde_json::to_vec_pretty(&file).expect("serialisable");
    text.push(b'\n');
    crate::private_file::write(path, &text).map_err(|source| StateError::Io {
        path: path.to_path_buf(),
        source,
    })
}
