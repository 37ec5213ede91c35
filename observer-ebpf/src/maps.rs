//! Every map the programs share, with the helpers that touch them.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use observer_common::{
    drop_reason, CaptureConfig, SocketKey, SocketOrders, SocketState, SslKey, DATA_HEADER_LEN,
    DIR_INGRESS, MAX_CAPTURE, SOCKET_FLAG_TLS,
};

/// Records for the agent. The agent may resize it before loading.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// TCP sockets worth tracing, by (pid, fd); sized by the agent from
/// `capture.max_connections`. Not LRU: a socket is never dropped silently. When it is full
/// a new socket is not followed and `SOCKETS_FULL` counts it; sockets whose close was
/// never seen (their process exited) are removed by the agent's sweep.
#[map]
pub static SOCKETS: HashMap<SocketKey, SocketState> = HashMap::with_max_entries(65536, 0);

/// What the agent wants done with a socket's bytes (`SocketOrders`), read by the data
/// hooks when `SOCKET_FLAG_ORDERS` is set. Removed with the socket.
#[map]
pub static ORDERS: HashMap<SocketKey, SocketOrders> = HashMap::with_max_entries(65536, 0);

/// Calls in flight, by thread id: what `sys_enter_*` saw, for `sys_exit_*` to finish.
/// Not LRU either: a full table is counted (`INFLIGHT_FULL`), and a thread's entry goes
/// when the thread exits (`thread_exit`).
#[map]
pub static INFLIGHT: HashMap<u32, Call> = HashMap::with_max_entries(16384, 0);

/// TLS state of each thread that has called a TLS library: the call in flight, the
/// socket it last read, and a library object waiting for its socket. Threads that never
/// call a TLS library have no entry, so the syscall hooks pay one failed lookup for them.
#[map]
pub static TLS_THREADS: LruHashMap<u32, TlsThread> = LruHashMap::with_max_entries(16384, 0);

/// The socket each TLS library object last used, for calls served from the library's
/// buffers without a syscall.
#[map]
pub static TLS_SOCKETS: LruHashMap<SslKey, u32> = LruHashMap::with_max_entries(65536, 0);

/// Go `crypto/tls` reads in flight, by (pid, goroutine): a goroutine may move between
/// threads while it waits, so the thread id cannot key them.
#[map]
pub static GO_READS: LruHashMap<SslKey, TlsCall> = LruHashMap::with_max_entries(16384, 0);

/// Processes the TLS hooks report when a process filter is configured.
#[map]
pub static TLS_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);

/// Programs (by `comm`, the first 15 bytes of their file name) the TLS hooks report
/// when a process filter is configured: checked in the kernel, so a filtered-in program
/// is seen from its first call.
#[map]
pub static TLS_COMMS: HashMap<[u8; 16], u32> = HashMap::with_max_entries(256, 0);

/// Settings written by the agent.
#[map]
pub static CONFIG: Array<CaptureConfig> = Array::with_max_entries(1, 0);

/// Per-CPU drop counters, indexed by `drop_reason`.
#[map]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_reason::COUNT, 0);

/// Scratch space to build a data record before copying it to the ring buffer. Twice the
/// capture size so that the verifier can prove every partial copy stays inside it.
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub struct Scratch {
    pub buf: [u8; DATA_HEADER_LEN + 2 * MAX_CAPTURE],
}

/// What kind of call a thread is in.
pub const CALL_BUF: u32 = 1;
pub const CALL_IOV: u32 = 2;
pub const CALL_ACCEPT: u32 = 3;
pub const CALL_CONNECT: u32 = 4;
pub const CALL_SENDFILE: u32 = 5;
/// A read of a TLS socket whose addresses are not known yet: only for the address hook.
pub const CALL_ADDRESSES: u32 = 6;

/// A call between its enter and exit tracepoints.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Call {
    /// `CALL_*`.
    pub kind: u32,
    /// The socket (or listening socket for accept).
    pub fd: u32,
    /// `DIR_*` for data calls.
    pub direction: u32,
    /// Number of iovecs for `CALL_IOV`.
    pub iov_len: u32,
    /// User buffer, iovec array, or sockaddr (accept: where the peer address goes).
    pub ptr: u64,
    /// Connect: the peer's family and port, decoded at entry.
    pub family: u16,
    pub port: u16,
    /// Connect: 1 once the socket started a TCP handshake during the call.
    pub tcp: u32,
    /// Connect: the peer's address.
    pub addr: [u8; 16],
}

/// A TLS library read or write between its entry and its return.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsCall {
    /// The library object (`SSL *`, or `*tls.Conn` for Go).
    pub ssl: u64,
    /// The caller's plaintext buffer.
    pub buf: u64,
    /// `SSL_read_ex`/`SSL_write_ex`: where the library stores the byte count; else 0.
    pub len_out: u64,
    /// The socket, once a syscall inside the call (or the library object) named it.
    pub fd: u32,
    /// `DIR_*`.
    pub direction: u32,
}

/// `TlsCall::direction` of a handshake call: binds a socket, carries no data.
pub const DIR_HANDSHAKE: u32 = 2;

/// Per-thread TLS state (`TLS_THREADS`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsThread {
    /// The library call in flight, when `in_call` is 1.
    pub call: TlsCall,
    pub in_call: u32,
    /// The tracked socket this thread last read from (`NO_FD` if none yet): a library
    /// reading through its own buffers (node's memory BIO) decrypts right after the
    /// thread read the ciphertext from it.
    pub last_read: u32,
    /// A library object waiting for its socket (0 if none): a library writing through
    /// its own buffers hands the ciphertext to the socket right after the call, on the
    /// same thread, so the next socket write names it.
    pub pending: u64,
}

/// Not a file descriptor: the socket of a TLS call is not known yet.
pub const NO_FD: u32 = u32::MAX;

/// Whether the TLS hooks should report process `pid`.
#[inline(always)]
pub fn tls_wanted(pid: u32) -> bool {
    match config() {
        Some(c) if c.agent_pid == pid => false,
        Some(c) if c.tls_filter != 0 => {
            // SAFETY: plain lookups.
            unsafe { TLS_PIDS.get(pid) }.is_some()
                || bpf_get_current_comm()
                    .map(|comm| unsafe { TLS_COMMS.get(comm) }.is_some())
                    .unwrap_or(false)
        }
        Some(_) => true,
        None => false,
    }
}

/// Mark a tracked socket as carrying TLS: the syscall hooks stop copying its bytes.
#[inline(always)]
pub fn mark_tls(state: *mut SocketState) {
    // SAFETY: map values stay valid while the program runs.
    unsafe { (*state).flags |= SOCKET_FLAG_TLS };
}

/// Remember that library object `ssl` of process `pid` uses socket `fd`, and mark the
/// socket as TLS (its syscall bytes are ciphertext).
#[inline(always)]
pub fn bind_tls(pid: u32, ssl: u64, fd: u32, state: *mut SocketState) {
    mark_tls(state);
    let _ = TLS_SOCKETS.insert(SslKey { pid, _pad: 0, ssl }, fd, 0);
}

/// Called by the syscall hooks for a tracked socket: ties a TLS library call in flight on
/// this thread (or an object waiting for its socket) to the socket, and says whether the
/// socket carries TLS (then its bytes are ciphertext and not worth copying).
#[inline(always)]
pub fn tls_socket(pid: u32, tid: u32, fd: u32, direction: u32, state: *mut SocketState) -> bool {
    if let Some(thread) = TLS_THREADS.get_ptr_mut(tid) {
        // SAFETY: map values stay valid while the program runs.
        let thread = unsafe { &mut *thread };
        if direction == DIR_INGRESS {
            thread.last_read = fd;
        } else if thread.pending != 0 {
            bind_tls(pid, thread.pending, fd, state);
            thread.pending = 0;
        }
        if thread.in_call != 0 {
            thread.call.fd = fd;
            bind_tls(pid, thread.call.ssl, fd, state);
            return true;
        }
    }
    // SAFETY: as above.
    unsafe { (*state).flags & SOCKET_FLAG_TLS != 0 }
}

impl Call {
    /// A data call (`CALL_BUF`, `CALL_IOV`, `CALL_SENDFILE`, `CALL_ADDRESSES`).
    #[inline(always)]
    pub const fn data(kind: u32, fd: u32, direction: u32, ptr: u64, iov_len: u32) -> Self {
        Self {
            kind,
            fd,
            direction,
            iov_len,
            ptr,
            family: 0,
            port: 0,
            tcp: 0,
            addr: [0; 16],
        }
    }
}

#[inline(always)]
pub fn count_drop(reason: u32) {
    if let Some(counter) = DROPS.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

/// Ring-buffer flags for a record: no wakeup unless the agent has fallen behind.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    wakeup_flags_at(ring_level())
}

/// Unread bytes in the ring and the wake-up threshold (0 before configuration).
#[inline(always)]
pub fn ring_level() -> (u64, u64) {
    const BPF_RB_AVAIL_DATA: u64 = 0;
    let threshold = match config() {
        Some(c) => c.wakeup_bytes,
        None => 0,
    };
    (EVENTS.query(BPF_RB_AVAIL_DATA), threshold)
}

/// [`wakeup_flags`] for a level already read.
#[inline(always)]
pub fn wakeup_flags_at((avail, threshold): (u64, u64)) -> u64 {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    if avail > threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
pub fn config() -> Option<&'static CaptureConfig> {
    CONFIG.get(0)
}

/// (pid, tid) of the current thread.
#[inline(always)]
pub fn current() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

#[inline(always)]
pub fn is_agent(pid: u32) -> bool {
    match config() {
        Some(c) => c.agent_pid == pid,
        None => true, // not configured yet: trace nothing
    }
}

#[inline(always)]
pub fn tracked(pid: u32, fd: u32) -> Option<*mut SocketState> {
    SOCKETS.get_ptr_mut(SocketKey { pid, fd })
}
