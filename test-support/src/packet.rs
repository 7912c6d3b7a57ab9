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
