//! MySQL / MariaDB client/server protocol client connections (packets: 3-byte
//! little-endian length, 1-byte sequence id).
//!
//! What counts as a call:
//! - the login: from the server's greeting to the OK or ERR that ends the authentication
//!   exchange: one `CONNECT` call (never reading the user name or auth data);
//! - each `COM_QUERY`: operation and fingerprint from [`sql::fingerprint_mysql`];
//! - each `COM_STMT_EXECUTE`: the fingerprint of the statement its `COM_STMT_PREPARE`
//!   prepared (`EXECUTE` without fingerprint when the prepare was not seen);
//! - each `COM_PING`: `PING`.
//!
//! A call ends at its OK, ERR, or the EOF/OK ending its (last) result set. Prepares,
//! `COM_QUIT`, `COM_STMT_CLOSE` and other commands are not calls. After a TLS request
//! nothing more is parsed (`Skip::Encrypted`). Rows are skipped by length, also when the
//! capture was cut; when the framing is lost in a cut read, the client's next command
//! ends the pending call (MySQL clients wait for a response before the next command).

use std::collections::VecDeque;

use super::framing::{Bounded, Framer, Frames, Msg, MAX_BUFFER, MAX_PENDING};
use super::{sql, Call, ErrorClass, Output, Parser, Protocol, Segment, Skip};
use crate::http::Side;

const CLIENT_SSL: u32 = 0x800;
const CLIENT_QUERY_ATTRIBUTES: u32 = 1 << 27;
const CLIENT_DEPRECATE_EOF: u32 = 1 << 24;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
const MAX_PACKET: u64 = 0xff_ffff;

/// A packet (sequence id 0) holding a protocol-10 greeting with a printable,
/// NUL-terminated server version.
pub fn looks_like_greeting(b: &[u8]) -> bool {
    if b.len() < 7 {
        return false;
    }
    let len = u32::from_le_bytes([b[0], b[1], b[2], 0]);
    if !(16..=1024).contains(&len) || b[3] != 0 || b[4] != 10 {
        return false;
    }
    let version = &b[5..];
    match version.iter().position(|&c| c == 0) {
        Some(end) => end > 0 && version[..end].iter().all(|c| (0x20..0x7f).contains(c)),
        None => false,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the server's greeting.
    Greeting,
    /// Greeting seen, the authentication exchange runs.
    Auth,
    Command,
}

enum Kind {
    Call {
        operation: String,
        fingerprint: Option<String>,
    },
    Prepare {
        operation: String,
        fingerprint: String,
    },
    /// A command whose response is not a call.
    Silent,
}

struct Pending {
    kind: Kind,
    started_ns: u64,
    error: Option<ErrorClass>,
}

/// Where the response to the oldest pending command is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Resp {
    /// Its first packet is next.
    Idle,
    /// Column definitions still to come.
    Columns(u64),
    /// The EOF after the column definitions (classic flow).
    ColumnsEof,
    Rows,
    /// Parameter and column definitions of a prepare still to come.
    Defs(u64),
}

#[derive(Clone)]
struct Statement {
    operation: String,
    fingerprint: String,
}

struct State {
    phase: Phase,
    encrypted: bool,
    server_caps: u32,
    client_caps: u32,
    login: Option<u64>,
    /// The next packet of a side continues a packet of 0xffffff bytes.
    cont: [bool; 2],
    pending: VecDeque<Pending>,
    resp: Resp,
    statements: Bounded<Statement>,
    last_server_ns: u64,
    /// A server read cut by the capture lost the framing.
    server_cut: bool,
}

pub struct MysqlParser {
    client: Framer,
    server: Framer,
    st: State,
}

impl Default for MysqlParser {
    fn default() -> Self {
        Self::new()
    }
}

impl MysqlParser {
    pub fn new() -> Self {
        Self {
            client: Framer::default(),
            server: Framer::default(),
            st: State {
                phase: Phase::Greeting,
                encrypted: false,
                server_caps: 0,
                client_caps: 0,
                login: None,
                cont: [false; 2],
                pending: VecDeque::new(),
                resp: Resp::Idle,
                statements: Bounded::default(),
                last_server_ns: 0,
                server_cut: false,
            },
        }
    }
}

fn side_ix(side: Side) -> usize {
    match side {
        Side::Client => 0,
        Side::Server => 1,
    }
}

fn le16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map(|x| u16::from_le_bytes([x[0], x[1]]))
        .unwrap_or(0)
}

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
        .unwrap_or(0)
}

/// A length-encoded integer at the start of `b` and its size.
fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let n = match first {
        0..=0xfa => return Some((first as u64, 1)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let bytes = b.get(1..1 + n)?;
    let mut v = 0u64;
    for (i, &x) in bytes.iter().enumerate() {
        v |= (x as u64) << (8 * i);
    }
    Some((v, 1 + n))
}

/// The status flags of an OK packet (`0x00` or `0xfe` header) body.
fn ok_status(body: &[u8]) -> u16 {
    let mut i = 1;
    for _ in 0..2 {
        match body.get(i..).and_then(lenenc) {
            Some((_, n)) => i += n,
            None => return 0,
        }
    }
    le16(body, i)
}

fn statement_error(code: u16) -> ErrorClass {
    match code {
        1045 => ErrorClass::Auth,
        1044 | 1142 | 1143 => ErrorClass::Permission,
        1054 | 1064 | 1146 | 1149 => ErrorClass::Statement,
        _ => ErrorClass::Server,
    }
}

fn login_error(code: u16) -> ErrorClass {
    match code {
        1045 => ErrorClass::Auth,
        1044 => ErrorClass::Permission,
        _ => ErrorClass::Server,
    }
}

fn call(operation: String, fingerprint: Option<String>, started_ns: u64, ended_ns: u64) -> Call {
    Call {
        protocol: Protocol::Mysql,
        operation,
        fingerprint,
        dns_name: None,
        answers: Vec::new(),
        started_ns,
        ended_ns,
        error: None,
    }
}

impl State {
    fn deprecate_eof(&self) -> bool {
        self.server_caps & self.client_caps & CLIENT_DEPRECATE_EOF != 0
    }

    fn push(&mut self, p: Pending, out: &mut Output) {
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            self.resp = Resp::Idle;
            out.skips.push(Skip::Unmatched);
        }
        self.pending.push_back(p);
    }

    /// The oldest pending command's response is over.
    fn complete(&mut self, ts: u64, error: Option<ErrorClass>, out: &mut Output) {
        self.resp = Resp::Idle;
        self.server_cut = false;
        let Some(p) = self.pending.pop_front() else {
            return;
        };
        if let Kind::Call {
            operation,
            fingerprint,
        } = p.kind
        {
            let mut c = call(operation, fingerprint, p.started_ns, ts);
            c.error = error.or(p.error);
            out.calls.push(c);
        }
    }

    fn client_message(&mut self, msg: Msg<'_>, out: &mut Output) {
        let ix = side_ix(Side::Client);
        let continued = std::mem::replace(&mut self.cont[ix], msg.body_len == MAX_PACKET);
        if continued {
            return;
        }
        let seq = msg.hdr[3];
        match self.phase {
            Phase::Greeting => {}
            Phase::Auth => {
                if seq == 1 {
                    // HandshakeResponse41 (or SSLRequest): only the capabilities are read.
                    self.client_caps = le32(msg.body, 0);
                    if self.client_caps & CLIENT_SSL != 0 && msg.body_len == 32 {
                        self.encrypted = true;
                        out.skips.push(Skip::Encrypted);
                    }
                }
            }
            Phase::Command => {
                if seq != 0 {
                    return;
                }
                // MySQL clients wait for a response before the next command: a response
                // still running (or cut by the capture) is over.
                if self.server_cut || self.resp != Resp::Idle {
                    let ts = self.last_server_ns;
                    while !self.pending.is_empty() {
                        self.complete(ts, None, out);
                    }
                }
                let Some(&cmd) = msg.body.first() else {
                    return;
                };
                let started_ns = msg.start_ns;
                let kind = match cmd {
                    0x03 => {
                        let (operation, fingerprint) = match self.query_text(&msg.body[1..]) {
                            Some(text) => {
                                let (o, f) = sql::fingerprint_mysql(&String::from_utf8_lossy(text));
                                (o, Some(f))
                            }
                            None => ("OTHER".to_string(), None),
                        };
                        Kind::Call {
                            operation,
                            fingerprint,
                        }
                    }
                    0x16 => {
                        let (operation, fingerprint) =
                            sql::fingerprint_mysql(&String::from_utf8_lossy(&msg.body[1..]));
                        Kind::Prepare {
                            operation,
                            fingerprint,
                        }
                    }
                    0x17 => {
                        let id = msg.body.get(1..5).unwrap_or_default();
                        let (operation, fingerprint) = match self.statements.get(id) {
                            Some(s) => (s.operation.clone(), Some(s.fingerprint.clone())),
                            None => ("EXECUTE".to_string(), None),
                        };
                        Kind::Call {
                            operation,
                            fingerprint,
                        }
                    }
                    0x0e => Kind::Call {
                        operation: "PING".into(),
                        fingerprint: None,
                    },
                    // COM_QUIT, COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE: no response.
                    0x01 | 0x18 | 0x19 => return,
                    0x00..=0x1f => Kind::Silent,
                    _ => {
                        out.skips.push(Skip::UnknownMessage);
                        return;
                    }
                };
                self.push(
                    Pending {
                        kind,
                        started_ns,
                        error: None,
                    },
                    out,
                );
            }
        }
    }

    /// The statement text of a COM_QUERY body (after the command byte): with query
    /// attributes, only when there are none (their values are never decoded).
    fn query_text<'a>(&self, body: &'a [u8]) -> Option<&'a [u8]> {
        if self.server_caps & self.client_caps & CLIENT_QUERY_ATTRIBUTES == 0 {
            return Some(body);
        }
        let (count, n) = lenenc(body)?;
        let (_, m) = lenenc(&body[n..])?;
        (count == 0).then(|| &body[n + m..])
    }

    fn server_message(&mut self, msg: Msg<'_>, out: &mut Output) {
        let ix = side_ix(Side::Server);
        let continued = std::mem::replace(&mut self.cont[ix], msg.body_len == MAX_PACKET);
        self.last_server_ns = msg.ts_ns;
        if continued {
            return;
        }
        let body = msg.body;
        let first = body.first().copied().unwrap_or(0);
        let ts = msg.ts_ns;
        match self.phase {
            Phase::Greeting => {
                if first == 10 {
                    if let Some(end) = body[1..].iter().position(|&c| c == 0) {
                        let at = 1 + end + 1 + 4 + 8 + 1;
                        self.server_caps =
                            le16(body, at) as u32 | (le16(body, at + 2 + 1 + 2) as u32) << 16;
                    }
                    self.login = Some(msg.start_ns);
                    self.phase = Phase::Auth;
                } else if first == 0xff {
                    // Refused before the greeting (too many connections, host blocked).
                    let mut c = call("CONNECT".into(), None, msg.start_ns, ts);
                    c.error = Some(login_error(le16(body, 1)));
                    out.calls.push(c);
                    self.phase = Phase::Command;
                }
            }
            Phase::Auth => match first {
                0x00 | 0xff => {
                    if let Some(started) = self.login.take() {
                        let mut c = call("CONNECT".into(), None, started, ts);
                        if first == 0xff {
                            c.error = Some(login_error(le16(body, 1)));
                        }
                        out.calls.push(c);
                    }
                    self.phase = Phase::Command;
                }
                // Auth switch, more auth data: the exchange goes on.
                _ => {}
            },
            Phase::Command => self.response_packet(msg, out),
        }
    }

    fn response_packet(&mut self, msg: Msg<'_>, out: &mut Output) {
        let body = msg.body;
        let first = body.first().copied().unwrap_or(0);
        let ts = msg.ts_ns;
        let seq = msg.hdr[3];
        let Some(front) = self.pending.front() else {
            if seq == 1 {
                out.skips.push(Skip::Unmatched);
            }
            return;
        };
        let eof_like = first == 0xfe
            && (msg.body_len < 9 || (self.deprecate_eof() && msg.body_len < MAX_PACKET));
        match self.resp {
            Resp::Idle => {
                if let Kind::Prepare {
                    operation,
                    fingerprint,
                } = &front.kind
                {
                    if first == 0x00 && body.len() >= 9 {
                        let stmt = Statement {
                            operation: operation.clone(),
                            fingerprint: fingerprint.clone(),
                        };
                        self.statements.insert(&body[1..5], stmt);
                        let eof = if self.deprecate_eof() { 0 } else { 1 };
                        let cols = le16(body, 5) as u64;
                        let params = le16(body, 7) as u64;
                        let left = params
                            + cols
                            + if params > 0 { eof } else { 0 }
                            + if cols > 0 { eof } else { 0 };
                        if left > 0 {
                            self.resp = Resp::Defs(left);
                            return;
                        }
                    }
                    self.complete(ts, None, out);
                    return;
                }
                match first {
                    0x00 => {
                        if ok_status(body) & SERVER_MORE_RESULTS_EXISTS == 0 {
                            self.complete(ts, None, out);
                        }
                    }
                    0xff => self.complete(ts, Some(statement_error(le16(body, 1))), out),
                    // LOCAL INFILE request: the client sends the file, the server an OK.
                    0xfb => {}
                    0xfe => self.complete(ts, None, out),
                    _ => match lenenc(body) {
                        Some((n, _)) if n > 0 => self.resp = Resp::Columns(n),
                        _ => self.complete(ts, None, out),
                    },
                }
            }
            Resp::Columns(left) => {
                if first == 0xff {
                    self.complete(ts, Some(statement_error(le16(body, 1))), out);
                } else if left > 1 {
                    self.resp = Resp::Columns(left - 1);
                } else if self.deprecate_eof() {
                    self.resp = Resp::Rows;
                } else {
                    self.resp = Resp::ColumnsEof;
                }
            }
            Resp::ColumnsEof => {
                if first == 0xff {
                    self.complete(ts, Some(statement_error(le16(body, 1))), out);
                } else {
                    self.resp = Resp::Rows;
                }
            }
            Resp::Rows => {
                if first == 0xff {
                    self.complete(ts, Some(statement_error(le16(body, 1))), out);
                } else if eof_like {
                    let status = if msg.body_len < 9 && !self.deprecate_eof() {
                        le16(body, 3)
                    } else {
                        ok_status(body)
                    };
                    if status & SERVER_MORE_RESULTS_EXISTS != 0 {
                        self.resp = Resp::Idle;
                    } else {
                        self.complete(ts, None, out);
                    }
                }
            }
            Resp::Defs(left) => {
                if left > 1 {
                    self.resp = Resp::Defs(left - 1);
                } else {
                    self.complete(ts, None, out);
                }
            }
        }
    }
}

impl Frames for State {
    fn header_len(&self, _side: Side) -> usize {
        4
    }

    fn header(&self, side: Side, hdr: &[u8]) -> Option<(u64, usize)> {
        let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], 0]) as u64;
        let want = if self.cont[side_ix(side)] {
            0
        } else {
            match (side, self.phase) {
                (Side::Client, Phase::Command) if hdr[3] == 0 => MAX_BUFFER,
                (Side::Client, Phase::Auth) if hdr[3] == 1 => 4,
                (Side::Client, _) => 0,
                (Side::Server, Phase::Greeting) => 256,
                (Side::Server, _) => 32,
            }
        };
        Some((len, want))
    }

    fn message(&mut self, side: Side, msg: Msg<'_>, out: &mut Output) {
        match side {
            Side::Client => self.client_message(msg, out),
            Side::Server => self.server_message(msg, out),
        }
    }

    fn lost(&mut self, _side: Side) {
        self.pending.clear();
        self.resp = Resp::Idle;
        self.cont = [false; 2];
        self.server_cut = false;
        if self.phase != Phase::Command {
            self.login = None;
            self.phase = Phase::Command;
        }
    }

    fn cut(&mut self, side: Side, ts: u64) {
        match side {
            Side::Server => {
                self.server_cut = true;
                self.last_server_ns = ts;
                self.cont[1] = false;
            }
            Side::Client => self.lost(side),
        }
    }

    fn plausible(&self, side: Side, hdr: &[u8]) -> bool {
        // A client command starts with sequence id 0.
        side == Side::Server || hdr[3] == 0
    }

    fn stopped(&self) -> bool {
        self.encrypted
    }
}

impl Parser for MysqlParser {
    fn protocol(&self) -> Protocol {
        Protocol::Mysql
    }

    fn feed(&mut self, side: Side, segment: Segment<'_>, out: &mut Output) {
        if self.st.encrypted {
            return;
        }
        match side {
            Side::Client => self.client.feed(&mut self.st, side, segment, out),
            Side::Server => self.server.feed(&mut self.st, side, segment, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::postgres::tests::{check_garbage, check_splits, run};
    use super::*;

    fn pkt(seq: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut v = len.to_le_bytes()[..3].to_vec();
        v.push(seq);
        v.extend_from_slice(payload);
        v
    }

    fn greeting() -> Vec<u8> {
        let mut p = vec![0x0a];
        p.extend_from_slice(b"8.0.36\0");
        p.extend_from_slice(&[0x0b, 0, 0, 0]); // connection id
        p.extend_from_slice(b"\x3a\x23\x5e\x1f\x7b\x0c\x45\x2d\0"); // auth data 1, filler
        p.extend_from_slice(&[0xff, 0xff, 0xff, 0x02, 0x00, 0xff, 0xdf]); // caps, charset, status
        p.extend_from_slice(&[0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        p.extend_from_slice(b"\x11\x22\x33\x44\x55\x66\x77\x08\x09\x0a\x0b\x0c\0");
        p.extend_from_slice(b"caching_sha2_password\0");
        pkt(0, &p)
    }

    fn handshake_response(caps: u32) -> Vec<u8> {
        let mut p = caps.to_le_bytes().to_vec();
        p.extend_from_slice(&[0, 0, 0, 1, 0xff]);
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(b"canary-user\0");
        p.push(20);
        p.extend_from_slice(b"canary-secret-42abcd");
        p.extend_from_slice(b"caching_sha2_password\0");
        pkt(1, &p)
    }

    const CLASSIC: u32 = 0x000a_8200;
    const DEPRECATE: u32 = 0x010a_8200;

    fn ok(seq: u8) -> Vec<u8> {
        pkt(seq, &[0, 0, 0, 2, 0, 0, 0])
    }

    fn err(seq: u8, code: u16) -> Vec<u8> {
        let mut p = vec![0xff];
        p.extend_from_slice(&code.to_le_bytes());
        p.extend_from_slice(b"#28000canary-secret-42 denied");
        pkt(seq, &p)
    }

    fn column(seq: u8) -> Vec<u8> {
        pkt(seq, b"\x03def\x03app\x01t\x01t\x02id\x02id\x0c\x3f\x00\x0b\x00\x00\x00\x03\x03\x42\x00\x00\x00")
    }

    /// A result set of one column and two rows (`deprecate`: no EOF after the columns,
    /// an OK with a 0xfe header at the end).
    fn result_set(deprecate: bool) -> Vec<u8> {
        let mut v = pkt(1, &[1]);
        v.extend(column(2));
        let mut seq = 3;
        if !deprecate {
            v.extend(pkt(seq, &[0xfe, 0, 0, 2, 0]));
            seq += 1;
        }
        v.extend(pkt(seq, b"\x10canary-secret-42"));
        v.extend(pkt(seq + 1, b"\x0a4242424242"));
        if deprecate {
            v.extend(pkt(seq + 2, &[0xfe, 0, 0, 2, 0, 0, 0]));
        } else {
            v.extend(pkt(seq + 2, &[0xfe, 0, 0, 2, 0]));
        }
        v
    }

    fn session(caps: u32) -> Vec<(Side, u64, Vec<u8>)> {
        let deprecate = caps & CLIENT_DEPRECATE_EOF != 0;
        let mut prep_r = pkt(1, &[0, 7, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]);
        prep_r.extend(column(2));
        if !deprecate {
            prep_r.extend(pkt(3, &[0xfe, 0, 0, 2, 0]));
        }
        prep_r.extend(column(if deprecate { 3 } else { 4 }));
        if !deprecate {
            prep_r.extend(pkt(5, &[0xfe, 0, 0, 2, 0]));
        }
        let mut exec = vec![0x17, 7, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0x08, 0];
        exec.extend_from_slice(&4242424242u64.to_le_bytes());
        let mut query = vec![0x03];
        query.extend_from_slice(b"SELECT id FROM t WHERE secret = 'canary-secret-42'");
        vec![
            (Side::Server, 10, greeting()),
            (Side::Client, 20, handshake_response(caps)),
            (Side::Server, 30, pkt(2, &[0x01, 0x03])), // fast auth ok
            (Side::Server, 31, ok(3)),
            (Side::Client, 40, pkt(0, &query)),
            (Side::Server, 50, result_set(deprecate)),
            (
                Side::Client,
                60,
                pkt(0, b"\x16SELECT id FROM t WHERE id = ?"),
            ),
            (Side::Server, 70, prep_r),
            (Side::Client, 80, pkt(0, &exec)),
            (Side::Server, 90, result_set(deprecate)),
            (Side::Client, 100, pkt(0, &[0x0e])),
            (Side::Server, 110, ok(1)),
            (Side::Client, 120, pkt(0, b"\x03UPDATE t SET a = 1")),
            (Side::Server, 130, pkt(1, &[0, 1, 0, 2, 0, 0, 0])),
            (Side::Client, 140, pkt(0, &[0x01])),
        ]
    }

    fn new() -> Box<dyn Parser> {
        Box::new(MysqlParser::new())
    }

    #[test]
    fn detection() {
        assert!(looks_like_greeting(&greeting()));
        assert!(!looks_like_greeting(&pkt(0, b"\x09abc\0")));
        assert!(!looks_like_greeting(&pkt(0, b"\x0a\x01\x02\0")));
        assert!(!looks_like_greeting(b"HTTP/1.1 200 OK\r\n"));
    }

    #[test]
    fn full_sessions() {
        for caps in [CLASSIC, DEPRECATE] {
            let out = run(&mut *new(), &session(caps));
            assert_eq!(out.skips, vec![]);
            let got: Vec<_> = out
                .calls
                .iter()
                .map(|c| {
                    (
                        c.operation.as_str(),
                        c.fingerprint.as_deref(),
                        c.started_ns,
                        c.ended_ns,
                        c.error,
                    )
                })
                .collect();
            assert_eq!(
                got,
                vec![
                    ("CONNECT", None, 10, 31, None),
                    (
                        "SELECT",
                        Some("SELECT id FROM t WHERE secret = ?"),
                        40,
                        50,
                        None
                    ),
                    (
                        "SELECT",
                        Some("SELECT id FROM t WHERE id = ?"),
                        80,
                        90,
                        None
                    ),
                    ("PING", None, 100, 110, None),
                    ("UPDATE", Some("UPDATE t SET a = ?"), 120, 130, None),
                ]
            );
            check_splits(&new, &session(caps));
            check_garbage(&new, &session(caps), &["canary", "4242424242"]);
        }
    }

    #[test]
    fn errors() {
        let segs = vec![
            (Side::Server, 1, greeting()),
            (Side::Client, 2, handshake_response(DEPRECATE)),
            (Side::Server, 3, err(2, 1045)),
        ];
        let out = run(&mut *new(), &segs);
        assert_eq!(out.calls.len(), 1);
        assert_eq!(out.calls[0].error, Some(ErrorClass::Auth));
        let mut segs = session(DEPRECATE)[..4].to_vec();
        segs.extend([
            (Side::Client, 5, pkt(0, b"\x03DELETE FROM secret_t")),
            (Side::Server, 6, err(1, 1142)),
            (Side::Client, 7, pkt(0, b"\x03SELEC 'canary'")),
            (Side::Server, 8, err(1, 1064)),
            (Side::Client, 9, pkt(0, b"\x03SELECT 1")),
            (Side::Server, 10, err(1, 1205)),
        ]);
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
                ("DELETE", Some(ErrorClass::Permission)),
                ("SELEC", Some(ErrorClass::Statement)),
                ("SELECT", Some(ErrorClass::Server)),
            ]
        );
        check_splits(&new, &segs);
        check_garbage(&new, &segs, &["canary"]);
    }

    #[test]
    fn query_attributes() {
        let attrs = DEPRECATE | CLIENT_QUERY_ATTRIBUTES;
        let mut segs = session(attrs)[..4].to_vec();
        segs.extend([
            (Side::Client, 5, pkt(0, b"\x03\x00\x01SELECT 1")),
            (Side::Server, 6, ok(1)),
            // One attribute: its value is not decoded, the statement not fingerprinted.
            (
                Side::Client,
                7,
                pkt(
                    0,
                    b"\x03\x01\x01\x00\x01\xfe\x00\x01a\x0ccanary-value SELECT 'canary'",
                ),
            ),
            (Side::Server, 8, ok(1)),
        ]);
        let out = run(&mut *new(), &segs);
        let got: Vec<_> = out
            .calls
            .iter()
            .map(|c| (c.operation.as_str(), c.fingerprint.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("CONNECT", None),
                ("SELECT", Some("SELECT ?")),
                ("OTHER", None)
            ]
        );
    }

    #[test]
    fn ssl_request() {
        let mut p = (CLASSIC | CLIENT_SSL).to_le_bytes().to_vec();
        p.extend_from_slice(&[0, 0, 0, 1, 0xff]);
        p.extend_from_slice(&[0; 23]);
        let out = run(
            &mut *new(),
            &[
                (Side::Server, 1, greeting()),
                (Side::Client, 2, pkt(1, &p)),
                (Side::Client, 3, b"\x16\x03\x01\x02".to_vec()),
            ],
        );
        assert_eq!(out.skips, vec![Skip::Encrypted]);
        assert!(out.calls.is_empty());
    }

    #[test]
    fn big_rows_cut_by_capture() {
        let mut segs = session(DEPRECATE)[..4].to_vec();
        segs.push((Side::Client, 5, pkt(0, b"\x03SELECT blob FROM t")));
        let mut p = new();
        let mut out = run(&mut *p, &segs);
        // One row of 100 KB, captured 4 KiB of it, then the end in the next read.
        let mut head = pkt(1, &[1]);
        head.extend(column(2));
        let mut row = vec![0xfc, 0xa0, 0x86];
        row.extend(std::iter::repeat_n(b'x', 100_000));
        head.extend(pkt(3, &row));
        p.feed(
            Side::Server,
            Segment {
                ts_ns: 6,
                data: &head[..4096],
                len: head.len() as u64,
                lost_before: 0,
            },
            &mut out,
        );
        let end = pkt(4, &[0xfe, 0, 0, 2, 0, 0, 0]);
        p.feed(
            Side::Server,
            Segment {
                ts_ns: 7,
                data: &end,
                len: end.len() as u64,
                lost_before: 0,
            },
            &mut out,
        );
        assert_eq!(out.skips, vec![]);
        assert_eq!(out.calls.len(), 2);
        assert_eq!((out.calls[1].started_ns, out.calls[1].ended_ns), (5, 7));

        // Many rows in one read cut by the capture, the end not captured: the next
        // command ends the call.
        let mut p = new();
        let mut out = run(&mut *p, &segs);
        let mut rs = pkt(1, &[1]);
        rs.extend(column(2));
        for i in 0..200u32 {
            rs.extend(pkt(3 + i as u8, &[0x40; 65]));
        }
        rs.extend(pkt(0, &[0xfe, 0, 0, 2, 0, 0, 0]));
        p.feed(
            Side::Server,
            Segment {
                ts_ns: 6,
                data: &rs[..4096],
                len: rs.len() as u64,
                lost_before: 0,
            },
            &mut out,
        );
        let more = run(
            &mut *p,
            &[
                (Side::Client, 8, pkt(0, b"\x03COMMIT")),
                (Side::Server, 9, ok(1)),
            ],
        );
        out.calls.extend(more.calls);
        assert_eq!(out.skips, vec![Skip::Truncated]);
        let got: Vec<_> = out
            .calls
            .iter()
            .map(|c| (c.operation.as_str(), c.started_ns, c.ended_ns))
            .collect();
        assert_eq!(
            got,
            vec![("CONNECT", 10, 31), ("SELECT", 5, 6), ("COMMIT", 8, 9)]
        );
    }

    #[test]
    fn multi_results_and_continuation() {
        let mut segs = session(CLASSIC)[..4].to_vec();
        segs.push((Side::Client, 5, pkt(0, b"\x03CALL p()")));
        let mut r = result_set(false);
        // The last EOF says more results exist, then a final OK.
        let n = r.len();
        r[n - 2] = 0x0a;
        r.extend(ok(7));
        segs.push((Side::Server, 6, r));
        let out = run(&mut *new(), &segs);
        assert_eq!(out.calls.len(), 2);
        assert_eq!(out.calls[1].ended_ns, 6);
        // A 16 MiB query in two packets.
        let mut big = vec![0x03];
        big.extend_from_slice(b"INSERT INTO t VALUES ('");
        big.resize(0xff_ffff, b'c');
        let mut bytes = pkt(0, &big);
        bytes.extend(pkt(1, b"anary')"));
        let mut segs = session(CLASSIC)[..4].to_vec();
        segs.push((Side::Client, 5, bytes));
        segs.push((Side::Server, 6, ok(2)));
        let out = run(&mut *new(), &segs);
        assert_eq!(out.calls.len(), 2);
        assert_eq!(
            out.calls[1].fingerprint.as_deref(),
            Some("INSERT INTO t VALUES (?")
        );
    }
}
