//! Benchmark anchors: `anchor_drop` drops every packet and does nothing
//! else, so `cargo xtask bench xdp` can state shield's cost as a ratio to
//! it; `anchor_read_drop` also reads the headers' first cache line, which
//! any program that looks at a packet pays for (on a veth, a transfer
//! from the core that wrote the frame).
#![no_std]
#![no_main]

mod program;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn anchor_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Where an IPv4 source address starts in an untagged frame.
const IPV4_SOURCE: usize = 26;

#[xdp]
pub fn anchor_read_drop(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + IPV4_SOURCE + 1 > ctx.data_end() {
        return xdp_action::XDP_DROP;
    }
    // SAFETY: the byte is inside the packet (checked above), and a byte is
    // always aligned; volatile so the load is kept although its value is
    // not used. One byte pulls in the same cache line as the whole header.
    unsafe { core::ptr::read_volatile((start + IPV4_SOURCE) as *const u8) };
    xdp_action::XDP_DROP
}
