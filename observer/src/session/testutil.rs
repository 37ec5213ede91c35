//! Test helpers: build [`Exchange`] values with a controllable clock.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    exchange::{Exchange, Role},
    http::{Header, Protocol},
    route::RouteTemplate,
};

/// The tests' time origin (2023-11-14T22:13:20Z).
pub(crate) const T0: u64 = 1_700_000_000;

/// `T0 + secs`.
pub(crate) fn at(secs: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0) + Duration::from_secs_f64(secs)
}

/// An inbound `GET /` answered 200, over TLS, from 203.0.113.7, at `T0`.
pub(crate) struct ExchangeBuilder(Exchange);

impl Default for ExchangeBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ExchangeBuilder {
    pub(crate) fn new() -> Self {
        Self(Exchange {
            protocol: Protocol::Http1,
            role: Role::Server,
            tls: true,
            client: "203.0.113.7:50000".parse().expect("literal"),
            server: "10.0.0.1:443".parse().expect("literal"),
            pid: 100,
            comm: Arc::from("api-server"),
            method: "GET".into(),
            path: "/".into(),
            query: None,
            route: RouteTemplate::of("GET", "/"),
            status: 200,
            request_headers: Vec::new(),
            started_at: at(0.0),
            latency: Duration::from_millis(5),
            request_body_bytes: 0,
            response_body_bytes: Some(100),
            grpc: None,
            workload: Default::default(),
            lost_before: 0,
            downstream: None,
        })
    }

    pub(crate) fn header(mut self, name: &str, value: &str) -> Self {
        self.0.request_headers.push(Header {
            name: name.to_ascii_lowercase(),
            value: value.into(),
        });
        self
    }

    pub(crate) fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    pub(crate) fn ua(self, ua: &str) -> Self {
        self.header("user-agent", ua)
    }

    pub(crate) fn query(mut self, q: &str) -> Self {
        self.0.query = Some(q.into());
        self
    }

    pub(crate) fn path(mut self, p: &str) -> Self {
        self.0.path = p.into();
        self.0.route = RouteTemplate::of(&self.0.method, p);
        self
    }

    pub(crate) fn method(mut self, m: &str) -> Self {
        self.0.method = m.into();
        self.0.route = RouteTemplate::of(m, &self.0.path);
        self
    }

    pub(crate) fn status(mut self, s: u16) -> Self {
        self.0.status = s;
        self
    }

    /// A gRPC call over HTTP/2 (HTTP 200) that ended with `grpc-status` `code`.
    pub(crate) fn grpc(mut self, code: u8) -> Self {
        self.0.protocol = crate::http::Protocol::Http2;
        self.0.status = 200;
        self.0.method = "POST".into();
        self.0.grpc = Some(crate::http::Grpc {
            status: Some(code),
            message_len: None,
            request_messages: 1,
            response_messages: u32::from(code == 0),
        });
        self
    }

    pub(crate) fn client(mut self, addr: &str) -> Self {
        self.0.client = addr.parse::<SocketAddr>().expect("test address");
        self
    }

    pub(crate) fn server(mut self, addr: &str) -> Self {
        self.0.server = addr.parse::<SocketAddr>().expect("test address");
        self
    }

    pub(crate) fn role(mut self, r: Role) -> Self {
        self.0.role = r;
        self
    }

    pub(crate) fn tls(mut self, tls: bool) -> Self {
        self.0.tls = tls;
        self
    }

    /// Started `secs` after `T0`.
    pub(crate) fn at(mut self, secs: f64) -> Self {
        self.0.started_at = at(secs);
        self
    }

    pub(crate) fn latency_ms(mut self, ms: u64) -> Self {
        self.0.latency = Duration::from_millis(ms);
        self
    }

    /// Downstream work of the request: `db` PostgreSQL calls, `auth_errors` of them
    /// refused (authentication or permission).
    pub(crate) fn downstream(mut self, db: u64, auth_errors: u64) -> Self {
        let mut w = crate::downstream::Summary::default();
        w.calls[crate::downstream::Protocol::Postgres.index()] = db;
        w.errors[crate::downstream::Protocol::Postgres.index()] = auth_errors;
        w.auth_errors = auth_errors;
        self.0.downstream = Some(Box::new(w));
        self
    }

    pub(crate) fn build(self) -> Exchange {
        self.0
    }
}
