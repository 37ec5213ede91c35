//! [`Exchange`]: one request and its response on one connection, with where it happened.
//! This is what the connection stage hands to every later stage (identity, sessions,
//! metrics, the JSON-lines stream).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use crate::{
    http::{Grpc, Header, Protocol},
    route::RouteTemplate,
    session::dims::{network_of, ClientIpMode},
    workload::Workload,
};

/// How client addresses appear in what the agent prints: in full (with port), as their
/// truncated network, or not at all (the `[sessions] client_ip` setting).
#[derive(Clone, Copy, Debug)]
pub struct AddressPolicy {
    pub mode: ClientIpMode,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
}

impl AddressPolicy {
    /// The default: IPv4 /24, IPv6 /48.
    pub const TRUNCATE: Self = Self {
        mode: ClientIpMode::Truncate,
        ipv4_prefix: 24,
        ipv6_prefix: 48,
    };

    pub fn client(&self, addr: SocketAddr) -> String {
        match self.mode {
            ClientIpMode::Full => addr.to_string(),
            mode => network_of(addr.ip(), mode, self.ipv4_prefix, self.ipv6_prefix).to_string(),
        }
    }
}

/// Which end of the connection the traced process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The process accepted the connection: an API this host serves.
    Server,
    /// The process connected: a call this host makes to another API.
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Client => "client",
        }
    }
}

/// The unspecified address, used when a connection's addresses could not be learned.
pub const UNKNOWN_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// One HTTP request and its response.
///
/// `request_headers` and `query` may hold raw credentials: they live only until the
/// identity stage has fingerprinted them, and are never printed (see the `Debug` impl and
/// [`Exchange::record`]).
#[derive(Clone)]
pub struct Exchange {
    pub protocol: Protocol,
    pub role: Role,
    /// Plaintext seen inside TLS.
    pub tls: bool,
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// The traced process (server or client, per `role`).
    pub pid: u32,
    pub comm: Arc<str>,
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Raw query string (after `?`), if any.
    pub query: Option<String>,
    /// Method and path template, computed once here for every later stage.
    pub route: RouteTemplate,
    pub status: u16,
    /// Allowlisted request headers (lower-case names).
    pub request_headers: Vec<Header>,
    /// Wall-clock time of the request's first byte.
    pub started_at: SystemTime,
    /// From the end of the request head to the end of the response head.
    pub latency: Duration,
    pub request_body_bytes: u64,
    pub response_body_bytes: Option<u64>,
    /// gRPC status and message counts, for gRPC calls.
    pub grpc: Option<Grpc>,
    /// Container and pod of the traced process (empty outside containers).
    pub workload: Arc<Workload>,
    /// Exchanges on the same connection, since the one reported before this, that were
    /// not seen whole (records lost): counted against this exchange's session.
    pub lost_before: u32,
    /// Server exchanges: the downstream calls (DNS, databases, HTTP) the thread serving
    /// the request made while it did; `None` when it made none (or none could be
    /// attributed).
    pub downstream: Option<Box<crate::downstream::Summary>>,
}

impl Exchange {
    /// First value of a request header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.request_headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.as_str())
    }

    /// `1xx`..`5xx` of the [outcome](Self::outcome).
    pub fn status_class(&self) -> &'static str {
        status_class(self.outcome())
    }

    /// The status that says how the call went: the HTTP status, or for a gRPC call
    /// (which answers HTTP 200 whatever happens) its `grpc-status` mapped to the HTTP
    /// status of the same meaning, so that sessions and metrics judge both alike
    /// (UNAUTHENTICATED is a 401, PERMISSION_DENIED a 403, ...).
    pub fn outcome(&self) -> u16 {
        match &self.grpc {
            Some(Grpc {
                status: Some(code), ..
            }) if self.status == 200 => grpc_http_status(*code),
            _ => self.status,
        }
    }

    /// A short name of the protocol for people: `http1`, `http2` or `grpc`.
    pub fn protocol_name(&self) -> &'static str {
        match (self.protocol, &self.grpc) {
            (_, Some(_)) => "grpc",
            (Protocol::Http1, None) => "http1",
            (Protocol::Http2, None) => "http2",
        }
    }

    /// The printable record of this exchange: the route template (the raw path only when
    /// `raw_path`), no header values, no query values (only the names of `name=value`
    /// parameters that look like names), the client address as `policy` allows.
    pub fn record(&self, policy: &AddressPolicy, raw_path: bool) -> ExchangeRecord<'_> {
        ExchangeRecord {
            ts: self
                .started_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
            protocol: self.protocol,
            role: self.role,
            tls: self.tls,
            method: &self.method,
            route: &self.route.path,
            path: raw_path.then_some(self.path.as_str()),
            query_keys: self.query.as_deref().map(query_keys).unwrap_or_default(),
            status: self.status,
            latency_ms: self.latency.as_secs_f64() * 1000.0,
            client: policy.client(self.client),
            server: self.server,
            pid: self.pid,
            comm: &self.comm,
            request_body_bytes: self.request_body_bytes,
            response_body_bytes: self.response_body_bytes,
            grpc: self.grpc.as_ref(),
            workload: &self.workload,
            downstream: self.downstream.as_deref(),
        }
    }
}

/// The names of a query's `name=value` parameters that may be printed: a part without
/// `=` (`/cb?<token>`) may be a value itself and is never printed, nor is a name that
/// looks like a value (an id, an address, an encoded string).
fn query_keys(query: &str) -> Vec<&str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
        .filter(|k| {
            !k.is_empty() && crate::route::is_safe_literal(k) && !crate::route::is_id_segment(k)
        })
        .collect()
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.record(&AddressPolicy::TRUNCATE, false).fmt(f)
    }
}

/// The HTTP status of the same meaning as a gRPC status code (the mapping of
/// `google.rpc.Code`, as grpc-gateway and Envoy use it).
pub fn grpc_http_status(code: u8) -> u16 {
    match code {
        0 => 200,  // OK
        1 => 499,  // CANCELLED
        2 => 500,  // UNKNOWN
        3 => 400,  // INVALID_ARGUMENT
        4 => 504,  // DEADLINE_EXCEEDED
        5 => 404,  // NOT_FOUND
        6 => 409,  // ALREADY_EXISTS
        7 => 403,  // PERMISSION_DENIED
        8 => 429,  // RESOURCE_EXHAUSTED
        9 => 400,  // FAILED_PRECONDITION
        10 => 409, // ABORTED
        11 => 400, // OUT_OF_RANGE
        12 => 501, // UNIMPLEMENTED
        13 => 500, // INTERNAL
        14 => 503, // UNAVAILABLE
        15 => 500, // DATA_LOSS
        16 => 401, // UNAUTHENTICATED
        _ => 500,
    }
}

/// Status class label of a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// What the JSON-lines stream prints for an exchange.
#[derive(Debug, Serialize)]
pub struct ExchangeRecord<'a> {
    /// Unix time of the request, seconds.
    pub ts: f64,
    pub protocol: Protocol,
    pub role: Role,
    pub tls: bool,
    pub method: &'a str,
    /// The route template (`/users/{id}/orders`), always printed.
    pub route: &'a str,
    /// The raw path, only with `output.exchange_raw_paths` (it may name people).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'a str>,
    /// Names of the `name=value` query parameters; values are never printed.
    pub query_keys: Vec<&'a str>,
    pub status: u16,
    pub latency_ms: f64,
    /// `ip:port`, a network (`10.1.2.0/24`) or `redacted`, per the address policy.
    pub client: String,
    pub server: SocketAddr,
    pub pid: u32,
    pub comm: &'a str,
    pub request_body_bytes: u64,
    pub response_body_bytes: Option<u64>,
    /// gRPC status, `grpc-message` length and message counts (gRPC calls only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<&'a Grpc>,
    #[serde(flatten)]
    pub workload: &'a Workload,
    /// Downstream calls made while serving the request (absent when none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downstream: Option<&'a crate::downstream::Summary>,
}

/// Split a request target into path and query; absolute-form targets lose their scheme
/// and authority.
pub fn split_target(target: &str) -> (String, Option<String>) {
    let rest = match target.find("://") {
        Some(i) if !target.starts_with('/') => {
            let after = &target[i + 3..];
            match after.find('/') {
                Some(j) => &after[j..],
                None => "/",
            }
        }
        _ => target,
    };
    let rest = rest.split('#').next().unwrap_or_default();
    match rest.split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (rest.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_target_forms() {
        assert_eq!(split_target("/a/b"), ("/a/b".into(), None));
        assert_eq!(
            split_target("/a?x=1&y"),
            ("/a".into(), Some("x=1&y".into()))
        );
        assert_eq!(
            split_target("http://h:8/p/q?k=v"),
            ("/p/q".into(), Some("k=v".into()))
        );
        assert_eq!(split_target("http://h"), ("/".into(), None));
        assert_eq!(split_target("*"), ("*".into(), None));
        assert_eq!(split_target("/p#frag"), ("/p".into(), None));
    }

    #[test]
    fn debug_never_prints_header_values_or_query_values() {
        let ex = Exchange {
            protocol: Protocol::Http1,
            role: Role::Server,
            tls: false,
            client: UNKNOWN_ADDR,
            server: UNKNOWN_ADDR,
            pid: 1,
            comm: Arc::from("x"),
            method: "GET".into(),
            path: "/p/alice.smith".into(),
            query: Some("api_key=SECRETQ&SECRETBARE&alice@example.com=x&page=2".into()),
            route: crate::route::RouteTemplate::of("GET", "/p/alice.smith"),
            status: 200,
            request_headers: vec![Header {
                name: "authorization".into(),
                value: "Bearer SECRETH".into(),
            }],
            started_at: SystemTime::UNIX_EPOCH,
            latency: Duration::ZERO,
            request_body_bytes: 0,
            response_body_bytes: None,
            grpc: None,
            workload: Default::default(),
            lost_before: 0,
            downstream: None,
        };
        let printed = format!(
            "{ex:?} {}",
            serde_json::to_string(&ex.record(&AddressPolicy::TRUNCATE, false)).unwrap()
        );
        assert!(!printed.contains("SECRET"), "{printed}");
        assert!(!printed.contains("alice"), "{printed}");
        assert!(printed.contains(r#""route":"/p/{id}""#), "{printed}");
        assert!(
            printed.contains(r#""query_keys":["api_key","page"]"#),
            "{printed}"
        );
        // The raw path only when asked for; the query never.
        let raw = serde_json::to_string(&ex.record(&AddressPolicy::TRUNCATE, true)).unwrap();
        assert!(raw.contains(r#""path":"/p/alice.smith""#), "{raw}");
        assert!(!raw.contains("SECRET"), "{raw}");
    }

    #[test]
    fn grpc_outcome_is_its_status_mapped() {
        let mut ex = crate::session::testutil::ExchangeBuilder::new().build();
        assert_eq!((ex.outcome(), ex.protocol_name()), (200, "http1"));
        ex.protocol = Protocol::Http2;
        assert_eq!(ex.protocol_name(), "http2");
        ex.grpc = Some(Grpc {
            status: Some(16),
            ..Grpc::default()
        });
        assert_eq!(
            (ex.outcome(), ex.status_class(), ex.protocol_name()),
            (401, "4xx", "grpc")
        );
        ex.grpc = Some(Grpc::default());
        // no grpc-status seen (reset or lost): the HTTP status stands
        assert_eq!(ex.outcome(), 200);
        // a gRPC call refused at the HTTP level keeps its HTTP status
        ex.status = 503;
        ex.grpc = Some(Grpc {
            status: Some(0),
            ..Grpc::default()
        });
        assert_eq!(ex.outcome(), 503);
        assert_eq!(grpc_http_status(14), 503);
        assert_eq!(grpc_http_status(7), 403);
        assert_eq!(grpc_http_status(200), 500);
    }

    #[test]
    fn client_address_follows_the_policy() {
        let addr: SocketAddr = "192.0.2.77:5000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8:1:2:3::9]:443".parse().unwrap();
        let full = AddressPolicy {
            mode: ClientIpMode::Full,
            ..AddressPolicy::TRUNCATE
        };
        let drop = AddressPolicy {
            mode: ClientIpMode::Drop,
            ..AddressPolicy::TRUNCATE
        };
        assert_eq!(full.client(addr), "192.0.2.77:5000");
        assert_eq!(AddressPolicy::TRUNCATE.client(addr), "192.0.2.0/24");
        assert_eq!(AddressPolicy::TRUNCATE.client(v6), "2001:db8:1::/48");
        assert_eq!(drop.client(addr), "redacted");
    }
}
