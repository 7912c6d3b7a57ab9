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

use std::{
    collections::BTreeMap,
    ffi::{OsStr, OsString},
    fs,
    io::{BufRead as _, BufReader},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    pki::{self, Usage},
    shell,
};

/// oha 1.16 builds with rustc 1.95 and speaks client certificates.
const OHA_VERSION: &str = "1.16.0";
/// Interleaved rounds per throughput figure; the median is reported.
const ROUNDS: usize = 5;
/// Seconds per throughput sample.
const SECONDS: u32 = 8;
/// The budgeted keep-alive samples' CPU quota for the server under test,
/// in percent of one CPU.
const BUDGET_PERCENT: u32 = 50;
/// Connections in flight: enough to keep the server's CPU busy.
const CONCURRENCY: usize = 64;
const IDLE_CONNECTIONS: usize = 10_000;
/// SNI, Host and certificate name; resolves to loopback without any setup.
const NAME: &str = "localhost";
/// Descriptors wanted for the servers and clients (10,000 sockets and
/// more); less when the hard limit is lower (it cannot be raised in every
/// container).
const NOFILE: u64 = 65_536;
/// How long a server may take to listen, natively and under valgrind,
/// which translates each code path before it first runs it: shield
/// listens after about 1 s under callgrind here, so 60 s leaves room for a
/// busy host.
const START_WAIT: Duration = Duration::from_secs(20);
const CALLGRIND_START_WAIT: Duration = Duration::from_secs(60);
/// Keep-alive requests before the counters are zeroed (connections made,
/// upstream pool filled, lazily built state in place) and counted after.
const CALLGRIND_WARMUP: usize = 400;
const CALLGRIND_REQUESTS: usize = 4_000;
/// oha's connections under callgrind: a few, since valgrind runs the server
/// at a small fraction of its speed and 64 would only queue.
const CALLGRIND_CONCURRENCY: usize = 4;

/// nginx-light from Debian, oha from crates.io; skipped when present.
pub fn bench_tools() -> anyhow::Result<()> {
    if !shell::succeeds("nginx", &["-v"]) {
        apt_install("nginx-light")?;
    }
    if !shell::succeeds("valgrind", &["--version"]) {
        apt_install("valgrind")?;
    }
    if !shell::succeeds("openssl", &["version"]) {
        bail!("openssl is missing (`cargo xtask setup` installs it)");
    }
    let oha_ok =
        shell::output("oha", &["--version"]).is_ok_and(|version| version.contains(OHA_VERSION));
    if !oha_ok {
        println!("bench: building oha {OHA_VERSION} (a few minutes)");
        shell::cargo(&["install", "oha", "--version", OHA_VERSION, "--locked"])
            .context("cargo install oha failed")?;
    }
    Ok(())
}

/// One Debian package, with its dependencies but not its recommendations.
fn apt_install(package: &str) -> anyhow::Result<()> {
    if !shell::is_root() {
        bail!("{package} is missing: run as root (it is installed with apt-get)");
    }
    println!("bench: installing {package}");
    std::env::set_var("DEBIAN_FRONTEND", "noninteractive");
    shell::status("apt-get", &["update", "-q"])?;
    shell::status(
        "apt-get",
        &["install", "-y", "-q", "--no-install-recommends", package],
    )
    .with_context(|| format!("cannot install {package}; install it by hand and rerun"))
}

pub fn run() -> anyhow::Result<()> {
    // Before the builds: a host too small fails in seconds, not minutes.
    let meter = Meter::new()?;
    bench_tools()?;
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
    copy(&release.join("shield"), &work.join("shield-aws-lc-rs"))?;
    let load = release.join("examples").join("tls_load");

    let nofile = nofile_limit();
    if nofile < IDLE_CONNECTIONS as u64 + 500 {
        bail!("the descriptor hard limit ({nofile}) is too low for {IDLE_CONNECTIONS} connections; raise it (ulimit -Hn)");
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
            &nginx_args(&work, "upstream", &upstream_conf(&work, upstream_port))?,
        ),
        upstream_port,
        START_WAIT,
    )?;
    let upstream = format!("http://127.0.0.1:{upstream_port}");

    let kinds = [Kind::Nginx, Kind::Shield("aws-lc-rs"), Kind::Shield("ring")];
    let load_cpus = meter.cpus.load_list();
    let mut handshakes: Vec<Vec<Sample>> = kinds.iter().map(|_| Vec::new()).collect();
    let mut keepalive: Vec<Vec<Sample>> = kinds.iter().map(|_| Vec::new()).collect();
    let mut budgeted: Vec<Vec<Sample>> = kinds.iter().map(|_| Vec::new()).collect();
    {
        // Groups first: dropped after the servers, when they are empty.
        let mut groups = Vec::new();
        let mut servers = Vec::new();
        for kind in &kinds {
            let server = kind.start(&work, &pki, &upstream, &meter.cpus)?;
            groups.push(CpuGroup::holding(&server)?);
            servers.push(server);
        }
        for round in 1..=ROUNDS {
            for (i, server) in servers.iter().enumerate() {
                let sample = meter.sample(server, || {
                    handshake_rate(&load, &pki, server.port, &load_cpus)
                })?;
                println!(
                    "round {round}: {} full handshakes/s: {}",
                    server.name,
                    sample.line(&meter.cpus, "handshake")
                );
                handshakes[i].push(sample);
            }
            for (i, server) in servers.iter().enumerate() {
                let sample =
                    meter.sample(server, || keepalive_rate(&pki, server.port, &load_cpus))?;
                println!(
                    "round {round}: {} keep-alive requests/s: {}",
                    server.name,
                    sample.line(&meter.cpus, "request")
                );
                keepalive[i].push(sample);
            }
            for (i, server) in servers.iter().enumerate() {
                groups[i].limit(Some(BUDGET_PERCENT))?;
                let sample = meter.sample(server, || keepalive_rate(&pki, server.port, &load_cpus));
                groups[i].limit(None)?;
                let sample = sample?;
                println!(
                    "round {round}: {} keep-alive requests/s at {BUDGET_PERCENT}% of a CPU: {}",
                    server.name,
                    sample.line(&meter.cpus, "request")
                );
                budgeted[i].push(sample);
            }
        }
    }

    // After the throughput rounds, so that none of them shares the host
    // with valgrind; one server at a time.
    let started = Instant::now();
    let mut instructions = Vec::new();
    for kind in &kinds[..2] {
        let per_request = callgrind(*kind, &work, &pki, &upstream, &meter.cpus)?;
        println!(
            "{}: {per_request:.0} user-space instructions per keep-alive request (callgrind)",
            kind.name()
        );
        instructions.push(per_request);
    }
    println!(
        "callgrind: {:.0} s for both servers",
        started.elapsed().as_secs_f64()
    );

    // Memory: one server at a time, each fresh.
    let mut memory = Vec::new();
    for kind in &kinds[..2] {
        let server = kind.start(&work, &pki, &upstream, &meter.cpus)?;
        let idle = server.memory()?;
        let holder = Holder::open(&load, &pki, server.port, &load_cpus)?;
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
        if holder.held < IDLE_CONNECTIONS {
            bail!(
                "{}: only {} of {IDLE_CONNECTIONS} connections opened; see its log in {}",
                server.name,
                holder.held,
                work.display()
            );
        }
        memory.push((idle, loaded));
        drop(holder);
        drop(server);
    }

    let table = report(
        &kinds,
        &meter.cpus,
        &handshakes,
        &keepalive,
        &budgeted,
        &instructions,
        &memory,
    );
    println!("\n{table}");
    let results = work.join("results.md");
    fs::write(&results, &table).with_context(|| format!("cannot write {}", results.display()))?;
    println!("(also in {})", results.display());
    Ok(())
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

/// Where each side runs: the server under test alone on one CPU, so that
/// its rate is not capped by a client competing for that CPU; the load
/// clients and the upstream on the rest.
struct Cpus {
    server: u32,
    load: Vec<u32>,
}

impl Cpus {
    /// The CPUs this process may run on (a container's cpuset can allow
    /// fewer than the host has): the first for the server, the rest for
    /// the load.
    fn allowed() -> anyhow::Result<Cpus> {
        let status =
            fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
        let list = status
            .lines()
            .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
            .map(str::trim)
            .context("/proc/self/status has no Cpus_allowed_list; the bench needs Linux")?;
        let cpus = cpu_list(list).with_context(|| {
            format!("cannot parse Cpus_allowed_list {list:?} in /proc/self/status")
        })?;
        match cpus.split_first() {
            Some((&server, load)) if !load.is_empty() => Ok(Cpus {
                server,
                load: load.to_vec(),
            }),
            _ => bail!(
                "the TLS bench needs at least 2 CPUs (the server alone on one, the load clients on \
                 the rest) but this process may run only on CPU {list}; run it on a host or \
                 container with 2 or more"
            ),
        }
    }

    /// The load CPUs as a taskset list.
    fn load_list(&self) -> String {
        let cpus: Vec<String> = self.load.iter().map(u32::to_string).collect();
        cpus.join(",")
    }
}

/// The kernel's CPU list format: `0-3,6` is [0, 1, 2, 3, 6].
fn cpu_list(list: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((first, last)) => {
                let first: u32 = first.trim().parse().ok()?;
                let last: u32 = last.trim().parse().ok()?;
                cpus.extend(first..=last);
            }
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    Some(cpus)
}

/// What each throughput sample measures besides the rate.
struct Meter {
    cpus: Cpus,
    /// Clock ticks per second, the unit of /proc's CPU times.
    ticks_per_second: f64,
}

/// One throughput sample.
struct Sample {
    /// Completed requests (or handshakes) per second.
    rate: f64,
    /// The server's CPU time per completed request, µs.
    cpu_us: f64,
    /// Busy fraction, 0 to 1, of the server's CPU and of the load CPUs.
    server_busy: f64,
    load_busy: f64,
}

impl Meter {
    fn new() -> anyhow::Result<Meter> {
        // USER_HZ is 100 on the usual Linux builds; getconf confirms it.
        let ticks_per_second = shell::output("getconf", &["CLK_TCK"])
            .ok()
            .and_then(|ticks| ticks.trim().parse::<f64>().ok())
            .filter(|ticks| *ticks > 0.0)
            .unwrap_or(100.0);
        Ok(Meter {
            cpus: Cpus::allowed()?,
            ticks_per_second,
        })
    }

    /// Runs `load`, which returns its rate and how many requests completed,
    /// and reads the server's CPU time and every CPU's busy time just
    /// before and after it.
    fn sample(
        &self,
        server: &Server,
        load: impl FnOnce() -> anyhow::Result<(f64, f64)>,
    ) -> anyhow::Result<Sample> {
        let (server_before, cpus_before) = (server.cpu_ticks()?, cpu_times()?);
        let (rate, count) = load()?;
        let (server_after, cpus_after) = (server.cpu_ticks()?, cpu_times()?);
        if count < 1.0 {
            bail!(
                "{}: no request completed in {SECONDS} s; see its log in target/bench-tls",
                server.name
            );
        }
        let seconds = server_after.saturating_sub(server_before) as f64 / self.ticks_per_second;
        Ok(Sample {
            rate,
            cpu_us: seconds * 1e6 / count,
            server_busy: busy_fraction(&cpus_before, &cpus_after, &[self.cpus.server]),
            load_busy: busy_fraction(&cpus_before, &cpus_after, &self.cpus.load),
        })
    }
}

impl Sample {
    /// The rate, then the server's CPU per `unit` and both sides' busy share.
    fn line(&self, cpus: &Cpus, unit: &str) -> String {
        format!(
            "{:.0}; server CPU {:.1} µs/{unit}; busy: server CPU {} {:.0}%, load CPUs {} {:.0}%",
            self.rate,
            self.cpu_us,
            cpus.server,
            self.server_busy * 100.0,
            cpus.load_list(),
            self.load_busy * 100.0
        )
    }
}

/// A cgroup holding one server's processes, whose CPU quota the budgeted
/// samples set: cgroup v2 (`cpu.max`) where the unified hierarchy has the
/// cpu controller, else v1's cpu hierarchy (`cpu.cfs_quota_us`).
struct CpuGroup {
    dir: PathBuf,
    v2: bool,
}

impl CpuGroup {
    fn holding(server: &Server) -> anyhow::Result<CpuGroup> {
        let name = format!("shield-bench-{}-{}", server.name, std::process::id());
        let unified = Path::new("/sys/fs/cgroup");
        let v2 = fs::read_to_string(unified.join("cgroup.controllers"))
            .is_ok_and(|controllers| controllers.split_whitespace().any(|c| c == "cpu"));
        let dir = if v2 {
            // Children get the cpu controller only when the parent hands it on.
            let _ = fs::write(unified.join("cgroup.subtree_control"), "+cpu");
            unified.join(&name)
        } else {
            unified.join("cpu").join(&name)
        };
        fs::create_dir_all(&dir).with_context(|| {
            format!(
                "cannot create the cgroup {} for the budgeted keep-alive samples; the bench needs root \
                 and a cgroup cpu controller (v2 cpu.max or v1 cpu.cfs_quota_us)",
                dir.display()
            )
        })?;
        let group = CpuGroup { dir, v2 };
        let mut pids = vec![server.child.id()];
        pids.extend(children(server.child.id()));
        for pid in pids {
            group.write("cgroup.procs", &pid.to_string())?;
        }
        Ok(group)
    }

    /// `Some(percent)` of one CPU, or no limit.
    fn limit(&self, percent: Option<u32>) -> anyhow::Result<()> {
        const PERIOD_US: u32 = 100_000;
        let quota = percent.map(|p| p * PERIOD_US / 100);
        if self.v2 {
            let quota = quota.map_or("max".to_owned(), |q| q.to_string());
            self.write("cpu.max", &format!("{quota} {PERIOD_US}"))
        } else {
            self.write("cpu.cfs_period_us", &PERIOD_US.to_string())?;
            self.write(
                "cpu.cfs_quota_us",
                &quota.map_or("-1".to_owned(), |q| q.to_string()),
            )
        }
    }

    fn write(&self, file: &str, value: &str) -> anyhow::Result<()> {
        let path = self.dir.join(file);
        fs::write(&path, value)
            .with_context(|| format!("cannot write {value:?} to {}", path.display()))
    }
}

impl Drop for CpuGroup {
    /// The servers are stopped first; an emptied group can be removed.
    fn drop(&mut self) {
        let _ = self.limit(None);
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Clock ticks one CPU spent busy and idle since boot.
#[derive(Clone, Copy, Default)]
struct CpuTime {
    busy: u64,
    idle: u64,
}

/// Every CPU's times from /proc/stat, by CPU number.
fn cpu_times() -> anyhow::Result<BTreeMap<u32, CpuTime>> {
    let stat = fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let mut times = BTreeMap::new();
    for line in stat.lines() {
        // `cpu` alone is the sum of all; `cpuN` is CPU N.
        let Some((cpu, rest)) = line.strip_prefix("cpu").and_then(|l| l.split_once(' ')) else {
            continue;
        };
        let Ok(cpu) = cpu.parse::<u32>() else {
            continue;
        };
        let ticks: Vec<u64> = rest
            .split_whitespace()
            .map(|n| n.parse().unwrap_or(0))
            .collect();
        // user nice system idle iowait irq softirq, then steal (time a
        // hypervisor took away, neither ours nor idle) and guest (already
        // in user), both left out.
        if let [user, nice, system, idle, iowait, irq, softirq, ..] = ticks[..] {
            let busy = user + nice + system + irq + softirq;
            times.insert(
                cpu,
                CpuTime {
                    busy,
                    idle: idle + iowait,
                },
            );
        }
    }
    if times.is_empty() {
        bail!("no per-CPU lines in /proc/stat");
    }
    Ok(times)
}

/// The busy share of `cpus`' time between two readings, 0 to 1.
fn busy_fraction(
    before: &BTreeMap<u32, CpuTime>,
    after: &BTreeMap<u32, CpuTime>,
    cpus: &[u32],
) -> f64 {
    let (mut busy, mut idle) = (0, 0);
    for cpu in cpus {
        let was = before.get(cpu).copied().unwrap_or_default();
        let is = after.get(cpu).copied().unwrap_or_default();
        busy += is.busy.saturating_sub(was.busy);
        idle += is.idle.saturating_sub(was.idle);
    }
    busy as f64 / (busy + idle).max(1) as f64
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// A CA, a server leaf for `localhost`, a client leaf; all ECDSA P-256.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn make(dir: &Path) -> anyhow::Result<Pki> {
        const DAYS: u32 = 2;
        let ca = pki::ca(dir, "ca", "shield bench CA", DAYS)?;
        let server = pki::leaf(dir, "server", NAME, &ca, Usage::Server(NAME), DAYS)?;
        let client = pki::leaf(
            dir,
            "client",
            "shield bench client",
            &ca,
            Usage::Client,
            DAYS,
        )?;
        Ok(Pki {
            ca: ca.cert,
            server_cert: server.cert,
            server_key: server.key,
            client_cert: client.cert,
            client_key: client.key,
        })
    }
}

/// Paths here are made by this file under the target directory; a non-UTF-8
/// one would come from the user's CARGO_TARGET_DIR and shows as "?".
fn path_str(path: &Path) -> &str {
    path.to_str().unwrap_or("?")
}

fn upstream_conf(work: &Path, port: u16) -> String {
    format!(
        "worker_processes 1;
pid {work}/upstream.pid;
error_log {work}/upstream-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        keepalive_requests 1000000;
        location / {{ return 200 \"ok\\n\"; }}
    }}
}}
",
        work = work.display()
    )
}

/// How the nginx under test runs.
#[derive(Clone, Copy)]
enum Processes {
    /// A master and 2 workers, as deployed.
    Workers,
    /// One process that serves itself (`master_process off`), so that under
    /// valgrind the process counted is the one doing the work.
    One,
}

/// The nginx under test: the same files, protocol versions (nginx 1.22
/// leaves TLS 1.3 out unless told), timeouts and upstream pool as shield.
/// No access log, since shield writes none per request.
fn nginx_conf(work: &Path, pki: &Pki, port: u16, upstream: &str, processes: Processes) -> String {
    let processes = match processes {
        Processes::Workers => "worker_processes 2;",
        Processes::One => "worker_processes 1;\nmaster_process off;",
    };
    format!(
        "{processes}
worker_rlimit_nofile {nofile};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 16000; }}
http {{
    access_log off;
    upstream app {{
        server {upstream_addr};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port} ssl http2 backlog=4096;
        server_name {NAME};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        client_header_timeout 10s;
        keepalive_timeout 900s;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
",
        work = work.display(),
        nofile = nofile_limit(),
        upstream_addr = upstream.trim_start_matches("http://"),
        cert = pki.server_cert.display(),
        key = pki.server_key.display(),
        ca = pki.ca.display(),
    )
}

fn shield_conf(work: &Path, pki: &Pki, port: u16, upstream: &str) -> anyhow::Result<String> {
    Ok(format!(
        "[ranges]
refresh = \"off\"
cache = \"{work}/ranges.json\"

[metrics]
listen = \"127.0.0.1:{metrics}\"

[http]
action = \"off\"

[[site]]
server_names = [\"{NAME}\"]
listen = \"127.0.0.1:{port}\"
cert = \"{cert}\"
key = \"{key}\"
client_ca = [\"{ca}\"]
upstream = \"{upstream}\"
max_connections = 20000
",
        work = work.display(),
        metrics = free_port()?,
        cert = pki.server_cert.display(),
        key = pki.server_key.display(),
        ca = pki.ca.display(),
    ))
}

fn nginx_args(work: &Path, name: &str, conf: &str) -> anyhow::Result<Vec<String>> {
    let path = work.join(format!("{name}.conf"));
    fs::write(&path, conf).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(vec![
        "-p".into(),
        work.display().to_string(),
        "-e".into(),
        work.join(format!("{name}-error.log")).display().to_string(),
        "-c".into(),
        path.display().to_string(),
        "-g".into(),
        "daemon off;".into(),
    ])
}

#[derive(Clone, Copy)]
enum Kind {
    Nginx,
    /// shield built with this rustls provider.
    Shield(&'static str),
}

impl Kind {
    /// The name of its files in the work directory (and of shield's binary).
    fn name(self) -> String {
        match self {
            Kind::Nginx => "nginx".to_owned(),
            Kind::Shield(provider) => format!("shield-{provider}"),
        }
    }

    /// Started alone on the server's CPU.
    fn start(self, work: &Path, pki: &Pki, upstream: &str, cpus: &Cpus) -> anyhow::Result<Server> {
        let port = free_port()?;
        let name = self.name();
        let (program, args) =
            self.command_line(work, &name, pki, port, upstream, Processes::Workers)?;
        let mut command = pinned(&cpus.server.to_string(), program, &args);
        if let Kind::Shield(_) = self {
            command
                .env("SHIELD_LOG", "warn")
                .stderr(log_file(work, &name)?);
        }
        Server::start(&name, &mut command, port, START_WAIT)
    }

    /// The program and arguments that serve on `port`, with the config
    /// written to the work directory as `name`.
    fn command_line(
        self,
        work: &Path,
        name: &str,
        pki: &Pki,
        port: u16,
        upstream: &str,
        processes: Processes,
    ) -> anyhow::Result<(OsString, Vec<OsString>)> {
        match self {
            Kind::Nginx => {
                let conf = nginx_conf(work, pki, port, upstream, processes);
                let args = nginx_args(work, name, &conf)?;
                Ok((
                    "nginx".into(),
                    args.into_iter().map(OsString::from).collect(),
                ))
            }
            Kind::Shield(_) => {
                let conf = work.join(format!("{name}.toml"));
                fs::write(&conf, shield_conf(work, pki, port, upstream)?)
                    .with_context(|| format!("cannot write {}", conf.display()))?;
                let args = vec!["run".into(), "--config".into(), conf.into_os_string()];
                Ok((work.join(self.name()).into_os_string(), args))
            }
        }
    }
}

/// `name.log` in the work directory, for a server's stderr.
fn log_file(work: &Path, name: &str) -> anyhow::Result<fs::File> {
    let path = work.join(format!("{name}.log"));
    fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))
}

/// A server process, stopped (SIGTERM, then waited for) when dropped.
struct Server {
    name: String,
    child: Child,
    port: u16,
}

struct Memory {
    rss_kib: u64,
    pss_kib: u64,
}

impl Server {
    /// Waits up to `wait` for it to listen on `port`.
    fn start(
        name: &str,
        command: &mut Command,
        port: u16,
        wait: Duration,
    ) -> anyhow::Result<Server> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let mut server = Server {
            name: name.to_owned(),
            child,
            port,
        };
        let deadline = Instant::now() + wait;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("{name} exited at start ({status}); see its log in target/bench-tls");
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} does not listen on 127.0.0.1:{port} after {} s; see its log in \
                     target/bench-tls",
                    wait.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process and its children (nginx's workers), summed.
    fn memory(&self) -> anyhow::Result<Memory> {
        let mut pids = vec![self.child.id()];
        pids.extend(children(self.child.id()));
        let mut memory = Memory {
            rss_kib: 0,
            pss_kib: 0,
        };
        for pid in pids {
            let status = fs::read_to_string(format!("/proc/{pid}/status"))
                .with_context(|| format!("{}: cannot read /proc/{pid}/status", self.name))?;
            memory.rss_kib += kib_field(&status, "VmRSS:");
            let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
                .with_context(|| format!("{}: cannot read /proc/{pid}/smaps_rollup", self.name))?;
            memory.pss_kib += kib_field(&rollup, "Pss:");
        }
        Ok(memory)
    }

    /// User plus system CPU time, in clock ticks, of the process and its
    /// children (nginx's workers), summed. Each process's own stat line,
    /// which the kernel sums over all its threads, including any that
    /// exited since the last reading (a sum over /proc/PID/task/* would
    /// lose those).
    fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let mut pids = vec![self.child.id()];
        pids.extend(children(self.child.id()));
        let mut ticks = 0;
        for pid in pids {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| {
                format!(
                    "{}: cannot read /proc/{pid}/stat; did it exit? see its log in target/bench-tls",
                    self.name
                )
            })?;
            ticks += stat_cpu_ticks(&stat)
                .with_context(|| format!("{}: unexpected /proc/{pid}/stat {stat:?}", self.name))?;
        }
        Ok(ticks)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program args` on the CPUs in `cpus` (a taskset list, inherited by its
/// children: nginx's workers) with the soft descriptor limit raised to
/// [`nofile_limit`]. taskset and the shell in front both exec, so the pid
/// stays the program's, which [`Server::memory`] and
/// [`Server::cpu_ticks`] read with its children.
fn pinned<S: AsRef<OsStr>>(cpus: &str, program: impl AsRef<OsStr>, args: &[S]) -> Command {
    let mut command = Command::new("taskset");
    command
        .args(["-c", cpus, "sh", "-c"])
        .arg(format!(
            "ulimit -n {} && exec \"$0\" \"$@\"",
            nofile_limit()
        ))
        .arg(program)
        .args(args);
    command
}

/// [`NOFILE`], or the hard limit if that is lower.
fn nofile_limit() -> u64 {
    let hard = shell::output("sh", &["-c", "ulimit -Hn"]).unwrap_or_default();
    match hard.trim() {
        "unlimited" => NOFILE,
        n => n.parse().map_or(NOFILE, |n: u64| n.min(NOFILE)),
    }
}

fn children(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // pid (comm) state ppid ...; comm may hold spaces, so split
                // after its closing parenthesis.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// utime plus stime (fields 14 and 15) of a /proc/PID/stat line.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // As in `children`: split after comm; the rest starts at field 3.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn kib_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn load_args<'a>(pki: &'a Pki, addr: &'a str) -> Vec<&'a str> {
    vec![
        "--addr",
        addr,
        "--name",
        NAME,
        "--cert",
        path_str(&pki.client_cert),
        "--key",
        path_str(&pki.client_key),
    ]
}

/// `program args` on the load CPUs (`cpus`, a taskset list); its stdout.
fn pinned_output(cpus: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut pinned = vec!["-c", cpus, program];
    pinned.extend(args);
    shell::output("taskset", &pinned)
}

/// Full handshakes per second, and how many completed.
fn handshake_rate(load: &Path, pki: &Pki, port: u16, cpus: &str) -> anyhow::Result<(f64, f64)> {
    let addr = format!("127.0.0.1:{port}");
    let mut args = load_args(pki, &addr);
    let concurrency = CONCURRENCY.to_string();
    let seconds = SECONDS.to_string();
    args.extend([
        "handshakes",
        "--concurrency",
        &concurrency,
        "--seconds",
        &seconds,
    ]);
    let out = pinned_output(cpus, path_str(load), &args)?;
    let errors = number_after(&out, "errors=").unwrap_or(0.0);
    if errors > 0.0 {
        bail!("handshake client saw {errors} errors on port {port}: {out}");
    }
    let rate = number_after(&out, "per_second=");
    let count = number_after(&out, "handshakes_ok=");
    rate.zip(count)
        .with_context(|| format!("unexpected tls_load output {out:?}; rebuild its example"))
}

/// Keep-alive requests per second, and how many completed with a 200.
fn keepalive_rate(pki: &Pki, port: u16, cpus: &str) -> anyhow::Result<(f64, f64)> {
    let duration = format!("{SECONDS}s");
    let concurrency = CONCURRENCY.to_string();
    let out = oha(pki, port, cpus, &["-z", &duration, "-c", &concurrency])?;
    let count = oha_200s(&out, port)?;
    let rate = number_after(&out, "\"requestsPerSec\":").with_context(|| {
        format!("unexpected oha output {out:?}; is oha {OHA_VERSION} first on the PATH?")
    })?;
    Ok((rate, count))
}

/// oha with the client certificate against `port`, on the load CPUs
/// (`cpus`, a taskset list), for `how_long` (`-z` or `-n`, and `-c`); its
/// JSON summary.
fn oha(pki: &Pki, port: u16, cpus: &str, how_long: &[&str]) -> anyhow::Result<String> {
    let url = format!("https://{NAME}:{port}/");
    let mut args = vec![
        "--no-tui",
        "--output-format",
        "json",
        "--ipv4",
        "--insecure",
        "--cert",
        path_str(&pki.client_cert),
        "--key",
        path_str(&pki.client_key),
    ];
    args.extend(how_long);
    args.push(&url);
    pinned_output(cpus, "oha", &args)
}

/// How many responses in oha's summary `out` were 200s; an error if any
/// other status came back or more than 0.1% of requests failed (a timed
/// run ends with a few in flight).
fn oha_200s(out: &str, port: u16) -> anyhow::Result<f64> {
    let success = number_after(out, "\"successRate\":").unwrap_or(0.0);
    let codes = out
        .split_once("\"statusCodeDistribution\":")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(codes, _)| codes.trim().trim_start_matches('{').trim());
    let only_200 = codes.is_some_and(|c| c.starts_with("\"200\"") && c.matches(':').count() == 1);
    if success < 0.999 || !only_200 {
        bail!("oha on port {port}: success rate {success}, status codes {codes:?}");
    }
    codes
        .and_then(|codes| number_after(codes, "\"200\":"))
        .with_context(|| {
            format!("unexpected oha output {out:?}; is oha {OHA_VERSION} first on the PATH?")
        })
}

/// User-space instructions per keep-alive request: `kind` alone under
/// callgrind on the server's CPU, oha on the load CPUs, with the counters
/// zeroed after a warm-up and dumped after [`CALLGRIND_REQUESTS`].
fn callgrind(
    kind: Kind,
    work: &Path,
    pki: &Pki,
    upstream: &str,
    cpus: &Cpus,
) -> anyhow::Result<f64> {
    let name = format!("{}-callgrind", kind.name());
    let out = work.join(format!("{name}.out"));
    let port = free_port()?;
    let (program, args) = kind.command_line(work, &name, pki, port, upstream, Processes::One)?;
    let mut valgrind: Vec<OsString> = vec![
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}", out.display()).into(),
        // Per function is enough for a total; per instruction makes the
        // dumps large and slow to write.
        "--dump-instr=no".into(),
        program,
    ];
    valgrind.extend(args);
    let mut command = pinned(&cpus.server.to_string(), "valgrind", &valgrind);
    // valgrind's messages and shield's log to one file, off the terminal.
    command
        .env("SHIELD_LOG", "warn")
        .stderr(log_file(work, &name)?);
    let server = Server::start(&name, &mut command, port, CALLGRIND_START_WAIT)?;
    let load = cpus.load_list();
    callgrind_requests(&server, pki, &load, CALLGRIND_WARMUP)?;
    callgrind_control(&server, "-z")?;
    callgrind_requests(&server, pki, &load, CALLGRIND_REQUESTS)?;
    callgrind_control(&server, "-d")?;
    // Stopped before its dumps are read: the dump asked for is written by
    // then, and the host is free again.
    drop(server);
    let total = program_totals(&largest_dump(work, &format!("{name}.out."))?)?;
    Ok(total / CALLGRIND_REQUESTS as f64)
}

/// `count` keep-alive requests to the server under callgrind, every one a 200.
fn callgrind_requests(server: &Server, pki: &Pki, cpus: &str, count: usize) -> anyhow::Result<()> {
    let (n, c) = (count.to_string(), CALLGRIND_CONCURRENCY.to_string());
    let out = oha(pki, server.port, cpus, &["-n", &n, "-c", &c]).with_context(|| {
        format!(
            "{}: oha failed; see its log in target/bench-tls",
            server.name
        )
    })?;
    let ok = oha_200s(&out, server.port)?;
    if ok as usize != count {
        bail!(
            "{}: {ok} of {count} requests answered 200; see its log in target/bench-tls",
            server.name
        );
    }
    Ok(())
}

/// `callgrind_control FLAG PID` (`-z` zeroes the counters, `-d` dumps
/// them). It exits 0 even when it finds no such process, and then acts on
/// every callgrind run on the host, so its output is checked.
fn callgrind_control(server: &Server, flag: &str) -> anyhow::Result<()> {
    let pid = server.child.id().to_string();
    let out = shell::output("callgrind_control", &[flag, &pid])?;
    if out.contains("Error") || !out.contains(&format!("PID {pid}:")) {
        bail!(
            "{}: `callgrind_control {flag} {pid}` did not reach it: {out}; see its log in \
             target/bench-tls (valgrind's vgdb needs ptrace)",
            server.name
        );
    }
    Ok(())
}

/// The largest numbered callgrind dump, `prefix`N, in `work`: the one
/// asked for with `-d` (the one written at exit has no number).
fn largest_dump(work: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    let entries = fs::read_dir(work).with_context(|| format!("cannot list {}", work.display()))?;
    entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .max_by_key(|entry| entry.metadata().map_or(0, |m| m.len()))
        .map(|entry| entry.path())
        .with_context(|| {
            format!(
                "no callgrind dump {prefix}* in {}; see the callgrind log there",
                work.display()
            )
        })
}

/// Instructions in a callgrind dump: the `PROGRAM TOTALS` line of
/// callgrind_annotate, such as `197,911,436 (100.0%)  PROGRAM TOTALS`.
fn program_totals(dump: &Path) -> anyhow::Result<f64> {
    let out = shell::output("callgrind_annotate", &[path_str(dump)])?;
    out.lines()
        .find(|line| line.contains("PROGRAM TOTALS"))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|total| total.replace(',', "").parse().ok())
        .with_context(|| {
            format!(
                "no PROGRAM TOTALS from `callgrind_annotate {}`; is valgrind's callgrind_annotate \
                 installed with it?",
                dump.display()
            )
        })
}

/// The number right after `key` (enough JSON for oha's summary).
fn number_after(text: &str, key: &str) -> Option<f64> {
    let rest = &text[text.find(key)? + key.len()..];
    let rest = rest.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+')))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `tls_load hold`: 10,000 connections open until dropped.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
    held: usize,
}

impl Holder {
    /// Runs on the load CPUs (`cpus`, a taskset list).
    fn open(load: &Path, pki: &Pki, port: u16, cpus: &str) -> anyhow::Result<Holder> {
        let addr = format!("127.0.0.1:{port}");
        let mut args = load_args(pki, &addr);
        let count = IDLE_CONNECTIONS.to_string();
        args.extend(["hold", "--count", &count]);
        let mut child = pinned(cpus, load, &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start tls_load")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("tls_load has no stdout")?;
        let mut holder = Holder {
            child,
            stdin,
            held: 0,
        };
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if line.starts_with("held=") {
                holder.held = number_after(&line, "held=").unwrap_or(0.0) as usize;
                return Ok(holder);
            }
        }
        bail!("tls_load ended before it held its connections")
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // Closing stdin tells it to close its connections and exit.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Per server, the median of one field of its samples.
fn medians(samples: &[Vec<Sample>], field: fn(&Sample) -> f64) -> Vec<f64> {
    samples
        .iter()
        .map(|s| median(&s.iter().map(field).collect::<Vec<_>>()))
        .collect()
}

fn report(
    kinds: &[Kind],
    cpus: &Cpus,
    handshakes: &[Vec<Sample>],
    keepalive: &[Vec<Sample>],
    budgeted: &[Vec<Sample>],
    instructions: &[f64],
    memory: &[(Memory, Memory)],
) -> String {
    let names: Vec<String> = kinds
        .iter()
        .map(|kind| match kind {
            Kind::Nginx => "nginx".to_owned(),
            Kind::Shield(p) => format!("shield ({p})"),
        })
        .collect();
    let mut out = String::new();
    out.push_str(&format!(
        "Throughput: median of {ROUNDS} interleaved {SECONDS} s samples, {CONCURRENCY} connections.\n\n"
    ));
    out.push_str("| figure | ");
    out.push_str(&names.join(" | "));
    out.push_str(" | shield/nginx | target |\n| --- |");
    out.push_str(&" ---: |".repeat(names.len() + 1));
    out.push_str(" --- |\n");
    let row = |out: &mut String, label: &str, samples: &[Vec<Sample>], target: f64| {
        let medians = medians(samples, |s| s.rate);
        let ratio = medians[1] / medians[0];
        out.push_str(&format!("| {label} |"));
        for m in &medians {
            out.push_str(&format!(" {m:.0} |"));
        }
        let verdict = if ratio >= target { "met" } else { "NOT met" };
        out.push_str(&format!(" {ratio:.2}x | >= {target}x: {verdict} |\n"));
    };
    // Lower is better here, so the ratio is turned around: above 1x,
    // shield spends less CPU than nginx on the same work.
    let cpu_row = |out: &mut String, label: &str, samples: &[Vec<Sample>]| {
        let medians = medians(samples, |s| s.cpu_us);
        let ratio = medians[0] / medians[1];
        out.push_str(&format!("| {label} |"));
        for m in &medians {
            out.push_str(&format!(" {m:.1} |"));
        }
        out.push_str(&format!(
            " {ratio:.2}x (nginx/shield) | lower is better |\n"
        ));
    };
    row(&mut out, "full handshakes/s", handshakes, 2.0);
    cpu_row(&mut out, "server CPU per full handshake, µs", handshakes);
    row(&mut out, "keep-alive requests/s", keepalive, 1.2);
    cpu_row(&mut out, "server CPU per keep-alive request, µs", keepalive);
    row(
        &mut out,
        &format!("keep-alive requests/s, server held to {BUDGET_PERCENT}% of a CPU"),
        budgeted,
        1.2,
    );
    // As for CPU, above 1x shield does less; ring's build is not counted.
    if let [nginx, shield] = instructions {
        out.push_str(&format!(
            "| user-space instructions per keep-alive request (callgrind) | {nginx:.0} | {shield:.0} | - | {:.2}x (nginx/shield) | lower is better, deterministic |\n",
            nginx / shield
        ));
    }
    if let [(nginx_idle, nginx), (shield_idle, shield)] = memory {
        let ratio = shield.rss_kib as f64 / nginx.rss_kib as f64;
        let verdict = if ratio <= 1.0 { "met" } else { "NOT met" };
        out.push_str(&format!(
            "| RSS at {IDLE_CONNECTIONS} idle mTLS connections, MiB | {:.1} | {:.1} | - | {ratio:.2}x | <= 1x: {verdict} |\n",
            mib(nginx.rss_kib),
            mib(shield.rss_kib)
        ));
        out.push_str(&format!(
            "| PSS at {IDLE_CONNECTIONS} idle, MiB | {:.1} | {:.1} | - | {:.2}x | |\n",
            mib(nginx.pss_kib),
            mib(shield.pss_kib),
            shield.pss_kib as f64 / nginx.pss_kib as f64
        ));
        out.push_str(&format!(
            "| RSS at start, MiB | {:.1} | {:.1} | - | {:.2}x | |\n",
            mib(nginx_idle.rss_kib),
            mib(shield_idle.rss_kib),
            shield_idle.rss_kib as f64 / nginx_idle.rss_kib as f64
        ));
    }
    let all = || handshakes.iter().chain(keepalive).flatten();
    let budget_load_max = budgeted
        .iter()
        .flatten()
        .map(|s| s.load_busy)
        .fold(0.0, f64::max);
    let load_max = all().map(|s| s.load_busy).fold(0.0, f64::max);
    let server_min = all().map(|s| s.server_busy).fold(1.0, f64::min);
    let (server, load) = (cpus.server, cpus.load_list());
    out.push_str(&format!(
        "\nThe server under test runs alone on CPU {server}; the load clients (tls_load, oha) and the upstream nginx on CPU {load}. \
         Pinned to one CPU, shield runs one connection worker; nginx keeps its 2 workers, both on CPU {server}.\n\
         \nLoad CPUs {load} were at most {:.0}% busy in any sample (server CPU {server} at least {:.0}%); a load side near 100% caps the rate.\n\
         \nServer CPU rows: user plus system CPU time of the server's processes during a sample over the requests or handshakes it completed; \
         their ratio is nginx/shield, so above 1x shield spends less.\n",
        load_max * 100.0,
        server_min * 100.0
    ));
    out.push_str(&format!(
        "\nBudgeted row: the same keep-alive load with the server's processes in a cgroup whose CPU quota is {BUDGET_PERCENT}% of one CPU, \
         so that the server, not the load side, sets the rate (load CPUs at most {:.0}% busy in those samples).\n",
        budget_load_max * 100.0
    ));
    out.push_str(&format!(
        "\nInstructions row: valgrind's callgrind, one server at a time on CPU {server} (nginx as one process, `master_process off`), \
         {CALLGRIND_REQUESTS} keep-alive requests on {CALLGRIND_CONCURRENCY} connections after {CALLGRIND_WARMUP} of warm-up; \
         repeatable within about 0.3% where wall-clock figures are not, but user space only: the kernel's share of a request is not in it. \
         Ratio nginx/shield, so above 1x shield executes fewer.\n"
    ));
    out.push_str(
        "\nnginx memory is its master plus 2 workers, summed. shield (ring) is shield built with `--features ring`.\n",
    );
    out
}
