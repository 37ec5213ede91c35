//! Redis (RESP2 and RESP3) client connections.
//!
//! What counts as a call: each command the client sends (an array of bulk strings),
//! paired in order with the next reply of the server that is not a push (`>`);
//! attributes (`|`) are skipped. Operation: the command name upper-cased (`OTHER` when it
//! is not an ASCII word of at most 32 bytes); fingerprint: the name, the subcommand for
//! container commands (`CLIENT SETNAME`, `CONFIG GET`, ..), then one `?` per argument
//! (more than 8: `? ? …`). No key, value or error text is kept.
//!
//! Not calls: `SUBSCRIBE`/`PSUBSCRIBE`/`SSUBSCRIBE` and `MONITOR` (in RESP2 they turn the
//! connection into a stream of messages: nothing more is parsed; in RESP3, after a
//! `HELLO` answered by a map, subscriptions are answered by pushes: their commands are not
//! calls, the connection goes on). Bulk strings are skipped by length, also when the
//! capture was cut. Nesting deeper than 32, a bad type byte or length: `Skip::Malformed`,
//! nothing more is produced.

use std::collections::VecDeque;

use super::framing::MAX_PENDING;
use super::{sql, Call, ErrorClass, Output, Parser, Protocol, Segment, Skip};
use crate::http::Side;

const MAX_DEPTH: usize = 32;
const MAX_LINE: usize = 64;
const MAX_WORD: usize = 32;
const MAX_BULK: u64 = 1 << 32;
const MAX_ARGS_KEPT: u64 = 8;

const CONTAINERS: &[&str] = &[
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "FUNCTION", "MEMORY", "MODULE", "OBJECT",
    "SCRIPT", "XINFO",
];

/// An array of bulk strings: `*<digits>\r\n$<digits>\r\n`.
pub fn looks_like_command(b: &[u8]) -> bool {
    fn number_line(b: &[u8], t: u8) -> Option<usize> {
        if b.first() != Some(&t) {
            return None;
        }
        let digits = b[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        (digits > 0 && digits <= 10 && b.get(1 + digits..3 + digits) == Some(b"\r\n"))
            .then_some(3 + digits)
    }
    match number_line(b, b'*') {
        Some(n) => number_line(&b[n..], b'$').is_some(),
        None => false,
    }
}

#[derive(Clone, Copy)]
struct Frame {
    left: u64,
    total: u64,
    attr: bool,
}

/// A top-level value read.
#[derive(Default)]
struct Value {
    kind: u8,
    /// Elements of a top-level aggregate.
    len: u64,
    /// Client: the first two bulk strings (prefixes) and their declared lengths.
    words: [(Vec<u8>, u64); 2],
    /// Errors: the start of the message.
    err: Vec<u8>,
    start_ns: u64,
    end_ns: u64,
}

/// Cuts one direction into top-level RESP values.
#[derive(Default)]
struct Reader {
    line: Vec<u8>,
    line_over: bool,
    /// Bytes of a bulk string (and its CRLF) still to come.
    bulk: u64,
    /// Where a bulk's bytes go: 0/1 a client word, 2 an error, else nowhere.
    collect: Option<usize>,
    stack: Vec<Frame>,
    cur: Value,
    in_value: bool,
    resync: bool,
}

enum Fail {
    Malformed,
    /// Bytes not captured past a value: the framing is lost.
    Cut,
}

impl Reader {
    fn reset(&mut self) {
        let resync = self.resync;
        *self = Self::default();
        self.resync = resync;
    }

    fn at_top(&self) -> bool {
        self.stack.is_empty()
    }

    /// A value ended (a scalar, or an aggregate's last element).
    fn value_done(&mut self, ts: u64, done: &mut Vec<Value>) {
        loop {
            let Some(f) = self.stack.last_mut() else {
                let mut v = std::mem::take(&mut self.cur);
                v.end_ns = ts;
                self.in_value = false;
                done.push(v);
                return;
            };
            f.left -= 1;
            if f.left > 0 {
                return;
            }
            let f = self.stack.pop();
            if f.is_some_and(|f| f.attr) {
                // An attribute is not a value: the value it describes follows.
                return;
            }
        }
    }

    fn line_done(&mut self, ts: u64, done: &mut Vec<Value>) -> Result<(), Fail> {
        let line = std::mem::take(&mut self.line);
        let over = std::mem::take(&mut self.line_over);
        let Some((&t, rest)) = line.split_first() else {
            return Err(Fail::Malformed);
        };
        let number = || -> Option<i64> {
            if over {
                return None;
            }
            std::str::from_utf8(rest).ok()?.parse::<i64>().ok()
        };
        let top = self.at_top();
        match t {
            b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => {
                if top {
                    self.cur.kind = t;
                    if t == b'-' {
                        self.cur.err = rest.iter().take(MAX_WORD).copied().collect();
                    }
                }
                self.value_done(ts, done);
            }
            b'$' | b'=' | b'!' => {
                let n = number().ok_or(Fail::Malformed)?;
                if top {
                    self.cur.kind = t;
                }
                if n < 0 {
                    self.value_done(ts, done);
                } else {
                    let n = n as u64;
                    if n > MAX_BULK {
                        return Err(Fail::Malformed);
                    }
                    self.bulk = n + 2;
                    self.collect = None;
                    if top && t == b'!' {
                        self.collect = Some(2);
                    } else if let [f] = self.stack[..] {
                        let ix = f.total - f.left;
                        if !f.attr && ix < 2 {
                            self.collect = Some(ix as usize);
                            self.cur.words[ix as usize] = (Vec::new(), n);
                        }
                    }
                }
            }
            b'*' | b'%' | b'~' | b'>' | b'|' => {
                let n = number().ok_or(Fail::Malformed)?;
                let attr = t == b'|';
                if top && !attr {
                    self.cur.kind = t;
                }
                if n < 0 {
                    if attr {
                        return Err(Fail::Malformed);
                    }
                    self.value_done(ts, done);
                    return Ok(());
                }
                if n as u64 > MAX_BULK {
                    return Err(Fail::Malformed);
                }
                let count = n as u64 * if matches!(t, b'%' | b'|') { 2 } else { 1 };
                if top && !attr {
                    self.cur.len = count;
                }
                if count == 0 {
                    if !attr {
                        self.value_done(ts, done);
                    }
                } else {
                    if self.stack.len() >= MAX_DEPTH {
                        return Err(Fail::Malformed);
                    }
                    self.stack.push(Frame {
                        left: count,
                        total: count,
                        attr,
                    });
                }
            }
            _ => return Err(Fail::Malformed),
        }
        Ok(())
    }

    /// Reads `data`, then `unknown` bytes not captured; the values read go to `done`.
    fn feed(
        &mut self,
        data: &[u8],
        unknown: u64,
        ts: u64,
        done: &mut Vec<Value>,
    ) -> Result<(), Fail> {
        let mut i = 0;
        while i < data.len() {
            let rest = &data[i..];
            if self.bulk > 0 {
                let n = self.bulk.min(rest.len() as u64) as usize;
                if let Some(ix) = self.collect {
                    // The content, not its CRLF.
                    let content = (self.bulk.saturating_sub(2) as usize).min(n);
                    let target = match ix {
                        0 | 1 => &mut self.cur.words[ix].0,
                        _ => &mut self.cur.err,
                    };
                    let room = (MAX_WORD + 1).saturating_sub(target.len()).min(content);
                    target.extend_from_slice(&rest[..room]);
                }
                self.bulk -= n as u64;
                i += n;
                if self.bulk == 0 {
                    self.value_done(ts, done);
                }
                continue;
            }
            if !self.in_value {
                self.in_value = true;
                self.cur.start_ns = ts;
            }
            match rest.iter().position(|&c| c == b'\n') {
                Some(j) => {
                    self.push_line(&rest[..j]);
                    i += j + 1;
                    if self.line.last() == Some(&b'\r') {
                        self.line.pop();
                    }
                    self.line_done(ts, done)?;
                }
                None => {
                    self.push_line(rest);
                    i = data.len();
                }
            }
        }
        if unknown > 0 {
            let n = self.bulk.min(unknown);
            self.bulk -= n;
            if n > 0 && self.bulk == 0 {
                self.value_done(ts, done);
            }
            if unknown > n {
                return Err(Fail::Cut);
            }
        }
        Ok(())
    }

    fn push_line(&mut self, b: &[u8]) {
        let room = (MAX_LINE + 1).saturating_sub(self.line.len()).min(b.len());
        self.line.extend_from_slice(&b[..room]);
        if self.line.len() > MAX_LINE {
            self.line.truncate(MAX_LINE);
            self.line_over = true;
        }
    }
}

/// Whether a segment may start with a top-level value (after a loss).
fn plausible_start(side: Side, data: &[u8]) -> bool {
    match side {
        Side::Client => looks_like_command(data),
        Side::Server => {
            data.first().is_some_and(|t| b"+-:$*%~>|,#_(=!".contains(t))
                && data.iter().take(MAX_LINE).any(|&c| c == b'\n')
        }
    }
}

struct Pending {
    operation: String,
    fingerprint: String,
    started_ns: u64,
}

#[derive(Default)]
struct Command {
    operation: String,
    fingerprint: String,
}

fn word(w: &(Vec<u8>, u64)) -> Option<String> {
    let (bytes, len) = w;
    let ok = !bytes.is_empty()
        && bytes.len() as u64 == *len
        && bytes.len() <= MAX_WORD
        && bytes[0].is_ascii_alphabetic()
        && bytes
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    ok.then(|| String::from_utf8_lossy(bytes).to_ascii_uppercase())
}

fn command(v: &Value) -> Command {
    let operation = word(&v.words[0]).unwrap_or_else(|| "OTHER".to_string());
    let mut fingerprint = operation.clone();
    let mut args = v.len.saturating_sub(1);
    if CONTAINERS.contains(&operation.as_str()) && args > 0 {
        // Subcommands are letters and dashes (`SETNAME`, `NO-EVICT`): a stricter test
        // than for command names, as a key given where a subcommand belongs stays out.
        let sub = word(&v.words[1])
            .filter(|w| w.len() <= 20 && w.bytes().all(|c| c.is_ascii_uppercase() || c == b'-'));
        if let Some(sub) = sub {
            fingerprint.push(' ');
            fingerprint.push_str(&sub);
            args -= 1;
        }
    }
    if args <= MAX_ARGS_KEPT {
        for _ in 0..args {
            fingerprint.push_str(" ?");
        }
    } else {
        fingerprint.push_str(" ? ? …");
    }
    Command {
        operation,
        fingerprint: sql::cut(fingerprint),
    }
}

fn error_class(operation: &str, err: &[u8]) -> ErrorClass {
    let code: Vec<u8> = err
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    match &code[..] {
        b"WRONGPASS" | b"NOAUTH" => ErrorClass::Auth,
        b"NOPERM" => ErrorClass::Permission,
        b"LOADING" | b"BUSY" | b"MASTERDOWN" | b"READONLY" | b"OOM" | b"CLUSTERDOWN" => {
            ErrorClass::Server
        }
        _ if operation == "AUTH" => ErrorClass::Auth,
        _ => ErrorClass::Statement,
    }
}

pub struct RedisParser {
    client: Reader,
    server: Reader,
    pending: VecDeque<Pending>,
    resp3: bool,
    /// RESP2 subscriptions or MONITOR: nothing more is parsed once the replies pending
    /// before it are read.
    stream_mode: bool,
    broken: bool,
    /// A server read cut by the capture lost the framing (its timestamp).
    server_cut: Option<u64>,
}

impl Default for RedisParser {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisParser {
    pub fn new() -> Self {
        Self {
            client: Reader::default(),
            server: Reader::default(),
            pending: VecDeque::new(),
            resp3: false,
            stream_mode: false,
            broken: false,
            server_cut: None,
        }
    }

    fn client_value(&mut self, v: Value, out: &mut Output) {
        if self.stream_mode {
            return;
        }
        if v.kind != b'*' || v.len == 0 {
            out.skips.push(Skip::Malformed);
            return;
        }
        if let Some(ts) = self.server_cut.take() {
            // The replies pending ended in the read cut by the capture.
            for p in self.pending.drain(..) {
                out.calls
                    .push(call(p.operation, p.fingerprint, p.started_ns, ts, None));
            }
        }
        let c = command(&v);
        match c.operation.as_str() {
            "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "MONITOR" if !self.resp3 => {
                self.stream_mode = true;
                return;
            }
            "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "UNSUBSCRIBE" | "PUNSUBSCRIBE"
            | "SUNSUBSCRIBE" | "MONITOR" => return,
            _ => {}
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
            out.skips.push(Skip::Unmatched);
        }
        self.pending.push_back(Pending {
            operation: c.operation,
            fingerprint: c.fingerprint,
            started_ns: v.start_ns,
        });
    }

    fn server_value(&mut self, v: Value, out: &mut Output) {
        if v.kind == b'>' {
            return;
        }
        let Some(p) = self.pending.pop_front() else {
            if !self.stream_mode {
                out.skips.push(Skip::Unmatched);
            }
            return;
        };
        let error = match v.kind {
            b'-' | b'!' => Some(error_class(&p.operation, &v.err)),
            _ => None,
        };
        if p.operation == "HELLO" && v.kind == b'%' {
            self.resp3 = true;
        }
        out.calls.push(call(
            p.operation,
            p.fingerprint,
            p.started_ns,
            v.end_ns,
            error,
        ));
    }
}

fn call(
    operation: String,
    fingerprint: String,
    started_ns: u64,
    ended_ns: u64,
    error: Option<ErrorClass>,
) -> Call {
    Call {
        protocol: Protocol::Redis,
        operation,
        fingerprint: Some(fingerprint),
        dns_name: None,
        answers: Vec::new(),
        started_ns,
        ended_ns,
        error,
    }
}

impl Parser for RedisParser {
    fn protocol(&self) -> Protocol {
        Protocol::Redis
    }

    fn feed(&mut self, side: Side, seg: Segment<'_>, out: &mut Output) {
        if self.broken || (self.stream_mode && (side == Side::Client || self.pending.is_empty())) {
            return;
        }
        let reader = match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        };
        if seg.lost_before > 0 {
            out.skips.push(Skip::Lost);
            reader.reset();
            reader.resync = true;
            self.pending.clear();
            self.server_cut = None;
        }
        if reader.resync {
            if !plausible_start(side, seg.data) {
                return;
            }
            reader.resync = false;
            if side == Side::Server && self.server_cut.take().is_some() {
                // Replies were in the bytes not captured: which ones is not known.
                self.pending.clear();
            }
        }
        let mut done = Vec::new();
        let unknown = seg.len.saturating_sub(seg.data.len() as u64);
        let r = reader.feed(seg.data, unknown, seg.ts_ns, &mut done);
        for v in done {
            match side {
                Side::Client => self.client_value(v, out),
                Side::Server => self.server_value(v, out),
            }
        }
        let reader = match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        };
        match r {
            Ok(()) => {}
            Err(Fail::Cut) => {
                out.skips.push(Skip::Truncated);
                reader.reset();
                reader.resync = true;
                match side {
                    Side::Server => self.server_cut = Some(seg.ts_ns),
                    Side::Client => self.pending.clear(),
                }
            }
            Err(Fail::Malformed) => {
                out.skips.push(Skip::Malformed);
                self.broken = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::postgres::tests::{check_garbage, check_splits, run};
    use super::*;

    fn cmd(args: &[&[u8]]) -> Vec<u8> {
        let mut v = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            v.extend(format!("${}\r\n", a.len()).into_bytes());
            v.extend_from_slice(a);
            v.extend_from_slice(b"\r\n");
        }
        v
    }

    fn new() -> Box<dyn Parser> {
        Box::new(RedisParser::new())
    }

    const CANARIES: &[&str] = &["canary", "4242424242"];

    #[test]
    fn detection() {
        assert!(looks_like_command(
            b"*2\r\n$3\r\nGET\r\n$11\r\nuser:canary\r\n"
        ));
        assert!(!looks_like_command(b"PING\r\n"));
        assert!(!looks_like_command(b"*2\r\n:3\r\n"));
        assert!(!looks_like_command(b"GET / HTTP/1.1\r\n"));
    }

    #[test]
    fn fingerprints() {
        let fp = |args: &[&[u8]]| {
            let out = run(
                &mut *new(),
                &[
                    (Side::Client, 1, cmd(args)),
                    (Side::Server, 2, b"+OK\r\n".to_vec()),
                ],
            );
            let c = &out.calls[0];
            (c.operation.clone(), c.fingerprint.clone().unwrap())
        };
        assert_eq!(
            fp(&[b"get", b"user:canary"]),
            ("GET".into(), "GET ?".into())
        );
        assert_eq!(
            fp(&[b"SET", b"user:canary", b"canary-value"]),
            ("SET".into(), "SET ? ?".into())
        );
        assert_eq!(
            fp(&[b"client", b"setname", b"canary"]),
            ("CLIENT".into(), "CLIENT SETNAME ?".into())
        );
        assert_eq!(
            fp(&[b"CONFIG", b"GET", b"maxmemory"]),
            ("CONFIG".into(), "CONFIG GET ?".into())
        );
        assert_eq!(
            fp(&[b"OBJECT", b"user:canary"]),
            ("OBJECT".into(), "OBJECT ?".into())
        );
        assert_eq!(
            fp(&[b"AUTH", b"canary-secret-42"]),
            ("AUTH".into(), "AUTH ?".into())
        );
        assert_eq!(
            fp(&[b"user:canary", b"x"]),
            ("OTHER".into(), "OTHER ?".into())
        );
        assert_eq!(
            fp(&[b"JSON.GET", b"k"]),
            ("JSON.GET".into(), "JSON.GET ?".into())
        );
        let many: Vec<&[u8]> = std::iter::once(&b"MSET"[..])
            .chain(std::iter::repeat_n(&b"canary"[..], 10))
            .collect();
        assert_eq!(fp(&many), ("MSET".into(), "MSET ? ? …".into()));
        let eight: Vec<&[u8]> = std::iter::once(&b"HSET"[..])
            .chain(std::iter::repeat_n(&b"k"[..], 8))
            .collect();
        assert_eq!(fp(&eight).1, "HSET ? ? ? ? ? ? ? ?");
    }

    fn session() -> Vec<(Side, u64, Vec<u8>)> {
        let mut pipe = cmd(&[b"SET", b"user:canary", b"canary-value"]);
        pipe.extend(cmd(&[b"GET", b"user:canary"]));
        pipe.extend(cmd(&[b"HGETALL", b"user:canary"]));
        pipe.extend(cmd(&[b"INCRBY", b"n", b"4242424242"]));
        let mut replies = b"+OK\r\n$12\r\ncanary-value\r\n".to_vec();
        // A RESP3 map with a nested array, an attribute before the integer.
        replies.extend(b"%2\r\n$4\r\nname\r\n*2\r\n$6\r\ncanary\r\n_\r\n$3\r\nage\r\n,42.5\r\n");
        replies.extend(b"|1\r\n+ttl\r\n:3\r\n:4242424242\r\n");
        vec![
            (
                Side::Client,
                1,
                cmd(&[b"HELLO", b"3", b"AUTH", b"default", b"canary-secret-42"]),
            ),
            (
                Side::Server,
                2,
                b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n".to_vec(),
            ),
            (Side::Client, 3, pipe),
            // A push between replies is not a reply.
            (
                Side::Server,
                4,
                b">3\r\n$10\r\ninvalidate\r\n*1\r\n$11\r\nuser:canary\r\n_\r\n".to_vec(),
            ),
            (Side::Server, 5, replies),
            (Side::Client, 6, cmd(&[b"GET", b"missing"])),
            (Side::Server, 7, b"_\r\n".to_vec()),
            (Side::Client, 8, cmd(&[b"LPUSH", b"user:canary", b"x"])),
            (
                Side::Server,
                9,
                b"-WRONGTYPE Operation against a key holding canary\r\n".to_vec(),
            ),
            (Side::Client, 10, cmd(&[b"GET", b"user:canary"])),
            (
                Side::Server,
                11,
                b"-NOPERM this user has no permissions\r\n".to_vec(),
            ),
            (Side::Client, 12, cmd(&[b"GET", b"k"])),
            (
                Side::Server,
                13,
                b"!21\r\nSYNTAX invalid canary\r\n".to_vec(),
            ),
            (Side::Client, 14, cmd(&[b"SET", b"k", b"v"])),
            (Side::Server, 15, b"-OOM command not allowed\r\n".to_vec()),
        ]
    }

    #[test]
    fn full_session() {
        let out = run(&mut *new(), &session());
        assert_eq!(out.skips, vec![]);
        let got: Vec<_> = out
            .calls
            .iter()
            .map(|c| {
                (
                    c.fingerprint.as_deref().unwrap(),
                    c.started_ns,
                    c.ended_ns,
                    c.error,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("HELLO ? ? ? ?", 1, 2, None),
                ("SET ? ?", 3, 5, None),
                ("GET ?", 3, 5, None),
                ("HGETALL ?", 3, 5, None),
                ("INCRBY ? ?", 3, 5, None),
                ("GET ?", 6, 7, None),
                ("LPUSH ? ?", 8, 9, Some(ErrorClass::Statement)),
                ("GET ?", 10, 11, Some(ErrorClass::Permission)),
                ("GET ?", 12, 13, Some(ErrorClass::Statement)),
                ("SET ? ?", 14, 15, Some(ErrorClass::Server)),
            ]
        );
        check_splits(&new, &session());
        check_garbage(&new, &session(), CANARIES);
    }

    #[test]
    fn auth_errors() {
        let out = run(
            &mut *new(),
            &[
                (Side::Client, 1, cmd(&[b"AUTH", b"canary-secret-42"])),
                (
                    Side::Server,
                    2,
                    b"-WRONGPASS invalid username-password pair\r\n".to_vec(),
                ),
                (Side::Client, 3, cmd(&[b"GET", b"k"])),
                (
                    Side::Server,
                    4,
                    b"-NOAUTH Authentication required.\r\n".to_vec(),
                ),
                (Side::Client, 5, cmd(&[b"AUTH", b"x"])),
                (Side::Server, 6, b"-ERR invalid password\r\n".to_vec()),
            ],
        );
        assert!(out.calls.iter().all(|c| c.error == Some(ErrorClass::Auth)));
        assert_eq!(out.calls.len(), 3);
    }

    #[test]
    fn resp2_subscribe_stops() {
        let out = run(
            &mut *new(),
            &[
                (
                    Side::Client,
                    1,
                    [cmd(&[b"PING"]), cmd(&[b"SUBSCRIBE", b"canary-chan"])].concat(),
                ),
                (
                    Side::Server,
                    2,
                    b"+PONG\r\n*3\r\n$9\r\nsubscribe\r\n$11\r\ncanary-chan\r\n:1\r\n".to_vec(),
                ),
                (
                    Side::Server,
                    3,
                    b"*3\r\n$7\r\nmessage\r\n$11\r\ncanary-chan\r\n$12\r\ncanary-value\r\n"
                        .to_vec(),
                ),
                (Side::Client, 4, cmd(&[b"PING"])),
            ],
        );
        assert_eq!(out.calls.len(), 1);
        assert_eq!(out.skips, vec![]);
    }

    #[test]
    fn big_values_cut_by_capture() {
        let mut p = new();
        let mut out = run(&mut *p, &[(Side::Client, 1, cmd(&[b"GET", b"big"]))]);
        let mut reply = b"$1000000\r\n".to_vec();
        reply.extend(std::iter::repeat_n(b'x', 1_000_000));
        reply.extend(b"\r\n");
        // Captured 4 KiB of a 64 KiB read, then the rest in reads of 64 KiB, cut too.
        let mut at = 0;
        while at < reply.len() {
            let end = (at + 65536).min(reply.len());
            let cap = (at + 4096).min(end);
            p.feed(
                Side::Server,
                Segment {
                    ts_ns: 2 + at as u64,
                    data: &reply[at..cap],
                    len: (end - at) as u64,
                    lost_before: 0,
                },
                &mut out,
            );
            at = end;
        }
        assert_eq!(out.skips, vec![]);
        assert_eq!(out.calls.len(), 1);
        // A SET with a big value cut by the capture on the client side.
        let big = cmd(&[b"SET", b"k", &vec![b'v'; 100_000]]);
        let mut more = Output::default();
        p.feed(
            Side::Client,
            Segment {
                ts_ns: 9,
                data: &big[..4096],
                len: big.len() as u64,
                lost_before: 0,
            },
            &mut more,
        );
        p.feed(
            Side::Server,
            Segment {
                ts_ns: 10,
                data: b"+OK\r\n",
                len: 5,
                lost_before: 0,
            },
            &mut more,
        );
        assert_eq!(more.calls.len(), 1);
        assert_eq!(more.calls[0].fingerprint.as_deref(), Some("SET ? ?"));

        // Many small replies cut: the next command ends the pending ones.
        let mut p = new();
        let mut out = run(
            &mut *p,
            &[(Side::Client, 1, cmd(&[b"LRANGE", b"l", b"0", b"-1"]))],
        );
        let mut reply = b"*1000\r\n".to_vec();
        for _ in 0..1000 {
            reply.extend(b"$6\r\ncanary\r\n");
        }
        p.feed(
            Side::Server,
            Segment {
                ts_ns: 2,
                data: &reply[..4096],
                len: reply.len() as u64,
                lost_before: 0,
            },
            &mut out,
        );
        let more = run(
            &mut *p,
            &[
                (Side::Client, 3, cmd(&[b"PING"])),
                (Side::Server, 4, b"+PONG\r\n".to_vec()),
            ],
        );
        out.calls.extend(more.calls);
        assert_eq!(out.skips, vec![Skip::Truncated]);
        let got: Vec<_> = out
            .calls
            .iter()
            .map(|c| (c.operation.as_str(), c.started_ns, c.ended_ns))
            .collect();
        assert_eq!(got, vec![("LRANGE", 1, 2), ("PING", 3, 4)]);
    }

    #[test]
    fn pending_bounded() {
        let many: Vec<u8> = (0..300).flat_map(|_| cmd(&[b"GET", b"k"])).collect();
        let out = run(
            &mut *new(),
            &[
                (Side::Client, 1, many),
                (Side::Server, 2, b"+OK\r\n".to_vec()),
            ],
        );
        assert_eq!(out.skips.len(), 300 - MAX_PENDING);
        assert_eq!(out.calls.len(), 1);
    }

    #[test]
    fn malformed_and_depth() {
        let out = run(
            &mut *new(),
            &[
                (Side::Client, 1, b"*1\r\n$3\r\nGET\r\n".to_vec()),
                (Side::Server, 2, b"?what\r\n+OK\r\n".to_vec()),
            ],
        );
        assert_eq!(out.skips, vec![Skip::Malformed]);
        assert!(out.calls.is_empty());
        let out = run(
            &mut *new(),
            &[
                (Side::Client, 1, cmd(&[b"GET", b"k"])),
                (Side::Server, 2, b"%9223372036854775807\r\n".to_vec()),
            ],
        );
        assert_eq!(out.skips, vec![Skip::Malformed]);
        let deep = "*1\r\n".repeat(40);
        let out = run(
            &mut *new(),
            &[
                (Side::Client, 1, cmd(&[b"GET", b"k"])),
                (Side::Server, 2, deep.into_bytes()),
            ],
        );
        assert_eq!(out.skips, vec![Skip::Malformed]);
        // Unmatched reply.
        let out = run(&mut *new(), &[(Side::Server, 1, b"+OK\r\n".to_vec())]);
        assert_eq!(out.skips, vec![Skip::Unmatched]);
    }
}
