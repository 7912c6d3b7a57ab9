//! What every XDP object of this crate needs besides its program: a panic
//! handler (the kernel has no unwinding; the verifier proves the loop
//! unreachable) and the license section the kernel reads to allow
//! GPL-only helpers.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
