//! The `shield` binary's non-privileged commands, as an operator runs them.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use shield_test_support::pki::Pki;

fn shield(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shield"))
        .args(args)
        .output()
        .expect("run shield")
}

fn config(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp config");
    std::fs::write(file.path(), text).expect("write config");
    file
}

#[test]
fn classify_explains_the_verdict_and_exits_by_it() {
    let file = config("[ranges]\nextra_allow = [\"198.51.100.0/24\"]\n");
    let path = file.path().to_str().unwrap();
    let cases: &[(&[&str], &str, i32)] = &[
        (&["173.245.48.1"], "pass allowed 173.245.48.0/20", 0),
        (
            &["2606:4700::1", "--port", "80"],
            "pass allowed 2606:4700::/32",
            0,
        ),
        (&["203.0.113.9"], "drop outside_ranges", 1),
        (
            &["203.0.113.9", "--proto", "udp", "--port", "443"],
            "drop outside_ranges",
            1,
        ),
        (&["203.0.113.9", "--port", "22"], "pass unprotected", 0),
        (
            &["203.0.113.9", "--proto", "udp", "--port", "80"],
            "pass unprotected",
            0,
        ),
        (&["198.51.100.77"], "pass allowed 198.51.100.0/24", 0),
    ];
    for (args, expected, code) in cases {
        let mut full = vec!["classify"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--config", path]);
        let output = shield(&full);
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            *expected,
            "{args:?}"
        );
        assert_eq!(output.status.code(), Some(*code), "{args:?}");
    }
    let monitor = config("[xdp]\nenforce = false\n");
    let output = shield(&[
        "classify",
        "203.0.113.9",
        "--config",
        monitor.path().to_str().unwrap(),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "would_drop outside_ranges"
    );
    assert_eq!(output.status.code(), Some(1));

    // A scope: its addresses are judged, any other passes; without
    // --destination the answer is the scope's own.
    let scoped = config("[xdp]\nprotected_destinations = [\"192.0.2.1/32\", \"2001:db8::/64\"]\n");
    let scoped = scoped.path().to_str().unwrap();
    let cases: &[(&[&str], &str, i32)] = &[
        (&["203.0.113.9"], "drop outside_ranges", 1),
        (
            &["203.0.113.9", "--destination", "192.0.2.1"],
            "drop outside_ranges",
            1,
        ),
        (
            &["203.0.113.9", "--destination", "192.0.2.7"],
            "pass unprotected_destination",
            0,
        ),
        (
            &[
                "2001:db8:bad::7",
                "--destination",
                "2001:db8::9",
                "--port",
                "80",
            ],
            "drop outside_ranges",
            1,
        ),
        (
            &["2001:db8:bad::7", "--destination", "2001:db8:1::1"],
            "pass unprotected_destination",
            0,
        ),
    ];
    for (args, expected, code) in cases {
        let mut full = vec!["classify"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--config", scoped]);
        let output = shield(&full);
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            *expected,
            "{args:?}"
        );
        assert_eq!(output.status.code(), Some(*code), "{args:?}");
    }
    let mixed = shield(&[
        "classify",
        "203.0.113.9",
        "--destination",
        "2001:db8::9",
        "--config",
        scoped,
    ]);
    assert_ne!(mixed.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&mixed.stderr).contains("not of the family"),
        "{mixed:?}"
    );
}

#[test]
fn check_config_prints_the_effective_config_or_names_the_bad_key() {
    let good = config("[xdp]\ninterfaces = [\"eth0\"]\n");
    let output = shield(&["check-config", "--config", good.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0));
    let printed = String::from_utf8_lossy(&output.stdout);
    for expected in [
        "interfaces = [\"eth0\"]",
        "protected_tcp_ports = [80, 443]",
        "refresh = \"6h\"",
        "listen = \"127.0.0.1:9469\"",
    ] {
        assert!(
            printed.contains(expected),
            "missing {expected} in:\n{printed}"
        );
    }
    for (text, key) in [
        ("[xdp]\nmode = \"fast\"\n", "mode"),
        ("[xdp]\nbogus = 1\n", "bogus"),
        (
            "[ranges]\nextra_allow = [\"10.0.0.1/8\"]\n",
            "ranges.extra_allow",
        ),
    ] {
        let bad = config(text);
        let output = shield(&["check-config", "--config", bad.path().to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(1), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "error must name {key}: {stderr}");
    }
    let output = shield(&["check-config", "--config", "/nonexistent/shield.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/shield.toml"));
}

/// A site whose files are all present (a throwaway certificate and key)
/// unless `extra` or a replacement says otherwise.
fn site_config(dir: &std::path::Path, replace: (&str, &str)) -> tempfile::NamedTempFile {
    let pki = Pki::new();
    let site = pki.server("site", &["a.example"]);
    let (cert_path, key_path) = (dir.join("site.pem"), dir.join("site.key"));
    std::fs::copy(&site.cert, &cert_path).expect("copy certificate");
    std::fs::copy(&site.key, &key_path).expect("copy key");
    let text = format!(
        "[ranges]\nrefresh = \"off\"\ncache = {cache:?}\n\
         [http]\naction = \"off\"\n\
         [[site]]\nserver_names = [\"a.example\"]\nlisten = \"127.0.0.1:0\"\n\
         cert = {cert:?}\nkey = {key:?}\nclient_ca = [\"cloudflare-shared\"]\n\
         upstream = \"http://127.0.0.1:8080\"\n",
        cache = dir.join("ranges.json"),
        cert = cert_path,
        key = key_path,
    );
    config(&text.replace(replace.0, replace.1))
}

#[test]
fn check_config_refuses_what_run_would_refuse_and_names_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = site_config(dir.path(), ("", ""));
    let output = shield(&["check-config", "--config", good.path().to_str().unwrap()]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("upstream = \"http://127.0.0.1:8080\"")
    );

    let missing = dir.path().join("missing.pem");
    let missing = missing.to_str().unwrap();
    let site_pem = dir.path().join("site.pem");
    let site_pem = site_pem.to_str().unwrap();
    let cases: &[((&str, &str), &str)] = &[
        (
            ("http://127.0.0.1:8080", "https://127.0.0.1:8443"),
            "`site[0].upstream`: \"https://127.0.0.1:8443\": https upstreams are not supported",
        ),
        (
            ("http://127.0.0.1:8080", "http://exa mple"),
            "`site[0].upstream`: \"http://exa mple\" is not a URL",
        ),
        (
            ("\"cloudflare-shared\"", "\"cloudflare_shared\""),
            "`site[0].client_ca`: \"cloudflare_shared\" is neither",
        ),
        (
            ("client_ca", "client_spki_pins = [\"abc\"]\nclient_ca"),
            "`site[0].client_spki_pins`",
        ),
        (
            ("refresh = \"off\"", "sources = [\"http://x.example/ips\"]"),
            "`ranges.sources`: \"http://x.example/ips\": plain http is refused",
        ),
        ((site_pem, missing), "site a.example: cannot read"),
    ];
    for (replace, expected) in cases {
        let bad = site_config(dir.path(), *replace);
        let output = shield(&["check-config", "--config", bad.path().to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{replace:?}: {stderr}");
        assert!(stderr.contains(expected), "{replace:?}: {stderr}");
        assert!(output.stdout.is_empty(), "nothing printed as effective");
    }
}

/// Runs `shield run` that must fail at start; returns its stderr.
fn run_failing(config: &std::path::Path) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shield"))
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run shield");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("shield run did not fail");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    stderr
}

#[test]
fn run_names_each_cause_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let site_pem = dir.path().join("site.pem");
    let missing = dir.path().join("missing.pem");
    let bad = site_config(
        dir.path(),
        (site_pem.to_str().unwrap(), missing.to_str().unwrap()),
    );
    let stderr = run_failing(bad.path());
    let cause = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    assert_eq!(stderr.matches(&cause).count(), 1, "{stderr}");
    assert_eq!(
        stderr
            .matches(&format!("cannot read {}", missing.display()))
            .count(),
        1,
        "{stderr}"
    );

    // An address no local interface has (TEST-NET-1).
    let unbindable = config(&format!(
        "[ranges]\nrefresh = \"off\"\ncache = {:?}\n[metrics]\nlisten = \"192.0.2.1:9469\"\n",
        dir.path().join("ranges.json")
    ));
    let stderr = run_failing(unbindable.path());
    let cause = std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL).to_string();
    assert_eq!(stderr.matches(&cause).count(), 1, "{stderr}");
    assert!(stderr.contains("[metrics].listen"), "{stderr}");
}

/// Output into a pipe nobody reads any more (`shield ranges | head -1`)
/// ends the command as SIGPIPE ends other Unix tools: no panic message.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt as _;
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_shield"))
        .args(["ranges", "--config", "/dev/null"])
        .stdout(writer)
        .output()
        .expect("run shield");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.signal(), Some(libc::SIGPIPE), "{output:?}");
}
