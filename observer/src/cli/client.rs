//! A minimal HTTP/1.1 client for the agent's control channel (its Unix socket, or its TCP
//! control listener with a bearer token, in plain HTTP or in TLS with rustls, optionally
//! with a client certificate), enough for the CLI.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _};

/// `http://host:port` or `https://host:port` → `host:port`.
pub fn authority(agent: &str) -> anyhow::Result<&str> {
    let rest = agent
        .strip_prefix("http://")
        .or_else(|| agent.strip_prefix("https://"))
        .with_context(|| format!("agent address {agent:?} must start with http:// or https://"))?;
    Ok(rest.trim_end_matches('/'))
}

/// The CLI's TLS files for an `https://` agent: the CA that signed the agent's
/// certificate, and (mutual TLS) a client certificate and its key.
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    fn any(&self) -> bool {
        self.cacert.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// The client side of TLS: only `cacert`'s CAs are trusted.
    pub fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        use crate::export::tls::{load_certs, load_key, provider};
        let cacert = self
            .cacert
            .as_deref()
            .context("an https:// agent needs --cacert (the CA of the agent's certificate)")?;
        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs("--cacert", cacert)? {
            roots
                .add(c)
                .map_err(|e| anyhow::anyhow!("--cacert {}: {e}", cacert.display()))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(load_certs("--cert", cert)?, load_key("--key", key)?)
                .map_err(|e| {
                    anyhow::anyhow!("--cert {} / --key {}: {e}", cert.display(), key.display())
                })?,
            (None, None) => builder.with_no_client_auth(),
            _ => bail!("--cert and --key go together"),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Where the CLI sends its requests.
#[derive(Clone, Debug)]
pub enum Target {
    /// The agent's control socket (the default).
    Socket(PathBuf),
    /// A TCP control listener (`http://host:port`, or `https://host:port` with `tls`)
    /// and its bearer token.
    Tcp {
        agent: String,
        token: String,
        tls: Option<Arc<rustls::ClientConfig>>,
    },
}

impl Target {
    /// `--agent URL --token-file F [--cacert F --cert F --key F]`, else `--socket PATH`.
    pub fn new(
        socket: &Path,
        agent: Option<&str>,
        token_file: Option<&Path>,
        tls: &TlsFiles,
    ) -> anyhow::Result<Self> {
        match (agent, token_file) {
            (None, None) if tls.any() => {
                bail!("--cacert, --cert and --key go with --agent https://host:port")
            }
            (None, None) => Ok(Self::Socket(socket.to_path_buf())),
            (Some(agent), Some(file)) => {
                authority(agent)?;
                let tls = if agent.starts_with("https://") {
                    Some(tls.client_config()?)
                } else if tls.any() {
                    bail!("--cacert, --cert and --key need an https:// agent");
                } else {
                    None
                };
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading the token file {}", file.display()))?;
                let token = text.lines().next().unwrap_or_default().trim().to_string();
                if token.is_empty() {
                    bail!("the token file {} is empty", file.display());
                }
                Ok(Self::Tcp {
                    agent: agent.to_string(),
                    token,
                    tls,
                })
            }
            (Some(_), None) => bail!(
                "--agent (the TCP control listener) needs --token-file; without them the CLI \
                 uses the control socket (--socket)"
            ),
            (None, Some(_)) => bail!("--token-file goes with --agent http://host:port"),
        }
    }

    /// Send a request with `body`; return (status, body).
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<(u16, String)> {
        match self {
            Self::Socket(socket) => request_unix(socket, method, path, body),
            Self::Tcp { agent, token, tls } => {
                request_over(agent, tls.as_ref(), method, path, body, Some(token))
            }
        }
    }
}

/// Send a request without credentials over TCP; return (status, body).
pub fn request(agent: &str, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    request_with(agent, method, path, b"", None)
}

/// Send a request over TCP, with a bearer token when given; return (status, body).
pub fn request_with(
    agent: &str,
    method: &str,
    path: &str,
    body: &[u8],
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    request_over(agent, None, method, path, body, token)
}

/// Send a request over TCP, in TLS when `tls` is given; return (status, body).
fn request_over(
    agent: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    body: &[u8],
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let host = authority(agent)?;
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("no address for {host}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to the agent at {agent} (is it running?)"))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    let Some(tls) = tls else {
        return send(&mut stream, host, method, path, body, token);
    };
    // The name the agent's certificate must carry: the host part (an IP or a DNS name).
    let name = host
        .rsplit_once(':')
        .map_or(host, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string())
        .map_err(|e| anyhow::anyhow!("agent host {name:?}: {e}"))?;
    let conn = rustls::ClientConnection::new(Arc::clone(tls), server_name)?;
    let mut tls_stream = rustls::StreamOwned::new(conn, stream);
    send(&mut tls_stream, host, method, path, body, token)
        .with_context(|| format!("TLS to the agent at {agent}"))
}

/// Send a request with `body` over the agent's control socket; return (status, body).
/// The body is written once to the socket and not kept.
pub fn request_unix(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the agent's control socket {} (is the agent running, and are you root?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    send(&mut stream, "localhost", method, path, body, None)
}

fn send(
    stream: &mut (impl Read + Write),
    host: &str,
    method: &str,
    path: &str,
    body: &[u8],
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    stream.flush()?;
    let mut raw = Vec::new();
    if let Err(e) = stream.read_to_end(&mut raw) {
        // A TLS peer that closes without close_notify: keep what came (the response is
        // checked for completeness below).
        if e.kind() != std::io::ErrorKind::UnexpectedEof || raw.is_empty() {
            return Err(e.into());
        }
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head_len) = response.parse(raw)? else {
        bail!("incomplete response from the agent");
    };
    let status = response.code.context("no status")?;
    let chunked = response.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value).contains("chunked")
    });
    let mut body = raw[head_len..].to_vec();
    if chunked {
        body = dechunk(&body)?;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let httparse::Status::Complete((used, size)) =
            httparse::parse_chunk_size(data).map_err(|_| anyhow::anyhow!("bad chunk size"))?
        else {
            bail!("truncated chunked body");
        };
        if size == 0 {
            return Ok(out);
        }
        let end = used + size as usize;
        out.extend_from_slice(data.get(used..end).context("truncated chunk")?);
        data = data.get(end + 2..).context("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]";
        assert_eq!(parse_response(plain).unwrap(), (200, "[]".into()));
        let chunked = b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (404, "abcde".into()));
        assert!(parse_response(b"HTTP/1.1 200").is_err());
        assert_eq!(
            authority("http://127.0.0.1:9464/").unwrap(),
            "127.0.0.1:9464"
        );
        assert!(authority("127.0.0.1:9464").is_err());
    }
}
