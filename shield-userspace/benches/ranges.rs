//! `cargo xtask bench ranges`: time to apply a full range update to the
//! kernel maps through the daemon's apply path (`apply_allowlist`, add
//! before remove, prefilter included): Cloudflare's list plus 1,000
//! `extra_allow` prefixes, from empty; a flip to a set that differs in 200
//! prefixes; and a no-op re-apply (what an unchanged refresh would cost if
//! it were applied at all). Medians over many runs; target: full apply
//! under 10 ms.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use anyhow::bail;
use ipnetwork::IpNetwork;
use shield::{
    dataplane::{testrun::TestProgram, write_policy, DataplaneSettings, TaggedPrefix},
    ranges::{tagged_allowlist, RangeSet},
};
use shield_common::FragmentPolicy;

const RUNS: usize = 101;

/// 1,000 /24s spread over 10.0.0.0/8 (`extra_allow` may hold private ranges).
fn extra(base: u32, count: u32) -> Vec<IpNetwork> {
    (0..count)
        .map(|i| {
            IpNetwork::new(std::net::Ipv4Addr::from(base + (i << 8)).into(), 24).expect("valid /24")
        })
        .collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time(
    program: &mut TestProgram,
    before: &[TaggedPrefix],
    after: &[TaggedPrefix],
) -> anyhow::Result<Duration> {
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        program.maps().apply_allowlist(before)?;
        let start = Instant::now();
        program.maps().apply_allowlist(after)?;
        samples.push(start.elapsed());
    }
    Ok(median(samples))
}

fn main() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the ranges benchmark loads the XDP program: run as root");
    }
    let mut program = TestProgram::load()?;
    let settings = DataplaneSettings {
        enforce: true,
        fragments: FragmentPolicy::JudgeFirst,
        protected_tcp_ports: [80, 443].into(),
        protected_udp_ports: [443].into(),
        // The shipped defaults: syn_cookies = "flood", udp_from_ranges = "drop".
        syn_cookies: true,
        drop_udp_from_ranges: true,
        cookie: Default::default(),
        protected_destinations: Vec::new(),
    };
    write_policy(program.maps(), &settings, &[])?;
    let cloudflare = RangeSet::snapshot();
    let full = tagged_allowlist(&cloudflare, &extra(0x0a00_0000, 1000));
    // 200 of the 1,000 extra prefixes replaced by others.
    let mut shifted = extra(0x0a00_0000, 800);
    shifted.extend(extra(0x0b00_0000, 200));
    let flipped = tagged_allowlist(&cloudflare, &shifted);

    let from_empty = time(&mut program, &[], &full)?;
    let flip = time(&mut program, &full, &flipped)?;
    let noop = time(&mut program, &full, &full)?;
    println!(
        "ranges apply ({} prefixes: Cloudflare {} + extra 1000), median of {RUNS}:",
        full.len(),
        cloudflare.ipv4.len() + cloudflare.ipv6.len()
    );
    println!("  full update from empty     {:>10.3} ms", ms(from_empty));
    println!("  flip of 200 prefixes       {:>10.3} ms", ms(flip));
    println!("  no-op re-apply (unchanged) {:>10.3} ms", ms(noop));
    println!(
        "  target: full update < 10 ms: {}",
        if from_empty < Duration::from_millis(10) {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
