//! End to end in network namespaces: `shield run` on the origin's veths,
//! real curl, ping, hping3 and UDP traffic from `edge` (a Cloudflare
//! address) and `attacker` (outside).

use std::{thread, time::Duration};

use shield_tests::{addr::*, require_root, require_tool, wait_for, Lab};

fn lab() -> Option<Lab> {
    if !require_root() {
        return None;
    }
    for tool in [
        "ip", "nsenter", "curl", "python3", "hping3", "ping", "bpftool",
    ] {
        require_tool(tool);
    }
    let mut lab = Lab::new().expect("create the lab namespaces");
    lab.start_servers().expect("start the origin's servers");
    Some(lab)
}

fn url(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("http://[{host}]:{port}/")
    } else {
        format!("http://{host}:{port}/")
    }
}

/// Sends `count` UDP datagrams from the attacker to the origin's `port`.
fn send_udp(lab: &Lab, target: &str, port: u16, count: usize) {
    let family = if target.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let script = format!(
        "import socket,time\ns=socket.socket(socket.{family},socket.SOCK_DGRAM)\nfor _ in range({count}):\n    s.sendto(b'shield-test',('{target}',{port}))\n    time.sleep(0.001)\n"
    );
    lab.attacker
        .exec_check(&["python3", "-c", &script])
        .expect("send UDP");
}

/// Waits for a counter to reach `expected` (counters are read from the
/// pinned per-CPU map; the last packets may still be in flight).
fn expect_counter(lab: &Lab, interface: &str, verdict: &str, reason: &str, expected: u64) {
    let mut last = 0;
    let reached = wait_for(Duration::from_secs(5), || {
        last = lab.counter(interface, verdict, reason).unwrap_or(0);
        last >= expected
    });
    assert!(
        reached.is_ok() && last == expected,
        "{interface} {verdict} {reason}: expected {expected}, got {last}"
    );
}

#[test]
fn edge_passes_attacker_is_dropped_and_other_ports_answer() {
    let Some(lab) = lab() else { return };
    let config = lab.write_config("shield.toml", "").unwrap();
    let _shield = lab.start_shield(&config).unwrap();

    for port in [80, 443] {
        assert!(
            lab.curl(&lab.edge, &url(ORIGIN_V4, port)).unwrap(),
            "edge IPv4 :{port}"
        );
        assert!(
            lab.curl(&lab.edge, &url(ORIGIN_V6, port)).unwrap(),
            "edge IPv6 :{port}"
        );
        assert!(
            !lab.curl(&lab.attacker, &url(ORIGIN_V4, port)).unwrap(),
            "attacker IPv4 :{port} must time out"
        );
        assert!(
            !lab.curl(&lab.attacker, &url(ORIGIN_V6, port)).unwrap(),
            "attacker IPv6 :{port} must time out"
        );
    }
    assert!(
        lab.curl(&lab.attacker, &url(ORIGIN_V4, 22)).unwrap(),
        "attacker :22 must still answer"
    );
    assert!(
        lab.curl(&lab.attacker, &url(ORIGIN_V6, 22)).unwrap(),
        "attacker IPv6 :22 must still answer"
    );

    // ARP and NDP resolve, ICMP passes.
    lab.attacker
        .exec_check(&["ping", "-c", "1", "-W", "2", ORIGIN_V4])
        .expect("ping over ARP");
    lab.attacker
        .exec_check(&["ping", "-6", "-c", "1", "-W", "2", ORIGIN_V6])
        .expect("ping over NDP");
    let neighbours = lab.attacker.exec_check(&["ip", "neigh", "show"]).unwrap();
    assert!(
        neighbours.contains(ORIGIN_V4)
            && neighbours.contains(ORIGIN_V6)
            && neighbours.contains("lladdr"),
        "{neighbours}"
    );

    // Counters match what was sent: let earlier TCP retransmissions die down.
    thread::sleep(Duration::from_millis(500));
    let before = lab.counter("eth1", "drop", "outside_ranges").unwrap();
    send_udp(&lab, ORIGIN_V4, 443, 25);
    send_udp(&lab, ORIGIN_V6, 443, 15);
    lab.attacker
        .exec_check(&[
            "hping3", "-q", "-S", "-p", "443", "-c", "10", "-i", "u10000", ORIGIN_V4,
        ])
        .or_else(|e| {
            if e.to_string().contains("100% packet loss") {
                Ok(String::new())
            } else {
                Err(e)
            }
        })
        .expect("hping3");
    expect_counter(&lab, "eth1", "drop", "outside_ranges", before + 50);
    assert_eq!(
        lab.counter("eth0", "drop", "outside_ranges").unwrap(),
        0,
        "edge traffic must never drop"
    );
    assert!(lab.counter("eth0", "pass", "allowed").unwrap() > 0);

    let status = lab.status().unwrap();
    for interface in status["interfaces"].as_array().unwrap() {
        assert_eq!(interface["attached"], true, "{status}");
        assert_eq!(
            interface["mode"], "native",
            "veth supports native XDP: {status}"
        );
    }
}

#[test]
fn monitor_mode_counts_would_drops_and_drops_nothing() {
    let Some(lab) = lab() else { return };
    let config = lab.write_config("monitor.toml", "enforce = false").unwrap();
    let _shield = lab.start_shield(&config).unwrap();
    assert!(
        lab.curl(&lab.attacker, &url(ORIGIN_V4, 443)).unwrap(),
        "monitor mode must not drop"
    );
    assert!(
        lab.curl(&lab.attacker, &url(ORIGIN_V6, 80)).unwrap(),
        "monitor mode must not drop"
    );
    thread::sleep(Duration::from_millis(300));
    let before = lab.counter("eth1", "would_drop", "outside_ranges").unwrap();
    assert!(before > 0, "the curls above are would-drops");
    send_udp(&lab, ORIGIN_V4, 443, 30);
    expect_counter(&lab, "eth1", "would_drop", "outside_ranges", before + 30);
    assert_eq!(lab.counter("eth1", "drop", "outside_ranges").unwrap(), 0);
}

fn link_id(lab: &Lab, interface: &str) -> u64 {
    let path = lab.pin_root.join("ifaces").join(interface).join("link");
    let output = shield_tests::check(
        "bpftool",
        &["-j", "link", "show", "pinned", path.to_str().unwrap()],
    )
    .unwrap();
    let value: serde_json::Value = serde_json::from_str(&output).unwrap();
    value["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no link id in {output}"))
}

#[test]
fn kill_9_keeps_enforcing_and_restart_readopts_without_a_window() {
    let Some(lab) = lab() else { return };
    let config = lab.write_config("shield.toml", "").unwrap();
    let mut shield = lab.start_shield(&config).unwrap();
    let link_before = link_id(&lab, "eth1");
    shield.kill_hard();

    assert!(
        !lab.curl(&lab.attacker, &url(ORIGIN_V4, 443)).unwrap(),
        "still dropped with the daemon dead"
    );
    assert!(
        lab.curl(&lab.edge, &url(ORIGIN_V4, 443)).unwrap(),
        "edge still served with the daemon dead"
    );

    // A UDP listener on the origin counts what gets through while the
    // attacker floods across the restart.
    let counter_file = lab.work_dir.join("udp-received");
    let listener_script = format!(
        "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',443))\ns.settimeout(0.2)\nn=0\nend=time.time()+8\nwhile time.time()<end:\n    try:\n        s.recv(64); n+=1\n    except socket.timeout:\n        pass\nopen('{}','w').write(str(n))\n",
        counter_file.display()
    );
    let mut listener = lab
        .origin
        .spawn(&["python3", "-c", &listener_script])
        .unwrap();
    let flood_script = format!(
        "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nend=time.time()+6\nn=0\nwhile time.time()<end:\n    s.sendto(b'x',('{ORIGIN_V4}',443)); n+=1\n    time.sleep(0.0005)\nprint(n)\n"
    );
    let flood = lab
        .attacker
        .command(&["python3", "-c", &flood_script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the flood");
    thread::sleep(Duration::from_millis(500));
    let restarted = lab.start_shield(&config).unwrap();
    assert!(
        restarted.log_text().contains("Adopted"),
        "restart must re-adopt: {}",
        restarted.log_text()
    );
    let flood = flood.wait_with_output().expect("flood finished");
    let sent: u64 = String::from_utf8_lossy(&flood.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    listener.child.wait().expect("listener finished");
    let received: u64 = std::fs::read_to_string(&counter_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(sent > 1000, "the flood sent {sent}");
    assert_eq!(
        received, 0,
        "{received} of {sent} attacker datagrams got through across the restart"
    );
    assert_eq!(
        link_id(&lab, "eth1"),
        link_before,
        "the same kernel link must stay attached"
    );
    assert!(!lab.curl(&lab.attacker, &url(ORIGIN_V4, 443)).unwrap());
}

/// The value size of the map pinned at `path`, as the kernel has it.
fn pinned_value_size(path: &std::path::Path) -> u64 {
    let output = shield_tests::check(
        "bpftool",
        &["-j", "map", "show", "pinned", path.to_str().unwrap()],
    )
    .unwrap();
    let value: serde_json::Value = serde_json::from_str(&output).unwrap();
    value["bytes_value"]
        .as_u64()
        .unwrap_or_else(|| panic!("no value size in {output}"))
}

/// Counts, on the origin's `eth1` after XDP (an AF_PACKET socket sees only
/// what the program passed), the attacker's frames to protected port 443
/// (TCP and UDP) and, as a witness that the tap sees traffic at all, its
/// UDP datagrams to the unprotected port 9. Runs until `stop` exists (and
/// half a second more, for frames in flight), then writes "protected witness".
fn tap_script(out: &std::path::Path, ready: &std::path::Path, stop: &std::path::Path) -> String {
    format!(
        r#"import os,socket,struct,time
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(3))
s.bind(('eth1',0))
s.settimeout(0.2)
open('{ready}','w').write('1')
src=socket.inet_aton('{ATTACKER_V4}')
protected=0
witness=0
end=time.time()+60
while time.time()<end:
    if os.path.exists('{stop}') and end>time.time()+0.5:
        end=time.time()+0.5
    try:
        f,a=s.recvfrom(4096)
    except socket.timeout:
        continue
    if a[2]==socket.PACKET_OUTGOING or len(f)<38 or f[12:14]!=b'\x08\x00' or f[26:30]!=src:
        continue
    l4=14+(f[14]&15)*4
    proto=f[23]
    port=struct.unpack('!H',f[l4+2:l4+4])[0]
    if proto in (6,17) and port==443:
        protected+=1
    elif proto==17 and port==9:
        witness+=1
open('{out}','w').write('%d %d'%(protected,witness))
"#,
        out = out.display(),
        ready = ready.display(),
        stop = stop.display(),
    )
}

/// An upgrade from the previous release, whose counter map has another
/// layout: the new build starts on the pins the killed old one left, swaps
/// its program into the same link and replaces only the counter map; an
/// outside flood across the switch gets nothing through.
#[test]
fn upgrade_from_the_previous_layout_replaces_the_counter_map_without_a_window() {
    let Some(previous) = shield_tests::previous_shield_binary() else {
        return;
    };
    let Some(lab) = lab() else { return };
    let config = lab.write_config("shield.toml", "").unwrap();
    let mut old = lab.start_binary(&previous, &config, &[]).unwrap();
    let link_before = link_id(&lab, "eth1");
    let counters_pin = lab.pin_root.join("ifaces/eth1/COUNTERS");
    let old_value_size = pinned_value_size(&counters_pin);
    old.kill_hard();
    assert!(
        !lab.curl(&lab.attacker, &url(ORIGIN_V4, 443)).unwrap(),
        "the old program still drops with its daemon dead"
    );

    let tap_out = lab.work_dir.join("tap-counts");
    let tap_ready = lab.work_dir.join("tap-ready");
    let stop = lab.work_dir.join("stop-flood");
    let mut tap = lab
        .origin
        .spawn(&["python3", "-c", &tap_script(&tap_out, &tap_ready, &stop)])
        .unwrap();
    wait_for(Duration::from_secs(5), || tap_ready.exists()).expect("the tap came up");
    // UDP to 443, with every tenth datagram to the unprotected port 9, and
    // TCP SYNs to 443 alongside, from before the new start until after it.
    let udp_flood = format!(
        "import os,socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nend=time.time()+60\nn=0\nwhile time.time()<end and not os.path.exists('{}'):\n    s.sendto(b'x',('{ORIGIN_V4}',9 if n%10==0 else 443)); n+=1\n    time.sleep(0.0005)\nprint(n)\n",
        stop.display()
    );
    let udp = lab
        .attacker
        .command(&["python3", "-c", &udp_flood])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the UDP flood");
    let syn = lab
        .attacker
        .command(&[
            "hping3", "-q", "-S", "-p", "443", "-c", "30000", "-i", "u2000", ORIGIN_V4,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the SYN flood");
    thread::sleep(Duration::from_millis(700));

    let new = lab.start_shield(&config).unwrap();
    let log = new.log_text();
    assert!(
        log.contains("Adopted"),
        "the new build must re-adopt: {log}"
    );
    assert!(
        log.contains("COUNTERS") && log.contains("counts restart"),
        "the replaced counter map must be logged: {log}"
    );
    // The flood goes on against the new program for a while.
    thread::sleep(Duration::from_millis(1500));
    std::fs::write(&stop, "1").unwrap();

    let udp = udp.wait_with_output().expect("UDP flood finished");
    let sent: u64 = String::from_utf8_lossy(&udp.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let mut syn = syn;
    let _ = syn.kill();
    let _ = syn.wait();
    tap.child.wait().expect("tap finished");
    let counts = std::fs::read_to_string(&tap_out).expect("tap counts");
    let (protected, witness) = counts
        .trim()
        .split_once(' ')
        .map(|(p, w)| (p.parse::<u64>().unwrap(), w.parse::<u64>().unwrap()))
        .expect("two counts");
    eprintln!("upgrade under flood: {sent} UDP sent, {witness} to port 9 seen at the tap, {protected} to 443");
    assert!(sent > 1000, "the UDP flood sent {sent}");
    assert!(
        witness > sent / 20,
        "the tap saw only {witness} of the ~{} datagrams to port 9",
        sent / 10
    );
    assert_eq!(
        protected, 0,
        "{protected} flood packets to port 443 got through across the upgrade"
    );
    assert_eq!(
        link_id(&lab, "eth1"),
        link_before,
        "the same kernel link must stay attached"
    );
    let new_value_size = pinned_value_size(&counters_pin);
    assert_ne!(
        old_value_size, new_value_size,
        "the previous release must have another counter layout, or this test proves nothing"
    );
    assert!(
        !lab.pin_root.join("ifaces/eth1/COUNTERS-retired").exists(),
        "the retired pin is removed once the new program runs"
    );
    // The new counter map counts the rest of the flood.
    assert!(lab.counter("eth1", "drop", "outside_ranges").unwrap() > 0);
    assert!(lab.curl(&lab.edge, &url(ORIGIN_V4, 443)).unwrap());
}

#[test]
fn sigterm_leaves_enforcement_and_detach_removes_it() {
    let Some(lab) = lab() else { return };
    let config = lab.write_config("shield.toml", "").unwrap();
    let mut shield = lab.start_shield(&config).unwrap();
    shield.stop().unwrap();
    assert!(
        !lab.curl(&lab.attacker, &url(ORIGIN_V4, 80)).unwrap(),
        "pins keep enforcing after exit"
    );
    let status = lab.status().unwrap();
    assert_eq!(
        status["interfaces"].as_array().unwrap().len(),
        2,
        "{status}"
    );

    let output = lab.shield(&["detach", "--iface", "eth1"]).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        lab.curl(&lab.attacker, &url(ORIGIN_V4, 80)).unwrap(),
        "detached interface must pass"
    );
    let output = lab.shield(&["detach"]).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!lab.pin_root.exists(), "detach removes every pin");
    let links = lab.origin.exec_check(&["ip", "link", "show"]).unwrap();
    assert!(!links.contains("xdp"), "no XDP left: {links}");
}

/// Runs `shield run` with a config it should refuse; the run's stderr, and
/// whether it succeeded. A shield that starts anyway is stopped after a
/// minute (the test then fails on its output) instead of hanging the suite.
fn run_with(lab: &Lab, config: &str) -> (bool, String) {
    let path = lab.work_dir.join("one-shot.toml");
    std::fs::write(&path, config).unwrap();
    let binary = shield_tests::shield_binary().unwrap();
    let output = lab
        .origin
        .command(&[
            "timeout",
            "60",
            binary.to_str().unwrap(),
            "run",
            "--config",
            path.to_str().unwrap(),
        ])
        .env("SHIELD_PIN_ROOT", &lab.pin_root)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[track_caller]
fn assert_nothing_attached(lab: &Lab) {
    let links = lab.origin.exec_check(&["ip", "link", "show"]).unwrap();
    assert!(!links.contains("xdp"), "nothing may stay attached: {links}");
}

#[test]
fn missing_interface_or_bad_config_attaches_nothing() {
    let Some(lab) = lab() else { return };
    let (ok, stderr) = run_with(
        &lab,
        "[xdp]\ninterfaces = [\"eth0\", \"nope0\"]\n[ranges]\nrefresh = \"off\"\n",
    );
    assert!(!ok);
    assert!(
        stderr.contains("nope0"),
        "the error must name the interface: {stderr}"
    );
    assert_nothing_attached(&lab);
    assert!(lab.curl(&lab.attacker, &url(ORIGIN_V4, 443)).unwrap());

    let (ok, stderr) = run_with(&lab, "[xdp]\ninterfaces = [\"eth0\"]\nmode = \"turbo\"\n");
    assert!(!ok);
    assert!(
        stderr.contains("mode") && stderr.contains("turbo"),
        "the error must name the key: {stderr}"
    );
    assert!(
        !lab.pin_root.exists()
            || lab.status().unwrap()["interfaces"]
                .as_array()
                .unwrap()
                .is_empty()
    );

    // A pin left by a shield with another map layout (a POLICY value of 8
    // bytes) needs no `shield detach`: it is replaced by a new map, filled
    // before the program runs, and the replacement is logged.
    std::fs::create_dir_all(&lab.pin_root).unwrap();
    let stale = lab.pin_root.join("POLICY");
    shield_tests::check(
        "bpftool",
        &[
            "map",
            "create",
            stale.to_str().unwrap(),
            "type",
            "array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "1",
            "name",
            "POLICY",
        ],
    )
    .unwrap();
    let config = lab.write_config("replace.toml", "").unwrap();
    let mut shield = lab.start_shield(&config).unwrap();
    let log = shield.log_text();
    assert!(
        log.contains("POLICY") && log.contains("another layout"),
        "the replacement must be logged: {log}"
    );
    assert!(
        !lab.curl(&lab.attacker, &url(ORIGIN_V4, 443)).unwrap(),
        "the new POLICY is filled before the program runs"
    );
    assert!(lab.curl(&lab.edge, &url(ORIGIN_V4, 443)).unwrap());
    assert!(!lab.pin_root.join("POLICY-retired").exists());
    shield.stop().unwrap();
    let detach = lab.shield(&["detach"]).unwrap();
    assert!(detach.status.success(), "{detach:?}");
    assert_nothing_attached(&lab);
    let _ = std::fs::remove_dir_all(&lab.pin_root);

    // A failure on the second interface rolls back the first, fresh one.
    let (ok, stderr) = run_with(
        &lab,
        "[xdp]\ninterfaces = [\"eth0\", \"lo\"]\nmode = \"native\"\n",
    );
    if !ok {
        assert!(stderr.contains("lo"), "{stderr}");
        assert_nothing_attached(&lab);
        assert!(
            !lab.pin_root.exists(),
            "rollback must remove the pins it made"
        );
    }
}

/// The value of the first sample of `name` whose labels include every
/// `key="value"` pair given.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[test]
fn metrics_endpoint_reports_drops_by_reason_read_at_scrape_time() {
    let Some(lab) = lab() else { return };
    let config = lab.write_config("shield.toml", "").unwrap();
    let shield = lab.start_shield(&config).unwrap();
    let scrape = || lab.metrics().expect("scrape /metrics");
    let drops = [
        ("interface", "eth1"),
        ("verdict", "drop"),
        ("reason", "outside_ranges"),
    ];
    let before = sample(&scrape(), "shield_xdp_packets_total", &drops).unwrap_or(0.0);
    send_udp(&lab, ORIGIN_V4, 443, 20);
    send_udp(&lab, ORIGIN_V6, 443, 7);
    let mut metrics = String::new();
    wait_for(Duration::from_secs(5), || {
        metrics = scrape();
        sample(&metrics, "shield_xdp_packets_total", &drops) == Some(before + 27.0)
    })
    .unwrap_or_else(|_| panic!("drops did not reach {}: {metrics}", before + 27.0));
    let bytes = sample(&metrics, "shield_xdp_bytes_total", &drops).unwrap();
    assert!(bytes >= 27.0 * 42.0, "bytes counted: {bytes}");
    for interface in ["eth0", "eth1"] {
        assert_eq!(
            sample(
                &metrics,
                "shield_xdp_attached",
                &[("interface", interface), ("mode", "native")]
            ),
            Some(1.0),
            "{metrics}"
        );
    }
    // The drop log names the attacker, and the kernel's budget caps it:
    // at most 20 events per CPU per second whatever the flood.
    let started = std::time::Instant::now();
    send_udp(&lab, ORIGIN_V4, 443, 3000);
    thread::sleep(Duration::from_millis(300));
    let seconds = started.elapsed().as_secs() + 2;
    let log = shield.log_text();
    let logged = log
        .lines()
        .filter(|l| l.contains("shield::drops") && l.contains("source=203.0.113.7"))
        .count() as u64;
    assert!(log.contains("outside_ranges"), "{log}");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert!(logged >= 1, "drop events must be logged: {log}");
    assert!(
        logged <= 20 * cpus * seconds,
        "{logged} events in {seconds}s over the kernel's budget"
    );
    assert!(
        metrics.contains("# TYPE shield_xdp_packets counter"),
        "{metrics}"
    );
    assert!(metrics.contains("# HELP shield_xdp_packets"), "{metrics}");
    assert!(metrics.trim_end().ends_with("# EOF"));
}

#[test]
fn generic_mode_and_auto_fallback_on_a_bridge_without_native_xdp() {
    let Some(lab) = lab() else { return };
    // veth has native XDP; forcing generic must still enforce.
    let config = lab
        .write_config("generic.toml", "mode = \"generic\"")
        .unwrap();
    let mut shield = lab.start_shield(&config).unwrap();
    assert!(
        !lab.curl(&lab.attacker, &url(ORIGIN_V4, 443)).unwrap(),
        "generic mode must drop"
    );
    assert!(lab.curl(&lab.edge, &url(ORIGIN_V4, 443)).unwrap());
    let status = lab.status().unwrap();
    for interface in status["interfaces"].as_array().unwrap() {
        assert_eq!(interface["mode"], "generic", "{status}");
    }
    shield.stop().unwrap();
    assert!(lab.shield(&["detach"]).unwrap().status.success());

    // A bridge has no native XDP: auto falls back and says why.
    lab.origin
        .exec_check(&["ip", "link", "add", "br-test", "type", "bridge"])
        .unwrap();
    lab.origin
        .exec_check(&["ip", "link", "set", "br-test", "up"])
        .unwrap();
    let path = lab.work_dir.join("auto.toml");
    std::fs::write(&path, "[xdp]\ninterfaces = [\"br-test\"]\nmode = \"auto\"\n[ranges]\nrefresh = \"off\"\n[metrics]\nlisten = \"127.0.0.1:9470\"\n").unwrap();
    let shield = lab.start_shield(&path).unwrap();
    let log = shield.log_text();
    assert!(
        log.contains("falling back to generic"),
        "the fallback and its reason must be logged: {log}"
    );
    let status = lab.status().unwrap();
    assert_eq!(status["interfaces"][0]["mode"], "generic", "{status}");
    assert_eq!(status["interfaces"][0]["attached"], true, "{status}");

    // Native only: refused, with the interface named, nothing attached.
    drop(shield);
    assert!(lab.shield(&["detach"]).unwrap().status.success());
    std::fs::write(
        &path,
        "[xdp]\ninterfaces = [\"br-test\"]\nmode = \"native\"\n",
    )
    .unwrap();
    let output = lab
        .shield(&["run", "--config", path.to_str().unwrap()])
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("br-test") && stderr.contains("native"),
        "{stderr}"
    );
    let links = lab
        .origin
        .exec_check(&["ip", "link", "show", "br-test"])
        .unwrap();
    assert!(!links.contains("xdp"), "{links}");
}

#[test]
fn runs_with_only_the_capabilities_of_the_systemd_unit() {
    let Some(lab) = lab() else { return };
    require_tool("setpriv");
    let unit = include_str!("../../deploy/systemd/shield.service");
    let caps = unit
        .lines()
        .find_map(|line| line.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds its capabilities");
    let mut bounding = String::from("-all");
    for cap in caps.split_whitespace() {
        bounding.push_str(&format!(
            ",+{}",
            cap.trim_start_matches("CAP_").to_lowercase()
        ));
    }
    // Root with only the unit's capabilities, and NoNewPrivileges.
    let wrapper = [
        "setpriv",
        "--bounding-set",
        &bounding,
        "--no-new-privs",
        "--",
    ];
    let config = lab.write_config("shield.toml", "").unwrap();
    let shield = lab.start_shield_with(&config, &wrapper).unwrap();
    assert!(lab.curl(&lab.edge, &url(ORIGIN_V4, 443)).unwrap());
    assert!(
        !lab.curl(&lab.attacker, &url(ORIGIN_V4, 443)).unwrap(),
        "must enforce with the unit's capabilities"
    );
    let status = lab.status().unwrap();
    assert_eq!(status["interfaces"][0]["attached"], true, "{status}");
    // It really ran without the others (CapBnd is a hex mask in /proc).
    let proc_status =
        std::fs::read_to_string(format!("/proc/{}/status", shield.pid())).unwrap_or_default();
    let bnd = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(str::trim)
        .unwrap_or("");
    assert_ne!(
        bnd, "000001ffffffffff",
        "the bounding set was not applied: {proc_status}"
    );
}

#[test]
fn systemd_readiness_is_sent_only_after_xdp_is_attached() {
    let Some(lab) = lab() else { return };
    let socket_path = lab.work_dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let config = lab.write_config("shield.toml", "").unwrap();
    let bin = shield_tests::shield_binary().unwrap();
    let mut child = lab
        .origin
        .command(&[
            bin.to_str().unwrap(),
            "run",
            "--config",
            config.to_str().unwrap(),
        ])
        .env("SHIELD_PIN_ROOT", &lab.pin_root)
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buffer = [0u8; 256];
    // A socket with a receive timeout answers EINTR even under SA_RESTART
    // when any signal handler in this test process runs; that is not an
    // answer from shield, so wait on.
    let received = loop {
        match socket.recv(&mut buffer) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    // What systemd would see at the moment shield says it is ready.
    let status = lab.status();
    let _ = child.kill();
    let _ = child.wait();
    let message = String::from_utf8_lossy(&buffer[..received.expect("shield must notify systemd")])
        .into_owned();
    assert!(message.contains("READY=1"), "{message}");
    let status = status.unwrap();
    let interfaces = status["interfaces"].as_array().unwrap();
    assert_eq!(interfaces.len(), 2, "{status}");
    assert!(
        interfaces.iter().all(|i| i["attached"] == true),
        "ready before attach: {status}"
    );
}

#[test]
fn the_daemon_refreshes_applies_and_caches_a_new_range_list_without_dropping_the_edge() {
    let Some(lab) = lab() else { return };
    // Cloudflare's list without 131.0.72.0/22, under a new etag.
    let snapshot = include_str!("../../shield-userspace/data/cloudflare-ips-api.json");
    let mut feed: serde_json::Value = serde_json::from_str(snapshot).unwrap();
    let v4 = feed["result"]["ipv4_cidrs"].as_array_mut().unwrap();
    v4.retain(|p| p != "131.0.72.0/22");
    assert_eq!(v4.len(), 14);
    feed["result"]["etag"] = "e2e-etag-2".into();
    let feed_path = lab.work_dir.join("feed.json");
    std::fs::write(&feed_path, feed.to_string()).unwrap();
    let cache = lab.work_dir.join("ranges.json");
    let config = lab.work_dir.join("refresh.toml");
    std::fs::write(
        &config,
        format!(
            "[xdp]\ninterfaces = [\"eth0\", \"eth1\"]\n[ranges]\nsources = [\"{}\"]\nrefresh = \"1m\"\ncache = \"{}\"\n",
            feed_path.display(),
            cache.display()
        ),
    )
    .unwrap();
    let _shield = lab.start_shield(&config).unwrap();
    let scrape = || lab.metrics().unwrap_or_default();
    assert!(
        scrape().contains("shield_ranges_prefixes{family=\"ipv4\"} 15"),
        "starts from the snapshot"
    );
    // The first refresh comes within 30 s of start (jittered); the edge is
    // served all along.
    let mut metrics = String::new();
    let refreshed = wait_for(Duration::from_secs(45), || {
        assert!(
            lab.curl(&lab.edge, &url(ORIGIN_V4, 443)).unwrap(),
            "the edge must stay served"
        );
        metrics = scrape();
        metrics.contains("shield_ranges_refresh_total{result=\"updated\"} 1")
    });
    assert!(refreshed.is_ok(), "no refresh applied: {metrics}");
    assert!(
        metrics.contains("shield_ranges_prefixes{family=\"ipv4\"} 14"),
        "{metrics}"
    );
    let cached = std::fs::read_to_string(&cache).expect("the cache is written");
    assert!(
        cached.contains("e2e-etag-2") && !cached.contains("131.0.72.0/22"),
        "{cached}"
    );
    let output = lab.shield(&["status"]).unwrap();
    let status = String::from_utf8_lossy(&output.stdout);
    assert!(
        status.contains("allowed prefixes: 21"),
        "the kernel holds the new set: {status}"
    );
}

#[test]
fn sighup_reapplies_extra_allow_and_a_bad_config_changes_nothing() {
    let Some(lab) = lab() else { return };
    let config = lab.write_config("shield.toml", "").unwrap();
    let shield = lab.start_shield(&config).unwrap();
    assert!(!lab.curl(&lab.attacker, &url(ORIGIN_V4, 443)).unwrap());
    let base = std::fs::read_to_string(&config).unwrap();
    let reload = |text: &str, expect_log: &str| {
        std::fs::write(&config, text).unwrap();
        let before = shield.log_text().matches(expect_log).count();
        shield.signal(libc::SIGHUP);
        wait_for(Duration::from_secs(10), || {
            shield.log_text().matches(expect_log).count() > before
        })
        .unwrap_or_else(|_| panic!("no '{expect_log}' after SIGHUP: {}", shield.log_text()));
    };

    // The attacker's address in extra_allow: it passes after SIGHUP.
    let allowed = base.replace(
        "[ranges]\n",
        "[ranges]\nextra_allow = [\"203.0.113.7/32\"]\n",
    );
    reload(&allowed, "reloaded");
    assert!(
        lab.curl(&lab.attacker, &url(ORIGIN_V4, 443)).unwrap(),
        "extra_allow must apply on SIGHUP"
    );

    // A broken config is refused whole: the running state stays.
    reload(
        "[xdp]\ninterfaces = [\"eth0\"]\nenforce = maybe\n",
        "reload refused",
    );
    assert!(
        lab.curl(&lab.attacker, &url(ORIGIN_V4, 443)).unwrap(),
        "a bad config must change nothing"
    );

    // Back without it: dropped again once the reload completes.
    reload(&base, "reloaded");
    assert!(
        !lab.curl(&lab.attacker, &url(ORIGIN_V4, 443)).unwrap(),
        "removal must apply on SIGHUP"
    );
    assert!(lab.curl(&lab.edge, &url(ORIGIN_V4, 443)).unwrap());
}

#[test]
fn shield_mounts_bpffs_when_the_host_has_not() {
    let Some(lab) = lab() else { return };
    require_tool("unshare");
    // A private mount namespace without bpffs at /sys/fs/bpf; its pins go
    // away with it when shield exits.
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        "umount /sys/fs/bpf && exec \"$0\" \"$@\"",
    ];
    let config = lab.write_config("shield.toml", "").unwrap();
    let shield = lab.start_shield_with(&config, &wrapper).unwrap();
    assert!(
        shield.log_text().contains("mounted bpffs"),
        "{}",
        shield.log_text()
    );
    assert!(
        !lab.curl(&lab.attacker, &url(ORIGIN_V4, 443)).unwrap(),
        "enforcing"
    );
    assert!(lab.curl(&lab.edge, &url(ORIGIN_V4, 443)).unwrap());
}

/// A second address of the origin, the kind a DNS-only (grey-cloud)
/// record points at, on the attacker's link.
const GREY_V4: &str = "192.0.2.50";
const GREY_V6: &str = "2001:db8:1::50";

#[test]
fn protected_destinations_leave_the_grey_address_open() {
    let Some(lab) = lab() else { return };
    for (family, address, len) in [("-4", GREY_V4, 32), ("-6", GREY_V6, 128)] {
        let with_len = format!("{address}/{len}");
        let mut add = vec!["ip", family, "addr", "add", &with_len, "dev", "eth1"];
        if family == "-6" {
            add.push("nodad");
        }
        lab.origin.exec_check(&add).unwrap();
        lab.attacker
            .exec_check(&["ip", family, "route", "add", &with_len, "dev", "eth0"])
            .unwrap();
    }
    let config = lab
        .write_config(
            "shield.toml",
            &format!("protected_destinations = [\"{ORIGIN_V4}/32\", \"{ORIGIN_V6}/128\", \"198.18.0.1/32\"]\n"),
        )
        .unwrap();
    let shield = lab.start_shield(&config).unwrap();
    // The entry no interface holds is named, not refused.
    assert!(
        wait_for(Duration::from_secs(5), || shield
            .log_text()
            .contains("198.18.0.1/32"))
        .is_ok(),
        "no warning naming the non-local entry: {}",
        shield.log_text()
    );
    for port in [80, 443] {
        for (protected, grey) in [(ORIGIN_V4, GREY_V4), (ORIGIN_V6, GREY_V6)] {
            assert!(
                lab.curl(&lab.attacker, &url(grey, port)).unwrap(),
                "attacker to the grey {grey}:{port} must answer"
            );
            assert!(
                !lab.curl(&lab.attacker, &url(protected, port)).unwrap(),
                "attacker to the proxied {protected}:{port} must time out"
            );
            assert!(
                lab.curl(&lab.edge, &url(protected, port)).unwrap(),
                "edge to {protected}:{port}"
            );
        }
    }
    assert!(
        lab.counter("eth1", "pass", "unprotected_destination")
            .unwrap()
            >= 4
    );
    assert!(lab.counter("eth1", "drop", "outside_ranges").unwrap() > 0);
    assert_eq!(
        lab.counter("eth0", "pass", "unprotected_destination")
            .unwrap(),
        0
    );
    let status = lab.shield(&["status"]).unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!("protected destinations: {ORIGIN_V4}/32")),
        "{text}"
    );
    let classify = lab
        .shield(&[
            "classify",
            ATTACKER_V4,
            "--destination",
            GREY_V4,
            "--config",
            config.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&classify.stdout).trim(),
        "pass unprotected_destination"
    );

    // SIGHUP to the other scope: the grey address is the protected one now.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("\"{ORIGIN_V4}/32\", \"{ORIGIN_V6}/128\""),
        &format!("\"{GREY_V4}/32\", \"{GREY_V6}/128\""),
    );
    std::fs::write(&config, text).unwrap();
    let before = shield.log_text().matches("reloaded").count();
    shield.signal(libc::SIGHUP);
    wait_for(Duration::from_secs(10), || {
        shield.log_text().matches("reloaded").count() > before
    })
    .unwrap_or_else(|_| panic!("no reload after SIGHUP: {}", shield.log_text()));
    for (protected, grey) in [(GREY_V4, ORIGIN_V4), (GREY_V6, ORIGIN_V6)] {
        assert!(
            lab.curl(&lab.attacker, &url(grey, 443)).unwrap(),
            "after SIGHUP {grey}:443 is open"
        );
        assert!(
            !lab.curl(&lab.attacker, &url(protected, 443)).unwrap(),
            "after SIGHUP {protected}:443 is protected"
        );
    }
}
