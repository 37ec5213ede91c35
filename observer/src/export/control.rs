//! The local control channel: a Unix socket serving the JSON API plus the endpoints that
//! take a raw credential ([`super::server::control_router`]).
//!
//! Its directory is created with mode 0700 when missing (0750 and the control group when
//! `control.group` is set); the socket file gets mode 0600 (only its owner, root for the
//! agent, can connect), or 0660 with the control group. Who may then use the API is
//! decided per connection from the caller's uid (`SO_PEERCRED`, see [`super::surface`]). A socket file left by an agent that
//! died is removed at start; one that still answers is another agent, and an error. The
//! file is removed again when the agent stops ([`ControlSocket`]'s `Drop`).

use std::{
    fs,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

/// Default path of the control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/observer/control.sock";

/// `[control]`: the control channel (every API endpoint besides `/metrics` and
/// `/healthz`), and who may use it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Unix socket (mode 0600; its directory 0700 when made). Empty: no control socket.
    pub socket: PathBuf,
    /// A group that may connect to the socket (mode 0660, group-owned). Its members still
    /// need their uid in `uids`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Uids besides root (0) that may use the socket; any other caller gets 403.
    pub uids: Vec<u32>,
    /// Optional TCP control listener (e.g. `0.0.0.0:9465`), requiring
    /// `Authorization: Bearer <token from token_file>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
    /// The bearer token of the TCP control listener: one line, a file that is not
    /// world-readable. Required with `listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// PEM certificate (chain) of the TCP control listener: with `tls_key` it speaks TLS
    /// only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (a file that is not world-readable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// PEM bundle of the CA(s) a client certificate must be signed by (mutual TLS; the
    /// bearer token is still required). Needs `tls_cert` and `tls_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            group: None,
            uids: Vec::new(),
            listen: None,
            token_file: None,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
        }
    }
}

impl ControlConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.listen.is_some() && self.token_file.is_none() {
            return Err((
                "control.token_file".into(),
                "required with control.listen (the TCP control listener needs a token)".into(),
            ));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err((
                    "control.tls_key".into(),
                    "required with control.tls_cert".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "control.tls_cert".into(),
                    "required with control.tls_key".into(),
                ))
            }
            _ => {}
        }
        if self.client_ca.is_some() && self.tls_cert.is_none() {
            return Err((
                "control.client_ca".into(),
                "needs control.tls_cert and control.tls_key (client certificates are asked \
                 for in a TLS handshake)"
                    .into(),
            ));
        }
        if self.tls_cert.is_some() && self.listen.is_none() {
            return Err((
                "control.tls_cert".into(),
                "only used by the TCP control listener; set control.listen".into(),
            ));
        }
        if self.group.as_deref().is_some_and(str::is_empty) {
            return Err(("control.group".into(), "empty group name".into()));
        }
        Ok(())
    }
}

/// The gid of a group name.
pub fn group_id(name: &str) -> anyhow::Result<u32> {
    let c = std::ffi::CString::new(name).context("group name with a NUL byte")?;
    // SAFETY: getgrnam with a valid C string; the result is read at once (startup only,
    // single-threaded use).
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        bail!("control.group: no group named {name:?}");
    }
    // SAFETY: non-null result of getgrnam.
    Ok(unsafe { (*gr).gr_gid })
}

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
            "{what}: {e}: missing privileges (run as root, or set control.socket to a path \
             this user may write, or to \"\" to turn the control socket off)"
        )
    } else {
        anyhow::Error::new(e).context(what)
    }
}

/// Bind the control socket at `path` (see the module documentation).
pub fn bind(path: &Path) -> anyhow::Result<(tokio::net::UnixListener, ControlSocket)> {
    bind_with_group(path, None)
}

/// [`bind`], the socket (and a directory made here) group-owned by `gid` when given.
pub fn bind_with_group(
    path: &Path,
    gid: Option<u32>,
) -> anyhow::Result<(tokio::net::UnixListener, ControlSocket)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(if gid.is_some() { 0o750 } else { 0o700 })
                .create(dir)
                .map_err(|e| {
                    refused(
                        e,
                        format!("creating the control socket directory {}", dir.display()),
                    )
                })?;
            if let Some(gid) = gid {
                std::os::unix::fs::chown(dir, None, Some(gid))
                    .with_context(|| format!("giving {} to the control group", dir.display()))?;
            }
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
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .with_context(|| format!("giving {} to the control group", path.display()))?;
    }
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok((listener, guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_keys_are_validated() {
        let base = ControlConfig {
            listen: Some("127.0.0.1:9465".parse().unwrap()),
            token_file: Some("/etc/observer/token".into()),
            ..Default::default()
        };
        assert!(base.validate().is_ok());
        let tls = ControlConfig {
            tls_cert: Some("/c.pem".into()),
            tls_key: Some("/k.pem".into()),
            client_ca: Some("/ca.pem".into()),
            ..base.clone()
        };
        assert!(tls.validate().is_ok());
        let key_of = |c: ControlConfig| c.validate().unwrap_err().0;
        assert_eq!(
            key_of(ControlConfig {
                tls_key: None,
                ..tls.clone()
            }),
            "control.tls_key"
        );
        assert_eq!(
            key_of(ControlConfig {
                tls_cert: None,
                ..tls.clone()
            }),
            "control.tls_cert"
        );
        assert_eq!(
            key_of(ControlConfig {
                client_ca: Some("/ca.pem".into()),
                ..base.clone()
            }),
            "control.client_ca"
        );
        assert_eq!(
            key_of(ControlConfig {
                listen: None,
                token_file: None,
                ..tls
            }),
            "control.tls_cert"
        );
    }

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
