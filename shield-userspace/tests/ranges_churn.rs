//! Gapless apply under churn: one thread test-runs packets from an address
//! that is allowed in both of two range sets (covered by different prefixes
//! in each) while another flips the kernel maps between the two sets 1,000
//! times through the daemon's apply path. Every packet is counted: none of
//! the steady address's may be dropped. An address only in one set must be
//! dropped after each switch away from it completes.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
};

use ipnetwork::IpNetwork;
use shield::{
    dataplane::{testrun::TestProgram, write_policy, DataplaneSettings},
    ranges::{tagged_allowlist, RangeSet},
};
use shield_common::{FragmentPolicy, Reason, Verdict};
use shield_test_support::{
    packet::ipv4_tcp,
    require_root,
    xdp::{XDP_DROP, XDP_PASS},
};

const STEADY: &str = "173.245.48.10";
const ONLY_IN_A: &str = "104.16.0.1";
const FLIPS: usize = 1_000;

/// 200 /24s per set from disjoint blocks, so each flip adds and removes
/// hundreds of trie entries and prefilter words (a long window for a gap).
fn extras(base: u32) -> Vec<IpNetwork> {
    (0..200u32)
        .map(|i| IpNetwork::new(Ipv4Addr::from(base + (i << 8)).into(), 24).unwrap())
        .collect()
}

fn sets() -> (RangeSet, RangeSet) {
    let a = RangeSet::snapshot();
    // B covers STEADY with a /21 and a /24 instead of A's /20, and drops
    // A's 104.16.0.0/13 (ONLY_IN_A).
    let mut b = a.clone();
    b.ipv4.retain(|p| {
        *p != "173.245.48.0/20".parse::<IpNetwork>().unwrap()
            && *p != "104.16.0.0/13".parse::<IpNetwork>().unwrap()
    });
    b.ipv4.push("173.245.48.0/21".parse().unwrap());
    b.ipv4.push("173.245.48.0/24".parse().unwrap());
    (a, b)
}

#[test]
fn steady_address_is_never_dropped_during_1000_flips() {
    if !require_root() {
        return;
    }
    let mut program = TestProgram::load().expect("load the XDP program");
    let settings = DataplaneSettings {
        enforce: true,
        fragments: FragmentPolicy::JudgeFirst,
        protected_tcp_ports: [80, 443].into(),
        protected_udp_ports: [443].into(),
        syn_cookies: false,
        drop_udp_from_ranges: false,
        cookie: Default::default(),
        protected_destinations: Vec::new(),
    };
    let (a, b) = sets();
    let list_a = tagged_allowlist(&a, &extras(0x0b00_0000)); // 11.0.0.0/16 area
    let list_b = tagged_allowlist(&b, &extras(0x0c00_0000)); // 12.0.0.0/16 area
    write_policy(program.maps(), &settings, &list_a).expect("initial policy");
    let mut updater = program.shared_maps_handle().expect("second map handle");
    let steady = ipv4_tcp(STEADY, 443);
    let only_a = ipv4_tcp(ONLY_IN_A, 443);
    assert_eq!(program.run(&steady).unwrap(), XDP_PASS);
    assert_eq!(program.run(&only_a).unwrap(), XDP_PASS);
    let before = program.counters().unwrap();

    let done = AtomicBool::new(false);
    let (sent, dropped, removed_passed) = std::thread::scope(|scope| {
        let runner = scope.spawn(|| {
            let (mut sent, mut dropped) = (0u64, 0u64);
            while !done.load(Ordering::Acquire) {
                let action = program.run(&steady).expect("test run");
                sent += 1;
                if action != XDP_PASS {
                    dropped += 1;
                }
            }
            (sent, dropped)
        });
        let mut removed_passed = 0usize;
        for flip in 0..FLIPS {
            let (list, a_in_force) = if flip % 2 == 0 {
                (&list_b, false)
            } else {
                (&list_a, true)
            };
            let stats = updater.apply_allowlist(list).expect("apply");
            assert!(stats.added > 0 && stats.removed > 0, "{stats:?}");
            // The update is complete: the removed address no longer passes.
            let allowed = updater.allows(ONLY_IN_A.parse().unwrap()).unwrap();
            assert_eq!(allowed, a_in_force, "flip {flip}");
            if allowed {
                removed_passed += 1;
            }
        }
        done.store(true, Ordering::Release);
        let (sent, dropped) = runner.join().expect("runner thread");
        (sent, dropped, removed_passed)
    });
    assert_eq!(removed_passed, FLIPS / 2);
    let after = program.counters().unwrap();
    let delta =
        |verdict, reason| after.get(verdict, reason).packets - before.get(verdict, reason).packets;
    eprintln!("{FLIPS} flips, {sent} packets from {STEADY} during them, {dropped} dropped");
    assert!(
        sent >= FLIPS as u64,
        "too few packets overlapped the flips: {sent}"
    );
    assert_eq!(dropped, 0, "packets from {STEADY} dropped mid-update");
    // The kernel's own counters agree: every packet passed as allowed.
    assert_eq!(delta(Verdict::Pass, Reason::Allowed), sent);
    assert_eq!(delta(Verdict::Drop, Reason::OutsideRanges), 0);

    // FLIPS is even: A is in force again; after one more flip to B the
    // address only in A is dropped by the program itself.
    assert_eq!(program.run(&only_a).unwrap(), XDP_PASS);
    updater.apply_allowlist(&list_b).unwrap();
    assert_eq!(program.run(&only_a).unwrap(), XDP_DROP);
    assert_eq!(program.run(&steady).unwrap(), XDP_PASS);

    // Control: the same measurement does see a gap when there is one
    // (flipping to a set without STEADY), so the 0 above is meaningful.
    let mut gap = a.clone();
    gap.ipv4
        .retain(|p| *p != "173.245.48.0/20".parse::<IpNetwork>().unwrap());
    let list_gap = tagged_allowlist(&gap, &[]);
    let done = AtomicBool::new(false);
    let control_dropped = std::thread::scope(|scope| {
        let runner = scope.spawn(|| {
            let mut dropped = 0u64;
            while !done.load(Ordering::Acquire) {
                if program.run(&steady).expect("test run") == XDP_DROP {
                    dropped += 1;
                }
            }
            dropped
        });
        for flip in 0..100 {
            let list = if flip % 2 == 0 { &list_gap } else { &list_a };
            updater.apply_allowlist(list).expect("apply");
        }
        done.store(true, Ordering::Release);
        runner.join().expect("runner thread")
    });
    assert!(
        control_dropped > 0,
        "the control saw no drops: the measurement is blind"
    );
}

/// The same for `[xdp].protected_destinations`: while the scope flips
/// between every destination, a set holding the protected address among
/// hundreds of others, and another such set, a packet from outside to the
/// protected address is dropped every time; it never passes as
/// `unprotected_destination` mid-update.
#[test]
fn protected_destination_is_never_unjudged_during_1000_flips() {
    if !require_root() {
        return;
    }
    let mut program = TestProgram::load().expect("load the XDP program");
    let settings = |destinations: Vec<IpNetwork>| DataplaneSettings {
        enforce: true,
        fragments: FragmentPolicy::JudgeFirst,
        protected_tcp_ports: [80, 443].into(),
        protected_udp_ports: [443].into(),
        syn_cookies: false,
        drop_udp_from_ranges: false,
        cookie: Default::default(),
        protected_destinations: destinations,
    };
    // `ipv4_tcp` frames go to 192.0.2.1.
    let with_protected = |others: u32, host: bool| {
        let mut list = extras(others);
        list.truncate(100);
        list.push(if host {
            "192.0.2.1/32".parse().unwrap()
        } else {
            "192.0.2.0/24".parse().unwrap()
        });
        list
    };
    let scopes = [
        settings(Vec::new()),
        settings(with_protected(0x0b00_0000, true)),
        settings(with_protected(0x0c00_0000, false)),
    ];
    let allowlist = tagged_allowlist(&RangeSet::snapshot(), &[]);
    write_policy(program.maps(), &scopes[0], &allowlist).expect("initial policy");
    let mut updater = program.shared_maps_handle().expect("second map handle");
    let outside = ipv4_tcp("203.0.113.7", 443);
    let before = program.counters().unwrap();
    let done = AtomicBool::new(false);
    let (sent, passed) = std::thread::scope(|scope| {
        let runner = scope.spawn(|| {
            let (mut sent, mut passed) = (0u64, 0u64);
            while !done.load(Ordering::Acquire) {
                sent += 1;
                if program.run(&outside).expect("test run") != XDP_DROP {
                    passed += 1;
                }
            }
            (sent, passed)
        });
        for flip in 0..FLIPS {
            let scope = &scopes[flip % scopes.len()];
            write_policy(&mut updater, scope, &allowlist).expect("apply");
            let mut expected: Vec<IpNetwork> = scope.protected_destinations.clone();
            let mut found = updater.destinations().unwrap();
            expected.sort();
            found.sort();
            assert_eq!(found, expected, "flip {flip}");
        }
        done.store(true, Ordering::Release);
        runner.join().expect("runner thread")
    });
    let after = program.counters().unwrap();
    eprintln!("{FLIPS} scope flips, {sent} packets to the protected address, {passed} passed");
    assert!(
        sent >= FLIPS as u64,
        "too few packets overlapped the flips: {sent}"
    );
    assert_eq!(
        passed, 0,
        "a protected destination went unjudged mid-update"
    );
    assert_eq!(
        after.get(Verdict::Drop, Reason::OutsideRanges).packets
            - before.get(Verdict::Drop, Reason::OutsideRanges).packets,
        sent
    );
    // Control: a scope without the address does let it through, so the
    // 0 above is meaningful.
    write_policy(
        &mut updater,
        &settings(vec!["192.0.2.9/32".parse().unwrap()]),
        &allowlist,
    )
    .unwrap();
    assert_eq!(program.run(&outside).unwrap(), XDP_PASS);
    assert_eq!(
        program
            .counter(Verdict::Pass, Reason::UnprotectedDestination)
            .unwrap()
            .packets,
        1
    );
}
