//! BPF_PROG_TEST_RUN unit tests of the XDP program on hand-built frames.
//! Every case checks the kernel's action, the counter slot it bumped, and
//! that the reference classifier agrees.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use shield::dataplane::testrun::TestProgram;
use shield_common::{FragmentPolicy, Reason};
use shield_test_support::{ebpf::REFUSED_BY_VERIFIER, packet::*, require_root, xdp::*};

const CF_V4: &str = "173.245.48.0/20";
const CF_V6: &str = "2400:cb00::/32";
const INSIDE_V4: &str = "173.245.48.10";
const OUTSIDE_V4: &str = "203.0.113.7";
const INSIDE_V6: &str = "2400:cb00::10";
const OUTSIDE_V6: &str = "2001:db8:bad::7";

struct Harness {
    program: TestProgram,
    policy: shield::policy::Classifier,
}

impl Harness {
    fn new(enforce: bool, fragments: FragmentPolicy) -> Option<Harness> {
        if !require_root() {
            return None;
        }
        let mut program = TestProgram::load().expect("the verifier must accept the program");
        let policy = policy(&[CF_V4, CF_V6], enforce, fragments);
        apply(&mut program, &policy);
        Some(Harness { program, policy })
    }

    #[track_caller]
    fn expect(&self, frame: &[u8], reason: Reason) {
        let (_, kernel, oracle) = judge(&self.program, &self.policy, frame);
        assert_eq!(kernel, reason, "kernel reason for frame {frame:02x?}");
        assert_eq!(oracle, reason, "oracle reason for frame {frame:02x?}");
    }
}

fn v4_frame(
    tags: &[u16],
    source: &str,
    protocol: u8,
    ihl: u8,
    fragment: u16,
    l4: &[u8],
) -> Vec<u8> {
    concat(&[
        &ethernet(tags, ETH_P_IPV4),
        &ipv4(v4(source), protocol, ihl, fragment, l4.len()),
        l4,
    ])
}

fn v6_frame(source: &str, chain: &[Vec<u8>], first_next: u8, l4: &[u8]) -> Vec<u8> {
    let mut frame = concat(&[&ethernet(&[], ETH_P_IPV6), &ipv6(v6(source), first_next, 0)]);
    for header in chain {
        frame.extend_from_slice(header);
    }
    frame.extend_from_slice(l4);
    frame
}

#[test]
fn every_reason_is_reached_over_ipv4_and_ipv6() {
    let Some(h) = Harness::new(true, FragmentPolicy::JudgeFirst) else {
        return;
    };
    h.expect(
        &ethernet(&[], ETH_P_ARP)
            .into_iter()
            .chain([0u8; 28])
            .collect::<Vec<_>>(),
        Reason::NonIp,
    );
    h.expect(
        &concat(&[&ethernet(&[], 0x88cc), &[0u8; 30]]),
        Reason::NonIp,
    );
    for port in [80, 443] {
        h.expect(&ipv4_tcp(INSIDE_V4, port), Reason::Allowed);
        h.expect(&ipv4_tcp(OUTSIDE_V4, port), Reason::OutsideRanges);
        h.expect(&ipv6_tcp(INSIDE_V6, port), Reason::Allowed);
        h.expect(&ipv6_tcp(OUTSIDE_V6, port), Reason::OutsideRanges);
    }
    h.expect(
        &v4_frame(&[], OUTSIDE_V4, UDP, 5, 0, &udp(443)),
        Reason::OutsideRanges,
    );
    h.expect(
        &v4_frame(&[], INSIDE_V4, UDP, 5, 0, &udp(443)),
        Reason::Allowed,
    );
    h.expect(&ipv4_tcp(OUTSIDE_V4, 22), Reason::Unprotected);
    h.expect(
        &v4_frame(&[], OUTSIDE_V4, UDP, 5, 0, &udp(53)),
        Reason::Unprotected,
    );
    h.expect(
        &v4_frame(&[], OUTSIDE_V4, UDP, 5, 0, &udp(80)),
        Reason::Unprotected,
    );
    h.expect(
        &v4_frame(&[], OUTSIDE_V4, ICMP, 5, 0, &[8, 0, 0, 0, 0, 0, 0, 0]),
        Reason::Unprotected,
    );
    h.expect(&ipv6_tcp(OUTSIDE_V6, 22), Reason::Unprotected);
    h.expect(
        &v6_frame(OUTSIDE_V6, &[], ICMPV6, &[135, 0, 0, 0, 0, 0, 0, 0]),
        Reason::Unprotected,
    );
    h.expect(
        &v6_frame(OUTSIDE_V6, &[], ESP, &[0u8; 16]),
        Reason::Unprotected,
    );
    h.expect(
        &v6_frame(OUTSIDE_V6, &[], NO_NEXT, &[]),
        Reason::Unprotected,
    );
    // Malformed: the port cannot be known.
    h.expect(
        &v4_frame(&[], OUTSIDE_V4, TCP, 5, 0, &tcp(443)[..10]),
        Reason::Malformed,
    );
    // Non-first fragment and the drop-outside fragment reason are covered below.
}

#[test]
fn vlan_and_qinq_are_walked() {
    let Some(h) = Harness::new(true, FragmentPolicy::JudgeFirst) else {
        return;
    };
    for tags in [
        &[ETH_P_8021Q][..],
        &[ETH_P_8021AD],
        &[ETH_P_8021AD, ETH_P_8021Q],
        &[ETH_P_8021Q, ETH_P_8021Q],
    ] {
        h.expect(
            &v4_frame(tags, OUTSIDE_V4, TCP, 5, 0, &tcp(443)),
            Reason::OutsideRanges,
        );
        h.expect(
            &v4_frame(tags, INSIDE_V4, TCP, 5, 0, &tcp(443)),
            Reason::Allowed,
        );
        h.expect(
            &v4_frame(tags, OUTSIDE_V4, TCP, 5, 0, &tcp(22)),
            Reason::Unprotected,
        );
        let v6 = concat(&[
            &ethernet(tags, ETH_P_IPV6),
            &ipv6(v6(OUTSIDE_V6), TCP, 20),
            &tcp(443),
        ]);
        h.expect(&v6, Reason::OutsideRanges);
        h.expect(
            &concat(&[&ethernet(tags, ETH_P_ARP), &[0u8; 28]]),
            Reason::NonIp,
        );
    }
    // A third tag is past the bound: the stack would not take it either.
    let three = [ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q];
    h.expect(
        &v4_frame(&three, OUTSIDE_V4, TCP, 5, 0, &tcp(443)),
        Reason::NonIp,
    );
}

#[test]
fn ipv4_options_and_bad_headers() {
    let Some(h) = Harness::new(true, FragmentPolicy::JudgeFirst) else {
        return;
    };
    for ihl in 5..=15 {
        h.expect(
            &v4_frame(&[], OUTSIDE_V4, TCP, ihl, 0, &tcp(443)),
            Reason::OutsideRanges,
        );
        h.expect(
            &v4_frame(&[], INSIDE_V4, TCP, ihl, 0, &tcp(443)),
            Reason::Allowed,
        );
        h.expect(
            &v4_frame(&[], OUTSIDE_V4, TCP, ihl, 0, &tcp(22)),
            Reason::Unprotected,
        );
    }
    for ihl in 0..5 {
        h.expect(
            &v4_frame(&[], OUTSIDE_V4, TCP, ihl, 0, &tcp(443)),
            Reason::Malformed,
        );
        // Inside sources pass whatever their headers.
        h.expect(
            &v4_frame(&[], INSIDE_V4, TCP, ihl, 0, &tcp(443)),
            Reason::Allowed,
        );
    }
    // IHL claiming more header than the frame holds.
    let mut frame = v4_frame(&[], OUTSIDE_V4, TCP, 5, 0, &[]);
    frame[14] = 0x4f;
    h.expect(&frame, Reason::Malformed);
    // Wrong version nibble.
    let mut frame = ipv4_tcp(OUTSIDE_V4, 443);
    frame[14] = 0x65;
    h.expect(&frame, Reason::Malformed);
    let mut frame = ipv4_tcp(INSIDE_V4, 443);
    frame[14] = 0x65;
    h.expect(&frame, Reason::Allowed);
    // An IPv6 ethertype carrying an IPv4-looking version.
    let mut frame = ipv6_tcp(OUTSIDE_V6, 443);
    frame[14] = 0x40;
    h.expect(&frame, Reason::Malformed);
}

#[test]
fn each_ipv6_extension_header_is_walked() {
    let Some(h) = Harness::new(true, FragmentPolicy::JudgeFirst) else {
        return;
    };
    type Build = fn(u8) -> Vec<u8>;
    let kinds: [(u8, Build); 5] = [
        (HOPOPTS, |next| ext_options(next, 0)),
        (ROUTING, |next| ext_options(next, 2)),
        (DSTOPTS, |next| ext_options(next, 1)),
        (AH, |next| ext_ah(next, 4)),
        (FRAGMENT, |next| ext_fragment(next, 0, false)),
    ];
    for (kind, build) in kinds {
        for (source, port, reason) in [
            (OUTSIDE_V6, 443, Reason::OutsideRanges),
            (INSIDE_V6, 443, Reason::Allowed),
            (OUTSIDE_V6, 22, Reason::Unprotected),
        ] {
            h.expect(&v6_frame(source, &[build(TCP)], kind, &tcp(port)), reason);
        }
        h.expect(
            &v6_frame(OUTSIDE_V6, &[build(UDP)], kind, &udp(443)),
            Reason::OutsideRanges,
        );
        h.expect(
            &v6_frame(OUTSIDE_V6, &[build(ICMPV6)], kind, &[128, 0, 0, 0]),
            Reason::Unprotected,
        );
        // The extension header itself cut short.
        let mut frame = v6_frame(OUTSIDE_V6, &[build(TCP)], kind, &[]);
        frame.truncate(54 + 1);
        h.expect(&frame, Reason::Malformed);
    }
}

#[test]
fn extension_chain_at_the_bound_passes_the_walk_and_one_past_is_malformed() {
    let Some(h) = Harness::new(true, FragmentPolicy::JudgeFirst) else {
        return;
    };
    let bound = shield_common::MAX_IPV6_EXT_HEADERS;
    let chain = |n: usize, last_next: u8| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| ext_options(if i + 1 == n { last_next } else { DSTOPTS }, 0))
            .collect()
    };
    h.expect(
        &v6_frame(OUTSIDE_V6, &chain(bound, TCP), DSTOPTS, &tcp(443)),
        Reason::OutsideRanges,
    );
    h.expect(
        &v6_frame(OUTSIDE_V6, &chain(bound, TCP), DSTOPTS, &tcp(22)),
        Reason::Unprotected,
    );
    h.expect(
        &v6_frame(OUTSIDE_V6, &chain(bound + 1, TCP), DSTOPTS, &tcp(443)),
        Reason::Malformed,
    );
    h.expect(
        &v6_frame(OUTSIDE_V6, &chain(bound + 1, TCP), DSTOPTS, &tcp(22)),
        Reason::Malformed,
    );
    h.expect(
        &v6_frame(INSIDE_V6, &chain(bound + 1, TCP), DSTOPTS, &tcp(443)),
        Reason::Allowed,
    );
    // Ending the chain in a non-walked header at the bound passes.
    h.expect(
        &v6_frame(OUTSIDE_V6, &chain(bound, ESP), DSTOPTS, &[0u8; 8]),
        Reason::Unprotected,
    );
}

#[test]
fn fragments_under_judge_first() {
    let Some(h) = Harness::new(true, FragmentPolicy::JudgeFirst) else {
        return;
    };
    // IPv4 first fragment: judged by port.
    h.expect(
        &v4_frame(&[], OUTSIDE_V4, TCP, 5, ipv4_fragment(0, true), &tcp(443)),
        Reason::OutsideRanges,
    );
    h.expect(
        &v4_frame(&[], OUTSIDE_V4, TCP, 5, ipv4_fragment(0, true), &tcp(22)),
        Reason::Unprotected,
    );
    h.expect(
        &v4_frame(&[], INSIDE_V4, TCP, 5, ipv4_fragment(0, true), &tcp(443)),
        Reason::Allowed,
    );
    // Non-first fragments pass: their first fragment was judged.
    h.expect(
        &v4_frame(&[], OUTSIDE_V4, TCP, 5, ipv4_fragment(3, true), &[0u8; 24]),
        Reason::NonFirstFragment,
    );
    h.expect(
        &v4_frame(&[], OUTSIDE_V4, TCP, 5, ipv4_fragment(3, false), &[0u8; 24]),
        Reason::NonFirstFragment,
    );
    // A first fragment too short to hold the transport header.
    h.expect(
        &v4_frame(
            &[],
            OUTSIDE_V4,
            TCP,
            5,
            ipv4_fragment(0, true),
            &tcp(443)[..8],
        ),
        Reason::Malformed,
    );
    h.expect(
        &v4_frame(
            &[],
            OUTSIDE_V4,
            UDP,
            5,
            ipv4_fragment(0, true),
            &udp(443)[..4],
        ),
        Reason::Malformed,
    );
    h.expect(
        &v4_frame(
            &[],
            INSIDE_V4,
            TCP,
            5,
            ipv4_fragment(0, true),
            &tcp(443)[..8],
        ),
        Reason::Allowed,
    );
    // IPv6.
    h.expect(
        &v6_frame(
            OUTSIDE_V6,
            &[ext_fragment(TCP, 0, true)],
            FRAGMENT,
            &tcp(443),
        ),
        Reason::OutsideRanges,
    );
    h.expect(
        &v6_frame(
            OUTSIDE_V6,
            &[ext_fragment(TCP, 0, true)],
            FRAGMENT,
            &tcp(22),
        ),
        Reason::Unprotected,
    );
    h.expect(
        &v6_frame(
            OUTSIDE_V6,
            &[ext_fragment(TCP, 5, true)],
            FRAGMENT,
            &[0u8; 16],
        ),
        Reason::NonFirstFragment,
    );
    h.expect(
        &v6_frame(
            OUTSIDE_V6,
            &[ext_fragment(TCP, 5, false)],
            FRAGMENT,
            &[0u8; 16],
        ),
        Reason::NonFirstFragment,
    );
    h.expect(
        &v6_frame(
            OUTSIDE_V6,
            &[ext_fragment(TCP, 0, true)],
            FRAGMENT,
            &tcp(443)[..6],
        ),
        Reason::Malformed,
    );
}

#[test]
fn fragments_under_drop_outside() {
    let Some(h) = Harness::new(true, FragmentPolicy::DropOutside) else {
        return;
    };
    h.expect(
        &v4_frame(&[], OUTSIDE_V4, TCP, 5, ipv4_fragment(0, true), &tcp(443)),
        Reason::Fragment,
    );
    h.expect(
        &v4_frame(&[], OUTSIDE_V4, TCP, 5, ipv4_fragment(0, true), &tcp(22)),
        Reason::Fragment,
    );
    h.expect(
        &v4_frame(&[], OUTSIDE_V4, TCP, 5, ipv4_fragment(7, false), &[0u8; 24]),
        Reason::Fragment,
    );
    h.expect(
        &v4_frame(&[], INSIDE_V4, TCP, 5, ipv4_fragment(7, false), &[0u8; 24]),
        Reason::Allowed,
    );
    h.expect(
        &v6_frame(
            OUTSIDE_V6,
            &[ext_fragment(UDP, 9, false)],
            FRAGMENT,
            &[0u8; 16],
        ),
        Reason::Fragment,
    );
    h.expect(
        &v6_frame(
            INSIDE_V6,
            &[ext_fragment(UDP, 9, false)],
            FRAGMENT,
            &[0u8; 16],
        ),
        Reason::Allowed,
    );
    // An atomic fragment (offset 0, no M) is a whole packet.
    h.expect(
        &v6_frame(
            OUTSIDE_V6,
            &[ext_fragment(TCP, 0, false)],
            FRAGMENT,
            &tcp(22),
        ),
        Reason::Unprotected,
    );
    // Unfragmented traffic is unaffected.
    h.expect(&ipv4_tcp(OUTSIDE_V4, 22), Reason::Unprotected);
    h.expect(&ipv4_tcp(OUTSIDE_V4, 443), Reason::OutsideRanges);
}

#[test]
fn truncation_at_every_header_boundary() {
    let Some(h) = Harness::new(true, FragmentPolicy::JudgeFirst) else {
        return;
    };
    let frames = [
        v4_frame(&[], OUTSIDE_V4, TCP, 7, 0, &tcp(443)),
        v4_frame(
            &[ETH_P_8021AD, ETH_P_8021Q],
            OUTSIDE_V4,
            UDP,
            5,
            0,
            &udp(443),
        ),
        v6_frame(
            OUTSIDE_V6,
            &[
                ext_options(ROUTING, 1),
                ext_options(AH, 0),
                ext_ah(FRAGMENT, 2),
                ext_fragment(DSTOPTS, 0, true),
                ext_options(TCP, 0),
            ],
            HOPOPTS,
            &tcp(443),
        ),
    ];
    for frame in frames {
        // Every length from a bare Ethernet header (the kernel refuses
        // shorter test input) to the whole frame.
        for len in 14..=frame.len() {
            let (_, kernel, oracle) = judge(&h.program, &h.policy, &frame[..len]);
            assert_eq!(kernel, oracle, "length {len} of {frame:02x?}");
            let expected = if len == frame.len() {
                Reason::OutsideRanges
            } else {
                kernel
            };
            assert_eq!(kernel, expected);
            if len < frame.len() {
                assert!(
                    matches!(kernel, Reason::Malformed | Reason::NonIp),
                    "a cut frame from outside must be malformed or non-IP, got {kernel:?} at {len}"
                );
            }
        }
    }
}

#[test]
fn monitor_mode_counts_would_drops_and_drops_nothing() {
    let Some(h) = Harness::new(false, FragmentPolicy::DropOutside) else {
        return;
    };
    for frame in [
        ipv4_tcp(OUTSIDE_V4, 443),
        ipv6_tcp(OUTSIDE_V6, 80),
        v4_frame(&[], OUTSIDE_V4, TCP, 3, 0, &tcp(443)),
        v4_frame(&[], OUTSIDE_V4, TCP, 5, ipv4_fragment(2, false), &[0u8; 8]),
    ] {
        let (action, kernel, oracle) = judge(&h.program, &h.policy, &frame);
        assert_eq!(action, XDP_PASS);
        assert!(kernel.drops());
        assert_eq!(kernel, oracle);
    }
    let counters = h.program.counters().unwrap();
    let would: u64 = counters
        .iter()
        .filter(|(v, _, _)| *v == shield_common::Verdict::WouldDrop)
        .map(|(_, _, c)| c.packets)
        .sum();
    assert_eq!(would, 4);
    assert_eq!(
        counters
            .iter()
            .filter(|(v, _, _)| *v == shield_common::Verdict::Drop)
            .map(|(_, _, c)| c.packets)
            .sum::<u64>(),
        0
    );
}

/// `frame` (untagged) sent to `destination` instead.
fn to(mut frame: Vec<u8>, destination: &str) -> Vec<u8> {
    match destination.parse::<std::net::IpAddr>().unwrap() {
        std::net::IpAddr::V4(d) => frame[30..34].copy_from_slice(&d.octets()),
        std::net::IpAddr::V6(d) => frame[38..54].copy_from_slice(&d.octets()),
    }
    frame
}

#[test]
fn protected_destinations_scope_what_is_judged() {
    let Some(mut h) = Harness::new(true, FragmentPolicy::DropOutside) else {
        return;
    };
    // The frames' own destinations, 192.0.2.1 and 2001:db8::1, are in.
    h.policy.destinations = vec![
        "192.0.2.1/32".parse().unwrap(),
        "2001:db8::/64".parse().unwrap(),
    ];
    h.policy.drop_udp_from_ranges = true;
    apply(&mut h.program, &h.policy);
    let mut found = h.program.maps().destinations().unwrap();
    found.sort();
    assert_eq!(found, h.policy.destinations);
    const GREY_V4: &str = "192.0.2.200";
    const GREY_V6: &str = "2001:db8:1::1";
    h.expect(&ipv4_tcp(OUTSIDE_V4, 443), Reason::OutsideRanges);
    h.expect(&ipv6_tcp(OUTSIDE_V6, 80), Reason::OutsideRanges);
    h.expect(
        &to(ipv4_tcp(OUTSIDE_V4, 443), GREY_V4),
        Reason::UnprotectedDestination,
    );
    h.expect(
        &to(ipv6_tcp(OUTSIDE_V6, 80), GREY_V6),
        Reason::UnprotectedDestination,
    );
    // In-range policy is scoped alike; unprotected ports stay what they are.
    let udp_in = v4_frame(&[], INSIDE_V4, UDP, 5, 0, &udp(443));
    h.expect(&udp_in, Reason::UdpFromRanges);
    h.expect(&to(udp_in, GREY_V4), Reason::UnprotectedDestination);
    h.expect(&to(ipv4_tcp(OUTSIDE_V4, 22), GREY_V4), Reason::Unprotected);
    h.expect(
        &to(ipv4_tcp(INSIDE_V4, 443), GREY_V4),
        Reason::UnprotectedDestination,
    );
    // Malformed and drop-outside fragments are judged only in scope.
    let short = v4_frame(&[], OUTSIDE_V4, TCP, 5, 0, &tcp(443)[..10]);
    h.expect(&short, Reason::Malformed);
    h.expect(&to(short, GREY_V4), Reason::UnprotectedDestination);
    let piece = v4_frame(&[], OUTSIDE_V4, TCP, 5, ipv4_fragment(7, false), &[0u8; 24]);
    h.expect(&piece, Reason::Fragment);
    h.expect(&to(piece, GREY_V4), Reason::UnprotectedDestination);
    let piece = v6_frame(
        OUTSIDE_V6,
        &[ext_fragment(UDP, 9, false)],
        FRAGMENT,
        &[0u8; 16],
    );
    h.expect(&piece, Reason::Fragment);
    h.expect(&to(piece, GREY_V6), Reason::UnprotectedDestination);

    // A new scope replaces the old one; an empty one judges everything.
    h.policy.destinations = vec!["192.0.2.200/32".parse().unwrap()];
    apply(&mut h.program, &h.policy);
    assert_eq!(
        h.program.maps().destinations().unwrap(),
        h.policy.destinations
    );
    h.expect(&ipv4_tcp(OUTSIDE_V4, 443), Reason::UnprotectedDestination);
    h.expect(
        &to(ipv4_tcp(OUTSIDE_V4, 443), GREY_V4),
        Reason::OutsideRanges,
    );
    h.expect(&ipv6_tcp(OUTSIDE_V6, 80), Reason::UnprotectedDestination);
    h.policy.destinations.clear();
    apply(&mut h.program, &h.policy);
    assert!(h.program.maps().destinations().unwrap().is_empty());
    h.expect(
        &to(ipv4_tcp(OUTSIDE_V4, 443), GREY_V4),
        Reason::OutsideRanges,
    );
    h.expect(
        &to(ipv6_tcp(OUTSIDE_V6, 80), GREY_V6),
        Reason::OutsideRanges,
    );
}

#[test]
fn protected_ports_come_from_the_map() {
    let Some(mut h) = Harness::new(true, FragmentPolicy::JudgeFirst) else {
        return;
    };
    h.policy.protected_tcp_ports = [8443].into();
    h.policy.protected_udp_ports = [].into();
    apply(&mut h.program, &h.policy);
    h.expect(&ipv4_tcp(OUTSIDE_V4, 443), Reason::Unprotected);
    h.expect(&ipv4_tcp(OUTSIDE_V4, 8443), Reason::OutsideRanges);
    h.expect(
        &v4_frame(&[], OUTSIDE_V4, UDP, 5, 0, &udp(443)),
        Reason::Unprotected,
    );
    let (tcp_ports, udp_ports) = h.program.maps().ports().unwrap();
    assert_eq!(tcp_ports, [8443].into());
    assert!(udp_ports.is_empty());
}

#[test]
fn allowlist_longest_match_and_extra_prefixes() {
    let Some(mut h) = Harness::new(true, FragmentPolicy::JudgeFirst) else {
        return;
    };
    h.policy = policy(
        &[CF_V4, CF_V6, "198.51.100.7/32", "2001:db8:1::/48"],
        true,
        FragmentPolicy::JudgeFirst,
    );
    apply(&mut h.program, &h.policy);
    h.expect(&ipv4_tcp("198.51.100.7", 443), Reason::Allowed);
    h.expect(&ipv4_tcp("198.51.100.8", 443), Reason::OutsideRanges);
    h.expect(&ipv6_tcp("2001:db8:1:ffff::1", 443), Reason::Allowed);
    h.expect(&ipv6_tcp("2001:db8:2::1", 443), Reason::OutsideRanges);
    // Prefix edges.
    h.expect(&ipv4_tcp("173.245.63.255", 443), Reason::Allowed);
    h.expect(&ipv4_tcp("173.245.64.0", 443), Reason::OutsideRanges);
    h.expect(&ipv4_tcp("173.245.47.255", 443), Reason::OutsideRanges);
    // Removing a prefix takes effect.
    h.policy = policy(&[CF_V4, CF_V6], true, FragmentPolicy::JudgeFirst);
    apply(&mut h.program, &h.policy);
    h.expect(&ipv4_tcp("198.51.100.7", 443), Reason::OutsideRanges);
    assert_eq!(h.program.maps().allowlist().unwrap().len(), 2);
}

/// A program the kernel refuses: the error names where it was headed and
/// carries the verifier's own explanation, which is what the operator
/// needs to act on.
#[test]
fn a_refused_program_reports_the_verifier_log() {
    if !require_root() {
        return;
    }
    let error = match TestProgram::load_object(REFUSED_BY_VERIFIER, "refused_by_verifier") {
        Ok(_) => panic!("the verifier accepted a program that reads past the packet bounds"),
        // The verifier log is in aya's error, the cause of shield's.
        Err(error) => shield::error::Chain(&error).to_string(),
    };
    assert!(
        error.contains("the kernel refused the XDP program for (test run)"),
        "{error}"
    );
    assert!(error.contains("invalid access to packet"), "{error}");
}

/// The object's maps are exactly the table the loader checks pins
/// against, so a pin that passes the check is one the program can use.
#[test]
fn the_object_declares_the_map_layouts_of_the_table() {
    use aya::maps::MapType;
    use shield_common::{map_specs, MapKind};
    if !require_root() {
        return;
    }
    let program = TestProgram::load().expect("load");
    let infos = program.map_infos().expect("map infos");
    for spec in &map_specs::ALL {
        let (_, info) = infos
            .iter()
            .find(|(name, _)| name == spec.name)
            .unwrap_or_else(|| panic!("the object has no map {}", spec.name));
        let kind = match info.map_type().expect("map type") {
            MapType::Array => MapKind::Array,
            MapType::PerCpuArray => MapKind::PerCpuArray,
            MapType::LpmTrie => MapKind::LpmTrie,
            MapType::RingBuf => MapKind::RingBuf,
            MapType::LruHash => MapKind::LruHash,
            other => panic!("{}: unexpected kind {other:?}", spec.name),
        };
        assert_eq!(
            (kind, info.key_size(), info.value_size(), info.max_entries()),
            (spec.kind, spec.key_size, spec.value_size, spec.max_entries),
            "map {}",
            spec.name
        );
    }
    // Only the table's maps, plus the sections the compiler adds (.rodata
    // and the like, whose names start with a dot).
    let extra: Vec<_> = infos
        .iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .filter(|(name, _)| !map_specs::ALL.iter().any(|s| s.name == name))
        .map(|(name, _)| name.clone())
        .collect();
    assert!(extra.is_empty(), "maps outside the table: {extra:?}");
}

/// `COVERED_V4` lets the program allow a source without the trie walk, so
/// it must hold exactly the /24s the allowlist covers whole, and lose them
/// when the allowlist does.
#[test]
fn covered_24s_follow_the_allowlist_and_never_outlive_it() {
    if !require_root() {
        return;
    }
    let mut program = TestProgram::load().expect("the verifier must accept the program");
    let covered = |program: &mut TestProgram, address: &str| {
        program
            .maps()
            .covered(address.parse().unwrap())
            .expect("read COVERED_V4")
            .expect("this build's object has COVERED_V4")
    };
    let first = policy(
        &["104.16.0.0/13", "198.51.100.7/32", "192.0.2.0/25", CF_V6],
        true,
        FragmentPolicy::JudgeFirst,
    );
    apply(&mut program, &first);
    assert!(covered(&mut program, "104.16.0.1"));
    assert!(covered(&mut program, "104.23.255.254"));
    assert!(!covered(&mut program, "104.24.0.1"));
    // Prefixes longer than /24 leave their /24 to the trie.
    assert!(!covered(&mut program, "198.51.100.7"));
    assert!(!covered(&mut program, "192.0.2.1"));
    expect_sources(
        &program,
        &first,
        &[
            ("104.16.0.1", Reason::Allowed),
            ("104.23.255.254", Reason::Allowed),
            ("198.51.100.7", Reason::Allowed),
            ("198.51.100.8", Reason::OutsideRanges),
            ("192.0.2.1", Reason::Allowed),
            ("192.0.2.200", Reason::OutsideRanges),
            ("104.24.0.1", Reason::OutsideRanges),
        ],
    );

    // The /13 leaves; a /14 next to it and a /24 inside the old one arrive.
    let second = policy(
        &["104.24.0.0/14", "104.16.9.0/24", CF_V6],
        true,
        FragmentPolicy::JudgeFirst,
    );
    apply(&mut program, &second);
    assert!(!covered(&mut program, "104.16.0.1"));
    assert!(covered(&mut program, "104.16.9.9"));
    assert!(covered(&mut program, "104.24.0.1"));
    expect_sources(
        &program,
        &second,
        &[
            ("104.16.0.1", Reason::OutsideRanges),
            ("104.23.255.254", Reason::OutsideRanges),
            ("104.16.9.9", Reason::Allowed),
            ("104.24.0.1", Reason::Allowed),
            ("198.51.100.7", Reason::OutsideRanges),
        ],
    );

    // A bit the trie does not back, as a daemon that did not know the map
    // would leave behind after changing the trie: the program trusts it
    // (which is why it must never be stale), and the next apply clears it.
    let third = policy(&["192.0.2.0/25", CF_V6], true, FragmentPolicy::JudgeFirst);
    apply(&mut program, &third);
    let stray = "192.0.2.200";
    assert!(!covered(&mut program, stray));
    set_covered_bit(&program, stray);
    assert!(covered(&mut program, stray));
    assert_eq!(
        program.run(&ipv4_tcp(stray, 443)).unwrap(),
        2,
        "the program allows a covered source without the trie"
    );
    apply(&mut program, &third);
    assert!(!covered(&mut program, stray));
    expect_sources(&program, &third, &[(stray, Reason::OutsideRanges)]);
}

/// TCP to 443 from each source gets its reason from the kernel and the
/// reference classifier alike.
#[track_caller]
fn expect_sources(
    program: &TestProgram,
    policy: &shield::policy::Classifier,
    cases: &[(&str, Reason)],
) {
    for &(source, reason) in cases {
        let (_, kernel, oracle) = judge(program, policy, &ipv4_tcp(source, 443));
        assert_eq!((kernel, oracle), (reason, reason), "from {source}");
    }
}

/// Sets the `COVERED_V4` bit of `address`'s /24 behind the daemon's back.
fn set_covered_bit(program: &TestProgram, address: &str) {
    use aya::maps::{Array, Map, MapData};
    use shield_common::{prefilter_index, CoveredWords, COVERED_WORDS_PER_ENTRY};
    let (_, info) = program
        .map_infos()
        .unwrap()
        .into_iter()
        .find(|(name, _)| name == "COVERED_V4")
        .expect("the program has COVERED_V4");
    let data = MapData::from_id(info.id()).unwrap();
    let mut map: Array<MapData, CoveredWords> = Array::try_from(Map::Array(data)).unwrap();
    let index = prefilter_index(v4(address));
    let (entry, word) = (
        index / 64 / COVERED_WORDS_PER_ENTRY,
        index / 64 % COVERED_WORDS_PER_ENTRY,
    );
    let mut words = map.get(&entry, 0).unwrap();
    words[word as usize] |= 1u64 << (index % 64);
    map.set(entry, words, 0).unwrap();
}
