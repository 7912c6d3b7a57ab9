//! Definitions shared by the XDP program and userspace.
//!
//! Every number that both sides must agree on lives here exactly once: the
//! verdict reasons (which also size the counter map and name the `reason`
//! metric label), the map layouts, and the program settings.
#![no_std]

/// Generates [`Reason`] from one table: the enum, `COUNT`, `ALL`, names,
/// whether it drops, and the reverse lookup, so nothing is spelled twice.
///
/// Numbers are append-only. A reason's number is kernel state: it indexes
/// the pinned counter map that outlives every shield process, and it is in
/// the drop events. So a new reason takes the next free number, a number is
/// never reused or changed, and a retired reason leaves its number as a
/// hole. The compile-time checks below refuse numbers out of order or
/// beyond [`REASON_SLOTS`].
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident = $number:literal, $name:literal, $effect:ident;)*) => {
        /// Why the dataplane gave a packet its verdict.
        ///
        /// The discriminant indexes the counter map (see [`counter_index`]);
        /// the [`Reason::name`] is the `reason` label in metrics and
        /// `shield status`.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $($(#[$doc])* $variant = $number,)*
        }

        impl Reason {
            /// How many reasons exist today (at most [`REASON_SLOTS`]).
            pub const COUNT: usize = [$($number),*].len();

            /// Every reason, in number order.
            pub const ALL: [Reason; Reason::COUNT] = [$(Reason::$variant),*];

            /// The lower_snake_case name used as the `reason` label.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }

            /// What this reason does to the packet when enforcing.
            pub const fn effect(self) -> Effect {
                match self {
                    $(Reason::$variant => Effect::$effect,)*
                }
            }

            /// The reason with this number (from a drop event), if any.
            pub const fn from_u32(value: u32) -> Option<Reason> {
                match value {
                    $($number => Some(Reason::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

/// What a reason does to the packet when enforcing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// On to the kernel's stack.
    Pass,
    /// Dropped in XDP (passed and counted as a would-drop in monitor mode).
    Drop,
    /// Rewritten into the answer and sent back out of the interface it came
    /// in on (`XDP_TX`). Only an enforcing program answers.
    Answer,
}

reasons! {
    /// Not IPv4 or IPv6 after at most two VLAN tags (ARP, LLDP, ...), or an
    /// Ethernet header too short to say.
    NonIp = 0, "non_ip", Pass;
    /// IP, but not TCP/UDP to a protected port (SSH, ICMP, ESP, DNS replies).
    Unprotected = 1, "unprotected", Pass;
    /// Source inside the Cloudflare ranges or `extra_allow`.
    Allowed = 2, "allowed", Pass;
    /// A non-first fragment under `fragments = "judge-first"`.
    NonFirstFragment = 3, "non_first_fragment", Pass;
    /// TCP/UDP to a protected port from a source outside the ranges.
    OutsideRanges = 4, "outside_ranges", Drop;
    /// From outside the ranges, with headers too short or too deep to find
    /// the destination port.
    Malformed = 5, "malformed", Drop;
    /// A fragment from outside the ranges under `fragments = "drop-outside"`.
    Fragment = 6, "fragment", Drop;
    /// A SYN to a protected port from inside the ranges, answered in XDP
    /// with a SYN-ACK carrying the kernel's SYN cookie (`[xdp].syn_cookies`).
    SynCookie = 7, "syn_cookie", Answer;
    /// An ACK to a protected port from inside the ranges that matches no
    /// socket and carries no valid SYN cookie: a forged ACK flood.
    BadAck = 8, "bad_ack", Drop;
    /// UDP to a protected port from inside the ranges under
    /// `udp_from_ranges = "drop"`: Cloudflare sends no UDP to origins.
    UdpFromRanges = 9, "udp_from_ranges", Drop;
    /// TCP/UDP to a protected port of a local address outside
    /// `[xdp].protected_destinations` (one the DNS-only records point at):
    /// not judged.
    UnprotectedDestination = 10, "unprotected_destination", Pass;
}

impl Reason {
    /// Whether this reason drops the packet when enforcing.
    pub const fn drops(self) -> bool {
        matches!(self.effect(), Effect::Drop)
    }

    /// Whether the program answers the packet itself (`XDP_TX`).
    pub const fn answers(self) -> bool {
        matches!(self.effect(), Effect::Answer)
    }

    /// The verdict this reason gives under the given enforcement setting.
    /// A program in monitor mode never answers, so an answering reason has
    /// no other verdict.
    pub const fn verdict(self, enforce: bool) -> Verdict {
        match self.effect() {
            Effect::Pass => Verdict::Pass,
            Effect::Drop if enforce => Verdict::Drop,
            Effect::Drop => Verdict::WouldDrop,
            Effect::Answer => Verdict::Answered,
        }
    }
}

/// Generates [`Verdict`] from one table; the same append-only rule as
/// [`Reason`] holds (the number picks a row of counter slots), bounded by
/// [`VERDICT_SLOTS`].
macro_rules! verdicts {
    ($($(#[$doc:meta])* $variant:ident = $number:literal, $name:literal;)*) => {
        /// What happened to the packet; `WouldDrop` is monitor mode's drop.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Verdict {
            $($(#[$doc])* $variant = $number,)*
        }

        impl Verdict {
            /// How many verdicts exist today (at most [`VERDICT_SLOTS`]).
            pub const COUNT: usize = [$($number),*].len();

            /// Every verdict, in number order.
            pub const ALL: [Verdict; Verdict::COUNT] = [$(Verdict::$variant),*];

            /// The lower_snake_case name used as the `verdict` label.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Verdict::$variant => $name,)*
                }
            }

            /// The verdict with this number, if any.
            pub const fn from_u32(value: u32) -> Option<Verdict> {
                match value {
                    $($number => Some(Verdict::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

verdicts! {
    /// The packet went on to the kernel's stack.
    Pass = 0, "pass";
    /// The packet was dropped in XDP.
    Drop = 1, "drop";
    /// Monitor mode: it would have been dropped, and was passed.
    WouldDrop = 2, "would_drop";
    /// The program answered the packet itself (`XDP_TX`).
    Answered = 3, "answered";
}

/// Reasons the counter layout has room for. Part of the pinned layout: a
/// change here changes the size of every `COUNTERS` value, which restarts
/// the counts on upgrade, so it stays fixed while reasons are added below it.
pub const REASON_SLOTS: u32 = 32;

/// Verdicts the counter layout has room for. Part of the pinned layout, as
/// [`REASON_SLOTS`] is; today's verdicts fill it.
pub const VERDICT_SLOTS: u32 = 4;

/// Slots in the per-CPU counter array: one per possible (verdict, reason)
/// pair, so a flip of monitor mode never mixes drops with would-drops, and a
/// new reason or verdict lands in a slot that already exists.
pub const COUNTER_SLOTS: u32 = VERDICT_SLOTS * REASON_SLOTS;

/// Reasons today, their numbers in order, and room for at least 16 more.
const _: () = {
    assert!(Reason::COUNT + 16 <= REASON_SLOTS as usize);
    let mut i = 0;
    while i < Reason::COUNT {
        assert!((Reason::ALL[i] as u32) < REASON_SLOTS);
        assert!(i == 0 || (Reason::ALL[i - 1] as u32) < Reason::ALL[i] as u32);
        i += 1;
    }
};

/// Verdicts today, their numbers in order, within the layout.
const _: () = {
    assert!(Verdict::COUNT <= VERDICT_SLOTS as usize);
    let mut i = 0;
    while i < Verdict::COUNT {
        assert!((Verdict::ALL[i] as u32) < VERDICT_SLOTS);
        assert!(i == 0 || (Verdict::ALL[i - 1] as u32) < Verdict::ALL[i] as u32);
        i += 1;
    }
};

/// The counter slot of a (verdict, reason) pair. A power-of-two row length
/// keeps the index a shift and an add in the XDP program.
#[inline(always)]
pub const fn counter_index(verdict: Verdict, reason: Reason) -> u32 {
    verdict as u32 * REASON_SLOTS + reason as u32
}

/// One counter slot; userspace sums the CPUs at read time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// What to do with IP fragments (`[xdp].fragments`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragmentPolicy {
    /// Judge first fragments by port; pass the rest, which cannot reassemble
    /// without a first fragment that passed.
    JudgeFirst = 0,
    /// Drop every fragment from outside the ranges.
    DropOutside = 1,
}

/// The enforcement switches, part of [`Policy`]. All zero is the policy
/// before in-range floods were handled: SYNs, ACKs and UDP from inside the
/// ranges pass.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// 1: drop; 0: monitor mode (count would-drops, pass everything).
    pub enforce: u32,
    /// A [`FragmentPolicy`] discriminant.
    pub fragments: u32,
    /// 1: a SYN from inside the ranges to a protected TCP port is answered
    /// with a SYN cookie whenever the kernel would issue one, and an ACK
    /// that matches no socket and carries no valid cookie is dropped. Under
    /// `[xdp].syn_cookies` "flood" and "always" alike: they differ in the
    /// namespace's `net.ipv4.tcp_syncookies`, which decides when the kernel
    /// issues cookies.
    pub syn_cookies: u32,
    /// 1: UDP to protected ports from inside the ranges is dropped.
    pub drop_udp_from_ranges: u32,
    pub cookie: CookieOptions,
    /// 1: only packets to a destination in `DESTINATIONS_V4`/`_V6` are
    /// judged (`[xdp].protected_destinations` is not empty); 0: every
    /// destination is.
    pub scoped_destinations: u32,
    /// Zero. Keeps [`Policy`] free of padding before its `u64` words.
    pub reserved: u32,
}

impl Settings {
    /// These switches, with in-range packets passing.
    pub const fn new(enforce: bool, fragments: FragmentPolicy) -> Self {
        Settings {
            enforce: enforce as u32,
            fragments: fragments as u32,
            syn_cookies: 0,
            drop_udp_from_ranges: 0,
            cookie: CookieOptions {
                flags: 0,
                window_scale: 0,
                window: 0,
                mtu: 0,
            },
            scoped_destinations: 0,
            reserved: 0,
        }
    }
}

/// How the program builds a cookie's SYN-ACK so that the kernel, which
/// checks the returning ACK itself, agrees with every option in it. The
/// kernel takes a cookie connection's SACK and the client's window scale
/// back from the low bits of the echoed timestamp, so those ride on
/// timestamps, and only when its sysctls let it decode them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CookieOptions {
    /// [`COOKIE_TIMESTAMPS`], [`COOKIE_SACK`], [`COOKIE_WINDOW_SCALING`].
    pub flags: u32,
    /// The window scale the kernel gives a connection made from a cookie
    /// (its own receive scale), sent in the SYN-ACK.
    pub window_scale: u32,
    /// The receive window the SYN-ACK offers, before it is rounded down to
    /// the MSS (at most 65535: a SYN-ACK's window is never scaled).
    pub window: u32,
    /// The smallest MTU of the protected interfaces, which caps the MSS
    /// offered (the kernel offers its route's); 0: no cap.
    pub mtu: u32,
}

/// Timestamps may be mirrored: the kernel adds no per-connection offset
/// to them (`net.ipv4.tcp_timestamps = 2`), so an echoed value decodes.
pub const COOKIE_TIMESTAMPS: u32 = 1;
/// SACK may be offered (`net.ipv4.tcp_sack = 1`).
pub const COOKIE_SACK: u32 = 2;
/// Window scaling may be offered (`net.ipv4.tcp_window_scaling = 1`).
pub const COOKIE_WINDOW_SCALING: u32 = 4;

/// Protected ports are a bitmap per protocol, [`Policy::ports`]: the word
/// for `port` of protocol slot `p` is `p * PORT_WORDS + port / 64`.
pub const PORT_WORDS: u32 = 65536 / 64;
pub const PORT_MAP_WORDS: u32 = 2 * PORT_WORDS;

/// The single entry of the `POLICY` array map: the settings and the
/// protected ports together, so every packet makes one lookup for both
/// (each lookup is a measurable share of the drop path).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub settings: Settings,
    /// Bit `port % 64` of word [`port_word_index`].
    pub ports: [u64; PORT_MAP_WORDS as usize],
}

impl Policy {
    /// These settings and no protected port.
    pub const fn new(settings: Settings) -> Self {
        Policy {
            settings,
            ports: [0; PORT_MAP_WORDS as usize],
        }
    }

    /// Used by the XDP program on every TCP and UDP packet. The index is in
    /// range by construction; `get` keeps the check free of a panic path,
    /// which the verifier would refuse.
    #[inline(always)]
    pub fn protects(&self, protocol: PortProtocol, port: u16) -> bool {
        match self.ports.get(port_word_index(protocol, port) as usize) {
            Some(word) => *word & port_bit(port) != 0,
            None => false,
        }
    }

    pub const fn protect(&mut self, protocol: PortProtocol, port: u16) {
        self.ports[port_word_index(protocol, port) as usize] |= port_bit(port);
    }
}

/// The protocols whose destination ports can be protected.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortProtocol {
    Tcp = 0,
    Udp = 1,
}

pub const fn port_word_index(protocol: PortProtocol, port: u16) -> u32 {
    protocol as u32 * PORT_WORDS + (port as u32 >> 6)
}

pub const fn port_bit(port: u16) -> u64 {
    1u64 << (port & 63)
}

/// LPM-trie value: where an allowed prefix came from (for `classify`).
pub const PREFIX_FROM_RANGES: u8 = 1;
pub const PREFIX_FROM_EXTRA: u8 = 2;
/// Cloudflare's China Network (JD Cloud) ranges, `[ranges].china_network`.
pub const PREFIX_FROM_JDCLOUD: u8 = 3;

/// The prefilter: one bit per /24 (the top 24 bits of the source, for
/// IPv4 and IPv6 alike), set when some allowed prefix overlaps that /24.
/// A clear bit means "outside" without walking the LPM trie, which is what
/// most flood packets hit; a set bit still goes to the trie for the answer.
pub const PREFILTER_BITS: u32 = 1 << 24;
pub const PREFILTER_WORDS: u32 = PREFILTER_BITS / 64;

/// `COVERED_V4`: one bit per IPv4 /24, indexed as the prefilter, set when
/// an allowed prefix covers the whole /24, so a source there is allowed
/// without the trie walk (which, on a flood's random sources, costs more
/// than the rest of the path). The daemon keeps it a subset of what the
/// trie covers at every instant (see `apply_allowlist`), so a missing bit
/// only costs a walk. The words come in entries of
/// [`COVERED_WORDS_PER_ENTRY`], so the daemon can read and rewrite all of
/// it on every update in a few hundred map operations. IPv6 has no such
/// map: its allowed prefixes are all longer than the 24 bits indexed, so
/// no bit would ever be set.
pub const COVERED_WORDS_PER_ENTRY: u32 = 512;
pub const COVERED_ENTRIES: u32 = PREFILTER_WORDS / COVERED_WORDS_PER_ENTRY;

/// One entry of `COVERED_V4`.
pub type CoveredWords = [u64; COVERED_WORDS_PER_ENTRY as usize];

/// The prefilter bit for an address, from its first four bytes (the
/// fourth is ignored). One big-endian load and a shift: the XDP program
/// computes this for every flood packet.
pub const fn prefilter_index(first_four: [u8; 4]) -> u32 {
    u32::from_be_bytes(first_four) >> 8
}

/// Capacity of each allowlist trie; far above Cloudflare's ~20 prefixes so
/// `extra_allow` and future growth fit.
pub const MAX_PREFIXES: u32 = 16384;

/// Flows `COOKIE_FLOWS` remembers: each is needed for a few microseconds,
/// so this holds every connection opened in the last second or so at
/// several thousand a second before the oldest is forgotten.
pub const MAX_COOKIE_FLOWS: u32 = 8192;

/// Capacity of each protected-destination trie: a host's own addresses.
pub const MAX_DESTINATIONS: u32 = 1024;

/// IPv6 extension headers walked before giving up (`malformed`). Real
/// traffic carries at most two or three; eight leaves room for odd but
/// legitimate chains while keeping the loop verifier-friendly.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

/// VLAN tags walked (802.1Q and 802.1ad, in either order).
pub const MAX_VLAN_TAGS: usize = 2;

/// A sampled drop (or would-drop) reported to userspace through the
/// `DROP_EVENTS` ring buffer, so the operator sees who is being dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    /// IPv4 in the first 4 bytes, or the whole IPv6 address.
    pub source: [u8; 16],
    pub ifindex: u32,
    /// Destination port; 0 when unknown (malformed, fragments).
    pub port: u16,
    /// 4 or 6.
    pub family: u8,
    /// IP protocol number; 0 when unknown.
    pub protocol: u8,
    /// A [`Reason`] discriminant.
    pub reason: u32,
    /// 1 when the packet was dropped, 0 in monitor mode.
    pub enforced: u32,
}

/// The single entry of the per-CPU `COUNTERS` map: this CPU's counter
/// slots and its drop-event budget. One value for both, so a dropped packet
/// costs one per-CPU map lookup, not two.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuCounters {
    /// Indexed by [`counter_index`].
    pub slots: [Counter; COUNTER_SLOTS as usize],
    pub event_budget: EventBudget,
}

impl Default for CpuCounters {
    // Arrays longer than 32 have no derived `Default`.
    fn default() -> Self {
        CpuCounters {
            slots: [Counter {
                packets: 0,
                bytes: 0,
            }; COUNTER_SLOTS as usize],
            event_budget: EventBudget {
                window_start_ns: 0,
                emitted: 0,
            },
        }
    }
}

/// Events each CPU may emit per second; the rest are only counted.
pub const DROP_EVENTS_PER_CPU_PER_SECOND: u64 = 20;
pub const DROP_EVENTS_BYTES: u32 = 1 << 16;

/// Per-CPU state of the drop-event rate limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    pub window_start_ns: u64,
    pub emitted: u64,
}

/// The kind of a kernel map, as far as its pinned layout goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Array,
    PerCpuArray,
    LpmTrie,
    RingBuf,
    LruHash,
}

/// Where a map is pinned: once for every interface, or once per interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapScope {
    /// In the pin root, shared by every interface's program.
    Shared,
    /// In `ifaces/<name>/`, one per attached interface.
    PerInterface,
}

/// What a map holds, which decides how an upgrade may replace a pinned map
/// whose layout changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapContents {
    /// What the program filters by: a replacement must be filled before any
    /// program that reads it is attached.
    Policy,
    /// Counts: a replacement starts from zero.
    Counts,
    /// A ring of events in flight: a replacement starts empty.
    Events,
    /// Connections in their first round trip: a replacement starts empty,
    /// which costs such a connection at most a retransmission.
    Flows,
}

/// The layout of one of the XDP program's maps. The program declares its
/// maps from these numbers and userspace checks every pin against them,
/// so this table is the one description of the kernel state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// The map's name in the object, as `bpftool map` shows it, and its pin
    /// file name.
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub scope: MapScope,
    pub contents: MapContents,
}

/// The XDP program's maps.
pub mod map_specs {
    use super::*;
    use core::mem::size_of;

    pub const POLICY: MapSpec = MapSpec {
        name: "POLICY",
        kind: MapKind::Array,
        key_size: size_of::<u32>() as u32,
        value_size: size_of::<Policy>() as u32,
        max_entries: 1,
        scope: MapScope::Shared,
        contents: MapContents::Policy,
    };
    /// LPM keys are a `u32` prefix length and the address bytes.
    pub const ALLOW_V4: MapSpec = MapSpec {
        name: "ALLOW_V4",
        kind: MapKind::LpmTrie,
        key_size: (size_of::<u32>() + 4) as u32,
        value_size: size_of::<u8>() as u32,
        max_entries: MAX_PREFIXES,
        scope: MapScope::Shared,
        contents: MapContents::Policy,
    };
    pub const ALLOW_V6: MapSpec = MapSpec {
        name: "ALLOW_V6",
        kind: MapKind::LpmTrie,
        key_size: (size_of::<u32>() + 16) as u32,
        value_size: size_of::<u8>() as u32,
        max_entries: MAX_PREFIXES,
        scope: MapScope::Shared,
        contents: MapContents::Policy,
    };
    /// `[xdp].protected_destinations`, keyed as the allowlist is.
    pub const DESTINATIONS_V4: MapSpec = MapSpec {
        name: "DESTINATIONS_V4",
        max_entries: MAX_DESTINATIONS,
        ..ALLOW_V4
    };
    pub const DESTINATIONS_V6: MapSpec = MapSpec {
        name: "DESTINATIONS_V6",
        max_entries: MAX_DESTINATIONS,
        ..ALLOW_V6
    };
    pub const PREFILTER_V4: MapSpec = MapSpec {
        name: "PREFILTER_V4",
        kind: MapKind::Array,
        key_size: size_of::<u32>() as u32,
        value_size: size_of::<u64>() as u32,
        max_entries: PREFILTER_WORDS,
        scope: MapScope::Shared,
        contents: MapContents::Policy,
    };
    pub const PREFILTER_V6: MapSpec = MapSpec {
        name: "PREFILTER_V6",
        ..PREFILTER_V4
    };
    pub const COVERED_V4: MapSpec = MapSpec {
        name: "COVERED_V4",
        value_size: size_of::<CoveredWords>() as u32,
        max_entries: COVERED_ENTRIES,
        ..PREFILTER_V4
    };
    /// Flows whose cookie ACK the program passed, keyed by their socket
    /// tuple (`bpf_sock_tuple`: 12 bytes for IPv4, 36 for IPv6, the rest
    /// zero), valued by that ACK's acknowledgement number as on the wire.
    /// The kernel makes the flow's socket only when its stack takes that
    /// ACK, after the program has judged the rest of the driver's batch:
    /// the client's next segments, already behind it, find the listener
    /// alone and no longer carry the cookie's sequence number, and they
    /// pass here instead of being dropped as stray ACKs.
    pub const COOKIE_FLOWS: MapSpec = MapSpec {
        name: "COOKIE_FLOWS",
        kind: MapKind::LruHash,
        key_size: size_of::<[u32; 9]>() as u32,
        value_size: size_of::<u32>() as u32,
        max_entries: MAX_COOKIE_FLOWS,
        scope: MapScope::Shared,
        contents: MapContents::Flows,
    };
    /// A ring buffer has no key or value; its size is `max_entries` bytes.
    pub const DROP_EVENTS: MapSpec = MapSpec {
        name: "DROP_EVENTS",
        kind: MapKind::RingBuf,
        key_size: 0,
        value_size: 0,
        max_entries: DROP_EVENTS_BYTES,
        scope: MapScope::Shared,
        contents: MapContents::Events,
    };
    pub const COUNTERS: MapSpec = MapSpec {
        name: "COUNTERS",
        kind: MapKind::PerCpuArray,
        key_size: size_of::<u32>() as u32,
        value_size: size_of::<CpuCounters>() as u32,
        max_entries: 1,
        scope: MapScope::PerInterface,
        contents: MapContents::Counts,
    };

    /// Every map of the program.
    pub const ALL: [MapSpec; 11] = [
        POLICY,
        ALLOW_V4,
        ALLOW_V6,
        PREFILTER_V4,
        PREFILTER_V6,
        DROP_EVENTS,
        COUNTERS,
        DESTINATIONS_V4,
        DESTINATIONS_V6,
        COVERED_V4,
        COOKIE_FLOWS,
    ];
}

/// Map names, as `bpftool map` shows them.
pub mod map_names {
    use super::map_specs;

    pub const POLICY: &str = map_specs::POLICY.name;
    pub const ALLOW_V4: &str = map_specs::ALLOW_V4.name;
    pub const ALLOW_V6: &str = map_specs::ALLOW_V6.name;
    pub const PREFILTER_V4: &str = map_specs::PREFILTER_V4.name;
    pub const PREFILTER_V6: &str = map_specs::PREFILTER_V6.name;
    pub const DROP_EVENTS: &str = map_specs::DROP_EVENTS.name;
    pub const COUNTERS: &str = map_specs::COUNTERS.name;
    pub const DESTINATIONS_V4: &str = map_specs::DESTINATIONS_V4.name;
    pub const DESTINATIONS_V6: &str = map_specs::DESTINATIONS_V6.name;
    pub const COVERED_V4: &str = map_specs::COVERED_V4.name;
    pub const COOKIE_FLOWS: &str = map_specs::COOKIE_FLOWS.name;
}

/// The name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "shield";

/// The same program without the answers to SYNs and the ACK checks from
/// inside the ranges, which need `bpf_loop` (Linux 5.17) and the socket
/// helpers: loaded where the kernel refuses [`PROGRAM_NAME`] and
/// `[xdp].syn_cookies` is not "always". UDP from inside still drops.
pub const PROGRAM_WITHOUT_COOKIES: &str = "shield_no_cookies";

/// Per-interface attachment record kept in a pinned one-entry array, so
/// `shield status` can tell the mode while the daemon is down.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceState {
    pub ifindex: u32,
    /// An [`AttachMode`] discriminant.
    pub mode: u32,
    /// Seconds since the Unix epoch when the current program was attached.
    pub attached_at: u64,
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    Native = 1,
    Generic = 2,
}

impl AttachMode {
    pub const fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        }
    }

    pub const fn from_u32(value: u32) -> Option<AttachMode> {
        match value {
            1 => Some(AttachMode::Native),
            2 => Some(AttachMode::Generic),
            _ => None,
        }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;

    /// Map values the kernel and userspace exchange as plain bytes.
    macro_rules! pod {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: a #[repr(C)] struct of integers (or arrays and
            // structs of them) without padding holes that the kernel
            // could read as uninitialised; any bit pattern is valid.
            unsafe impl aya::Pod for $t {}
        )*};
    }

    pod!(
        Counter,
        CpuCounters,
        Settings,
        CookieOptions,
        Policy,
        InterfaceState,
        DropEvent
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_slots_are_distinct_and_in_range() {
        let mut seen = [false; COUNTER_SLOTS as usize];
        for verdict in Verdict::ALL {
            for reason in Reason::ALL {
                let index = counter_index(verdict, reason) as usize;
                assert!(index < COUNTER_SLOTS as usize);
                assert!(!seen[index], "slot {index} used twice");
                seen[index] = true;
            }
        }
    }

    #[test]
    fn reasons_round_trip_through_u32() {
        for reason in Reason::ALL {
            assert_eq!(Reason::from_u32(reason as u32), Some(reason));
        }
        let known = (0..REASON_SLOTS)
            .filter(|&n| Reason::from_u32(n).is_some())
            .count();
        assert_eq!(known, Reason::COUNT);
        for verdict in Verdict::ALL {
            assert_eq!(Verdict::from_u32(verdict as u32), Some(verdict));
        }
        assert_eq!(Verdict::from_u32(VERDICT_SLOTS), None);
    }

    /// The numbers are in pinned kernel maps and drop events that outlive
    /// a shield process: a change here breaks an upgrade. Only append.
    #[test]
    fn numbers_never_change() {
        let reasons: [(u32, &str); 11] = [
            (0, "non_ip"),
            (1, "unprotected"),
            (2, "allowed"),
            (3, "non_first_fragment"),
            (4, "outside_ranges"),
            (5, "malformed"),
            (6, "fragment"),
            (7, "syn_cookie"),
            (8, "bad_ack"),
            (9, "udp_from_ranges"),
            (10, "unprotected_destination"),
        ];
        for (number, name) in reasons {
            assert_eq!(Reason::from_u32(number).map(Reason::name), Some(name));
        }
        for (number, name) in [(0, "pass"), (1, "drop"), (2, "would_drop"), (3, "answered")] {
            assert_eq!(Verdict::from_u32(number).map(Verdict::name), Some(name));
        }
        // The slot layout itself: row length and count.
        assert_eq!((REASON_SLOTS, VERDICT_SLOTS), (32, 4));
        assert_eq!(
            counter_index(Verdict::Drop, Reason::OutsideRanges),
            REASON_SLOTS + 4
        );
    }

    #[test]
    fn counter_values_have_room_to_grow() {
        assert!(Reason::COUNT + 16 <= REASON_SLOTS as usize);
        assert!(Verdict::COUNT <= VERDICT_SLOTS as usize);
        assert_eq!(
            map_specs::COUNTERS.value_size as usize,
            COUNTER_SLOTS as usize * core::mem::size_of::<Counter>()
                + core::mem::size_of::<EventBudget>()
        );
    }

    #[test]
    fn map_spec_names_are_distinct() {
        for (i, a) in map_specs::ALL.iter().enumerate() {
            for b in &map_specs::ALL[i + 1..] {
                assert_ne!(a.name, b.name);
            }
        }
    }

    #[test]
    fn ports_are_per_protocol() {
        let mut policy = Policy::new(Settings::new(true, FragmentPolicy::JudgeFirst));
        for port in [0, 63, 64, 443, 65535] {
            policy.protect(PortProtocol::Tcp, port);
        }
        for port in [0, 63, 64, 443, 65535] {
            assert!(policy.protects(PortProtocol::Tcp, port), "tcp {port}");
            assert!(!policy.protects(PortProtocol::Udp, port), "udp {port}");
        }
        assert!(!policy.protects(PortProtocol::Tcp, 444));
    }

    #[test]
    fn prefilter_index_is_the_top_24_bits() {
        assert_eq!(prefilter_index([0x01, 0x02, 0x03, 0xff]), 0x01_02_03);
        assert_eq!(
            prefilter_index([0xff, 0xff, 0xff, 0x00]),
            PREFILTER_BITS - 1
        );
    }

    #[test]
    fn only_drop_reasons_drop() {
        assert_eq!(Reason::Allowed.verdict(true), Verdict::Pass);
        assert_eq!(Reason::OutsideRanges.verdict(true), Verdict::Drop);
        assert_eq!(Reason::OutsideRanges.verdict(false), Verdict::WouldDrop);
        assert_eq!(Reason::Malformed.verdict(false), Verdict::WouldDrop);
        assert_eq!(Reason::BadAck.verdict(false), Verdict::WouldDrop);
        assert_eq!(Reason::UdpFromRanges.verdict(true), Verdict::Drop);
        assert_eq!(Reason::SynCookie.verdict(true), Verdict::Answered);
        assert!(Reason::SynCookie.answers() && !Reason::SynCookie.drops());
    }

    /// Padding in a pinned value would hold bytes the kernel never
    /// initialised; every field is a u32 or made of them.
    #[test]
    fn settings_have_no_padding() {
        assert_eq!(core::mem::size_of::<CookieOptions>(), 16);
        assert_eq!(core::mem::size_of::<Settings>(), 6 * 4 + 16);
        assert_eq!(core::mem::size_of::<Settings>() % 8, 0);
    }
}
