//! One file per hook family.
mod data;
mod sockets;
mod tls;

/// Argument `n` of a `syscalls:sys_enter_*` tracepoint (they are all 8-byte slots after
/// the 16-byte common header and syscall number).
#[inline(always)]
pub fn syscall_arg(ctx: &aya_ebpf::programs::TracePointContext, n: usize) -> u64 {
    use aya_ebpf::EbpfContext as _;
    // SAFETY: constant offset inside the tracepoint record of every sys_enter_* event.
    unsafe { *(ctx.as_ptr() as *const u8).add(16 + 8 * n).cast::<u64>() }
}

/// Return value of a `syscalls:sys_exit_*` tracepoint.
#[inline(always)]
pub fn syscall_ret(ctx: &aya_ebpf::programs::TracePointContext) -> i64 {
    use aya_ebpf::EbpfContext as _;
    // SAFETY: constant offset inside the tracepoint record of every sys_exit_* event.
    unsafe { *(ctx.as_ptr() as *const u8).add(16).cast::<i64>() }
}
