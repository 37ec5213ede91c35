//! The two surfaces of the agent and what guards them.
//!
//! - The metrics port serves `/metrics` and `/healthz` only: nothing with identity.
//! - The control channel serves the JSON API: the Unix socket (the caller's uid, read
//!   with `SO_PEERCRED`, must be 0 or listed in `control.uids`) and, optionally, a TCP
//!   listener that requires `Authorization: Bearer <token>` (compared in constant time).
//!
//! On every surface: a request timeout, a limit on requests in flight, a body limit; and
//! on the control channel any request a browser would send (`Origin`, `Sec-Fetch-*`) is
//! refused, so that a web page cannot reach the API through a user's browser.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _};
use axum::{
    extract::{connect_info::Connected, ConnectInfo, Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    serve::IncomingStream,
    Json,
};
use serde_json::json;
use subtle::ConstantTimeEq as _;

pub use super::audit::{Caller, ClientCert};
use tokio::sync::Semaphore;

/// Longest a request may take, from its head to its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most requests in flight per listener; more wait (within the timeout).
pub const MAX_IN_FLIGHT: usize = 16;

/// The peer of a connection, as the listener saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A Unix socket peer; `None` when `SO_PEERCRED` could not be read.
    Unix {
        uid: Option<u32>,
    },
    Tcp(SocketAddr),
    /// A TLS peer of the TCP control listener, with its client certificate (mutual TLS).
    Tls {
        addr: SocketAddr,
        client: Option<ClientCert>,
    },
}

impl Connected<IncomingStream<'_, tokio::net::UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        Peer::Unix {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Peer::Tcp(*stream.remote_addr())
    }
}

/// How a control listener decides who may use it.
pub enum Access {
    /// Unix socket: uid 0 and these uids.
    Uids(Vec<u32>),
    /// TCP: a bearer token; `name` is what the audit records. With `client_cert`, the
    /// connection must also have come with a (verified) client certificate.
    Token {
        name: String,
        token: Vec<u8>,
        client_cert: bool,
    },
}

/// What one listener's guard holds.
pub struct Guard {
    pub access: Option<Access>,
    pub in_flight: Semaphore,
    pub timeout: Duration,
}

impl Guard {
    /// A guard for the metrics port (no access control: it serves nothing with identity).
    pub fn open() -> Arc<Self> {
        Arc::new(Self {
            access: None,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            timeout: REQUEST_TIMEOUT,
        })
    }

    pub fn control(access: Access) -> Arc<Self> {
        Arc::new(Self {
            access: Some(access),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            timeout: REQUEST_TIMEOUT,
        })
    }
}

fn refuse(code: StatusCode, why: &str) -> Response {
    (code, Json(json!({ "error": why }))).into_response()
}

/// Whether a browser sent this request (browsers add these; curl and the CLI do not).
pub fn from_browser(headers: &axum::http::HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN)
        || headers.contains_key("sec-fetch-mode")
        || headers.contains_key("sec-fetch-site")
        || headers.contains_key("sec-fetch-dest")
}

/// The token of an `Authorization: Bearer <token>` header, if any.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = value.split_at(value.iter().position(|b| *b == b' ')?);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
}

/// Decide who the caller is; `Err` is the refusal to send (and to audit).
pub fn authorize(
    access: &Access,
    peer: Option<&Peer>,
    headers: &axum::http::HeaderMap,
) -> Result<Caller, (StatusCode, &'static str, Caller)> {
    let unknown = || {
        Caller::Unknown(match peer {
            Some(Peer::Tcp(a)) => a.to_string(),
            Some(Peer::Tls {
                addr,
                client: Some(c),
            }) => format!(
                "{addr} (client certificate CN={} sha256={})",
                c.cn.as_deref().unwrap_or("-"),
                c.sha256
            ),
            Some(Peer::Tls { addr, client: None }) => addr.to_string(),
            Some(Peer::Unix { uid: Some(u) }) => format!("uid {u}"),
            _ => "unknown peer".into(),
        })
    };
    let caller = match (access, peer) {
        (Access::Uids(uids), Some(Peer::Unix { uid: Some(uid) })) => {
            if *uid != 0 && !uids.contains(uid) {
                return Err((
                    StatusCode::FORBIDDEN,
                    "this uid may not use the control socket (control.uids)",
                    Caller::Uid(*uid),
                ));
            }
            Caller::Uid(*uid)
        }
        (
            Access::Token {
                name,
                token,
                client_cert,
            },
            Some(peer @ (Peer::Tcp(_) | Peer::Tls { .. })),
        ) => {
            let cert = match peer {
                Peer::Tls { client, .. } => client.clone(),
                _ => None,
            };
            if *client_cert && cert.is_none() {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "a client certificate is required",
                    unknown(),
                ));
            }
            let Some(given) = bearer(headers) else {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "a bearer token is required",
                    unknown(),
                ));
            };
            if !bool::from(given.ct_eq(token)) {
                return Err((StatusCode::UNAUTHORIZED, "wrong bearer token", unknown()));
            }
            match cert {
                Some(cert) => Caller::TokenAndCert(name.clone(), cert),
                None => Caller::Token(name.clone()),
            }
        }
        _ => {
            return Err((
                StatusCode::FORBIDDEN,
                "the caller cannot be identified",
                unknown(),
            ))
        }
    };
    if from_browser(headers) {
        return Err((
            StatusCode::FORBIDDEN,
            "requests from browsers (Origin, Sec-Fetch-*) are refused",
            caller,
        ));
    }
    Ok(caller)
}

/// The middleware of every listener: limits, then (control channel) who may call, then
/// the audit of the call.
pub async fn guard(
    State((guard, audit)): State<(Arc<Guard>, Option<Arc<super::audit::Audit>>)>,
    mut req: Request,
    next: Next,
) -> Response {
    let deadline = tokio::time::Instant::now() + guard.timeout;
    let work = async {
        let Ok(_permit) = guard.in_flight.acquire().await else {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        };
        let Some(access) = &guard.access else {
            return next.run(req).await;
        };
        let peer = req.extensions().get::<ConnectInfo<Peer>>().map(|c| &c.0);
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        match authorize(access, peer, req.headers()) {
            Ok(caller) => {
                req.extensions_mut().insert(caller.clone());
                let response = next.run(req).await;
                if let Some(audit) = &audit {
                    audit.record(&caller, &method, &path, &response);
                }
                response
            }
            Err((code, why, caller)) => {
                let response = refuse(code, why);
                if let Some(audit) = &audit {
                    audit.record(&caller, &method, &path, &response);
                }
                response
            }
        }
    };
    match tokio::time::timeout_at(deadline, work).await {
        Ok(r) => r,
        Err(_) => refuse(StatusCode::SERVICE_UNAVAILABLE, "request timed out"),
    }
}

/// Read the TCP control listener's token. The file must exist, must not be readable by
/// everyone, and must hold one non-empty line.
pub fn load_token(path: &Path) -> anyhow::Result<Access> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("control.token_file {}: cannot read it", path.display()))?;
    if meta.permissions().mode() & 0o004 != 0 {
        bail!(
            "control.token_file {} is readable by everyone (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("control.token_file {}: cannot read it", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.is_empty() {
        bail!("control.token_file {} holds no token", path.display());
    }
    if token.len() < 16 {
        bail!(
            "control.token_file {}: the token is shorter than 16 characters",
            path.display()
        );
    }
    Ok(Access::Token {
        name: token_name(path),
        token: token.into_bytes(),
        client_cert: false,
    })
}

/// What the audit records for a token: its file's name.
fn token_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| PathBuf::from(path).display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn uids_on_the_socket() {
        let access = Access::Uids(vec![1000]);
        let root = Peer::Unix { uid: Some(0) };
        let user = Peer::Unix { uid: Some(1000) };
        let other = Peer::Unix { uid: Some(65534) };
        assert_eq!(
            authorize(&access, Some(&root), &headers(&[])).unwrap(),
            Caller::Uid(0)
        );
        assert_eq!(
            authorize(&access, Some(&user), &headers(&[])).unwrap(),
            Caller::Uid(1000)
        );
        let (code, _, who) = authorize(&access, Some(&other), &headers(&[])).unwrap_err();
        assert_eq!((code, who), (StatusCode::FORBIDDEN, Caller::Uid(65534)));
        let unknown = Peer::Unix { uid: None };
        assert_eq!(
            authorize(&access, Some(&unknown), &headers(&[]))
                .unwrap_err()
                .0,
            StatusCode::FORBIDDEN
        );
        assert!(authorize(&access, None, &headers(&[])).is_err());
        // A TCP peer never passes a uid check.
        let tcp = Peer::Tcp("127.0.0.1:1".parse().unwrap());
        assert!(authorize(&access, Some(&tcp), &headers(&[])).is_err());
    }

    #[test]
    fn browsers_are_refused() {
        let access = Access::Uids(vec![]);
        let root = Peer::Unix { uid: Some(0) };
        for h in [
            ("origin", "http://evil.example"),
            ("sec-fetch-mode", "cors"),
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-site", "none"),
        ] {
            let (code, why, who) = authorize(&access, Some(&root), &headers(&[h])).unwrap_err();
            assert_eq!(code, StatusCode::FORBIDDEN, "{h:?}");
            assert!(why.contains("browser"));
            assert_eq!(who, Caller::Uid(0));
        }
    }

    #[test]
    fn bearer_token_on_tcp() {
        let access = Access::Token {
            name: "token".into(),
            token: b"0123456789abcdef".to_vec(),
            client_cert: false,
        };
        let tcp = Peer::Tcp("10.0.0.1:5555".parse().unwrap());
        let ok = authorize(
            &access,
            Some(&tcp),
            &headers(&[("authorization", "Bearer 0123456789abcdef")]),
        );
        assert_eq!(ok.unwrap(), Caller::Token("token".into()));
        let ok = authorize(
            &access,
            Some(&tcp),
            &headers(&[("authorization", "bearer   0123456789abcdef ")]),
        );
        assert!(ok.is_ok());
        for bad in [
            "Bearer 0123456789abcdeX",
            "Bearer 0123456789abcde",
            "Basic 0123456789abcdef",
            "Bearer",
        ] {
            let mut h = HeaderMap::new();
            h.insert("authorization", bad.parse().unwrap());
            let (code, _, who) = authorize(&access, Some(&tcp), &h).unwrap_err();
            assert_eq!(code, StatusCode::UNAUTHORIZED, "{bad}");
            assert_eq!(who, Caller::Unknown("10.0.0.1:5555".into()));
        }
        assert_eq!(
            authorize(&access, Some(&tcp), &headers(&[])).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        // A socket peer is not a token holder.
        let unix = Peer::Unix { uid: Some(0) };
        assert!(authorize(&access, Some(&unix), &headers(&[])).is_err());
    }

    #[test]
    fn mutual_tls_needs_the_certificate_and_the_token() {
        let access = Access::Token {
            name: "ops-token".into(),
            token: b"0123456789abcdef".to_vec(),
            client_cert: true,
        };
        let cert = ClientCert {
            cn: Some("ops-laptop".into()),
            sha256: "ab".repeat(32),
        };
        let addr: SocketAddr = "10.0.0.1:5555".parse().unwrap();
        let with = Peer::Tls {
            addr,
            client: Some(cert.clone()),
        };
        let good = headers(&[("authorization", "Bearer 0123456789abcdef")]);
        let caller = authorize(&access, Some(&with), &good).unwrap();
        assert_eq!(
            caller,
            Caller::TokenAndCert("ops-token".into(), cert.clone())
        );
        let who = caller.to_json();
        assert_eq!(who["token"], "ops-token");
        assert_eq!(who["client_cert"]["cn"], "ops-laptop");
        assert_eq!(who["client_cert"]["sha256"], "ab".repeat(32));
        // The certificate alone is not enough: the token is still required.
        let (code, _, who) = authorize(&access, Some(&with), &headers(&[])).unwrap_err();
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        assert!(matches!(who, Caller::Unknown(p) if p.contains("ops-laptop")));
        // Nor is the token without a certificate, in TLS or in plain TCP.
        let without = Peer::Tls { addr, client: None };
        assert_eq!(
            authorize(&access, Some(&without), &good).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            authorize(&access, Some(&Peer::Tcp(addr)), &good)
                .unwrap_err()
                .0,
            StatusCode::UNAUTHORIZED
        );
        // Browsers are refused on this listener too.
        let browser = headers(&[
            ("authorization", "Bearer 0123456789abcdef"),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(
            authorize(&access, Some(&with), &browser).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn token_file_checks() {
        let dir = std::env::temp_dir().join(format!("observer-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("ops-token");
        let e = load_token(&f).err().unwrap().to_string();
        assert!(e.contains(&f.display().to_string()), "{e}");
        std::fs::write(&f, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_token(&f).err().unwrap().to_string();
        assert!(
            e.contains(&f.display().to_string()) && e.contains("everyone"),
            "{e}"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        match load_token(&f).unwrap() {
            Access::Token { name, token, .. } => {
                assert_eq!(name, "ops-token");
                assert_eq!(token, b"0123456789abcdef0123");
            }
            Access::Uids(_) => unreachable!(),
        }
        std::fs::write(&f, "short\n").unwrap();
        assert!(load_token(&f).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
