//! Downstream calls: what the API's processes ask of DNS, databases and caches while they
//! serve a request.
//!
//! Each protocol has a parser that takes the bytes of one client connection (or, for DNS
//! over UDP, one datagram per call) and gives [`Call`]s: protocol, operation, a statement
//! fingerprint with every literal removed, latency and an error class. Nothing else of
//! the bytes is kept: no literal, bind value, row, Redis value, or DNS answer beyond the
//! resolved addresses.

pub mod dns;
mod framing;
pub mod metrics;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sql;
pub mod stats;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::http::Side;

/// Longest fingerprint kept, in bytes (longer ones are cut at a char boundary and end
/// with `…`).
pub const MAX_FINGERPRINT: usize = 256;
/// Longest DNS name kept, in bytes.
pub const MAX_DNS_NAME: usize = 253;

/// The downstream protocols the agent parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Dns,
    Postgres,
    Mysql,
    Redis,
    /// An HTTP call the process made (the client side of the HTTP parsers).
    Http,
}

impl Protocol {
    pub const ALL: [Protocol; 5] = [
        Self::Dns,
        Self::Postgres,
        Self::Mysql,
        Self::Redis,
        Self::Http,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Redis => "redis",
            Self::Http => "http",
        }
    }

    /// Index into per-protocol arrays (`ALL` order).
    pub fn index(self) -> usize {
        self as usize
    }

    /// A database or cache: counted as database work per request.
    pub fn is_database(self) -> bool {
        matches!(self, Self::Postgres | Self::Mysql | Self::Redis)
    }
}

/// `[downstream]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DownstreamConfig {
    /// Follow DNS, PostgreSQL, MySQL and Redis calls of the traced processes and attribute
    /// them to the requests they serve.
    pub enabled: bool,
    /// A session is flagged `downstream_heavy` when its requests on a route cause this many
    /// times the route's usual database calls per request (the median of other sessions').
    pub heavy_factor: f64,
    /// Requests of the session on the route before it can be flagged.
    pub heavy_min_requests: u64,
}

impl Default for DownstreamConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            heavy_factor: 10.0,
            heavy_min_requests: 3,
        }
    }
}

impl DownstreamConfig {
    pub fn validate(&self) -> Result<(), (String, String)> {
        if !self.heavy_factor.is_finite() || self.heavy_factor < 1.0 {
            return Err((
                "downstream.heavy_factor".into(),
                "must be a number of at least 1".into(),
            ));
        }
        if self.heavy_min_requests == 0 {
            return Err((
                "downstream.heavy_min_requests".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Why a call could not be tied to a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Unattributed {
    /// The thread that made it was not serving a request then (background work, a
    /// connection pool warming up, a call made after the response).
    NoRequest,
    /// The thread serves several connections at once (an event loop, an async runtime
    /// whose tasks hop threads): which request a call served cannot be known.
    SharedThread,
    /// The request's connection closed (or was forgotten) before its response.
    NoResponse,
    /// Too many calls waiting on one request.
    Overflow,
}

impl Unattributed {
    pub const ALL: [Unattributed; 4] = [
        Self::NoRequest,
        Self::SharedThread,
        Self::NoResponse,
        Self::Overflow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRequest => "no_request",
            Self::SharedThread => "shared_thread",
            Self::NoResponse => "no_response",
            Self::Overflow => "overflow",
        }
    }
}

/// A call with where it went and whether it was attributed: what the metrics and
/// `/api/downstream` count.
#[derive(Clone, Debug)]
pub struct Record {
    pub call: Call,
    /// The server's address (unknown for connections found at start without addresses).
    pub target: Option<SocketAddr>,
    /// The DNS name the process resolved to that address, when it did.
    pub target_name: Option<Arc<str>>,
    /// `Ok`: attributed to a request; `Err`: why not.
    pub attributed: Result<(), Unattributed>,
}

/// Most distinct fingerprints kept per exchange and per session.
pub const MAX_FINGERPRINTS: usize = 16;
/// Most distinct DNS names kept per exchange and per session.
pub const MAX_DNS_NAMES: usize = 8;

/// The downstream work of one request (or one session): counts per protocol, errors,
/// and the bounded sets of fingerprints and DNS names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub calls: [u64; 5],
    pub errors: [u64; 5],
    /// Database authentication or permission errors.
    pub auth_errors: u64,
    pub fingerprints: Vec<(Protocol, String)>,
    pub dns_names: Vec<String>,
}

impl Summary {
    pub fn add(&mut self, call: &Call) {
        let i = call.protocol.index();
        self.calls[i] += 1;
        if let Some(e) = call.error {
            self.errors[i] += 1;
            if call.protocol.is_database() && matches!(e, ErrorClass::Auth | ErrorClass::Permission)
            {
                self.auth_errors += 1;
            }
        }
        if let Some(fp) = &call.fingerprint {
            if self.fingerprints.len() < MAX_FINGERPRINTS
                && !self
                    .fingerprints
                    .iter()
                    .any(|(p, f)| *p == call.protocol && f == fp)
            {
                self.fingerprints.push((call.protocol, fp.clone()));
            }
        }
        if let Some(name) = &call.dns_name {
            if self.dns_names.len() < MAX_DNS_NAMES && !self.dns_names.contains(name) {
                self.dns_names.push(name.clone());
            }
        }
    }

    /// Fold another summary in (a session's total).
    pub fn merge(&mut self, other: &Summary) {
        for i in 0..self.calls.len() {
            self.calls[i] += other.calls[i];
            self.errors[i] += other.errors[i];
        }
        self.auth_errors += other.auth_errors;
        for fp in &other.fingerprints {
            if self.fingerprints.len() < MAX_FINGERPRINTS && !self.fingerprints.contains(fp) {
                self.fingerprints.push(fp.clone());
            }
        }
        for n in &other.dns_names {
            if self.dns_names.len() < MAX_DNS_NAMES && !self.dns_names.contains(n) {
                self.dns_names.push(n.clone());
            }
        }
    }

    /// Database and cache calls.
    pub fn database_calls(&self) -> u64 {
        Protocol::ALL
            .iter()
            .filter(|p| p.is_database())
            .map(|p| self.calls[p.index()])
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.iter().all(|c| *c == 0)
    }

    /// The JSON form: `{"calls": {"dns": 3}, "errors": {...}, "fingerprints": [...],
    /// "dns_names": [...]}` (protocols with no call, and empty parts, left out).
    pub fn json(&self) -> serde_json::Value {
        let per = |counts: &[u64; 5]| {
            Protocol::ALL
                .iter()
                .filter(|p| counts[p.index()] > 0)
                .map(|p| (p.as_str().to_string(), serde_json::json!(counts[p.index()])))
                .collect::<serde_json::Map<_, _>>()
        };
        let mut out = serde_json::Map::new();
        out.insert("calls".into(), per(&self.calls).into());
        if self.errors.iter().any(|e| *e > 0) {
            out.insert("errors".into(), per(&self.errors).into());
        }
        if !self.fingerprints.is_empty() {
            let mut fps: Vec<&str> = self.fingerprints.iter().map(|(_, f)| f.as_str()).collect();
            fps.sort_unstable();
            out.insert("fingerprints".into(), fps.into());
        }
        if !self.dns_names.is_empty() {
            let mut names = self.dns_names.clone();
            names.sort_unstable();
            out.insert("dns_names".into(), names.into());
        }
        out.into()
    }
}

impl Serialize for Summary {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.json().serialize(s)
    }
}

/// How a call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Authentication failed (wrong password, unknown user: PostgreSQL 28xxx, MySQL 1045,
    /// Redis `WRONGPASS`/`NOAUTH`).
    Auth,
    /// Permission denied (PostgreSQL 42501, MySQL 1142/1143/1044, Redis `NOPERM`).
    Permission,
    /// The statement was refused (syntax error, unknown table/column, wrong type: PostgreSQL
    /// class 42 other than 42501, MySQL 1064/1146/1054, Redis `ERR`/`WRONGTYPE`).
    Statement,
    /// DNS: the name does not exist (NXDOMAIN).
    NotFound,
    /// The server failed (DNS SERVFAIL/REFUSED, other database errors).
    Server,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Permission => "permission",
            Self::Statement => "statement",
            Self::NotFound => "not_found",
            Self::Server => "server",
        }
    }
}

/// One downstream call, as its parser saw it (the connection layer adds who made it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub protocol: Protocol,
    /// Upper-case operation: `SELECT`, `INSERT`, `BEGIN` (SQL: the first keyword), `GET`,
    /// `HGETALL` (Redis: the command name), `A`, `AAAA`, `SRV` (DNS: the query type),
    /// `CONNECT` (a database login), `PREPARE`/`EXECUTE` where the protocol has them.
    pub operation: String,
    /// Statement with every literal replaced by `?` (SQL), or the command with its
    /// arguments dropped (Redis: `GET ?`); `None` for DNS. At most `MAX_FINGERPRINT`
    /// bytes.
    pub fingerprint: Option<String>,
    /// DNS: the name asked for (lower case, no trailing dot).
    pub dns_name: Option<String>,
    /// DNS: the addresses of the A/AAAA answers (the only answer data kept).
    pub answers: Vec<IpAddr>,
    /// When the request's first byte was sent (monotonic ns, from the record).
    pub started_ns: u64,
    /// When the response's (last) byte was read.
    pub ended_ns: u64,
    pub error: Option<ErrorClass>,
}

/// Why bytes were skipped (counted per protocol and reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Skip {
    /// Bytes that do not follow the protocol (bad length, bad type byte).
    Malformed,
    /// A message cut short (truncated DNS message, a capture shorter than the message).
    Truncated,
    /// A message type the parser does not know (skipped by its length).
    UnknownMessage,
    /// A response with no request waiting for it.
    Unmatched,
    /// Bytes lost before this segment: the parser resynchronises.
    Lost,
    /// Encrypted (TLS negotiated on the connection): nothing more is parsed.
    Encrypted,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Truncated => "truncated",
            Self::UnknownMessage => "unknown_message",
            Self::Unmatched => "unmatched",
            Self::Lost => "lost",
            Self::Encrypted => "encrypted",
        }
    }
}

/// What a parser produced from one segment.
#[derive(Debug, Default)]
pub struct Output {
    pub calls: Vec<Call>,
    pub skips: Vec<Skip>,
}

/// One segment of a downstream connection: the bytes one read or write moved.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    pub ts_ns: u64,
    /// The bytes captured (a prefix of what moved when the call was larger).
    pub data: &'a [u8],
    /// Bytes the call moved (`>= data.len()`).
    pub len: u64,
    /// Bytes of this direction lost just before this segment (0 normally).
    pub lost_before: u64,
}

/// A parser of one downstream connection. `Side::Client` bytes are what the traced
/// process sent (requests), `Side::Server` bytes what it received.
pub trait Parser: Send {
    fn protocol(&self) -> Protocol;
    fn feed(&mut self, side: Side, segment: Segment<'_>, out: &mut Output);
}

/// Which protocol a client connection speaks, from the first bytes seen on it and the
/// server's port. `side` says who sent `first`. `None`: not a downstream protocol (the
/// caller tries HTTP, or ignores the connection).
pub fn detect(side: Side, first: &[u8], server_port: u16, datagram: bool) -> Option<Protocol> {
    if datagram {
        return (server_port == 53 && side == Side::Client && dns::looks_like_query(first))
            .then_some(Protocol::Dns);
    }
    match side {
        Side::Client => {
            if postgres::looks_like_startup(first) {
                Some(Protocol::Postgres)
            } else if redis::looks_like_command(first) {
                Some(Protocol::Redis)
            } else if server_port == 53 && dns::looks_like_tcp_query(first) {
                Some(Protocol::Dns)
            } else {
                None
            }
        }
        Side::Server => mysql::looks_like_greeting(first).then_some(Protocol::Mysql),
    }
}

/// A new parser for `protocol` (`datagram`: DNS over UDP, one message per segment);
/// `None` for HTTP, which the HTTP parsers handle.
pub fn parser(protocol: Protocol, datagram: bool) -> Option<Box<dyn Parser>> {
    Some(match protocol {
        Protocol::Dns => Box::new(dns::DnsParser::new(datagram)),
        Protocol::Postgres => Box::new(postgres::PostgresParser::new()),
        Protocol::Mysql => Box::new(mysql::MysqlParser::new()),
        Protocol::Redis => Box::new(redis::RedisParser::new()),
        Protocol::Http => return None,
    })
}
