//! Benchmark anchor: drops every packet and does nothing else, so
//! `cargo xtask bench xdp` can state shield's cost as a ratio to it.
#![no_std]
#![no_main]

mod program;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn anchor_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}
