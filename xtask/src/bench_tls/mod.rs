//! `cargo xtask bench tls`: shield's mTLS terminator against nginx
//! (Debian nginx-light) in one run, on loopback only.
//!
//! Both get the same ECDSA P-256 certificate, key and client CA, require a
//! client certificate, and proxy to the same upstream (a separate one-worker
//! nginx returning a fixed 200). Four figures, each side by side:
//!
//! - full handshakes per second: every connection is a fresh TLS 1.3
//!   handshake with a client certificate and one `Connection: close`
//!   request; the client never resumes (shield-userspace's `tls_load`
//!   example, because oha keeps a session cache and would resume);
//! - keep-alive requests per second: oha with the client certificate;
//! - user-space instructions per keep-alive request, counted by valgrind's
//!   callgrind (nginx and the aws-lc-rs build): each server alone under
//!   callgrind, nginx as one process (`master_process off`) so that the
//!   process valgrind runs does the work, 400 requests of warm-up, then the
//!   counters zeroed, 4,000 requests on 4 connections, and the counters
//!   dumped. On this shared VM wall-clock and CPU-time figures vary by ±30%
//!   between identical runs, too much to tell two servers within 10% of
//!   each other apart; the count repeats within about 0.3% (four runs
//!   here: nginx's identical, shield's within 0.3%). It is
//!   user-space only: the kernel's work (the TCP stack and system calls,
//!   about half of a keep-alive request's CPU here) is not in it, so the
//!   server CPU rows stay the figures for the whole cost;
//! - RSS (and PSS) with 10,000 idle mTLS connections open, each having
//!   served one request: shield's process against nginx's master plus
//!   workers.
//!
//! shield is built twice, with rustls' aws-lc-rs provider (the default) and
//! with `--features ring`, so the provider choice in `tls::provider` stays
//! a measured one.
//!
//! The server under test runs alone on the first CPU this process may use
//! (CPU 0 on most hosts); the load clients (`tls_load`, oha) and the
//! upstream nginx run on the others. Sharing every CPU, the keep-alive
//! figure mostly measured oha. Pinned to one CPU, shield sees
//! `available_parallelism() == 1` and runs one connection worker, while
//! nginx keeps its `worker_processes 2`, both on that CPU. So the bench
//! needs at least 2 CPUs.
//!
//! With 2 CPUs the keep-alive figure can be capped by the load side (oha
//! and the upstream nginx share one CPU) rather than by the server, which
//! the busy shares show. So each round also takes a budgeted keep-alive
//! sample: the server under test held to half a CPU by a cgroup CPU quota
//! (the same for both; nginx's master and workers share it), which makes
//! the server the bottleneck whatever the client costs.
//!
//! Each throughput sample also reports the server's CPU time per completed
//! request or handshake (its process and child processes, from /proc), which
//! does not depend on how fast the client is, and the busy fraction of the
//! server's CPU and of the load CPUs (from /proc/stat): load CPUs near 100%
//! mean the client, not the server, capped the rate.
//!
//! `SHIELD_BENCH_QUICK=1` runs every step once and short ([`params::Plan`]),
//! to check that the bench still runs end to end; its figures mean nothing.
//! `SHIELD_BENCH_INSTRUCTIONS_ONLY=1` measures only the callgrind row, which
//! a loaded host does not disturb; `SHIELD_BENCH_SHIELD_BIN=PATH` measures
//! that binary in place of the default build (an earlier commit's, say).
//!
//! One module per job: `install` (the tools), `conf` (certificates and
//! config templates), `servers` (the processes under test), `load` (the
//! clients), `procfs` (what /proc says), `cgroup` (the CPU budget),
//! `sampling` (one throughput sample), `callgrind` (instruction counts)
//! and `stats` (medians, ratios, the table); this one runs them in order.

mod callgrind;
mod cgroup;
mod conf;
mod install;
mod load;
mod params;
mod procfs;
mod sampling;
mod servers;
mod stats;

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use self::{
    cgroup::CpuGroup,
    conf::Pki,
    load::{Clients, Holder},
    params::{Plan, BUDGET_PERCENT, START_WAIT},
    sampling::{Meter, Sample},
    servers::{free_port, nofile_limit, pinned, Kind, Server},
    stats::{mib, Figures},
};
use crate::shell;

/// `SHIELD_BENCH_INSTRUCTIONS_ONLY=1`: only the callgrind row.
const INSTRUCTIONS_ONLY: &str = "SHIELD_BENCH_INSTRUCTIONS_ONLY";
/// `SHIELD_BENCH_SHIELD_BIN=PATH`: measure this shield binary as the
/// default (aws-lc-rs) build.
const SHIELD_BIN: &str = "SHIELD_BENCH_SHIELD_BIN";

/// User-space instructions per keep-alive request of each kind, one
/// server at a time under callgrind; printed as they come.
fn instructions_row(
    kinds: &[Kind],
    work: &Path,
    pki: &Pki,
    upstream: &str,
    meter: &Meter,
    plan: &Plan,
) -> anyhow::Result<Vec<f64>> {
    let mut row = Vec::new();
    for kind in kinds {
        let per_request = callgrind::per_request(*kind, work, pki, upstream, &meter.cpus, plan)?;
        println!(
            "{}: {per_request:.0} user-space instructions per keep-alive request (callgrind)",
            kind.name()
        );
        row.push(per_request);
    }
    Ok(row)
}

pub fn run() -> anyhow::Result<()> {
    let plan = Plan::from_env();
    if plan.quick {
        println!("bench: SHIELD_BENCH_QUICK: one short round of each figure, a smoke run");
    }
    // Before the builds: a host too small fails in seconds, not minutes.
    let meter = Meter::new(plan.seconds)?;
    install::bench_tools()?;
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let work = target.join("bench-tls");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("cannot clear {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("cannot create {}", work.display()))?;

    // ring first, then the default, so target/release/shield ends up the
    // default build; cargo keeps both feature sets' artifacts, so later
    // runs only relink.
    let release = target.join("release");
    build(&["--features", "ring", "--bin", "shield"])?;
    copy(&release.join("shield"), &work.join("shield-ring"))?;
    build(&["--bin", "shield", "--example", "tls_load"])?;
    // Another build of shield in the default build's place: an earlier
    // commit's, to compare against with the same harness.
    let shield = std::env::var_os(SHIELD_BIN).map_or_else(|| release.join("shield"), PathBuf::from);
    copy(&shield, &work.join("shield-aws-lc-rs"))?;
    let load = release.join("examples").join("tls_load");

    let nofile = nofile_limit();
    let idle_connections = plan.idle_connections;
    if nofile < idle_connections as u64 + 500 {
        bail!("the descriptor hard limit ({nofile}) is too low for {idle_connections} connections; raise it (ulimit -Hn)");
    }
    let pki = Pki::make(&work)?;
    let upstream_port = free_port()?;
    // On the load CPUs: it serves every server under test alike, and on
    // the server's CPU it would take time from the server measured.
    let _upstream = Server::start(
        "upstream",
        &mut pinned(
            &meter.cpus.load_list(),
            "nginx",
            &conf::nginx_args(
                &work,
                "upstream",
                &conf::upstream_conf(&work, upstream_port),
            )?,
        ),
        upstream_port,
        START_WAIT,
    )?;
    let upstream = format!("http://127.0.0.1:{upstream_port}");

    let kinds = [Kind::Nginx, Kind::Shield("aws-lc-rs"), Kind::Shield("ring")];
    if std::env::var_os(INSTRUCTIONS_ONLY).is_some_and(|v| v == "1") {
        // The deterministic row alone, for a change that must not cost
        // speed: it does not depend on what else the host is doing.
        instructions_row(&kinds[..2], &work, &pki, &upstream, &meter, &plan)?;
        return Ok(());
    }
    let load_cpus = meter.cpus.load_list();
    let clients = Clients {
        tls_load: &load,
        pki: &pki,
        cpus: &load_cpus,
    };
    let seconds = plan.seconds;
    let mut handshakes: Vec<Vec<Sample>> = kinds.iter().map(|_| Vec::new()).collect();
    let mut keepalive: Vec<Vec<Sample>> = kinds.iter().map(|_| Vec::new()).collect();
    let mut budgeted: Vec<Vec<Sample>> = kinds.iter().map(|_| Vec::new()).collect();
    {
        // Groups first: dropped after the servers, when they are empty.
        let mut groups = Vec::new();
        let mut servers = Vec::new();
        for kind in &kinds {
            let server = kind.start(&work, &pki, &upstream, &meter.cpus)?;
            groups.push(CpuGroup::holding(&server.name, &server.pids())?);
            servers.push(server);
        }
        let budget = format!("keep-alive requests/s at {BUDGET_PERCENT}% of a CPU");
        for round in 1..=plan.rounds {
            let each = |what: &str, unit: &str| Each {
                meter: &meter,
                servers: &servers,
                round,
                what: what.to_owned(),
                unit: unit.to_owned(),
            };
            each("full handshakes/s", "handshake").sample(&mut handshakes, |_, server| {
                meter.sample(server, || clients.handshake_rate(server.port, seconds))
            })?;
            each("keep-alive requests/s", "request").sample(&mut keepalive, |_, server| {
                meter.sample(server, || clients.keepalive_rate(server.port, seconds))
            })?;
            each(&budget, "request").sample(&mut budgeted, |i, server| {
                groups[i].limit(Some(BUDGET_PERCENT))?;
                let sample = meter.sample(server, || clients.keepalive_rate(server.port, seconds));
                groups[i].limit(None)?;
                sample
            })?;
        }
    }

    // After the throughput rounds, so that none of them shares the host
    // with valgrind; one server at a time.
    let started = Instant::now();
    let instructions = instructions_row(&kinds[..2], &work, &pki, &upstream, &meter, &plan)?;
    println!(
        "callgrind: {:.0} s for both servers",
        started.elapsed().as_secs_f64()
    );

    // Memory: one server at a time, each fresh.
    let mut memory = Vec::new();
    for kind in &kinds[..2] {
        let server = kind.start(&work, &pki, &upstream, &meter.cpus)?;
        let idle = server.memory()?;
        let holder = Holder::open(&clients, server.port, idle_connections)?;
        thread::sleep(Duration::from_secs(2));
        let loaded = server.memory()?;
        println!(
            "{}: {} connections held; RSS {:.1} MiB (PSS {:.1} MiB), at start {:.1} MiB",
            server.name,
            holder.held,
            mib(loaded.rss_kib),
            mib(loaded.pss_kib),
            mib(idle.rss_kib)
        );
        if holder.held < idle_connections {
            bail!(
                "{}: only {} of {idle_connections} connections opened; see its log in {}",
                server.name,
                holder.held,
                work.display()
            );
        }
        memory.push((idle, loaded));
        drop(holder);
        drop(server);
    }

    let table = stats::report(
        &plan,
        &Figures {
            kinds: &kinds,
            cpus: &meter.cpus,
            handshakes: &handshakes,
            keepalive: &keepalive,
            budgeted: &budgeted,
            instructions: &instructions,
            memory: &memory,
        },
    );
    println!("\n{table}");
    let results = work.join("results.md");
    fs::write(&results, &table).with_context(|| format!("cannot write {}", results.display()))?;
    println!("(also in {})", results.display());
    Ok(())
}

/// One throughput figure's samples in one round: every server in turn,
/// each sample printed as `what` per `unit` and kept with the server's.
struct Each<'a> {
    meter: &'a Meter,
    servers: &'a [Server],
    round: usize,
    what: String,
    unit: String,
}

impl Each<'_> {
    fn sample(
        &self,
        samples: &mut [Vec<Sample>],
        mut take: impl FnMut(usize, &Server) -> anyhow::Result<Sample>,
    ) -> anyhow::Result<()> {
        for (i, server) in self.servers.iter().enumerate() {
            let sample = take(i, server)?;
            println!(
                "round {}: {} {}: {}",
                self.round,
                server.name,
                self.what,
                sample.line(&self.meter.cpus, &self.unit)
            );
            samples[i].push(sample);
        }
        Ok(())
    }
}

fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_owned()
}

fn build(extra: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["build", "--release", "--package", "shield-userspace"];
    args.extend(extra);
    shell::cargo(&args)
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}
