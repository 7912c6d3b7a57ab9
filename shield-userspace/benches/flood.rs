//! `cargo xtask bench flood`: live floods into a veth, shield side by side
//! with its anchors in one run, and legitimate mTLS requests during each.
//!
//! Two namespaces joined by a veth: `gen` (the edge's Cloudflare address
//! and the flood generator) and `rx` (the origin: shield's TLS site in
//! front of an upstream, and the filter under test on `r0`). The generator
//! is the `trafficgen` XDP program run by `BPF_PROG_TEST_RUN` in live-frames
//! mode on CPU 0: each frame leaves `g0` with a fresh source address and
//! port. The receiver's NAPI is threaded and pinned to CPU 1, where the
//! origin's processes run too, so a flood the filter does not absorb
//! cheaply takes the CPU the site needs.
//!
//! For each flood and filter: frames offered (sent by the generator) and
//! absorbed (taken off the veth's ring by the receiving core), per second,
//! and the edge's mTLS requests during the flood (a new connection each,
//! 20 a second: successes, p50 and p99) against the same filter without a
//! flood. The table is printed and written to `target/bench-flood/`.
// A benchmark: a failed step is a failed run.
#![allow(clippy::unwrap_used)]

use std::{
    fmt::Write as _,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use aya::{
    maps::Array,
    programs::{TestRun, TestRunOptions, Xdp, XdpMode},
    Ebpf,
};
use shield_test_support::{ebpf, packet::*};
use shield_tests::{check, pki, require_root, shield_binary, wait_for, Netns};

const GEN_ADDR: &str = "173.245.48.10";
const RX_ADDR: &str = "192.0.2.1";
const SITE: &str = "origin.test";
/// A Cloudflare range the in-range floods draw their sources from.
const INSIDE_BASE: u32 = u32::from_be_bytes([104, 16, 0, 0]);
const INSIDE_MASK: u32 = 0x0007_ffff;
const GEN_CPU: usize = 0;
const RX_CPU: usize = 1;

/// Mirrors the generator's configuration value (`trafficgen.rs`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Generator {
    base: u32,
    mask: u32,
    l3: u32,
    l4: u32,
    checksum_at: u32,
    padding: u32,
    interval_ns: u64,
}

// SAFETY: six u32s and a u64, no padding.
unsafe impl aya::Pod for Generator {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flood {
    OutsideSyn,
    InsideSyn,
    InsideAck,
    InsideUdp,
}

impl Flood {
    fn name(self) -> &'static str {
        match self {
            Flood::OutsideSyn => "(a) SYNs from outside the ranges",
            Flood::InsideSyn => "(b) SYNs from inside the ranges",
            Flood::InsideAck => "(c) ACKs from inside the ranges",
            Flood::InsideUdp => "(d) UDP 443 from inside the ranges",
        }
    }

    fn contenders(self) -> &'static [Filter] {
        match self {
            Flood::OutsideSyn => &[
                Filter::None,
                Filter::NftRaw,
                Filter::XdpFilterDeny,
                Filter::XdpDrop,
                Filter::XdpReadDrop,
                Filter::Shield,
            ],
            Flood::InsideSyn => &[
                Filter::KernelSyncookies,
                Filter::NftSynproxy,
                Filter::Shield,
            ],
            Flood::InsideAck | Flood::InsideUdp => &[
                Filter::None,
                Filter::XdpDrop,
                Filter::XdpReadDrop,
                Filter::Shield,
            ],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Filter {
    /// An XDP_PASS program (the veth needs one to receive XDP_TX frames)
    /// and the kernel's stack.
    None,
    /// nftables in the raw prerouting hook: TCP/UDP 80/443 from outside the
    /// ranges dropped.
    NftRaw,
    /// xdp-filter, deny policy, the edge's address allowed.
    XdpFilterDeny,
    /// The trivial XDP_DROP program.
    XdpDrop,
    /// XDP_DROP after one read of the headers: the floor of any program
    /// that looks at the packet.
    XdpReadDrop,
    /// The kernel's own SYN cookies for every SYN (`tcp_syncookies = 2`).
    KernelSyncookies,
    /// nftables synproxy for SYNs to 443.
    NftSynproxy,
    Shield,
}

impl Filter {
    fn name(self) -> &'static str {
        match self {
            Filter::None => "no filter",
            Filter::NftRaw => "nftables raw",
            Filter::XdpFilterDeny => "xdp-filter",
            Filter::XdpDrop => "trivial XDP_DROP",
            Filter::XdpReadDrop => "XDP_DROP after reading the headers",
            Filter::KernelSyncookies => "kernel syncookies alone",
            Filter::NftSynproxy => "nftables synproxy",
            Filter::Shield => "shield",
        }
    }
}

/// The two namespaces and what runs in them.
struct Bench {
    gen: Netns,
    rx: Netns,
    dir: PathBuf,
    seconds: u64,
    rx_mac: [u8; 6],
    gen_mac: [u8; 6],
    gen_ifindex: u32,
    /// The interfaces whose NAPI runs under SCHED_FIFO during the request
    /// phases (`SHIELD_BENCH_NAPI_FIFO`, comma-separated; default g0,
    /// empty for none).
    napi_fifo: Vec<String>,
    upstream: Option<Child>,
    /// The sink on g0: the edge's traffic passes, answers to forged
    /// sources drop (and XDP_TX frames from r0 reach g0 at all).
    gen_sink: Option<Ebpf>,
}

fn mac_of(netns: &Netns, interface: &str) -> anyhow::Result<[u8; 6]> {
    // From ip, not /sys: nsenter keeps the host's /sys.
    let out = netns.exec_check(&["ip", "-o", "link", "show", interface])?;
    let mac = out
        .split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .context("no MAC address")?;
    let mut bytes = [0u8; 6];
    for (slot, part) in bytes.iter_mut().zip(mac.split(':')) {
        *slot = u8::from_str_radix(part, 16)?;
    }
    Ok(bytes)
}

impl Bench {
    fn new(seconds: u64) -> anyhow::Result<Bench> {
        let id = format!("shtest-flood-{}", std::process::id());
        let gen = Netns::create(format!("{id}-gen"))?;
        let rx = Netns::create(format!("{id}-rx"))?;
        check(
            "ip",
            &[
                "link", "add", "name", "g0", "netns", &gen.name, "type", "veth", "peer", "name",
                "r0", "netns", &rx.name,
            ],
        )?;
        gen.exec_check(&["ip", "addr", "add", &format!("{GEN_ADDR}/32"), "dev", "g0"])?;
        rx.exec_check(&["ip", "addr", "add", &format!("{RX_ADDR}/32"), "dev", "r0"])?;
        for (ns, dev) in [(&gen, "g0"), (&rx, "r0")] {
            ns.exec_check(&["ip", "link", "set", dev, "up"])?;
        }
        gen.exec_check(&["ip", "route", "add", &format!("{RX_ADDR}/32"), "dev", "g0"])?;
        rx.exec_check(&["ip", "route", "add", &format!("{GEN_ADDR}/32"), "dev", "r0"])?;
        // The floods' sources answer nowhere: their SYN-ACKs leave and die.
        rx.exec_check(&["ip", "route", "add", "default", "dev", "r0"])?;
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir)?;
        let rx_mac = mac_of(&rx, "r0")?;
        let gen_mac = mac_of(&gen, "g0")?;
        let gen_ifindex = ifindex(&gen, "g0")?;
        // Neighbours fixed, so no ARP rides with the flood or is dropped by it.
        gen.exec_check(&[
            "ip",
            "neigh",
            "replace",
            RX_ADDR,
            "lladdr",
            &mac_text(rx_mac),
            "dev",
            "g0",
            "nud",
            "permanent",
        ])?;
        rx.exec_check(&[
            "ip",
            "neigh",
            "replace",
            GEN_ADDR,
            "lladdr",
            &mac_text(gen_mac),
            "dev",
            "r0",
            "nud",
            "permanent",
        ])?;
        let mut bench = Bench {
            gen,
            rx,
            dir,
            seconds,
            rx_mac,
            gen_mac,
            gen_ifindex,
            napi_fifo: std::env::var("SHIELD_BENCH_NAPI_FIFO")
                .unwrap_or_else(|_| "g0".into())
                .split(',')
                .map(str::trim)
                .filter(|interface| !interface.is_empty())
                .map(str::to_owned)
                .collect(),
            upstream: None,
            gen_sink: None,
        };
        let mut sink = attach(&bench.gen, "g0", ebpf::SINK, "sink")?;
        let mut edge: Array<_, u32> =
            Array::try_from(sink.map_mut("EDGE").context("no EDGE map")?)?;
        edge.set(0, u32::from_ne_bytes(v4(GEN_ADDR)), 0)?;
        bench.gen_sink = Some(sink);
        bench.pin_napi("g0", &bench.gen, GEN_CPU)?;
        bench.pki()?;
        Ok(bench)
    }

    fn pki(&mut self) -> anyhow::Result<()> {
        pki::mtls_site(&self.dir, SITE)?;
        let upstream = self
            .rx
            .command(&[
                "taskset",
                "-c",
                &RX_CPU.to_string(),
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                "127.0.0.1",
                "--directory",
                "/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.upstream = Some(upstream);
        Ok(())
    }

    /// Makes `interface`'s NAPI a thread of its own, pinned to `cpu`. A veth
    /// has NAPI only while an XDP program is attached, so for r0 this
    /// follows each row's attach.
    fn pin_napi(&self, interface: &str, netns: &Netns, cpu: usize) -> anyhow::Result<()> {
        check(
            "ip",
            &[
                "netns",
                "exec",
                &netns.name,
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{interface}/threaded"),
            ],
        )?;
        for pid in napi_threads(interface)? {
            check("taskset", &["-pc", &cpu.to_string(), &pid])?;
        }
        Ok(())
    }

    /// Puts the NAPI threads named by `SHIELD_BENCH_NAPI_FIFO` (g0's by
    /// default) under SCHED_FIFO (`fifo`) or back to the normal policy.
    /// g0's NAPI shares CPU 0 with the generator, which stands in for a
    /// flood from other hosts: as a CFS thread it waits behind the
    /// generator while g0's ring overflows with r0's answers, and a lost
    /// segment of the edge costs a 200 ms retransmission, which no real
    /// edge would see. Only the request phases run it so: at full speed
    /// the kernel's RT throttling would cap it at 95% of the core.
    fn napi_fifo(&self, fifo: bool) -> anyhow::Result<()> {
        let policy: &[&str] = if fifo {
            &["-f", "-p", "50"]
        } else {
            &["-o", "-p", "0"]
        };
        for interface in &self.napi_fifo {
            for pid in napi_threads(interface)? {
                let mut args = policy.to_vec();
                args.push(&pid);
                check("chrt", &args)?;
            }
        }
        Ok(())
    }

    /// shield on the receiver: the TLS site always, XDP on r0 when
    /// `xdp` holds the `[xdp]` keys.
    fn start_shield(&self, xdp: Option<&str>) -> anyhow::Result<ShieldRun> {
        let interfaces = if xdp.is_some() { "[\"r0\"]" } else { "[]" };
        let config = format!(
            "[xdp]\ninterfaces = {interfaces}\n{}\n[ranges]\nrefresh = \"off\"\ncache = \"{}/ranges.json\"\n\
             [http]\nlisten = \"0.0.0.0:80\"\n{}",
            xdp.unwrap_or(""),
            self.dir.display(),
            pki::site_toml(&self.dir, SITE, "http://127.0.0.1:8080"),
        );
        let path = self.dir.join("shield.toml");
        std::fs::write(&path, config)?;
        let log = std::fs::File::create(self.dir.join("shield.log"))?;
        let binary = shield_binary()?;
        let pin_root = format!("/sys/fs/bpf/{}", self.rx.name);
        let child = self
            .rx
            .command(&[
                "taskset",
                "-c",
                &RX_CPU.to_string(),
                binary.to_str().context("binary path")?,
                "run",
                "--config",
                path.to_str().context("config path")?,
            ])
            .env("SHIELD_PIN_ROOT", &pin_root)
            .env("SHIELD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let run = ShieldRun {
            child,
            pin_root: PathBuf::from(pin_root),
            netns: self.rx.name.clone(),
        };
        wait_for(Duration::from_secs(20), || self.get_ok())
            .with_context(|| format!("shield did not serve: {}", self.log()))?;
        Ok(run)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("shield.log")).unwrap_or_default()
    }

    fn get_ok(&self) -> bool {
        let args = pki::edge_curl_args(&self.dir, SITE, RX_ADDR);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.gen.exec(&args).is_ok_and(|o| o.stdout == b"200")
    }

    /// The edge's bounded client: a new mTLS connection per request, 20 a
    /// second, for the run's length.
    fn legit_client(&self) -> anyhow::Result<Child> {
        let d = self.dir.display();
        let out = self.dir.join("oha.json");
        let _ = std::fs::remove_file(&out);
        Ok(self
            .gen
            .command(&[
                "taskset",
                "-c",
                &RX_CPU.to_string(),
                "oha",
                "--no-tui",
                "--output-format",
                "json",
                "-o",
                out.to_str().context("path")?,
                "-q",
                "20",
                "-z",
                &format!("{}s", self.seconds),
                "-c",
                "4",
                "--disable-keepalive",
                "-t",
                "3s",
                "--cacert",
                &format!("{d}/server-ca.pem"),
                "--cert",
                &format!("{d}/edge.pem"),
                "--key",
                &format!("{d}/edge.key"),
                "--connect-to",
                &format!("{SITE}:443:{RX_ADDR}:443"),
                &format!("https://{SITE}/"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?)
    }

    fn legit_result(&self, mut client: Child) -> anyhow::Result<Legit> {
        client.wait()?;
        let text =
            std::fs::read_to_string(self.dir.join("oha.json")).context("oha wrote no result")?;
        let value: serde_json::Value = serde_json::from_str(&text)?;
        let codes = &value["statusCodeDistribution"];
        let ok = codes["200"].as_u64().unwrap_or(0);
        // The requests still open when the run's time is up are cut off,
        // not failed.
        let errors: u64 = value["errorDistribution"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !k.contains("deadline"))
                    .filter_map(|(_, v)| v.as_u64())
                    .sum()
            })
            .unwrap_or(0);
        let other: u64 = codes
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| k.as_str() != "200")
                    .filter_map(|(_, v)| v.as_u64())
                    .sum()
            })
            .unwrap_or(0);
        let p = |key: &str| {
            value["latencyPercentiles"][key]
                .as_f64()
                .unwrap_or(f64::NAN)
                * 1000.0
        };
        Ok(Legit {
            ok,
            failed: errors + other,
            p50_ms: p("p50"),
            p99_ms: p("p99"),
        })
    }

    /// r0's frames taken off the veth ring so far: with an XDP program
    /// attached, a veth counts as received every frame its program ran on.
    fn absorbed(&self) -> anyhow::Result<u64> {
        let out = self
            .rx
            .exec_check(&["ip", "-j", "-s", "link", "show", "r0"])?;
        let value: serde_json::Value = serde_json::from_str(&out)?;
        value[0]["stats64"]["rx"]["packets"]
            .as_u64()
            .context("ip -s link shows no rx packets for r0")
    }

    fn frame(&self, flood: Flood) -> (Vec<u8>, Generator) {
        let (base, mask) = match flood {
            Flood::OutsideSyn => (0, u32::MAX),
            _ => (INSIDE_BASE, INSIDE_MASK),
        };
        let mut frame = match flood {
            Flood::InsideUdp => {
                let mut udp_header = udp(443);
                udp_header.extend_from_slice(&[0x51; 32]);
                let length = udp_header.len() as u16;
                udp_header[4..6].copy_from_slice(&length.to_be_bytes());
                let mut ip = ipv4(v4("104.16.0.1"), UDP, 5, 0x4000, udp_header.len());
                ip[16..20].copy_from_slice(&v4(RX_ADDR));
                let sum = internet_checksum(&[&ip]);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                concat(&[&ethernet(&[], ETH_P_IPV4), &ip, &udp_header])
            }
            _ => {
                let options = linux_syn_options(1460, 0x1234_5678, 7);
                let mut segment = Segment::syn("104.16.0.1", RX_ADDR, 443, &options);
                if flood == Flood::InsideAck {
                    segment.flags = ACK;
                    segment.ack = 0x0bad_0bad;
                    segment.options = vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
                }
                segment.frame()
            }
        };
        frame[0..6].copy_from_slice(&self.rx_mac);
        frame[6..12].copy_from_slice(&self.gen_mac);
        let generator = Generator {
            base,
            mask,
            l3: 14,
            l4: 34,
            checksum_at: if flood == Flood::InsideUdp { 0 } else { 16 },
            padding: 0,
            interval_ns: 0,
        };
        (frame, generator)
    }

    /// Sends `flood` for the run's length from CPU 0 in `gen`, as fast as
    /// the generator goes or at `pace` frames a second; the frames offered
    /// per second.
    fn generate(&self, flood: Flood, pace: Option<f64>) -> anyhow::Result<f64> {
        let (frame, mut generator) = self.frame(flood);
        generator.interval_ns = pace.map_or(0, |rate| (1e9 / rate) as u64);
        let ifindex = self.gen_ifindex;
        let seconds = self.seconds;
        in_netns(&self.gen, Some(GEN_CPU), move || {
            let mut bpf = Ebpf::load(ebpf::TRAFFICGEN)?;
            let mut config: Array<_, Generator> =
                Array::try_from(bpf.map_mut("GENERATOR").context("no GENERATOR map")?)?;
            config.set(0, generator, 0)?;
            let program: &mut Xdp = bpf
                .program_mut("trafficgen")
                .context("no trafficgen program")?
                .try_into()?;
            program.load()?;
            let mut ctx = [0u32; 6];
            ctx[1] = frame.len() as u32;
            ctx[3] = ifindex;
            let ctx_bytes: Vec<u8> = ctx.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let repeat = 1_000_000u32;
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed() < Duration::from_secs(seconds) {
                let options = TestRunOptions {
                    data_in: Some(&frame),
                    ctx_in: Some(&ctx_bytes),
                    repeat,
                    attrs: aya::programs::TestRunAttrs::new().xdp_live_frames(64),
                    ..TestRunOptions::default()
                };
                program.test_run(options)?;
                sent += u64::from(repeat);
            }
            let elapsed = start.elapsed().as_secs_f64();
            // Paced, the loop runs more often than it sends.
            Ok(match pace {
                Some(rate) => rate.min(sent as f64 / elapsed),
                None => sent as f64 / elapsed,
            })
        })
    }

    /// shield (when `filter` is shield, with its keys for `flood`) and the
    /// filter in place, the receiving NAPI pinned.
    fn arm(&self, filter: Filter, flood: Flood) -> anyhow::Result<(ShieldRun, Setup)> {
        let xdp_keys = match (filter, flood) {
            (Filter::Shield, Flood::InsideSyn) => Some("syn_cookies = \"always\""),
            (Filter::Shield, _) => Some(""),
            _ => None,
        };
        let shield = self.start_shield(xdp_keys)?;
        let setup = self.setup(filter, flood)?;
        self.pin_napi("r0", &self.rx, RX_CPU)?;
        Ok((shield, setup))
    }

    /// The flood at full speed: frames offered and absorbed per second.
    fn full_speed(&self, flood: Flood) -> anyhow::Result<(f64, f64)> {
        let before = self.absorbed()?;
        let started = Instant::now();
        let offered = self.generate(flood, None)?;
        let absorbed = (self.absorbed()? - before) as f64 / started.elapsed().as_secs_f64();
        Ok((offered, absorbed))
    }

    /// Puts `filter` in place for `flood`; what undoes it.
    fn setup(&self, filter: Filter, flood: Flood) -> anyhow::Result<Setup> {
        let mut setup = Setup::default();
        match filter {
            Filter::None | Filter::NftRaw | Filter::KernelSyncookies | Filter::NftSynproxy => {
                setup.xdp = Some(self.attach(ebpf::ANCHOR_PASS, "anchor_pass")?);
            }
            Filter::XdpDrop => setup.xdp = Some(self.attach(ebpf::ANCHOR_DROP, "anchor_drop")?),
            Filter::XdpReadDrop => {
                setup.xdp = Some(self.attach(ebpf::ANCHOR_DROP, "anchor_read_drop")?);
            }
            Filter::XdpFilterDeny => {
                self.rx.exec_check(&[
                    "xdp-filter",
                    "load",
                    "--mode",
                    "native",
                    "--policy",
                    "deny",
                    "r0",
                ])?;
                self.rx
                    .exec_check(&["xdp-filter", "ip", "--mode", "src", GEN_ADDR])?;
                setup.xdp_filter = true;
            }
            Filter::Shield => {}
        }
        match filter {
            Filter::NftRaw => {
                let ranges: Vec<String> = shield::ranges::RangeSet::snapshot()
                    .prefixes()
                    .filter(|p| p.is_ipv4())
                    .map(|p| p.to_string())
                    .collect();
                let rules = format!(
                    "table ip shieldbench {{\n\
                     set cf {{ type ipv4_addr; flags interval; elements = {{ {} }}; }}\n\
                     chain pre {{\n\
                     type filter hook prerouting priority raw; policy accept;\n\
                     ip saddr != @cf tcp dport {{ 80, 443 }} drop;\n\
                     ip saddr != @cf udp dport 443 drop;\n\
                     }}\n}}\n",
                    ranges.join(", ")
                );
                self.nft(&rules)?;
                setup.nft = true;
            }
            Filter::KernelSyncookies => self.sysctl("net/ipv4/tcp_syncookies", "2")?,
            Filter::NftSynproxy => {
                self.sysctl("net/ipv4/tcp_syncookies", "2")?;
                self.sysctl("net/ipv4/tcp_timestamps", "1")?;
                self.sysctl("net/netfilter/nf_conntrack_tcp_loose", "0")?;
                self.nft(
                    "table ip shieldbench {\n\
                     chain pre {\n\
                     type filter hook prerouting priority raw; policy accept;\n\
                     tcp dport 443 tcp flags syn notrack;\n\
                     }\n\
                     chain input {\n\
                     type filter hook input priority filter; policy accept;\n\
                     tcp dport 443 ct state invalid,untracked synproxy mss 1460 wscale 7 timestamp sack-perm;\n\
                     ct state invalid drop;\n\
                     }\n}\n",
                )?;
                setup.nft = true;
            }
            _ => {}
        }
        let _ = flood;
        Ok(setup)
    }

    fn teardown(&self, setup: Setup) -> anyhow::Result<()> {
        drop(setup.xdp);
        if setup.xdp_filter {
            self.rx.exec_check(&["xdp-filter", "unload", "r0"])?;
        }
        if setup.nft {
            self.rx
                .exec_check(&["nft", "delete", "table", "ip", "shieldbench"])?;
        }
        self.sysctl("net/ipv4/tcp_syncookies", "1")?;
        Ok(())
    }

    fn nft(&self, rules: &str) -> anyhow::Result<()> {
        let path = self.dir.join("rules.nft");
        std::fs::write(&path, rules)?;
        self.rx
            .exec_check(&["nft", "-f", path.to_str().context("path")?])?;
        Ok(())
    }

    fn sysctl(&self, name: &str, value: &str) -> anyhow::Result<()> {
        self.rx
            .exec_check(&["sh", "-c", &format!("echo {value} > /proc/sys/{name}")])?;
        Ok(())
    }

    /// Attaches `object`'s `program` to r0 natively.
    fn attach(&self, object: &'static [u8], program: &'static str) -> anyhow::Result<Ebpf> {
        attach(&self.rx, "r0", object, program)
    }
}

/// Attaches `object`'s `program` natively to `interface` of `netns`, from a
/// thread that enters it; detached when the returned `Ebpf` drops.
fn attach(
    netns: &Netns,
    interface: &'static str,
    object: &'static [u8],
    program: &'static str,
) -> anyhow::Result<Ebpf> {
    in_netns(netns, None, move || {
        let mut bpf = Ebpf::load(object)?;
        let xdp: &mut Xdp = bpf.program_mut(program).context("no program")?.try_into()?;
        xdp.load()?;
        xdp.attach(interface, XdpMode::Driver)?;
        Ok(bpf)
    })
}

/// Runs `body` on a thread of its own that enters `netns` (and runs on
/// `cpu`, when given): interface names and test runs resolve there.
fn in_netns<T: Send>(
    netns: &Netns,
    cpu: Option<usize>,
    body: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let netns = std::fs::File::open(netns.path())?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> anyhow::Result<T> {
                if let Some(cpu) = cpu {
                    pin_thread(cpu)?;
                }
                // SAFETY: setns on this thread alone.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns: {}", std::io::Error::last_os_error());
                }
                body()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread in a bench namespace panicked"))?
    })
}

/// What a row put in place, undone by `teardown` (an attached program is
/// detached when its `Ebpf` drops).
#[derive(Default)]
struct Setup {
    xdp: Option<Ebpf>,
    xdp_filter: bool,
    nft: bool,
}

struct ShieldRun {
    child: Child,
    pin_root: PathBuf,
    netns: String,
}

impl Drop for ShieldRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(shield_binary().unwrap_or_default())
            .arg("detach")
            .env("SHIELD_PIN_ROOT", &self.pin_root)
            .output();
        let _ = std::fs::remove_dir_all(&self.pin_root);
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(mut upstream) = self.upstream.take() {
            let _ = upstream.kill();
            let _ = upstream.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Clone, Copy, Debug)]
struct Legit {
    ok: u64,
    failed: u64,
    p50_ms: f64,
    p99_ms: f64,
}

struct Row {
    flood: Flood,
    filter: Filter,
    offered: f64,
    /// Frames absorbed per second at full speed, one per round, the first
    /// from the round that also measured the edge's requests.
    absorbed: Vec<f64>,
    /// None for the anchors that drop everything, the edge included.
    quiet: Option<Legit>,
    /// During the flood at `PACED` frames a second.
    loaded: Option<Legit>,
    paced_absorbed: f64,
}

/// The flood's rate while the edge's requests are measured: ten times what
/// the kernel's own SYN cookies absorb here, well under what XDP does.
const PACED: f64 = 1_000_000.0;

impl Row {
    /// The median of the rounds' absorbed rates.
    fn absorbed(&self) -> f64 {
        let mut rates = self.absorbed.clone();
        rates.sort_by(f64::total_cmp);
        match rates.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => rates[n / 2],
            n => (rates[n / 2 - 1] + rates[n / 2]) / 2.0,
        }
    }

    fn rounds_text(&self) -> String {
        self.absorbed
            .iter()
            .map(|rate| format!("{:.2}", rate / 1e6))
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

fn pin_thread(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: this thread, with a valid set.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The pids of `interface`'s threaded NAPI kthreads (`napi/<if>-<id>`).
fn napi_threads(interface: &str) -> anyhow::Result<Vec<String>> {
    let out = check("ps", &["-eo", "pid,comm"])?;
    let prefix = format!("napi/{interface}-");
    let pids: Vec<String> = out
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (pid, comm) = (fields.next()?, fields.next()?);
            comm.starts_with(&prefix).then(|| pid.to_string())
        })
        .collect();
    if pids.is_empty() {
        bail!("no napi/{interface} thread: threaded NAPI did not start");
    }
    Ok(pids)
}

fn ifindex(netns: &Netns, interface: &str) -> anyhow::Result<u32> {
    let out = netns.exec_check(&["ip", "-o", "link", "show", interface])?;
    out.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .context("no ifindex")
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn run_row(bench: &Bench, flood: Flood, filter: Filter) -> anyhow::Result<Row> {
    let (shield, setup) = bench.arm(filter, flood)?;
    // The anchors drop the edge too.
    let serves = !matches!(filter, Filter::XdpDrop | Filter::XdpReadDrop);
    bench.napi_fifo(true)?;
    let quiet = if serves {
        wait_for(Duration::from_secs(10), || bench.get_ok()).context("the site serves")?;
        Some(bench.legit_result(bench.legit_client()?)?)
    } else {
        None
    };
    bench.napi_fifo(false)?;
    let (offered, absorbed) = bench.full_speed(flood)?;
    bench.napi_fifo(true)?;
    let client = serves.then(|| bench.legit_client()).transpose()?;
    let before = bench.absorbed()?;
    let started = Instant::now();
    bench.generate(flood, Some(PACED))?;
    let paced_absorbed = (bench.absorbed()? - before) as f64 / started.elapsed().as_secs_f64();
    let loaded = client.map(|c| bench.legit_result(c)).transpose()?;
    bench.napi_fifo(false)?;
    bench.teardown(setup)?;
    drop(shield);
    Ok(Row {
        flood,
        filter,
        offered,
        absorbed: vec![absorbed],
        quiet,
        loaded,
        paced_absorbed,
    })
}

/// A later round of `row`: the full-speed flood alone, appended to its
/// absorbed rates.
fn rerun_absorbed(bench: &Bench, row: &mut Row) -> anyhow::Result<()> {
    let (shield, setup) = bench.arm(row.filter, row.flood)?;
    let (_, absorbed) = bench.full_speed(row.flood)?;
    bench.teardown(setup)?;
    drop(shield);
    row.absorbed.push(absorbed);
    Ok(())
}

/// The floods named by their letters ("a,c"), or all of them.
fn selected_floods(letters: Option<&str>) -> anyhow::Result<Vec<Flood>> {
    let all = [
        ("a", Flood::OutsideSyn),
        ("b", Flood::InsideSyn),
        ("c", Flood::InsideAck),
        ("d", Flood::InsideUdp),
    ];
    let Some(letters) = letters else {
        return Ok(all.iter().map(|&(_, flood)| flood).collect());
    };
    letters
        .split(',')
        .map(|letter| {
            all.iter()
                .find(|(name, _)| *name == letter.trim())
                .map(|&(_, flood)| flood)
                .with_context(|| {
                    format!("SHIELD_BENCH_FLOODS={letters:?}: name floods by letter, a to d, separated by commas")
                })
        })
        .collect()
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| flood | filter | offered Mpps | absorbed Mpps (median) | absorbed per round | vs anchor | vs reading drop | legit ok/failed, no flood | p50/p99 ms, no flood | absorbed of 1 Mpps | legit ok/failed, 1 Mpps flood | p50/p99 ms, 1 Mpps flood |"
    );
    let _ = writeln!(
        out,
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for row in rows {
        let anchor = match row.flood {
            Flood::InsideSyn => Filter::KernelSyncookies,
            _ => Filter::XdpDrop,
        };
        let rate_of = |filter: Filter| {
            rows.iter()
                .find(|r| r.flood == row.flood && r.filter == filter)
                .map(Row::absorbed)
        };
        let anchor_rate = rate_of(anchor).unwrap_or(f64::NAN);
        // Only the floods that have the reading drop among their contenders.
        let vs_reading = rate_of(Filter::XdpReadDrop).map_or("-".to_owned(), |rate| {
            format!("{:.2}x", row.absorbed() / rate)
        });
        let legit = |legit: Option<Legit>| match legit {
            Some(l) => (
                format!("{}/{}", l.ok, l.failed),
                format!("{:.1}/{:.1}", l.p50_ms, l.p99_ms),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        let (quiet_count, quiet_latency) = legit(row.quiet);
        let (loaded_count, loaded_latency) = legit(row.loaded);
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {} | {:.2}x {} | {vs_reading} | {quiet_count} | {quiet_latency} | {:.2} | {loaded_count} | {loaded_latency} |",
            row.flood.name(),
            row.filter.name(),
            row.offered / 1e6,
            row.absorbed() / 1e6,
            row.rounds_text(),
            row.absorbed() / anchor_rate,
            anchor.name(),
            row.paced_absorbed / 1e6,
        );
    }
    out
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    if !require_root() {
        bail!("the flood bench makes namespaces and loads XDP: run as root");
    }
    let quick = std::env::var_os("SHIELD_BENCH_QUICK").is_some();
    let seconds = if quick { 2 } else { 6 };
    let rounds = match std::env::var("SHIELD_BENCH_ROUNDS") {
        Ok(text) => text
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 1)
            .with_context(|| {
                format!("SHIELD_BENCH_ROUNDS={text:?}: give a number of rounds, 1 or more")
            })?,
        Err(_) => 3,
    };
    let floods = selected_floods(std::env::var("SHIELD_BENCH_FLOODS").ok().as_deref())?;
    let bench = Bench::new(seconds)?;
    let mut rows = Vec::new();
    // SHIELD_BENCH_FILTERS=shield,trivial: only the contenders whose name
    // holds one of these words.
    let only = std::env::var("SHIELD_BENCH_FILTERS").ok();
    let chosen = |filter: Filter| {
        only.as_deref().is_none_or(|words| {
            words
                .split(',')
                .any(|word| filter.name().contains(word.trim()))
        })
    };
    for &flood in &floods {
        for &filter in flood.contenders().iter().filter(|&&f| chosen(f)) {
            eprintln!(
                "flood bench: round 1 of {rounds}: {} / {}",
                flood.name(),
                filter.name()
            );
            rows.push(run_row(&bench, flood, filter)?);
        }
    }
    // Later rounds take every row again in the same order, so a host that
    // is busy for a while hits one sample of several rows, not one row.
    for round in 2..=rounds {
        for row in &mut rows {
            eprintln!(
                "flood bench: round {round} of {rounds}: {} / {}",
                row.flood.name(),
                row.filter.name()
            );
            rerun_absorbed(&bench, row)?;
        }
    }
    let text = table(&rows);
    println!("{text}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-flood");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("results.md"), &text)?;
    Ok(())
}
