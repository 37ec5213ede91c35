//! Kernel programs of the observer: syscall tracepoints that follow TCP sockets and copy
//! the first bytes of what moves through them into a ring buffer.
//!
//! Nothing here blocks or alters the traced program: every failure is counted in `DROPS`
//! or ends the hook early.
#![no_std]
#![no_main]

mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it exists only for rustc.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
