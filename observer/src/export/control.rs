//! The local control channel: a Unix socket serving the JSON API plus the endpoints that
//! take a raw credential ([`super::server::control_router`]).
//!
//! Its directory is created with mode 0700 when missing; the socket file gets mode 0600
//! (only its owner, root for the agent, can connect). A socket file left by an agent that
//! died is removed at start; one that still answers is another agent, and an error. The
//! file is removed again when the agent stops ([`ControlSocket`]'s `Drop`).

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};

/// The socket file; removed when dropped.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
}

impl ControlSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// `what` failed with `e`; a refusal says what is missing.
fn refused(e: std::io::Error, what: String) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        anyhow::anyhow!(
            "{what}: {e}: missing privileges (run as root, or set control_socket to a path \
             this user may write, or to \"\" to turn the control socket off)"
        )
    } else {
        anyhow::Error::new(e).context(what)
    }
}

/// Bind the control socket at `path` (see the module documentation).
pub fn bind(path: &Path) -> anyhow::Result<(tokio::net::UnixListener, ControlSocket)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| {
                    refused(
                        e,
                        format!("creating the control socket directory {}", dir.display()),
                    )
                })?;
        }
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "control socket {} is in use (is another agent running?)",
                    path.display()
                );
            }
            fs::remove_file(path)
                .with_context(|| format!("removing the stale control socket {}", path.display()))?;
            tracing::info!(path = %path.display(), "removed a stale control socket");
        }
        Ok(_) => bail!(
            "control socket path {} exists and is not a socket",
            path.display()
        ),
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| {
        refused(
            e,
            format!("cannot listen on the control socket {}", path.display()),
        )
    })?;
    let guard = ControlSocket {
        path: path.to_path_buf(),
    };
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok((listener, guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_modes_stale_and_cleanup() {
        let base = std::env::temp_dir().join(format!("observer-control-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let path = base.join("run/control.sock");
        let (listener, guard) = bind(&path).unwrap();
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A live socket is not taken over.
        assert!(bind(&path).is_err());
        // A stale one (nobody listening) is replaced.
        drop(listener);
        std::mem::forget(guard);
        assert!(path.exists());
        let (_listener, guard) = bind(&path).unwrap();
        drop(guard);
        assert!(!path.exists());
        // A regular file is left alone.
        fs::write(&path, "x").unwrap();
        assert!(bind(&path).is_err());
        fs::remove_dir_all(&base).unwrap();
    }
}
