//! The data families: read/write, recvfrom/sendto, readv/writev, recvmsg/sendmsg, and
//! sendfile (whose bytes come from a file: only the count is reported).
//!
//! The enter hook remembers the user buffer of a call on a tracked socket; the exit hook
//! copies the first bytes that were actually transferred.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user, generated::bpf_probe_read_user as read_raw},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use observer_common::{
    drop_reason, offset_index, DataEvent, EventKind, SocketKey, DATA_FLAG_OFFSETS, DATA_HEADER_LEN,
    DIR_EGRESS, DIR_INGRESS, MAX_CAPTURE, SOCKET_FLAG_ADDRESSES_KNOWN, SOCKET_FLAG_IGNORED,
    SOURCE_SYSCALL,
};

use super::{native, syscall_arg, syscall_ret};
use crate::maps::{
    config, count_drop, current, tls_socket, tracked, wakeup_flags, Call, CALL_ADDRESSES, CALL_BUF,
    CALL_IOV, CALL_SENDFILE, EVENTS, INFLIGHT, ORDERS, SCRATCH,
};

/// Most iovecs copied from one vectored call.
const MAX_IOV: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy)]
struct IoVec {
    base: u64,
    len: u64,
}

/// The thread, socket and kind of call to remember for a data syscall; `None` when the
/// socket is not tracked, or carries TLS and has nothing left to tell. A TLS socket's
/// bytes are ciphertext and are not copied; until its addresses are known a read is still
/// remembered (as `CALL_ADDRESSES`) so that the address hook can name it.
fn gate(ctx: &RawTracePointContext, kind: u32, direction: u32) -> Option<(u32, u32, u32)> {
    if !native(ctx) {
        return None;
    }
    let (pid, tid) = current();
    let fd = syscall_arg(ctx, 0) as u32;
    let state = tracked(pid, fd)?;
    // A socket the agent does not parse is skipped like a TLS one (after the TLS
    // bookkeeping: its plaintext may still come from a TLS library).
    // SAFETY: map value pointer from a successful lookup.
    if tls_socket(pid, tid, fd, direction, state)
        || unsafe { (*state).flags } & SOCKET_FLAG_IGNORED != 0
    {
        // SAFETY: as above.
        let flags = unsafe { (*state).flags };
        let unnamed = direction == DIR_INGRESS && flags & SOCKET_FLAG_ADDRESSES_KNOWN == 0;
        return unnamed.then_some((tid, fd, CALL_ADDRESSES));
    }
    Some((tid, fd, kind))
}

fn remember_call(tid: u32, call: Call) {
    if INFLIGHT.insert(tid, call, 0).is_err() {
        count_drop(drop_reason::INFLIGHT_FULL);
    }
}

fn remember(ctx: &RawTracePointContext, kind: u32, direction: u32, ptr_arg: usize) {
    let Some((tid, fd, kind)) = gate(ctx, kind, direction) else {
        return;
    };
    let iov_len = if kind == CALL_IOV {
        syscall_arg(ctx, 2) as u32
    } else {
        0
    };
    let ptr = syscall_arg(ctx, ptr_arg);
    remember_call(tid, Call::data(kind, fd, direction, ptr, iov_len));
}

/// `MSG_PEEK`: the bytes stay queued and are read again by a later call.
const MSG_PEEK: u64 = 2;

/// A receive whose `flags` (syscall argument `flags_arg`) peek is not a data call: the
/// same bytes come again with the read that consumes them.
fn peeks(ctx: &RawTracePointContext, flags_arg: usize) -> bool {
    syscall_arg(ctx, flags_arg) & MSG_PEEK != 0
}

/// `recvmsg`/`sendmsg`: the iovec array is inside the user's `struct msghdr`.
fn remember_msg(ctx: &RawTracePointContext, direction: u32) {
    let Some((tid, fd, kind)) = gate(ctx, CALL_IOV, direction) else {
        return;
    };
    if kind != CALL_IOV {
        remember_call(tid, Call::data(kind, fd, direction, 0, 0));
        return;
    }
    let msg = syscall_arg(ctx, 1);
    // struct user_msghdr { void *name; int namelen; struct iovec *iov; size_t iovlen; ... }
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
    remember_call(
        tid,
        Call::data(CALL_IOV, fd, direction, iov, iov_len as u32),
    );
}

fn finish(ctx: &RawTracePointContext) {
    let (pid, tid) = current();
    // SAFETY: copied out before removal.
    let Some(call) = (unsafe { INFLIGHT.get(tid) }).copied() else {
        return;
    };
    let _ = INFLIGHT.remove(tid);
    if call.kind != CALL_BUF && call.kind != CALL_IOV && call.kind != CALL_SENDFILE {
        return;
    }
    let ret = syscall_ret(ctx);
    if ret <= 0 {
        return;
    }
    emit_data(pid, tid, &call, ret as u64, SOURCE_SYSCALL);
}

/// Send a Data record: the header and up to the configured number of bytes of `call`'s
/// buffer (or iovecs), of which `len` were transferred.
pub fn emit_data(pid: u32, tid: u32, call: &Call, len: u64, source: u32) {
    let capture = capture_bytes();
    // Stamp the socket's byte counts: this record's place in its stream, and how far the
    // other direction had got. Counted before the ring buffer is tried, so a record that
    // does not make it shows as a gap.
    let (flags, offset, peer_offset, skip_until) = match tracked(pid, call.fd) {
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
    if call.kind == CALL_BUF && cap <= SMALL_PAYLOAD as u64 {
        // A small copy from one buffer goes straight into a fixed-size record reserved in
        // the ring: no scratch, no second copy.
        let Some(mut entry) = EVENTS.reserve::<SmallRecord>(0) else {
            count_drop(drop_reason::RINGBUF_FULL);
            return;
        };
        let record = entry.as_mut_ptr();
        let mut captured: u64 = 0;
        if cap > 0 {
            // SAFETY: cap <= SMALL_PAYLOAD, the size of the reserved payload.
            let rc = unsafe {
                read_raw(
                    core::ptr::addr_of_mut!((*record).payload) as *mut c_void,
                    cap as u32,
                    call.ptr as *const c_void,
                )
            };
            if rc == 0 {
                captured = cap;
            } else {
                count_drop(drop_reason::READ_FAILED);
            }
        }
        let head = data_header(
            pid,
            tid,
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
        entry.submit(wakeup_flags());
        return;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU map value, used by this program only while it runs.
    let buf = unsafe { (*scratch).buf.as_mut_ptr() };
    let mut captured: u64 = 0;
    if call.kind == CALL_BUF {
        if cap > 0 {
            // SAFETY: cap <= MAX_CAPTURE and the scratch buffer holds header + 2 * MAX_CAPTURE.
            let rc = unsafe {
                read_raw(
                    buf.add(DATA_HEADER_LEN) as *mut c_void,
                    cap as u32,
                    call.ptr as *const c_void,
                )
            };
            if rc == 0 {
                captured = cap;
            } else {
                count_drop(drop_reason::READ_FAILED);
            }
        }
    } else if call.kind == CALL_IOV {
        captured = copy_iovecs(buf, call, cap);
    }
    let header = data_header(
        pid,
        tid,
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
    if EVENTS.output::<[u8]>(record, wakeup_flags()).is_err() {
        count_drop(drop_reason::RINGBUF_FULL);
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

/// Every data syscall's exit: one program, in the exit slot of each data syscall, so the
/// verifier checks it once.
#[raw_tracepoint]
pub fn exit_data(ctx: RawTracePointContext) -> i32 {
    finish(&ctx);
    0
}

macro_rules! data_hooks {
    ($($enter:ident, $enter_tp:literal, $body:expr;)*) => {
        $(
            #[doc = concat!("Entry of `", $enter_tp, "`, tail-called from `sys_enter`.")]
            #[raw_tracepoint]
            pub fn $enter(ctx: RawTracePointContext) -> i32 {
                let f: fn(&RawTracePointContext) = $body;
                f(&ctx);
                0
            }
        )*
    };
}

data_hooks! {
    enter_read, "sys_enter_read",
        |ctx| remember(ctx, CALL_BUF, DIR_INGRESS, 1);
    enter_write, "sys_enter_write",
        |ctx| remember(ctx, CALL_BUF, DIR_EGRESS, 1);
    enter_recvfrom, "sys_enter_recvfrom",
        |ctx| if !peeks(ctx, 3) { remember(ctx, CALL_BUF, DIR_INGRESS, 1) };
    enter_sendto, "sys_enter_sendto",
        |ctx| remember(ctx, CALL_BUF, DIR_EGRESS, 1);
    enter_readv, "sys_enter_readv",
        |ctx| remember(ctx, CALL_IOV, DIR_INGRESS, 1);
    enter_writev, "sys_enter_writev",
        |ctx| remember(ctx, CALL_IOV, DIR_EGRESS, 1);
    enter_recvmsg, "sys_enter_recvmsg",
        |ctx| if !peeks(ctx, 2) { remember_msg(ctx, DIR_INGRESS) };
    enter_sendmsg, "sys_enter_sendmsg",
        |ctx| remember_msg(ctx, DIR_EGRESS);
    enter_sendfile, "sys_enter_sendfile64",
        |ctx| remember(ctx, CALL_SENDFILE, DIR_EGRESS, 1);
}
