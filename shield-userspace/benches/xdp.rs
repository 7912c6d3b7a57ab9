//! `cargo xtask bench xdp`: ns/packet of shield's XDP program under
//! BPF_PROG_TEST_RUN, side by side in one run with two anchors measured the
//! same way: a trivial XDP_DROP program and xdp-filter (xdp-tools, default
//! `load`, the source denied). Figures are medians over interleaved rounds;
//! ratios to the anchors are what docs/BENCHMARKS.md records, because the
//! absolute numbers move with the machine.

#[path = "../tests/support/packet.rs"]
mod packet;

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

const REPEAT: u32 = 2_000_000;
const ROUNDS: usize = 9;
const INSIDE: &str = "173.245.48.10";
const OUTSIDE: &str = "203.0.113.7";
const NETNS: &str = "shbench-xdpfilter";

static ANCHOR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/anchor-drop"));

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
    let mut program = TestProgram::load()?;
    let settings = DataplaneSettings {
        enforce: true,
        fragments: FragmentPolicy::JudgeFirst,
        protected_tcp_ports: [80, 443].into(),
        protected_udp_ports: [443].into(),
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
        let mut ebpf = Ebpf::load(ANCHOR_OBJECT)?;
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

    let cloudflare = shield_program(&[])?;
    let with_extra = shield_program(&extra_prefixes())?;
    let anchor = Anchor::load()?;
    let xdp_filter = XdpFilter::setup(&dropped)?;

    // Sanity: each path does what its name says before it is timed.
    for (program, frame, action) in [
        (&cloudflare, &allowed, 2),
        (&cloudflare, &dropped, 1),
        (&cloudflare, &unprotected, 2),
        (&with_extra, &dropped, 1),
    ] {
        anyhow::ensure!(
            program.run(frame)? == action,
            "unexpected action before timing"
        );
    }

    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..ROUNDS {
        let mut sample = |name, value: f64| samples.entry(name).or_default().push(value);
        sample("anchor: trivial XDP_DROP", anchor.ns_per_packet(&dropped)?);
        sample("anchor: xdp-filter drop", xdp_filter.ns_per_packet()?);
        for (name, program) in [
            ("cloudflare", &cloudflare),
            ("cloudflare+1000", &with_extra),
        ] {
            let time = |frame: &[u8]| program.run_repeat(frame, REPEAT).map(|r| nanos(r.per_run));
            sample(
                if name == "cloudflare" {
                    "shield cloudflare: drop"
                } else {
                    "shield cloudflare+1000: drop"
                },
                time(&dropped)?,
            );
            sample(
                if name == "cloudflare" {
                    "shield cloudflare: allowed"
                } else {
                    "shield cloudflare+1000: allowed"
                },
                time(&allowed)?,
            );
            sample(
                if name == "cloudflare" {
                    "shield cloudflare: unprotected"
                } else {
                    "shield cloudflare+1000: unprotected"
                },
                time(&unprotected)?,
            );
            sample(
                if name == "cloudflare" {
                    "shield cloudflare: drop v6"
                } else {
                    "shield cloudflare+1000: drop v6"
                },
                time(&dropped_v6)?,
            );
            sample(
                if name == "cloudflare" {
                    "shield cloudflare: allowed v6"
                } else {
                    "shield cloudflare+1000: allowed v6"
                },
                time(&allowed_v6)?,
            );
        }
    }
    let medians: BTreeMap<&str, f64> = samples.iter_mut().map(|(k, v)| (*k, median(v))).collect();
    let trivial = medians["anchor: trivial XDP_DROP"];
    let filter = medians["anchor: xdp-filter drop"];
    println!(
        "XDP test-run, {REPEAT} repeats x {ROUNDS} rounds, median ns/packet (kernel {})",
        sh(&["uname", "-r"])?.trim()
    );
    println!(
        "{:<36} {:>8} {:>12} {:>14}",
        "path", "ns/pkt", "x trivial", "x xdp-filter"
    );
    for (name, ns) in &medians {
        println!(
            "{name:<36} {ns:>8.1} {:>12.2} {:>14.2}",
            ns / trivial,
            ns / filter
        );
    }
    let drop = medians["shield cloudflare: drop"];
    println!(
        "targets: drop path {:.2}x trivial (target <= 1.5), {:.2}x xdp-filter (target <= 0.4)",
        drop / trivial,
        drop / filter
    );
    Ok(())
}
