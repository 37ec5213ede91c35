//! Downstream calls: what the API's processes ask of DNS, databases and caches while they
//! serve a request.
//!
//! Each protocol has a parser that takes the bytes of one client connection (or, for DNS
//! over UDP, one datagram per call) and gives [`Call`]s: protocol, operation, a statement
//! fingerprint with every literal removed, latency and an error class. Nothing else of
//! the bytes is kept: no literal, bind value, row, Redis value, or DNS answer beyond the
//! resolved addresses.

pub mod dns;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sql;

use std::net::IpAddr;

use serde::Serialize;

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
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [Self::Dns, Self::Postgres, Self::Mysql, Self::Redis];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Redis => "redis",
        }
    }

    /// A database (not DNS): counted as database work per request.
    pub fn is_database(self) -> bool {
        !matches!(self, Self::Dns)
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

/// A new parser for `protocol` (`datagram`: DNS over UDP, one message per segment).
pub fn parser(protocol: Protocol, datagram: bool) -> Box<dyn Parser> {
    match protocol {
        Protocol::Dns => Box::new(dns::DnsParser::new(datagram)),
        Protocol::Postgres => Box::new(postgres::PostgresParser::new()),
        Protocol::Mysql => Box::new(mysql::MysqlParser::new()),
        Protocol::Redis => Box::new(redis::RedisParser::new()),
    }
}
