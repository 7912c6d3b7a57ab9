//! A program the verifier must refuse (it reads the packet without a bounds
//! check), so the tests can prove that a refusal reaches the operator with
//! the verifier's own explanation. Never loaded by shield itself.
#![no_std]
#![no_main]

mod program;

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn refused_by_verifier(ctx: XdpContext) -> u32 {
    // SAFETY: none, on purpose; the kernel refuses to load this, so it
    // never runs.
    unsafe { core::ptr::read_volatile(ctx.data() as *const u8) as u32 }
}
