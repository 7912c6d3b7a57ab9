//! The flood bench's edge side of the veth: passes what is addressed to
//! the edge (its address in `EDGE`, network order) and drops the rest, so
//! the answers the receiver sends to a flood's forged sources leave the
//! bench as they would leave a host, instead of loading the edge's stack.
//! (It also makes the veth deliver XDP_TX frames to this end at all.)
#![no_std]
#![no_main]

mod program;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};

#[map]
static EDGE: Array<u32> = Array::with_max_entries(1, 0);

#[xdp]
pub fn sink(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 34 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: 34 bytes were checked to be inside the packet.
    let (ethertype, destination) = unsafe {
        (
            core::ptr::read_unaligned((start + 12) as *const u16),
            core::ptr::read_unaligned((start + 30) as *const u32),
        )
    };
    if ethertype != 0x0800u16.to_be() {
        return xdp_action::XDP_PASS;
    }
    match EDGE.get(0) {
        Some(edge) if *edge == destination => xdp_action::XDP_PASS,
        _ => xdp_action::XDP_DROP,
    }
}
