//! Definitions shared by the XDP program and userspace.
//!
//! Every number that both sides must agree on lives here exactly once: the
//! verdict reasons (which also size the counter map and name the `reason`
//! metric label), the map layouts, and the program settings.
#![no_std]

/// Why the dataplane gave a packet its verdict.
///
/// The discriminant indexes the counter map (see [`counter_index`]); the
/// [`Reason::name`] is the `reason` label in metrics and `shield status`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not IPv4 or IPv6 after at most two VLAN tags (ARP, LLDP, ...), or an
    /// Ethernet header too short to say.
    NonIp = 0,
    /// IP, but not TCP/UDP to a protected port (SSH, ICMP, ESP, DNS replies).
    Unprotected = 1,
    /// Source inside the Cloudflare ranges or `extra_allow`.
    Allowed = 2,
    /// A non-first fragment under `fragments = "judge-first"`.
    NonFirstFragment = 3,
    /// TCP/UDP to a protected port from a source outside the ranges.
    OutsideRanges = 4,
    /// From outside the ranges, with headers too short or too deep to find
    /// the destination port.
    Malformed = 5,
    /// A fragment from outside the ranges under `fragments = "drop-outside"`.
    Fragment = 6,
}

impl Reason {
    pub const COUNT: usize = 7;

    pub const ALL: [Reason; Reason::COUNT] = [
        Reason::NonIp,
        Reason::Unprotected,
        Reason::Allowed,
        Reason::NonFirstFragment,
        Reason::OutsideRanges,
        Reason::Malformed,
        Reason::Fragment,
    ];

    /// The lower_snake_case name used as the `reason` label.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::NonIp => "non_ip",
            Reason::Unprotected => "unprotected",
            Reason::Allowed => "allowed",
            Reason::NonFirstFragment => "non_first_fragment",
            Reason::OutsideRanges => "outside_ranges",
            Reason::Malformed => "malformed",
            Reason::Fragment => "fragment",
        }
    }

    /// Whether this reason drops the packet when enforcing.
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Reason::OutsideRanges | Reason::Malformed | Reason::Fragment
        )
    }

    /// The verdict this reason gives under the given enforcement setting.
    pub const fn verdict(self, enforce: bool) -> Verdict {
        if !self.drops() {
            Verdict::Pass
        } else if enforce {
            Verdict::Drop
        } else {
            Verdict::WouldDrop
        }
    }

    pub const fn from_u32(value: u32) -> Option<Reason> {
        if (value as usize) < Reason::COUNT {
            Some(Reason::ALL[value as usize])
        } else {
            None
        }
    }
}

/// What happened to the packet; `WouldDrop` is monitor mode's drop.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Pass = 0,
    Drop = 1,
    WouldDrop = 2,
}

impl Verdict {
    pub const COUNT: usize = 3;
    pub const ALL: [Verdict; Verdict::COUNT] = [Verdict::Pass, Verdict::Drop, Verdict::WouldDrop];

    /// The lower_snake_case name used as the `verdict` label.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Drop => "drop",
            Verdict::WouldDrop => "would_drop",
        }
    }
}

/// Slots in the per-CPU counter array: one per (verdict, reason) pair, so a
/// flip of monitor mode never mixes drops with would-drops.
pub const COUNTER_SLOTS: u32 = (Verdict::COUNT * Reason::COUNT) as u32;

pub const fn counter_index(verdict: Verdict, reason: Reason) -> u32 {
    verdict as u32 * Reason::COUNT as u32 + reason as u32
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

/// The enforcement switches, part of [`Policy`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// 1: drop; 0: monitor mode (count would-drops, pass everything).
    pub enforce: u32,
    /// A [`FragmentPolicy`] discriminant.
    pub fragments: u32,
}

impl Settings {
    pub const fn new(enforce: bool, fragments: FragmentPolicy) -> Self {
        Settings {
            enforce: enforce as u32,
            fragments: fragments as u32,
        }
    }
}

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

/// The prefilter: one bit per /24 (the top 24 bits of the source, for
/// IPv4 and IPv6 alike), set when some allowed prefix overlaps that /24.
/// A clear bit means "outside" without walking the LPM trie, which is what
/// most flood packets hit; a set bit still goes to the trie for the answer.
pub const PREFILTER_BITS: u32 = 1 << 24;
pub const PREFILTER_WORDS: u32 = PREFILTER_BITS / 64;

/// The prefilter bit for an address, from its first four bytes (the
/// fourth is ignored). One big-endian load and a shift: the XDP program
/// computes this for every flood packet.
pub const fn prefilter_index(first_four: [u8; 4]) -> u32 {
    u32::from_be_bytes(first_four) >> 8
}

/// Capacity of each allowlist trie; far above Cloudflare's ~20 prefixes so
/// `extra_allow` and future growth fit.
pub const MAX_PREFIXES: u32 = 16384;

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuCounters {
    /// Indexed by [`counter_index`].
    pub slots: [Counter; COUNTER_SLOTS as usize],
    pub event_budget: EventBudget,
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

/// Map names, as `bpftool map` shows them.
pub mod map_names {
    pub const POLICY: &str = "POLICY";
    pub const ALLOW_V4: &str = "ALLOW_V4";
    pub const ALLOW_V6: &str = "ALLOW_V6";
    pub const PREFILTER_V4: &str = "PREFILTER_V4";
    pub const PREFILTER_V6: &str = "PREFILTER_V6";
    pub const DROP_EVENTS: &str = "DROP_EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
}

/// The name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "shield";

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
        assert_eq!(Reason::from_u32(Reason::COUNT as u32), None);
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
    }
}
