//! The access log of a real `shield run`: one JSON (or text) line per
//! request on HTTP/1.1 and HTTP/2 with the fields the README lists, and a
//! stderr nobody reads never holding up a request (lines are dropped and
//! counted instead).
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use shield_test_support::{
    pki::Pki,
    tls::{closed_port, curl, one_site_toml, upstream, Req},
};

const SITE: &str = "localhost";

/// `shield run` of `toml` (written next to `dir`'s other files), its
/// stderr into `stderr`.
fn run_shield(dir: &Path, toml: &str, stderr: Stdio) -> Child {
    let path = dir.join("shield.toml");
    std::fs::write(&path, toml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_shield"))
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// A config with the site on `port`, the metrics on `metrics`, no range
/// refresh (no network), and `log`.
async fn config(pki: &Pki, dir: &Path, port: u16, metrics: u16, log: &str) -> String {
    let up = upstream().await;
    let server = pki.server("access", &[SITE]);
    // The upstream task lives as long as the runtime; leaking its handle
    // keeps it for the test.
    let addr = up.addr;
    std::mem::forget(up);
    let site = one_site_toml(pki, &[SITE], &server, addr, "")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    format!(
        "[ranges]\nrefresh = \"off\"\ncache = {:?}\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n[log]\n{log}\n{site}",
        dir.join("ranges.json").display().to_string()
    )
}

async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("shield did not listen on {port}");
}

fn access_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|value| value["target"] == "shield::access")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_gets_one_line_with_the_documented_fields() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics) = (closed_port().await.port(), closed_port().await.port());
    let toml = config(
        &pki,
        dir.path(),
        port,
        metrics,
        "access = true\nformat = \"json\"",
    )
    .await;
    let log_path = dir.path().join("stderr");
    let mut shield = run_shield(
        dir.path(),
        &toml,
        Stdio::from(std::fs::File::create(&log_path).unwrap()),
    );
    wait_listening(port).await;
    let mut ids = Vec::new();
    for http2 in [false, true] {
        let out = curl(
            &pki,
            Req {
                host: SITE,
                port,
                path: "/logged?secret=1",
                client: Some(&pki.good),
                http2,
                headers: &[
                    "CF-Connecting-IP: 198.51.100.23",
                    "CF-Ray: 8c0ffee0c0ffee00-AMS",
                ],
                extra: &[],
            },
        )
        .await;
        assert_eq!(out.status, Some(200), "{out:?}");
        let id = out.echoed()["x-shield-request-id"][0].clone();
        ids.push((http2, id, out.body.len()));
    }
    // A request shield answers itself (no upstream time).
    let misdirected = curl(
        &pki,
        Req {
            host: SITE,
            port,
            path: "/",
            client: Some(&pki.good),
            http2: false,
            headers: &["Host: other.example"],
            extra: &[],
        },
    )
    .await;
    assert_eq!(misdirected.status, Some(421), "{misdirected:?}");
    // The writer is asynchronous: give it a moment, then stop shield,
    // which flushes what is left.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(shield.id() as i32, libc::SIGTERM) };
    shield.wait().unwrap();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines = access_lines(&text);
    assert_eq!(lines.len(), 3, "{text}");
    // The daemon's own log is JSON too.
    assert!(
        text.lines()
            .any(|line| serde_json::from_str::<serde_json::Value>(line)
                .is_ok_and(|value| value["fields"]["message"] == "shield ready")),
        "{text}"
    );
    for ((http2, id, body_len), line) in ids.iter().zip(&lines) {
        assert_eq!(line["site"], SITE, "{line}");
        assert_eq!(line["client_ip"], "198.51.100.23", "{line}");
        assert_eq!(line["cf_ray"], "8c0ffee0c0ffee00-AMS", "{line}");
        assert_eq!(line["method"], "GET");
        assert_eq!(line["path"], "/logged", "the query stays out: {line}");
        assert_eq!(
            line["protocol"],
            if *http2 { "HTTP/2" } else { "HTTP/1.1" },
            "{line}"
        );
        assert_eq!(line["status"], 200);
        assert_eq!(line["request_id"], id.as_str(), "{line}");
        assert_eq!(line["client_cert_sha256"], pki.good.sha256_hex());
        // curl's body here is what the echo upstream sent, less the
        // status line `-w` appended.
        let sent = line["bytes_sent"].as_u64().unwrap();
        assert!(
            sent > 0 && sent as usize <= *body_len,
            "{line} vs {body_len}"
        );
        let (duration, upstream) = (
            line["duration_ms"].as_f64().unwrap(),
            line["upstream_ms"].as_f64().unwrap(),
        );
        assert!(upstream > 0.0 && upstream <= duration, "{line}");
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
    }
    let answered = &lines[2];
    assert_eq!(answered["status"], 421, "{answered}");
    assert!(answered["upstream_ms"].is_null(), "{answered}");
    assert!(answered["client_ip"].is_null(), "{answered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_and_off_by_default() {
    let pki = Pki::new();
    for (log, expect_lines) in [("format = \"text\"\naccess = true", 1), ("", 0)] {
        let dir = tempfile::tempdir().unwrap();
        let (port, metrics) = (closed_port().await.port(), closed_port().await.port());
        let toml = config(&pki, dir.path(), port, metrics, log).await;
        let log_path = dir.path().join("stderr");
        let mut shield = run_shield(
            dir.path(),
            &toml,
            Stdio::from(std::fs::File::create(&log_path).unwrap()),
        );
        wait_listening(port).await;
        let out = curl(
            &pki,
            Req {
                host: SITE,
                port,
                path: "/t",
                client: Some(&pki.good),
                http2: true,
                headers: &[],
                extra: &[],
            },
        )
        .await;
        assert_eq!(out.status, Some(200), "{out:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        // SAFETY: signalling the child this test started.
        unsafe { libc::kill(shield.id() as i32, libc::SIGTERM) };
        shield.wait().unwrap();
        let text = std::fs::read_to_string(&log_path).unwrap();
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| line.contains(" INFO shield::access: "))
            .collect();
        assert_eq!(lines.len(), expect_lines, "{text}");
        if let Some(line) = lines.first() {
            for field in [
                "site=localhost",
                "method=GET",
                "path=/t",
                "protocol=HTTP/2",
                "status=200",
                "client_ip=\"\"",
            ] {
                assert!(line.contains(field), "{field} in {line}");
            }
        }
    }
}

/// stderr is a pipe nobody reads: with a writer that waited for it, the
/// daemon would stop after a pipe's worth of lines. Every request is
/// answered; the lines that did not fit are dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_journal_costs_lines_not_requests() {
    shield_test_support::require("oha");
    const REQUESTS: u64 = 30_000;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics) = (closed_port().await.port(), closed_port().await.port());
    let toml = config(
        &pki,
        dir.path(),
        port,
        metrics,
        "access = true\nformat = \"json\"",
    )
    .await;
    let (reader, writer) = std::io::pipe().unwrap();
    let mut shield = run_shield(dir.path(), &toml, Stdio::from(writer));
    wait_listening(port).await;
    let url = format!("https://{SITE}:{port}/");
    let oha = tokio::process::Command::new("oha")
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "--http2",
            "-c",
            "8",
            "-p",
            "16",
        ])
        .args(["-n", &REQUESTS.to_string(), "--cacert"])
        .arg(&pki.server_ca_file)
        .arg("--cert")
        .arg(&pki.good.cert)
        .arg("--key")
        .arg(&pki.good.key)
        .arg(&url)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), oha)
        .await
        .expect("requests stalled behind the log")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        summary["statusCodeDistribution"],
        serde_json::json!({ "200": REQUESTS }),
        "{stdout}"
    );
    let scrape = reqwest_get(metrics).await;
    let dropped: f64 = scrape
        .lines()
        .find_map(|line| line.strip_prefix("shield_log_dropped_lines_total "))
        .unwrap_or_else(|| panic!("no shield_log_dropped_lines_total in {scrape}"))
        .parse()
        .unwrap();
    assert!(dropped > 0.0, "{scrape}");
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(shield.id() as i32, libc::SIGKILL) };
    shield.wait().unwrap();
    drop(reader);
}

/// The metrics page, over plain HTTP on loopback.
async fn reqwest_get(port: u16) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    text
}
