//! Connections: per-socket state between the kernel records and the protocol parsers.
//!
//! Each (pid, fd) gets a [`Connection`] that knows its role and addresses, detects the
//! protocol from the first bytes the client sends, and feeds both directions to one
//! parser. Paired exchanges come out as [`Exchange`]s with addresses and process.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    capture::{
        decode::{Direction, Event, SocketInfo},
        procfs::ExistingSocket,
    },
    exchange::{split_target, Exchange, Role, UNKNOWN_ADDR},
    http::{
        self, Detection, HeaderAllowlist, ParseIssue, ParsedExchange, ParserLimits, ParserOutput,
        Segment, Side, StreamParser,
    },
};

/// Most client bytes held while the protocol is not known yet.
const DETECT_BYTES: usize = 24;
/// Segments a connection seen mid-stream may take to show a message start.
const MIDSTREAM_TRIES: u32 = 64;

/// Converts kernel monotonic timestamps to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock time minus monotonic time, nanoseconds.
    offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime with a valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or_default();
        Self {
            offset_ns: wall - mono,
        }
    }

    /// A clock where monotonic time `mono_ns` is wall-clock time `wall`.
    pub fn fixed(mono_ns: u64, wall: SystemTime) -> Self {
        let wall = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or_default();
        Self {
            offset_ns: wall - mono_ns as i128,
        }
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        let ns = (mono_ns as i128 + self.offset_ns).max(0) as u128;
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns as u64)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ConnKey {
    pid: u32,
    fd: u32,
}

enum Stage {
    /// Waiting for the client's first bytes.
    Detecting {
        pending: Vec<(Side, u64, Vec<u8>, u64)>,
        buffered: usize,
        tries_left: u32,
    },
    Parsing(Box<dyn StreamParser>),
    /// Not a protocol we parse, or upgraded to one: ignore the rest.
    Ignored,
}

struct Connection {
    role: Option<Role>,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    comm: Arc<str>,
    tls: bool,
    stage: Stage,
    last_ns: u64,
}

impl Connection {
    fn new(role: Option<Role>, comm: Arc<str>, midstream: bool, now_ns: u64) -> Self {
        Self {
            role,
            local: None,
            remote: None,
            comm,
            tls: false,
            stage: Stage::Detecting {
                pending: Vec::new(),
                buffered: 0,
                tries_left: if midstream { MIDSTREAM_TRIES } else { 1 },
            },
            last_ns: now_ns,
        }
    }
}

/// Counters the table keeps for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnStats {
    /// Connections dropped because the table was full or they went idle.
    pub evicted: u64,
    /// Connections whose protocol is not one we parse.
    pub unknown_protocol: u64,
}

/// What one event produced.
#[derive(Debug, Default)]
pub struct ConnOutput {
    pub exchanges: Vec<Exchange>,
    pub issues: Vec<ParseIssue>,
}

/// Every followed connection.
pub struct ConnTable {
    conns: HashMap<ConnKey, Connection>,
    limits: ParserLimits,
    allowlist: Arc<HeaderAllowlist>,
    max_connections: usize,
    pub clock: Clock,
    pub stats: ConnStats,
    scratch: ParserOutput,
}

impl ConnTable {
    pub fn new(
        limits: ParserLimits,
        allowlist: HeaderAllowlist,
        max_connections: usize,
        clock: Clock,
    ) -> Self {
        Self {
            conns: HashMap::new(),
            limits,
            allowlist: Arc::new(allowlist),
            max_connections,
            clock,
            stats: ConnStats::default(),
            scratch: ParserOutput::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A connection that existed before the agent started.
    pub fn seed(&mut self, s: &ExistingSocket, now_ns: u64) {
        let mut conn = Connection::new(Some(s.role), Arc::from(s.comm.as_str()), true, now_ns);
        conn.local = Some(s.local);
        conn.remote = Some(s.remote);
        self.insert(
            ConnKey {
                pid: s.pid,
                fd: s.fd,
            },
            conn,
            &mut ConnOutput::default(),
        );
    }

    /// Apply one kernel record.
    pub fn on_event(&mut self, event: Event<'_>, out: &mut ConnOutput) {
        match event {
            Event::Accept(info) | Event::Connect(info) => self.open(info, out),
            Event::Addresses(info) => {
                let key = ConnKey {
                    pid: info.pid,
                    fd: info.fd,
                };
                let conn = self.conns.entry(key).or_insert_with(|| {
                    Connection::new(info.role, Arc::from(info.comm.as_str()), true, info.ts_ns)
                });
                conn.local = info.local.or(conn.local);
                conn.remote = info.remote.or(conn.remote);
                if conn.role.is_none() {
                    conn.role = info.role;
                }
            }
            Event::Close { pid, fd, ts_ns } => {
                if let Some(conn) = self.conns.remove(&ConnKey { pid, fd }) {
                    self.finish(ConnKey { pid, fd }, conn, ts_ns, out);
                }
            }
            Event::Data {
                pid,
                fd,
                ts_ns,
                direction,
                tls,
                len,
                payload,
            } => self.data(
                ConnKey { pid, fd },
                ts_ns,
                direction,
                tls,
                len,
                payload,
                out,
            ),
        }
    }

    fn open(&mut self, info: SocketInfo, out: &mut ConnOutput) {
        let key = ConnKey {
            pid: info.pid,
            fd: info.fd,
        };
        let mut conn = Connection::new(info.role, Arc::from(info.comm.as_str()), false, info.ts_ns);
        conn.remote = info.remote;
        if let Some(old) = self.conns.remove(&key) {
            // The fd was reused without a close we saw.
            self.finish(key, old, info.ts_ns, out);
        }
        self.insert(key, conn, out);
    }

    fn insert(&mut self, key: ConnKey, conn: Connection, out: &mut ConnOutput) {
        if self.conns.len() >= self.max_connections && !self.conns.contains_key(&key) {
            self.evict_oldest(out);
        }
        self.conns.insert(key, conn);
    }

    /// Drop the least recently active eighth of the table.
    fn evict_oldest(&mut self, out: &mut ConnOutput) {
        let mut ages: Vec<(u64, ConnKey)> =
            self.conns.iter().map(|(k, c)| (c.last_ns, *k)).collect();
        let n = (ages.len() / 8).max(1);
        ages.select_nth_unstable(n - 1);
        for (ts, key) in ages.into_iter().take(n) {
            if let Some(conn) = self.conns.remove(&key) {
                self.stats.evicted += 1;
                self.finish(key, conn, ts, out);
            }
        }
    }

    /// Forget connections idle for longer than `idle` (their close was lost).
    pub fn sweep(&mut self, now_ns: u64, idle: Duration, out: &mut ConnOutput) {
        let limit = idle.as_nanos() as u64;
        let stale: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.last_ns) > limit)
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            if let Some(conn) = self.conns.remove(&key) {
                self.stats.evicted += 1;
                self.finish(key, conn, now_ns, out);
            }
        }
    }

    fn finish(&mut self, key: ConnKey, mut conn: Connection, ts_ns: u64, out: &mut ConnOutput) {
        if let Stage::Parsing(parser) = &mut conn.stage {
            let mut produced = std::mem::take(&mut self.scratch);
            parser.finish(ts_ns, &mut produced);
            self.emit(key, &conn, &mut produced, out);
            self.scratch = produced;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn data(
        &mut self,
        key: ConnKey,
        ts_ns: u64,
        direction: Direction,
        tls: bool,
        len: u64,
        payload: &[u8],
        out: &mut ConnOutput,
    ) {
        if !self.conns.contains_key(&key) {
            // Traced by the kernel but unknown here (seeded socket we lost, or evicted).
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", key.pid))
                .map(|c| Arc::from(c.trim_end()))
                .unwrap_or_else(|_| Arc::from(""));
            self.insert(key, Connection::new(None, comm, true, ts_ns), out);
        }
        let Some(mut conn) = self.conns.remove(&key) else {
            return;
        };
        conn.last_ns = ts_ns;
        if tls && !conn.tls {
            // Plaintext from a TLS library: the syscall bytes were ciphertext; start over.
            conn.tls = true;
            conn.stage = Stage::Detecting {
                pending: Vec::new(),
                buffered: 0,
                tries_left: MIDSTREAM_TRIES,
            };
        }
        if conn.tls != tls {
            // Ciphertext of a connection whose plaintext we see through its TLS library.
            self.conns.insert(key, conn);
            return;
        }
        self.feed(key, &mut conn, ts_ns, direction, len, payload, out);
        self.conns.insert(key, conn);
    }

    #[allow(clippy::too_many_arguments)]
    fn feed(
        &mut self,
        key: ConnKey,
        conn: &mut Connection,
        ts_ns: u64,
        direction: Direction,
        len: u64,
        payload: &[u8],
        out: &mut ConnOutput,
    ) {
        if let Stage::Detecting {
            pending,
            buffered,
            tries_left,
        } = &mut conn.stage
        {
            // Which side is the client: known from accept/connect, else the side whose
            // first bytes look like a request.
            let side_if = |role: Role| match (role, direction) {
                (Role::Server, Direction::Ingress) | (Role::Client, Direction::Egress) => {
                    Side::Client
                }
                _ => Side::Server,
            };
            let candidate_role = match direction {
                Direction::Ingress => Role::Server,
                Direction::Egress => Role::Client,
            };
            let side = conn.role.map(side_if).unwrap_or(Side::Client);
            if side == Side::Server {
                // A server does not speak first in HTTP/1; a response seen mid-stream is
                // of no use without its request.
                return;
            }
            let mut probe: Vec<u8> = pending
                .iter()
                .flat_map(|(_, _, d, _)| d.iter().copied())
                .take(DETECT_BYTES)
                .collect();
            probe.extend(
                payload
                    .iter()
                    .take(DETECT_BYTES.saturating_sub(probe.len())),
            );
            match http::detect(&probe) {
                Detection::NeedMore
                    if *buffered + payload.len() < DETECT_BYTES && payload.len() as u64 == len =>
                {
                    *buffered += payload.len();
                    pending.push((side, ts_ns, payload.to_vec(), len));
                    return;
                }
                detection @ (Detection::Http1 | Detection::Http2) => {
                    match http::parser_for(detection, &self.limits, &self.allowlist) {
                        Some(mut parser) => {
                            if conn.role.is_none() {
                                conn.role = Some(candidate_role);
                            }
                            let mut produced = std::mem::take(&mut self.scratch);
                            for (s, ts, d, l) in pending.drain(..) {
                                parser.feed(
                                    s,
                                    Segment {
                                        ts_ns: ts,
                                        data: &d,
                                        len: l,
                                    },
                                    &mut produced,
                                );
                            }
                            conn.stage = Stage::Parsing(parser);
                            self.scratch = produced;
                        }
                        None => {
                            self.stats.unknown_protocol += 1;
                            conn.stage = Stage::Ignored;
                            return;
                        }
                    }
                }
                _ => {
                    pending.clear();
                    *buffered = 0;
                    *tries_left = tries_left.saturating_sub(1);
                    if *tries_left == 0 {
                        self.stats.unknown_protocol += 1;
                        conn.stage = Stage::Ignored;
                    }
                    return;
                }
            }
        }
        let Stage::Parsing(parser) = &mut conn.stage else {
            return;
        };
        let role = conn.role.unwrap_or(Role::Server);
        let side = match (role, direction) {
            (Role::Server, Direction::Ingress) | (Role::Client, Direction::Egress) => Side::Client,
            _ => Side::Server,
        };
        let mut produced = std::mem::take(&mut self.scratch);
        parser.feed(
            side,
            Segment {
                ts_ns,
                data: payload,
                len,
            },
            &mut produced,
        );
        if produced.issues.contains(&ParseIssue::Upgraded) {
            conn.stage = Stage::Ignored;
        }
        self.emit(key, conn, &mut produced, out);
        self.scratch = produced;
    }

    fn emit(
        &self,
        key: ConnKey,
        conn: &Connection,
        produced: &mut ParserOutput,
        out: &mut ConnOutput,
    ) {
        out.issues.append(&mut produced.issues);
        for parsed in produced.exchanges.drain(..) {
            out.exchanges.push(self.exchange(key, conn, parsed));
        }
    }

    fn exchange(&self, key: ConnKey, conn: &Connection, p: ParsedExchange) -> Exchange {
        let role = conn.role.unwrap_or(Role::Server);
        let local = conn.local.unwrap_or(UNKNOWN_ADDR);
        let remote = conn.remote.unwrap_or(UNKNOWN_ADDR);
        let (client, server) = match role {
            Role::Server => (remote, local),
            Role::Client => (local, remote),
        };
        let (path, query) = split_target(&p.target);
        Exchange {
            protocol: p.protocol,
            role,
            tls: conn.tls,
            client,
            server,
            pid: key.pid,
            comm: Arc::clone(&conn.comm),
            method: p.method,
            path,
            query,
            status: p.status,
            request_headers: p.request_headers,
            started_at: self.clock.wall(p.request_start_ns),
            latency: Duration::from_nanos(p.response_ns.saturating_sub(p.request_end_ns)),
            request_body_bytes: p.request_body_bytes,
            response_body_bytes: p.response_body_bytes,
        }
    }
}
