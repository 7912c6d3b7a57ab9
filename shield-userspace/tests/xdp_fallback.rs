//! A kernel that refuses the program answering SYNs (older than 5.17: it
//! has no `bpf_loop`), met for real: the daemon loads an object whose every
//! `bpf_loop` call names a helper no kernel has (`SHIELD_XDP_OBJECT`), so
//! the verifier refuses `shield` as such a kernel does, while
//! `shield_no_cookies`, which makes no such call, loads. With "flood" the
//! daemon falls back to it and says so; with "always" it refuses to start,
//! naming the setting, and attaches nothing; a reload to "always" on it is
//! refused and changes nothing.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use shield_tests::{addr::*, require_root, require_tool, wait_for, Lab};

/// `bpf_loop`'s helper number.
const BPF_LOOP: i32 = 181;
/// A helper number beyond any kernel's (`__BPF_FUNC_MAX_ID` is about 220).
const UNKNOWN_HELPER: i32 = 0x7fff_0000;
/// Section header flag of executable sections.
const SHF_EXECINSTR: u64 = 0x4;
/// The opcode of a call (`BPF_JMP | BPF_CALL`).
const BPF_CALL: u8 = 0x85;

fn read<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    bytes[at..at + N].try_into().unwrap()
}

/// The built-in object with its `bpf_loop` calls pointed at an unknown
/// helper; also how many calls were changed.
fn object_without_bpf_loop() -> (Vec<u8>, usize) {
    let mut object = shield::dataplane::PROGRAM_OBJECT.to_vec();
    assert_eq!(&object[..4], b"\x7fELF", "an ELF object");
    assert_eq!(object[4], 2, "a 64-bit ELF object");
    let section_headers = u64::from_le_bytes(read(&object, 0x28)) as usize;
    let header_size = u16::from_le_bytes(read(&object, 0x3a)) as usize;
    let sections = u16::from_le_bytes(read(&object, 0x3c)) as usize;
    let mut changed = 0;
    for section in 0..sections {
        let header = section_headers + section * header_size;
        let flags = u64::from_le_bytes(read(&object, header + 8));
        if flags & SHF_EXECINSTR == 0 {
            continue;
        }
        let offset = u64::from_le_bytes(read(&object, header + 0x18)) as usize;
        let size = u64::from_le_bytes(read(&object, header + 0x20)) as usize;
        for insn in (offset..offset + size).step_by(8) {
            // A helper call has source register 0 (1 is a call of a
            // function of the program, 2 a kernel function).
            let is_helper_call = object[insn] == BPF_CALL && object[insn + 1] >> 4 == 0;
            if is_helper_call && i32::from_le_bytes(read(&object, insn + 4)) == BPF_LOOP {
                object[insn + 4..insn + 8].copy_from_slice(&UNKNOWN_HELPER.to_le_bytes());
                changed += 1;
            }
        }
    }
    (object, changed)
}

fn lab() -> Option<Lab> {
    if !require_root() {
        return None;
    }
    for tool in ["ip", "nsenter", "curl", "python3"] {
        require_tool(tool);
    }
    let mut lab = Lab::new().expect("create the lab namespaces");
    lab.start_servers().expect("start the origin's servers");
    Some(lab)
}

/// The origin's plain-HTTP test server, which the lab's XDP rules guard.
fn origin_url() -> String {
    format!("http://{ORIGIN_V4}:443/")
}

fn xdp_attached(lab: &Lab) -> bool {
    let links = lab.origin.exec_check(&["ip", "link", "show"]).unwrap();
    links.contains("xdp")
}

#[test]
fn a_kernel_that_refuses_the_cookie_program_gets_the_fallback_or_a_clear_refusal() {
    let Some(lab) = lab() else { return };
    let (object, changed) = object_without_bpf_loop();
    assert!(changed > 0, "the cookie program calls bpf_loop");
    let path = lab.work_dir.join("shield-xdp-without-bpf-loop");
    std::fs::write(&path, object).unwrap();
    let env = format!("SHIELD_XDP_OBJECT={}", path.display());
    let wrapper = ["env", env.as_str()];
    let binary = shield_tests::shield_binary().unwrap();

    // "always" needs the cookie program: refused at start, interface and
    // setting named, nothing attached.
    let always = lab
        .write_config("always.toml", "syn_cookies = \"always\"")
        .unwrap();
    let mut command = vec!["timeout", "60"];
    command.extend(wrapper);
    command.extend([
        binary.to_str().unwrap(),
        "run",
        "--config",
        always.to_str().unwrap(),
    ]);
    let output = lab
        .origin
        .command(&command)
        .env("SHIELD_PIN_ROOT", &lab.pin_root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("[xdp].syn_cookies = \"always\"")
            && stderr.contains("eth0")
            && stderr.contains("set syn_cookies = \"flood\" or \"off\""),
        "the refusal names the setting, the interface and the way out: {stderr}"
    );
    assert!(
        stderr.contains("Invalid argument") || stderr.contains("invalid func"),
        "the verifier's refusal is the cause: {stderr}"
    );
    assert!(!xdp_attached(&lab), "nothing attached");

    // "flood" (the default) falls back: the allowlist still drops, the
    // edge is served, in-range SYNs go to the kernel, and it is said.
    let flood = lab.write_config("flood.toml", "").unwrap();
    let shield = lab.start_binary(&binary, &flood, &wrapper).unwrap();
    let log = shield.log_text();
    assert!(
        log.contains("refused XDP SYN cookies") && log.contains("SHIELD_XDP_OBJECT"),
        "the fallback and the object it came from are logged: {log}"
    );
    assert!(xdp_attached(&lab));
    assert!(!lab.curl(&lab.attacker, &origin_url()).unwrap());
    assert!(lab.curl(&lab.edge, &origin_url()).unwrap());
    let metrics = lab.metrics().unwrap();
    assert!(
        metrics.contains("\nshield_xdp_syn_cookies_active 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("reason=\"outside_ranges\""),
        "the fallback program counts: {metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.contains("reason=\"syn_cookie\"") && !l.ends_with(" 0")),
        "no SYN is answered without the cookie program: {metrics}"
    );

    // A reload to "always" cannot get the cookie program either: refused
    // whole, the running state kept.
    std::fs::copy(&always, &flood).unwrap();
    shield.signal(libc::SIGHUP);
    wait_for(Duration::from_secs(10), || {
        shield.log_text().contains("reload refused")
    })
    .unwrap_or_else(|_| panic!("no refused reload: {}", shield.log_text()));
    assert!(
        shield
            .log_text()
            .contains("[xdp].syn_cookies = \"always\" needs XDP SYN cookies"),
        "{}",
        shield.log_text()
    );
    assert!(!lab.curl(&lab.attacker, &origin_url()).unwrap());
    assert!(lab.curl(&lab.edge, &origin_url()).unwrap());
    assert!(lab
        .metrics()
        .unwrap()
        .contains("\nshield_xdp_syn_cookies_active 0\n"));
}
