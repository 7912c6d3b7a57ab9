//! Differential test: random and structured frames through the kernel
//! program and the reference classifier; every verdict and reason must
//! agree. `SHIELD_DIFF_CASES` (default 120000) and `SHIELD_DIFF_SEED`
//! reproduce a run; the seed is printed.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use ipnetwork::IpNetwork;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::net::TcpListener;

use shield::dataplane::{sysctl::TcpSysctls, testrun::TestProgram};
use shield_common::FragmentPolicy;
use shield_test_support::{
    netns::{isolated, set_sysctl},
    packet::*,
    require_root,
    xdp::*,
};

struct Generator {
    rng: StdRng,
    allowed: Vec<IpNetwork>,
}

impl Generator {
    fn source_v4(&mut self) -> [u8; 4] {
        let v4: Vec<_> = self
            .allowed
            .iter()
            .filter_map(|p| match p {
                IpNetwork::V4(n) => Some(*n),
                _ => None,
            })
            .collect();
        match self.rng.random_range(0..4) {
            // Inside a random allowed prefix.
            0 | 1 => {
                let net = v4[self.rng.random_range(0..v4.len())];
                let host_bits = 32 - u32::from(net.prefix());
                let offset = if host_bits == 0 {
                    0
                } else {
                    self.rng.random::<u32>() & ((1u64 << host_bits) - 1) as u32
                };
                (u32::from(net.network()) | offset).to_be_bytes()
            }
            // Just outside a prefix edge.
            2 => {
                let net = v4[self.rng.random_range(0..v4.len())];
                let edge = if self.rng.random_bool(0.5) {
                    u32::from(net.network()).wrapping_sub(1)
                } else {
                    u32::from(net.broadcast()).wrapping_add(1)
                };
                edge.to_be_bytes()
            }
            _ => self.rng.random::<[u8; 4]>(),
        }
    }

    fn source_v6(&mut self) -> [u8; 16] {
        let v6: Vec<_> = self
            .allowed
            .iter()
            .filter_map(|p| match p {
                IpNetwork::V6(n) => Some(*n),
                _ => None,
            })
            .collect();
        match self.rng.random_range(0..3) {
            0 | 1 => {
                let net = v6[self.rng.random_range(0..v6.len())];
                let host_bits = 128 - u32::from(net.prefix());
                let mask = if host_bits == 0 {
                    0
                } else {
                    u128::MAX >> (128 - host_bits)
                };
                (u128::from(net.network()) | (self.rng.random::<u128>() & mask)).to_be_bytes()
            }
            _ => self.rng.random::<[u8; 16]>(),
        }
    }

    /// In a protected destination of [`SCOPE`] or next to one.
    fn destination_v4(&mut self) -> [u8; 4] {
        match self.rng.random_range(0..4) {
            0 => [192, 0, 2, 1],
            1 => [
                198,
                18 + self.rng.random_range(0..2),
                self.rng.random(),
                self.rng.random(),
            ],
            2 => [192, 0, 2, 2],
            _ => self.rng.random(),
        }
    }

    fn destination_v6(&mut self) -> [u8; 16] {
        let mut address = v6("2001:db8::1");
        match self.rng.random_range(0..4) {
            0 => {}
            1 => {
                address = v6("2001:db8:5::");
                self.rng.fill(&mut address[6..]);
            }
            2 => address[15] = 2,
            _ => address = self.rng.random(),
        }
        address
    }

    fn port(&mut self) -> u16 {
        match self.rng.random_range(0..4) {
            0 => 443,
            1 => 80,
            2 => 22,
            _ => self.rng.random(),
        }
    }

    /// A TCP header: a bare SYN, or any flags with options as real stacks
    /// send them, random, malformed or none, and sometimes data.
    fn tcp(&mut self) -> Vec<u8> {
        let port = self.port();
        if self.rng.random_bool(0.3) {
            return tcp(port);
        }
        let flags = match self.rng.random_range(0..8) {
            0..=2 => SYN,
            3 | 4 => ACK,
            5 => SYN | ACK,
            6 => [RST, FIN | ACK, SYN | RST, SYN | FIN, PSH | ACK, 0][self.rng.random_range(0..6)],
            _ => self.rng.random(),
        };
        let options = match self.rng.random_range(0..6) {
            0 | 1 => linux_syn_options(1460, self.rng.random(), self.rng.random_range(0..16)),
            2 => vec![2, 4, 5, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2],
            3 => Vec::new(),
            4 => (0..self.rng.random_range(0..=40))
                .map(|_| self.rng.random_range(0..12))
                .collect(),
            _ => {
                let mut options = linux_syn_options(1460, 7, 7);
                let at = self.rng.random_range(0..options.len());
                options[at] = self.rng.random();
                options
            }
        };
        let mut segment = Segment::syn("192.0.2.9", "192.0.2.1", port, &options);
        segment.flags = flags;
        segment.ack = self.rng.random();
        if self.rng.random_bool(0.1) {
            segment.payload = vec![0x47; self.rng.random_range(1..40)];
        }
        segment.tcp_bytes()
    }

    fn transport(&mut self) -> (u8, Vec<u8>) {
        match self.rng.random_range(0..10) {
            0..=4 => (TCP, self.tcp()),
            5..=7 => (UDP, udp(self.port())),
            8 => (ICMP, vec![8, 0, 0, 0, 0, 0, 0, 0]),
            _ => (
                self.rng.random(),
                (0..self.rng.random_range(0..24))
                    .map(|_| self.rng.random())
                    .collect(),
            ),
        }
    }

    fn tags(&mut self) -> Vec<u16> {
        let count = match self.rng.random_range(0..10) {
            0..=5 => 0,
            6 | 7 => 1,
            8 => 2,
            _ => 3,
        };
        (0..count)
            .map(|_| {
                if self.rng.random_bool(0.5) {
                    ETH_P_8021Q
                } else {
                    ETH_P_8021AD
                }
            })
            .collect()
    }

    fn ipv4_frame(&mut self) -> Vec<u8> {
        let tags = self.tags();
        let (protocol, l4) = self.transport();
        let ihl = if self.rng.random_bool(0.9) {
            self.rng.random_range(5..=15)
        } else {
            self.rng.random_range(0..5)
        };
        let fragment = match self.rng.random_range(0..8) {
            0 => ipv4_fragment(0, true),
            1 => ipv4_fragment(self.rng.random_range(1..0x1fff), self.rng.random()),
            2 => self.rng.random(),
            _ => 0x4000, // DF
        };
        let source = self.source_v4();
        let mut frame = concat(&[
            &ethernet(&tags, ETH_P_IPV4),
            &ipv4(source, protocol, ihl, fragment, l4.len()),
            &l4,
        ]);
        let l3 = 14 + 4 * tags.len();
        let destination = self.destination_v4();
        frame[l3 + 16..l3 + 20].copy_from_slice(&destination);
        if self.rng.random_bool(0.03) {
            frame[l3] = (self.rng.random::<u8>() & 0xf0) | ihl;
        }
        frame
    }

    fn ipv6_frame(&mut self) -> Vec<u8> {
        let tags = self.tags();
        let (protocol, l4) = self.transport();
        let kinds = [HOPOPTS, ROUTING, DSTOPTS, AH, FRAGMENT];
        let chain_len = match self.rng.random_range(0..10) {
            0..=3 => 0,
            4..=7 => self.rng.random_range(1..4),
            _ => self.rng.random_range(6..11),
        };
        let chain_kinds: Vec<u8> = (0..chain_len)
            .map(|_| kinds[self.rng.random_range(0..kinds.len())])
            .collect();
        let first = chain_kinds.first().copied().unwrap_or(protocol);
        let mut frame = concat(&[
            &ethernet(&tags, ETH_P_IPV6),
            &ipv6(self.source_v6(), first, 0),
        ]);
        for (i, kind) in chain_kinds.iter().enumerate() {
            let next = chain_kinds.get(i + 1).copied().unwrap_or(protocol);
            let header = match *kind {
                AH => ext_ah(next, self.rng.random_range(0..6)),
                FRAGMENT => match self.rng.random_range(0..4) {
                    0 => ext_fragment(next, 0, true),
                    1 => ext_fragment(next, self.rng.random_range(1..0x1fff), self.rng.random()),
                    _ => ext_fragment(next, 0, false),
                },
                // Hop-by-hop, routing and destination options share a layout.
                _ => ext_options(next, self.rng.random_range(0..4)),
            };
            frame.extend_from_slice(&header);
        }
        frame.extend_from_slice(&l4);
        // The payload length, right but now and then.
        let l3 = 14 + 4 * tags.len();
        let payload = if self.rng.random_bool(0.9) {
            (frame.len() - l3 - 40) as u16
        } else {
            self.rng.random()
        };
        frame[l3 + 4..l3 + 6].copy_from_slice(&payload.to_be_bytes());
        let destination = self.destination_v6();
        frame[l3 + 24..l3 + 40].copy_from_slice(&destination);
        if self.rng.random_bool(0.03) {
            frame[l3] = self.rng.random();
        }
        frame
    }

    fn frame(&mut self) -> Vec<u8> {
        let mut frame = match self.rng.random_range(0..20) {
            0 => {
                let len = self.rng.random_range(14..200);
                (0..len).map(|_| self.rng.random()).collect()
            }
            1 => concat(&[&ethernet(&self.tags(), ETH_P_ARP), &[0u8; 28]]),
            2..=10 => self.ipv4_frame(),
            _ => self.ipv6_frame(),
        };
        // Truncate anywhere past the Ethernet header.
        if self.rng.random_bool(0.25) && frame.len() > 14 {
            let len = self.rng.random_range(14..frame.len());
            frame.truncate(len);
        }
        // Flip a few bytes.
        if self.rng.random_bool(0.1) {
            for _ in 0..self.rng.random_range(1..4) {
                let at = self.rng.random_range(0..frame.len());
                frame[at] = self.rng.random();
            }
        }
        frame
    }
}

/// `[xdp].protected_destinations` of the scoped variants: hosts and
/// prefixes of both families.
const SCOPE: [&str; 4] = [
    "192.0.2.1/32",
    "198.18.0.0/15",
    "2001:db8::1/128",
    "2001:db8:5::/48",
];

/// Frames per CI run; `cargo xtask test --long` sets `SHIELD_DIFF_CASES`
/// to ten million.
const CASES: usize = 1_000_000;
/// Frames between counter reads.
const BATCH: usize = 4096;

fn expected_action(expected: &shield::policy::Decision) -> u32 {
    match expected.verdict {
        shield_common::Verdict::Drop => XDP_DROP,
        shield_common::Verdict::Answered => XDP_TX,
        _ => XDP_PASS,
    }
}

#[test]
fn kernel_program_matches_reference_classifier() {
    if !require_root() {
        return;
    }
    // A namespace of its own: a listener on 443 that issues cookies for
    // every SYN, as `syn_cookies = "always"` has it, and none on 80.
    isolated(compare);
}

fn compare() {
    set_sysctl("net/ipv4/tcp_syncookies", "2");
    set_sysctl("net/ipv4/tcp_timestamps", "2");
    let _listener = TcpListener::bind("[::]:443").unwrap();
    let cookie = TcpSysctls::read().unwrap().cookie_options(1500);
    let cases: usize = std::env::var("SHIELD_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES);
    let seed: u64 = std::env::var("SHIELD_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    println!("differential: seed {seed}, {cases} cases (SHIELD_DIFF_SEED={seed} reproduces)");

    let snapshot = shield::ranges::RangeSet::snapshot();
    let mut prefixes: Vec<String> = snapshot.prefixes().map(|p| p.to_string()).collect();
    // Nested and host prefixes exercise longest-match.
    prefixes.extend(
        [
            "173.245.50.0/24",
            "198.51.100.7/32",
            "10.0.0.0/8",
            "2606:4700:10::/48",
            "2001:db8::5/128",
        ]
        .map(String::from),
    );
    let prefix_refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();

    let mut generator = Generator {
        rng: StdRng::seed_from_u64(seed),
        allowed: prefix_refs.iter().map(|p| p.parse().unwrap()).collect(),
    };
    // Enforcing or not, fragment policy, in-range floods handled or not,
    // every destination judged or only those of SCOPE.
    let variants = [
        (true, FragmentPolicy::JudgeFirst, true, false),
        (true, FragmentPolicy::DropOutside, true, true),
        (false, FragmentPolicy::JudgeFirst, true, false),
        (false, FragmentPolicy::DropOutside, false, true),
        (true, FragmentPolicy::JudgeFirst, false, false),
        (true, FragmentPolicy::JudgeFirst, true, true),
    ];
    let mut program = TestProgram::load().expect("load XDP program");
    let mut compared = 0usize;
    let mut mismatches = Vec::new();
    let mut by_reason = std::collections::BTreeMap::new();
    for (i, (enforce, fragments, in_range, scoped)) in variants.into_iter().enumerate() {
        let mut policy = policy(&prefix_refs, enforce, fragments);
        if scoped {
            policy.destinations = SCOPE.iter().map(|d| d.parse().unwrap()).collect();
        }
        policy.syn_cookies = in_range;
        policy.drop_udp_from_ranges = in_range;
        policy.cookie = cookie;
        policy.sockets.listening.insert(443);
        policy.sockets.issuing_cookies = true;
        apply(&mut program, &policy);
        let share = cases / variants.len() + usize::from(i < cases % variants.len());
        let mut left = share;
        while left > 0 {
            let batch: Vec<Vec<u8>> = (0..left.min(BATCH)).map(|_| generator.frame()).collect();
            left -= batch.len();
            compared += batch.len();
            // Actions per frame; counters per batch, since reading them
            // costs more than running a frame. A batch whose counters
            // disagree is run again frame by frame to name the culprits.
            let before = program.counters().unwrap();
            let mut expected_counts = std::collections::BTreeMap::new();
            for frame in &batch {
                let expected = policy.classify_packet(frame);
                *by_reason.entry(expected.reason.name()).or_insert(0usize) += 1;
                let slot = expected_counts
                    .entry((expected.verdict, expected.reason))
                    .or_insert((0u64, 0u64));
                slot.0 += 1;
                slot.1 += frame.len() as u64;
                let action = program.run(frame).unwrap();
                if action != expected_action(&expected) {
                    mismatches.push((frame.clone(), expected, action));
                }
            }
            let after = program.counters().unwrap();
            let counted = expected_counts
                .iter()
                .all(|(&(verdict, reason), &(packets, bytes))| {
                    let (b, a) = (before.get(verdict, reason), after.get(verdict, reason));
                    a.packets - b.packets == packets && a.bytes - b.bytes == bytes
                });
            let total = |c: &shield::dataplane::Counters| -> u64 {
                shield_common::Verdict::ALL
                    .iter()
                    .flat_map(|&v| shield_common::Reason::ALL.map(|r| c.get(v, r).packets))
                    .sum()
            };
            if !counted || total(&after) - total(&before) != batch.len() as u64 {
                for frame in &batch {
                    let expected = policy.classify_packet(frame);
                    let before = program.counter(expected.verdict, expected.reason).unwrap();
                    let action = program.run(frame).unwrap();
                    let after = program.counter(expected.verdict, expected.reason).unwrap();
                    if after.packets != before.packets + 1 {
                        mismatches.push((frame.clone(), expected, action));
                    }
                }
            }
        }
    }
    println!(
        "differential: {compared} cases compared, {} mismatches; by reason {by_reason:?}",
        mismatches.len()
    );
    for (frame, expected, action) in mismatches.iter().take(5) {
        eprintln!("mismatch: oracle {expected} (action {action}) frame {frame:02x?}");
    }
    assert!(compared >= cases);
    assert!(
        mismatches.is_empty(),
        "{} mismatches (seed {seed})",
        mismatches.len()
    );
    // The generator must reach every reason, or the comparison proves little.
    assert_eq!(
        by_reason.len(),
        shield_common::Reason::COUNT,
        "reasons reached: {by_reason:?}"
    );
}
