//! `cargo xtask bench tls`: shield's mTLS terminator against nginx
//! (Debian nginx-light) in one run, on loopback only.
//!
//! Both get the same ECDSA P-256 certificate, key and client CA, require a
//! client certificate, and proxy to the same upstream (a separate one-worker
//! nginx returning a fixed 200). Three figures, each side by side:
//!
//! - full handshakes per second: every connection is a fresh TLS 1.3
//!   handshake with a client certificate and one `Connection: close`
//!   request; the client never resumes (shield-userspace's `tls_load`
//!   example, because oha keeps a session cache and would resume);
//! - keep-alive requests per second: oha with the client certificate;
//! - RSS (and PSS) with 10,000 idle mTLS connections open, each having
//!   served one request: shield's process against nginx's master plus
//!   workers.
//!
//! shield is built twice, with rustls' aws-lc-rs provider (the default) and
//! with `--features ring`, so the provider choice in `tls::provider` stays
//! a measured one.

use std::{
    ffi::OsStr,
    fs,
    io::{BufRead as _, BufReader},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::shell;

/// oha 1.16 builds with rustc 1.95 and speaks client certificates.
const OHA_VERSION: &str = "1.16.0";
/// Interleaved rounds per throughput figure; the median is reported.
const ROUNDS: usize = 3;
/// Seconds per throughput sample.
const SECONDS: u32 = 8;
/// Connections in flight: enough to keep 2 cores busy.
const CONCURRENCY: usize = 64;
const IDLE_CONNECTIONS: usize = 10_000;
/// SNI, Host and certificate name; resolves to loopback without any setup.
const NAME: &str = "localhost";
/// Descriptors wanted for the servers and clients (10,000 sockets and
/// more); less when the hard limit is lower (it cannot be raised in every
/// container).
const NOFILE: u64 = 65_536;

/// nginx-light from Debian, oha from crates.io; skipped when present.
pub fn bench_tools() -> anyhow::Result<()> {
    if !shell::succeeds("nginx", &["-v"]) {
        if !shell::is_root() {
            bail!("nginx is missing: run as root (it is installed with apt-get)");
        }
        println!("bench: installing nginx-light");
        std::env::set_var("DEBIAN_FRONTEND", "noninteractive");
        shell::status("apt-get", &["update", "-q"])?;
        shell::status(
            "apt-get",
            &[
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "nginx-light",
            ],
        )?;
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

pub fn run() -> anyhow::Result<()> {
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
    let _upstream = Server::start(
        "upstream",
        &mut with_nofile(
            "nginx",
            &nginx_args(&work, "upstream", &upstream_conf(&work, upstream_port))?,
        ),
        upstream_port,
    )?;
    let upstream = format!("http://127.0.0.1:{upstream_port}");

    let kinds = [Kind::Nginx, Kind::Shield("aws-lc-rs"), Kind::Shield("ring")];
    let mut handshakes: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    let mut keepalive: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
    {
        let mut servers = Vec::new();
        for kind in &kinds {
            servers.push(kind.start(&work, &pki, &upstream)?);
        }
        for round in 1..=ROUNDS {
            for (i, server) in servers.iter().enumerate() {
                let rate = handshake_rate(&load, &pki, server.port)?;
                println!(
                    "round {round}: {} full handshakes/s: {rate:.0}",
                    server.name
                );
                handshakes[i].push(rate);
            }
            for (i, server) in servers.iter().enumerate() {
                let rate = keepalive_rate(&pki, server.port)?;
                println!(
                    "round {round}: {} keep-alive requests/s: {rate:.0}",
                    server.name
                );
                keepalive[i].push(rate);
            }
        }
    }

    // Memory: one server at a time, each fresh.
    let mut memory = Vec::new();
    for kind in &kinds[..2] {
        let server = kind.start(&work, &pki, &upstream)?;
        let idle = server.memory()?;
        let holder = Holder::open(&load, &pki, server.port)?;
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

    let table = report(&kinds, &handshakes, &keepalive, &memory);
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

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Certificates made with the openssl CLI: a CA, a server leaf for
/// `localhost`, a client leaf; all ECDSA P-256.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn make(dir: &Path) -> anyhow::Result<Pki> {
        // A config without default extensions: only the -addext ones apply.
        let cnf = dir.join("openssl.cnf");
        fs::write(&cnf, "[req]\ndistinguished_name = dn\n[dn]\n")?;
        let pki = Pki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        let ca_key = dir.join("ca.key");
        let req = |key: &Path, cert: &Path, subject: &str, ext: &[&str], ca: bool| {
            let mut args: Vec<String> = [
                "req",
                "-config",
                path_str(&cnf),
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                path_str(key),
                "-out",
                path_str(cert),
                "-subj",
                subject,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if !ca {
                for arg in ["-CA", path_str(&pki.ca), "-CAkey", path_str(&ca_key)] {
                    args.push(arg.to_owned());
                }
            }
            for e in ext {
                args.push("-addext".to_owned());
                args.push((*e).to_owned());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            shell::output("openssl", &args).map(drop)
        };
        req(
            &ca_key,
            &pki.ca,
            "/CN=shield bench CA",
            &[
                "basicConstraints=critical,CA:TRUE",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            true,
        )?;
        req(
            &pki.server_key,
            &pki.server_cert,
            "/CN=localhost",
            &[
                "subjectAltName=DNS:localhost",
                "basicConstraints=critical,CA:FALSE",
                "keyUsage=critical,digitalSignature",
                "extendedKeyUsage=serverAuth",
            ],
            false,
        )?;
        req(
            &pki.client_key,
            &pki.client_cert,
            "/CN=shield bench client",
            &[
                "basicConstraints=critical,CA:FALSE",
                "keyUsage=critical,digitalSignature",
                "extendedKeyUsage=clientAuth",
            ],
            false,
        )?;
        Ok(pki)
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

/// The nginx under test: 2 workers, the same files, protocol versions
/// (nginx 1.22 leaves TLS 1.3 out unless told), timeouts and upstream
/// pool as shield. No access log, since shield writes none per request.
fn nginx_conf(work: &Path, pki: &Pki, port: u16, upstream: &str) -> String {
    format!(
        "worker_processes 2;
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
    fn start(self, work: &Path, pki: &Pki, upstream: &str) -> anyhow::Result<Server> {
        let port = free_port()?;
        match self {
            Kind::Nginx => {
                let args = nginx_args(work, "nginx", &nginx_conf(work, pki, port, upstream))?;
                Server::start("nginx", &mut with_nofile("nginx", &args), port)
            }
            Kind::Shield(provider) => {
                let name = format!("shield-{provider}");
                let conf = work.join(format!("{name}.toml"));
                fs::write(&conf, shield_conf(work, pki, port, upstream)?)
                    .with_context(|| format!("cannot write {}", conf.display()))?;
                let log = fs::File::create(work.join(format!("{name}.log")))?;
                let mut command = with_nofile(
                    work.join(&name),
                    &[OsStr::new("run"), OsStr::new("--config"), conf.as_os_str()],
                );
                command.env("SHIELD_LOG", "warn").stderr(log);
                Server::start(&name, &mut command, port)
            }
        }
    }
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
    fn start(name: &str, command: &mut Command, port: u16) -> anyhow::Result<Server> {
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
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("{name} exited at start ({status}); see its log in target/bench-tls");
            }
            if Instant::now() > deadline {
                bail!("{name} does not listen on 127.0.0.1:{port} after 20 s");
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

/// `program args` with the soft descriptor limit raised to
/// [`nofile_limit`]: a shell in front that execs it, so the pid stays the
/// program's.
fn with_nofile<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
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

fn handshake_rate(load: &Path, pki: &Pki, port: u16) -> anyhow::Result<f64> {
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
    let out = shell::output(path_str(load), &args)?;
    let errors = number_after(&out, "errors=").unwrap_or(0.0);
    if errors > 0.0 {
        bail!("handshake client saw {errors} errors on port {port}: {out}");
    }
    number_after(&out, "per_second=").with_context(|| format!("unexpected output {out:?}"))
}

fn keepalive_rate(pki: &Pki, port: u16) -> anyhow::Result<f64> {
    let url = format!("https://{NAME}:{port}/");
    let duration = format!("{SECONDS}s");
    let concurrency = CONCURRENCY.to_string();
    let out = shell::output(
        "oha",
        &[
            "--no-tui",
            "--output-format",
            "json",
            "--ipv4",
            "--insecure",
            "--cert",
            path_str(&pki.client_cert),
            "--key",
            path_str(&pki.client_key),
            "-z",
            &duration,
            "-c",
            &concurrency,
            &url,
        ],
    )?;
    let success = number_after(&out, "\"successRate\":").unwrap_or(0.0);
    let codes = out
        .split_once("\"statusCodeDistribution\":")
        .and_then(|(_, rest)| rest.split_once('}'))
        .map(|(codes, _)| codes.trim().trim_start_matches('{').trim());
    let only_200 = codes.is_some_and(|c| c.starts_with("\"200\"") && c.matches(':').count() == 1);
    if success < 0.999 || !only_200 {
        bail!("oha on port {port}: success rate {success}, status codes {codes:?}");
    }
    number_after(&out, "\"requestsPerSec\":")
        .with_context(|| format!("unexpected oha output {out:?}"))
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
    fn open(load: &Path, pki: &Pki, port: u16) -> anyhow::Result<Holder> {
        let addr = format!("127.0.0.1:{port}");
        let mut args = load_args(pki, &addr);
        let count = IDLE_CONNECTIONS.to_string();
        args.extend(["hold", "--count", &count]);
        let mut child = with_nofile(load, &args)
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

fn report(
    kinds: &[Kind],
    handshakes: &[Vec<f64>],
    keepalive: &[Vec<f64>],
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
    let row = |out: &mut String, label: &str, samples: &[Vec<f64>], target: f64| {
        let medians: Vec<f64> = samples.iter().map(|s| median(s)).collect();
        let ratio = medians[1] / medians[0];
        out.push_str(&format!("| {label} |"));
        for m in &medians {
            out.push_str(&format!(" {m:.0} |"));
        }
        let verdict = if ratio >= target { "met" } else { "NOT met" };
        out.push_str(&format!(" {ratio:.2}x | >= {target}x: {verdict} |\n"));
    };
    row(&mut out, "full handshakes/s", handshakes, 2.0);
    row(&mut out, "keep-alive requests/s", keepalive, 1.2);
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
    out.push_str(
        "\nnginx memory is its master plus 2 workers, summed. shield (ring) is shield built with `--features ring`.\n",
    );
    out
}
