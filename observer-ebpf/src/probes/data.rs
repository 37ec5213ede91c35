//! The data families: read/write, recvfrom/sendto, readv/writev, recvmsg/sendmsg, and
//! sendfile (whose bytes come from a file: only the count is reported).
//!
//! Everything is done at the syscall's return, where the arguments are still in the saved
//! registers: the first bytes actually transferred are copied. A receive's entry is
//! hooked only to name a socket whose addresses are not known yet.

use core::ffi::c_void;

use aya_ebpf::{bindings::pt_regs, helpers::bpf_probe_read_kernel};
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user, generated::bpf_probe_read_user as read_raw},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use observer_common::{
    drop_reason, offset_index, syscall_nr, DataEvent, EventKind, SocketKey, SocketState, AF_INET,
    AF_INET6, DATA_FLAG_OFFSETS, DATA_HEADER_LEN, DIR_EGRESS, DIR_INGRESS, MAX_CAPTURE,
    SOCKET_FLAG_ADDRESSES_KNOWN, SOCKET_FLAG_IGNORED, SOURCE_SYSCALL,
};

use super::{
    native,
    sockets::{follow_client, follows_dns, read_sockaddr},
    syscall_arg, syscall_ret,
};
use crate::maps::{
    config, count_drop, current, is_agent, ring_level, tls_socket, tracked, wakeup_flags_at, Call,
    CALL_ADDRESSES, CALL_BUF, CALL_IOV, CALL_SENDFILE, EVENTS, INFLIGHT, ORDERS, SCRATCH,
};

/// Most iovecs copied from one vectored call.
const MAX_IOV: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy)]
struct IoVec {
    base: u64,
    len: u64,
}

fn remember_call(tid: u32, call: Call) {
    if INFLIGHT.insert(tid, call, 0).is_err() {
        count_drop(drop_reason::INFLIGHT_FULL);
    }
}

/// `MSG_PEEK`: the bytes stay queued and are read again by a later call.
const MSG_PEEK: u64 = 2;

/// Entry of a receive (`read`, `recvfrom`, `readv`, `recvmsg`): only a tracked socket
/// whose addresses are not known yet needs anything here. The thread's call is
/// remembered so that `tcp:tcp_rcv_space_adjust`, which runs inside the receive, can name
/// the socket. Everything else about a data call is done at its return.
#[raw_tracepoint]
pub fn enter_receive(ctx: RawTracePointContext) -> i32 {
    let (pid, tid) = current();
    let fd = syscall_arg(&ctx, 0) as u32;
    let Some(state) = tracked(pid, fd) else {
        return 0;
    };
    // SAFETY: map value pointer from a successful lookup.
    if unsafe { (*state).flags } & SOCKET_FLAG_ADDRESSES_KNOWN == 0 && native(&ctx) {
        remember_call(tid, Call::data(CALL_ADDRESSES, fd, DIR_INGRESS, 0, 0));
    }
    0
}

/// The kind and direction of a data syscall, by its (x86-64) number.
#[inline(always)]
fn data_call(nr: u64) -> Option<(u32, u32)> {
    Some(match nr {
        syscall_nr::READ | syscall_nr::RECVFROM => (CALL_BUF, DIR_INGRESS),
        syscall_nr::WRITE | syscall_nr::SENDTO => (CALL_BUF, DIR_EGRESS),
        syscall_nr::READV => (CALL_IOV, DIR_INGRESS),
        syscall_nr::WRITEV => (CALL_IOV, DIR_EGRESS),
        syscall_nr::RECVMSG => (CALL_MSG, DIR_INGRESS),
        syscall_nr::SENDMSG => (CALL_MSG, DIR_EGRESS),
        syscall_nr::SENDFILE => (CALL_SENDFILE, DIR_EGRESS),
        _ => return None,
    })
}

/// `recvmsg`/`sendmsg` are read as vectored calls on the iovecs of the `struct msghdr`.
const CALL_MSG: u32 = 0x100;

/// Return of a data syscall on any socket: the arguments are still in the saved
/// registers, so no entry state is needed. A tracked socket's record is sent from here.
fn finish(ctx: &RawTracePointContext) {
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: the address of a field of the kernel's saved registers, read by the helper.
    let Ok(nr) = (unsafe { bpf_probe_read_kernel(core::ptr::addr_of!((*regs).orig_rax)) }) else {
        return;
    };
    let Some((kind, direction)) = data_call(nr) else {
        return;
    };
    let (pid, tid) = current();
    let fd = syscall_arg(ctx, 0) as u32;
    let ret = syscall_ret(ctx);
    let state = match tracked(pid, fd) {
        Some(state) => state,
        None if direction == DIR_EGRESS && ret > 0 => {
            // An unconnected datagram socket sending to a DNS server is followed from
            // here on (its answers come back to the same socket).
            let name = match nr {
                syscall_nr::SENDTO => syscall_arg(ctx, 4),
                // struct user_msghdr starts with `void *msg_name`.
                syscall_nr::SENDMSG => read_user_u64(syscall_arg(ctx, 1)),
                _ => 0,
            };
            match follow_unconnected(ctx, pid, tid, fd, name) {
                Some(state) => state,
                None => return,
            }
        }
        None => return,
    };
    if !native(ctx) {
        return;
    }
    // SAFETY: map value pointer from a successful lookup.
    let flags = unsafe { (*state).flags };
    if direction == DIR_INGRESS && (ret <= 0 || flags & SOCKET_FLAG_ADDRESSES_KNOWN == 0) {
        // What `enter_receive` may have left for naming the socket.
        let _ = INFLIGHT.remove(tid);
    }
    // TLS bookkeeping first (a TLS socket's bytes are ciphertext and are not copied; its
    // plaintext comes from the library); a socket the agent does not parse is skipped.
    if tls_socket(pid, tid, fd, direction, state) || flags & SOCKET_FLAG_IGNORED != 0 {
        return;
    }
    if ret <= 0 {
        return;
    }
    let call = match kind {
        CALL_BUF => {
            // recvfrom(fd, buf, len, flags, ...): a peek is not a data call, the same
            // bytes come again with the read that consumes them.
            if nr == syscall_nr::RECVFROM && syscall_arg(ctx, 3) & MSG_PEEK != 0 {
                return;
            }
            Call::data(CALL_BUF, fd, direction, syscall_arg(ctx, 1), 0)
        }
        CALL_IOV => Call::data(
            CALL_IOV,
            fd,
            direction,
            syscall_arg(ctx, 1),
            syscall_arg(ctx, 2) as u32,
        ),
        CALL_MSG => {
            if nr == syscall_nr::RECVMSG && syscall_arg(ctx, 2) & MSG_PEEK != 0 {
                return;
            }
            let msg = syscall_arg(ctx, 1);
            // struct user_msghdr { void *name; int namelen; struct iovec *iov; size_t
            // iovlen; ... }
            // SAFETY: bpf_probe_read_user validates the user pointers.
            let (iov, iov_len) = unsafe {
                match (
                    bpf_probe_read_user((msg + 16) as *const u64),
                    bpf_probe_read_user((msg + 24) as *const u64),
                ) {
                    (Ok(iov), Ok(len)) => (iov, len),
                    _ => {
                        count_drop(drop_reason::READ_FAILED);
                        return;
                    }
                }
            };
            Call::data(CALL_IOV, fd, direction, iov, iov_len as u32)
        }
        _ => Call::data(CALL_SENDFILE, fd, direction, 0, 0),
    };
    emit_data_at(
        state,
        pid,
        tid,
        user_r14(ctx),
        &call,
        ret as u64,
        SOURCE_SYSCALL,
    );
}

/// Send a Data record: the header and up to the configured number of bytes of `call`'s
/// buffer (or iovecs), of which `len` were transferred.
pub fn emit_data(pid: u32, tid: u32, g: u64, call: &Call, len: u64, source: u32) {
    emit_record(tracked(pid, call.fd), pid, tid, g, call, len, source);
}

/// As [`emit_data`], for the socket `state` already looked up.
#[inline(always)]
fn emit_data_at(
    state: *mut SocketState,
    pid: u32,
    tid: u32,
    g: u64,
    call: &Call,
    len: u64,
    source: u32,
) {
    emit_record(Some(state), pid, tid, g, call, len, source);
}

#[inline(always)]
fn emit_record(
    state: Option<*mut SocketState>,
    pid: u32,
    tid: u32,
    g: u64,
    call: &Call,
    len: u64,
    source: u32,
) {
    let capture = capture_bytes();
    // Stamp the socket's byte counts: this record's place in its stream, and how far the
    // other direction had got. Counted before the ring buffer is tried, so a record that
    // does not make it shows as a gap.
    let (flags, offset, peer_offset, skip_until) = match state {
        Some(state) => {
            let own = offset_index(source, call.direction);
            let peer = offset_index(source, call.direction ^ 1);
            // SAFETY: map value pointer from a successful lookup. A plain add, not an
            // atomic one (stable Rust has no atomic read-modify-write for BPF): two
            // threads writing one socket in the same direction at the same instant
            // interleave their bytes anyway, so nothing exact is lost.
            unsafe {
                let counters = core::ptr::addr_of_mut!((*state).offsets) as *mut u64;
                let offset = core::ptr::read_volatile(counters.add(own));
                core::ptr::write_volatile(counters.add(own), offset + len);
                // Only a call larger than what is copied can be worth skipping: small
                // ones pay no lookup.
                let skip_until = if len > capture {
                    skip_until(pid, call.fd, (*state).opened_ns, own)
                } else {
                    0
                };
                (
                    DATA_FLAG_OFFSETS,
                    offset,
                    core::ptr::read_volatile(counters.add(peer)),
                    skip_until,
                )
            }
        }
        None => (0, 0, 0, 0),
    };
    if offset + len <= skip_until {
        // All of it is a body the agent has delimited: counted above, not copied.
        return;
    }
    let mut cap = capture;
    if cap > len {
        cap = len;
    }
    // Read once for the record: where the ring stands, for the choice below and the
    // wake-up.
    let level = ring_level();
    // Room: less than a quarter of the ring unread (twice the wake-up threshold).
    let room = level.0 < 2 * level.1;
    if call.kind == CALL_BUF && cap <= SMALL_PAYLOAD as u64 && room {
        // A small copy from one buffer goes straight into a fixed-size record reserved in
        // the ring: no scratch, no second copy. Only while the ring is mostly empty: a
        // fixed-size record takes more room than a record of the exact size, so once the
        // agent falls behind the ring's room goes to exact-size records.
        let Some(mut entry) = EVENTS.reserve::<SmallRecord>(0) else {
            count_drop(drop_reason::RINGBUF_FULL);
            return;
        };
        let record = entry.as_mut_ptr();
        // SAFETY: cap <= SMALL_PAYLOAD, the size of the reserved payload.
        let captured = unsafe {
            copy_user(
                core::ptr::addr_of_mut!((*record).payload) as *mut u8,
                cap,
                call.ptr,
            )
        };
        let head = data_header(
            pid,
            tid,
            g,
            call,
            len,
            source,
            captured,
            flags,
            offset,
            peer_offset,
        );
        // SAFETY: the reserved record starts with room for the header.
        unsafe { core::ptr::addr_of_mut!((*record).head).write(head) };
        entry.submit(wakeup_flags_at(level));
        return;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value, used by this program only while it runs.
    let buf = unsafe { (*scratch).buf.as_mut_ptr() };
    let mut captured: u64 = 0;
    if call.kind == CALL_BUF {
        // SAFETY: cap <= MAX_CAPTURE and the scratch buffer holds header + 2 * MAX_CAPTURE.
        captured = unsafe { copy_user(buf.add(DATA_HEADER_LEN), cap, call.ptr) };
    } else if call.kind == CALL_IOV {
        captured = copy_iovecs(buf, call, cap);
    }
    let header = data_header(
        pid,
        tid,
        g,
        call,
        len,
        source,
        captured,
        flags,
        offset,
        peer_offset,
    );
    // SAFETY: the scratch buffer starts with room for the header.
    unsafe { core::ptr::write_unaligned(buf as *mut DataEvent, header) };
    let mut size = DATA_HEADER_LEN as u64 + captured;
    if size > (DATA_HEADER_LEN + MAX_CAPTURE) as u64 {
        size = (DATA_HEADER_LEN + MAX_CAPTURE) as u64;
    }
    // SAFETY: size is bounded by the scratch buffer's length.
    let record = unsafe { core::slice::from_raw_parts(buf as *const u8, size as usize) };
    if EVENTS
        .output::<[u8]>(record, wakeup_flags_at(level))
        .is_err()
    {
        count_drop(drop_reason::RINGBUF_FULL);
    }
}

/// Copy `cap` bytes of the user buffer at `src` to `dst`; returns how many were copied
/// (0 when the read failed: counted).
///
/// # Safety
/// `dst` must have room for `cap` bytes.
#[inline(always)]
unsafe fn copy_user(dst: *mut u8, cap: u64, src: u64) -> u64 {
    if cap == 0 {
        return 0;
    }
    // SAFETY: the caller guarantees the room; the helper validates the user pointer.
    if unsafe { read_raw(dst as *mut c_void, cap as u32, src as *const c_void) } == 0 {
        cap
    } else {
        count_drop(drop_reason::READ_FAILED);
        0
    }
}

/// Payload room of a record reserved in place (header + payload = 512 bytes).
const SMALL_PAYLOAD: usize = 512 - DATA_HEADER_LEN;

/// A data record small enough to be reserved in the ring at a fixed size; its `captured`
/// says how much of the payload is meaningful (the agent ignores the rest).
#[repr(C)]
struct SmallRecord {
    head: DataEvent,
    payload: [u8; SMALL_PAYLOAD],
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn data_header(
    pid: u32,
    tid: u32,
    g: u64,
    call: &Call,
    len: u64,
    source: u32,
    captured: u64,
    flags: u32,
    offset: u64,
    peer_offset: u64,
) -> DataEvent {
    DataEvent {
        header: observer_common::EventHeader {
            kind: EventKind::Data as u32,
            pid,
            tid,
            fd: call.fd,
            // SAFETY: plain helper call.
            ts_ns: unsafe { bpf_ktime_get_ns() },
        },
        direction: call.direction,
        source,
        len,
        captured: captured as u32,
        flags,
        offset,
        peer_offset,
        g,
    }
}

/// Bytes copied per call (configured, at most `MAX_CAPTURE`; 0 before configuration).
#[inline(always)]
fn capture_bytes() -> u64 {
    match config() {
        Some(c) if (c.capture_bytes as u64) < MAX_CAPTURE as u64 => c.capture_bytes as u64,
        Some(_) => MAX_CAPTURE as u64,
        None => 0,
    }
}

/// Where the body the agent delimited on this socket (in direction/source `index`) ends;
/// 0 when there is none, or the orders are for an earlier socket on the same fd.
#[inline(always)]
fn skip_until(pid: u32, fd: u32, opened_ns: u64, index: usize) -> u64 {
    // SAFETY: plain lookup, copied out.
    match unsafe { ORDERS.get(SocketKey { pid, fd }) } {
        Some(o) if o.opened_ns == opened_ns && index < 4 => o.skip_until[index],
        _ => 0,
    }
}

/// Copy up to `cap` bytes from the call's iovecs into the scratch buffer after the header.
///
/// Written for the verifier: every path through an iteration leaves `off` and `n` in the
/// same masked ranges, so the paths of one iteration prune each other and the cost of
/// verification grows with `MAX_IOV`, not exponentially with it.
fn copy_iovecs(buf: *mut u8, call: &Call, cap: u64) -> u64 {
    let mut off: u64 = 0;
    let count = if call.iov_len < MAX_IOV {
        call.iov_len
    } else {
        MAX_IOV
    };
    for i in 0..MAX_IOV {
        if i >= count || off >= cap {
            break;
        }
        // SAFETY: bpf_probe_read_user validates the user pointer.
        let Ok(iov) = (unsafe { bpf_probe_read_user((call.ptr + 16 * i as u64) as *const IoVec) })
        else {
            count_drop(drop_reason::READ_FAILED);
            break;
        };
        // off < cap <= MAX_CAPTURE: the mask changes nothing but tells the verifier.
        let at = off & (MAX_CAPTURE as u64 - 1);
        let room = cap - off;
        let n = if iov.len < room { iov.len } else { room };
        // n <= room <= MAX_CAPTURE: likewise.
        let n = n & (2 * MAX_CAPTURE as u64 - 1);
        if n > 0 && n <= MAX_CAPTURE as u64 {
            // SAFETY: at < MAX_CAPTURE and n <= MAX_CAPTURE: inside header + 2 * MAX_CAPTURE.
            let rc = unsafe {
                read_raw(
                    buf.add(DATA_HEADER_LEN + at as usize) as *mut c_void,
                    n as u32,
                    iov.base as *const c_void,
                )
            };
            if rc != 0 {
                count_drop(drop_reason::READ_FAILED);
                break;
            }
        }
        off += n;
    }
    off
}

/// The caller's user `R14`, saved at the syscall's entry (a Go program's goroutine).
#[inline(always)]
fn user_r14(ctx: &RawTracePointContext) -> u64 {
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: the address of a field of the kernel's saved registers, read by the helper.
    unsafe { bpf_probe_read_kernel(core::ptr::addr_of!((*regs).r14)) }.unwrap_or(0)
}

/// A `u64` at user address `ptr` (0 when unreadable or `ptr` is 0).
#[inline(always)]
fn read_user_u64(ptr: u64) -> u64 {
    if ptr == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_user validates the user pointer.
    unsafe { bpf_probe_read_user(ptr as *const u64) }.unwrap_or(0)
}

/// Follow `fd`, not followed yet, if the datagram it just sent went to a DNS server
/// (`name` is the destination's user-space sockaddr, 0 when the call named none).
#[inline(always)]
fn follow_unconnected(
    ctx: &RawTracePointContext,
    pid: u32,
    tid: u32,
    fd: u32,
    name: u64,
) -> Option<*mut SocketState> {
    if name == 0 || is_agent(pid) || !native(ctx) {
        return None;
    }
    let (family, port, addr) = read_sockaddr(name)?;
    if (family != AF_INET && family != AF_INET6) || !follows_dns(port) {
        return None;
    }
    follow_client(pid, tid, fd, true, family, port, addr);
    tracked(pid, fd)
}

/// Most messages of one `sendmmsg` reported (glibc's resolver sends two: A and AAAA).
const MAX_MMSG: u64 = 4;
/// `sizeof(struct mmsghdr)`: a `struct user_msghdr` (56 bytes) and the `msg_len` the
/// kernel writes back, padded to 64.
const MMSGHDR: u64 = 64;

/// Return of `sendmmsg`: one record per message sent (up to `MAX_MMSG`), each the
/// iovecs of its `msghdr`, of `msg_len` bytes.
#[raw_tracepoint]
pub fn exit_sendmmsg(ctx: RawTracePointContext) -> i32 {
    let (pid, tid) = current();
    let fd = syscall_arg(&ctx, 0) as u32;
    let vec = syscall_arg(&ctx, 1);
    let sent = syscall_ret(&ctx);
    if sent <= 0 || vec == 0 {
        return 0;
    }
    let state = match tracked(pid, fd) {
        Some(state) => state,
        None => match follow_unconnected(&ctx, pid, tid, fd, read_user_u64(vec)) {
            Some(state) => state,
            None => return 0,
        },
    };
    if !native(&ctx) {
        return 0;
    }
    // SAFETY: map value pointer from a successful lookup.
    if unsafe { (*state).flags } & SOCKET_FLAG_IGNORED != 0 {
        return 0;
    }
    let g = user_r14(&ctx);
    for i in 0..MAX_MMSG {
        if i >= sent as u64 {
            break;
        }
        let msg = vec + i * MMSGHDR;
        let iov = read_user_u64(msg + 16);
        let iov_len = read_user_u64(msg + 24);
        // SAFETY: bpf_probe_read_user validates the user pointer.
        let Ok(len) = (unsafe { bpf_probe_read_user((msg + 56) as *const u32) }) else {
            count_drop(drop_reason::READ_FAILED);
            break;
        };
        if len == 0 || iov == 0 {
            continue;
        }
        let call = Call::data(CALL_IOV, fd, DIR_EGRESS, iov, iov_len as u32);
        emit_data_at(state, pid, tid, g, &call, len as u64, SOURCE_SYSCALL);
    }
    0
}

/// Every data syscall's exit: one program, in the exit slot of each data syscall, so the
/// verifier checks it once.
#[raw_tracepoint]
pub fn exit_data(ctx: RawTracePointContext) -> i32 {
    finish(&ctx);
    0
}
