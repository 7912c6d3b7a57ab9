//! `cargo xtask bench tls`: shield's mTLS terminator against its peers,
//! nginx (Debian nginx-light) and haproxy (Debian haproxy, one thread), in
//! one run, on loopback only.
//!
//! All get the same ECDSA P-256 certificate, key and client CA, require a
//! client certificate, offer h2 and HTTP/1.1, and proxy to the same
//! upstream (a separate one-worker nginx returning a fixed 200) over pooled
//! HTTP/1.1 connections. The figures, each side by side:
//!
//! - full handshakes per second: every connection is a fresh TLS 1.3
//!   handshake with a client certificate and one `Connection: close`
//!   request; the client never resumes (shield-userspace's `tls_load`
//!   example, because oha keeps a session cache and would resume);
//! - HTTP/1.1 keep-alive requests per second on 64 connections, free and
//!   with the server held to half a CPU (below), and h2 requests per second
//!   at 8 connections x 25 streams and 2 x 200 (what Cloudflare's edge
//!   multiplexes onto an origin connection): oha with the client
//!   certificate;
//! - user-space instructions per request, HTTP/1.1 and h2, counted by
//!   valgrind's callgrind (the peers and the aws-lc-rs build): each server
//!   alone under callgrind, nginx as one process (`master_process off`) so
//!   that the process valgrind runs does the work, warm-up requests, then
//!   the counters zeroed, the counted requests, and the counters dumped.
//!   On this shared VM wall-clock and CPU-time figures vary by ±30%
//!   between identical runs, too much to tell two servers within 10% of
//!   each other apart; the count repeats within about 0.3% (four runs
//!   here: nginx's identical, shield's within 0.3%). It is
//!   user-space only: the kernel's work (the TCP stack and system calls,
//!   about half of a keep-alive request's CPU here) is not in it, so the
//!   server CPU rows stay the figures for the whole cost;
//! - RSS (and PSS) with 10,000 idle mTLS connections open, each having
//!   served one request, over HTTP/1.1 and then over h2: shield's process
//!   against nginx's master plus workers and haproxy's one process.
//!
//! shield is built twice, with rustls' aws-lc-rs provider (the default) and
//! with `--features ring`, so the provider choice in `tls::provider` stays
//! a measured one.
//!
//! The server under test runs alone on the first CPU this process may use
//! (CPU 0 on most hosts); the load clients (`tls_load`, oha) and the
//! upstream nginx run on the others. Sharing every CPU, the keep-alive
//! figure mostly measured oha. Pinned to one CPU, shield sees
//! `available_parallelism() == 1` and runs one connection worker, haproxy
//! runs its one thread, and nginx keeps its `worker_processes 2`, both on
//! that CPU. So the bench needs at least 2 CPUs.
//!
//! With 2 CPUs the keep-alive figure can be capped by the load side (oha
//! and the upstream nginx share one CPU) rather than by the server, which
//! the busy shares show. So each round also takes a budgeted keep-alive
//! sample: the server under test held to half a CPU by a cgroup CPU quota
//! (the same for each; nginx's master and workers share it), which makes
//! the server the bottleneck whatever the client costs. The h2 rows are
//! capped the same way, so the first h2 load is budgeted too.
//!
//! Each throughput sample also reports the server's CPU time per completed
//! request or handshake (its process and child processes, from /proc), which
//! does not depend on how fast the client is, and the busy fraction of the
//! server's CPU and of the load CPUs (from /proc/stat): load CPUs near 100%
//! mean the client, not the server, capped the rate.
//!
//! `SHIELD_BENCH_QUICK=1` runs every step once and short ([`params::Plan`]),
//! to check that the bench still runs end to end; its figures mean nothing.
//! `SHIELD_BENCH_INSTRUCTIONS_ONLY=1` measures only the callgrind rows,
//! which a loaded host does not disturb; `SHIELD_BENCH_MEMORY_ONLY=1` only
//! the idle-memory rows; `SHIELD_BENCH_SHIELD_BIN=PATH` measures
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
    load::{Clients, Holder, Keepalive},
    params::{Plan, BUDGET_PERCENT, CALLGRIND_LOADS, CONCURRENCY, H2_LOADS, START_WAIT},
    procfs::Memory,
    sampling::{Meter, Sample},
    servers::{free_port, nofile_limit, pinned, Kind, Server},
    stats::{mib, Against, Figures, Idle, Target, Throughput},
};
use crate::shell;

/// `SHIELD_BENCH_INSTRUCTIONS_ONLY=1`: only the callgrind row.
const INSTRUCTIONS_ONLY: &str = "SHIELD_BENCH_INSTRUCTIONS_ONLY";
/// `SHIELD_BENCH_MEMORY_ONLY=1`: only the idle-memory rows, a few minutes.
const MEMORY_ONLY: &str = "SHIELD_BENCH_MEMORY_ONLY";
/// `SHIELD_BENCH_SHIELD_BIN=PATH`: measure this shield binary as the
/// default (aws-lc-rs) build.
const SHIELD_BIN: &str = "SHIELD_BENCH_SHIELD_BIN";

/// User-space instructions per request of each load and kind (`None`
/// for the kinds not counted), one server at a time under callgrind;
/// printed as they come.
fn instructions_rows(
    kinds: &[Kind],
    work: &Path,
    pki: &Pki,
    upstream: &str,
    meter: &Meter,
    plan: &Plan,
) -> anyhow::Result<Vec<(String, Vec<Option<f64>>)>> {
    let mut rows = Vec::new();
    for load in CALLGRIND_LOADS {
        let mut row = Vec::new();
        for kind in kinds {
            if !counted(*kind) {
                row.push(None);
                continue;
            }
            let per_request =
                callgrind::per_request(*kind, load, work, pki, upstream, &meter.cpus, plan)?;
            println!(
                "{}: {per_request:.0} user-space instructions per request, {} (callgrind)",
                kind.name(),
                load.label()
            );
            row.push(Some(per_request));
        }
        rows.push((load.label(), row));
    }
    Ok(rows)
}

/// The peers and shield's default build: the ring build is measured for
/// throughput only.
fn counted(kind: Kind) -> bool {
    kind != Kind::Shield("ring")
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

    let kinds = [
        Kind::Nginx,
        Kind::Haproxy,
        Kind::Shield("aws-lc-rs"),
        Kind::Shield("ring"),
        Kind::ShieldAccessLog,
    ];
    if set(INSTRUCTIONS_ONLY) {
        // The deterministic rows alone, for a change that must not cost
        // speed: they do not depend on what else the host is doing.
        instructions_rows(&kinds, &work, &pki, &upstream, &meter, &plan)?;
        return Ok(());
    }
    let memory_only = set(MEMORY_ONLY);
    let load_cpus = meter.cpus.load_list();
    let clients = Clients {
        tls_load: &load,
        pki: &pki,
        cpus: &load_cpus,
    };
    let seconds = plan.seconds;
    let h1 = Keepalive::H1 {
        connections: CONCURRENCY,
    };
    // The targets of the h1 rows were set against nginx alone; the h2
    // rows' against the better of nginx and haproxy.
    let mut handshakes = Throughput::new(
        format!("full handshakes/s, {CONCURRENCY} at once"),
        "handshake",
        &kinds,
        Some(Target::AtLeast(2.0, Against::Nginx)),
    );
    let mut keepalive = Throughput::new(
        format!("requests/s, {}", h1.label()),
        "request",
        &kinds,
        Some(Target::AtLeast(1.2, Against::Nginx)),
    );
    let mut budgeted = Throughput::new(
        format!(
            "requests/s, {}, server held to {BUDGET_PERCENT}% of a CPU",
            h1.label()
        ),
        "request",
        &kinds,
        Some(Target::AtLeast(1.2, Against::Nginx)),
    );
    let mut h2: Vec<Throughput> = H2_LOADS
        .iter()
        .map(|load| {
            Throughput::new(
                format!("requests/s, {}", load.label()),
                "request",
                &kinds,
                Some(Target::AtLeast(1.5, Against::BetterPeer)),
            )
        })
        .collect();
    // On a 2-CPU host the h2 rows are capped by the load CPU too (oha and
    // the upstream at 99-100% for every server), so the first h2 load is
    // also taken with the server held to the same budget as the h1 row.
    let h2_budgeted_load = H2_LOADS[0];
    let mut h2_budgeted = Throughput::new(
        format!(
            "requests/s, {}, server held to {BUDGET_PERCENT}% of a CPU",
            h2_budgeted_load.label()
        ),
        "request",
        &kinds,
        Some(Target::AtLeast(1.5, Against::BetterPeer)),
    );
    if !memory_only {
        // Groups first: dropped after the servers, when they are empty.
        let mut groups = Vec::new();
        let mut servers = Vec::new();
        for kind in &kinds {
            let server = kind.start(&work, &pki, &upstream, &meter.cpus)?;
            groups.push(CpuGroup::holding(&server.name, &server.pids())?);
            servers.push(server);
        }
        for round in 1..=plan.rounds {
            let each = Each {
                meter: &meter,
                servers: &servers,
                round,
            };
            each.sample(&mut handshakes, |_, server| {
                meter.sample(server, || clients.handshake_rate(server.port, seconds))
            })?;
            each.sample(&mut keepalive, |_, server| {
                meter.sample(server, || clients.keepalive_rate(server.port, seconds, h1))
            })?;
            each.sample(&mut budgeted, |i, server| {
                within_budget(&groups[i], || {
                    meter.sample(server, || clients.keepalive_rate(server.port, seconds, h1))
                })
            })?;
            for (figure, load) in h2.iter_mut().zip(H2_LOADS) {
                each.sample(figure, |_, server| {
                    meter.sample(server, || {
                        clients.keepalive_rate(server.port, seconds, load)
                    })
                })?;
            }
            each.sample(&mut h2_budgeted, |i, server| {
                within_budget(&groups[i], || {
                    meter.sample(server, || {
                        clients.keepalive_rate(server.port, seconds, h2_budgeted_load)
                    })
                })
            })?;
        }
    }

    // After the throughput rounds, so that none of them shares the host
    // with valgrind; one server at a time.
    let instructions = if memory_only {
        Vec::new()
    } else {
        let started = Instant::now();
        let rows = instructions_rows(&kinds, &work, &pki, &upstream, &meter, &plan)?;
        println!(
            "callgrind: {:.0} s for every server",
            started.elapsed().as_secs_f64()
        );
        rows
    };

    // Memory: one server at a time, each fresh, HTTP/1.1 then h2.
    let mut idle = Vec::new();
    for (what, http2) in [("mTLS", false), ("h2", true)] {
        let mut memory = Vec::new();
        for kind in &kinds {
            if !counted(*kind) {
                memory.push(None);
                continue;
            }
            memory.push(Some(held_memory(
                *kind,
                &work,
                &pki,
                &upstream,
                &meter,
                &clients,
                (idle_connections, http2),
            )?));
        }
        // h1's target was set against nginx; h2's is per connection.
        let (target, per_connection_target) = if http2 {
            (None, Some(Target::AtMost(0.5, Against::Nginx)))
        } else {
            (Some(Target::AtMost(1.0, Against::Nginx)), None)
        };
        idle.push(Idle {
            what,
            connections: idle_connections,
            memory,
            target,
            per_connection_target,
        });
    }

    let mut throughput = vec![handshakes, keepalive, budgeted];
    throughput.extend(h2);
    throughput.push(h2_budgeted);
    if memory_only {
        throughput.clear();
    }
    let table = stats::report(
        &plan,
        &Figures {
            kinds: &kinds,
            cpus: &meter.cpus,
            throughput: &throughput,
            instructions: &instructions,
            idle: &idle,
        },
    );
    println!("\n{table}");
    let results = work.join("results.md");
    fs::write(&results, &table).with_context(|| format!("cannot write {}", results.display()))?;
    println!("(also in {})", results.display());
    Ok(())
}

/// `kind` alone and fresh with `count` idle connections open, each having
/// served one request (over h2 with `http2`): its memory at start and then.
fn held_memory(
    kind: Kind,
    work: &Path,
    pki: &Pki,
    upstream: &str,
    meter: &Meter,
    clients: &Clients,
    (count, http2): (usize, bool),
) -> anyhow::Result<(Memory, Memory)> {
    let server = kind.start(work, pki, upstream, &meter.cpus)?;
    let start = server.memory()?;
    let holder = Holder::open(clients, server.port, count, http2)?;
    thread::sleep(Duration::from_secs(2));
    let held = server.memory()?;
    let protocol = if http2 { "h2" } else { "HTTP/1.1" };
    println!(
        "{}: {} {protocol} connections held; RSS {:.1} MiB (PSS {:.1} MiB), at start {:.1} MiB",
        server.name,
        holder.held,
        mib(held.rss_kib),
        mib(held.pss_kib),
        mib(start.rss_kib)
    );
    if holder.held < count {
        bail!(
            "{}: only {} of {count} {protocol} connections opened; see its log in {}",
            server.name,
            holder.held,
            work.display()
        );
    }
    Ok((start, held))
}

/// A sample taken with the server's group held to [`BUDGET_PERCENT`] of a
/// CPU, and released after.
fn within_budget(
    group: &CpuGroup,
    take: impl FnOnce() -> anyhow::Result<Sample>,
) -> anyhow::Result<Sample> {
    group.limit(Some(BUDGET_PERCENT))?;
    let sample = take();
    group.limit(None)?;
    sample
}

/// One round of throughput samples: every server in turn, each sample
/// printed and kept with the server's.
struct Each<'a> {
    meter: &'a Meter,
    servers: &'a [Server],
    round: usize,
}

impl Each<'_> {
    fn sample(
        &self,
        figure: &mut Throughput,
        mut take: impl FnMut(usize, &Server) -> anyhow::Result<Sample>,
    ) -> anyhow::Result<()> {
        for (i, server) in self.servers.iter().enumerate() {
            let sample = take(i, server)?;
            println!(
                "round {}: {} {}: {}",
                self.round,
                server.name,
                figure.what,
                sample.line(&self.meter.cpus, figure.unit)
            );
            figure.samples[i].push(sample);
        }
        Ok(())
    }
}

/// An environment switch: set when it is `1`.
fn set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v == "1")
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
