//! Records shared by the kernel programs (`observer-ebpf`) and the agent (`observer`).
//!
//! One definition per record, `#[repr(C)]` with explicit padding so both sides agree on
//! every byte. The agent decodes records from raw ring-buffer bytes with [`EventKind`]'s
//! `TryFrom` and bounds-checked reads, never by transmute.
#![no_std]

/// Largest number of payload bytes one data event can carry (compile-time bound).
pub const MAX_CAPTURE: usize = 8192;
/// Default number of payload bytes captured per read/write: room for request headers with
/// a long JWT.
pub const DEFAULT_CAPTURE: u32 = 4096;

/// Slots of the kernel's syscall dispatch tables (`ENTER_CALLS`, `EXIT_CALLS`): one per
/// syscall number below this.
pub const SYSCALL_SLOTS: u32 = 512;

/// x86-64 numbers of the data syscalls, as the kernel's return hook tells them apart (the
/// agent checks them against its libc's at build time).
pub mod syscall_nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDFILE: u64 = 40;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const SENDMMSG: u64 = 307;
}

/// What a record in the ring buffer describes.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A socket accepted by a server (`accept`/`accept4` returned a new fd).
    Accept = 1,
    /// A socket connected by a client (`connect` succeeded or is in progress).
    Connect = 2,
    /// The local and remote addresses of a tracked socket, learned in the kernel.
    Addresses = 3,
    /// A tracked socket fd was closed.
    Close = 4,
    /// Bytes moved through a tracked socket (or a TLS library call on one).
    Data = 5,
    /// A process called `execve`: the agent checks its program for TLS code to probe.
    Exec = 6,
}

impl TryFrom<u32> for EventKind {
    type Error = u32;
    fn try_from(value: u32) -> Result<Self, u32> {
        Ok(match value {
            1 => Self::Accept,
            2 => Self::Connect,
            3 => Self::Addresses,
            4 => Self::Close,
            5 => Self::Data,
            6 => Self::Exec,
            other => return Err(other),
        })
    }
}

/// Common first part of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    /// An [`EventKind`] value.
    pub kind: u32,
    /// Process id (thread group id).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// The socket's file descriptor in that process.
    pub fd: u32,
    /// `CLOCK_MONOTONIC` time of the event, nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
}

/// Address family values as the kernel uses them.
pub const AF_INET: u16 = 2;
/// Address family values as the kernel uses them.
pub const AF_INET6: u16 = 10;

/// `SocketEvent::flags`: a datagram (UDP) socket, followed because it talks to a DNS
/// server (port 53): each data record is one datagram.
pub const SOCKET_EVENT_DATAGRAM: u16 = 1;

/// The well-known DNS port: the only UDP peers followed.
pub const DNS_PORT: u16 = 53;

/// Which end of the connection this host's process is.
pub const ROLE_UNKNOWN: u32 = 0;
/// The process accepted the connection: it is the server.
pub const ROLE_SERVER: u32 = 1;
/// The process connected: it is the client.
pub const ROLE_CLIENT: u32 = 2;

/// Accept, Connect, Addresses and Close records.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketEvent {
    pub header: EventHeader,
    /// `ROLE_*`.
    pub role: u32,
    /// `AF_INET`, `AF_INET6`, or 0 when the addresses are unknown.
    pub family: u16,
    /// Local port, host byte order (0 when unknown).
    pub local_port: u16,
    /// Remote port, host byte order (0 when unknown).
    pub remote_port: u16,
    /// `SOCKET_EVENT_*` bits.
    pub flags: u16,
    /// Explicit padding.
    pub _pad: [u8; 4],
    /// Local address: IPv4 in the first 4 bytes, or IPv6 (IPv4-mapped allowed).
    pub local_addr: [u8; 16],
    /// Remote address, same layout.
    pub remote_addr: [u8; 16],
    /// `comm` of the calling thread.
    pub comm: [u8; 16],
}

/// Data moved from the peer into the process (read side).
pub const DIR_INGRESS: u32 = 0;
/// Data moved from the process to the peer (write side).
pub const DIR_EGRESS: u32 = 1;

/// Data seen by a syscall hook (may be ciphertext on a TLS connection).
pub const SOURCE_SYSCALL: u32 = 0;
/// Plaintext seen by a TLS library hook.
pub const SOURCE_TLS: u32 = 1;

/// Header of a Data record; `captured` payload bytes follow it in the same record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DataEvent {
    pub header: EventHeader,
    /// `DIR_INGRESS` or `DIR_EGRESS`.
    pub direction: u32,
    /// `SOURCE_SYSCALL` or `SOURCE_TLS`.
    pub source: u32,
    /// Bytes the call actually transferred (its return value).
    pub len: u64,
    /// Payload bytes that follow this header (`<= len`, `<= MAX_CAPTURE`).
    pub captured: u32,
    /// `DATA_FLAG_*` bits.
    pub flags: u32,
    /// With `DATA_FLAG_OFFSETS`: bytes this socket had moved in this record's direction
    /// (and source) before this call, counted by the kernel whether or not their records
    /// reached the agent. A record whose offset is past what the agent has seen shows a
    /// loss, exactly where it happened.
    pub offset: u64,
    /// With `DATA_FLAG_OFFSETS`: bytes the socket had moved in the other direction (same
    /// source) when this call happened. A response written before a request had been
    /// read cannot answer it.
    pub peer_offset: u64,
    /// The calling thread's user `R14` at the call. In a Go program that is the running
    /// goroutine (its `g`): Go code keeps it there, and a goroutine may move between
    /// threads, so the agent tells a Go program's requests apart by it. Meaningless for
    /// other programs (the agent does not use it for them).
    pub g: u64,
}

/// `DataEvent::offset` and `peer_offset` are set (the socket is in the tracked map).
pub const DATA_FLAG_OFFSETS: u32 = 1;

/// Size of the Data record header in bytes.
pub const DATA_HEADER_LEN: usize = core::mem::size_of::<DataEvent>();

const _: () = assert!(core::mem::size_of::<EventHeader>() == 24);
const _: () = assert!(core::mem::size_of::<SocketEvent>() == 88);
const _: () = assert!(core::mem::size_of::<SocketState>() == 48);
const _: () = assert!(DATA_HEADER_LEN == 72);
const _: () = assert!(MAX_CAPTURE.is_power_of_two());

/// Indexes of the per-CPU drop counters (`DROPS` map).
pub mod drop_reason {
    /// The ring buffer had no room for the record.
    pub const RINGBUF_FULL: u32 = 0;
    /// Reading the process's buffer failed (page not present, bad pointer).
    pub const READ_FAILED: u32 = 1;
    /// The per-thread in-flight table had no room for a call.
    pub const INFLIGHT_FULL: u32 = 2;
    /// The tracked-socket table had no room for a new socket.
    pub const SOCKETS_FULL: u32 = 3;
    /// A TLS library call returned data but no socket could be tied to it.
    pub const TLS_NO_SOCKET: u32 = 4;
    /// Number of counters.
    pub const COUNT: u32 = 5;
    /// Label of each counter, by index.
    pub const NAMES: [&str; COUNT as usize] = [
        "ringbuf_full",
        "read_failed",
        "inflight_full",
        "sockets_full",
        "tls_no_socket",
    ];
}

/// Key of the tracked-socket map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SocketKey {
    /// Process id (thread group id).
    pub pid: u32,
    /// File descriptor.
    pub fd: u32,
}

/// Value of the tracked-socket map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketState {
    /// `ROLE_*`.
    pub role: u32,
    /// `SOCKET_FLAG_*` bits.
    pub flags: u32,
    /// When the socket was accepted or connected (the `ts_ns` of its Accept/Connect
    /// record; 0 for sockets found at start): tells this socket from a later one that
    /// reuses its fd.
    pub opened_ns: u64,
    /// Bytes moved so far, indexed by [`offset_index`]: per source (syscall or TLS
    /// plaintext) and direction. Stamped on each data record (`DataEvent::offset`).
    pub offsets: [u64; 4],
}

/// Index into `SocketState::offsets` of a source (`SOURCE_*`) and direction (`DIR_*`).
#[inline(always)]
pub const fn offset_index(source: u32, direction: u32) -> usize {
    ((source & 1) * 2 + (direction & 1)) as usize
}

/// The kernel has already reported this socket's addresses.
pub const SOCKET_FLAG_ADDRESSES_KNOWN: u32 = 1;
/// A TLS library reads and writes this socket: its plaintext comes from the library
/// hooks, so the syscall hooks skip its (encrypted) bytes.
pub const SOCKET_FLAG_TLS: u32 = 2;
/// The agent does not parse this socket's protocol (set by the agent once it has
/// classified the connection): its bytes are no longer copied.
pub const SOCKET_FLAG_IGNORED: u32 = 4;

/// Value of the `ORDERS` map, written by the agent only (the kernel never writes it, so
/// the agent never races the kernel's byte counts in `SocketState`). Looked up only for
/// calls larger than the capture size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketOrders {
    /// The socket these orders are for (`SocketState::opened_ns`): a later socket on the
    /// same fd ignores them.
    pub opened_ns: u64,
    /// Per [`offset_index`]: bytes up to this stream offset are a body the agent has
    /// delimited (Content-Length, chunk size): a call that lies wholly before it is
    /// counted in the offsets but not copied, and sends no record.
    pub skip_until: [u64; 4],
}

const _: () = assert!(core::mem::size_of::<SocketOrders>() == 40);

/// Go `crypto/tls`: where the socket's fd sits, from a `*tls.Conn`. These layouts have
/// been the same from Go 1.12 to today (the OBI/Beyla project tracks them per release):
/// `tls.Conn.conn` is the first field (an interface: itab, then data pointer), the data
/// of a `*net.TCPConn` starts with `fd *netFD`, and `netFD.pfd.Sysfd` follows the
/// 16-byte `fdMutex`.
pub mod go_layout {
    /// Offset of the interface's data pointer inside `tls.Conn`.
    pub const CONN_DATA: u64 = 8;
    /// Offset of `fd *netFD` inside `net.TCPConn`.
    pub const TCPCONN_FD: u64 = 0;
    /// Offset of `pfd.Sysfd` inside `netFD`.
    pub const NETFD_SYSFD: u64 = 16;
}

/// Field offsets of `tcp:tcp_rcv_space_adjust`, read by the agent from tracefs at load
/// time (they differ between kernel versions).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpTupleOffsets {
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    /// 1 when the offsets were found and the hook may use them.
    pub valid: u32,
}

/// Key of the map that remembers which socket a TLS library object (`SSL *`) uses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SslKey {
    /// Process id.
    pub pid: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Address of the library object in that process.
    pub ssl: u64,
}

/// Run-time settings written by the agent before attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureConfig {
    /// Payload bytes to capture per call (`<= MAX_CAPTURE`).
    pub capture_bytes: u32,
    /// The agent's own pid: its sockets are never traced.
    pub agent_pid: u32,
    /// Wake the agent only when the ring buffer holds more than this many bytes; below
    /// it the agent drains on its own short timer (fewer context switches under load).
    pub wakeup_bytes: u64,
    /// Offsets for the address hook.
    pub tuple: TcpTupleOffsets,
    /// 1 when TLS hooks report only processes listed in the `TLS_PIDS` map (a process
    /// filter is configured); 0 when they report every process.
    pub tls_filter: u32,
    /// Offset of `newstate` in `sock:inet_sock_set_state`, when that hook is attached: a
    /// connect is then followed only if it made a TCP socket start connecting (UDP
    /// sockets, which `connect` too, are followed only towards a DNS server). 0: every
    /// connect is followed.
    pub tcp_state_offset: u32,
    /// 1: follow the UDP sockets a process uses to ask a DNS server (connected, or
    /// unconnected with `sendto`/`sendmsg`/`sendmmsg` to port 53): downstream capture.
    pub downstream: u32,
    /// Explicit padding.
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are `repr(C)` plain integers and arrays with explicit padding.
    unsafe impl aya::Pod for SocketKey {}
    unsafe impl aya::Pod for SocketState {}
    unsafe impl aya::Pod for SocketOrders {}
    unsafe impl aya::Pod for CaptureConfig {}
    unsafe impl aya::Pod for SslKey {}
}
