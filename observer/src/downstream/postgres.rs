//! PostgreSQL (frontend/backend protocol 3.0) client connections.
//!
//! What counts as a call:
//! - the login: the startup message opens a `CONNECT` call, completed by the server's
//!   first ReadyForQuery (`Z`) or by an ErrorResponse (`E`) before it;
//! - each simple query (`Q`): operation and fingerprint from [`sql::fingerprint`],
//!   completed by its ReadyForQuery (the first ErrorResponse before it gives the error);
//! - each Execute (`E`) of the extended protocol, with the fingerprint of the statement
//!   its portal was bound to (`EXECUTE` without fingerprint when the Parse was not seen),
//!   completed by its CommandComplete / EmptyQueryResponse / PortalSuspended /
//!   ErrorResponse. Executes the server skipped after an error are dropped at the
//!   ReadyForQuery that answers their Sync.
//!
//! Parse, Bind, Describe, Close, Flush, Sync, PasswordMessage and the startup parameters
//! are not calls; their contents (names, bind values, passwords) are never kept in a
//! call. Rows (`D`) are skipped by length, also when the capture was cut. After an
//! accepted SSLRequest/GSSENCRequest nothing more is parsed (`Skip::Encrypted`). A bad
//! length breaks the connection (`Skip::Malformed`, nothing more is produced).

use std::collections::VecDeque;

use super::{
    framing::{be32, chain, Bounded, Framer, Frames, Msg, MAX_BUFFER, MAX_PENDING},
    sql, Call, ErrorClass, Output, Parser, Protocol, Segment, Skip,
};
use crate::http::Side;

const MAX_LENGTH: u64 = 1 << 30;

/// The NUL-terminated string at the start of `b` and what follows it (`None` without a
/// NUL).
fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = b.iter().position(|&c| c == 0)?;
    Some((&b[..end], &b[end + 1..]))
}

// ---------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------

const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;
const CANCEL_REQUEST: u32 = 80877102;

/// A startup message (protocol 3.x), SSLRequest, GSSENCRequest or CancelRequest.
pub fn looks_like_startup(b: &[u8]) -> bool {
    if b.len() < 8 {
        return false;
    }
    let len = be32(b, 0);
    let code = be32(b, 4);
    match code {
        SSL_REQUEST | GSSENC_REQUEST => len == 8,
        CANCEL_REQUEST => len == 16,
        _ => code >> 16 == 3 && (8..=10000).contains(&len),
    }
}

enum Pending {
    Simple {
        operation: String,
        fingerprint: String,
        started_ns: u64,
        error: Option<ErrorClass>,
    },
    Execute {
        operation: String,
        fingerprint: Option<String>,
        started_ns: u64,
    },
    /// A Sync (or function call): answered by a ReadyForQuery.
    Sync,
}

#[derive(Clone)]
struct Statement {
    operation: String,
    fingerprint: String,
}

#[derive(Default)]
struct State {
    /// The startup message was seen: the client sends typed messages.
    client_typed: bool,
    /// The server's next byte answers an SSLRequest/GSSENCRequest.
    server_ssl_reply: bool,
    encrypted: bool,
    /// The login call, waiting for its end (start time).
    login: Option<u64>,
    pending: VecDeque<Pending>,
    statements: Bounded<Statement>,
    /// Portal → statement name (`None`: not known).
    portals: Bounded<Option<Vec<u8>>>,
    /// A server read cut by the capture lost the framing (its timestamp): the pending
    /// responses may have ended in it.
    server_cut: Option<u64>,
}

pub struct PostgresParser {
    client: Framer,
    server: Framer,
    st: State,
}

impl Default for PostgresParser {
    fn default() -> Self {
        Self::new()
    }
}

impl PostgresParser {
    pub fn new() -> Self {
        Self {
            client: Framer::default(),
            server: Framer::default(),
            st: State::default(),
        }
    }
}

fn call(operation: String, fingerprint: Option<String>, started_ns: u64, ended_ns: u64) -> Call {
    Call {
        protocol: Protocol::Postgres,
        operation,
        fingerprint,
        dns_name: None,
        answers: Vec::new(),
        started_ns,
        ended_ns,
        error: None,
    }
}

/// The SQLSTATE of an ErrorResponse body (the `C` field; no other field is read).
fn sqlstate(mut body: &[u8]) -> Option<[u8; 5]> {
    while let Some((&code, rest)) = body.split_first() {
        if code == 0 {
            return None;
        }
        let (value, next) = cstr(rest)?;
        if code == b'C' {
            return value.try_into().ok();
        }
        body = next;
    }
    None
}

fn login_error(state: Option<[u8; 5]>) -> ErrorClass {
    match state {
        Some(s) if s.starts_with(b"28") || &s == b"3D000" => ErrorClass::Auth,
        Some(s) if &s == b"42501" => ErrorClass::Permission,
        _ => ErrorClass::Server,
    }
}

fn statement_error(state: Option<[u8; 5]>) -> ErrorClass {
    match state {
        Some(s) if s.starts_with(b"28") => ErrorClass::Auth,
        Some(s) if &s == b"42501" => ErrorClass::Permission,
        Some(s) if s.starts_with(b"42") || s.starts_with(b"22") || s.starts_with(b"23") => {
            ErrorClass::Statement
        }
        _ => ErrorClass::Server,
    }
}

const CLIENT_TYPES: &[u8] = b"QPBEDCHSXpFdcf";
const SERVER_TYPES: &[u8] = b"RKSZTDCIENAGHWdc123nstvV";

impl State {
    fn push(&mut self, p: Pending, out: &mut Output) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            out.skips.push(Skip::Unmatched);
        }
        self.pending.push_back(p);
    }

    /// After a server read cut by the capture, the client's next request says the
    /// pending responses ended in that read.
    fn implied_completion(&mut self, out: &mut Output) {
        let Some(ts) = self.server_cut.take() else {
            return;
        };
        for p in self.pending.drain(..) {
            match p {
                Pending::Simple {
                    operation,
                    fingerprint,
                    started_ns,
                    error,
                } => {
                    let mut c = call(operation, Some(fingerprint), started_ns, ts);
                    c.error = error;
                    out.calls.push(c);
                }
                Pending::Execute {
                    operation,
                    fingerprint,
                    started_ns,
                } => out.calls.push(call(operation, fingerprint, started_ns, ts)),
                Pending::Sync => {}
            }
        }
    }

    fn client_message(&mut self, msg: Msg<'_>, out: &mut Output) {
        if !self.client_typed {
            match be32(msg.hdr, 4) {
                SSL_REQUEST | GSSENC_REQUEST => self.server_ssl_reply = true,
                CANCEL_REQUEST => {}
                _ => {
                    // Startup: its parameters (user, database) are never read.
                    self.client_typed = true;
                    self.login = Some(msg.start_ns);
                }
            }
            return;
        }
        if matches!(msg.hdr[0], b'Q' | b'P' | b'B' | b'E' | b'S' | b'F') {
            self.implied_completion(out);
        }
        match msg.hdr[0] {
            b'Q' => {
                let text = cstr(msg.body).map_or(msg.body, |(t, _)| t);
                let (operation, fingerprint) = sql::fingerprint(&String::from_utf8_lossy(text));
                self.push(
                    Pending::Simple {
                        operation,
                        fingerprint,
                        started_ns: msg.start_ns,
                        error: None,
                    },
                    out,
                );
            }
            b'P' => {
                let Some((name, rest)) = cstr(msg.body) else {
                    return;
                };
                let text = cstr(rest).map_or(rest, |(t, _)| t);
                let (operation, fingerprint) = sql::fingerprint(&String::from_utf8_lossy(text));
                self.statements.insert(
                    name,
                    Statement {
                        operation,
                        fingerprint,
                    },
                );
            }
            b'B' => {
                let Some((portal, rest)) = cstr(msg.body) else {
                    return;
                };
                let stmt = cstr(rest).map(|(s, _)| s.to_vec());
                self.portals.insert(portal, stmt);
            }
            b'E' => {
                let portal = cstr(msg.body).map(|(p, _)| p);
                let stmt = portal
                    .and_then(|p| self.portals.get(p))
                    .and_then(|s| s.as_deref())
                    .and_then(|s| self.statements.get(s))
                    .cloned();
                let (operation, fingerprint) = match stmt {
                    Some(s) => (s.operation, Some(s.fingerprint)),
                    None => ("EXECUTE".to_string(), None),
                };
                self.push(
                    Pending::Execute {
                        operation,
                        fingerprint,
                        started_ns: msg.start_ns,
                    },
                    out,
                );
            }
            b'S' | b'F' => self.push(Pending::Sync, out),
            t if CLIENT_TYPES.contains(&t) => {}
            _ => out.skips.push(Skip::UnknownMessage),
        }
    }

    fn server_message(&mut self, msg: Msg<'_>, out: &mut Output) {
        if self.server_ssl_reply {
            self.server_ssl_reply = false;
            if msg.hdr[0] != b'N' {
                self.encrypted = true;
                out.skips.push(Skip::Encrypted);
            }
            return;
        }
        let ts = msg.ts_ns;
        match msg.hdr[0] {
            b'E' => {
                let state = sqlstate(msg.body);
                if let Some(started) = self.login.take() {
                    let mut c = call("CONNECT".into(), None, started, ts);
                    c.error = Some(login_error(state));
                    out.calls.push(c);
                    return;
                }
                match self.pending.front_mut() {
                    Some(Pending::Simple { error, .. }) => {
                        error.get_or_insert(statement_error(state));
                    }
                    Some(Pending::Execute { .. }) => {
                        if let Some(Pending::Execute {
                            operation,
                            fingerprint,
                            started_ns,
                        }) = self.pending.pop_front()
                        {
                            let mut c = call(operation, fingerprint, started_ns, ts);
                            c.error = Some(statement_error(state));
                            out.calls.push(c);
                        }
                    }
                    _ => {}
                }
            }
            b'C' | b'I' | b's' => match self.pending.front() {
                Some(Pending::Execute { .. }) => {
                    if let Some(Pending::Execute {
                        operation,
                        fingerprint,
                        started_ns,
                    }) = self.pending.pop_front()
                    {
                        out.calls.push(call(operation, fingerprint, started_ns, ts));
                    }
                }
                Some(Pending::Simple { .. }) => {}
                _ => out.skips.push(Skip::Unmatched),
            },
            b'Z' => {
                self.server_cut = None;
                if let Some(started) = self.login.take() {
                    out.calls.push(call("CONNECT".into(), None, started, ts));
                    return;
                }
                if self.pending.is_empty() {
                    out.skips.push(Skip::Unmatched);
                }
                while let Some(p) = self.pending.pop_front() {
                    match p {
                        Pending::Execute { .. } => {}
                        Pending::Sync => break,
                        Pending::Simple {
                            operation,
                            fingerprint,
                            started_ns,
                            error,
                        } => {
                            let mut c = call(operation, Some(fingerprint), started_ns, ts);
                            c.error = error;
                            out.calls.push(c);
                            break;
                        }
                    }
                }
            }
            t if SERVER_TYPES.contains(&t) => {}
            _ => out.skips.push(Skip::UnknownMessage),
        }
    }
}

impl Frames for State {
    fn header_len(&self, side: Side) -> usize {
        match side {
            Side::Client if !self.client_typed => 8,
            Side::Server if self.server_ssl_reply => 1,
            _ => 5,
        }
    }

    fn header(&self, side: Side, hdr: &[u8]) -> Option<(u64, usize)> {
        if side == Side::Client && !self.client_typed {
            return looks_like_startup(hdr).then(|| (be32(hdr, 0) as u64 - 8, 0));
        }
        if side == Side::Server && self.server_ssl_reply {
            return matches!(hdr[0], b'S' | b'N' | b'G').then_some((0, 0));
        }
        let len = be32(hdr, 1) as u64;
        if !(4..=MAX_LENGTH).contains(&len) {
            return None;
        }
        let body = len - 4;
        let want = match (side, hdr[0]) {
            (Side::Client, b'Q' | b'P') => MAX_BUFFER,
            (Side::Client, b'B') => 512,
            (Side::Client, b'E') => 256,
            (Side::Client, _) => 0,
            (Side::Server, b'E') => 1024,
            (Side::Server, b'R') => 4,
            (Side::Server, b'D' | b'T' | b'N' | b'd' | b'S' | b'A') => 0,
            (Side::Server, _) => 256,
        };
        Some((body, want))
    }

    fn message(&mut self, side: Side, msg: Msg<'_>, out: &mut Output) {
        match side {
            Side::Client => self.client_message(msg, out),
            Side::Server => self.server_message(msg, out),
        }
    }

    fn lost(&mut self, _side: Side) {
        self.pending.clear();
        self.login = None;
        self.server_cut = None;
    }

    fn cut(&mut self, side: Side, ts: u64) {
        match side {
            // The response may have ended in the bytes not captured: wait for a
            // ReadyForQuery, or for the client's next request.
            Side::Server => self.server_cut = Some(ts),
            Side::Client => self.lost(side),
        }
    }

    fn plausible(&self, side: Side, hdr: &[u8]) -> bool {
        match self.header_len(side) {
            5 => match side {
                Side::Client => CLIENT_TYPES.contains(&hdr[0]),
                Side::Server => SERVER_TYPES.contains(&hdr[0]),
            },
            _ => true,
        }
    }

    fn resync(&self, side: Side, data: &[u8], total: u64) -> Option<usize> {
        if chain(self, side, data, total) {
            return Some(0);
        }
        if side == Side::Server && self.header_len(side) == 5 {
            // A ReadyForQuery: `Z`, length 5, status I/T/E.
            return data
                .windows(6)
                .position(|w| w[..5] == [b'Z', 0, 0, 0, 5] && matches!(w[5], b'I' | b'T' | b'E'));
        }
        None
    }

    fn stopped(&self) -> bool {
        self.encrypted
    }
}

impl Parser for PostgresParser {
    fn protocol(&self) -> Protocol {
        Protocol::Postgres
    }

    fn feed(&mut self, side: Side, segment: Segment<'_>, out: &mut Output) {
        if self.client.broken || self.server.broken || self.st.encrypted {
            return;
        }
        match side {
            Side::Client => self.client.feed(&mut self.st, side, segment, out),
            Side::Server => self.server.feed(&mut self.st, side, segment, out),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Feeds `(side, ts, bytes)` segments (whole captures) and returns the output.
    pub(crate) fn run(p: &mut dyn Parser, segs: &[(Side, u64, Vec<u8>)]) -> Output {
        let mut out = Output::default();
        for (side, ts, data) in segs {
            p.feed(
                *side,
                Segment {
                    ts_ns: *ts,
                    data,
                    len: data.len() as u64,
                    lost_before: 0,
                },
                &mut out,
            );
        }
        out
    }

    /// Every split of every segment in two (same timestamp) gives the same calls.
    pub(crate) fn check_splits(new: &dyn Fn() -> Box<dyn Parser>, segs: &[(Side, u64, Vec<u8>)]) {
        let whole = run(&mut *new(), segs).calls;
        for k in 0..segs.len() {
            for cut in 1..segs[k].2.len() {
                let mut split = segs[..k].to_vec();
                let (side, ts, data) = &segs[k];
                split.push((*side, *ts, data[..cut].to_vec()));
                split.push((*side, *ts, data[cut..].to_vec()));
                split.extend_from_slice(&segs[k + 1..]);
                let got = run(&mut *new(), &split).calls;
                assert_eq!(got, whole, "segment {k} split at {cut}");
            }
        }
    }

    /// Random bytes, and every prefix of every segment, never panic or leak a canary.
    pub(crate) fn check_garbage(
        new: &dyn Fn() -> Box<dyn Parser>,
        segs: &[(Side, u64, Vec<u8>)],
        canaries: &[&str],
    ) {
        let check = |out: &Output| {
            let s = format!("{out:?}");
            for c in canaries {
                assert!(!s.contains(c), "{c} leaked: {s}");
            }
        };
        check(&run(&mut *new(), segs));
        for k in 0..segs.len() {
            for cut in 0..segs[k].2.len() {
                let mut p = new();
                let mut out = run(&mut *p, &segs[..k]);
                let (side, ts, data) = &segs[k];
                // A prefix captured of the whole, then the rest of the session.
                p.feed(
                    *side,
                    Segment {
                        ts_ns: *ts,
                        data: &data[..cut],
                        len: data.len() as u64,
                        lost_before: 0,
                    },
                    &mut out,
                );
                let rest = run(&mut *p, &segs[k + 1..]);
                out.calls.extend(rest.calls);
                check(&out);
                // A prefix alone, as if the connection ended there.
                let mut q = new();
                let mut out = run(&mut *q, &segs[..k]);
                q.feed(
                    *side,
                    Segment {
                        ts_ns: *ts,
                        data: &data[..cut],
                        len: cut as u64,
                        lost_before: 3,
                    },
                    &mut out,
                );
                check(&out);
            }
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let mut p = new();
            let mut out = Output::default();
            for _ in 0..8 {
                let len = (next() % 64) as usize;
                let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                // Sometimes a valid message with a flipped byte.
                if next() % 3 == 0 {
                    let (_, _, d) = &segs[(next() as usize) % segs.len()];
                    data = d.clone();
                    if !data.is_empty() {
                        // In a header: the text of valid statements stays valid.
                        let at = (next() as usize) % data.len().min(5);
                        data[at] = next() as u8;
                    }
                }
                let side = if next() % 2 == 0 {
                    Side::Client
                } else {
                    Side::Server
                };
                let extra = if next() % 4 == 0 { next() % 100_000 } else { 0 };
                p.feed(
                    side,
                    Segment {
                        ts_ns: 1,
                        data: &data,
                        len: data.len() as u64 + extra,
                        lost_before: if next() % 10 == 0 { 5 } else { 0 },
                    },
                    &mut out,
                );
            }
            check(&out);
        }
    }

    /// Every parser, fed segments drawn from an alphabet of protocol bytes, never panics.
    #[test]
    fn fuzz_all_parsers() {
        let alphabet: &[u8] = b"\0\x01\x03\x05\x0a\xc0\xfe\xff*$+-:%>|_\r\nQPBESZDCRE'\"-/9ab";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..2000 {
            for (proto, datagram) in [
                (Protocol::Dns, true),
                (Protocol::Dns, false),
                (Protocol::Postgres, false),
                (Protocol::Mysql, false),
                (Protocol::Redis, false),
            ] {
                let mut p = super::super::parser(proto, datagram).expect("a downstream parser");
                // Half the time past the login, so that deeper states are reached.
                let mut out = match proto {
                    Protocol::Postgres if round % 4 < 2 => run(
                        &mut *p,
                        &[(Side::Client, 1, startup()), (Side::Server, 2, auth_ok())],
                    ),
                    Protocol::Mysql if round % 4 < 2 => run(
                        &mut *p,
                        &[
                            (Side::Server, 1, hex("4a0000000a382e302e3336000b0000003a235e1f7b0c452d00ffffff0200ffdf1500000000000000000000112233445566770809\
                                0a0b0c0063616368696e675f736861325f70617373776f726400")),
                            (Side::Client, 2, hex("2000000100820a01000000ff0000000000000000000000000000000000000000000000")),
                            (Side::Server, 3, hex("0700000200000002000000")),
                        ],
                    ),
                    _ => Output::default(),
                };
                if round % 4 < 2 && matches!(proto, Protocol::Postgres | Protocol::Mysql) {
                    assert_eq!(out.calls.len(), 1, "{proto:?} login");
                }
                for _ in 0..6 {
                    let len = (next() % 48) as usize;
                    let data: Vec<u8> = (0..len)
                        .map(|_| {
                            if round % 2 == 0 {
                                alphabet[(next() as usize) % alphabet.len()]
                            } else {
                                next() as u8
                            }
                        })
                        .collect();
                    let side = if next() % 2 == 0 {
                        Side::Client
                    } else {
                        Side::Server
                    };
                    let extra = if next() % 5 == 0 { next() % 70_000 } else { 0 };
                    p.feed(
                        side,
                        Segment {
                            ts_ns: 1,
                            data: &data,
                            len: data.len() as u64 + extra,
                            lost_before: if next() % 12 == 0 { 1 } else { 0 },
                        },
                        &mut out,
                    );
                }
            }
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(|c| c.is_ascii_hexdigit()).collect();
        s.chunks(2)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).unwrap(), 16).unwrap())
            .collect()
    }

    fn m(t: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![t];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn startup() -> Vec<u8> {
        // Length 41, protocol 3.0, "user\0canary-user\0database\0app\0\0".
        let params = b"user\0canary-user\0database\0app\0\0";
        let mut v = ((8 + params.len()) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&[0x00, 0x03, 0x00, 0x00]);
        v.extend_from_slice(params);
        v
    }

    fn auth_ok() -> Vec<u8> {
        let mut v = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0]; // AuthenticationOk
        v.extend(m(b'S', b"server_version\x0016.2\0"));
        v.extend([b'K', 0, 0, 0, 12, 0, 0, 0x30, 0x39, 0x12, 0x34, 0x56, 0x78]);
        v.extend([b'Z', 0, 0, 0, 5, b'I']);
        v
    }

    fn error(code: &str) -> Vec<u8> {
        let body = format!("SERROR\0VERROR\0C{code}\0Mcanary-secret-42 is wrong\0\0");
        m(b'E', body.as_bytes())
    }

    fn session() -> Vec<(Side, u64, Vec<u8>)> {
        let mut sel = m(
            b'T',
            b"\0\x01id\0\0\0\0\0\0\x01\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
        );
        sel.extend(m(b'D', b"\0\x01\0\0\0\x10canary-secret-42"));
        sel.extend(m(b'C', b"SELECT 1\0"));
        sel.extend([b'Z', 0, 0, 0, 5, b'I']);
        let mut ext = m(
            b'P',
            b"s1\0SELECT name FROM users WHERE id = $1\0\0\x01\0\0\0\x17",
        );
        ext.extend(m(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x0a4242424242\0\0"));
        ext.extend(m(b'D', b"P\0"));
        ext.extend(m(b'E', b"\0\0\0\0\0"));
        ext.extend(m(b'S', b""));
        let mut ext_r = m(b'1', b"");
        ext_r.extend(m(b'2', b""));
        ext_r.extend(m(
            b'T',
            b"\0\x01name\0\0\0\0\0\0\x01\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
        ));
        ext_r.extend(m(b'D', b"\0\x01\0\0\0\x10canary-secret-42"));
        ext_r.extend(m(b'C', b"SELECT 1\0"));
        ext_r.extend([b'Z', 0, 0, 0, 5, b'I']);
        vec![
            (Side::Client, 10, startup()),
            (Side::Server, 20, m(b'R', &[0, 0, 0, 5, 1, 2, 3, 4])), // MD5 password
            (Side::Client, 30, m(b'p', b"md5canary-secret-42\0")),
            (Side::Server, 40, auth_ok()),
            (
                Side::Client,
                50,
                m(
                    b'Q',
                    b"SELECT id FROM t WHERE secret = 'canary-secret-42'\0",
                ),
            ),
            (Side::Server, 60, sel),
            (Side::Client, 70, ext),
            (Side::Server, 80, ext_r),
            (Side::Client, 90, m(b'X', b"")),
        ]
    }

    fn new() -> Box<dyn Parser> {
        Box::new(PostgresParser::new())
    }

    const CANARIES: &[&str] = &["canary", "4242424242", "users WHERE id = 4"];

    #[test]
    fn detection() {
        assert!(looks_like_startup(&startup()));
        assert!(looks_like_startup(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]));
        assert!(looks_like_startup(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]));
        assert!(!looks_like_startup(b"GET / HTTP/1.1\r\n"));
        assert!(!looks_like_startup(&[0, 0, 0, 8, 0, 2, 0, 0]));
    }

    #[test]
    fn full_session() {
        let out = run(&mut *new(), &session());
        assert_eq!(out.skips, vec![]);
        let ops: Vec<_> = out
            .calls
            .iter()
            .map(|c| {
                (
                    c.operation.as_str(),
                    c.fingerprint.as_deref(),
                    c.started_ns,
                    c.ended_ns,
                )
            })
            .collect();
        assert_eq!(
            ops,
            vec![
                ("CONNECT", None, 10, 40),
                ("SELECT", Some("SELECT id FROM t WHERE secret = ?"), 50, 60),
                (
                    "SELECT",
                    Some("SELECT name FROM users WHERE id = ?"),
                    70,
                    80
                ),
            ]
        );
        assert!(out
            .calls
            .iter()
            .all(|c| c.error.is_none() && c.protocol == Protocol::Postgres));
        check_splits(&new, &session());
        check_garbage(&new, &session(), CANARIES);
    }

    #[test]
    fn errors() {
        // Authentication failure.
        let out = run(
            &mut *new(),
            &[
                (Side::Client, 1, startup()),
                (Side::Server, 2, error("28P01")),
            ],
        );
        assert_eq!(out.calls.len(), 1);
        assert_eq!(out.calls[0].operation, "CONNECT");
        assert_eq!(out.calls[0].error, Some(ErrorClass::Auth));
        // Permission and syntax errors on queries, simple and extended.
        let mut ext = m(b'P', b"\0DELETE FROM t\0\0\0");
        ext.extend(m(b'B', b"\0\0\0\0\0\0\0\0"));
        ext.extend(m(b'E', b"\0\0\0\0\0"));
        ext.extend(m(b'B', b"\0\0\0\0\0\0\0\0"));
        ext.extend(m(b'E', b"\0\0\0\0\0"));
        ext.extend(m(b'S', b""));
        let mut ext_r = error("42501");
        ext_r.extend([b'Z', 0, 0, 0, 5, b'I']);
        let mut q_r = error("42601");
        q_r.extend([b'Z', 0, 0, 0, 5, b'I']);
        let segs = vec![
            (Side::Client, 1, startup()),
            (Side::Server, 2, auth_ok()),
            (Side::Client, 3, m(b'Q', b"SELEC 'canary'\0")),
            (Side::Server, 4, q_r),
            (Side::Client, 5, ext),
            (Side::Server, 6, ext_r),
            (Side::Client, 7, m(b'Q', b"BEGIN\0")),
            (
                Side::Server,
                8,
                m(b'C', b"BEGIN\0")
                    .into_iter()
                    .chain([b'Z', 0, 0, 0, 5, b'T'])
                    .collect(),
            ),
        ];
        let out = run(&mut *new(), &segs);
        let got: Vec<_> = out
            .calls
            .iter()
            .map(|c| (c.operation.as_str(), c.error))
            .collect();
        assert_eq!(
            got,
            vec![
                ("CONNECT", None),
                ("SELEC", Some(ErrorClass::Statement)),
                ("DELETE", Some(ErrorClass::Permission)),
                ("BEGIN", None),
            ]
        );
        assert_eq!(out.skips, vec![]);
        check_splits(&new, &segs);
        check_garbage(&new, &segs, &["canary"]);
    }

    #[test]
    fn pipelined_executes_and_unknown_statements() {
        let mut ext = Vec::new();
        for _ in 0..3 {
            ext.extend(m(b'B', b"\0stmt_9\0\0\0\0\0\0\0"));
            ext.extend(m(b'E', b"\0\0\0\0\0"));
        }
        ext.extend(m(b'S', b""));
        let mut r = Vec::new();
        for _ in 0..3 {
            r.extend(m(b'2', b""));
            r.extend(m(b'C', b"UPDATE 1\0"));
        }
        r.extend([b'Z', 0, 0, 0, 5, b'I']);
        let segs = vec![
            (Side::Client, 1, startup()),
            (Side::Server, 2, auth_ok()),
            (Side::Client, 3, ext),
            (Side::Server, 4, r),
        ];
        let out = run(&mut *new(), &segs);
        assert_eq!(out.calls.len(), 4);
        assert!(out.calls[1..]
            .iter()
            .all(|c| c.operation == "EXECUTE" && c.fingerprint.is_none()));
    }

    #[test]
    fn big_result_cut_by_capture() {
        // 100 rows of 1 KiB in one read of which only 4 KiB were captured.
        let mut rows = m(
            b'T',
            b"\0\x01v\0\0\0\0\0\0\x01\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
        );
        for _ in 0..100 {
            let mut body = vec![0, 1, 0, 0, 4, 0];
            body.extend(std::iter::repeat_n(b'x', 1024));
            rows.extend(m(b'D', &body));
        }
        let mut p = new();
        let mut out = run(
            &mut *p,
            &[
                (Side::Client, 1, startup()),
                (Side::Server, 2, auth_ok()),
                (Side::Client, 3, m(b'Q', b"SELECT v FROM big\0")),
            ],
        );
        p.feed(
            Side::Server,
            Segment {
                ts_ns: 4,
                data: &rows[..4096],
                len: rows.len() as u64,
                lost_before: 0,
            },
            &mut out,
        );
        let mut end = m(b'C', b"SELECT 100\0");
        end.extend([b'Z', 0, 0, 0, 5, b'I']);
        p.feed(
            Side::Server,
            Segment {
                ts_ns: 5,
                data: &end,
                len: end.len() as u64,
                lost_before: 0,
            },
            &mut out,
        );
        assert_eq!(out.skips, vec![Skip::Truncated]);
        assert_eq!(out.calls.len(), 2);
        assert_eq!(out.calls[1].operation, "SELECT");
        assert_eq!((out.calls[1].started_ns, out.calls[1].ended_ns), (3, 5));

        // The end of the response in the bytes not captured: the client's next query
        // says it ended there.
        rows.extend(end);
        let mut p = new();
        let mut out = run(
            &mut *p,
            &[
                (Side::Client, 1, startup()),
                (Side::Server, 2, auth_ok()),
                (Side::Client, 3, m(b'Q', b"SELECT v FROM big\0")),
            ],
        );
        p.feed(
            Side::Server,
            Segment {
                ts_ns: 4,
                data: &rows[..4096],
                len: rows.len() as u64,
                lost_before: 0,
            },
            &mut out,
        );
        let more = run(
            &mut *p,
            &[
                (Side::Client, 6, m(b'Q', b"COMMIT\0")),
                (Side::Server, 7, vec![b'Z', 0, 0, 0, 5, b'I']),
            ],
        );
        out.calls.extend(more.calls);
        let got: Vec<_> = out
            .calls
            .iter()
            .map(|c| (c.operation.as_str(), c.started_ns, c.ended_ns))
            .collect();
        assert_eq!(
            got,
            vec![("CONNECT", 1, 2), ("SELECT", 3, 4), ("COMMIT", 6, 7)]
        );
    }

    #[test]
    fn ssl_and_malformed() {
        let ssl = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        let out = run(
            &mut *new(),
            &[
                (Side::Client, 1, ssl.clone()),
                (Side::Server, 2, b"S".to_vec()),
                (Side::Client, 3, b"\x16\x03\x01".to_vec()),
            ],
        );
        assert_eq!(out.skips, vec![Skip::Encrypted]);
        let out = run(
            &mut *new(),
            &[
                (Side::Client, 1, ssl),
                (Side::Server, 2, b"N".to_vec()),
                (Side::Client, 3, startup()),
                (Side::Server, 4, auth_ok()),
            ],
        );
        assert_eq!(out.calls.len(), 1);
        let out = run(
            &mut *new(),
            &[
                (Side::Client, 1, startup()),
                (Side::Server, 2, vec![b'Z', 0, 0, 0, 1, b'I']),
                (Side::Server, 3, auth_ok()),
            ],
        );
        assert_eq!(out.skips, vec![Skip::Malformed]);
        assert!(out.calls.is_empty());
    }

    #[test]
    fn lost_bytes_resync() {
        let mut p = new();
        let mut out = run(
            &mut *p,
            &[
                (Side::Client, 1, startup()),
                (Side::Server, 2, auth_ok()),
                (Side::Client, 3, m(b'Q', b"SELECT 1\0")),
            ],
        );
        // Server bytes lost: the pending query is dropped; the next query works.
        let z = vec![b'Z', 0, 0, 0, 5, b'I'];
        p.feed(
            Side::Server,
            Segment {
                ts_ns: 4,
                data: &z[2..],
                len: 4,
                lost_before: 100,
            },
            &mut out,
        );
        let more = run(
            &mut *p,
            &[
                (Side::Client, 5, m(b'Q', b"SELECT 2\0")),
                (Side::Server, 6, z),
            ],
        );
        assert_eq!(out.skips, vec![Skip::Lost]);
        assert_eq!(more.calls.len(), 1);
        assert_eq!(more.calls[0].started_ns, 5);
    }
}
