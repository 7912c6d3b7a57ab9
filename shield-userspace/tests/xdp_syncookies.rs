//! In-range floods under BPF_PROG_TEST_RUN: a SYN from inside the ranges
//! answered with the kernel's SYN cookie (the answer checked field by
//! field, with checksums computed here), stray ACKs dropped, an ACK with a
//! cookie passed, UDP from inside dropped.
//!
//! Each test runs in a network namespace of its own (`netns::isolated`):
//! the test run uses that namespace's loopback, so its listeners and TCP
//! sysctls are what the socket helpers see.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, TcpListener};

use shield::{dataplane::sysctl::TcpSysctls, dataplane::testrun::TestProgram, policy::Classifier};
use shield_common::{Reason, COOKIE_SACK, COOKIE_TIMESTAMPS, COOKIE_WINDOW_SCALING};
use shield_test_support::{
    netns::{isolated, set_sysctl},
    packet::*,
    require_root,
    xdp::*,
};

const CF_V4: &str = "173.245.48.0/20";
const CF_V6: &str = "2400:cb00::/32";
const INSIDE_V4: &str = "173.245.48.10";
const INSIDE_V6: &str = "2400:cb00::10";
/// The destinations of the hand-built frames (`packet::ipv4`, `ipv6`).
const ORIGIN_V4: &str = "192.0.2.1";
const ORIGIN_V6: &str = "2001:db8::1";

/// The program with in-range handling on, as `[xdp]` defaults ship it.
struct Harness {
    program: TestProgram,
    policy: Classifier,
    /// Kept open: the listener the cookie helper finds.
    _listeners: Vec<TcpListener>,
}

impl Harness {
    /// In the calling thread's namespace: listeners on 443 (both
    /// families), cookies issued for every SYN (`tcp_syncookies = 2`, as
    /// "always" sets) unless `issuing` is false, and timestamps without an
    /// offset so options ride on them.
    fn new(issuing: bool) -> Harness {
        set_sysctl("net/ipv4/tcp_syncookies", if issuing { "2" } else { "1" });
        set_sysctl("net/ipv4/tcp_timestamps", "2");
        // Dual-stack: one listener takes IPv4 and IPv6 alike.
        let listeners = vec![TcpListener::bind("[::]:443").unwrap()];
        let mut program = TestProgram::load().expect("the verifier must accept the program");
        let mut policy = policy(
            &[CF_V4, CF_V6],
            true,
            shield_common::FragmentPolicy::JudgeFirst,
        );
        policy.syn_cookies = true;
        policy.drop_udp_from_ranges = true;
        policy.cookie = TcpSysctls::read().unwrap().cookie_options(1500);
        policy.sockets.listening.insert(443);
        policy.sockets.issuing_cookies = issuing;
        apply(&mut program, &policy);
        Harness {
            program,
            policy,
            _listeners: listeners,
        }
    }

    /// The kernel's and the oracle's reason for `frame`, which must agree.
    #[track_caller]
    fn expect(&self, frame: &[u8], reason: Reason) -> (u32, Reason) {
        let (action, kernel, oracle) = judge(&self.program, &self.policy, frame);
        assert_eq!(kernel, reason, "kernel reason for frame {frame:02x?}");
        assert_eq!(oracle, reason, "oracle reason for frame {frame:02x?}");
        (action, kernel)
    }
}

/// A SYN-ACK taken apart: what the test checks of a cookie answer.
#[derive(Debug)]
struct Answer {
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    mss: Option<u16>,
    window_scale: Option<u8>,
    sack: bool,
    timestamps: Option<(u32, u32)>,
}

/// Checks the frame `answer` is the SYN-ACK to `syn` (Ethernet, IP and TCP
/// headers turned around, checksums right) and returns its TCP fields.
fn check_answer(syn: &Segment, request: &[u8], answer: &[u8]) -> Answer {
    assert_eq!(
        answer.len(),
        request.len(),
        "the answer keeps the frame's length"
    );
    assert_eq!(
        answer[0..6],
        request[6..12],
        "destination MAC is the SYN's source"
    );
    assert_eq!(
        answer[6..12],
        request[0..6],
        "source MAC is the SYN's destination"
    );
    assert_eq!(answer[12..14], request[12..14]);
    let (tcp, addresses) = match syn.source {
        IpAddr::V4(_) => {
            let ip = &answer[14..34];
            assert_eq!(ip[0], 0x45);
            assert_eq!(ip[8], 64, "TTL");
            assert_eq!(ip[9], TCP);
            assert_eq!(ip[2..4], request[16..18], "total length");
            assert_eq!(ip[6..8], [0x40, 0], "don't fragment, no offset");
            assert_eq!(
                ip[12..16],
                request[30..34],
                "source is the SYN's destination"
            );
            assert_eq!(
                ip[16..20],
                request[26..30],
                "destination is the SYN's source"
            );
            assert_eq!(internet_checksum(&[ip]), 0, "IPv4 header checksum");
            (&answer[34..], (syn.destination, syn.source))
        }
        IpAddr::V6(_) => {
            let ip = &answer[14..54];
            assert_eq!(ip[0..4], [0x60, 0, 0, 0]);
            assert_eq!(ip[4..6], request[18..20], "payload length");
            assert_eq!(ip[6], TCP);
            assert_eq!(ip[7], 64, "hop limit");
            assert_eq!(ip[8..24], request[38..54]);
            assert_eq!(ip[24..40], request[22..38]);
            (&answer[54..], (syn.destination, syn.source))
        }
    };
    assert_eq!(
        pseudo_checksum(addresses.0, addresses.1, tcp),
        0,
        "TCP checksum of {tcp:02x?}"
    );
    assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), syn.destination_port);
    assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), syn.source_port);
    let header_len = usize::from(tcp[12] >> 4) * 4;
    let mut parsed = Answer {
        seq: u32::from_be_bytes(tcp[4..8].try_into().unwrap()),
        ack: u32::from_be_bytes(tcp[8..12].try_into().unwrap()),
        flags: tcp[13],
        window: u16::from_be_bytes([tcp[14], tcp[15]]),
        mss: None,
        window_scale: None,
        sack: false,
        timestamps: None,
    };
    assert_eq!(tcp[18..20], [0, 0], "urgent pointer");
    let mut options = &tcp[20..header_len];
    while let Some(&kind) = options.first() {
        match kind {
            0 => {
                assert!(options.iter().all(|&b| b == 0), "padding after the end");
                break;
            }
            1 => options = &options[1..],
            _ => {
                let size = usize::from(options[1]);
                let body = &options[2..size];
                match kind {
                    2 => parsed.mss = Some(u16::from_be_bytes([body[0], body[1]])),
                    3 => parsed.window_scale = Some(body[0]),
                    4 => parsed.sack = true,
                    8 => {
                        parsed.timestamps = Some((
                            u32::from_be_bytes(body[0..4].try_into().unwrap()),
                            u32::from_be_bytes(body[4..8].try_into().unwrap()),
                        ))
                    }
                    other => panic!("the answer carries option {other}"),
                }
                options = &options[size..];
            }
        }
    }
    parsed
}

#[test]
fn a_syn_from_inside_is_answered_with_a_cookie_syn_ack() {
    if !require_root() {
        return;
    }
    isolated(|| {
        let h = Harness::new(true);
        let cookie = h.policy.cookie;
        assert_eq!(
            cookie.flags,
            COOKIE_TIMESTAMPS | COOKIE_SACK | COOKIE_WINDOW_SCALING,
            "this namespace lets every option ride on the cookie"
        );
        for (source, destination) in [(INSIDE_V4, ORIGIN_V4), (INSIDE_V6, ORIGIN_V6)] {
            let syn = Segment::syn(
                source,
                destination,
                443,
                &linux_syn_options(1460, 0xabcd_0001, 7),
            );
            let frame = syn.frame();
            let before = h.program.counters().unwrap();
            let (action, output) = h.program.run_output(&frame).unwrap();
            assert_eq!(action, XDP_TX, "{source}: answered");
            let after = h.program.counters().unwrap();
            let answered = |c: &shield::dataplane::Counters| {
                c.get(shield_common::Verdict::Answered, Reason::SynCookie)
                    .packets
            };
            assert_eq!(answered(&after) - answered(&before), 1);
            let answer = check_answer(&syn, &frame, &output);
            assert_eq!(answer.flags, SYN | ACK);
            assert_eq!(answer.ack, syn.seq.wrapping_add(1), "acknowledges the SYN");
            // The kernel's MSS tables: 1460 is in IPv4's; IPv6's rounds a
            // 1460 down to 1440, which is also what a 1500 MTU carries.
            let mss = if syn.source.is_ipv4() { 1460 } else { 1440 };
            assert_eq!(answer.mss, Some(mss));
            assert!(answer.sack, "SACK mirrored");
            assert_eq!(
                answer.window_scale,
                Some(cookie.window_scale as u8),
                "our window scale, as the kernel will use it"
            );
            let (tsval, tsecr) = answer.timestamps.expect("timestamps mirrored");
            assert_eq!(tsecr, 0xabcd_0001, "echoes the SYN's timestamp");
            // The low bits carry the client's window scale and SACK.
            assert_eq!(tsval & 0x0f, 7);
            assert_eq!(tsval & 0x10, 0x10);
            assert!(
                answer.window > 0 && answer.window.is_multiple_of(mss),
                "{answer:?}"
            );
            // The same SYN through the oracle.
            h.expect(&frame, Reason::SynCookie);

            // The client's ACK of that cookie passes; the kernel checks it.
            let mut ack = syn.clone();
            ack.flags = ACK;
            ack.seq = syn.seq.wrapping_add(1);
            ack.ack = answer.seq.wrapping_add(1);
            let mut options = vec![1, 1, 8, 10];
            options.extend_from_slice(&0xabcd_0002u32.to_be_bytes());
            options.extend_from_slice(&tsval.to_be_bytes());
            ack.options = options;
            let mut policy = h.policy.clone();
            policy
                .sockets
                .cookie_acks
                .insert((syn.source, syn.source_port, 443, ack.ack));
            let (action, kernel, oracle) = judge(&h.program, &policy, &ack.frame());
            assert_eq!(
                (action, kernel, oracle),
                (XDP_PASS, Reason::Allowed, Reason::Allowed)
            );

            // An ACK whose number is no cookie of now matches nothing. (A
            // cookie's low bits are its MSS index, so a near miss can be
            // another valid cookie; its top byte is its minute.)
            let mut stray = ack.clone();
            stray.ack = ack.ack.wrapping_add(0x4000_0000);
            let (action, _) = h.expect(&stray.frame(), Reason::BadAck);
            assert_eq!(action, XDP_DROP);

            // The client's second segment of a ClientHello over one MSS, in
            // the same driver batch as its ACK: the kernel has no socket
            // for the flow yet (a test run never hands the ACK to the
            // stack), and its sequence number is no longer the cookie's.
            // It passes because the cookie ACK of its flow did.
            let mut second = ack.clone();
            second.flags = ACK | PSH;
            second.seq = ack.seq.wrapping_add(1448);
            second.payload = vec![0x16; 105];
            policy.sockets.cookie_acks.clear();
            policy
                .sockets
                .cookie_flows
                .insert((syn.source, syn.source_port, 443, ack.ack));
            let (action, kernel, oracle) = judge(&h.program, &policy, &second.frame());
            assert_eq!(
                (action, kernel, oracle),
                (XDP_PASS, Reason::Allowed, Reason::Allowed),
                "a segment with data behind its flow's cookie ACK"
            );
            // Not for a segment acknowledging anything else, for a pure
            // ACK, or for another flow.
            let mut other_ack = second.clone();
            other_ack.ack = second.ack.wrapping_add(1);
            let mut pure = second.clone();
            pure.payload.clear();
            pure.flags = ACK;
            let mut other_flow = second.clone();
            other_flow.source_port += 1;
            for (frame, what) in [
                (other_ack.frame(), "another acknowledgement"),
                (pure.frame(), "a pure ACK"),
                (other_flow.frame(), "another flow"),
            ] {
                let (action, kernel, oracle) = judge(&h.program, &policy, &frame);
                assert_eq!(
                    (action, kernel, oracle),
                    (XDP_DROP, Reason::BadAck, Reason::BadAck),
                    "{what}"
                );
            }
        }
    });
}

#[test]
fn options_are_mirrored_only_as_offered() {
    if !require_root() {
        return;
    }
    isolated(|| {
        let h = Harness::new(true);
        // No timestamps offered: MSS only, whatever else the SYN had.
        let windows = [2, 4, 5, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2];
        // Timestamps and no window scale: no window scale back.
        let mut no_scale = vec![2, 4, 5, 0xb4, 1, 1, 8, 10];
        no_scale.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 0]);
        for (options, expect_ts, expect_scale, expect_sack) in [
            (&windows[..], false, false, false),
            (&no_scale[..], true, false, false),
            // A bare header: a bare answer.
            (&[][..], false, false, false),
        ] {
            let syn = Segment::syn(INSIDE_V4, ORIGIN_V4, 443, options);
            let frame = syn.frame();
            let (action, output) = h.program.run_output(&frame).unwrap();
            assert_eq!(action, XDP_TX, "{options:?}");
            let answer = check_answer(&syn, &frame, &output);
            assert_eq!(
                answer.timestamps.is_some(),
                expect_ts,
                "{options:?}: {answer:?}"
            );
            assert_eq!(answer.window_scale.is_some(), expect_scale, "{options:?}");
            assert_eq!(answer.sack, expect_sack, "{options:?}");
            assert_eq!(answer.mss.is_some(), !options.is_empty(), "{options:?}");
            if let Some((tsval, _)) = answer.timestamps {
                // No scale offered: the cookie says so (0xf), no SACK.
                assert_eq!(tsval & 0x1f, 0x0f);
            }
            h.expect(&frame, Reason::SynCookie);
        }
    });
}

#[test]
fn syns_the_answer_must_not_mirror_go_to_the_kernel() {
    if !require_root() {
        return;
    }
    isolated(|| {
        let h = Harness::new(true);
        let good = linux_syn_options(1460, 1, 7);
        let mut cases: Vec<(&str, Segment)> = Vec::new();
        let mut with_data = Segment::syn(INSIDE_V4, ORIGIN_V4, 443, &good);
        with_data.payload = b"GET / HTTP/1.1\r\n".to_vec();
        cases.push(("a SYN with data", with_data));
        for (name, flags) in [
            ("SYN+ACK", SYN | ACK),
            ("SYN+RST", SYN | RST),
            ("SYN+FIN", SYN | FIN),
        ] {
            let mut segment = Segment::syn(INSIDE_V4, ORIGIN_V4, 443, &good);
            segment.flags = flags;
            cases.push((name, segment));
        }
        for (name, options) in [
            ("an option length of 0", vec![2, 0, 0, 0]),
            ("an option past the header", vec![1, 1, 8, 12, 0, 0, 0, 0]),
            ("an MSS of the wrong length", vec![2, 3, 5, 0]),
            (
                "a timestamp of the wrong length",
                vec![8, 6, 0, 0, 0, 0, 0, 0],
            ),
            ("a window scale of the wrong length", vec![3, 4, 7, 0]),
            ("a lone kind byte", vec![1, 1, 1, 3]),
        ] {
            cases.push((name, Segment::syn(INSIDE_V4, ORIGIN_V4, 443, &options)));
        }
        // Timestamps but no MSS: the answer's MSS would not fit.
        let mut no_mss = vec![1, 1, 8, 10];
        no_mss.extend_from_slice(&[0u8; 8]);
        cases.push((
            "no room for the MSS",
            Segment::syn(INSIDE_V4, ORIGIN_V4, 443, &no_mss),
        ));
        // No listener on 80: the kernel answers with a reset.
        cases.push(("no listener", Segment::syn(INSIDE_V4, ORIGIN_V4, 80, &good)));
        for (name, segment) in cases {
            let frame = segment.frame();
            let (action, reason) = h.expect(&frame, Reason::Allowed);
            assert_eq!((action, reason), (XDP_PASS, Reason::Allowed), "{name}");
            let (_, output) = h.program.run_output(&frame).unwrap();
            assert_eq!(output, frame, "{name}: the frame is left as it came");
        }
        // Unknown options are passed over, and NOPs to the end of the
        // largest header: answered.
        let mut padded = vec![34, 2];
        padded.resize(40, 1);
        let (action, _) = h.expect(
            &Segment::syn(INSIDE_V4, ORIGIN_V4, 443, &padded).frame(),
            Reason::SynCookie,
        );
        assert_eq!(action, XDP_TX);
    });
}

#[test]
fn under_flood_mode_a_listener_with_room_answers_itself() {
    if !require_root() {
        return;
    }
    isolated(|| {
        // tcp_syncookies = 1 and an empty SYN queue: the kernel would not
        // use a cookie, so neither does XDP.
        let h = Harness::new(false);
        let syn = Segment::syn(INSIDE_V4, ORIGIN_V4, 443, &linux_syn_options(1460, 1, 7));
        let (action, _) = h.expect(&syn.frame(), Reason::Allowed);
        assert_eq!(action, XDP_PASS);
        // ACKs are still checked: no socket, no cookie.
        let mut ack = syn.clone();
        ack.flags = ACK;
        ack.ack = 99;
        let (action, _) = h.expect(&ack.frame(), Reason::BadAck);
        assert_eq!(action, XDP_DROP);
    });
}

#[test]
fn an_established_connection_keeps_its_acks() {
    if !require_root() {
        return;
    }
    isolated(|| {
        let h = Harness::new(true);
        // A real connection over loopback: its ACKs are the socket's.
        let listener = TcpListener::bind("127.0.0.1:80").unwrap();
        let client = std::net::TcpStream::connect("127.0.0.1:80").unwrap();
        let (_server, _) = listener.accept().unwrap();
        let local = client.local_addr().unwrap();
        let mut policy = h.policy.clone();
        policy.allowed = shield::policy::Allowlist::new(["127.0.0.0/8".parse().unwrap()]);
        policy.sockets.listening.insert(80);
        policy
            .sockets
            .connections
            .insert((local.ip(), local.port(), 80));
        let mut program = h.program;
        apply(&mut program, &policy);
        let mut ack = Segment::syn(&local.ip().to_string(), "127.0.0.1", 80, &[]);
        ack.source_port = local.port();
        ack.flags = ACK;
        ack.ack = 12345;
        let (action, kernel, oracle) = judge(&program, &policy, &ack.frame());
        assert_eq!(
            (action, kernel, oracle),
            (XDP_PASS, Reason::Allowed, Reason::Allowed)
        );
        // The same from another port matches only the listener.
        ack.source_port = local.port().wrapping_add(1);
        let (action, kernel, oracle) = judge(&program, &policy, &ack.frame());
        assert_eq!(
            (action, kernel, oracle),
            (XDP_DROP, Reason::BadAck, Reason::BadAck)
        );
    });
}

#[test]
fn udp_from_inside_drops_on_protected_ports_only() {
    if !require_root() {
        return;
    }
    isolated(|| {
        let mut h = Harness::new(true);
        let udp_443 = concat(&[
            &ethernet(&[], ETH_P_IPV4),
            &ipv4(v4(INSIDE_V4), UDP, 5, 0, 8),
            &udp(443),
        ]);
        let udp_53 = concat(&[
            &ethernet(&[], ETH_P_IPV4),
            &ipv4(v4(INSIDE_V4), UDP, 5, 0, 8),
            &udp(53),
        ]);
        let udp6_443 = concat(&[
            &ethernet(&[], ETH_P_IPV6),
            &ipv6(v6(INSIDE_V6), UDP, 8),
            &udp(443),
        ]);
        assert_eq!(h.expect(&udp_443, Reason::UdpFromRanges).0, XDP_DROP);
        assert_eq!(h.expect(&udp6_443, Reason::UdpFromRanges).0, XDP_DROP);
        assert_eq!(h.expect(&udp_53, Reason::Unprotected).0, XDP_PASS);
        // "pass" keeps them, for Spectrum UDP applications.
        h.policy.drop_udp_from_ranges = false;
        let policy = h.policy.clone();
        apply(&mut h.program, &policy);
        assert_eq!(h.expect(&udp_443, Reason::Allowed).0, XDP_PASS);
    });
}

#[test]
fn monitor_mode_answers_nothing_and_counts_stray_acks() {
    if !require_root() {
        return;
    }
    isolated(|| {
        let mut h = Harness::new(true);
        h.policy.enforce = false;
        let policy = h.policy.clone();
        apply(&mut h.program, &policy);
        let syn = Segment::syn(INSIDE_V4, ORIGIN_V4, 443, &linux_syn_options(1460, 1, 7));
        let (action, output) = h.program.run_output(&syn.frame()).unwrap();
        assert_eq!(action, XDP_PASS);
        assert_eq!(output, syn.frame());
        let mut ack = syn.clone();
        ack.flags = ACK;
        let (action, kernel, _) = judge(&h.program, &h.policy, &ack.frame());
        assert_eq!((action, kernel), (XDP_PASS, Reason::BadAck));
        assert_eq!(
            h.program
                .counter(shield_common::Verdict::WouldDrop, Reason::BadAck)
                .unwrap()
                .packets,
            1
        );
    });
}

#[test]
fn the_verifier_keeps_headroom() {
    if !require_root() {
        return;
    }
    let program = TestProgram::load().unwrap();
    let verified = program.verified_instructions().unwrap();
    // The kernel's limit is 1,000,000; new paths multiply this count.
    assert!(
        (1..=400_000).contains(&verified),
        "the verifier went through {verified} instructions"
    );
}

/// What a kernel that refuses the cookie program gets instead: the same
/// policy, with in-range SYNs and ACKs passed to the kernel whatever the
/// settings say, and UDP from inside still dropped.
#[test]
fn the_program_without_cookies_leaves_in_range_tcp_to_the_kernel() {
    if !require_root() {
        return;
    }
    isolated(|| {
        let h = Harness::new(true);
        let mut program = TestProgram::load_object(
            shield::dataplane::PROGRAM_OBJECT,
            shield_common::PROGRAM_WITHOUT_COOKIES,
        )
        .expect("the verifier must accept the program without cookies");
        // The kernel settings ask for cookies; this program has none.
        apply(&mut program, &h.policy);
        let mut oracle = h.policy.clone();
        oracle.syn_cookies = false;
        let syn = Segment::syn(INSIDE_V4, ORIGIN_V4, 443, &linux_syn_options(1460, 1, 7));
        let mut ack = syn.clone();
        ack.flags = ACK;
        let udp_443 = concat(&[
            &ethernet(&[], ETH_P_IPV4),
            &ipv4(v4(INSIDE_V4), UDP, 5, 0, 8),
            &udp(443),
        ]);
        for (frame, expected, action) in [
            (syn.frame(), Reason::Allowed, XDP_PASS),
            (ack.frame(), Reason::Allowed, XDP_PASS),
            (udp_443, Reason::UdpFromRanges, XDP_DROP),
            (
                ipv4_tcp("203.0.113.7", 443),
                Reason::OutsideRanges,
                XDP_DROP,
            ),
        ] {
            let (kernel_action, kernel, reference) = judge(&program, &oracle, &frame);
            assert_eq!(
                (kernel_action, kernel, reference),
                (action, expected, expected)
            );
        }
        let verified = program.verified_instructions().unwrap();
        assert!((1..=400_000).contains(&verified), "{verified}");
    });
}
