//! `cargo xtask bench xdp`: ns/packet of shield's XDP program under
//! BPF_PROG_TEST_RUN, side by side in one run with two anchors measured the
//! same way: a trivial XDP_DROP program and xdp-filter (xdp-tools, default
//! `load`, the source denied). Figures are medians over interleaved rounds;
//! ratios to the anchors are what docs/BENCHMARKS.md records, because the
//! absolute numbers move with the machine.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::{bail, Context as _};
use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use ipnetwork::IpNetwork;
use shield::{
    dataplane::{testrun::TestProgram, write_policy, DataplaneSettings},
    ranges::{tagged_allowlist, RangeSet},
};
use shield_common::FragmentPolicy;
use shield_test_support::{ebpf::ANCHOR_DROP, packet};

const REPEAT: u32 = 500_000;
const ROUNDS: usize = 41;
const INSIDE: &str = "173.245.48.10";
const OUTSIDE: &str = "203.0.113.7";
const NETNS: &str = "shbench-xdpfilter";

/// 1,000 extra /24s spread over 10.0.0.0/8 (never the test sources).
fn extra_prefixes() -> Vec<IpNetwork> {
    (0..1000u32)
        .map(|i| {
            IpNetwork::new(std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8)).into(), 24)
                .expect("valid /24")
        })
        .collect()
}

fn shield_program(extra: &[IpNetwork]) -> anyhow::Result<TestProgram> {
    shield_program_from(shield::dataplane::PROGRAM_OBJECT, extra)
}

fn shield_program_from(object: &[u8], extra: &[IpNetwork]) -> anyhow::Result<TestProgram> {
    let mut program = TestProgram::load_object(object, shield_common::PROGRAM_NAME)?;
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
    write_policy(
        program.maps(),
        &settings,
        &tagged_allowlist(&RangeSet::snapshot(), extra),
    )?;
    Ok(program)
}

struct Anchor {
    ebpf: Ebpf,
}

impl Anchor {
    fn load() -> anyhow::Result<Anchor> {
        let mut ebpf = Ebpf::load(ANCHOR_DROP)?;
        let program: &mut Xdp = ebpf
            .program_mut("anchor_drop")
            .context("anchor program")?
            .try_into()?;
        program.load()?;
        Ok(Anchor { ebpf })
    }

    fn ns_per_packet(&self, frame: &[u8]) -> anyhow::Result<f64> {
        let program: &Xdp = self
            .ebpf
            .program("anchor_drop")
            .context("anchor program")?
            .try_into()?;
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: REPEAT,
            ..Default::default()
        })?;
        Ok(nanos(result.duration))
    }
}

fn nanos(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e9
}

/// xdp-filter attached to a veth in a private namespace; measured through
/// `bpftool prog run` on its program id (the same BPF_PROG_TEST_RUN).
struct XdpFilter {
    program_id: u64,
    packet_file: std::path::PathBuf,
}

fn sh(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !output.status.success() {
        bail!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl XdpFilter {
    fn setup(frame: &[u8]) -> anyhow::Result<XdpFilter> {
        let _ = sh(&["ip", "netns", "del", NETNS]);
        sh(&["ip", "netns", "add", NETNS])?;
        let ns = format!("--net=/run/netns/{NETNS}");
        sh(&[
            "ip", "link", "add", "v0", "netns", NETNS, "type", "veth", "peer", "name", "v1",
            "netns", NETNS,
        ])?;
        sh(&["nsenter", &ns, "ip", "link", "set", "v0", "up"])?;
        sh(&["nsenter", &ns, "xdp-filter", "load", "v0", "-m", "skb"])?;
        sh(&["nsenter", &ns, "xdp-filter", "ip", OUTSIDE, "-m", "src"])?;
        let links: serde_json::Value =
            serde_json::from_str(&sh(&["nsenter", &ns, "ip", "-j", "link", "show", "v0"])?)?;
        let program_id = links[0]["xdp"]["prog"]["id"]
            .as_u64()
            .context("xdp-filter program id")?;
        let packet_file = std::env::temp_dir().join("shield-bench-xdpfilter.bin");
        std::fs::write(&packet_file, frame)?;
        Ok(XdpFilter {
            program_id,
            packet_file,
        })
    }

    fn ns_per_packet(&self) -> anyhow::Result<f64> {
        let out = sh(&[
            "bpftool",
            "prog",
            "run",
            "id",
            &self.program_id.to_string(),
            "data_in",
            self.packet_file.to_str().context("path")?,
            "repeat",
            &REPEAT.to_string(),
        ])?;
        // "Return value: 1, duration (average): 133ns"
        let ns = out
            .split("duration (average): ")
            .nth(1)
            .and_then(|rest| rest.trim().strip_suffix("ns"))
            .context("unexpected bpftool output")?;
        Ok(ns.parse()?)
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        // Unload first: libxdp keeps pins under /sys/fs/bpf otherwise.
        let ns = format!("--net=/run/netns/{NETNS}");
        let _ = sh(&["nsenter", &ns, "xdp-filter", "unload", "v0", "--all"]);
        let _ = sh(&["ip", "netns", "del", NETNS]);
        let _ = std::fs::remove_file(&self.packet_file);
    }
}

/// test-run executes on the calling CPU; one CPU for every sample keeps
/// caches and frequency the same for shield and its anchors.
fn pin_to_one_cpu() -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes
    // inside it; sched_setaffinity(0) applies to this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .context("cannot pin the benchmark to CPU 0");
        }
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the XDP benchmark loads programs: run `cargo xtask bench xdp` as root");
    }
    let allowed = packet::ipv4_tcp(INSIDE, 443);
    let dropped = packet::ipv4_tcp(OUTSIDE, 443);
    let unprotected = packet::ipv4_tcp(OUTSIDE, 22);
    let allowed_v6 = packet::ipv6_tcp("2400:cb00::10", 443);
    let dropped_v6 = packet::ipv6_tcp("2001:db8:bad::7", 443);
    // Flood (d) of `cargo xtask bench flood`: dropped after the source is
    // found inside the ranges.
    let udp_inside = packet::concat(&[
        &packet::ethernet(&[], packet::ETH_P_IPV4),
        &packet::ipv4(packet::v4(INSIDE), packet::UDP, 5, 0, 8),
        &packet::udp(443),
    ]);

    let cloudflare = shield_program(&[])?;
    let with_extra = shield_program(&extra_prefixes())?;
    let anchor = Anchor::load()?;
    let xdp_filter = XdpFilter::setup(&dropped)?;

    // Sanity: each path does what its name says before it is timed.
    for (program, frame, action) in [
        (&cloudflare, &allowed, 2),
        (&cloudflare, &dropped, 1),
        (&cloudflare, &unprotected, 2),
        (&cloudflare, &udp_inside, 1),
        (&with_extra, &dropped, 1),
    ] {
        anyhow::ensure!(
            program.run(frame)? == action,
            "unexpected action before timing"
        );
    }

    pin_to_one_cpu()?;
    // A/B runs: SHIELD_BENCH_COMPARE lists other builds of shield-xdp
    // (object files, colon-separated), timed in the same rounds as this one.
    let mut compare = Vec::new();
    for path in std::env::var("SHIELD_BENCH_COMPARE")
        .unwrap_or_default()
        .split(':')
    {
        if path.is_empty() {
            continue;
        }
        let object = std::fs::read(path)
            .with_context(|| format!("cannot read {path:?} from SHIELD_BENCH_COMPARE"))?;
        compare.push((path.to_string(), shield_program_from(&object, &[])?));
    }
    let mut programs = vec![
        ("cloudflare", &cloudflare),
        ("cloudflare+1000", &with_extra),
    ];
    for (path, program) in &compare {
        programs.push((path.as_str(), program));
    }
    let paths: [(&str, &[u8]); 6] = [
        ("drop", &dropped),
        ("allowed", &allowed),
        ("unprotected", &unprotected),
        ("drop v6", &dropped_v6),
        ("allowed v6", &allowed_v6),
        ("udp from inside", &udp_inside),
    ];
    // Each shield sample sits between two trivial-anchor samples, and its
    // ratio is taken against their mean: the host's speed drifts by tens of
    // percent between seconds, much less within one pair.
    let mut ns: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut x_trivial: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut x_filter: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for _ in 0..ROUNDS {
        let filter = xdp_filter.ns_per_packet()?;
        let mut trivial = anchor.ns_per_packet(&dropped)?;
        ns.entry("anchor: xdp-filter drop".into())
            .or_default()
            .push(filter);
        for &(list, program) in &programs {
            for (path, frame) in paths {
                let shield = nanos(program.run_repeat(frame, REPEAT)?.per_run);
                let trivial_after = anchor.ns_per_packet(&dropped)?;
                let anchor_ns = (trivial + trivial_after) / 2.0;
                trivial = trivial_after;
                let name = format!("shield {list}: {path}");
                ns.entry(name.clone()).or_default().push(shield);
                x_trivial
                    .entry(name.clone())
                    .or_default()
                    .push(shield / anchor_ns);
                x_filter.entry(name).or_default().push(shield / filter);
                ns.entry("anchor: trivial XDP_DROP".into())
                    .or_default()
                    .push(anchor_ns);
            }
        }
    }
    let trivial = median(
        ns.get_mut("anchor: trivial XDP_DROP")
            .context("anchor samples")?,
    );
    let filter = median(
        ns.get_mut("anchor: xdp-filter drop")
            .context("anchor samples")?,
    );
    println!(
        "XDP test-run, {REPEAT} repeats x {ROUNDS} rounds on one CPU; ns/packet is the median, \
         ratios are medians of per-sample ratios to the neighbouring anchor runs (kernel {})",
        sh(&["uname", "-r"])?.trim()
    );
    println!(
        "{:<36} {:>8} {:>12} {:>14}",
        "path", "ns/pkt", "x trivial", "x xdp-filter"
    );
    println!(
        "{:<36} {trivial:>8.1} {:>12.2} {:>14.2}",
        "anchor: trivial XDP_DROP",
        1.0,
        trivial / filter
    );
    println!(
        "{:<36} {filter:>8.1} {:>12.2} {:>14.2}",
        "anchor: xdp-filter drop",
        filter / trivial,
        1.0
    );
    let mut drop = (0.0, 0.0);
    for (name, samples) in &mut ns {
        let (Some(by_trivial), Some(by_filter)) = (x_trivial.get_mut(name), x_filter.get_mut(name))
        else {
            continue;
        };
        let (by_trivial, by_filter) = (median(by_trivial), median(by_filter));
        if name == "shield cloudflare: drop" {
            drop = (by_trivial, by_filter);
        }
        println!(
            "{name:<36} {:>8.1} {by_trivial:>12.2} {by_filter:>14.2}",
            median(samples)
        );
    }
    println!(
        "targets: drop path {:.2}x trivial (target <= 1.5), {:.2}x xdp-filter (target <= 0.4)",
        drop.0, drop.1
    );
    Ok(())
}
