//! In-range floods end to end in network namespaces: the edge's real
//! handshakes completing through XDP SYN cookies (the kernel taking the
//! returning ACK), a forged flood from a Cloudflare address while the edge
//! keeps being served, a `kill -9` in the middle of it, and the sysctls
//! that "always" set put back by `shield detach`.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use shield_tests::{addr::*, require_root, require_tool, wait_for, Lab, Netns};

/// A Cloudflare address the attacker forges.
const FORGED_V4: &str = "173.245.48.99";

fn lab() -> Option<Lab> {
    let mut lab = bare_lab()?;
    lab.start_servers().expect("start the origin's servers");
    Some(lab)
}

/// The lab with no servers on the origin yet.
fn bare_lab() -> Option<Lab> {
    if !require_root() {
        return None;
    }
    for tool in ["ip", "nsenter", "curl", "python3", "hping3", "bpftool"] {
        require_tool(tool);
    }
    let lab = Lab::new().expect("create the lab namespaces");
    lab.pass_all_on_peers()
        .expect("a pass-all XDP program on the peers' veths");
    Some(lab)
}

fn sysctl(netns: &Netns, name: &str) -> String {
    netns
        .exec_check(&["cat", &format!("/proc/sys/net/ipv4/{name}")])
        .unwrap()
        .trim()
        .to_owned()
}

/// Counts on the origin's `eth0`, after XDP (an AF_PACKET socket sees only
/// what the program passed), the edge's SYNs to 443 and, as a witness that
/// the tap sees the connections at all, its other segments to 443.
fn tap_script(out: &Path, ready: &Path, stop: &Path) -> String {
    format!(
        r#"import os,socket,struct,time
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(3))
s.bind(('eth0',0))
s.settimeout(0.2)
open('{ready}','w').write('1')
src=socket.inet_aton('{EDGE_V4}')
syns=0
others=0
end=time.time()+60
while time.time()<end:
    if os.path.exists('{stop}') and end>time.time()+0.5:
        end=time.time()+0.5
    try:
        f,a=s.recvfrom(4096)
    except socket.timeout:
        continue
    if a[2]==socket.PACKET_OUTGOING or len(f)<54 or f[12:14]!=b'\x08\x00' or f[26:30]!=src or f[23]!=6:
        continue
    l4=14+(f[14]&15)*4
    port=struct.unpack('!H',f[l4+2:l4+4])[0]
    if port!=443:
        continue
    if f[l4+13]&0x12==0x02:
        syns+=1
    else:
        others+=1
open('{out}','w').write('%d %d'%(syns,others))
"#,
        out = out.display(),
        ready = ready.display(),
        stop = stop.display(),
    )
}

const SITE: &str = "origin.test";

/// shield's TLS site on the origin's 443 in front of an upstream on
/// 127.0.0.1:8080, requiring the zone's client certificate; returns the
/// config (with `xdp_extra` in `[xdp]`) and the upstream.
fn mtls_site(lab: &Lab, xdp_extra: &str) -> (std::path::PathBuf, shield_tests::Background) {
    let dir = &lab.work_dir;
    shield_tests::pki::mtls_site(dir, SITE).unwrap();
    let config = lab.write_config("shield.toml", xdp_extra).unwrap();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&shield_tests::pki::site_toml(
        dir,
        SITE,
        "http://127.0.0.1:8080",
    ));
    std::fs::write(&config, text).unwrap();
    let upstream = lab
        .origin
        .spawn(&[
            "python3",
            "-m",
            "http.server",
            "8080",
            "--bind",
            "127.0.0.1",
            "--directory",
            "/",
        ])
        .unwrap();
    (config, upstream)
}

/// One mTLS request from the edge with the zone's client certificate;
/// the HTTP status, or 0 when none came.
fn mtls_get(lab: &Lab) -> u32 {
    let args = shield_tests::pki::edge_curl_args(&lab.work_dir, SITE, ORIGIN_V4);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = lab.edge.exec(&args).unwrap();
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn under_always_the_edge_connects_through_cookies_and_the_kernel_never_sees_its_syns() {
    let Some(lab) = bare_lab() else { return };
    assert_eq!(sysctl(&lab.origin, "tcp_syncookies"), "1");
    let timestamps_before = sysctl(&lab.origin, "tcp_timestamps");
    let (config, _upstream) = mtls_site(&lab, "syn_cookies = \"always\"\n");
    let mut shield = lab.start_shield(&config).unwrap();
    assert_eq!(sysctl(&lab.origin, "tcp_syncookies"), "2", "always sets it");
    assert_eq!(sysctl(&lab.origin, "tcp_timestamps"), "2");
    wait_for(Duration::from_secs(10), || mtls_get(&lab) == 200).expect("the site serves");
    let metrics = lab
        .origin
        .exec_check(&["curl", "-sS", "http://127.0.0.1:9469/metrics"])
        .unwrap();
    assert!(
        metrics.contains("\nshield_xdp_syn_cookies_active 1\n"),
        "{metrics}"
    );

    let out = lab.work_dir.join("tap");
    let ready = lab.work_dir.join("tap-ready");
    let stop = lab.work_dir.join("tap-stop");
    let mut tap = lab
        .origin
        .spawn(&["python3", "-c", &tap_script(&out, &ready, &stop)])
        .unwrap();
    wait_for(Duration::from_secs(10), || ready.exists()).expect("the tap starts");
    let answered_before = lab.counter("eth0", "answered", "syn_cookie").unwrap();
    let requests = 20;
    for i in 0..requests {
        assert_eq!(mtls_get(&lab), 200, "mTLS request {i} through a cookie");
    }
    std::fs::write(&stop, "1").unwrap();
    tap.child.wait().unwrap();
    let counts = std::fs::read_to_string(&out).unwrap();
    let (syns, others) = counts.trim().split_once(' ').unwrap();
    let (syns, others): (u64, u64) = (syns.parse().unwrap(), others.parse().unwrap());
    assert_eq!(syns, 0, "XDP answered every SYN; the kernel saw {syns}");
    assert!(
        others >= requests * 3,
        "the tap saw the connections: {others}"
    );
    let answered = lab.counter("eth0", "answered", "syn_cookie").unwrap() - answered_before;
    assert!(
        answered >= requests,
        "{answered} cookies for {requests} requests"
    );
    // A connection made from a cookie keeps timestamps and window scaling:
    // the kernel took them back from the timestamp XDP sent, so its own
    // segments after the handshake carry timestamps and a scaled window.
    let pcap = lab.work_dir.join("edge.pcap");
    let dump = lab
        .edge
        .spawn(&[
            "tcpdump",
            "-i",
            "eth0",
            "-nn",
            "-U",
            "-w",
            pcap.to_str().unwrap(),
            "tcp port 443",
        ])
        .unwrap();
    thread::sleep(Duration::from_millis(700));
    assert_eq!(mtls_get(&lab), 200);
    thread::sleep(Duration::from_millis(300));
    drop(dump);
    let text = shield_tests::check("tcpdump", &["-r", pcap.to_str().unwrap(), "-nn"]).unwrap();
    let from_origin: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&format!("{ORIGIN_V4}.443 >")))
        .collect();
    assert!(
        from_origin
            .first()
            .is_some_and(|l| l.contains("Flags [S.]") && l.contains("wscale")),
        "the SYN-ACK offers scaling: {text}"
    );
    let after: Vec<&&str> = from_origin.iter().skip(1).collect();
    assert!(!after.is_empty(), "{text}");
    for line in after {
        assert!(line.contains("TS val"), "timestamps kept: {line}");
        let window: u32 = line
            .split("win ")
            .nth(1)
            .and_then(|w| w.split(',').next())
            .and_then(|w| w.trim().parse().ok())
            .unwrap_or(u32::MAX);
        assert!(window < 4096, "the window is scaled: {line}");
    }

    // A reload to "flood" puts the sysctls back; back to "always" sets them.
    let flood = lab.write_config("flood.toml", "").unwrap();
    std::fs::copy(&config, lab.work_dir.join("always.toml")).unwrap();
    let site = std::fs::read_to_string(&config).unwrap();
    let site = &site[site.find("[[site]]").unwrap()..];
    let mut text = std::fs::read_to_string(&flood).unwrap();
    text.push_str(site);
    std::fs::write(&config, text).unwrap();
    shield.signal(libc::SIGHUP);
    wait_for(Duration::from_secs(10), || {
        sysctl(&lab.origin, "tcp_syncookies") == "1"
    })
    .expect("a reload to flood restores tcp_syncookies");
    assert_eq!(sysctl(&lab.origin, "tcp_timestamps"), timestamps_before);
    std::fs::copy(lab.work_dir.join("always.toml"), &config).unwrap();
    shield.signal(libc::SIGHUP);
    wait_for(Duration::from_secs(10), || {
        sysctl(&lab.origin, "tcp_syncookies") == "2"
    })
    .expect("a reload to always sets it again");
    assert_eq!(mtls_get(&lab), 200);

    shield.kill_hard();
    let output = lab.shield(&["detach"]).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        sysctl(&lab.origin, "tcp_syncookies"),
        "1",
        "detach restores it"
    );
    assert_eq!(sysctl(&lab.origin, "tcp_timestamps"), timestamps_before);
}

/// Sends SYNs from `FORGED_V4` to the origin's 443 for `seconds`, at about
/// ten thousand a second.
fn forged_flood(lab: &Lab, seconds: u64) -> std::process::Child {
    let count = (seconds * 10_000).to_string();
    lab.attacker
        .command(&[
            "hping3", "-q", "-S", "-p", "443", "-a", FORGED_V4, "-i", "u100", "-c", &count,
            ORIGIN_V4,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start hping3")
}

#[test]
fn a_forged_in_range_flood_is_answered_in_xdp_while_the_edge_is_served_across_a_kill_9() {
    let Some(lab) = lab() else { return };
    // The default: cookies while the listener's SYN queue is full, which
    // the flood sees to (the origin's server listens with a backlog of 5).
    // The forged source routes out of the attacker's link, as a host with
    // a default route would send its answers: the kernel keeps each forged
    // SYN's request until it times out, and the queue fills.
    lab.origin
        .exec_check(&[
            "ip",
            "route",
            "add",
            &format!("{FORGED_V4}/32"),
            "dev",
            "eth1",
        ])
        .unwrap();
    let config = lab.write_config("shield.toml", "").unwrap();
    let mut shield = lab.start_shield(&config).unwrap();
    assert_eq!(
        sysctl(&lab.origin, "tcp_syncookies"),
        "1",
        "flood leaves it"
    );
    let mut flood = forged_flood(&lab, 8);
    thread::sleep(Duration::from_millis(500));
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut served = 0;
    let mut restarted = false;
    while Instant::now() < deadline {
        assert!(
            lab.curl(&lab.edge, &format!("http://{ORIGIN_V4}:443/"))
                .unwrap(),
            "the edge is served during the flood ({served} so far)"
        );
        served += 1;
        if served == 10 {
            shield.kill_hard();
        }
        if served == 15 {
            shield = lab.start_shield(&config).unwrap();
            assert!(
                shield.log_text().contains("Adopted"),
                "the restart re-adopts: {}",
                shield.log_text()
            );
            restarted = true;
        }
    }
    let _ = flood.kill();
    let _ = flood.wait();
    assert!(restarted && served >= 20, "served {served}");
    let answered = lab.counter("eth1", "answered", "syn_cookie").unwrap();
    assert!(
        answered > 10_000,
        "the flood was answered in XDP: {answered}"
    );
    assert_eq!(lab.counter("eth1", "drop", "outside_ranges").unwrap(), 0);
}

#[test]
fn stray_acks_and_udp_from_inside_are_dropped() {
    let Some(lab) = lab() else { return };
    let config = lab.write_config("shield.toml", "").unwrap();
    let shield = lab.start_shield(&config).unwrap();
    // ACKs from a Cloudflare address for no connection: a forged ACK flood.
    lab.attacker
        .exec_check(&[
            "hping3", "-q", "-A", "-p", "443", "-a", FORGED_V4, "-i", "u1000", "-c", "50",
            ORIGIN_V4,
        ])
        .or_else(|e| {
            if e.to_string().contains("100% packet loss") {
                Ok(String::new())
            } else {
                Err(e)
            }
        })
        .unwrap();
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor _ in range(30):\n    s.sendto(b'quic?',('{ORIGIN_V4}',443))\n"
    );
    lab.edge.exec_check(&["python3", "-c", &script]).unwrap();
    let reached = wait_for(Duration::from_secs(5), || {
        lab.counter("eth1", "drop", "bad_ack").unwrap_or(0) >= 50
            && lab.counter("eth0", "drop", "udp_from_ranges").unwrap_or(0) >= 30
    });
    assert!(
        reached.is_ok(),
        "bad_ack {} udp_from_ranges {}",
        lab.counter("eth1", "drop", "bad_ack").unwrap(),
        lab.counter("eth0", "drop", "udp_from_ranges").unwrap()
    );
    // The edge's own connections are untouched.
    assert!(lab
        .curl(&lab.edge, &format!("http://{ORIGIN_V4}:443/"))
        .unwrap());
    assert_eq!(lab.counter("eth0", "drop", "bad_ack").unwrap(), 0);
    // Both reasons reach the drop log, each naming its source (the forged
    // one for the ACKs, the edge's own for the UDP).
    let logged = |reason: &str, source: &str| {
        shield.log_text().lines().any(|line| {
            line.contains("shield::drops")
                && line.contains(reason)
                && line.contains(&format!("source={source} "))
        })
    };
    let both = wait_for(Duration::from_secs(5), || {
        logged("bad_ack", FORGED_V4) && logged("udp_from_ranges", EDGE_V4)
    });
    assert!(both.is_ok(), "drop events: {}", shield.log_text());
}
