//! TCP to a protected port from inside the ranges, where the allowlist
//! alone lets a forged flood through: a SYN is answered here with the
//! kernel's own SYN cookie, and an ACK that no socket expects is dropped.
//!
//! The cookie is the kernel's (`bpf_tcp_gen_syncookie`: its secret, its
//! MSS table, and only when the listener would issue one), so the kernel
//! checks the returning ACK itself and makes the connection as if it had
//! answered. Everything this module writes into the SYN-ACK must therefore
//! be what that check reads back: the MSS from the cookie, and SACK and the
//! client's window scale from the low bits of the timestamp we send.

use aya_ebpf::{
    bindings::{bpf_sock, tcphdr, BPF_F_CURRENT_NETNS},
    helpers::{
        bpf_ktime_get_ns, bpf_loop, bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie,
        bpf_tcp_gen_syncookie,
    },
    programs::XdpContext,
};
use shield_common::{Reason, Settings, COOKIE_SACK, COOKIE_TIMESTAMPS, COOKIE_WINDOW_SCALING};

use crate::{Address, Header, Walk, COOKIE_FLOWS, ETH_HEADER_LEN, TCP_MIN_HEADER_LEN};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

const TCP_LISTEN: u32 = 10;
const TCP_MAX_HEADER_LEN: usize = 60;
const SEGMENT_WORDS: usize = TCP_MAX_HEADER_LEN / 4;
/// Option bytes in the largest TCP header; every option step takes at
/// least one, so this many steps walk any header to its end.
const MAX_OPTION_BYTES: usize = TCP_MAX_HEADER_LEN - TCP_MIN_HEADER_LEN;

const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_WINDOW: u8 = 3;
const OPT_SACK_PERM: u8 = 4;
const OPT_TIMESTAMP: u8 = 8;

/// The low bits of a cookie's timestamp that carry the options, as the
/// kernel's cookie check decodes them.
const TS_OPTION_BITS: u32 = 6;
const TS_NO_WINDOW_SCALE: u32 = 0x0f;
const TS_SACK: u32 = 1 << 4;
/// The largest window scale TCP allows; the kernel clamps a larger one.
const MAX_WINDOW_SCALE: u8 = 14;

/// What to do with TCP from inside the ranges to a protected port; a SYN
/// is answered only with `ANSWERS`, which the caller gives the plain shape.
#[inline(always)]
pub(crate) fn judge<A: Address, const ANSWERS: bool>(
    ctx: &XdpContext,
    walk: &Walk<A>,
    l4: usize,
    settings: &Settings,
) -> Reason {
    let Some(tcp) = Header::<TCP_MIN_HEADER_LEN>::at(ctx, l4) else {
        return Reason::Allowed;
    };
    let flags = tcp.field::<u8, 13>();
    if flags & (SYN | ACK | RST | FIN) == SYN {
        // Monitor mode never answers; fragments and headers the answer
        // could not mirror go to the kernel, which has its own cookies.
        // Untagged frames only: the verifier follows the answer once per
        // place the IP header can start, and a VLAN-tagged SYN (rare: NICs
        // strip tags before XDP) is the kernel's, with its own cookies.
        if !ANSWERS
            || settings.enforce == 0
            || walk.fragment
            || l4 != ETH_HEADER_LEN + A::HEADERS_LEN as usize - TCP_MIN_HEADER_LEN
        {
            return Reason::Allowed;
        }
        return answer_syn(ctx, &walk.source, tcp, l4, settings);
    }
    if flags & (SYN | ACK) == ACK {
        return judge_ack(ctx, &walk.source, tcp);
    }
    Reason::Allowed
}

/// An ACK passes when a socket other than a listener owns it (an
/// established, request or time-wait socket), or when a listener owns it
/// and it carries a valid cookie; else no socket expects it. The kernel
/// makes a cookie's socket only when its stack takes the ACK, after this
/// program has judged the rest of the driver's batch, so the client's next
/// segments (a ClientHello over one MSS, as post-quantum key shares make
/// it) can still find the listener alone, and no longer carry the cookie's
/// sequence number: a segment with data of a flow whose cookie ACK passed,
/// acknowledging the same SYN-ACK, passes too (`COOKIE_FLOWS`).
#[inline(always)]
fn judge_ack<A: Address>(ctx: &XdpContext, source: &A, tcp: Header<TCP_MIN_HEADER_LEN>) -> Reason {
    let mut tuple = [0u32; 9];
    let tuple_len = source.tuple(tcp.field::<u32, 0>(), &mut tuple);
    let sk = lookup(ctx, &mut tuple, tuple_len);
    if sk.is_null() {
        return Reason::BadAck;
    }
    // SAFETY: a socket the lookup returned, not yet released.
    let state = unsafe { (*sk).state };
    let cookie = state == TCP_LISTEN && {
        let (ip, ip_len) = source.header();
        // SAFETY: the helper reads `ip_len` bytes of the IP header and the
        // fixed TCP header, both checked to be inside the packet.
        let checked = unsafe {
            bpf_tcp_check_syncookie(
                sk.cast(),
                ip,
                ip_len,
                tcp.pointer().cast::<tcphdr>(),
                TCP_MIN_HEADER_LEN as u32,
            )
        };
        checked == 0
    };
    // SAFETY: released exactly once, on every path that looked it up.
    unsafe { bpf_sk_release(sk.cast()) };
    if state != TCP_LISTEN {
        return Reason::Allowed;
    }
    // As on the wire: only compared.
    let ack = tcp.field::<u32, 8>();
    if cookie {
        // A full map forgets its oldest flow, which then risks only a
        // retransmission.
        let _ = COOKIE_FLOWS.insert(tuple, ack, 0);
        return Reason::Allowed;
    }
    // A pure ACK never needs this: the client sends one after the cookie
    // ACK only for data the server sent, from a socket that exists. Pure
    // ACKs, the flood's, skip the lookup.
    let header_len = (tcp.field::<u8, 12>() >> 4) as usize * 4;
    if source.payload_len() > header_len {
        // SAFETY: the value is read at once, not kept.
        if let Some(&expected) = unsafe { COOKIE_FLOWS.get(tuple) } {
            if expected == ack {
                return Reason::Allowed;
            }
        }
    }
    Reason::BadAck
}

#[inline(always)]
fn lookup(ctx: &XdpContext, tuple: &mut [u32; 9], tuple_len: u32) -> *mut bpf_sock {
    // SAFETY: the tuple is `tuple_len` bytes of initialised stack.
    unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx.cast(),
            tuple.as_mut_ptr().cast(),
            tuple_len,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    }
}

/// `value`, opaque to the optimiser, so the bounds checked on it next hold
/// for the register the verifier follows. The data offset times four
/// compiles to `(byte >> 2) & 60`, whose lower bound the verifier cannot
/// see, and a check made earlier on the byte is all the optimiser keeps.
#[inline(always)]
fn opaque(value: usize) -> usize {
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&value) }
}

/// What a SYN offered, as far as the answer mirrors it.
struct Offer {
    /// The client's window scale, when it offered scaling.
    window_scale: Option<u8>,
    sack: bool,
    /// The client's timestamp, when it sent one.
    timestamp: Option<u32>,
}

/// Reads the SYN's options from the stack copy of its header. `None` for
/// options that do not parse as the kernel would take them (a length under
/// two or past the header, a known option of the wrong length): such a SYN
/// is left to the kernel.
///
/// One option per call of [`option_step`], through `bpf_loop`: the
/// verifier checks the step once for each place an option can start, where
/// an inline loop makes it follow every combination of option lengths (too
/// many paths for its limit).
#[inline(always)]
fn read_offer(segment: &[u32; SEGMENT_WORDS], options_len: usize) -> Option<Offer> {
    let mut walk = OptionWalk {
        options: [0; OPTION_WORDS],
        len: options_len as u64,
        at: 0,
        bad: 0,
        window_scale: NO_WINDOW_SCALE,
        sack: 0,
        timestamp_seen: 0,
        timestamp: 0,
    };
    walk.options
        .copy_from_slice(&segment[TCP_MIN_HEADER_LEN / 4..]);
    // SAFETY: the callback is `option_step`, its context this walk, which
    // outlives the call.
    unsafe {
        bpf_loop(
            MAX_OPTION_BYTES as u32,
            option_step as *const () as *mut core::ffi::c_void,
            (&mut walk as *mut OptionWalk).cast(),
            0,
        )
    };
    if walk.bad != 0 {
        return None;
    }
    Some(Offer {
        window_scale: (walk.window_scale != NO_WINDOW_SCALE)
            .then_some((walk.window_scale as u8).min(MAX_WINDOW_SCALE)),
        sack: walk.sack != 0,
        timestamp: (walk.timestamp_seen != 0).then_some(walk.timestamp as u32),
    })
}

const OPTION_WORDS: usize = MAX_OPTION_BYTES / 4;
/// `OptionWalk::window_scale` before a window scale option is seen.
const NO_WINDOW_SCALE: u64 = u64::MAX;

/// The state of [`read_offer`]'s walk, shared with each step.
#[repr(C)]
struct OptionWalk {
    /// The option bytes, as the header's words.
    options: [u32; OPTION_WORDS],
    /// How many of them the header holds.
    len: u64,
    /// Where the next option starts.
    at: u64,
    /// 1 once an option is malformed.
    bad: u64,
    window_scale: u64,
    sack: u64,
    timestamp_seen: u64,
    timestamp: u64,
}

/// One option of the walk: 0 to go on, 1 to stop.
///
/// # Safety
/// `context` is the `OptionWalk` that `read_offer` passed to `bpf_loop`.
unsafe extern "C" fn option_step(_index: u64, context: *mut core::ffi::c_void) -> i64 {
    // SAFETY: as the caller promises.
    let walk = unsafe { &mut *context.cast::<OptionWalk>() };
    let at = walk.at as usize;
    let len = walk.len as usize;
    if at >= len || at >= MAX_OPTION_BYTES {
        return 1;
    }
    let kind = option_byte(&walk.options, at);
    if kind == OPT_EOL {
        return 1;
    }
    if kind == OPT_NOP {
        walk.at += 1;
        return 0;
    }
    let size = option_byte(&walk.options, at + 1) as usize;
    let valid = size >= 2
        && at + size <= len
        && match kind {
            OPT_MSS => size == 4,
            OPT_WINDOW => size == 3,
            OPT_SACK_PERM => size == 2,
            OPT_TIMESTAMP => size == 10,
            _ => true,
        };
    if !valid {
        walk.bad = 1;
        return 1;
    }
    match kind {
        OPT_WINDOW => walk.window_scale = option_byte(&walk.options, at + 2) as u64,
        OPT_SACK_PERM => walk.sack = 1,
        OPT_TIMESTAMP => {
            walk.timestamp_seen = 1;
            walk.timestamp = u32::from_be_bytes([
                option_byte(&walk.options, at + 2),
                option_byte(&walk.options, at + 3),
                option_byte(&walk.options, at + 4),
                option_byte(&walk.options, at + 5),
            ]) as u64;
        }
        // The MSS is read by the cookie helper; other options (TFO,
        // MPTCP, MD5, experiments) are not offered back.
        _ => {}
    }
    walk.at += size as u64;
    0
}

/// Option byte `at`, in wire order; 0 past the options.
#[inline(always)]
fn option_byte(options: &[u32; OPTION_WORDS], at: usize) -> u8 {
    // By shifts, not through a byte array: indexing one on the stack
    // compiles to pointer arithmetic the verifier refuses.
    let lane = at % 4;
    let shift = if cfg!(target_endian = "little") {
        lane * 8
    } else {
        (3 - lane) * 8
    };
    match options.get(at / 4) {
        Some(word) => (*word >> shift) as u8,
        None => 0,
    }
}

/// Answers a SYN with a cookie SYN-ACK, in place. `Allowed` (the SYN goes
/// on to the kernel) when no listener has the port, when the kernel would
/// issue no cookie (under "flood": its SYN queue is not full), or when the
/// SYN is one the answer must not mirror: with data, or with options that
/// do not parse.
#[inline(always)]
fn answer_syn<A: Address>(
    ctx: &XdpContext,
    source: &A,
    tcp: Header<TCP_MIN_HEADER_LEN>,
    l4: usize,
    settings: &Settings,
) -> Reason {
    // At most 60 by construction; the lower bound is compared on the
    // value itself (a range check compiles to a subtraction the verifier
    // does not carry back to it).
    let header_len = opaque(((tcp.field::<u8, 12>() >> 4) as usize) * 4);
    if header_len < TCP_MIN_HEADER_LEN || source.payload_len() != header_len {
        return Reason::Allowed;
    }
    // The cookie helper reads the whole header, options included, whose
    // length the verifier cannot bound against the packet: a stack copy,
    // word by word (each read checked against the packet's end). The
    // loops compare against opaque copies of the length, so that leaving
    // them at different words does not split what the verifier knows of
    // the length itself into as many states.
    //
    // The copy starts filled with a word of the packet, not zeros: every
    // word then holds an unknown value whichever word the copy stopped at,
    // and the verifier meets one state after the loop instead of one per
    // header length. Nothing reads past the header: the helper reads
    // `header_len` bytes, and the answer overwrites the rest.
    let mut segment = [tcp.field::<u32, 0>(); SEGMENT_WORDS];
    let copy_len = opaque(header_len);
    for (i, word) in segment.iter_mut().enumerate() {
        if i * 4 >= copy_len {
            break;
        }
        match Header::<4>::at(ctx, opaque(l4 + i * 4)) {
            Some(bytes) => *word = bytes.field::<u32, 0>(),
            None => return Reason::Allowed,
        }
    }
    let Some(offer) = read_offer(&segment, header_len - TCP_MIN_HEADER_LEN) else {
        return Reason::Allowed;
    };
    let mut tuple = [0u32; 9];
    let tuple_len = source.tuple(tcp.field::<u32, 0>(), &mut tuple);
    let sk = lookup(ctx, &mut tuple, tuple_len);
    if sk.is_null() {
        return Reason::Allowed;
    }
    let (ip, ip_len) = source.header();
    // SAFETY: the IP header and the stack copy of the TCP header, with
    // their lengths; the helper refuses anything but a listener.
    let cookie = unsafe {
        bpf_tcp_gen_syncookie(
            sk.cast(),
            ip,
            ip_len,
            segment.as_mut_ptr().cast::<tcphdr>(),
            header_len as u32,
        )
    };
    // SAFETY: released exactly once, on every path that looked it up.
    unsafe { bpf_sk_release(sk.cast()) };
    if cookie < 0 {
        return Reason::Allowed;
    }
    // The cookie's MSS (the client's, rounded down to the kernel's table),
    // no more than the interfaces carry: the kernel offers its route's.
    let limit = settings.cookie.mtu.saturating_sub(A::HEADERS_LEN);
    let mut mss = (cookie >> 32) as u32;
    if limit > 0 && mss > limit {
        mss = limit;
    }
    let answer_len = build_syn_ack(&mut segment, cookie as u32, mss as u16, &offer, settings);
    // The frame keeps its length and only the headers change, so the
    // answer must fit the SYN's header (see `build_syn_ack`).
    if answer_len > header_len {
        return Reason::Allowed;
    }
    let checksum = segment_checksum(&segment, header_len, source.address_sum());
    // The checksum's two bytes lead the word; the urgent pointer is zero.
    let [low, high] = checksum.to_ne_bytes();
    segment[4] = u32::from_ne_bytes([low, high, 0, 0]);
    let store_len = opaque(header_len);
    for (i, word) in segment.iter().enumerate() {
        if i * 4 >= store_len {
            break;
        }
        // Every word was read above, so every check here passes.
        if let Some(bytes) = Header::<4>::at(ctx, opaque(l4 + i * 4)) {
            bytes.set::<u32, 0>(*word);
        }
    }
    source.turn_around();
    swap_macs(ctx);
    Reason::SynCookie
}

/// Turns the SYN in `segment` into the SYN-ACK, options included, and
/// returns the length of what it wrote; the rest of the SYN's header is
/// zero (end of options). The options sit at fixed words, so no store's
/// place depends on the packet: the MSS in word 5, SACK-permitted or two
/// no-ops and the timestamp in words 6 to 8, the window scale in word 9.
/// Each answers an option the SYN carried, which took at least as many
/// bytes there, so the answer fits the SYN's header; the one exception is
/// the MSS, always sent, which a SYN with other options but no MSS may
/// leave no room for (the caller then leaves it to the kernel). A SYN
/// without options gets a bare header.
#[inline(always)]
fn build_syn_ack(
    segment: &mut [u32; SEGMENT_WORDS],
    cookie: u32,
    mss: u16,
    offer: &Offer,
    settings: &Settings,
) -> usize {
    // Ports swapped: the two halves of the first word, in wire order.
    segment[0] = segment[0].rotate_left(16);
    let their_seq = u32::from_be(segment[1]);
    segment[1] = cookie.to_be();
    segment[2] = their_seq.wrapping_add(1).to_be();
    let header_words = u32::from_be(segment[3]) >> 28;
    let window = window_for(settings.cookie.window, mss);
    // Data offset kept, flags SYN|ACK, the window.
    segment[3] = (header_words << 28 | ((SYN | ACK) as u32) << 16 | window as u32).to_be();
    // Checksum (filled in later) and urgent pointer.
    segment[4] = 0;
    for word in segment.iter_mut().skip(5) {
        *word = 0;
    }
    if header_words == 5 {
        return TCP_MIN_HEADER_LEN;
    }
    segment[5] = ((OPT_MSS as u32) << 24 | 4 << 16 | mss as u32).to_be();
    let flags = settings.cookie.flags;
    let Some(their_timestamp) = offer.timestamp.filter(|_| flags & COOKIE_TIMESTAMPS != 0) else {
        // Without timestamps the kernel can take back neither SACK nor a
        // window scale from the cookie, so neither is offered.
        return 24;
    };
    let sack = offer.sack && flags & COOKIE_SACK != 0;
    let their_scale = offer
        .window_scale
        .filter(|_| flags & COOKIE_WINDOW_SCALING != 0);
    let (first, second) = if sack {
        (OPT_SACK_PERM as u32, 2)
    } else {
        (OPT_NOP as u32, OPT_NOP as u32)
    };
    segment[6] = (first << 24 | second << 16 | (OPT_TIMESTAMP as u32) << 8 | 10).to_be();
    segment[7] = timestamp(their_scale, sack).to_be();
    segment[8] = their_timestamp.to_be();
    if their_scale.is_none() {
        return 36;
    }
    let ours = settings.cookie.window_scale.min(MAX_WINDOW_SCALE as u32);
    segment[9] = ((OPT_NOP as u32) << 24 | (OPT_WINDOW as u32) << 16 | 3 << 8 | ours).to_be();
    40
}

/// The SYN-ACK's window: the offered one rounded down to whole segments,
/// as Linux does, and never scaled.
#[inline(always)]
fn window_for(offered: u32, mss: u16) -> u16 {
    let offered = offered.min(u16::MAX as u32);
    let mss = mss as u32;
    let window = if mss > 0 && offered >= mss {
        offered - offered % mss
    } else {
        offered
    };
    window as u16
}

/// The timestamp a cookie SYN-ACK carries: the kernel's millisecond clock
/// with its low bits holding the client's window scale and SACK, never
/// ahead of the clock (the kernel's own cookie timestamps are built so).
#[inline(always)]
fn timestamp(their_scale: Option<u8>, sack: bool) -> u32 {
    // SAFETY: no preconditions; the same clock as the kernel's TCP clock.
    let now = (unsafe { bpf_ktime_get_ns() } / 1_000_000) as u32;
    let mut options = match their_scale {
        Some(scale) => scale as u32,
        None => TS_NO_WINDOW_SCALE,
    };
    if sack {
        options |= TS_SACK;
    }
    let mut value = (now >> TS_OPTION_BITS << TS_OPTION_BITS) | options;
    if value > now {
        value = value.wrapping_sub(1 << TS_OPTION_BITS);
    }
    value
}

/// The TCP checksum of a `len`-byte header in `segment`, whose words past
/// `len` are zero (so all are summed, each at a fixed place), and the
/// pseudo header with the given address sum.
#[inline(always)]
fn segment_checksum(segment: &[u32; SEGMENT_WORDS], len: usize, address_sum: u64) -> u16 {
    let mut sum = address_sum;
    // Protocol and TCP length, as the native-order halves of one word.
    sum += (6u16.to_be() as u32 + (len as u16).to_be() as u32) as u64;
    for word in segment {
        sum += *word as u64;
    }
    fold(sum)
}

/// One's-complement folds a sum of native-order words into a checksum
/// field, already inverted.
#[inline(always)]
pub(crate) fn fold(sum: u64) -> u16 {
    let mut sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    let mut sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[inline(always)]
fn swap_macs(ctx: &XdpContext) {
    if let Some(ethernet) = Header::<12>::at(ctx, 0) {
        let destination = ethernet.field::<[u8; 6], 0>();
        let source = ethernet.field::<[u8; 6], 6>();
        ethernet.set::<[u8; 6], 0>(source);
        ethernet.set::<[u8; 6], 6>(destination);
    }
}
