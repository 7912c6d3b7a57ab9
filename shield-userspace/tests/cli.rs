//! The `shield` binary's non-privileged commands, as an operator runs them.

use std::process::{Command, Output};

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
