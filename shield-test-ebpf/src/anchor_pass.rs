//! Benchmark anchor and veth helper: passes every packet. On a veth, a
//! frame sent with `XDP_TX` from the other end arrives only when this end
//! runs an XDP program, so the rows without a filter in XDP run this one.
#![no_std]
#![no_main]

mod program;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn anchor_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
