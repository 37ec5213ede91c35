//! TLS, optionally mutual, on the TCP control listener (`[control] tls_cert`, `tls_key`,
//! `client_ca`).
//!
//! With a certificate and key the listener speaks TLS only; with `client_ca` too, a
//! client must present a certificate signed by that CA (checked by rustls'
//! `WebPkiClientVerifier`) before any HTTP is read. The bearer token is required either
//! way. Handshakes run beside the accept loop (bounded in number and in time), so a slow
//! or silent client holds up no one else.

use std::{
    net::SocketAddr, os::unix::fs::PermissionsExt as _, path::Path, sync::Arc, time::Duration,
};

use anyhow::{bail, Context as _};
use rustls::{pki_types::CertificateDer, server::WebPkiClientVerifier, RootCertStore};
use rustls_pki_types::{pem::PemObject as _, PrivateKeyDer};
use sha2::{Digest as _, Sha256};
use tokio::{net::TcpStream, task::JoinSet};
use tokio_rustls::{server::TlsStream, TlsAcceptor};

use super::{audit::ClientCert, surface::Peer};

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; further connections wait in the kernel's queue.
pub const MAX_HANDSHAKES: usize = 64;

/// The crypto provider of every TLS use in the agent and its CLI.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates of a PEM file; `key` names the config key (or CLI flag) for errors.
pub fn load_certs(key: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let data =
        std::fs::read(path).with_context(|| format!("{key} {}: cannot read it", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{key} {}: not a PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        bail!("{key} {}: holds no PEM certificate", path.display());
    }
    Ok(certs)
}

/// A private key from a PEM file that is not readable by everyone.
pub fn load_key(key: &str, path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("{key} {}: cannot read it", path.display()))?;
    if meta.permissions().mode() & 0o004 != 0 {
        bail!(
            "{key} {} is readable by everyone (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let data =
        std::fs::read(path).with_context(|| format!("{key} {}: cannot read it", path.display()))?;
    PrivateKeyDer::from_pem_slice(&data)
        .map_err(|e| anyhow::anyhow!("{key} {}: no PEM private key: {e}", path.display()))
}

/// The server side: certificate and key, and the CA that client certificates must chain
/// to (`None`: no client certificate asked for).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = load_certs("control.tls_cert", cert)?;
    let private = load_key("control.tls_key", key)?;
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs("control.client_ca", ca)? {
                roots.add(c).map_err(|e| {
                    anyhow::anyhow!(
                        "control.client_ca {}: bad CA certificate: {e}",
                        ca.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| anyhow::anyhow!("control.client_ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, private).map_err(|e| {
        anyhow::anyhow!(
            "control.tls_cert {} / control.tls_key {}: {e}",
            cert.display(),
            key.display()
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What the audit records of a client certificate: its subject CN (when it has one) and
/// the SHA-256 of its DER.
pub fn client_cert(der: &[u8]) -> ClientCert {
    let sha256 = Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let cn = x509_parser::parse_x509_certificate(der)
        .ok()
        .and_then(|(_, c)| {
            c.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok().map(str::to_string))
        });
    ClientCert { cn, sha256 }
}

/// A TCP listener whose connections are handed on only once their TLS handshake is done.
pub struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    pub fn new(tcp: tokio::net::TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            tcp,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let room = self.handshakes.len() < MAX_HANDSHAKES;
            tokio::select! {
                accepted = self.tcp.accept(), if room => match accepted {
                    Ok((stream, addr)) => {
                        let acceptor = self.acceptor.clone();
                        self.handshakes.spawn(async move {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(tls)) => Some((tls, addr)),
                                Ok(Err(e)) => {
                                    tracing::debug!("control listener: TLS handshake with {addr} failed: {e}");
                                    None
                                }
                                Err(_) => {
                                    tracing::debug!("control listener: TLS handshake with {addr} timed out");
                                    None
                                }
                            }
                        });
                    }
                    Err(e) => {
                        // Out of fds and the like: wait a little, as axum's own loop does.
                        tracing::warn!("control listener: accept failed: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(ready)) = done {
                        return ready;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        let client = stream
            .io()
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| client_cert(c.as_ref()));
        Peer::Tls {
            addr: *stream.remote_addr(),
            client,
        }
    }
}
