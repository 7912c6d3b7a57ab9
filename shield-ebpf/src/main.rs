//! shield's XDP program: drop packets to protected ports whose source is
//! outside the allowed prefixes, before the kernel allocates anything.
//!
//! The policy is the README's "Packet policy", mirrored by the
//! reference classifier in `shield-userspace/src/policy.rs`, which the tests
//! run against this program packet by packet.
#![no_std]
#![no_main]

mod program;
mod tcp;

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_coarse_ns,
    macros::{map, xdp},
    maps::{lpm_trie::Key, Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use shield_common::{
    counter_index, map_specs, prefilter_index, CoveredWords, CpuCounters, DropEvent, EventBudget,
    FragmentPolicy, Policy, PortProtocol, Reason, COVERED_WORDS_PER_ENTRY,
    DROP_EVENTS_PER_CPU_PER_SECOND, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS,
};

// Sizes come from the one table of map layouts (`map_specs`), which the
// loader checks every pin against; the tests compare it with this object.
#[map]
static POLICY: Array<Policy> = Array::with_max_entries(map_specs::POLICY.max_entries, 0);

#[map]
static ALLOW_V4: LpmTrie<[u8; 4], u8> =
    LpmTrie::with_max_entries(map_specs::ALLOW_V4.max_entries, 0);

#[map]
static ALLOW_V6: LpmTrie<[u8; 16], u8> =
    LpmTrie::with_max_entries(map_specs::ALLOW_V6.max_entries, 0);

#[map]
static DESTINATIONS_V4: LpmTrie<[u8; 4], u8> =
    LpmTrie::with_max_entries(map_specs::DESTINATIONS_V4.max_entries, 0);

#[map]
static DESTINATIONS_V6: LpmTrie<[u8; 16], u8> =
    LpmTrie::with_max_entries(map_specs::DESTINATIONS_V6.max_entries, 0);

#[map]
static PREFILTER_V4: Array<u64> = Array::with_max_entries(map_specs::PREFILTER_V4.max_entries, 0);

#[map]
static COVERED_V4: Array<CoveredWords> =
    Array::with_max_entries(map_specs::COVERED_V4.max_entries, 0);

#[map]
static PREFILTER_V6: Array<u64> = Array::with_max_entries(map_specs::PREFILTER_V6.max_entries, 0);

#[map]
static COOKIE_FLOWS: LruHashMap<[u32; 9], u32> =
    LruHashMap::with_max_entries(map_specs::COOKIE_FLOWS.max_entries, 0);

#[map]
static DROP_EVENTS: RingBuf = RingBuf::with_byte_size(map_specs::DROP_EVENTS.max_entries, 0);

#[map]
static COUNTERS: PerCpuArray<CpuCounters> =
    PerCpuArray::with_max_entries(map_specs::COUNTERS.max_entries, 0);

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

// Inlined into the macro's wrapper: the program is past the size at which
// LLVM would otherwise leave a BPF-to-BPF call on every packet's path.
#[xdp]
#[inline(always)]
pub fn shield(ctx: XdpContext) -> u32 {
    entry::<true>(&ctx)
}

/// `shield` without the answers to in-range SYNs and the ACK checks, for
/// kernels that refuse those (see `PROGRAM_WITHOUT_COOKIES`).
#[xdp]
#[inline(always)]
pub fn shield_no_cookies(ctx: XdpContext) -> u32 {
    entry::<false>(&ctx)
}

#[inline(always)]
fn entry<const COOKIES: bool>(ctx: &XdpContext) -> u32 {
    match try_shield::<COOKIES>(ctx) {
        Ok(action) => action,
        // Arrays always have their entries; passing is the safe answer if
        // the kernel ever says otherwise.
        Err(MissingEntry) => xdp_action::XDP_PASS,
    }
}

/// A map lookup that found nothing.
struct MissingEntry;

#[inline(always)]
fn try_shield<const COOKIES: bool>(ctx: &XdpContext) -> Result<u32, MissingEntry> {
    let policy = POLICY.get(0).ok_or(MissingEntry)?;
    let enforce = policy.settings.enforce != 0;
    // Each family gets its own copy of the judging code (generic over the
    // address), so the fast path never builds or matches a family enum.
    let reason = match ethernet(ctx) {
        // The plain shape (no options, extension headers, MF flag or offset,
        // a whole TCP or UDP header) gets its own copy of the judge, so its
        // walk's fields are constants there instead of values merged with
        // every other shape's and kept on the stack. Only that shape is
        // ever answered (`tcp::judge`), so the other copy leaves the answer
        // out and the verifier does not follow it twice.
        Some((ETH_P_IPV4, l3)) => match walk_plain_ipv4(ctx, l3) {
            Some(walk) => judge::<_, COOKIES, true>(ctx, Some(walk), policy),
            None => judge::<_, COOKIES, false>(ctx, walk_ipv4(ctx, l3), policy),
        },
        Some((ETH_P_IPV6, l3)) => match walk_plain_ipv6(ctx, l3) {
            Some(walk) => judge::<_, COOKIES, true>(ctx, Some(walk), policy),
            None => judge::<_, COOKIES, false>(ctx, walk_ipv6(ctx, l3), policy),
        },
        _ => Reason::NonIp,
    };
    let verdict = reason.verdict(enforce);
    // SAFETY: this CPU's own value, so no other writer races with this one.
    let cpu = unsafe { &mut *COUNTERS.get_ptr_mut(0).ok_or(MissingEntry)? };
    let counter = cpu
        .slots
        .get_mut(counter_index(verdict, reason) as usize)
        .ok_or(MissingEntry)?;
    counter.packets += 1;
    counter.bytes += (ctx.data_end() - ctx.data()) as u64;
    if reason.answers() {
        return Ok(xdp_action::XDP_TX);
    }
    if !reason.drops() {
        return Ok(xdp_action::XDP_PASS);
    }
    let drops_in_slot = counter.packets;
    report_drop(ctx, &mut cpu.event_budget, drops_in_slot, reason, enforce);
    Ok(if enforce {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    })
}

/// Sends a drop event to userspace, within this CPU's budget per second so
/// a flood cannot flood the ring or the log. Once the budget is spent only
/// every [`CLOCK_CHECK_EVERY`]th drop reads the clock, and the headers are
/// walked again only for an event that will be sent, so the flood's drop
/// path pays one load and a compare.
#[inline(always)]
fn report_drop(
    ctx: &XdpContext,
    budget: &mut EventBudget,
    drops_in_slot: u64,
    reason: Reason,
    enforce: bool,
) {
    // A spent budget is rechecked against the clock only every
    // CLOCK_CHECK_EVERY-th drop, counted by the slot this drop was counted
    // in: no extra state to update on the flood's path.
    if budget.emitted >= DROP_EVENTS_PER_CPU_PER_SECOND
        && !drops_in_slot.is_multiple_of(CLOCK_CHECK_EVERY)
    {
        return;
    }
    // SAFETY: the coarse clock has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now.wrapping_sub(budget.window_start_ns) >= 1_000_000_000 {
        budget.window_start_ns = now;
        budget.emitted = 0;
    }
    if budget.emitted >= DROP_EVENTS_PER_CPU_PER_SECOND {
        return;
    }
    budget.emitted += 1;
    let mut event = DropEvent {
        ifindex: ctx.ingress_ifindex() as u32,
        reason: reason as u32,
        enforced: enforce as u32,
        ..DropEvent::default()
    };
    let described = match ethernet(ctx) {
        Some((ETH_P_IPV4, l3)) => describe(walk_ipv4(ctx, l3), &mut event),
        Some((ETH_P_IPV6, l3)) => describe(walk_ipv6(ctx, l3), &mut event),
        _ => false,
    };
    if described {
        // A full ring drops the event; the counters still have the packet.
        let _ = DROP_EVENTS.output::<DropEvent>(&event, 0);
    }
}

/// Fills the event's source and port from the walk; false when the packet
/// has no readable source, which leaves nothing worth reporting.
#[inline(always)]
fn describe<A: Address>(walk: Option<Walk<A>>, event: &mut DropEvent) -> bool {
    let Some(walk) = walk else {
        return false;
    };
    walk.source.describe(event);
    if let Transport::Port(protocol, port, _) = walk.transport {
        event.port = port;
        event.protocol = match protocol {
            PortProtocol::Tcp => IPPROTO_TCP,
            PortProtocol::Udp => IPPROTO_UDP,
        };
    }
    true
}

/// `LEN` bytes of the packet from some offset, checked once against the
/// packet's end; fields inside are then read without another check.
#[derive(Clone, Copy)]
struct Header<const LEN: usize> {
    start: usize,
}

impl<const LEN: usize> Header<LEN> {
    #[inline(always)]
    fn at(ctx: &XdpContext, offset: usize) -> Option<Self> {
        let start = ctx.data() + offset;
        if start + LEN > ctx.data_end() {
            return None;
        }
        Some(Header { start })
    }

    /// The field of type `T` at byte `AT`; a field past `LEN` does not
    /// compile.
    #[inline(always)]
    fn field<T: Copy, const AT: usize>(self) -> T {
        const { assert!(AT + size_of::<T>() <= LEN) };
        // SAFETY: `at` checked that LEN bytes from `start` are inside the
        // packet, and the assertion keeps the field within them. Packet
        // fields sit at any alignment, hence the unaligned read (one load:
        // see build.rs).
        unsafe { core::ptr::read_unaligned((self.start + AT) as *const T) }
    }

    #[inline(always)]
    fn be16<const AT: usize>(self) -> u16 {
        u16::from_be(self.field::<u16, AT>())
    }

    /// Writes the field of type `T` at byte `AT`, bounded as [`Header::field`] is.
    #[inline(always)]
    fn set<T: Copy, const AT: usize>(self, value: T) {
        const { assert!(AT + size_of::<T>() <= LEN) };
        // SAFETY: as in `field`; XDP may write the packet it was given.
        unsafe { core::ptr::write_unaligned((self.start + AT) as *mut T, value) }
    }

    /// Where the header starts, for the helpers that read it.
    #[inline(always)]
    fn pointer(self) -> *mut core::ffi::c_void {
        self.start as *mut core::ffi::c_void
    }
}

/// The ethertype after at most [`MAX_VLAN_TAGS`] tags, and where the L3
/// header starts; `None` when the frame ends first.
#[inline(always)]
fn ethernet(ctx: &XdpContext) -> Option<(u16, usize)> {
    let mut ethertype = Header::<ETH_HEADER_LEN>::at(ctx, 0)?.be16::<12>();
    let mut offset = ETH_HEADER_LEN;
    // Untagged IP first: it is nearly every packet, floods included.
    if ethertype == ETH_P_IPV4 || ethertype == ETH_P_IPV6 {
        return Some((ethertype, offset));
    }
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = Header::<VLAN_TAG_LEN>::at(ctx, offset)?.be16::<2>();
        offset += VLAN_TAG_LEN;
    }
    Some((ethertype, offset))
}

/// The IP header of one family: how to judge its source, and what the
/// answers to TCP from inside the ranges need of it (`tcp`).
trait Address: Copy {
    /// IP and TCP fixed headers together: an MTU less this is the MSS.
    const HEADERS_LEN: u32;
    /// Whether an allowed prefix holds this address.
    fn is_allowed(&self) -> bool;
    /// Whether `[xdp].protected_destinations` holds the destination.
    fn to_protected_destination(&self) -> bool;
    fn describe(&self, event: &mut DropEvent);
    /// The fixed IP header and its length, for the socket helpers.
    fn header(&self) -> (*mut core::ffi::c_void, u32);
    /// Fills the socket tuple for a TCP segment whose ports (as on the
    /// wire) are `ports`; returns the tuple's size.
    fn tuple(&self, ports: u32, tuple: &mut [u32; 9]) -> u32;
    /// How many bytes the IP header says its payload holds.
    fn payload_len(&self) -> usize;
    /// The pseudo header's addresses, summed as native-order words for
    /// the TCP checksum (the order of source and destination is moot).
    fn address_sum(&self) -> u64;
    /// Makes the header the answer's: addresses swapped, fresh hop limit,
    /// no flow or fragment state, checksum recomputed.
    fn turn_around(&self);
}

/// The IPv4 header and its source, read once.
#[derive(Clone, Copy)]
struct V4 {
    source: [u8; 4],
    header: Header<IPV4_MIN_HEADER_LEN>,
}

/// The IPv6 header, whose source is read where it is needed: the
/// prefilter wants only its first bytes.
#[derive(Clone, Copy)]
struct V6(Header<IPV6_HEADER_LEN>);

const IPV6_SOURCE_AT: usize = 8;
const IPV6_DESTINATION_AT: usize = 24;

/// The hop limit of an answer, as Linux's default.
const ANSWER_TTL: u8 = 64;

impl Address for V4 {
    const HEADERS_LEN: u32 = (IPV4_MIN_HEADER_LEN + TCP_MIN_HEADER_LEN) as u32;

    /// A source whose /24 an allowed prefix covers is allowed without the
    /// trie walk: nearly all of Cloudflare's addresses, whose prefixes are
    /// all /24 or shorter.
    #[inline(always)]
    fn is_allowed(&self) -> bool {
        let index = prefilter_index(self.source);
        has_bit(&PREFILTER_V4, index)
            && (is_covered(index) || ALLOW_V4.get(Key::new(32, self.source)).is_some())
    }

    #[inline(always)]
    fn to_protected_destination(&self) -> bool {
        DESTINATIONS_V4
            .get(Key::new(32, self.header.field::<[u8; 4], 16>()))
            .is_some()
    }

    #[inline(always)]
    fn describe(&self, event: &mut DropEvent) {
        event.family = 4;
        event.source[..4].copy_from_slice(&self.source);
    }

    #[inline(always)]
    fn header(&self) -> (*mut core::ffi::c_void, u32) {
        (self.header.pointer(), IPV4_MIN_HEADER_LEN as u32)
    }

    #[inline(always)]
    fn tuple(&self, ports: u32, tuple: &mut [u32; 9]) -> u32 {
        tuple[0] = self.header.field::<u32, 12>();
        tuple[1] = self.header.field::<u32, 16>();
        tuple[2] = ports;
        12
    }

    #[inline(always)]
    fn payload_len(&self) -> usize {
        // Options count as payload: the answer asks only of a header
        // without them, and `tcp::judge_ack` only whether data may follow.
        (self.header.be16::<2>() as usize).saturating_sub(IPV4_MIN_HEADER_LEN)
    }

    #[inline(always)]
    fn address_sum(&self) -> u64 {
        self.header.field::<u32, 12>() as u64 + self.header.field::<u32, 16>() as u64
    }

    #[inline(always)]
    fn turn_around(&self) {
        let h = self.header;
        let source = h.field::<u32, 12>();
        let destination = h.field::<u32, 16>();
        h.set::<u32, 12>(destination);
        h.set::<u32, 16>(source);
        h.set::<u8, 1>(0);
        // Identification 0 and don't-fragment, as Linux sends a SYN-ACK.
        h.set::<u16, 4>(0);
        h.set::<u16, 6>(0x4000u16.to_be());
        h.set::<u8, 8>(ANSWER_TTL);
        h.set::<u16, 10>(0);
        let mut sum = 0u64;
        sum += h.field::<u32, 0>() as u64;
        sum += h.field::<u32, 4>() as u64;
        sum += h.field::<u32, 8>() as u64;
        sum += h.field::<u32, 12>() as u64;
        sum += h.field::<u32, 16>() as u64;
        h.set::<u16, 10>(tcp::fold(sum));
    }
}

impl Address for V6 {
    const HEADERS_LEN: u32 = (IPV6_HEADER_LEN + TCP_MIN_HEADER_LEN) as u32;

    #[inline(always)]
    fn is_allowed(&self) -> bool {
        may_be_allowed(&PREFILTER_V6, self.0.field::<[u8; 4], IPV6_SOURCE_AT>())
            && ALLOW_V6
                .get(Key::new(128, self.0.field::<[u8; 16], IPV6_SOURCE_AT>()))
                .is_some()
    }

    #[inline(always)]
    fn to_protected_destination(&self) -> bool {
        DESTINATIONS_V6
            .get(Key::new(
                128,
                self.0.field::<[u8; 16], IPV6_DESTINATION_AT>(),
            ))
            .is_some()
    }

    #[inline(always)]
    fn describe(&self, event: &mut DropEvent) {
        event.family = 6;
        event.source = self.0.field::<[u8; 16], IPV6_SOURCE_AT>();
    }

    #[inline(always)]
    fn header(&self) -> (*mut core::ffi::c_void, u32) {
        (self.0.pointer(), IPV6_HEADER_LEN as u32)
    }

    #[inline(always)]
    fn tuple(&self, ports: u32, tuple: &mut [u32; 9]) -> u32 {
        let h = self.0;
        tuple[0] = h.field::<u32, 8>();
        tuple[1] = h.field::<u32, 12>();
        tuple[2] = h.field::<u32, 16>();
        tuple[3] = h.field::<u32, 20>();
        tuple[4] = h.field::<u32, 24>();
        tuple[5] = h.field::<u32, 28>();
        tuple[6] = h.field::<u32, 32>();
        tuple[7] = h.field::<u32, 36>();
        tuple[8] = ports;
        36
    }

    #[inline(always)]
    fn payload_len(&self) -> usize {
        self.0.be16::<4>() as usize
    }

    #[inline(always)]
    fn address_sum(&self) -> u64 {
        let h = self.0;
        h.field::<u32, 8>() as u64
            + h.field::<u32, 12>() as u64
            + h.field::<u32, 16>() as u64
            + h.field::<u32, 20>() as u64
            + h.field::<u32, 24>() as u64
            + h.field::<u32, 28>() as u64
            + h.field::<u32, 32>() as u64
            + h.field::<u32, 36>() as u64
    }

    #[inline(always)]
    fn turn_around(&self) {
        let h = self.0;
        let source = h.field::<[u8; 16], 8>();
        let destination = h.field::<[u8; 16], 24>();
        h.set::<[u8; 16], 8>(destination);
        h.set::<[u8; 16], 24>(source);
        // Version 6, no traffic class or flow label.
        h.set::<u32, 0>(0x6000_0000u32.to_be());
        h.set::<u8, 7>(ANSWER_TTL);
    }
}

/// What the L3/L4 walk learned about the packet, before the source is judged.
#[derive(Clone, Copy)]
enum Transport {
    /// TCP or UDP to this destination port, its header at this offset.
    Port(PortProtocol, u16, usize),
    /// Some other protocol, or an IPv6 chain ending in a header we do not walk.
    Other,
    /// A non-first fragment: no transport header to read.
    NonFirstFragment,
    /// The port is unknowable: headers truncated, bad version or IHL, or an
    /// extension chain past the bound.
    Malformed,
}

struct Walk<A> {
    source: A,
    transport: Transport,
    fragment: bool,
}

impl<A> Walk<A> {
    #[inline(always)]
    fn malformed(source: A, fragment: bool) -> Option<Walk<A>> {
        Some(Walk {
            source,
            transport: Transport::Malformed,
            fragment,
        })
    }
}

/// The policy, given the walk (`None`: IP, but too short to hold a source).
/// `ANSWERS`: whether the walk's shape may be answered with a cookie.
#[inline(always)]
fn judge<A: Address, const COOKIES: bool, const ANSWERS: bool>(
    ctx: &XdpContext,
    walk: Option<Walk<A>>,
    policy: &Policy,
) -> Reason {
    let Some(walk) = walk else {
        return Reason::Malformed;
    };
    // Checked only where the verdict could be a drop or an answer, so the
    // scope costs nothing to traffic that passes anyway.
    let scoped = policy.settings.scoped_destinations != 0;
    let out_of_scope = |source: &A| scoped && !source.to_protected_destination();
    if walk.fragment && policy.settings.fragments == FragmentPolicy::DropOutside as u32 {
        if out_of_scope(&walk.source) {
            return Reason::UnprotectedDestination;
        }
        return judge_source(walk.source, Reason::Fragment);
    }
    match walk.transport {
        Transport::Port(protocol, port, l4) => {
            if !policy.protects(protocol, port) {
                return Reason::Unprotected;
            }
            if out_of_scope(&walk.source) {
                return Reason::UnprotectedDestination;
            }
            if !walk.source.is_allowed() {
                return Reason::OutsideRanges;
            }
            let settings = &policy.settings;
            match protocol {
                PortProtocol::Udp if settings.drop_udp_from_ranges != 0 => Reason::UdpFromRanges,
                PortProtocol::Tcp if COOKIES && settings.syn_cookies != 0 => {
                    tcp::judge::<_, ANSWERS>(ctx, &walk, l4, settings)
                }
                _ => Reason::Allowed,
            }
        }
        Transport::Other => Reason::Unprotected,
        Transport::NonFirstFragment => Reason::NonFirstFragment,
        Transport::Malformed if out_of_scope(&walk.source) => Reason::UnprotectedDestination,
        Transport::Malformed => judge_source(walk.source, Reason::Malformed),
    }
}

#[inline(always)]
fn judge_source<A: Address>(source: A, otherwise: Reason) -> Reason {
    if source.is_allowed() {
        Reason::Allowed
    } else {
        otherwise
    }
}

/// The prefilter bit of the source's /24: clear means no allowed prefix
/// can hold it, so the trie walk is skipped.
#[inline(always)]
fn may_be_allowed(prefilter: &Array<u64>, first_four: [u8; 4]) -> bool {
    has_bit(prefilter, prefilter_index(first_four))
}

/// Bit `index` (a /24, as [`prefilter_index`]) of `COVERED_V4`.
#[inline(always)]
fn is_covered(index: u32) -> bool {
    let Some(words) = COVERED_V4.get(index / COVERED_WORDS_PER_ENTRY / 64) else {
        return false;
    };
    match words.get(((index / 64) % COVERED_WORDS_PER_ENTRY) as usize) {
        Some(word) => *word & (1u64 << (index & 63)) != 0,
        None => false,
    }
}

/// Bit `index` of a prefilter bitmap of /24s.
#[inline(always)]
fn has_bit(bitmap: &Array<u64>, index: u32) -> bool {
    match bitmap.get(index >> 6) {
        Some(word) => *word & (1u64 << (index & 63)) != 0,
        None => false,
    }
}

/// The walk of an unfragmented IPv4 header without options followed by a
/// whole TCP or UDP header, nearly every packet, floods included; `None`
/// for any other shape, which [`walk_ipv4`] then walks in full.
#[inline(always)]
fn walk_plain_ipv4(ctx: &XdpContext, offset: usize) -> Option<Walk<V4>> {
    let header = Header::<IPV4_MIN_HEADER_LEN>::at(ctx, offset)?;
    // Version 4, IHL 5; no MF flag and offset 0 (DF may be set).
    if header.field::<u8, 0>() != 0x45 || header.be16::<6>() & 0x3fff != 0 {
        return None;
    }
    let l4 = offset + IPV4_MIN_HEADER_LEN;
    let transport @ Transport::Port(..) = transport_at(ctx, header.field::<u8, 9>(), l4) else {
        return None;
    };
    Some(Walk {
        source: V4 {
            source: header.field::<[u8; 4], 12>(),
            header,
        },
        transport,
        fragment: false,
    })
}

#[inline(always)]
fn walk_ipv4(ctx: &XdpContext, offset: usize) -> Option<Walk<V4>> {
    let header = Header::<IPV4_MIN_HEADER_LEN>::at(ctx, offset)?;
    let source = V4 {
        source: header.field::<[u8; 4], 12>(),
        header,
    };
    let version_ihl = header.field::<u8, 0>();
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4
        || header_len < IPV4_MIN_HEADER_LEN
        || Header::<1>::at(ctx, offset + header_len - 1).is_none()
    {
        return Walk::malformed(source, false);
    }
    let fragment_field = header.be16::<6>();
    let fragment_offset = fragment_field & 0x1fff;
    let more_fragments = fragment_field & 0x2000 != 0;
    let transport = if fragment_offset != 0 {
        Transport::NonFirstFragment
    } else {
        transport_at(ctx, header.field::<u8, 9>(), offset + header_len)
    };
    Some(Walk {
        source,
        transport,
        fragment: fragment_offset != 0 || more_fragments,
    })
}

/// The walk of an IPv6 header followed directly by a whole TCP or UDP
/// header; `None` for any other shape, which [`walk_ipv6`] walks in full.
#[inline(always)]
fn walk_plain_ipv6(ctx: &XdpContext, offset: usize) -> Option<Walk<V6>> {
    let header = Header::<IPV6_HEADER_LEN>::at(ctx, offset)?;
    if header.field::<u8, 0>() >> 4 != 6 {
        return None;
    }
    let l4 = offset + IPV6_HEADER_LEN;
    let transport @ Transport::Port(..) = transport_at(ctx, header.field::<u8, 6>(), l4) else {
        return None;
    };
    Some(Walk {
        source: V6(header),
        transport,
        fragment: false,
    })
}

#[inline(always)]
fn walk_ipv6(ctx: &XdpContext, offset: usize) -> Option<Walk<V6>> {
    // The whole fixed header must be there, not just the source.
    let header = Header::<IPV6_HEADER_LEN>::at(ctx, offset)?;
    let source = V6(header);
    if header.field::<u8, 0>() >> 4 != 6 {
        return Walk::malformed(source, false);
    }
    let mut next_header = header.field::<u8, 6>();
    let mut offset = offset + IPV6_HEADER_LEN;
    // Transport right after the fixed header: a cut-short header here,
    // and every plain packet whose drop event re-walks it (`describe`),
    // skip the extension chain's loop.
    if next_header == IPPROTO_TCP || next_header == IPPROTO_UDP {
        return Some(Walk {
            source,
            transport: transport_at(ctx, next_header, offset),
            fragment: false,
        });
    }
    let mut fragment = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let header_len = match next_header {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let Some(ext) = Header::<2>::at(ctx, offset) else {
                    return Walk::malformed(source, fragment);
                };
                next_header = ext.field::<u8, 0>();
                (ext.field::<u8, 1>() as usize + 1) * 8
            }
            IPV6_AH => {
                let Some(ext) = Header::<2>::at(ctx, offset) else {
                    return Walk::malformed(source, fragment);
                };
                next_header = ext.field::<u8, 0>();
                (ext.field::<u8, 1>() as usize + 2) * 4
            }
            IPV6_FRAGMENT => {
                let Some(ext) = Header::<8>::at(ctx, offset) else {
                    return Walk::malformed(source, fragment);
                };
                let field = ext.be16::<2>();
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
                next_header = ext.field::<u8, 0>();
                8
            }
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
    // The whole minimal header must be there, not just the port.
    let port = match protocol {
        IPPROTO_TCP => Header::<TCP_MIN_HEADER_LEN>::at(ctx, offset).map(|h| h.be16::<2>()),
        IPPROTO_UDP => Header::<UDP_HEADER_LEN>::at(ctx, offset).map(|h| h.be16::<2>()),
        _ => return Transport::Other,
    };
    let protocol = if protocol == IPPROTO_TCP {
        PortProtocol::Tcp
    } else {
        PortProtocol::Udp
    };
    match port {
        Some(port) => Transport::Port(protocol, port, offset),
        None => Transport::Malformed,
    }
}
