//! A minimal HTTP/1.1 client for the agent's control channel (its Unix socket, or its TCP
//! control listener with a bearer token), enough for the CLI without another dependency.

use std::{
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};

/// `http://host:port` → `host:port`.
pub fn authority(agent: &str) -> anyhow::Result<&str> {
    let rest = agent
        .strip_prefix("http://")
        .with_context(|| format!("agent address {agent:?} must start with http://"))?;
    Ok(rest.trim_end_matches('/'))
}

/// Where the CLI sends its requests.
#[derive(Clone, Debug)]
pub enum Target {
    /// The agent's control socket (the default).
    Socket(PathBuf),
    /// A TCP control listener (`http://host:port`) and its bearer token.
    Tcp { agent: String, token: String },
}

impl Target {
    /// `--agent URL --token-file F`, else `--socket PATH`.
    pub fn new(
        socket: &Path,
        agent: Option<&str>,
        token_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        match (agent, token_file) {
            (None, None) => Ok(Self::Socket(socket.to_path_buf())),
            (Some(agent), Some(file)) => {
                authority(agent)?;
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading the token file {}", file.display()))?;
                let token = text.lines().next().unwrap_or_default().trim().to_string();
                if token.is_empty() {
                    bail!("the token file {} is empty", file.display());
                }
                Ok(Self::Tcp {
                    agent: agent.to_string(),
                    token,
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
            Self::Tcp { agent, token } => request_with(agent, method, path, body, Some(token)),
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
    let host = authority(agent)?;
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .next()
        .with_context(|| format!("no address for {host}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to the agent at {agent} (is it running?)"))?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    send(&mut stream, host, method, path, body, token)
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
    stream.read_to_end(&mut raw)?;
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
