//! The XDP program under `BPF_PROG_TEST_RUN`: a policy written into its
//! maps, and a frame judged by it and by the userspace reference alike.

use std::collections::BTreeSet;

use ipnetwork::IpNetwork;
use shield::{
    dataplane::{testrun::TestProgram, write_policy, DataplaneSettings},
    policy::{Allowlist, Classifier, Sockets},
};
use shield_common::{CookieOptions, FragmentPolicy, Reason, Verdict, PREFIX_FROM_RANGES};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// The policy before in-range floods were handled: SYN cookies off, UDP
/// from inside the ranges passed.
pub fn policy(prefixes: &[&str], enforce: bool, fragments: FragmentPolicy) -> Classifier {
    Classifier {
        enforce,
        fragments,
        protected_tcp_ports: [80, 443].into(),
        protected_udp_ports: [443].into(),
        allowed: Allowlist::new(
            prefixes
                .iter()
                .map(|p| p.parse::<IpNetwork>().expect("test prefix")),
        ),
        syn_cookies: false,
        drop_udp_from_ranges: false,
        cookie: CookieOptions::default(),
        sockets: Sockets::default(),
        destinations: Vec::new(),
    }
}

/// Writes `policy` into the program's maps exactly as the daemon would.
pub fn apply(program: &mut TestProgram, policy: &Classifier) {
    let settings = DataplaneSettings {
        protected_destinations: policy.destinations.clone(),
        syn_cookies: policy.syn_cookies,
        drop_udp_from_ranges: policy.drop_udp_from_ranges,
        cookie: policy.cookie,
        enforce: policy.enforce,
        fragments: policy.fragments,
        protected_tcp_ports: policy
            .protected_tcp_ports
            .iter()
            .copied()
            .collect::<BTreeSet<_>>(),
        protected_udp_ports: policy
            .protected_udp_ports
            .iter()
            .copied()
            .collect::<BTreeSet<_>>(),
    };
    let allow: Vec<_> = policy
        .allowed
        .prefixes()
        .iter()
        .map(|p| (*p, PREFIX_FROM_RANGES))
        .collect();
    write_policy(program.maps(), &settings, &allow).expect("write policy maps");
}

/// Kernel and oracle on one frame: returns (kernel action, kernel reason,
/// oracle reason). The kernel reason is the counter slot that moved.
pub fn judge(program: &TestProgram, policy: &Classifier, frame: &[u8]) -> (u32, Reason, Reason) {
    let before = program.counters().expect("read counters");
    let action = program.run(frame).expect("test run");
    let after = program.counters().expect("read counters");
    let mut moved = Vec::new();
    for verdict in Verdict::ALL {
        for reason in Reason::ALL {
            let delta = after.get(verdict, reason).packets - before.get(verdict, reason).packets;
            if delta != 0 {
                moved.push((verdict, reason, delta));
            }
        }
    }
    assert_eq!(
        moved.len(),
        1,
        "exactly one counter slot must move per packet, got {moved:?}"
    );
    let (verdict, reason, delta) = moved[0];
    assert_eq!(delta, 1);
    assert_eq!(
        after.get(verdict, reason).bytes - before.get(verdict, reason).bytes,
        frame.len() as u64,
        "bytes counter must grow by the frame length"
    );
    let expected_action = match verdict {
        Verdict::Drop => XDP_DROP,
        Verdict::Answered => XDP_TX,
        Verdict::Pass | Verdict::WouldDrop => XDP_PASS,
    };
    assert_eq!(
        action, expected_action,
        "action disagrees with the counted verdict {verdict:?}"
    );
    assert_eq!(
        verdict,
        reason.verdict(policy.enforce),
        "verdict slot inconsistent with reason"
    );
    (action, reason, policy.classify_packet(frame).reason)
}
