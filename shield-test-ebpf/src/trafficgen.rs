//! Benchmark traffic generator: run with `BPF_PROG_TEST_RUN` in live-frames
//! mode, it sends its frame back out of the interface it was given
//! (`XDP_TX`), after giving it a fresh source address (the configured base
//! with random host bits) and source port, checksums updated to match, so
//! the receiver sees a flood from many sources that its stack accepts.
#![no_std]
#![no_main]

mod program;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};

/// What to vary: index 0 of `GENERATOR`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Generator {
    /// The source addresses: `base | (random & mask)`, host order.
    pub base: u32,
    pub mask: u32,
    /// Offset of the IPv4 header and of the TCP or UDP header.
    pub l3: u32,
    pub l4: u32,
    /// Where the transport checksum sits from `l4` (16 for TCP, 6 for UDP);
    /// 0: none to update (UDP without a checksum).
    pub checksum_at: u32,
    pub padding: u32,
    /// Nanoseconds between frames sent; 0: as fast as the loop goes.
    pub interval_ns: u64,
}

#[map]
static GENERATOR: Array<Generator> = Array::with_max_entries(1, 0);

/// When the next paced frame is due (the test run is on one CPU).
#[map]
static NEXT_SEND: Array<u64> = Array::with_max_entries(1, 0);

#[xdp]
pub fn trafficgen(ctx: XdpContext) -> u32 {
    try_trafficgen(&ctx).unwrap_or(xdp_action::XDP_ABORTED)
}

#[inline(always)]
fn try_trafficgen(ctx: &XdpContext) -> Option<u32> {
    let config = GENERATOR.get(0)?;
    if config.interval_ns != 0 {
        let next = NEXT_SEND.get_ptr_mut(0)?;
        // SAFETY: no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: the array's own value; one CPU runs the generator.
        unsafe {
            if now < *next {
                return Some(xdp_action::XDP_DROP);
            }
            // Behind by more than one interval (the run just started, or
            // a stall): start from now rather than send a burst.
            *next = if now - *next > config.interval_ns {
                now + config.interval_ns
            } else {
                *next + config.interval_ns
            };
        }
    }
    // SAFETY: no preconditions.
    let random = unsafe { bpf_get_prandom_u32() };
    let source = (config.base | (random & config.mask)).to_be();
    let port = ((random >> 16) as u16 | 1024).to_be();
    let l3 = (config.l3 & 0x3f) as usize;
    let l4 = (config.l4 & 0x7f) as usize;
    let ip = pointer::<20>(ctx, l3)?;
    let transport = pointer::<18>(ctx, l4)?;
    // SAFETY: both headers were checked to be inside the packet.
    unsafe {
        let old_source = core::ptr::read_unaligned((ip + 12) as *const u32);
        let old_port = core::ptr::read_unaligned(transport as *const u16);
        core::ptr::write_unaligned((ip + 12) as *mut u32, source);
        core::ptr::write_unaligned(transport as *mut u16, port);
        let ip_check = (ip + 10) as *mut u16;
        let sum = update(core::ptr::read_unaligned(ip_check), old_source, source);
        core::ptr::write_unaligned(ip_check, sum);
        if config.checksum_at == 16 {
            let check = (transport + 16) as *mut u16;
            let sum = update(core::ptr::read_unaligned(check), old_source, source);
            let sum = update16(sum, old_port, port);
            core::ptr::write_unaligned(check, sum);
        }
    }
    Some(xdp_action::XDP_TX)
}

#[inline(always)]
fn pointer<const LEN: usize>(ctx: &XdpContext, offset: usize) -> Option<usize> {
    let start = ctx.data() + offset;
    if start + LEN > ctx.data_end() {
        return None;
    }
    Some(start)
}

/// A checksum field after a 32-bit word it covers changed (RFC 1624).
#[inline(always)]
fn update(check: u16, old: u32, new: u32) -> u16 {
    let check = update16(check, old as u16, new as u16);
    update16(check, (old >> 16) as u16, (new >> 16) as u16)
}

/// A checksum field after a 16-bit word it covers changed:
/// HC' = ~(~HC + ~m + m'), in the field's own byte order throughout.
#[inline(always)]
fn update16(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = (!check) as u32 + (!old) as u32 + new as u32;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
