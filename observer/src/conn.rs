//! Connections: per-socket state between the kernel records and the protocol parsers.
//!
//! Each (pid, fd) gets a [`Connection`] that knows its role and addresses, detects the
//! protocol from the first bytes the client sends, and feeds both directions to one
//! parser. Paired exchanges come out as [`Exchange`]s with addresses and process.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use observer_common::{offset_index, DIR_EGRESS, DIR_INGRESS, SOURCE_SYSCALL, SOURCE_TLS};

use crate::{
    capture::{
        decode::{Direction, Event, SocketInfo},
        procfs::ExistingSocket,
    },
    clock::Clock,
    downstream::{self, Call, ErrorClass, Record, Summary, Unattributed},
    exchange::{split_target, Exchange, Role, UNKNOWN_ADDR},
    http::{
        self, h2, Detection, HeaderAllowlist, Offsets, ParseIssue, ParsedExchange, ParserLimits,
        ParserOutput, Segment, Side, StreamParser,
    },
    route::RouteTemplate,
    workload::{Workload, WorkloadResolver},
};

/// Most client bytes held while the protocol is not known yet.
const DETECT_BYTES: usize = 256;
/// Segments a connection seen mid-stream may take to show a message start.
const MIDSTREAM_TRIES: u32 = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ConnKey {
    pid: u32,
    fd: u32,
}

/// A segment held while the protocol is not known yet.
struct Held {
    side: Side,
    ts_ns: u64,
    data: Vec<u8>,
    len: u64,
    at: Option<Offsets>,
}

enum Stage {
    /// Waiting for the client's first bytes.
    Detecting {
        pending: Vec<Held>,
        buffered: usize,
        tries_left: u32,
    },
    Parsing(Box<dyn StreamParser>),
    /// A downstream protocol (DNS, a database, a cache) this process speaks as a client.
    Downstream(Box<dyn downstream::Parser>),
    /// Not a protocol we parse, or upgraded to one: ignore the rest.
    Ignored,
}

struct Connection {
    /// When the kernel saw it accepted or connected (`Some(0)`: found at start); `None`
    /// when neither was seen. The kernel's key to tell this socket from a later one on
    /// the same fd.
    opened_ns: Option<u64>,
    role: Option<Role>,
    local: Option<SocketAddr>,
    remote: Option<SocketAddr>,
    comm: Arc<str>,
    workload: Arc<Workload>,
    tls: bool,
    stage: Stage,
    last_ns: u64,
    /// The stream offset each direction's next record should start at (ingress, egress),
    /// for the source in use; `None` until known. A record that starts later shows a loss.
    next: [Option<u64>; 2],
    /// Lost exchanges of this connection: `proven` by the parser (a request whose answer
    /// was lost, an answer to a request never seen), `estimated` from the client bytes
    /// lost at the connection's mean request size (exchanges lost whole, neither end of
    /// them seen, are found only so), and how many were `attributed` to reported ones.
    lost: LostExchanges,
    /// Client bytes and exchanges seen, for the mean request size.
    client_bytes: u64,
    exchanges: u64,
    /// Per direction (ingress, egress): the kernel was asked not to copy bytes before this
    /// stream offset (a long body), so a gap up to it is not a loss.
    skip_until: [u64; 2],
    /// A datagram socket (DNS over UDP): each record is one message.
    datagram: bool,
    /// Server side: a request was read and its response not written yet.
    awaiting_response: bool,
    /// Server side: downstream calls made for the request being served, waiting for its
    /// exchange (with their targets).
    pending_calls: Vec<(Call, Option<SocketAddr>, Option<Arc<str>>)>,
    /// Client side: who sent the last request (see [`ConnTable::worker`]).
    request_worker: u64,
}

#[derive(Default)]
struct LostExchanges {
    proven: u64,
    estimated: u64,
    attributed: u64,
}

impl LostExchanges {
    /// Lost exchanges not attributed yet.
    fn take(&mut self) -> u64 {
        let n = self.proven.max(self.estimated) - self.attributed;
        self.attributed += n;
        n
    }
}

impl Connection {
    fn new(role: Option<Role>, comm: Arc<str>, midstream: bool, now_ns: u64) -> Self {
        Self {
            opened_ns: None,
            role,
            local: None,
            remote: None,
            comm,
            workload: Arc::default(),
            tls: false,
            stage: Stage::Detecting {
                pending: Vec::new(),
                buffered: 0,
                tries_left: if midstream { MIDSTREAM_TRIES } else { 1 },
            },
            last_ns: now_ns,
            next: [None; 2],
            lost: LostExchanges::default(),
            client_bytes: 0,
            exchanges: 0,
            skip_until: [0; 2],
            datagram: false,
            awaiting_response: false,
            pending_calls: Vec::new(),
            request_worker: 0,
        }
    }

    /// Expect every byte from the start: the kernel counts this socket's bytes from
    /// when it began to follow it, as this connection did.
    fn counted_from_start(mut self) -> Self {
        self.next = [Some(0); 2];
        self
    }
}

/// Counters the table keeps for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConnStats {
    /// Connections dropped because the table was full.
    pub evicted: u64,
    /// Connections forgotten after going idle (their close was lost): not a loss.
    pub swept: u64,
    /// Connections whose protocol is not one we parse.
    pub unknown_protocol: u64,
    /// Gaps in followed connections: records that never reached the agent.
    pub losses: u64,
    /// Bytes in those gaps.
    pub lost_bytes: u64,
    /// Exchanges that happened but were not reported whole because of a gap.
    pub lost_exchanges: u64,
    /// Body bytes the kernel counted without copying, as asked.
    pub skipped_bytes: u64,
}

/// What one event produced.
#[derive(Debug, Default)]
pub struct ConnOutput {
    pub exchanges: Vec<Exchange>,
    pub issues: Vec<ParseIssue>,
    /// Sockets no longer followed (not a protocol we parse, a tunnel, or an ignored
    /// process), as `(pid, fd, opened_ns)`: the kernel can stop copying their bytes.
    pub unfollow: Vec<(u32, u32, u64)>,
    /// Long bodies ahead: the kernel can count them without copying.
    pub skips: Vec<Skip>,
    /// Downstream calls, attributed to a request or not (attributed ones also ride on
    /// their exchange's `downstream`).
    pub downstream: Vec<Record>,
    /// Downstream bytes skipped, by protocol and reason.
    pub downstream_skips: Vec<(downstream::Protocol, downstream::Skip)>,
    /// HTTP calls this host made, as downstream calls, until they are attributed.
    client_calls: Vec<Call>,
}

/// Bytes of one socket the kernel may count without copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skip {
    pub pid: u32,
    pub fd: u32,
    /// Which socket on that fd (`SocketState::opened_ns`).
    pub opened_ns: u64,
    /// `observer_common::offset_index` of the source and direction.
    pub index: usize,
    /// Stream offset the body ends at.
    pub until: u64,
}

/// Stop following a connection: its later bytes are ignored here, and the kernel is
/// told (when it can tell this socket from a later one on the same fd).
fn ignore(key: ConnKey, conn: &mut Connection, out: &mut ConnOutput) {
    conn.stage = Stage::Ignored;
    if let Some(opened) = conn.opened_ns {
        out.unfollow.push((key.pid, key.fd, opened));
    }
}

/// Every followed connection.
pub struct ConnTable {
    conns: HashMap<ConnKey, Connection>,
    parsers: Parsers,
    max_connections: usize,
    pub clock: Clock,
    pub stats: ConnStats,
    /// Processes never observed (privacy off switch): their connections are not parsed.
    ignore_processes: Vec<String>,
    /// Container/pod lookup (none in unit tests).
    workloads: Option<WorkloadResolver>,
    /// Process names by pid, from the kernel's socket records (`/proc` is read only for
    /// a pid none of them named): one shared name per process, no file read per event.
    comms: HashMap<u32, Arc<str>>,
    /// Which server connection each thread last read a request from.
    threads: crate::session::window::FastMap<(u32, u64), Serving>,
    /// Whether each process is a Go program: its requests are told apart by goroutine.
    go: crate::session::window::FastMap<u32, bool>,
    /// Processes that served a request: only their calls are downstream calls (a client
    /// program, a cron job or a CLI serves none).
    servers: std::collections::HashSet<u32>,
    /// Names processes resolved, by (pid, address): a downstream target's DNS name.
    resolved: HashMap<(u32, IpAddr), Arc<str>>,
}

/// What a thread is serving.
#[derive(Clone, Copy, Debug)]
struct Serving {
    conn: ConnKey,
    /// Which connection on that fd (`Connection::opened_ns`): a later one that reuses the
    /// fd is not the one the thread served.
    opened: Option<u64>,
    /// Until then the thread counts as serving several connections at once: its calls
    /// cannot be attributed.
    shared_until_ns: u64,
}

/// How long a thread seen serving two connections at once stays unattributable.
const SHARED_HOLD_NS: u64 = 60_000_000_000;
/// Most threads and resolved names remembered (each table starts over when full).
const MAX_THREADS: usize = 65_536;
const MAX_RESOLVED: usize = 16_384;
/// Most calls waiting for one request's exchange.
const MAX_PENDING_CALLS: usize = 4096;

/// Most process names remembered; the cache starts over when full.
const MAX_COMMS: usize = 4096;

impl ConnTable {
    pub fn new(
        limits: ParserLimits,
        allowlist: HeaderAllowlist,
        max_connections: usize,
        clock: Clock,
    ) -> Self {
        Self {
            conns: HashMap::new(),
            parsers: Parsers {
                limits,
                allowlist: Arc::new(allowlist),
                scratch: ParserOutput::default(),
                downstream: false,
                calls: downstream::Output::default(),
            },
            max_connections,
            clock,
            stats: ConnStats::default(),
            ignore_processes: Vec::new(),
            workloads: None,
            comms: HashMap::new(),
            threads: crate::session::window::fast_map(),
            go: crate::session::window::fast_map(),
            servers: std::collections::HashSet::new(),
            resolved: HashMap::new(),
        }
    }

    /// Parse downstream protocols (DNS, PostgreSQL, MySQL, Redis) on client connections
    /// and attribute their calls, and HTTP client calls, to the requests being served.
    pub fn follow_downstream(&mut self, on: bool) {
        self.parsers.downstream = on;
    }

    /// The shared name of process `pid`: `named` when a kernel record named it, else
    /// what is known, else `/proc/<pid>/comm` (read once per process).
    fn comm(&mut self, pid: u32, named: Option<&str>) -> Arc<str> {
        if let Some(known) = self.comms.get(&pid) {
            if named.is_none_or(|n| **known == *n) {
                return Arc::clone(known);
            }
        }
        let comm: Arc<str> = match named {
            Some(n) => Arc::from(n),
            None => std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| Arc::from(c.trim_end()))
                .unwrap_or_else(|_| Arc::from("")),
        };
        if self.comms.len() >= MAX_COMMS {
            self.comms.clear();
        }
        self.comms.insert(pid, Arc::clone(&comm));
        comm
    }

    /// Attribute connections to their container and pod.
    pub fn resolve_workloads(&mut self, resolver: WorkloadResolver) {
        self.workloads = Some(resolver);
    }

    /// Never parse connections of these processes (by `comm`).
    pub fn ignore_processes(&mut self, names: Vec<String>) {
        self.ignore_processes = names;
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// A connection that existed before the agent started.
    pub fn seed(&mut self, s: &ExistingSocket, now_ns: u64) {
        let comm = self.comm(s.pid, Some(&s.comm));
        let mut conn = Connection::new(Some(s.role), comm, true, now_ns).counted_from_start();
        conn.opened_ns = Some(0);
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
                let comm = self.comm(info.pid, Some(&info.comm));
                let conn = self
                    .conns
                    .entry(key)
                    .or_insert_with(|| Connection::new(info.role, comm, true, info.ts_ns));
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
                tid,
                g,
                fd,
                ts_ns,
                direction,
                tls,
                len,
                offsets,
                payload,
            } => {
                let chunk = Chunk {
                    tid,
                    g,
                    ts_ns,
                    direction,
                    len,
                    offsets,
                    lost_before: 0,
                    payload,
                };
                self.data(ConnKey { pid, fd }, tls, chunk, out)
            }
            // Handled by the TLS attachment, not by connections.
            Event::Exec { .. } => {}
        }
    }

    fn open(&mut self, info: SocketInfo, out: &mut ConnOutput) {
        let key = ConnKey {
            pid: info.pid,
            fd: info.fd,
        };
        let comm = self.comm(info.pid, Some(&info.comm));
        let mut conn = Connection::new(info.role, comm, false, info.ts_ns).counted_from_start();
        conn.opened_ns = Some(info.ts_ns);
        conn.remote = info.remote;
        conn.datagram = info.datagram;
        if let Some(old) = self.conns.remove(&key) {
            // The fd was reused without a close we saw.
            self.finish(key, old, info.ts_ns, out);
        }
        self.insert(key, conn, out);
    }

    fn insert(&mut self, key: ConnKey, mut conn: Connection, out: &mut ConnOutput) {
        if self.ignore_processes.iter().any(|p| **p == *conn.comm) {
            ignore(key, &mut conn, out);
        }
        if let Some(resolver) = &mut self.workloads {
            conn.workload = resolver.resolve(key.pid);
        }
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
                self.stats.swept += 1;
                self.finish(key, conn, now_ns, out);
            }
        }
    }

    fn finish(&mut self, key: ConnKey, mut conn: Connection, ts_ns: u64, out: &mut ConnOutput) {
        let follow = self.parsers.downstream;
        if let Stage::Parsing(parser) = &mut conn.stage {
            let produced = &mut self.parsers.scratch;
            parser.finish(ts_ns, produced);
            emit(
                &self.clock,
                &mut self.stats,
                key,
                &mut conn,
                produced,
                follow,
                out,
            );
        }
        // Calls of a request whose response never came.
        for (call, target, target_name) in conn.pending_calls.drain(..) {
            out.downstream.push(Record {
                call,
                target,
                target_name,
                attributed: Err(Unattributed::NoResponse),
            });
        }
        if !out.client_calls.is_empty() {
            let mut calls = std::mem::take(&mut out.client_calls);
            self.attribute(key.pid, conn.request_worker, conn.remote, &mut calls, out);
        }
        // Lost after the last exchange reported: counted, attributed to no session.
        self.stats.lost_exchanges += conn.lost.take();
    }

    fn data(&mut self, key: ConnKey, tls: bool, mut chunk: Chunk<'_>, out: &mut ConnOutput) {
        if !self.conns.contains_key(&key) {
            // Traced by the kernel but unknown here (seeded socket we lost, or evicted).
            let comm = self.comm(key.pid, None);
            self.insert(key, Connection::new(None, comm, true, chunk.ts_ns), out);
        }
        let follow = self.parsers.downstream;
        let (role, http, opened) = self.conns.get(&key).map_or((None, false, None), |c| {
            let http = !matches!(c.stage, Stage::Ignored | Stage::Downstream(_));
            (c.role, http, c.opened_ns)
        });
        let direction = chunk.direction;
        // Who reads a request or sends a downstream call: needed only then.
        let worker = match (follow, role, direction) {
            (true, Some(Role::Server), Direction::Ingress) if http => {
                let w = self.worker(key.pid, chunk.tid, chunk.g);
                self.note_request(key, opened, w, chunk.ts_ns);
                w
            }
            (true, Some(Role::Client), Direction::Egress) if self.servers.contains(&key.pid) => {
                self.worker(key.pid, chunk.tid, chunk.g)
            }
            _ => u64::from(chunk.tid),
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        conn.last_ns = chunk.ts_ns;
        match (follow, role, direction) {
            (true, Some(Role::Server), Direction::Ingress) if http => {
                conn.awaiting_response = true;
            }
            (_, Some(Role::Client), Direction::Egress) => conn.request_worker = worker,
            _ => {}
        }
        if tls && !conn.tls {
            // Plaintext from a TLS library: the syscall bytes were ciphertext; start over.
            // The kernel counts plaintext apart, from when it followed the socket.
            conn.tls = true;
            conn.stage = Stage::Detecting {
                pending: Vec::new(),
                buffered: 0,
                tries_left: MIDSTREAM_TRIES,
            };
            conn.next = match conn.opened_ns {
                Some(_) => [Some(0); 2],
                None => [None; 2],
            };
            conn.skip_until = [0; 2];
        }
        if conn.tls != tls {
            // Ciphertext of a connection whose plaintext we see through its TLS library.
            return;
        }
        if let Some(at) = chunk.offsets {
            let d = match chunk.direction {
                Direction::Ingress => 0,
                Direction::Egress => 1,
            };
            let client = conn
                .role
                .is_some_and(|r| side_of(r, chunk.direction) == Side::Client);
            let expected = conn.next[d].unwrap_or(at.own);
            if at.own > expected && !matches!(conn.stage, Stage::Ignored) {
                let gap = at.own - expected;
                chunk.lost_before = gap;
                // What the kernel was asked to count without copying is no loss.
                let skipped = conn.skip_until[d].saturating_sub(expected).min(gap);
                self.stats.skipped_bytes += skipped;
                let lost = gap - skipped;
                if lost > 0 {
                    self.stats.losses += 1;
                    self.stats.lost_bytes += lost;
                    if client {
                        // Requests lost whole, at this connection's mean request size.
                        let mean = (conn.client_bytes / conn.exchanges.max(1)).max(1);
                        conn.lost.estimated += if conn.exchanges == 0 {
                            1
                        } else {
                            lost.div_ceil(mean)
                        };
                    }
                }
            }
            if client {
                conn.client_bytes += chunk.len;
            }
            conn.next[d] = Some(expected.max(at.own + chunk.len));
        }
        self.parsers
            .feed(&mut self.stats, &self.clock, key, conn, chunk, out);
        if follow {
            if role == Some(Role::Server) && direction == Direction::Egress {
                conn.awaiting_response = false;
            }
            let (worker, remote) = (conn.request_worker, conn.remote);
            let protocol = match &conn.stage {
                Stage::Downstream(p) => Some(p.protocol()),
                _ => None,
            };
            for skip in self.parsers.calls.skips.drain(..) {
                if let Some(p) = protocol {
                    out.downstream_skips.push((p, skip));
                }
            }
            if !self.parsers.calls.calls.is_empty() || !out.client_calls.is_empty() {
                let mut calls = std::mem::take(&mut self.parsers.calls.calls);
                calls.append(&mut out.client_calls);
                self.attribute(key.pid, worker, remote, &mut calls, out);
                self.parsers.calls.calls = calls;
            }
        }
    }

    /// Who does the work of a call in process `pid`: its goroutine in a Go program (a
    /// goroutine moves between threads, and one thread runs many), else its thread.
    fn worker(&mut self, pid: u32, tid: u32, g: u64) -> u64 {
        if self.go.len() >= MAX_THREADS && !self.go.contains_key(&pid) {
            self.go.clear();
        }
        let go = *self.go.entry(pid).or_insert_with(|| is_go_program(pid));
        if go && g != 0 {
            g
        } else {
            u64::from(tid)
        }
    }

    /// Worker `tid` (a thread, or a Go program's goroutine) read bytes of connection
    /// `key`: if that is a server connection speaking HTTP, it now serves its request. A
    /// worker found reading a second connection while the request of the first still
    /// waits for its response serves several at once (an event loop): its calls cannot
    /// be attributed for a while.
    fn note_request(&mut self, key: ConnKey, opened: Option<u64>, tid: u64, now: u64) {
        let thread = (key.pid, tid);
        match self.threads.get_mut(&thread) {
            // Still the connection it served: nothing changes (the common case).
            Some(s) if s.conn == key && s.opened == opened => {}
            Some(s) => {
                if self
                    .conns
                    .get(&s.conn)
                    .is_some_and(|c| c.awaiting_response && c.opened_ns == s.opened)
                {
                    s.shared_until_ns = now.max(s.shared_until_ns) + SHARED_HOLD_NS;
                }
                s.conn = key;
                s.opened = opened;
            }
            None => {
                if self.threads.len() >= MAX_THREADS {
                    self.threads.clear();
                    self.servers.clear();
                }
                self.servers.insert(key.pid);
                self.threads.insert(
                    thread,
                    Serving {
                        conn: key,
                        opened,
                        shared_until_ns: 0,
                    },
                );
            }
        }
    }

    /// The server connection whose request thread (`pid`, `tid`) was serving at `ts_ns`.
    fn serving(&self, pid: u32, tid: u64, ts_ns: u64) -> Result<ConnKey, Unattributed> {
        let s = self
            .threads
            .get(&(pid, tid))
            .ok_or(Unattributed::NoRequest)?;
        if s.shared_until_ns > ts_ns {
            return Err(Unattributed::SharedThread);
        }
        match self.conns.get(&s.conn) {
            Some(c) if c.awaiting_response && c.opened_ns == s.opened => Ok(s.conn),
            _ => Err(Unattributed::NoRequest),
        }
    }

    /// Give each downstream call made by thread (`pid`, `tid`) to the request that thread
    /// is serving (it rides on that request's exchange), or report it unattributed.
    fn attribute(
        &mut self,
        pid: u32,
        tid: u64,
        remote: Option<SocketAddr>,
        calls: &mut Vec<Call>,
        out: &mut ConnOutput,
    ) {
        if !self.servers.contains(&pid) {
            // Not an API's process: its calls are nobody's downstream work.
            calls.clear();
            return;
        }
        for call in calls.drain(..) {
            if let (Some(name), false) = (&call.dns_name, call.answers.is_empty()) {
                if self.resolved.len() >= MAX_RESOLVED {
                    self.resolved.clear();
                }
                let name: Arc<str> = Arc::from(name.as_str());
                for ip in &call.answers {
                    self.resolved.insert((pid, *ip), Arc::clone(&name));
                }
            }
            let target_name = remote.and_then(|a| self.resolved.get(&(pid, a.ip())).cloned());
            let why = match self.serving(pid, tid, call.started_ns) {
                Ok(server) => match self.conns.get_mut(&server) {
                    Some(c) if c.pending_calls.len() < MAX_PENDING_CALLS => {
                        c.pending_calls.push((call, remote, target_name));
                        continue;
                    }
                    _ => Unattributed::Overflow,
                },
                Err(why) => why,
            };
            out.downstream.push(Record {
                call,
                target: remote,
                target_name,
                attributed: Err(why),
            });
        }
    }
}

/// Whether process `pid` runs a Go program (its executable has Go's build information
/// or function table). Only the section headers are read.
fn is_go_program(pid: u32) -> bool {
    use object::{Object as _, ReadCache};
    let Ok(file) = std::fs::File::open(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let cache = ReadCache::new(file);
    let Ok(obj) = object::File::parse(&cache) else {
        return false;
    };
    obj.section_by_name(".go.buildinfo").is_some() || obj.section_by_name(".gopclntab").is_some()
}

/// One read or write of a connection, as the table hands it on.
struct Chunk<'a> {
    /// The thread that made the call.
    tid: u32,
    /// Its user `R14` (a Go program's goroutine).
    g: u64,
    ts_ns: u64,
    direction: Direction,
    len: u64,
    offsets: Option<Offsets>,
    /// Bytes of this direction lost just before this chunk.
    lost_before: u64,
    payload: &'a [u8],
}

/// What feeding a connection needs besides the connection itself, kept apart from the
/// table so that a connection is fed in place in the map.
struct Parsers {
    limits: ParserLimits,
    allowlist: Arc<HeaderAllowlist>,
    /// Reused output buffer of the parsers.
    scratch: ParserOutput,
    /// Whether downstream protocols are parsed.
    downstream: bool,
    /// Reused output buffer of the downstream parsers.
    calls: downstream::Output,
}

/// Which peer sent bytes moving in `direction` on a connection where the traced process
/// has `role`.
fn side_of(role: Role, direction: Direction) -> Side {
    match (role, direction) {
        (Role::Server, Direction::Ingress) | (Role::Client, Direction::Egress) => Side::Client,
        _ => Side::Server,
    }
}

impl Parsers {
    fn feed(
        &mut self,
        stats: &mut ConnStats,
        clock: &Clock,
        key: ConnKey,
        conn: &mut Connection,
        chunk: Chunk<'_>,
        out: &mut ConnOutput,
    ) {
        let Chunk {
            tid: _,
            g: _,
            ts_ns,
            direction,
            len,
            offsets,
            lost_before,
            payload,
        } = chunk;
        if self.downstream
            && conn.role == Some(Role::Client)
            && matches!(conn.stage, Stage::Detecting { .. })
        {
            // A client connection: a database, a cache or DNS, else maybe HTTP.
            let side = side_of(Role::Client, direction);
            let port = conn.remote.map_or(0, |a| a.port());
            match downstream::detect(side, payload, port, conn.datagram)
                .and_then(|p| downstream::parser(p, conn.datagram))
            {
                Some(parser) => conn.stage = Stage::Downstream(parser),
                None if conn.datagram => {
                    stats.unknown_protocol += 1;
                    ignore(key, conn, out);
                    return;
                }
                None => {}
            }
        }
        if let Stage::Downstream(parser) = &mut conn.stage {
            let segment = downstream::Segment {
                ts_ns,
                data: payload,
                len,
                lost_before,
            };
            parser.feed(side_of(Role::Client, direction), segment, &mut self.calls);
            return;
        }
        if let Stage::Detecting {
            pending,
            buffered,
            tries_left,
        } = &mut conn.stage
        {
            if lost_before > 0 {
                // What was held may not be the stream's start any more: look for a
                // message start from here, as for a connection joined under way.
                pending.clear();
                *buffered = 0;
                *tries_left = (*tries_left).max(MIDSTREAM_TRIES);
            }
            // Which side is the client: known from accept/connect, else the side whose
            // first bytes look like a request.
            let candidate_role = match direction {
                Direction::Ingress => Role::Server,
                Direction::Egress => Role::Client,
            };
            let side = conn
                .role
                .map(|role| side_of(role, direction))
                .unwrap_or(Side::Client);
            if side == Side::Server {
                // A server does not speak first in HTTP/1; a response seen mid-stream is
                // of no use without its request.
                return;
            }
            if *tries_left > 1 && conn.role.is_some() && h2::frames_tile(payload, len) {
                // Joined an HTTP/2 connection under way: whole frames from the client.
                let mut parser = Box::new(h2::Http2Parser::midstream(
                    self.limits.clone(),
                    Arc::clone(&self.allowlist),
                ));
                self.scratch.issues.push(ParseIssue::MidstreamJoin);
                parser.feed(
                    side,
                    Segment {
                        ts_ns,
                        data: payload,
                        len,
                        at: offsets,
                        lost_before: 0,
                    },
                    &mut self.scratch,
                );
                conn.stage = Stage::Parsing(parser);
                emit(
                    clock,
                    stats,
                    key,
                    conn,
                    &mut self.scratch,
                    self.downstream,
                    out,
                );
                return;
            }
            // The first bytes of the client's stream: this segment alone in the common
            // case, else what is pending before it.
            let joined: Vec<u8>;
            let probe: &[u8] = if pending.is_empty() {
                &payload[..payload.len().min(DETECT_BYTES)]
            } else {
                joined = pending
                    .iter()
                    .flat_map(|h| h.data.iter().copied())
                    .chain(payload.iter().copied())
                    .take(DETECT_BYTES)
                    .collect();
                &joined
            };
            match http::detect(probe) {
                Detection::NeedMore
                    if *buffered + payload.len() < DETECT_BYTES && payload.len() as u64 == len =>
                {
                    *buffered += payload.len();
                    pending.push(Held {
                        side,
                        ts_ns,
                        data: payload.to_vec(),
                        len,
                        at: offsets,
                    });
                    return;
                }
                detection @ (Detection::Http1 | Detection::Http2) => {
                    match http::parser_for(detection, &self.limits, &self.allowlist) {
                        Some(mut parser) => {
                            if conn.role.is_none() {
                                conn.role = Some(candidate_role);
                            }
                            for held in pending.drain(..) {
                                let segment = Segment {
                                    ts_ns: held.ts_ns,
                                    data: &held.data,
                                    len: held.len,
                                    at: held.at,
                                    lost_before: 0,
                                };
                                parser.feed(held.side, segment, &mut self.scratch);
                            }
                            conn.stage = Stage::Parsing(parser);
                        }
                        None => {
                            stats.unknown_protocol += 1;
                            ignore(key, conn, out);
                            return;
                        }
                    }
                }
                _ => {
                    pending.clear();
                    *buffered = 0;
                    *tries_left = tries_left.saturating_sub(1);
                    if *tries_left == 0 {
                        stats.unknown_protocol += 1;
                        ignore(key, conn, out);
                    }
                    return;
                }
            }
        }
        let Stage::Parsing(parser) = &mut conn.stage else {
            return;
        };
        let side = side_of(conn.role.unwrap_or(Role::Server), direction);
        let segment = Segment {
            ts_ns,
            data: payload,
            len,
            at: offsets,
            lost_before,
        };
        parser.feed(side, segment, &mut self.scratch);
        if let Some(upgrade) = self.scratch.h2c.take() {
            // `Upgrade: h2c` accepted: the rest of the connection is HTTP/2, and the
            // upgraded request is its stream 1.
            let mut parser = Box::new(h2::Http2Parser::upgraded(
                self.limits.clone(),
                Arc::clone(&self.allowlist),
                upgrade.request,
            ));
            let offset = upgrade.offset.min(payload.len());
            let rest = Segment {
                ts_ns,
                data: &payload[offset..],
                len: len.saturating_sub(offset as u64),
                at: offsets.map(|a| Offsets {
                    own: a.own + offset as u64,
                    peer: a.peer,
                }),
                lost_before: 0,
            };
            if rest.len > 0 {
                parser.feed(side, rest, &mut self.scratch);
            }
            conn.stage = Stage::Parsing(parser);
        } else if self.scratch.issues.contains(&ParseIssue::Upgraded) {
            ignore(key, conn, out);
        }
        emit(
            clock,
            stats,
            key,
            conn,
            &mut self.scratch,
            self.downstream,
            out,
        );
    }
}

/// Move what a parser produced to `out`, turning paired heads into [`Exchange`]s. Lost
/// exchanges ride on the connection's next reported one (the same client, as a rule),
/// so that its session knows what it did not see.
fn emit(
    clock: &Clock,
    stats: &mut ConnStats,
    key: ConnKey,
    conn: &mut Connection,
    produced: &mut ParserOutput,
    downstream: bool,
    out: &mut ConnOutput,
) {
    out.issues.append(&mut produced.issues);
    conn.lost.proven += u64::from(std::mem::take(&mut produced.lost_exchanges));
    for (side, until) in produced.skips.drain(..) {
        let (Some(role), Some(opened_ns)) = (conn.role, conn.opened_ns) else {
            continue;
        };
        // The direction of `side`'s bytes for this end's process.
        let d = if side_of(role, Direction::Ingress) == side {
            DIR_INGRESS
        } else {
            DIR_EGRESS
        };
        let source = if conn.tls { SOURCE_TLS } else { SOURCE_SYSCALL };
        conn.skip_until[d as usize] = conn.skip_until[d as usize].max(until);
        out.skips.push(Skip {
            pid: key.pid,
            fd: key.fd,
            opened_ns,
            index: offset_index(source, d),
            until,
        });
    }
    for parsed in produced.exchanges.drain(..) {
        conn.exchanges += 1;
        let (request_ns, response_ns) = (parsed.request_start_ns, parsed.response_ns);
        let mut ex = exchange(clock, key, conn, parsed);
        if downstream {
            match ex.role {
                Role::Server if !conn.pending_calls.is_empty() => {
                    ex.downstream = attach_calls(conn, request_ns, out);
                }
                Role::Client => out
                    .client_calls
                    .push(http_call(&ex, request_ns, response_ns)),
                Role::Server => {}
            }
        }
        let lost = conn.lost.take();
        stats.lost_exchanges += lost;
        ex.lost_before = u32::try_from(lost).unwrap_or(u32::MAX);
        out.exchanges.push(ex);
    }
}

/// The calls made for the request that started at `request_ns`, as its summary; calls
/// from before it (the thread's work between requests) are reported unattributed.
fn attach_calls(
    conn: &mut Connection,
    request_ns: u64,
    out: &mut ConnOutput,
) -> Option<Box<Summary>> {
    let mut summary = Summary::default();
    for (call, target, target_name) in conn.pending_calls.drain(..) {
        let attributed = if call.started_ns >= request_ns {
            summary.add(&call);
            Ok(())
        } else {
            Err(Unattributed::NoRequest)
        };
        out.downstream.push(Record {
            call,
            target,
            target_name,
            attributed,
        });
    }
    (!summary.is_empty()).then(|| Box::new(summary))
}

/// An HTTP call this host made, as a downstream call of the request it serves.
fn http_call(ex: &Exchange, request_ns: u64, response_ns: u64) -> Call {
    let error = match ex.outcome() {
        401 => Some(ErrorClass::Auth),
        403 => Some(ErrorClass::Permission),
        404 => Some(ErrorClass::NotFound),
        s if s >= 500 => Some(ErrorClass::Server),
        _ => None,
    };
    Call {
        protocol: downstream::Protocol::Http,
        operation: ex.method.clone(),
        fingerprint: Some(format!("{} {}", ex.method, ex.route.path)),
        dns_name: None,
        answers: Vec::new(),
        started_ns: request_ns,
        ended_ns: response_ns,
        error,
    }
}

fn exchange(clock: &Clock, key: ConnKey, conn: &Connection, p: ParsedExchange) -> Exchange {
    let role = conn.role.unwrap_or(Role::Server);
    let local = conn.local.unwrap_or(UNKNOWN_ADDR);
    let remote = conn.remote.unwrap_or(UNKNOWN_ADDR);
    let (client, server) = match role {
        Role::Server => (remote, local),
        Role::Client => (local, remote),
    };
    let (path, query) = split_target(&p.target);
    let route = match p.grpc {
        Some(_) => RouteTemplate::grpc(&p.method, &path),
        None => RouteTemplate::of(&p.method, &path),
    };
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
        route,
        status: p.status,
        request_headers: p.request_headers,
        started_at: clock.wall(p.request_start_ns),
        latency: Duration::from_nanos(p.response_ns.saturating_sub(p.request_end_ns)),
        request_body_bytes: p.request_body_bytes,
        response_body_bytes: p.response_body_bytes,
        grpc: p.grpc,
        workload: Arc::clone(&conn.workload),
        lost_before: 0,
        downstream: None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    const PID: u32 = 100;

    fn table(max: usize) -> ConnTable {
        ConnTable::new(
            ParserLimits::default(),
            HeaderAllowlist::default(),
            max,
            Clock::fixed(0, SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)),
        )
    }

    fn info(fd: u32, role: Option<Role>, local: Option<&str>, remote: Option<&str>) -> SocketInfo {
        SocketInfo {
            pid: PID,
            fd,
            ts_ns: 1,
            role,
            local: local.map(|a| a.parse().unwrap()),
            remote: remote.map(|a| a.parse().unwrap()),
            comm: "srv".into(),
            datagram: false,
        }
    }

    fn data(
        t: &mut ConnTable,
        fd: u32,
        ts_ns: u64,
        direction: Direction,
        bytes: &[u8],
        out: &mut ConnOutput,
    ) {
        data_on(t, fd, PID, ts_ns, direction, bytes, out);
    }

    const REQ: &[u8] = b"GET /a?k=v HTTP/1.1\r\nHost: x\r\nUser-Agent: t/1\r\n\r\n";
    const RESP: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    #[test]
    fn accepted_connection_yields_server_exchange_with_addresses() {
        let mut t = table(16);
        let mut out = ConnOutput::default();
        t.on_event(
            Event::Accept(info(5, Some(Role::Server), None, Some("10.0.0.9:4000"))),
            &mut out,
        );
        t.on_event(
            Event::Addresses(info(
                5,
                Some(Role::Server),
                Some("10.0.0.1:80"),
                Some("10.0.0.9:4000"),
            )),
            &mut out,
        );
        data(&mut t, 5, 1_000, Direction::Ingress, REQ, &mut out);
        data(&mut t, 5, 3_000_000, Direction::Egress, RESP, &mut out);
        assert_eq!(out.exchanges.len(), 1, "{out:?}");
        let ex = &out.exchanges[0];
        assert_eq!(ex.role, Role::Server);
        assert_eq!(ex.client, "10.0.0.9:4000".parse().unwrap());
        assert_eq!(ex.server, "10.0.0.1:80".parse().unwrap());
        assert_eq!(
            (ex.method.as_str(), ex.path.as_str(), ex.status),
            ("GET", "/a", 200)
        );
        assert_eq!(ex.query.as_deref(), Some("k=v"));
        assert_eq!(ex.header("user-agent"), Some("t/1"));
        assert_eq!(ex.latency, Duration::from_nanos(3_000_000 - 1_000));
        assert_eq!(
            ex.started_at,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000) + Duration::from_nanos(1_000)
        );
        assert_eq!(&*ex.comm, "srv");
    }

    #[test]
    fn connected_socket_is_the_client_side() {
        let mut t = table(16);
        let mut out = ConnOutput::default();
        t.on_event(
            Event::Connect(info(6, Some(Role::Client), None, Some("[::1]:8080"))),
            &mut out,
        );
        data(&mut t, 6, 10, Direction::Egress, REQ, &mut out);
        t.on_event(
            Event::Addresses(info(
                6,
                Some(Role::Client),
                Some("[::1]:5555"),
                Some("[::1]:8080"),
            )),
            &mut out,
        );
        data(&mut t, 6, 20, Direction::Ingress, RESP, &mut out);
        assert_eq!(out.exchanges.len(), 1);
        let ex = &out.exchanges[0];
        assert_eq!(ex.role, Role::Client);
        assert_eq!(ex.client, "[::1]:5555".parse().unwrap());
        assert_eq!(ex.server, "[::1]:8080".parse().unwrap());
    }

    #[test]
    fn role_is_inferred_for_unknown_sockets_and_midstream_bytes_are_skipped() {
        let mut t = table(16);
        let mut out = ConnOutput::default();
        // A socket the kernel traces but the table never heard of: its first bytes are
        // the tail of a body, then a response, then a real request/response.
        data(
            &mut t,
            7,
            1,
            Direction::Ingress,
            b"tail of some body",
            &mut out,
        );
        data(&mut t, 7, 2, Direction::Egress, RESP, &mut out);
        data(&mut t, 7, 3, Direction::Egress, REQ, &mut out);
        data(&mut t, 7, 4, Direction::Ingress, RESP, &mut out);
        assert_eq!(out.exchanges.len(), 1, "{out:?}");
        assert_eq!(out.exchanges[0].role, Role::Client);
        assert_eq!(out.exchanges[0].client, UNKNOWN_ADDR);
    }

    #[test]
    fn request_split_before_detection_is_kept() {
        let mut t = table(16);
        let mut out = ConnOutput::default();
        t.on_event(
            Event::Accept(info(8, Some(Role::Server), None, None)),
            &mut out,
        );
        data(&mut t, 8, 1, Direction::Ingress, &REQ[..2], &mut out);
        data(&mut t, 8, 2, Direction::Ingress, &REQ[2..9], &mut out);
        data(&mut t, 8, 3, Direction::Ingress, &REQ[9..], &mut out);
        data(&mut t, 8, 4, Direction::Egress, RESP, &mut out);
        assert_eq!(out.exchanges.len(), 1, "{out:?}");
        assert_eq!(out.exchanges[0].path, "/a");
    }

    #[test]
    fn non_http_connection_is_ignored() {
        let mut t = table(16);
        let mut out = ConnOutput::default();
        t.on_event(
            Event::Accept(info(9, Some(Role::Server), None, None)),
            &mut out,
        );
        data(
            &mut t,
            9,
            1,
            Direction::Ingress,
            &[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5],
            &mut out,
        );
        data(&mut t, 9, 2, Direction::Ingress, REQ, &mut out);
        data(&mut t, 9, 3, Direction::Egress, RESP, &mut out);
        assert!(out.exchanges.is_empty());
        assert_eq!(t.stats.unknown_protocol, 1);
        // the kernel is told, with the socket's open time to tell it from a later one
        assert_eq!(out.unfollow, [(PID, 9, 1)]);
    }

    #[test]
    fn unfollowing_needs_the_sockets_open_time() {
        let mut t = table(16);
        let mut out = ConnOutput::default();
        // a socket whose accept was not seen: no way to tell it from a later one
        data(
            &mut t,
            30,
            1,
            Direction::Ingress,
            b"\x00\x01binary",
            &mut out,
        );
        for i in 0..MIDSTREAM_TRIES as u64 {
            data(
                &mut t,
                30,
                2 + i,
                Direction::Ingress,
                b"\x00\x01more",
                &mut out,
            );
        }
        assert_eq!(t.stats.unknown_protocol, 1);
        assert!(out.unfollow.is_empty(), "{:?}", out.unfollow);
        // a websocket upgrade is a tunnel: no longer followed
        t.on_event(
            Event::Accept(info(31, Some(Role::Server), None, None)),
            &mut out,
        );
        data(
            &mut t,
            31,
            5,
            Direction::Ingress,
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            &mut out,
        );
        data(
            &mut t,
            31,
            6,
            Direction::Egress,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            &mut out,
        );
        assert_eq!(out.exchanges.len(), 1);
        assert_eq!(out.unfollow, [(PID, 31, 1)]);
    }

    #[test]
    fn tls_plaintext_replaces_ciphertext() {
        let mut t = table(16);
        let mut out = ConnOutput::default();
        t.on_event(
            Event::Accept(info(10, Some(Role::Server), None, None)),
            &mut out,
        );
        data(
            &mut t,
            10,
            1,
            Direction::Ingress,
            &[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5],
            &mut out,
        );
        for (ts, dir, bytes) in [(2, Direction::Ingress, REQ), (3, Direction::Egress, RESP)] {
            t.on_event(
                Event::Data {
                    pid: PID,
                    tid: PID,
                    g: 0,
                    fd: 10,
                    ts_ns: ts,
                    direction: dir,
                    tls: true,
                    len: bytes.len() as u64,
                    offsets: None,
                    payload: bytes,
                },
                &mut out,
            );
            // the ciphertext of the same call, seen by the syscall hooks
            data(&mut t, 10, ts, dir, &[0x17, 3, 3, 0, 1, 0xff], &mut out);
        }
        assert_eq!(out.exchanges.len(), 1, "{out:?}");
        assert!(out.exchanges[0].tls);
    }

    #[test]
    fn close_and_fd_reuse_start_fresh() {
        let mut t = table(16);
        let mut out = ConnOutput::default();
        t.on_event(
            Event::Accept(info(11, Some(Role::Server), None, Some("10.0.0.2:1"))),
            &mut out,
        );
        data(&mut t, 11, 1, Direction::Ingress, REQ, &mut out);
        // fd reused without a close: the pending request is reported unanswered
        t.on_event(
            Event::Accept(info(11, Some(Role::Server), None, Some("10.0.0.3:2"))),
            &mut out,
        );
        assert!(out.issues.contains(&ParseIssue::Unanswered), "{out:?}");
        data(&mut t, 11, 2, Direction::Ingress, REQ, &mut out);
        data(&mut t, 11, 3, Direction::Egress, RESP, &mut out);
        assert_eq!(out.exchanges.len(), 1);
        assert_eq!(out.exchanges[0].client, "10.0.0.3:2".parse().unwrap());
        t.on_event(
            Event::Close {
                pid: PID,
                fd: 11,
                ts_ns: 4,
            },
            &mut out,
        );
        assert!(t.is_empty());
    }

    #[test]
    fn ignored_processes_are_not_parsed() {
        let mut t = table(16);
        t.ignore_processes(vec!["srv".into()]);
        let mut out = ConnOutput::default();
        t.on_event(
            Event::Accept(info(12, Some(Role::Server), None, None)),
            &mut out,
        );
        data(&mut t, 12, 1, Direction::Ingress, REQ, &mut out);
        data(&mut t, 12, 2, Direction::Egress, RESP, &mut out);
        assert!(out.exchanges.is_empty());
        assert_eq!(out.unfollow, [(PID, 12, 1)]);
    }

    #[test]
    fn http2_prior_knowledge_connection() {
        use crate::http::h2::tests::{frame, get, indexed};
        let mut t = table(16);
        let mut out = ConnOutput::default();
        t.on_event(
            Event::Accept(info(13, Some(Role::Server), None, Some("10.0.0.9:4000"))),
            &mut out,
        );
        // the server's SETTINGS may come before the client's preface
        data(
            &mut t,
            13,
            1,
            Direction::Egress,
            &frame(4, 0, 0, &[]),
            &mut out,
        );
        let mut client = h2::PREFACE.to_vec();
        client.extend(frame(4, 0, 0, &[]));
        client.extend(frame(1, 0x5, 1, &get("/v2/items")));
        // the preface split before detection
        data(&mut t, 13, 2, Direction::Ingress, &client[..10], &mut out);
        data(&mut t, 13, 3, Direction::Ingress, &client[10..], &mut out);
        data(
            &mut t,
            13,
            4,
            Direction::Egress,
            &frame(1, 0x5, 1, &indexed(8)),
            &mut out,
        );
        assert_eq!(out.exchanges.len(), 1, "{out:?}");
        let ex = &out.exchanges[0];
        assert_eq!(ex.protocol, crate::http::Protocol::Http2);
        assert_eq!(
            (ex.method.as_str(), ex.path.as_str(), ex.status),
            ("GET", "/v2/items", 200)
        );
        assert_eq!(ex.client, "10.0.0.9:4000".parse().unwrap());
        assert_eq!(ex.header("host"), Some("api.test"));
        assert_eq!(ex.route.path, "/v2/items");
    }

    #[test]
    fn http2_connection_open_before_the_agent_is_joined_at_a_frame_boundary() {
        use crate::http::h2::tests::{block, frame, indexed, lit};
        let mut t = table(16);
        let mut out = ConnOutput::default();
        t.seed(
            &ExistingSocket {
                pid: PID,
                fd: 14,
                comm: "srv".into(),
                role: Role::Server,
                local: "10.0.0.1:443".parse().unwrap(),
                remote: "10.0.0.7:5000".parse().unwrap(),
            },
            0,
        );
        // the tail of a DATA frame, then whole frames
        data(&mut t, 14, 1, Direction::Ingress, &[1, 2, 3], &mut out);
        let request = block(&[indexed(3), indexed(70), lit(":path", "/later")]);
        data(
            &mut t,
            14,
            2,
            Direction::Ingress,
            &frame(1, 0x5, 99, &request),
            &mut out,
        );
        data(
            &mut t,
            14,
            3,
            Direction::Egress,
            &frame(1, 0x5, 99, &indexed(8)),
            &mut out,
        );
        assert_eq!(out.exchanges.len(), 1, "{out:?}");
        assert_eq!(out.exchanges[0].path, "/later");
        assert_eq!(out.exchanges[0].method, "POST");
        assert!(out.issues.contains(&ParseIssue::MidstreamJoin));
        assert!(out.issues.contains(&ParseIssue::HpackUnknown));
    }

    #[test]
    fn h2c_upgrade_continues_as_http2() {
        use crate::http::h2::tests::{frame, get, indexed};
        let mut t = table(16);
        let mut out = ConnOutput::default();
        t.on_event(
            Event::Accept(info(15, Some(Role::Server), None, Some("10.0.0.9:4001"))),
            &mut out,
        );
        let upgrade = b"GET /first HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n";
        data(&mut t, 15, 1, Direction::Ingress, upgrade, &mut out);
        // the 101, the server's SETTINGS and the response on stream 1 in one write
        let mut server =
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                .to_vec();
        server.extend(frame(4, 0, 0, &[]));
        server.extend(frame(1, 0x4, 1, &indexed(8)));
        server.extend(frame(0, 0x1, 1, b"abc"));
        data(&mut t, 15, 2, Direction::Egress, &server, &mut out);
        let mut client = h2::PREFACE.to_vec();
        client.extend(frame(4, 0, 0, &[]));
        client.extend(frame(1, 0x5, 3, &get("/second")));
        data(&mut t, 15, 3, Direction::Ingress, &client, &mut out);
        data(
            &mut t,
            15,
            4,
            Direction::Egress,
            &frame(1, 0x5, 3, &indexed(13)),
            &mut out,
        );
        let rows: Vec<_> = out
            .exchanges
            .iter()
            .map(|e| (e.protocol, e.path.as_str(), e.status, e.response_body_bytes))
            .collect();
        use crate::http::Protocol::Http2;
        assert_eq!(
            rows,
            [
                (Http2, "/first", 200, Some(3)),
                (Http2, "/second", 404, Some(0))
            ],
            "{out:?}"
        );
        assert!(out.issues.is_empty(), "{:?}", out.issues);
    }

    #[test]
    fn unknown_sockets_take_the_process_name_the_kernel_gave() {
        let mut t = table(16);
        let mut out = ConnOutput::default();
        t.on_event(
            Event::Accept(info(41, Some(Role::Server), None, None)),
            &mut out,
        );
        // fd 42 of the same process was never seen opening: its name is not read from
        // /proc (where pid 100 is some other process, or none), it is the one known
        data(&mut t, 42, 1, Direction::Ingress, REQ, &mut out);
        data(&mut t, 42, 2, Direction::Egress, RESP, &mut out);
        assert_eq!(out.exchanges.len(), 1, "{out:?}");
        assert_eq!(&*out.exchanges[0].comm, "srv");
        // one shared name for the process
        assert_eq!(t.comms.len(), 1);
    }

    /// Kernel records of one keep-alive connection, stamped with the kernel's byte counts
    /// as `emit_data` stamps them, some never delivered (a full ring buffer).
    #[test]
    fn lost_records_are_found_where_they_happened() {
        use crate::capture::decode::{decode, tests::data_record_at};
        use observer_common::{DIR_EGRESS, DIR_INGRESS};

        let mut t = table(16);
        let mut out = ConnOutput::default();
        t.on_event(
            Event::Accept(info(9, Some(Role::Server), None, Some("10.0.0.9:4000"))),
            &mut out,
        );
        let mut sent = [0u64; 2];
        let mut ts = 10;
        let mut call =
            |t: &mut ConnTable, dir: u32, bytes: &[u8], lost: bool, out: &mut ConnOutput| {
                let d = dir as usize;
                let record = data_record_at(dir, bytes, ts, 9, sent[d], sent[1 - d]);
                sent[d] += bytes.len() as u64;
                ts += 10;
                if !lost {
                    t.on_event(decode(&record).unwrap(), out);
                }
            };
        for i in 0..6u16 {
            let req = format!("GET /r/{i} HTTP/1.1\r\nHost: x\r\n\r\n");
            let resp = format!("HTTP/1.1 {} OK\r\nContent-Length: 0\r\n\r\n", 200 + i);
            // The answer to request 1 and the request 4 itself never reach the agent.
            call(&mut t, DIR_INGRESS, req.as_bytes(), i == 4, &mut out);
            call(&mut t, DIR_EGRESS, resp.as_bytes(), i == 1, &mut out);
        }
        let seen: Vec<(String, u16, u32)> = out
            .exchanges
            .iter()
            .map(|e| (e.path.clone(), e.status, e.lost_before))
            .collect();
        assert_eq!(
            seen,
            [
                ("/r/0".into(), 200, 0),
                ("/r/2".into(), 202, 1),
                ("/r/3".into(), 203, 0),
                ("/r/5".into(), 205, 1),
            ]
        );
        assert_eq!((t.stats.losses, t.stats.lost_exchanges), (2, 2));
        let lost_bytes = "HTTP/1.1 201 OK\r\nContent-Length: 0\r\n\r\n".len()
            + "GET /r/4 HTTP/1.1\r\nHost: x\r\n\r\n".len();
        assert_eq!(t.stats.lost_bytes, lost_bytes as u64);
        assert!(!out.issues.contains(&ParseIssue::UnpairedResponse));
    }

    /// A long body is ordered skipped; the bytes the kernel then counts without sending
    /// are not a loss.
    #[test]
    fn skipped_bodies_are_ordered_and_not_lost() {
        use crate::capture::decode::{decode, tests::data_record_at};
        use observer_common::{DIR_EGRESS, DIR_INGRESS};

        let mut t = table(16);
        let mut out = ConnOutput::default();
        t.on_event(
            Event::Accept(info(9, Some(Role::Server), None, Some("10.0.0.9:4000"))),
            &mut out,
        );
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n";
        let req = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n";
        let feed = |t: &mut ConnTable, dir, bytes: &[u8], own, peer, out: &mut ConnOutput| {
            t.on_event(
                decode(&data_record_at(dir, bytes, 5, 9, own, peer)).unwrap(),
                out,
            );
        };
        feed(&mut t, DIR_INGRESS, req, 0, 0, &mut out);
        feed(&mut t, DIR_EGRESS, head, 0, req.len() as u64, &mut out);
        assert_eq!(
            out.skips,
            [Skip {
                pid: PID,
                fd: 9,
                opened_ns: 1,
                index: offset_index(SOURCE_SYSCALL, DIR_EGRESS),
                until: head.len() as u64 + 200_000,
            }]
        );
        // The whole body was counted by the kernel, never sent; the next exchange follows.
        let next = req.len() as u64;
        feed(
            &mut t,
            DIR_INGRESS,
            req,
            next,
            head.len() as u64 + 200_000,
            &mut out,
        );
        feed(
            &mut t,
            DIR_EGRESS,
            RESP,
            head.len() as u64 + 200_000,
            2 * next,
            &mut out,
        );
        assert_eq!(out.exchanges.len(), 2, "{out:?}");
        assert_eq!(out.exchanges[0].response_body_bytes, Some(200_000));
        assert_eq!((t.stats.skipped_bytes, t.stats.losses), (200_000, 0));
        assert!(out.issues.is_empty(), "{:?}", out.issues);
    }

    #[test]
    fn table_is_bounded() {
        let mut t = table(8);
        let mut out = ConnOutput::default();
        for fd in 0..100 {
            t.on_event(
                Event::Accept(info(fd, Some(Role::Server), None, None)),
                &mut out,
            );
        }
        assert!(t.len() <= 8);
        assert!(t.stats.evicted >= 92);
        t.sweep(u64::MAX, Duration::from_secs(1), &mut out);
        assert!(t.is_empty());
    }

    fn data_on(
        t: &mut ConnTable,
        fd: u32,
        tid: u32,
        ts_ns: u64,
        direction: Direction,
        bytes: &[u8],
        out: &mut ConnOutput,
    ) {
        t.on_event(
            Event::Data {
                pid: PID,
                tid,
                g: 0,
                fd,
                ts_ns,
                direction,
                tls: false,
                len: bytes.len() as u64,
                offsets: None,
                payload: bytes,
            },
            out,
        );
    }

    /// A server connection on `fd` and a client connection on `fd + 1` to `upstream`.
    fn server_and_client(t: &mut ConnTable, fd: u32, upstream: &str, out: &mut ConnOutput) {
        t.on_event(
            Event::Accept(info(fd, Some(Role::Server), None, Some("10.0.0.9:4000"))),
            out,
        );
        t.on_event(
            Event::Connect(info(fd + 1, Some(Role::Client), None, Some(upstream))),
            out,
        );
    }

    const UP_REQ: &[u8] = b"GET /users/42 HTTP/1.1\r\nHost: up\r\n\r\n";

    #[test]
    fn a_call_made_while_serving_a_request_rides_on_its_exchange() {
        let mut t = table(16);
        t.follow_downstream(true);
        let mut out = ConnOutput::default();
        server_and_client(&mut t, 5, "10.1.0.1:80", &mut out);
        data_on(&mut t, 5, 7, 10, Direction::Ingress, REQ, &mut out);
        data_on(&mut t, 6, 7, 20, Direction::Egress, UP_REQ, &mut out);
        data_on(&mut t, 6, 7, 30, Direction::Ingress, RESP, &mut out);
        assert!(
            out.downstream.is_empty(),
            "held until the request is answered"
        );
        data_on(&mut t, 5, 7, 40, Direction::Egress, RESP, &mut out);
        let server = out
            .exchanges
            .iter()
            .find(|e| e.role == Role::Server)
            .expect("server exchange");
        let work = server.downstream.as_deref().expect("downstream work");
        assert_eq!(work.calls[downstream::Protocol::Http.index()], 1);
        assert_eq!(
            work.fingerprints,
            vec![(downstream::Protocol::Http, "GET /users/{id}".to_string())]
        );
        assert_eq!(out.downstream.len(), 1);
        let r = &out.downstream[0];
        assert_eq!(r.attributed, Ok(()));
        assert_eq!(r.target, Some("10.1.0.1:80".parse().unwrap()));
        assert_eq!((r.call.started_ns, r.call.ended_ns), (20, 30));
    }

    #[test]
    fn calls_of_a_thread_serving_no_request_are_unattributed() {
        let mut t = table(16);
        t.follow_downstream(true);
        let mut out = ConnOutput::default();
        server_and_client(&mut t, 5, "10.1.0.1:80", &mut out);
        // Thread 7 serves the request; thread 8 calls upstream on its own.
        data_on(&mut t, 5, 7, 10, Direction::Ingress, REQ, &mut out);
        data_on(&mut t, 6, 8, 20, Direction::Egress, UP_REQ, &mut out);
        data_on(&mut t, 6, 8, 30, Direction::Ingress, RESP, &mut out);
        data_on(&mut t, 5, 7, 40, Direction::Egress, RESP, &mut out);
        assert_eq!(out.downstream.len(), 1);
        assert_eq!(out.downstream[0].attributed, Err(Unattributed::NoRequest));
        let server = out.exchanges.iter().find(|e| e.role == Role::Server);
        assert!(server.is_some_and(|e| e.downstream.is_none()));
        // After the response, the same thread's call serves no request either.
        out = ConnOutput::default();
        data_on(&mut t, 6, 7, 50, Direction::Egress, UP_REQ, &mut out);
        data_on(&mut t, 6, 7, 60, Direction::Ingress, RESP, &mut out);
        assert_eq!(out.downstream.len(), 1);
        assert_eq!(out.downstream[0].attributed, Err(Unattributed::NoRequest));
    }

    #[test]
    fn a_thread_serving_two_requests_at_once_is_not_guessed() {
        let mut t = table(16);
        t.follow_downstream(true);
        let mut out = ConnOutput::default();
        server_and_client(&mut t, 5, "10.1.0.1:80", &mut out);
        t.on_event(
            Event::Accept(info(9, Some(Role::Server), None, Some("10.0.0.8:4000"))),
            &mut out,
        );
        // An event loop: thread 7 reads two requests before answering either.
        data_on(&mut t, 5, 7, 10, Direction::Ingress, REQ, &mut out);
        data_on(&mut t, 9, 7, 11, Direction::Ingress, REQ, &mut out);
        data_on(&mut t, 6, 7, 20, Direction::Egress, UP_REQ, &mut out);
        data_on(&mut t, 6, 7, 30, Direction::Ingress, RESP, &mut out);
        data_on(&mut t, 5, 7, 40, Direction::Egress, RESP, &mut out);
        data_on(&mut t, 9, 7, 41, Direction::Egress, RESP, &mut out);
        assert_eq!(out.downstream.len(), 1);
        assert_eq!(
            out.downstream[0].attributed,
            Err(Unattributed::SharedThread)
        );
        assert!(out
            .exchanges
            .iter()
            .filter(|e| e.role == Role::Server)
            .all(|e| e.downstream.is_none()));
    }

    #[test]
    fn downstream_off_attributes_nothing() {
        let mut t = table(16);
        let mut out = ConnOutput::default();
        server_and_client(&mut t, 5, "10.1.0.1:80", &mut out);
        data_on(&mut t, 5, 7, 10, Direction::Ingress, REQ, &mut out);
        data_on(&mut t, 6, 7, 20, Direction::Egress, UP_REQ, &mut out);
        data_on(&mut t, 6, 7, 30, Direction::Ingress, RESP, &mut out);
        data_on(&mut t, 5, 7, 40, Direction::Egress, RESP, &mut out);
        assert_eq!(out.exchanges.len(), 2);
        assert!(out.downstream.is_empty());
        assert!(out.exchanges.iter().all(|e| e.downstream.is_none()));
    }

    #[test]
    fn calls_of_a_process_that_serves_nothing_are_not_downstream() {
        let mut t = table(16);
        t.follow_downstream(true);
        let mut out = ConnOutput::default();
        // A client program (curl, a cron job): its calls are plain client exchanges.
        t.on_event(
            Event::Connect(info(6, Some(Role::Client), None, Some("10.1.0.1:80"))),
            &mut out,
        );
        data_on(&mut t, 6, 7, 20, Direction::Egress, UP_REQ, &mut out);
        data_on(&mut t, 6, 7, 30, Direction::Ingress, RESP, &mut out);
        assert_eq!(out.exchanges.len(), 1);
        assert!(out.downstream.is_empty());
    }

    #[test]
    fn a_later_connection_on_the_same_fd_is_not_the_one_a_thread_served() {
        let mut t = table(16);
        t.follow_downstream(true);
        let mut out = ConnOutput::default();
        server_and_client(&mut t, 5, "10.1.0.1:80", &mut out);
        // Thread 7 serves a request on fd 5, which then closes.
        data_on(&mut t, 5, 7, 10, Direction::Ingress, REQ, &mut out);
        data_on(&mut t, 5, 7, 20, Direction::Egress, RESP, &mut out);
        t.on_event(
            Event::Close {
                pid: PID,
                fd: 5,
                ts_ns: 30,
            },
            &mut out,
        );
        // A new connection takes fd 5; thread 8 reads its request.
        let mut accepted = info(5, Some(Role::Server), None, Some("10.0.0.7:4000"));
        accepted.ts_ns = 40;
        t.on_event(Event::Accept(accepted), &mut out);
        data_on(&mut t, 5, 8, 50, Direction::Ingress, REQ, &mut out);
        // Thread 7 calls upstream on its own: not for thread 8's request.
        out = ConnOutput::default();
        data_on(&mut t, 6, 7, 60, Direction::Egress, UP_REQ, &mut out);
        data_on(&mut t, 6, 7, 70, Direction::Ingress, RESP, &mut out);
        assert_eq!(out.downstream.len(), 1);
        assert_eq!(out.downstream[0].attributed, Err(Unattributed::NoRequest));
    }
}
