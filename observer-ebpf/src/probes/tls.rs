//! TLS libraries: the plaintext of `SSL_read`/`SSL_write` (OpenSSL, BoringSSL) and of Go's
//! `crypto/tls.(*Conn).Read`/`Write`, and the `exec` tracepoint that lets the agent probe
//! programs started later.
//!
//! OpenSSL: the entry probe remembers the buffer by thread; a read or write syscall made
//! inside the call names the socket (see `maps::tls_socket`), and the return probe copies
//! what the call actually moved. No library struct is read, so any OpenSSL or BoringSSL
//! build works.
//!
//! Go: a goroutine can move between threads, so the socket is read from the `tls.Conn`
//! (`observer_common::go_layout`) and a read is keyed by goroutine (`R14` holds it in the
//! register ABI). Returns are probed at the function's `RET` instructions, never with a
//! uretprobe (which would corrupt Go's movable stacks).

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use observer_common::{
    drop_reason, go_layout, EventHeader, EventKind, SslKey, DIR_EGRESS, DIR_INGRESS, SOURCE_TLS,
};

use super::data::emit_data;
use crate::maps::{
    bind_tls, count_drop, current, is_agent, mark_tls, tls_wanted, tracked, wakeup_flags, Call,
    TlsCall, TlsThread, CALL_BUF, DIR_HANDSHAKE, EVENTS, GO_READS, INFLIGHT, NO_FD, TLS_SOCKETS,
    TLS_THREADS,
};

fn ssl_enter(ctx: &ProbeContext, direction: u32, ex: bool) {
    let (pid, tid) = current();
    if !tls_wanted(pid) {
        return;
    }
    // SAFETY: the context of a uprobe is the traced thread's registers.
    let regs = unsafe { &*ctx.regs };
    let call = TlsCall {
        ssl: regs.rdi,
        buf: regs.rsi,
        len_out: if ex { regs.rcx } else { 0 },
        fd: NO_FD,
        direction,
    };
    if let Some(thread) = TLS_THREADS.get_ptr_mut(tid) {
        // SAFETY: map values stay valid while the program runs.
        unsafe {
            (*thread).call = call;
            (*thread).in_call = 1;
        }
    } else {
        let thread = TlsThread {
            call,
            in_call: 1,
            last_read: NO_FD,
            pending: 0,
        };
        if TLS_THREADS.insert(tid, thread, 0).is_err() {
            count_drop(drop_reason::INFLIGHT_FULL);
        }
    }
}

#[uprobe]
pub fn ssl_read(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, DIR_INGRESS, false);
    0
}

#[uprobe]
pub fn ssl_write(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, DIR_EGRESS, false);
    0
}

#[uprobe]
pub fn ssl_read_ex(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, DIR_INGRESS, true);
    0
}

#[uprobe]
pub fn ssl_write_ex(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, DIR_EGRESS, true);
    0
}

/// `SSL_do_handshake`, `SSL_connect`, `SSL_accept`: no data, but a chance to learn the
/// socket before the first read or write.
#[uprobe]
pub fn ssl_handshake(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, DIR_HANDSHAKE, false);
    0
}

/// Return of every probed `SSL_*` function: `SSL_read`/`SSL_write` return the byte count,
/// the `_ex` forms return 1 and store the count; handshakes only bind the socket.
#[uretprobe]
pub fn ssl_return(ctx: RetProbeContext) -> u32 {
    let (pid, tid) = current();
    let Some(thread) = TLS_THREADS.get_ptr_mut(tid) else {
        return 0;
    };
    // SAFETY: map values stay valid while the program runs.
    let thread = unsafe { &mut *thread };
    if thread.in_call == 0 {
        return 0;
    }
    thread.in_call = 0;
    let call = thread.call;
    // SAFETY: the context of a uretprobe is the traced thread's registers.
    let ret = unsafe { (*ctx.regs).rax } as i32;
    let len = if call.direction == DIR_HANDSHAKE {
        0
    } else if call.len_out != 0 {
        if ret != 1 {
            0
        } else {
            // SAFETY: bpf_probe_read_user validates the user pointer.
            match unsafe { bpf_probe_read_user(call.len_out as *const u64) } {
                Ok(n) => n,
                Err(_) => {
                    count_drop(drop_reason::READ_FAILED);
                    0
                }
            }
        }
    } else if ret > 0 {
        ret as u64
    } else {
        0
    };
    // The socket: named by a syscall inside this call, else remembered for this library
    // object. A library with its own buffers (node's memory BIO) makes no syscall inside
    // the call: a read that returns data decrypts what this thread just read from the
    // socket; any other call hands its ciphertext to the socket right after, on this
    // thread, so the next socket write names it. Either guess is made once per object.
    let key = SslKey {
        pid,
        _pad: 0,
        ssl: call.ssl,
    };
    let fd = if call.fd != NO_FD {
        Some(call.fd)
    } else {
        // SAFETY: plain lookup, copied out.
        match unsafe { TLS_SOCKETS.get(key) } {
            Some(fd) => Some(*fd),
            None if call.direction == DIR_INGRESS && len > 0 && thread.last_read != NO_FD => {
                let fd = thread.last_read;
                let state = tracked(pid, fd);
                if let Some(state) = state {
                    bind_tls(pid, call.ssl, fd, state);
                }
                state.map(|_| fd)
            }
            None => {
                // Bound by this thread's next socket write (see `maps::tls_socket`).
                thread.pending = call.ssl;
                None
            }
        }
    };
    if len == 0 {
        return 0;
    }
    let Some(fd) = fd else {
        count_drop(drop_reason::TLS_NO_SOCKET);
        return 0;
    };
    emit_plaintext(pid, tid, 0, fd, call.direction, call.buf, len);
    0
}

#[inline(always)]
fn emit_plaintext(pid: u32, tid: u32, g: u64, fd: u32, direction: u32, buf: u64, len: u64) {
    emit_data(
        pid,
        tid,
        g,
        &Call::data(CALL_BUF, fd, direction, buf, 0),
        len,
        SOURCE_TLS,
    );
}

/// The socket behind a Go `*tls.Conn` wrapping a `*net.TCPConn`, marked as TLS so that the
/// syscall hooks skip its ciphertext.
fn go_socket(pid: u32, conn: u64) -> Option<u32> {
    // SAFETY: bpf_probe_read_user validates each user pointer.
    let fd = unsafe {
        let data = bpf_probe_read_user((conn + go_layout::CONN_DATA) as *const u64).ok()?;
        let netfd = bpf_probe_read_user((data + go_layout::TCPCONN_FD) as *const u64).ok()?;
        bpf_probe_read_user((netfd + go_layout::NETFD_SYSFD) as *const i64).ok()?
    };
    if !(0..=i32::MAX as i64).contains(&fd) {
        return None;
    }
    let fd = fd as u32;
    if let Some(state) = tracked(pid, fd) {
        mark_tls(state);
    }
    Some(fd)
}

/// `(*tls.Conn).Write(b []byte)`: receiver in RAX, `b` in RBX (pointer) and RCX (length).
/// The plaintext is complete at entry.
#[uprobe]
pub fn go_tls_write(ctx: ProbeContext) -> u32 {
    let (pid, tid) = current();
    if !tls_wanted(pid) {
        return 0;
    }
    // SAFETY: the context of a uprobe is the traced thread's registers.
    let regs = unsafe { &*ctx.regs };
    let (conn, buf, len) = (regs.rax, regs.rbx, regs.rcx);
    let Some(fd) = go_socket(pid, conn) else {
        count_drop(drop_reason::TLS_NO_SOCKET);
        return 0;
    };
    if len > 0 {
        emit_plaintext(pid, tid, regs.r14, fd, DIR_EGRESS, buf, len);
    }
    0
}

/// `(*tls.Conn).Read(b []byte)` entry: remember the buffer by goroutine.
#[uprobe]
pub fn go_tls_read(ctx: ProbeContext) -> u32 {
    let (pid, _) = current();
    if !tls_wanted(pid) {
        return 0;
    }
    // SAFETY: the context of a uprobe is the traced thread's registers.
    let regs = unsafe { &*ctx.regs };
    let Some(fd) = go_socket(pid, regs.rax) else {
        count_drop(drop_reason::TLS_NO_SOCKET);
        return 0;
    };
    let key = SslKey {
        pid,
        _pad: 0,
        ssl: regs.r14,
    };
    let call = TlsCall {
        ssl: regs.rax,
        buf: regs.rbx,
        len_out: 0,
        fd,
        direction: DIR_INGRESS,
    };
    if GO_READS.insert(key, call, 0).is_err() {
        count_drop(drop_reason::INFLIGHT_FULL);
    }
    0
}

/// `(*tls.Conn).Read` at one of its `RET` instructions: `n` in RAX.
#[uprobe]
pub fn go_tls_read_return(ctx: ProbeContext) -> u32 {
    let (pid, tid) = current();
    // SAFETY: the context of a uprobe is the traced thread's registers.
    let regs = unsafe { &*ctx.regs };
    let key = SslKey {
        pid,
        _pad: 0,
        ssl: regs.r14,
    };
    // SAFETY: copied out before removal.
    let Some(call) = (unsafe { GO_READS.get(key) }).copied() else {
        return 0;
    };
    let _ = GO_READS.remove(key);
    let n = regs.rax as i64;
    if n > 0 {
        emit_plaintext(pid, tid, regs.r14, call.fd, DIR_INGRESS, call.buf, n as u64);
    }
    0
}

/// A thread exited: its call in flight and TLS state can never finish.
#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn thread_exit(_ctx: TracePointContext) -> u32 {
    let (_, tid) = current();
    let _ = INFLIGHT.remove(tid);
    let _ = TLS_THREADS.remove(tid);
    0
}

/// A process replaced its program: tell the agent, which checks the new program for TLS
/// code (shared libraries are probed once for every process that maps them).
#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn process_exec(_ctx: TracePointContext) -> u32 {
    let (pid, tid) = current();
    if is_agent(pid) {
        return 0;
    }
    let record = EventHeader {
        kind: EventKind::Exec as u32,
        pid,
        tid,
        fd: 0,
        // SAFETY: plain helper call.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    if EVENTS
        .output::<EventHeader>(&record, wakeup_flags())
        .is_err()
    {
        count_drop(drop_reason::RINGBUF_FULL);
    }
    0
}
