//! shield's XDP program: drop packets to protected ports whose source is
//! outside the allowed prefixes, before the kernel allocates anything.
//!
//! The policy is documented in SPEC.md ("Packet policy") and mirrored by the
//! reference classifier in `shield-userspace/src/policy.rs`, which the tests
//! run against this program packet by packet.
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_coarse_ns,
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, LpmTrie, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use shield_common::{
    counter_index, port_bit, port_word_index, prefilter_index, Counter, DropEvent, EventBudget,
    FragmentPolicy, PortProtocol, Reason, Settings, COUNTER_SLOTS, DROP_EVENTS_BYTES,
    DROP_EVENTS_PER_CPU_PER_SECOND, MAX_IPV6_EXT_HEADERS, MAX_PREFIXES, MAX_VLAN_TAGS,
    PORT_MAP_WORDS, PREFILTER_WORDS,
};

#[map]
static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[map]
static PORTS: Array<u64> = Array::with_max_entries(PORT_MAP_WORDS, 0);

#[map]
static ALLOW_V4: LpmTrie<[u8; 4], u8> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);

#[map]
static ALLOW_V6: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);

#[map]
static PREFILTER_V4: Array<u64> = Array::with_max_entries(PREFILTER_WORDS, 0);

#[map]
static PREFILTER_V6: Array<u64> = Array::with_max_entries(PREFILTER_WORDS, 0);

#[map]
static DROP_EVENTS: RingBuf = RingBuf::with_byte_size(DROP_EVENTS_BYTES, 0);

#[map]
static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

const ETH_HEADER_LEN: usize = 14;
const VLAN_TAG_LEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

const IPV4_MIN_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const TCP_MIN_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;

/// With the event budget spent, how many drops pass between clock reads. A
/// trickle after a flood is reported within this many drops.
const CLOCK_CHECK_EVERY: u64 = 64;

#[xdp]
pub fn shield(ctx: XdpContext) -> u32 {
    let enforce;
    let fragments;
    match SETTINGS.get(0) {
        Some(settings) => {
            enforce = settings.enforce != 0;
            fragments = settings.fragments;
        }
        // The array always has its entry; passing is the safe answer if the
        // kernel ever says otherwise.
        None => return xdp_action::XDP_PASS,
    }
    let reason = classify(&ctx, fragments);
    let verdict = reason.verdict(enforce);
    if let Some(counter) = COUNTERS.get_ptr_mut(counter_index(verdict, reason)) {
        // SAFETY: a per-CPU slot, so no other writer races with this one.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += (ctx.data_end() - ctx.data()) as u64;
        }
    }
    if !reason.drops() {
        return xdp_action::XDP_PASS;
    }
    report_drop(&ctx, reason, enforce);
    if enforce {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// Sends a drop event to userspace, within this CPU's budget per second so
/// a flood cannot flood the ring or the log. Once the budget is spent only
/// every [`CLOCK_CHECK_EVERY`]th drop reads the clock, and the headers are
/// walked again only for an event that will be sent, so the flood's drop
/// path pays a counter bump.
#[inline(always)]
fn report_drop(ctx: &XdpContext, reason: Reason, enforce: bool) {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's own slot; the coarse clock has no preconditions.
    unsafe {
        if (*budget).emitted >= DROP_EVENTS_PER_CPU_PER_SECOND {
            (*budget).suppressed += 1;
            if (*budget).suppressed % CLOCK_CHECK_EVERY != 0 {
                return;
            }
        }
        let now = bpf_ktime_get_coarse_ns();
        if now.wrapping_sub((*budget).window_start_ns) >= 1_000_000_000 {
            (*budget).window_start_ns = now;
            (*budget).emitted = 0;
            (*budget).suppressed = 0;
        }
        if (*budget).emitted >= DROP_EVENTS_PER_CPU_PER_SECOND {
            return;
        }
        (*budget).emitted += 1;
    }
    let Some(Some(walk)) = walk(ctx) else {
        return;
    };
    let mut event = DropEvent {
        ifindex: ctx.ingress_ifindex() as u32,
        reason: reason as u32,
        enforced: enforce as u32,
        ..DropEvent::default()
    };
    match &walk.source {
        Source::V4(address) => {
            event.family = 4;
            event.source[..4].copy_from_slice(address);
        }
        Source::V6(address) => {
            event.family = 6;
            event.source = *address;
        }
    }
    if let Transport::Port(protocol, port) = walk.transport {
        event.port = port;
        event.protocol = match protocol {
            PortProtocol::Tcp => IPPROTO_TCP,
            PortProtocol::Udp => IPPROTO_UDP,
        };
    }
    // A full ring drops the event; the counters still have the packet.
    let _ = DROP_EVENTS.output::<DropEvent>(&event, 0);
}

/// A bounds-checked pointer into the packet, or `None` past its end.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: ptr_at checked the bounds; packet data may be unaligned.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { core::ptr::read_unaligned(p) })
}

#[inline(always)]
fn read_be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    read::<[u8; 2]>(ctx, offset).map(u16::from_be_bytes)
}

/// The source address, once the IP header is found.
enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// What the L3/L4 walk learned about the packet, before the source is judged.
enum Transport {
    /// TCP or UDP to this destination port.
    Port(PortProtocol, u16),
    /// Some other protocol, or an IPv6 chain ending in a header we do not walk.
    Other,
    /// A non-first fragment: no transport header to read.
    NonFirstFragment,
    /// The port is unknowable: headers truncated, bad version or IHL, or an
    /// extension chain past the bound.
    Malformed,
}

struct Walk {
    source: Source,
    transport: Transport,
    fragment: bool,
}

#[inline(always)]
fn classify(ctx: &XdpContext, fragments: u32) -> Reason {
    let Some(walk) = walk(ctx) else {
        return Reason::NonIp;
    };
    let Some(walk) = walk else {
        // IP ethertype, but too short to hold a source address.
        return Reason::Malformed;
    };
    if walk.fragment && fragments == FragmentPolicy::DropOutside as u32 {
        return judge_source(&walk.source, Reason::Fragment);
    }
    match walk.transport {
        Transport::Port(protocol, port) => {
            if is_protected(protocol, port) {
                judge_source(&walk.source, Reason::OutsideRanges)
            } else {
                Reason::Unprotected
            }
        }
        Transport::Other => Reason::Unprotected,
        Transport::NonFirstFragment => Reason::NonFirstFragment,
        Transport::Malformed => judge_source(&walk.source, Reason::Malformed),
    }
}

#[inline(always)]
fn judge_source(source: &Source, otherwise: Reason) -> Reason {
    let allowed = match source {
        Source::V4(a) => {
            may_be_allowed(&PREFILTER_V4, [a[0], a[1], a[2]])
                && ALLOW_V4.get(Key::new(32, *a)).is_some()
        }
        Source::V6(a) => {
            may_be_allowed(&PREFILTER_V6, [a[0], a[1], a[2]])
                && ALLOW_V6.get(Key::new(128, *a)).is_some()
        }
    };
    if allowed {
        Reason::Allowed
    } else {
        otherwise
    }
}

/// The prefilter bit of the source's /24: clear means no allowed prefix
/// can hold it, so the trie walk is skipped.
#[inline(always)]
fn may_be_allowed(prefilter: &Array<u64>, top: [u8; 3]) -> bool {
    let index = prefilter_index(top);
    match prefilter.get(index >> 6) {
        Some(word) => *word & (1u64 << (index & 63)) != 0,
        None => false,
    }
}

#[inline(always)]
fn is_protected(protocol: PortProtocol, port: u16) -> bool {
    match PORTS.get(port_word_index(protocol, port)) {
        Some(word) => *word & port_bit(port) != 0,
        None => false,
    }
}

/// `None`: not IP. `Some(None)`: IP but no readable source. Otherwise the walk.
#[inline(always)]
fn walk(ctx: &XdpContext) -> Option<Option<Walk>> {
    let mut ethertype = read_be16(ctx, 12)?;
    let mut offset = ETH_HEADER_LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = read_be16(ctx, offset + 2)?;
        offset += VLAN_TAG_LEN;
    }
    match ethertype {
        ETH_P_IPV4 => Some(walk_ipv4(ctx, offset)),
        ETH_P_IPV6 => Some(walk_ipv6(ctx, offset)),
        _ => None,
    }
}

#[inline(always)]
fn walk_ipv4(ctx: &XdpContext, offset: usize) -> Option<Walk> {
    let header: [u8; IPV4_MIN_HEADER_LEN] = read(ctx, offset)?;
    let source = Source::V4([header[12], header[13], header[14], header[15]]);
    let version = header[0] >> 4;
    let header_len = ((header[0] & 0x0f) as usize) * 4;
    if version != 4
        || header_len < IPV4_MIN_HEADER_LEN
        || ptr_at::<u8>(ctx, offset + header_len - 1).is_none()
    {
        return Some(Walk {
            source,
            transport: Transport::Malformed,
            fragment: false,
        });
    }
    let fragment_field = u16::from_be_bytes([header[6], header[7]]);
    let fragment_offset = fragment_field & 0x1fff;
    let more_fragments = fragment_field & 0x2000 != 0;
    let fragment = fragment_offset != 0 || more_fragments;
    let transport = if fragment_offset != 0 {
        Transport::NonFirstFragment
    } else {
        transport_at(ctx, header[9], offset + header_len)
    };
    Some(Walk {
        source,
        transport,
        fragment,
    })
}

#[inline(always)]
fn walk_ipv6(ctx: &XdpContext, offset: usize) -> Option<Walk> {
    let version: u8 = read(ctx, offset)?;
    let source = Source::V6(read(ctx, offset + 8)?);
    // The whole fixed header must be there, not just the source.
    ptr_at::<[u8; IPV6_HEADER_LEN]>(ctx, offset)?;
    if version >> 4 != 6 {
        return Some(Walk {
            source,
            transport: Transport::Malformed,
            fragment: false,
        });
    }
    let mut next_header: u8 = read(ctx, offset + 6)?;
    let mut offset = offset + IPV6_HEADER_LEN;
    let mut fragment = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let header_len = match next_header {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => match read::<[u8; 2]>(ctx, offset) {
                Some([next, len]) => {
                    next_header = next;
                    (len as usize + 1) * 8
                }
                None => {
                    return Some(Walk {
                        source,
                        transport: Transport::Malformed,
                        fragment,
                    })
                }
            },
            IPV6_AH => match read::<[u8; 2]>(ctx, offset) {
                Some([next, len]) => {
                    next_header = next;
                    (len as usize + 2) * 4
                }
                None => {
                    return Some(Walk {
                        source,
                        transport: Transport::Malformed,
                        fragment,
                    })
                }
            },
            IPV6_FRAGMENT => match read::<[u8; 8]>(ctx, offset) {
                Some(header) => {
                    let field = u16::from_be_bytes([header[2], header[3]]);
                    let fragment_offset = field >> 3;
                    let more_fragments = field & 1 != 0;
                    // An atomic fragment (offset 0, no M flag, RFC 6946) is a
                    // whole packet and is judged like one.
                    if fragment_offset != 0 || more_fragments {
                        fragment = true;
                    }
                    if fragment_offset != 0 {
                        return Some(Walk {
                            source,
                            transport: Transport::NonFirstFragment,
                            fragment,
                        });
                    }
                    next_header = header[0];
                    8
                }
                None => {
                    return Some(Walk {
                        source,
                        transport: Transport::Malformed,
                        fragment,
                    })
                }
            },
            _ => {
                return Some(Walk {
                    source,
                    transport: transport_at(ctx, next_header, offset),
                    fragment,
                })
            }
        };
        offset += header_len;
    }
    // Still inside the extension chain after the bound.
    let transport = match next_header {
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_AH | IPV6_FRAGMENT => {
            Transport::Malformed
        }
        protocol => transport_at(ctx, protocol, offset),
    };
    Some(Walk {
        source,
        transport,
        fragment,
    })
}

#[inline(always)]
fn transport_at(ctx: &XdpContext, protocol: u8, offset: usize) -> Transport {
    let (protocol, min_len) = match protocol {
        IPPROTO_TCP => (PortProtocol::Tcp, TCP_MIN_HEADER_LEN),
        IPPROTO_UDP => (PortProtocol::Udp, UDP_HEADER_LEN),
        _ => return Transport::Other,
    };
    if ptr_at::<u8>(ctx, offset + min_len - 1).is_none() {
        return Transport::Malformed;
    }
    match read_be16(ctx, offset + 2) {
        Some(port) => Transport::Port(protocol, port),
        None => Transport::Malformed,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
