//! One file per hook family.
//!
//! Syscalls are hooked through the two raw syscall tracepoints, `sys_enter` and
//! `sys_exit`, each with one small dispatcher that tail-calls the program the agent put
//! in the table slot of the syscall's number (`ENTER_CALLS`, `EXIT_CALLS`); a syscall
//! with an empty slot costs the dispatcher and a failed tail call, nothing more. Measured
//! here, empty raw syscall hooks cost a small fraction of what the per-syscall
//! tracepoints cost (which build a perf record of the arguments on every call), even
//! though the raw ones run on every syscall. The arguments are read from the saved user
//! registers (x86-64 syscall ABI).
mod data;
mod sockets;
mod tls;

use aya_ebpf::{
    bindings::pt_regs,
    helpers::bpf_probe_read_kernel,
    macros::{map, raw_tracepoint},
    maps::ProgramArray,
    programs::RawTracePointContext,
};
use observer_common::SYSCALL_SLOTS;

/// Syscall number → the program that handles its entry.
#[map]
static ENTER_CALLS: ProgramArray = ProgramArray::with_max_entries(SYSCALL_SLOTS, 0);

/// Syscall number → the program that handles its return.
#[map]
static EXIT_CALLS: ProgramArray = ProgramArray::with_max_entries(SYSCALL_SLOTS, 0);

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let nr: i64 = ctx.arg(1);
    if (0..i64::from(SYSCALL_SLOTS)).contains(&nr) {
        // SAFETY: a tail call either jumps to a program of the same type or falls through.
        unsafe { ENTER_CALLS.tail_call(&ctx, nr as u32) };
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: the address of a field of the kernel's saved registers, read by the helper.
    let Ok(nr) = (unsafe { bpf_probe_read_kernel(core::ptr::addr_of!((*regs).orig_rax)) }) else {
        return 0;
    };
    if nr < u64::from(SYSCALL_SLOTS) {
        // SAFETY: as in `sys_enter`.
        unsafe { EXIT_CALLS.tail_call(&ctx, nr as u32) };
    }
    0
}

/// `__USER_CS`: the code segment of a 64-bit syscall. A 32-bit (compat) syscall has other
/// numbers (its 3 is `read`, where ours is `close`) and is not followed.
const USER_CS_64: u64 = 0x33;

/// The syscall was made by 64-bit code (its number means what the tables say).
#[inline(always)]
pub fn native(ctx: &RawTracePointContext) -> bool {
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: as in `sys_exit`.
    let cs = unsafe { bpf_probe_read_kernel(core::ptr::addr_of!((*regs).cs)) };
    cs == Ok(USER_CS_64)
}

/// Argument `n` of the syscall being entered (x86-64: rdi, rsi, rdx, r10, r8, r9).
#[inline(always)]
pub fn syscall_arg(ctx: &RawTracePointContext, n: usize) -> u64 {
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: addresses of fields of the kernel's saved registers, read by the helper.
    unsafe {
        let field = match n {
            0 => core::ptr::addr_of!((*regs).rdi),
            1 => core::ptr::addr_of!((*regs).rsi),
            2 => core::ptr::addr_of!((*regs).rdx),
            3 => core::ptr::addr_of!((*regs).r10),
            4 => core::ptr::addr_of!((*regs).r8),
            _ => core::ptr::addr_of!((*regs).r9),
        };
        bpf_probe_read_kernel(field).unwrap_or(0)
    }
}

/// Return value of the syscall being left.
#[inline(always)]
pub fn syscall_ret(ctx: &RawTracePointContext) -> i64 {
    ctx.arg(1)
}

/// Empty programs on the same two hooks, for the benchmark's floor (never attached by
/// the agent itself).
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn floor_sys_enter(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor_sys_exit(_ctx: RawTracePointContext) -> i32 {
    0
}
