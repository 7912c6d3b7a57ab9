//! Range feeds, the JSON API's shape and the text lists: parsing never
//! panics, and whatever validation accepts obeys the rules, checked here
//! with arithmetic of its own: every prefix of its family, no host bits,
//! none shorter than the floor, none touching reserved space, both
//! families present, at most the cap per family; the same for the China
//! Network's (`jdcloud_cidrs`) entries.

#![no_main]

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use libfuzzer_sys::fuzz_target;
use shield::ranges::{
    validate::{validate, Limits},
    Provenance, RangeSet,
};

/// Reserved space as `(first address, prefix length)`, IPv4 then IPv6.
const RESERVED_V4: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),
    ([10, 0, 0, 0], 8),
    ([100, 64, 0, 0], 10),
    ([127, 0, 0, 0], 8),
    ([169, 254, 0, 0], 16),
    ([172, 16, 0, 0], 12),
    ([192, 0, 0, 0], 24),
    ([192, 0, 2, 0], 24),
    ([192, 168, 0, 0], 16),
    ([198, 18, 0, 0], 15),
    ([198, 51, 100, 0], 24),
    ([203, 0, 113, 0], 24),
    ([224, 0, 0, 0], 4),
    ([240, 0, 0, 0], 4),
];
const RESERVED_V6: &[(u128, u8)] = &[
    (0, 128),
    (1, 128),
    (0xffff_0000_0000, 96),
    (0x0064_ff9b << 96, 96),
    (0x0100 << 112, 64),
    (0x2001_0db8 << 96, 32),
    (0x3fff << 112, 20),
    (0xfc00 << 112, 7),
    (0xfe80 << 112, 10),
    (0xff00 << 112, 8),
];

/// Two prefixes overlap when the shorter one's mask gives both the same
/// network.
fn overlaps(a: u128, a_len: u8, b: u128, b_len: u8, bits: u8) -> bool {
    let len = a_len.min(b_len);
    let mask = |x: u128| if len == 0 { 0 } else { x >> (bits - len) };
    mask(a) == mask(b)
}

fn check(prefix: &IpNetwork, v4: bool, limits: &Limits) {
    let len = prefix.prefix();
    let (address, bits, floor) = match (prefix.ip(), v4) {
        (IpAddr::V4(ip), true) => (u128::from(u32::from(ip)), 32, limits.min_prefix_v4),
        (IpAddr::V6(ip), false) => (u128::from(ip), 128, limits.min_prefix_v6),
        _ => panic!("{prefix} in the wrong family"),
    };
    assert!(len <= bits, "{prefix}");
    let host_bits = if len == bits {
        0
    } else {
        address & ((1u128 << (bits - len)) - 1)
    };
    assert_eq!(host_bits, 0, "{prefix} has host bits");
    assert!(len >= floor, "{prefix} is shorter than /{floor}");
    if v4 {
        for (first, reserved) in RESERVED_V4 {
            let first = u128::from(u32::from_be_bytes(*first));
            assert!(
                !overlaps(address, len, first, *reserved, 32),
                "{prefix} overlaps reserved space"
            );
        }
    } else {
        for (first, reserved) in RESERVED_V6 {
            assert!(
                !overlaps(address, len, *first, *reserved, 128),
                "{prefix} overlaps reserved space"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [kind, v4_floor, v6_floor, cap, text @ ..] = data else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let parsed = if kind & 1 == 0 {
        RangeSet::from_api_json(text, Provenance::Snapshot)
    } else {
        RangeSet::from_text(text, Provenance::Snapshot)
    };
    let Ok(set) = parsed else {
        return;
    };
    let limits = if kind & 2 == 0 {
        Limits::default()
    } else {
        Limits {
            min_prefix_v4: v4_floor % 33,
            min_prefix_v6: v6_floor % 129,
            max_prefixes: usize::from(*cap),
        }
    };
    if validate(&set, &limits).is_err() {
        return;
    }
    assert!(!set.ipv4.is_empty() && !set.ipv6.is_empty());
    assert!(set.ipv4.len() <= limits.max_prefixes && set.ipv6.len() <= limits.max_prefixes);
    for prefix in &set.ipv4 {
        check(prefix, true, &limits);
    }
    for prefix in &set.ipv6 {
        check(prefix, false, &limits);
    }
    // The China Network's list holds both families; each entry obeys the
    // rules of its own, and an empty list is refused.
    if let Some(jdcloud) = &set.jdcloud {
        assert!(!jdcloud.is_empty());
        for prefix in jdcloud {
            check(prefix, prefix.is_ipv4(), &limits);
        }
    }
    // The set a validated update is applied as; it must not panic either.
    let _ = set.content_etag();
});
