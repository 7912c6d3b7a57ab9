//! The reference classifier: the packet policy (README, "Packet policy")
//! as plain Rust over a byte slice.
//!
//! It is written independently of the XDP program (no shared parsing code)
//! so that the differential tests, which run both on the same packets, catch
//! a bug in either. `shield classify` uses it to explain a verdict.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnetwork::IpNetwork;
use shield_common::{
    CookieOptions, FragmentPolicy, PortProtocol, Reason, Verdict, COOKIE_TIMESTAMPS,
    MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS,
};

use crate::config::{SynCookies, UdpFromRanges, XdpConfig};

/// The allowed prefixes with the longest-prefix match the kernel's LPM trie
/// performs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    prefixes: Vec<IpNetwork>,
}

impl Allowlist {
    pub fn new(prefixes: impl IntoIterator<Item = IpNetwork>) -> Self {
        let mut prefixes: Vec<IpNetwork> = prefixes.into_iter().collect();
        prefixes.sort_by_key(|p| std::cmp::Reverse(p.prefix()));
        Allowlist { prefixes }
    }

    /// The longest allowed prefix holding `address`.
    pub fn longest_match(&self, address: IpAddr) -> Option<IpNetwork> {
        // Sorted longest first, so the first hit is the longest match.
        self.prefixes.iter().copied().find(|p| p.contains(address))
    }

    pub fn prefixes(&self) -> &[IpNetwork] {
        &self.prefixes
    }
}

/// The reference classifier, holding everything the verdict depends on:
/// the dataplane's settings and maps, and what the kernel's sockets say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classifier {
    pub enforce: bool,
    pub fragments: FragmentPolicy,
    pub protected_tcp_ports: BTreeSet<u16>,
    pub protected_udp_ports: BTreeSet<u16>,
    pub allowed: Allowlist,
    /// SYN cookies and the stray-ACK check (`[xdp].syn_cookies` not "off").
    pub syn_cookies: bool,
    pub drop_udp_from_ranges: bool,
    /// How cookie SYN-ACKs are built; decides which SYNs one fits.
    pub cookie: CookieOptions,
    pub sockets: Sockets,
    /// `[xdp].protected_destinations`: only packets to these are judged;
    /// empty, every destination is.
    pub destinations: Vec<IpNetwork>,
}

/// What the kernel's socket table holds, which the XDP program asks about
/// TCP from inside the ranges and a packet alone does not tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sockets {
    /// Ports with a TCP listener (on any address).
    pub listening: BTreeSet<u16>,
    /// Whether a listener issues SYN cookies now: `tcp_syncookies = 2`, or
    /// its SYN queue is full.
    pub issuing_cookies: bool,
    /// Flows a socket other than a listener owns (established, request or
    /// time-wait): source, source port, destination port.
    pub connections: BTreeSet<(IpAddr, u16, u16)>,
    /// ACKs that carry a cookie the kernel issued: source, source port,
    /// destination port, acknowledgement number.
    pub cookie_acks: BTreeSet<(IpAddr, u16, u16, u32)>,
    /// Flows whose cookie ACK the program passed before the kernel made
    /// their socket (`COOKIE_FLOWS`): source, source port, destination
    /// port, and that ACK's acknowledgement number, which their next
    /// segments with data carry too.
    pub cookie_flows: BTreeSet<(IpAddr, u16, u16, u32)>,
}

/// The verdict for one packet and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub reason: Reason,
    pub verdict: Verdict,
    /// The allowed prefix the source matched, when it was looked up and hit.
    pub matched: Option<IpNetwork>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verdict.name(), self.reason.name())?;
        if let Some(prefix) = self.matched {
            write!(f, " {prefix}")?;
        }
        Ok(())
    }
}

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const EXT_HOPOPTS: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_FRAGMENT: u8 = 44;
const EXT_AH: u8 = 51;
const EXT_DSTOPTS: u8 = 60;

fn protocol_number(protocol: PortProtocol) -> u8 {
    match protocol {
        PortProtocol::Tcp => IPPROTO_TCP,
        PortProtocol::Udp => IPPROTO_UDP,
    }
}

/// What parsing found before the allowlist is consulted.
enum Parsed<'a> {
    NotIp,
    /// IP ethertype, but not even the source address is there.
    NoSource,
    Ip {
        source: IpAddr,
        destination: IpAddr,
        fragment: bool,
        transport: Transport<'a>,
    },
}

enum Transport<'a> {
    Port(PortProtocol, u16, Segment<'a>),
    Other,
    NonFirstFragment,
    Malformed,
}

/// The transport header and what the IP header says about it.
#[derive(Clone, Copy)]
struct Segment<'a> {
    /// From the transport header to the frame's end.
    bytes: &'a [u8],
    /// Right after the fixed IP header: no IPv4 options or IPv6 extensions.
    plain: bool,
    /// Payload length by the IP header (IPv4 without options: total less 20).
    ip_payload: usize,
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

impl Classifier {
    /// What the dataplane does under these settings with this allowlist.
    ///
    /// The sockets are assumed as on a host running shield: a listener on
    /// every protected TCP port, issuing cookies only under "always", and
    /// no connection.
    pub fn new(xdp: &XdpConfig, allowed: Allowlist) -> Classifier {
        Classifier {
            enforce: xdp.enforce,
            fragments: xdp.fragments.into(),
            protected_tcp_ports: xdp.protected_tcp_ports.iter().copied().collect(),
            protected_udp_ports: xdp.protected_udp_ports.iter().copied().collect(),
            allowed,
            syn_cookies: xdp.syn_cookies != SynCookies::Off,
            drop_udp_from_ranges: xdp.udp_from_ranges == UdpFromRanges::Drop,
            cookie: CookieOptions::default(),
            sockets: Sockets {
                listening: xdp.protected_tcp_ports.iter().copied().collect(),
                issuing_cookies: xdp.syn_cookies == SynCookies::Always,
                ..Sockets::default()
            },
            destinations: xdp.protected_destinations.clone(),
        }
    }

    /// The verdict the dataplane gives this Ethernet frame.
    pub fn classify_packet(&self, frame: &[u8]) -> Decision {
        let tagged = matches!(be16(frame, 12), Some(ETH_P_8021Q | ETH_P_8021AD));
        let (reason, matched) = match parse(frame) {
            Parsed::NotIp => (Reason::NonIp, None),
            Parsed::NoSource => (Reason::Malformed, None),
            Parsed::Ip {
                source,
                destination,
                fragment,
                transport,
            } => self.judge(source, destination, fragment, tagged, transport),
        };
        Decision {
            reason,
            verdict: reason.verdict(self.enforce),
            matched,
        }
    }

    fn judge(
        &self,
        source: IpAddr,
        destination: IpAddr,
        fragment: bool,
        tagged: bool,
        transport: Transport,
    ) -> (Reason, Option<IpNetwork>) {
        let in_scope = self.destinations.is_empty()
            || self.destinations.iter().any(|d| d.contains(destination));
        // Out of scope: not judged. Asked only where the packet could be
        // dropped or answered, as the kernel asks it.
        let by_source = |otherwise: Reason| {
            if !in_scope {
                return (Reason::UnprotectedDestination, None);
            }
            match self.allowed.longest_match(source) {
                Some(prefix) => (Reason::Allowed, Some(prefix)),
                None => (otherwise, None),
            }
        };
        if fragment && self.fragments == FragmentPolicy::DropOutside {
            return by_source(Reason::Fragment);
        }
        match transport {
            Transport::Port(protocol, port, segment) if self.is_protected(protocol, port) => {
                match by_source(Reason::OutsideRanges) {
                    (Reason::Allowed, prefix) => {
                        let answerable = !fragment && !tagged;
                        (
                            self.judge_from_ranges(source, answerable, protocol, segment),
                            prefix,
                        )
                    }
                    outside => outside,
                }
            }
            Transport::Port(..) | Transport::Other => (Reason::Unprotected, None),
            Transport::NonFirstFragment => (Reason::NonFirstFragment, None),
            Transport::Malformed => by_source(Reason::Malformed),
        }
    }

    /// TCP or UDP to a protected port from inside the ranges. Only an
    /// `answerable` SYN (unfragmented, in an untagged frame) gets a cookie.
    fn judge_from_ranges(
        &self,
        source: IpAddr,
        answerable: bool,
        protocol: PortProtocol,
        segment: Segment<'_>,
    ) -> Reason {
        match protocol {
            PortProtocol::Udp if self.drop_udp_from_ranges => Reason::UdpFromRanges,
            PortProtocol::Tcp if self.syn_cookies => {
                self.judge_tcp_from_ranges(source, answerable, segment)
            }
            _ => Reason::Allowed,
        }
    }

    fn judge_tcp_from_ranges(
        &self,
        source: IpAddr,
        answerable: bool,
        segment: Segment<'_>,
    ) -> Reason {
        let tcp = segment.bytes;
        let (Some(sport), Some(dport), Some(&flags)) = (be16(tcp, 0), be16(tcp, 2), tcp.get(13))
        else {
            return Reason::Allowed;
        };
        if flags & (TCP_SYN | TCP_ACK) == TCP_ACK {
            let ack = tcp
                .get(8..12)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
            let sockets = &self.sockets;
            let flow = (source, sport, dport, ack);
            // By the IP header's length: options and extensions count.
            let carries_data =
                segment.ip_payload > usize::from(tcp.get(12).map_or(0, |b| b >> 4)) * 4;
            let owned = sockets.connections.contains(&(source, sport, dport))
                || (sockets.listening.contains(&dport)
                    && (sockets.cookie_acks.contains(&flow)
                        || (carries_data && sockets.cookie_flows.contains(&flow))));
            return if owned {
                Reason::Allowed
            } else {
                Reason::BadAck
            };
        }
        if flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) != TCP_SYN
            || !self.enforce
            || !answerable
            || !segment.plain
        {
            return Reason::Allowed;
        }
        let header_len = usize::from(tcp[12] >> 4) * 4;
        if header_len < 20 || segment.ip_payload != header_len || tcp.len() < header_len {
            return Reason::Allowed;
        }
        let Some(offer) = syn_offer(&tcp[20..header_len]) else {
            return Reason::Allowed;
        };
        if !self.sockets.listening.contains(&dport) || !self.sockets.issuing_cookies {
            return Reason::Allowed;
        }
        // The answer's length: a bare header for a SYN without options,
        // else an MSS, then the timestamp block and the window scale when
        // they may be mirrored.
        let answer_len = if header_len == 20 {
            20
        } else if offer.timestamp && self.cookie.flags & COOKIE_TIMESTAMPS != 0 {
            let scale =
                offer.window_scale && self.cookie.flags & shield_common::COOKIE_WINDOW_SCALING != 0;
            if scale {
                40
            } else {
                36
            }
        } else {
            24
        };
        if answer_len > header_len {
            return Reason::Allowed;
        }
        Reason::SynCookie
    }

    fn is_protected(&self, protocol: PortProtocol, port: u16) -> bool {
        match protocol {
            PortProtocol::Tcp => self.protected_tcp_ports.contains(&port),
            PortProtocol::Udp => self.protected_udp_ports.contains(&port),
        }
    }

    /// The verdict for a plain, unfragmented packet from `source` to `port`:
    /// what `shield classify` answers.
    pub fn classify_flow(&self, source: IpAddr, protocol: PortProtocol, port: u16) -> Decision {
        self.classify_packet(&flow_packet(source, protocol, port))
    }

    /// As [`Classifier::classify_flow`], to `destination` (of the
    /// source's family); `None` when the families differ.
    pub fn classify_flow_to(
        &self,
        source: IpAddr,
        destination: IpAddr,
        protocol: PortProtocol,
        port: u16,
    ) -> Option<Decision> {
        let mut frame = flow_packet(source, protocol, port);
        match (source, destination) {
            (IpAddr::V4(_), IpAddr::V4(d)) => frame[30..34].copy_from_slice(&d.octets()),
            (IpAddr::V6(_), IpAddr::V6(d)) => frame[38..54].copy_from_slice(&d.octets()),
            _ => return None,
        }
        Some(self.classify_packet(&frame))
    }
}

/// A minimal well-formed Ethernet frame for one flow, to 192.0.2.1 or
/// 2001:db8::1.
pub fn flow_packet(source: IpAddr, protocol: PortProtocol, port: u16) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    let l4_len = match protocol {
        PortProtocol::Tcp => 20,
        PortProtocol::Udp => 8,
    };
    match source {
        IpAddr::V4(source) => {
            frame.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
            let total = (20 + l4_len) as u16;
            frame.extend_from_slice(&[0x45, 0]);
            frame.extend_from_slice(&total.to_be_bytes());
            frame.extend_from_slice(&[0, 0, 0x40, 0, 64, protocol_number(protocol), 0, 0]);
            frame.extend_from_slice(&source.octets());
            frame.extend_from_slice(&Ipv4Addr::new(192, 0, 2, 1).octets());
        }
        IpAddr::V6(source) => {
            frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            frame.extend_from_slice(&[0x60, 0, 0, 0]);
            frame.extend_from_slice(&(l4_len as u16).to_be_bytes());
            frame.extend_from_slice(&[protocol_number(protocol), 64]);
            frame.extend_from_slice(&source.octets());
            frame.extend_from_slice(
                &"2001:db8::1"
                    .parse::<Ipv6Addr>()
                    .map(|a| a.octets())
                    .unwrap_or_default(),
            );
        }
    }
    let mut l4 = vec![0u8; l4_len];
    l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
    l4[2..4].copy_from_slice(&port.to_be_bytes());
    if protocol == PortProtocol::Tcp {
        l4[12] = 5 << 4;
        l4[13] = 0x02; // SYN
    } else {
        l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
    frame.extend_from_slice(&l4);
    frame
}

/// Which options a SYN offered, of those a cookie SYN-ACK mirrors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SynOffer {
    pub timestamp: bool,
    pub sack: bool,
    pub window_scale: bool,
}

/// The SYN's options as the kernel would take them; `None` when they do
/// not parse (a length under two or past the end, a known option of the
/// wrong length), which no cookie answers.
pub fn syn_offer(options: &[u8]) -> Option<SynOffer> {
    let mut offer = SynOffer::default();
    let mut rest = options;
    while let Some(&kind) = rest.first() {
        match kind {
            0 => break,
            1 => {
                rest = &rest[1..];
                continue;
            }
            _ => {}
        }
        let size = usize::from(*rest.get(1)?);
        if size < 2 || size > rest.len() {
            return None;
        }
        match (kind, size) {
            (2, 4) => {}
            (3, 3) => offer.window_scale = true,
            (4, 2) => offer.sack = true,
            (8, 10) => offer.timestamp = true,
            (2 | 3 | 4 | 8, _) => return None,
            _ => {}
        }
        rest = &rest[size..];
    }
    Some(offer)
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

fn parse(frame: &[u8]) -> Parsed<'_> {
    let Some(mut ethertype) = be16(frame, 12) else {
        return Parsed::NotIp;
    };
    let mut l3 = 14;
    let mut tags = 0;
    while (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD) && tags < MAX_VLAN_TAGS {
        match be16(frame, l3 + 2) {
            Some(inner) => ethertype = inner,
            None => return Parsed::NotIp,
        }
        l3 += 4;
        tags += 1;
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(&frame[l3.min(frame.len())..]),
        ETH_P_IPV6 => parse_ipv6(&frame[l3.min(frame.len())..]),
        _ => Parsed::NotIp,
    }
}

fn parse_ipv4(packet: &[u8]) -> Parsed<'_> {
    if packet.len() < 20 {
        return Parsed::NoSource;
    }
    let source = IpAddr::V4(Ipv4Addr::new(
        packet[12], packet[13], packet[14], packet[15],
    ));
    let destination = IpAddr::V4(Ipv4Addr::new(
        packet[16], packet[17], packet[18], packet[19],
    ));
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    if packet[0] >> 4 != 4 || header_len < 20 || header_len > packet.len() {
        return Parsed::Ip {
            source,
            destination,
            fragment: false,
            transport: Transport::Malformed,
        };
    }
    let field = u16::from_be_bytes([packet[6], packet[7]]);
    let offset = field & 0x1fff;
    let more = field & 0x2000 != 0;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let transport = if offset != 0 {
        Transport::NonFirstFragment
    } else {
        transport(
            packet[9],
            &packet[header_len..],
            header_len == 20,
            total.saturating_sub(20),
        )
    };
    Parsed::Ip {
        source,
        destination,
        fragment: offset != 0 || more,
        transport,
    }
}

fn parse_ipv6(packet: &[u8]) -> Parsed<'_> {
    if packet.len() < 40 {
        return Parsed::NoSource;
    }
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&packet[8..24]);
    let source = IpAddr::V6(Ipv6Addr::from(octets));
    octets.copy_from_slice(&packet[24..40]);
    let destination = IpAddr::V6(Ipv6Addr::from(octets));
    let malformed = |fragment| Parsed::Ip {
        source,
        destination,
        fragment,
        transport: Transport::Malformed,
    };
    if packet[0] >> 4 != 6 {
        return malformed(false);
    }
    let mut next = packet[6];
    let payload = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
    let mut rest = &packet[40..];
    let mut fragment = false;
    let mut walked = 0;
    loop {
        let header_len = match next {
            EXT_HOPOPTS | EXT_ROUTING | EXT_DSTOPTS | EXT_AH | EXT_FRAGMENT
                if walked == MAX_IPV6_EXT_HEADERS =>
            {
                return malformed(fragment);
            }
            EXT_HOPOPTS | EXT_ROUTING | EXT_DSTOPTS => match rest.get(..2) {
                Some(h) => (usize::from(h[1]) + 1) * 8,
                None => return malformed(fragment),
            },
            EXT_AH => match rest.get(..2) {
                Some(h) => (usize::from(h[1]) + 2) * 4,
                None => return malformed(fragment),
            },
            EXT_FRAGMENT => {
                let Some(h) = rest.get(..8) else {
                    return malformed(fragment);
                };
                let field = u16::from_be_bytes([h[2], h[3]]);
                let offset = field >> 3;
                let more = field & 1 != 0;
                fragment |= offset != 0 || more;
                if offset != 0 {
                    return Parsed::Ip {
                        source,
                        destination,
                        fragment,
                        transport: Transport::NonFirstFragment,
                    };
                }
                8
            }
            protocol => {
                return Parsed::Ip {
                    source,
                    destination,
                    fragment,
                    transport: transport(protocol, rest, walked == 0, payload),
                }
            }
        };
        next = rest[0];
        walked += 1;
        // A header claiming to run past the packet leaves the next read
        // short, which is what makes it malformed.
        rest = rest.get(header_len..).unwrap_or(&[]);
    }
}

fn transport(protocol: u8, l4: &[u8], plain: bool, ip_payload: usize) -> Transport<'_> {
    let (protocol, min_len) = match protocol {
        IPPROTO_TCP => (PortProtocol::Tcp, 20),
        IPPROTO_UDP => (PortProtocol::Udp, 8),
        _ => return Transport::Other,
    };
    if l4.len() < min_len {
        return Transport::Malformed;
    }
    Transport::Port(
        protocol,
        u16::from_be_bytes([l4[2], l4[3]]),
        Segment {
            bytes: l4,
            plain,
            ip_payload,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Classifier {
        Classifier {
            enforce: true,
            fragments: FragmentPolicy::JudgeFirst,
            protected_tcp_ports: [80, 443].into(),
            protected_udp_ports: [443].into(),
            allowed: Allowlist::new([
                "173.245.48.0/20".parse().unwrap(),
                "2400:cb00::/32".parse().unwrap(),
            ]),
            syn_cookies: false,
            drop_udp_from_ranges: false,
            cookie: CookieOptions::default(),
            sockets: Sockets::default(),
            destinations: Vec::new(),
        }
    }

    /// With `protected_destinations`, a protected port of another local
    /// address passes unjudged, and every other verdict stays.
    #[test]
    fn destinations_outside_the_scope_pass() {
        let mut policy = policy();
        policy.destinations = vec![
            "192.0.2.1/32".parse().unwrap(),
            "2001:db8::/64".parse().unwrap(),
        ];
        fn flow(
            policy: &Classifier,
            source: &str,
            destination: &str,
            protocol: PortProtocol,
            port: u16,
        ) -> String {
            policy
                .classify_flow_to(
                    source.parse().unwrap(),
                    destination.parse().unwrap(),
                    protocol,
                    port,
                )
                .unwrap()
                .to_string()
        }
        let tcp = PortProtocol::Tcp;
        assert_eq!(
            flow(&policy, "203.0.113.9", "192.0.2.1", tcp, 443),
            "drop outside_ranges"
        );
        assert_eq!(
            flow(&policy, "203.0.113.9", "192.0.2.2", tcp, 443),
            "pass unprotected_destination"
        );
        assert_eq!(
            flow(&policy, "203.0.113.9", "192.0.2.2", tcp, 22),
            "pass unprotected"
        );
        assert_eq!(
            flow(&policy, "173.245.48.1", "192.0.2.2", PortProtocol::Udp, 443),
            "pass unprotected_destination"
        );
        assert_eq!(
            flow(&policy, "2001:db8:ffff::9", "2001:db8::7", tcp, 80),
            "drop outside_ranges"
        );
        assert_eq!(
            flow(&policy, "2001:db8:ffff::9", "2001:db8:1::7", tcp, 80),
            "pass unprotected_destination"
        );
        assert!(policy
            .classify_flow_to(
                "203.0.113.9".parse().unwrap(),
                "2001:db8::7".parse().unwrap(),
                tcp,
                80
            )
            .is_none());
        // An empty scope is every destination.
        policy.destinations.clear();
        assert_eq!(
            flow(&policy, "203.0.113.9", "192.0.2.2", tcp, 443),
            "drop outside_ranges"
        );
    }

    #[test]
    fn flows_get_spec_verdicts() {
        let policy = policy();
        let cases: &[(&str, PortProtocol, u16, &str)] = &[
            (
                "173.245.48.1",
                PortProtocol::Tcp,
                443,
                "pass allowed 173.245.48.0/20",
            ),
            ("203.0.113.9", PortProtocol::Tcp, 443, "drop outside_ranges"),
            ("203.0.113.9", PortProtocol::Tcp, 80, "drop outside_ranges"),
            ("203.0.113.9", PortProtocol::Udp, 443, "drop outside_ranges"),
            ("203.0.113.9", PortProtocol::Tcp, 22, "pass unprotected"),
            ("203.0.113.9", PortProtocol::Udp, 53, "pass unprotected"),
            (
                "2400:cb00::1",
                PortProtocol::Tcp,
                443,
                "pass allowed 2400:cb00::/32",
            ),
            ("2001:db8::9", PortProtocol::Udp, 443, "drop outside_ranges"),
        ];
        for (source, protocol, port, expected) in cases {
            let decision = policy.classify_flow(source.parse().unwrap(), *protocol, *port);
            assert_eq!(
                decision.to_string(),
                *expected,
                "{source} {protocol:?} {port}"
            );
        }
    }

    #[test]
    fn monitor_mode_would_drop() {
        let mut policy = policy();
        policy.enforce = false;
        let decision = policy.classify_flow("203.0.113.9".parse().unwrap(), PortProtocol::Tcp, 443);
        assert_eq!(decision.verdict, Verdict::WouldDrop);
    }

    #[test]
    fn longest_prefix_wins() {
        let list = Allowlist::new([
            "10.0.0.0/8".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
        ]);
        assert_eq!(
            list.longest_match("10.1.2.3".parse().unwrap()),
            Some("10.1.0.0/16".parse().unwrap())
        );
        assert_eq!(
            list.longest_match("10.2.2.3".parse().unwrap()),
            Some("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(list.longest_match("11.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn traffic_from_inside_meets_the_flood_policy() {
        let mut policy = policy();
        policy.syn_cookies = true;
        policy.drop_udp_from_ranges = true;
        policy.sockets.listening.insert(443);
        let inside = "173.245.48.1".parse().unwrap();
        let verdict = |policy: &Classifier, protocol, port| {
            policy.classify_flow(inside, protocol, port).to_string()
        };
        // The prefix the source matched is named: it is why the rule applies.
        assert_eq!(
            verdict(&policy, PortProtocol::Udp, 443),
            "drop udp_from_ranges 173.245.48.0/20"
        );
        assert_eq!(verdict(&policy, PortProtocol::Udp, 53), "pass unprotected");
        // A listener that issues no cookie now: the SYN goes to the kernel.
        assert_eq!(
            verdict(&policy, PortProtocol::Tcp, 443),
            "pass allowed 173.245.48.0/20"
        );
        policy.sockets.issuing_cookies = true;
        assert_eq!(
            verdict(&policy, PortProtocol::Tcp, 443),
            "answered syn_cookie 173.245.48.0/20"
        );
        // No listener on 80: the kernel answers with a reset.
        assert_eq!(
            verdict(&policy, PortProtocol::Tcp, 80),
            "pass allowed 173.245.48.0/20"
        );
        // Monitor mode never answers.
        policy.enforce = false;
        assert_eq!(
            verdict(&policy, PortProtocol::Tcp, 443),
            "pass allowed 173.245.48.0/20"
        );
        policy.enforce = true;
        let mut ack = flow_packet(inside, PortProtocol::Tcp, 443);
        let flags = ack.len() - 20 + 13;
        ack[flags] = 0x10;
        assert_eq!(policy.classify_packet(&ack).reason, Reason::BadAck);
        policy.sockets.connections.insert((inside, 40000, 443));
        assert_eq!(policy.classify_packet(&ack).reason, Reason::Allowed);
        policy.syn_cookies = false;
        policy.drop_udp_from_ranges = false;
        policy.sockets = Sockets::default();
        assert_eq!(policy.classify_packet(&ack).reason, Reason::Allowed);
        assert_eq!(
            verdict(&policy, PortProtocol::Udp, 443),
            "pass allowed 173.245.48.0/20"
        );
    }

    #[test]
    fn syn_options_parse_as_the_kernel_takes_them() {
        let linux = [
            2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        assert_eq!(
            syn_offer(&linux),
            Some(SynOffer {
                timestamp: true,
                sack: true,
                window_scale: true
            })
        );
        let windows = [2, 4, 5, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2];
        assert_eq!(
            syn_offer(&windows),
            Some(SynOffer {
                timestamp: false,
                sack: true,
                window_scale: true
            })
        );
        // End of options stops the walk; what follows is not read.
        assert_eq!(syn_offer(&[0, 0xff, 0xff, 0xff]), Some(SynOffer::default()));
        // Unknown options are skipped by their length.
        assert_eq!(syn_offer(&[34, 2, 1, 1]), Some(SynOffer::default()));
        for malformed in [
            &[2, 4, 5][..],
            &[2, 0, 0, 0],
            &[3, 4, 7, 0],
            &[8, 10, 0, 0],
            &[4],
            &[30, 9, 0, 0],
        ] {
            assert_eq!(syn_offer(malformed), None, "{malformed:?}");
        }
    }

    #[test]
    fn truncated_frames_never_panic() {
        let policy = policy();
        let frame = flow_packet("203.0.113.9".parse().unwrap(), PortProtocol::Tcp, 443);
        for len in 0..frame.len() {
            let _ = policy.classify_packet(&frame[..len]);
        }
    }
}
