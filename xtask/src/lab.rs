//! The lab behind `cargo xtask run`: three network namespaces, shield on the
//! origin, legitimate mTLS requests from a Cloudflare address, bounded
//! floods from an attacker (from outside the ranges, and forged from inside
//! them), and a live view ([`view`]). Ctrl-C removes everything; a new run
//! first removes what a killed one left.
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

mod view;

const ORIGIN: &str = "shield-lab-origin";
const EDGE: &str = "shield-lab-edge";
const ATTACKER: &str = "shield-lab-attacker";
const PIN_ROOT: &str = "/sys/fs/bpf/shield-lab";
/// The peers' pass-all XDP program (`shield_tests::load_pass_all`), loaded
/// once and pinned here while it is attached.
const PASS_PIN: &str = "/sys/fs/bpf/shield-lab-pass";
const HOST_LINK: &str = "shlab0";
const METRICS: &str = "169.254.94.2:9469";
const SITE: &str = "lab.shield.test";
const ORIGIN_V4: &str = "192.0.2.1";
/// The attacker's forged source, inside Cloudflare's 173.245.48.0/20.
const FORGED_V4: &str = "173.245.48.99";
/// Microseconds between each outside SYN flooder's packets: a bound of
/// 100,000 per second each; one hping3 reaches about 10,000 here (its
/// sleep between packets dominates), so there are [`OUTSIDE_FLOODERS`].
const OUTSIDE_FLOOD_GAP_US: u32 = 10;
const OUTSIDE_FLOODERS: usize = 3;
/// The forged floods' gaps: SYN (answered in XDP with cookies once the
/// listener's queue is full), UDP, ACK.
const FORGED_SYN_GAP_US: u32 = 100;
const FORGED_UDP_GAP_US: u32 = 200;
const FORGED_ACK_GAP_US: u32 = 1000;

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
    let _ = std::fs::remove_file(PASS_PIN);
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
    // What else is pinned on this host is not the lab's.
    let pinned_before = bpffs_entries();
    let totals = run_for(shield, Some(Duration::from_secs(25)))?;
    let total = |key: &str| totals.get(key).copied().unwrap_or(0.0);
    // Counts over the run, not one second's rates: the floods must have
    // been floods (thousands of packets a second) and the edge served.
    if total("edge_ok") < 20.0
        || total("handshakes_refused") <= 0.0
        || total("drop:outside_ranges") < 100_000.0
        || total("edge_failed") * 100.0 > total("edge_ok")
        || total("answered:syn_cookie") < 10_000.0
        || total("drop:udp_from_ranges") <= 0.0
        || total("drop:bad_ack") <= 0.0
    {
        bail!("the lab's traffic did not do what it should: {totals:?}");
    }
    let namespaces = shell::output("ip", &["netns", "list"])?;
    let pinned_after: Vec<String> = bpffs_entries()
        .into_iter()
        .filter(|entry| !pinned_before.contains(entry))
        .collect();
    if namespaces.contains("shield-lab") || Path::new(PIN_ROOT).exists() || !pinned_after.is_empty()
    {
        bail!("the lab left namespaces or pins behind:\n{namespaces}\n{pinned_after:?}");
    }
    println!("lab: smoke test passed: {totals:?}");
    Ok(())
}

/// The names at the top of the BPF filesystem.
fn bpffs_entries() -> Vec<String> {
    std::fs::read_dir("/sys/fs/bpf")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs the lab until Ctrl-C or for `duration`; returns the counts over
/// the run (see [`watch`]).
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
    // The legitimate requests, one line each for the view to read.
    let edge_log = dir.join("edge-requests.log");
    children.push(ns_spawn(
        EDGE,
        &format!("while :; do curl -s -o /dev/null -w '%{{http_code}} %{{time_total}}\\n' --max-time 2 --cacert {d}/server-ca.pem --cert {d}/edge.pem --key {d}/edge.key {resolve} https://{SITE}/; sleep 0.1; done"),
        &edge_log,
    )?);
    let traffic = [
        // Another Cloudflare customer (right IP, wrong certificate): refused at the handshake.
        (EDGE, format!("while :; do curl -s -o /dev/null --max-time 2 --cacert {d}/server-ca.pem --cert {d}/other.pem --key {d}/other.key {resolve} https://{SITE}/; sleep 1; done")),
        // The attacker, straight at the origin: dropped in XDP.
        (ATTACKER, format!("while :; do curl -s -o /dev/null --max-time 1 -k {resolve} https://{SITE}/; done")),
        (ATTACKER, format!("exec hping3 -q --udp -p 443 -i u50000 {ORIGIN_V4}")),
        // Forged from inside the ranges: SYNs the listener's queue cannot
        // hold, UDP that Cloudflare never sends, ACKs that match no
        // connection.
        (ATTACKER, format!("exec hping3 -q -S -p 443 -a {FORGED_V4} -i u{FORGED_SYN_GAP_US} {ORIGIN_V4}")),
        (ATTACKER, format!("exec hping3 -q --udp -p 443 -a {FORGED_V4} -i u{FORGED_UDP_GAP_US} {ORIGIN_V4}")),
        (ATTACKER, format!("exec hping3 -q -A -p 443 -a {FORGED_V4} -i u{FORGED_ACK_GAP_US} {ORIGIN_V4}")),
        (ATTACKER, format!("while :; do curl -s -o /dev/null --max-time 2 http://{ORIGIN_V4}:22/ ; sleep 1; done")),
    ];
    let flood = format!("exec hping3 -q -S -p 443 -i u{OUTSIDE_FLOOD_GAP_US} {ORIGIN_V4}");
    let floods = std::iter::repeat_n((ATTACKER, flood), OUTSIDE_FLOODERS);
    for (i, (name, script)) in traffic.into_iter().chain(floods).enumerate() {
        children.push(ns_spawn(
            name,
            &script,
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
        "  attacker 203.0.113.7: curl and a SYN flood to 443 from outside; SYN, UDP and ACK floods forged from {FORGED_V4}; curl to 22 (which passes)\n"
    );
    let result = watch(
        &mut daemon,
        view::EdgeLog::new(edge_log),
        duration.map(|d| Instant::now() + d),
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

/// Shows the live view until Ctrl-C or `q` (or `deadline`); returns the
/// counts over the run: the counters' growth since the first scrape, and
/// `edge_ok`/`edge_failed` from the edge's own log.
fn watch(
    daemon: &mut Child,
    mut edge: view::EdgeLog,
    deadline: Option<Instant>,
) -> anyhow::Result<BTreeMap<String, f64>> {
    use std::io::IsTerminal as _;
    let mut view = view::View::new(format!("http://{METRICS}/metrics"));
    let interactive = deadline.is_none() && std::io::stdout().is_terminal();
    let mut terminal = interactive.then(ratatui::init);
    let result = sample_loop(daemon, &mut edge, &mut view, deadline, terminal.as_mut());
    if terminal.is_some() {
        ratatui::restore();
    }
    // The last screen stays in the scrollback (and in a test's log).
    println!("{}", view.render_text(132));
    result
}

fn sample_loop(
    daemon: &mut Child,
    edge: &mut view::EdgeLog,
    view: &mut view::View,
    deadline: Option<Instant>,
    mut terminal: Option<&mut ratatui::DefaultTerminal>,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let scrape = || {
        shell::output(
            "curl",
            &[
                "-s",
                "--max-time",
                "1",
                &format!("http://{METRICS}/metrics"),
            ],
        )
        .map(|m| summarize(&m))
        .unwrap_or_default()
    };
    let first = scrape();
    let mut previous = (Instant::now(), first.clone());
    let (mut edge_ok, mut edge_failed) = (0usize, 0usize);
    let mut rows = 0;
    while !STOP.load(Ordering::SeqCst) && deadline.is_none_or(|d| Instant::now() < d) {
        if let Some(status) = daemon.try_wait()? {
            bail!("shield exited ({status}); see its log");
        }
        if wait_a_second(terminal.is_some())? {
            break;
        }
        let now = Instant::now();
        let current = scrape();
        let seconds = now.duration_since(previous.0).as_secs_f64().max(0.001);
        let rates = current
            .iter()
            .map(|(key, value)| {
                let before = previous.1.get(key).copied().unwrap_or(0.0);
                (key.clone(), (value - before).max(0.0) / seconds)
            })
            .collect();
        let requests = edge.read_new();
        edge_ok += requests.ok();
        edge_failed += requests.failed;
        view.push(view::Second {
            rates,
            edge: requests,
            seconds,
        });
        match terminal.as_deref_mut() {
            Some(terminal) => {
                terminal
                    .draw(|frame| view.draw(frame))
                    .context("cannot draw the lab's view")?;
            }
            None => {
                if rows % 5 == 0 {
                    println!("{}", view.line());
                }
                rows += 1;
            }
        }
        previous = (now, current);
    }
    let mut totals: BTreeMap<String, f64> = previous
        .1
        .iter()
        .map(|(key, value)| (key.clone(), value - first.get(key).copied().unwrap_or(0.0)))
        .collect();
    totals.insert("edge_ok".into(), edge_ok as f64);
    totals.insert("edge_failed".into(), edge_failed as f64);
    Ok(totals)
}

/// Waits a second, watching for Ctrl-C; true when the operator asked to
/// stop. On the terminal (raw mode) Ctrl-C arrives as a key, not SIGINT.
fn wait_a_second(interactive: bool) -> anyhow::Result<bool> {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        if STOP.load(Ordering::SeqCst) {
            return Ok(true);
        }
        if !interactive {
            thread::sleep(Duration::from_millis(100));
            continue;
        }
        if event::poll(Duration::from_millis(100)).context("cannot read the terminal")? {
            if let Event::Key(key) = event::read().context("cannot read the terminal")? {
                let ctrl_c =
                    key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                if ctrl_c || key.code == KeyCode::Char('q') {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
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
    shield_tests::load_pass_all(PASS_PIN).context("the lab's pass-all XDP program")?;
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
        // So that shield's XDP_TX answers (SYN cookies) reach the peer.
        ns(
            peer,
            &[
                "bpftool", "net", "attach", "xdpdrv", "pinned", PASS_PIN, "dev", "eth0",
            ],
        )
        .context("cannot attach the pass-all XDP program to the lab's peer veth")?;
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
    // Answers to the forged source go back out of the attacker's link (and
    // die there), as they would from a host with a default route: the
    // kernel then keeps each forged SYN's request, and the listener's queue
    // fills as it does under a real flood.
    ns(
        ORIGIN,
        &[
            "ip",
            "route",
            "add",
            &format!("{FORGED_V4}/32"),
            "dev",
            "eth1",
        ],
    )?;
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
