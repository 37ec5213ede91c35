//! Socket lifecycle: accept, connect, close, and the addresses of tracked sockets.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use observer_common::{
    drop_reason, EventKind, SocketEvent, SocketKey, SocketState, AF_INET, AF_INET6, DNS_PORT,
    ROLE_CLIENT, ROLE_SERVER, ROLE_UNKNOWN, SOCKET_EVENT_DATAGRAM, SOCKET_FLAG_ADDRESSES_KNOWN,
};

use super::{native, syscall_arg, syscall_ret};
use crate::maps::{
    config, count_drop, current, is_agent, tracked, wakeup_flags, Call, CALL_ACCEPT,
    CALL_ADDRESSES, CALL_CONNECT, EVENTS, INFLIGHT, ORDERS, SOCKETS,
};

const EINPROGRESS: i64 = 115;

/// `struct sockaddr_in6` is the largest address we read; `sockaddr_in` is its prefix.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockAddr {
    family: u16,
    port_be: u16,
    v4_or_flowinfo: [u8; 4],
    v6: [u8; 16],
}

/// Decode a user-space sockaddr into (family, port, address) for INET/INET6.
#[inline(always)]
pub fn read_sockaddr(ptr: u64) -> Option<(u16, u16, [u8; 16])> {
    if ptr == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_user validates the user pointer.
    let sa: SockAddr = unsafe { bpf_probe_read_user(ptr as *const SockAddr) }.ok()?;
    let port = u16::from_be(sa.port_be);
    let mut addr = [0u8; 16];
    match sa.family {
        AF_INET => {
            addr[..4].copy_from_slice(&sa.v4_or_flowinfo);
            Some((AF_INET, port, addr))
        }
        AF_INET6 => Some((AF_INET6, port, sa.v6)),
        _ => Some((sa.family, port, addr)),
    }
}

#[inline(always)]
fn emit(kind: EventKind, pid: u32, tid: u32, fd: u32, fill: impl FnOnce(&mut SocketEvent)) {
    // SAFETY: plain helper call.
    emit_at(kind, pid, tid, fd, unsafe { bpf_ktime_get_ns() }, fill)
}

#[inline(always)]
fn emit_at(
    kind: EventKind,
    pid: u32,
    tid: u32,
    fd: u32,
    ts_ns: u64,
    fill: impl FnOnce(&mut SocketEvent),
) {
    let Some(mut entry) = EVENTS.reserve::<SocketEvent>(0) else {
        count_drop(drop_reason::RINGBUF_FULL);
        return;
    };
    let mut ev = SocketEvent::default();
    ev.header.kind = kind as u32;
    ev.header.pid = pid;
    ev.header.tid = tid;
    ev.header.fd = fd;
    ev.header.ts_ns = ts_ns;
    ev.comm = bpf_get_current_comm().unwrap_or_default();
    fill(&mut ev);
    entry.write(ev);
    entry.submit(wakeup_flags());
}

/// Follow a socket just accepted or connected at `opened_ns` (also its record's time).
fn track(pid: u32, fd: u32, role: u32, opened_ns: u64) {
    let state = SocketState {
        role,
        flags: 0,
        opened_ns,
        offsets: [0; 4],
    };
    if SOCKETS.insert(SocketKey { pid, fd }, state, 0).is_err() {
        count_drop(drop_reason::SOCKETS_FULL);
    }
}

fn remember(tid: u32, call: &Call) {
    if INFLIGHT.insert(tid, call, 0).is_err() {
        count_drop(drop_reason::INFLIGHT_FULL);
    }
}

fn take(tid: u32, kind: u32) -> Option<Call> {
    // SAFETY: the value is copied out before it is removed.
    let call = unsafe { INFLIGHT.get(tid) }.copied()?;
    let _ = INFLIGHT.remove(tid);
    (call.kind == kind).then_some(call)
}

/// Entry of `accept` and `accept4` (the same arguments first).
#[raw_tracepoint]
pub fn enter_accept(ctx: RawTracePointContext) -> i32 {
    on_enter_accept(&ctx);
    0
}

fn on_enter_accept(ctx: &RawTracePointContext) {
    let (pid, tid) = current();
    if is_agent(pid) || !native(ctx) {
        return;
    }
    let call = Call {
        kind: CALL_ACCEPT,
        fd: syscall_arg(ctx, 0) as u32,
        direction: 0,
        iov_len: 0,
        ptr: syscall_arg(ctx, 1),
        family: 0,
        port: 0,
        tcp: 0,
        addr: [0; 16],
    };
    remember(tid, &call);
}

/// Return of `accept` and `accept4`.
#[raw_tracepoint]
pub fn exit_accept(ctx: RawTracePointContext) -> i32 {
    on_exit_accept(&ctx);
    0
}

fn on_exit_accept(ctx: &RawTracePointContext) {
    let (pid, tid) = current();
    let Some(call) = take(tid, CALL_ACCEPT) else {
        return;
    };
    let ret = syscall_ret(ctx);
    if ret < 0 {
        return;
    }
    let fd = ret as u32;
    let peer = read_sockaddr(call.ptr);
    if let Some((family, _, _)) = peer {
        if family != AF_INET && family != AF_INET6 {
            return; // unix and other sockets are not HTTP over TCP
        }
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    track(pid, fd, ROLE_SERVER, now);
    emit_at(EventKind::Accept, pid, tid, fd, now, |ev| {
        ev.role = ROLE_SERVER;
        if let Some((family, port, addr)) = peer {
            ev.family = family;
            ev.remote_port = port;
            ev.remote_addr = addr;
        }
    });
}

/// Entry of `connect`.
#[raw_tracepoint]
pub fn enter_connect(ctx: RawTracePointContext) -> i32 {
    let (pid, tid) = current();
    if is_agent(pid) || !native(&ctx) {
        return 0;
    }
    let Some((family, port, addr)) = read_sockaddr(syscall_arg(&ctx, 1)) else {
        return 0;
    };
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    let call = Call {
        kind: CALL_CONNECT,
        fd: syscall_arg(&ctx, 0) as u32,
        direction: 0,
        iov_len: 0,
        ptr: 0,
        family,
        port,
        tcp: 0,
        addr,
    };
    remember(tid, &call);
    0
}

/// Return of `connect`.
#[raw_tracepoint]
pub fn exit_connect(ctx: RawTracePointContext) -> i32 {
    let (pid, tid) = current();
    let Some(call) = take(tid, CALL_CONNECT) else {
        return 0;
    };
    let ret = syscall_ret(&ctx);
    if ret != 0 && ret != -EINPROGRESS {
        return 0;
    }
    let datagram = call.tcp == 0 && config().is_some_and(|c| c.tcp_state_offset != 0);
    if datagram && !follows_dns(call.port) {
        // No TCP handshake started: a UDP socket given a default peer, not a DNS server.
        return 0;
    }
    follow_client(
        pid,
        tid,
        call.fd,
        datagram,
        call.family,
        call.port,
        call.addr,
    );
    0
}

/// Whether a datagram socket towards `port` is followed: a DNS server's, when downstream
/// capture is on.
#[inline(always)]
pub fn follows_dns(port: u16) -> bool {
    port == DNS_PORT && config().is_some_and(|c| c.downstream != 0)
}

/// Follow a socket this process uses as a client, and say so to the agent. A datagram
/// socket's addresses are all the kernel will learn (no TCP hook names it).
#[inline(always)]
pub fn follow_client(
    pid: u32,
    tid: u32,
    fd: u32,
    datagram: bool,
    family: u16,
    port: u16,
    addr: [u8; 16],
) {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    track(pid, fd, ROLE_CLIENT, now);
    if datagram {
        if let Some(state) = tracked(pid, fd) {
            // SAFETY: map value pointer from a successful lookup.
            unsafe { (*state).flags |= SOCKET_FLAG_ADDRESSES_KNOWN };
        }
    }
    emit_at(EventKind::Connect, pid, tid, fd, now, |ev| {
        ev.role = ROLE_CLIENT;
        ev.family = family;
        ev.remote_port = port;
        ev.remote_addr = addr;
        if datagram {
            ev.flags = SOCKET_EVENT_DATAGRAM;
        }
    });
}

/// Entry of `close`.
#[raw_tracepoint]
pub fn enter_close(ctx: RawTracePointContext) -> i32 {
    if !native(&ctx) {
        return 0;
    }
    let (pid, tid) = current();
    let fd = syscall_arg(&ctx, 0) as u32;
    let key = SocketKey { pid, fd };
    // SAFETY: the value is copied out before it is removed.
    if unsafe { SOCKETS.get(key) }.is_some() {
        let _ = SOCKETS.remove(key);
        let _ = ORDERS.remove(key);
        emit(EventKind::Close, pid, tid, fd, |_| {});
    }
    0
}

/// `TCP_SYN_SENT`: a TCP socket starts connecting.
const TCP_SYN_SENT: i32 = 2;

/// A TCP socket changed state. Inside `connect`, in the connecting thread, the move to
/// `SYN_SENT` shows that the socket is TCP: only such connects are followed.
#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn tcp_state(ctx: TracePointContext) -> u32 {
    let Some(offset) = config().map(|c| c.tcp_state_offset).filter(|o| *o != 0) else {
        return 0;
    };
    // SAFETY: the offset comes from this tracepoint's format file.
    if unsafe { ctx.read_at::<i32>(offset as usize) } != Ok(TCP_SYN_SENT) {
        return 0;
    }
    let (_, tid) = current();
    if let Some(call) = INFLIGHT.get_ptr_mut(tid) {
        // SAFETY: map value pointer from a successful lookup.
        unsafe {
            if (*call).kind == CALL_CONNECT {
                (*call).tcp = 1;
            }
        }
    }
    0
}

/// Runs inside `tcp_recvmsg` in the context of the reading thread: if that thread is in a
/// read on a tracked socket whose addresses are not known yet, report them.
#[tracepoint(category = "tcp", name = "tcp_rcv_space_adjust")]
pub fn tcp_rcv_space_adjust(ctx: TracePointContext) -> u32 {
    let _ = try_report_addresses(&ctx);
    0
}

fn try_report_addresses(ctx: &TracePointContext) -> Result<(), i32> {
    let (pid, tid) = current();
    // SAFETY: copied out.
    let Some(call) = (unsafe { INFLIGHT.get(tid) }).copied() else {
        return Ok(());
    };
    if call.kind != CALL_ADDRESSES {
        return Ok(());
    }
    // The receive's entry left this only to name the socket: done with it either way.
    let _ = INFLIGHT.remove(tid);
    let Some(state) = tracked(pid, call.fd) else {
        return Ok(());
    };
    // SAFETY: map value pointer from a successful lookup.
    let state = unsafe { &mut *state };
    if state.flags & SOCKET_FLAG_ADDRESSES_KNOWN != 0 {
        return Ok(());
    }
    let Some(cfg) = config() else {
        return Ok(());
    };
    let off = cfg.tuple;
    if off.valid == 0 {
        return Ok(());
    }
    // SAFETY: offsets come from this kernel's tracefs format file for this event.
    let (family, sport, dport, saddr, daddr) = unsafe {
        let family: u16 = ctx.read_at(off.family as usize)?;
        let sport: u16 = ctx.read_at(off.sport as usize)?;
        let dport: u16 = ctx.read_at(off.dport as usize)?;
        let (saddr, daddr) = if family == AF_INET {
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s[..4].copy_from_slice(&ctx.read_at::<[u8; 4]>(off.saddr as usize)?);
            d[..4].copy_from_slice(&ctx.read_at::<[u8; 4]>(off.daddr as usize)?);
            (s, d)
        } else {
            (
                ctx.read_at::<[u8; 16]>(off.saddr_v6 as usize)?,
                ctx.read_at::<[u8; 16]>(off.daddr_v6 as usize)?,
            )
        };
        (family, sport, dport, saddr, daddr)
    };
    state.flags |= SOCKET_FLAG_ADDRESSES_KNOWN;
    let role = if state.role == 0 {
        ROLE_UNKNOWN
    } else {
        state.role
    };
    emit(EventKind::Addresses, pid, tid, call.fd, |ev| {
        ev.role = role;
        ev.family = family;
        ev.local_port = sport;
        ev.remote_port = dport;
        ev.local_addr = saddr;
        ev.remote_addr = daddr;
    });
    Ok(())
}
