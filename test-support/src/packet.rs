//! Hand-built frames for test-run tests, the differential test and benches.

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const ESP: u8 = 50;
pub const NO_NEXT: u8 = 59;
pub const HOPOPTS: u8 = 0;
pub const ROUTING: u8 = 43;
pub const FRAGMENT: u8 = 44;
pub const AH: u8 = 51;
pub const DSTOPTS: u8 = 60;

/// Ethernet header with optional VLAN tags (TPIDs), then `ethertype`.
pub fn ethernet(tags: &[u16], ethertype: u16) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (i, tpid) in tags.iter().enumerate() {
        frame.extend_from_slice(&tpid.to_be_bytes());
        frame.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

/// IPv4 header of `ihl` 32-bit words (options zero-filled).
pub fn ipv4(
    source: [u8; 4],
    protocol: u8,
    ihl: u8,
    fragment_field: u16,
    payload_len: usize,
) -> Vec<u8> {
    let header_len = usize::from(ihl) * 4;
    let mut header = vec![0u8; header_len.max(20)];
    header[0] = 0x40 | (ihl & 0x0f);
    let total = (header_len + payload_len) as u16;
    header[2..4].copy_from_slice(&total.to_be_bytes());
    header[6..8].copy_from_slice(&fragment_field.to_be_bytes());
    header[8] = 64;
    header[9] = protocol;
    header[12..16].copy_from_slice(&source);
    header[16..20].copy_from_slice(&[192, 0, 2, 1]);
    header.truncate(header_len.max(20));
    header
}

pub fn ipv6(source: [u8; 16], next_header: u8, payload_len: usize) -> Vec<u8> {
    let mut header = vec![0u8; 40];
    header[0] = 0x60;
    header[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
    header[6] = next_header;
    header[7] = 64;
    header[8..24].copy_from_slice(&source);
    header[24..40].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    header
}

/// Hop-by-hop, routing or destination options: (len + 1) * 8 bytes.
pub fn ext_options(next_header: u8, len: u8) -> Vec<u8> {
    let mut header = vec![0u8; (usize::from(len) + 1) * 8];
    header[0] = next_header;
    header[1] = len;
    header
}

/// Authentication header: (len + 2) * 4 bytes.
pub fn ext_ah(next_header: u8, len: u8) -> Vec<u8> {
    let mut header = vec![0u8; (usize::from(len) + 2) * 4];
    header[0] = next_header;
    header[1] = len;
    header
}

/// IPv6 fragment header; `offset` in 8-byte units.
pub fn ext_fragment(next_header: u8, offset: u16, more: bool) -> Vec<u8> {
    let mut header = vec![0u8; 8];
    header[0] = next_header;
    let field = (offset << 3) | u16::from(more);
    header[2..4].copy_from_slice(&field.to_be_bytes());
    header[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    header
}

/// IPv4 fragment field: offset in 8-byte units plus the MF flag.
pub fn ipv4_fragment(offset: u16, more: bool) -> u16 {
    (offset & 0x1fff) | if more { 0x2000 } else { 0 }
}

pub fn tcp(port: u16) -> Vec<u8> {
    let mut header = vec![0u8; 20];
    header[0..2].copy_from_slice(&40000u16.to_be_bytes());
    header[2..4].copy_from_slice(&port.to_be_bytes());
    header[12] = 5 << 4;
    header[13] = 0x02;
    header
}

pub fn udp(port: u16) -> Vec<u8> {
    let mut header = vec![0u8; 8];
    header[0..2].copy_from_slice(&40000u16.to_be_bytes());
    header[2..4].copy_from_slice(&port.to_be_bytes());
    header[4..6].copy_from_slice(&8u16.to_be_bytes());
    header
}

pub fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.iter().flat_map(|p| p.iter().copied()).collect()
}

pub fn v4(text: &str) -> [u8; 4] {
    text.parse::<std::net::Ipv4Addr>()
        .expect("test IPv4 address")
        .octets()
}

pub fn v6(text: &str) -> [u8; 16] {
    text.parse::<std::net::Ipv6Addr>()
        .expect("test IPv6 address")
        .octets()
}

/// A complete IPv4 TCP frame.
pub fn ipv4_tcp(source: &str, port: u16) -> Vec<u8> {
    concat(&[
        &ethernet(&[], ETH_P_IPV4),
        &ipv4(v4(source), TCP, 5, 0, 20),
        &tcp(port),
    ])
}

/// A complete IPv6 TCP frame.
pub fn ipv6_tcp(source: &str, port: u16) -> Vec<u8> {
    concat(&[
        &ethernet(&[], ETH_P_IPV6),
        &ipv6(v6(source), TCP, 20),
        &tcp(port),
    ])
}

/// The one's-complement sum of `bytes` as big-endian 16-bit words, folded
/// and inverted: the Internet checksum, computed here independently of
/// the XDP program's own.
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &byte in *part {
            match odd.take() {
                Some(high) => sum += u32::from(u16::from_be_bytes([high, byte])),
                None => odd = Some(byte),
            }
        }
    }
    if let Some(high) = odd {
        sum += u32::from(u16::from_be_bytes([high, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP flags.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// A TCP segment between two addresses of one family, checksums right.
#[derive(Debug, Clone)]
pub struct Segment {
    pub source: std::net::IpAddr,
    pub destination: std::net::IpAddr,
    pub source_port: u16,
    pub destination_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub window: u16,
    /// Raw option bytes; padded with zeros to a multiple of four.
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Segment {
    /// A SYN from `source` to `destination:port` with `options`.
    pub fn syn(source: &str, destination: &str, port: u16, options: &[u8]) -> Segment {
        Segment {
            source: source.parse().expect("test source"),
            destination: destination.parse().expect("test destination"),
            source_port: 40000,
            destination_port: port,
            seq: 0x1234_5678,
            ack: 0,
            flags: SYN,
            window: 64240,
            options: options.to_vec(),
            payload: Vec::new(),
        }
    }

    /// The TCP header and payload, checksum included.
    pub fn tcp_bytes(&self) -> Vec<u8> {
        let mut options = self.options.clone();
        while !options.len().is_multiple_of(4) {
            options.push(0);
        }
        let header_len = 20 + options.len();
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&self.source_port.to_be_bytes());
        tcp[2..4].copy_from_slice(&self.destination_port.to_be_bytes());
        tcp[4..8].copy_from_slice(&self.seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&self.ack.to_be_bytes());
        tcp[12] = ((header_len / 4) as u8) << 4;
        tcp[13] = self.flags;
        tcp[14..16].copy_from_slice(&self.window.to_be_bytes());
        tcp.extend_from_slice(&options);
        tcp.extend_from_slice(&self.payload);
        let checksum = tcp_checksum(self.source, self.destination, &tcp);
        tcp[16..18].copy_from_slice(&checksum.to_be_bytes());
        tcp
    }

    /// The Ethernet frame (no VLAN tags) carrying the segment.
    pub fn frame(&self) -> Vec<u8> {
        let tcp = self.tcp_bytes();
        match (self.source, self.destination) {
            (std::net::IpAddr::V4(source), std::net::IpAddr::V4(destination)) => {
                let mut ip = vec![0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
                ip[6] = 0x40;
                ip[8] = 57;
                ip[9] = TCP;
                ip[12..16].copy_from_slice(&source.octets());
                ip[16..20].copy_from_slice(&destination.octets());
                let checksum = internet_checksum(&[&ip]);
                ip[10..12].copy_from_slice(&checksum.to_be_bytes());
                concat(&[&ethernet(&[], ETH_P_IPV4), &ip, &tcp])
            }
            (std::net::IpAddr::V6(source), std::net::IpAddr::V6(destination)) => {
                let mut ip = vec![0u8; 40];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&(tcp.len() as u16).to_be_bytes());
                ip[6] = TCP;
                ip[7] = 57;
                ip[8..24].copy_from_slice(&source.octets());
                ip[24..40].copy_from_slice(&destination.octets());
                concat(&[&ethernet(&[], ETH_P_IPV6), &ip, &tcp])
            }
            _ => panic!("a segment's addresses must be of one family"),
        }
    }
}

/// The TCP checksum of `tcp` (header with its checksum field as given,
/// and payload) between these addresses: 0 when the field is right.
pub fn tcp_checksum(source: std::net::IpAddr, destination: std::net::IpAddr, tcp: &[u8]) -> u16 {
    let mut tcp = tcp.to_vec();
    if tcp.len() >= 18 {
        tcp[16..18].copy_from_slice(&[0, 0]);
    }
    pseudo_checksum(source, destination, &tcp)
}

/// The checksum over the pseudo header and `tcp` exactly as given: 0 for
/// a segment whose checksum field is right.
pub fn pseudo_checksum(source: std::net::IpAddr, destination: std::net::IpAddr, tcp: &[u8]) -> u16 {
    let length = tcp.len() as u32;
    match (source, destination) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => internet_checksum(&[
            &s.octets(),
            &d.octets(),
            &[0, TCP],
            &(length as u16).to_be_bytes(),
            tcp,
        ]),
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => internet_checksum(&[
            &s.octets(),
            &d.octets(),
            &length.to_be_bytes(),
            &[0, 0, 0, TCP],
            tcp,
        ]),
        _ => panic!("a segment's addresses must be of one family"),
    }
}

/// The SYN options Linux sends: MSS, SACK-permitted, timestamps, NOP,
/// window scale.
pub fn linux_syn_options(mss: u16, timestamp: u32, window_scale: u8) -> Vec<u8> {
    let mut options = vec![2, 4];
    options.extend_from_slice(&mss.to_be_bytes());
    options.extend_from_slice(&[4, 2, 8, 10]);
    options.extend_from_slice(&timestamp.to_be_bytes());
    options.extend_from_slice(&[0, 0, 0, 0, 1, 3, 3, window_scale]);
    options
}
