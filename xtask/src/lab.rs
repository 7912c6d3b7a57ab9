//! The lab behind `cargo xtask run`: three network namespaces, shield on the
//! origin, real traffic from a Cloudflare address and from an attacker, and
//! a live table. Ctrl-C removes everything; a new run first removes what a
//! killed one left.
//!
//! ```text
//!   edge (173.245.48.10, Cloudflare) ──eth0─┐
//!                                           origin 192.0.2.1: shield (XDP on eth0+eth1, mTLS :443)
//!   attacker (203.0.113.7) ─────────eth1─┘   └─ demo upstream 127.0.0.1:8080
//!   host shlab0 169.254.94.1 ── mgmt0 169.254.94.2 (metrics only; no route anywhere else)
//! ```

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use shield_tests::pki::{self, Usage};

use crate::shell;

const ORIGIN: &str = "shield-lab-origin";
const EDGE: &str = "shield-lab-edge";
const ATTACKER: &str = "shield-lab-attacker";
const PIN_ROOT: &str = "/sys/fs/bpf/shield-lab";
const HOST_LINK: &str = "shlab0";
const METRICS: &str = "169.254.94.2:9469";
const SITE: &str = "lab.shield.test";
const ORIGIN_V4: &str = "192.0.2.1";

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn work_dir() -> PathBuf {
    std::env::temp_dir().join("shield-lab")
}

fn ns(name: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec![format!("--net=/run/netns/{name}"), "--".into()];
    full.extend(args.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    shell::output("nsenter", &refs)
}

fn ns_spawn(name: &str, script: &str, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    Command::new("nsenter")
        .args([
            &format!("--net=/run/netns/{name}"),
            "--",
            "sh",
            "-c",
            script,
        ])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start traffic in {name}"))
}

/// Removes namespaces, pins and links a previous lab left behind.
pub fn clean() {
    for name in [ORIGIN, EDGE, ATTACKER] {
        if let Ok(pids) = shell::output("ip", &["netns", "pids", name]) {
            for pid in pids.split_whitespace() {
                let _ = shell::output("kill", &["-9", pid]);
            }
        }
        let _ = shell::output("ip", &["netns", "del", name]);
    }
    let _ = std::fs::remove_dir_all(PIN_ROOT);
    let _ = shell::output("ip", &["link", "del", HOST_LINK]);
}

/// The interactive lab: runs until Ctrl-C.
pub fn run(shield: &Path) -> anyhow::Result<()> {
    run_for(shield, None).map(drop)
}

/// What `cargo xtask test` checks: the lab for a while, unattended. The
/// edge must be served, the other customer refused, the attacker dropped,
/// and nothing may be left behind.
pub fn smoke(shield: &Path) -> anyhow::Result<()> {
    let rates = run_for(shield, Some(Duration::from_secs(25)))?;
    let rate = |key: &str| rates.get(key).copied().unwrap_or(0.0);
    if rate("requests_ok") <= 0.0
        || rate("handshakes_refused") <= 0.0
        || rate("drop:outside_ranges") <= 0.0
    {
        bail!("the lab's traffic did not do what it should: {rates:?}");
    }
    let namespaces = shell::output("ip", &["netns", "list"])?;
    if namespaces.contains("shield-lab") || Path::new(PIN_ROOT).exists() {
        bail!("the lab left namespaces or pins behind:\n{namespaces}");
    }
    println!("lab: smoke test passed: {rates:?}");
    Ok(())
}

fn run_for(shield: &Path, duration: Option<Duration>) -> anyhow::Result<BTreeMap<String, f64>> {
    if !shell::is_root() {
        bail!("the lab creates network namespaces and attaches XDP: run `cargo xtask run` as root");
    }
    clean();
    let dir = work_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www"))?;
    let result = build_and_watch(shield, &dir, duration);
    println!("\nlab: cleaning up");
    clean();
    result
}

fn build_and_watch(
    shield: &Path,
    dir: &Path,
    duration: Option<Duration>,
) -> anyhow::Result<BTreeMap<String, f64>> {
    make_pki(dir)?;
    make_network()?;
    std::fs::write(
        dir.join("www/index.html"),
        "hello from the origin behind shield\n",
    )?;
    let config = dir.join("shield.toml");
    std::fs::write(
        &config,
        format!(
            r#"[xdp]
interfaces = ["eth0", "eth1"]

[ranges]
refresh = "off"
cache = "{dir}/ranges.json"

[metrics]
listen = "{METRICS}"

[http]
listen = "0.0.0.0:80"
action = "redirect"

[[site]]
server_names = ["{SITE}"]
listen = "0.0.0.0:443"
cert = "{dir}/site.pem"
key = "{dir}/site.key"
client_ca = ["{dir}/zone-ca.pem"]
upstream = "http://127.0.0.1:8080"
"#,
            dir = dir.display()
        ),
    )?;
    let mut children = Vec::new();
    children.push(ns_spawn(
        ORIGIN,
        &format!(
            "exec python3 -m http.server 8080 --bind 127.0.0.1 --directory {}/www",
            dir.display()
        ),
        &dir.join("upstream.log"),
    )?);
    let shield_log = dir.join("shield.log");
    let log_file = std::fs::File::create(&shield_log)?;
    let mut daemon = Command::new("nsenter")
        .args([&format!("--net=/run/netns/{ORIGIN}"), "--"])
        .arg(shield)
        .args(["run", "--config"])
        .arg(&config)
        .env("SHIELD_PIN_ROOT", PIN_ROOT)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .context("cannot start shield")?;
    let ready = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&shield_log)?.contains("shield ready") {
        if Instant::now() > ready || daemon.try_wait()?.is_some() {
            let _ = daemon.kill();
            bail!(
                "shield did not start:\n{}",
                std::fs::read_to_string(&shield_log)?
            );
        }
        thread::sleep(Duration::from_millis(100));
    }

    let resolve = format!("--resolve {SITE}:443:{ORIGIN_V4}");
    let d = dir.display();
    let traffic = [
        // A Cloudflare edge with the zone's AOP certificate: served.
        (EDGE, format!("while :; do curl -s -o /dev/null --max-time 2 --cacert {d}/server-ca.pem --cert {d}/edge.pem --key {d}/edge.key {resolve} https://{SITE}/; sleep 0.2; done")),
        // Another Cloudflare customer (right IP, wrong certificate): refused at the handshake.
        (EDGE, format!("while :; do curl -s -o /dev/null --max-time 2 --cacert {d}/server-ca.pem --cert {d}/other.pem --key {d}/other.key {resolve} https://{SITE}/; sleep 1; done")),
        // The attacker, straight at the origin: dropped in XDP.
        (ATTACKER, format!("while :; do curl -s -o /dev/null --max-time 1 -k {resolve} https://{SITE}/; done")),
        (ATTACKER, format!("exec hping3 -q -S -p 443 -i u20000 {ORIGIN_V4}")),
        (ATTACKER, format!("exec hping3 -q --udp -p 443 -i u50000 {ORIGIN_V4}")),
        (ATTACKER, format!("while :; do curl -s -o /dev/null --max-time 2 http://{ORIGIN_V4}:22/ ; sleep 1; done")),
    ];
    for (i, (name, script)) in traffic.iter().enumerate() {
        children.push(ns_spawn(
            name,
            script,
            &dir.join(format!("traffic-{i}.log")),
        )?);
    }

    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    println!("shield lab is up. metrics: http://{METRICS}/metrics   logs: {d}/   Ctrl-C stops and removes everything");
    println!("  edge 173.245.48.10 (Cloudflare) with the zone AOP certificate, and a second edge client with another customer's certificate");
    println!(
        "  attacker 203.0.113.7: curl, SYN and UDP floods to 443, curl to 22 (which passes)\n"
    );
    let result = watch(&mut daemon, duration.map(|d| Instant::now() + d));
    let _ = daemon.kill();
    let _ = daemon.wait();
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

/// Prints the live table until Ctrl-C (or `deadline`); returns the last
/// row's rates.
fn watch(daemon: &mut Child, deadline: Option<Instant>) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut previous: Option<(Instant, BTreeMap<String, f64>)> = None;
    let mut last_rates = BTreeMap::new();
    let mut rows = 0;
    while !STOP.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        if let Some(status) = daemon.try_wait()? {
            bail!("shield exited ({status}); see its log");
        }
        let now = Instant::now();
        let metrics = shell::output(
            "curl",
            &[
                "-s",
                "--max-time",
                "2",
                &format!("http://{METRICS}/metrics"),
            ],
        )
        .unwrap_or_default();
        let current = summarize(&metrics);
        if let Some((then, before)) = &previous {
            let seconds = now.duration_since(*then).as_secs_f64().max(0.001);
            let rate = |key: &str| {
                (current.get(key).unwrap_or(&0.0) - before.get(key).unwrap_or(&0.0)) / seconds
            };
            last_rates = current.keys().map(|key| (key.clone(), rate(key))).collect();
            if rows % 15 == 0 {
                println!(
                    "{:>10} {:>12} {:>16} {:>16} {:>12} {:>12}",
                    "req ok/s",
                    "refused hs/s",
                    "drop outside/s",
                    "drop malform/s",
                    "pass ssh/s",
                    "allowed/s"
                );
            }
            println!(
                "{:>10.1} {:>12.1} {:>16.1} {:>16.1} {:>12.1} {:>12.1}",
                rate("requests_ok"),
                rate("handshakes_refused"),
                rate("drop:outside_ranges"),
                rate("drop:malformed"),
                rate("pass:unprotected"),
                rate("pass:allowed"),
            );
            rows += 1;
        }
        previous = Some((now, current));
        for _ in 0..20 {
            if STOP.load(Ordering::SeqCst) {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(last_rates)
}

/// Sums of the samples the table shows, from OpenMetrics text.
fn summarize(metrics: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let label = |name: &str| {
            series
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let key = if series.starts_with("shield_xdp_packets_total{") {
            format!("{}:{}", label("verdict"), label("reason"))
        } else if series.starts_with("shield_http_requests_total{")
            && label("code").starts_with('2')
        {
            "requests_ok".into()
        } else if series.starts_with("shield_tls_handshakes_total{") && label("result") != "ok" {
            "handshakes_refused".into()
        } else {
            continue;
        };
        *sums.entry(key).or_insert(0.0) += value;
    }
    sums
}

fn make_network() -> anyhow::Result<()> {
    for name in [ORIGIN, EDGE, ATTACKER] {
        shell::output("ip", &["netns", "add", name])?;
        ns(name, &["ip", "link", "set", "lo", "up"])?;
    }
    for (peer, origin_if, v4) in [
        (EDGE, "eth0", "173.245.48.10"),
        (ATTACKER, "eth1", "203.0.113.7"),
    ] {
        shell::output(
            "ip",
            &[
                "link", "add", "name", origin_if, "netns", ORIGIN, "type", "veth", "peer", "name",
                "eth0", "netns", peer,
            ],
        )?;
        ns(
            ORIGIN,
            &[
                "ip",
                "addr",
                "add",
                &format!("{ORIGIN_V4}/32"),
                "dev",
                origin_if,
            ],
        )?;
        ns(ORIGIN, &["ip", "link", "set", origin_if, "up"])?;
        ns(
            ORIGIN,
            &["ip", "route", "add", &format!("{v4}/32"), "dev", origin_if],
        )?;
        ns(
            peer,
            &["ip", "addr", "add", &format!("{v4}/32"), "dev", "eth0"],
        )?;
        ns(peer, &["ip", "link", "set", "eth0", "up"])?;
        ns(
            peer,
            &[
                "ip",
                "route",
                "add",
                &format!("{ORIGIN_V4}/32"),
                "dev",
                "eth0",
            ],
        )?;
    }
    // The management link carries only the metrics: link-local, no routes.
    shell::output(
        "ip",
        &[
            "link", "add", HOST_LINK, "type", "veth", "peer", "name", "mgmt0", "netns", ORIGIN,
        ],
    )?;
    shell::output("ip", &["addr", "add", "169.254.94.1/30", "dev", HOST_LINK])?;
    shell::output("ip", &["link", "set", HOST_LINK, "up"])?;
    ns(
        ORIGIN,
        &["ip", "addr", "add", "169.254.94.2/30", "dev", "mgmt0"],
    )?;
    ns(ORIGIN, &["ip", "link", "set", "mgmt0", "up"])?;
    Ok(())
}

/// A server CA and site certificate, the zone's AOP CA with the edge's
/// client certificate, and another customer's CA and certificate.
fn make_pki(dir: &Path) -> anyhow::Result<()> {
    const DAYS: u32 = 30;
    let server_ca = pki::ca(dir, "server-ca", "shield lab server CA", DAYS)?;
    pki::leaf(dir, "site", SITE, &server_ca, Usage::Server(SITE), DAYS)?;
    let zone_ca = pki::ca(dir, "zone-ca", "shield lab AOP zone CA", DAYS)?;
    pki::leaf(
        dir,
        "edge",
        "edge.lab.shield.test",
        &zone_ca,
        Usage::Client,
        DAYS,
    )?;
    let other_ca = pki::ca(dir, "other-ca", "another customer's AOP CA", DAYS)?;
    pki::leaf(
        dir,
        "other",
        "other.customer.test",
        &other_ca,
        Usage::Client,
        DAYS,
    )?;
    Ok(())
}
