//! Safety limits: handshake, header and idle timeouts, the connection cap,
//! the h2 stream cap, and memory at 1,000 connections.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use shield::tls::HandshakeResult;
use shield_test_support::{
    pki::Pki,
    tls::{
        client_config, read_to_close, rss_kib, site_toml, tls_connect, upstream, Shield, HTTP_OFF,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    process::Command,
};

const SITE: &str = "www.a.test";

async fn start(pki: &Pki, up: &shield_test_support::tls::Upstream, extra: &str) -> Shield {
    let server = pki.server("site-a", &[SITE]);
    let toml = format!(
        "{HTTP_OFF}{}",
        site_toml(
            &[SITE],
            "127.0.0.1:0",
            &server,
            &[&pki.zone_ca.file],
            up.addr,
            extra
        )
    );
    Shield::start(&toml).await
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {SITE}\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_dropped_at_the_handshake_timeout() {
    let pki = Pki::new();
    let up = upstream().await;
    let shield = start(&pki, &up, "handshake_timeout = \"1s\"").await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", shield.tls_port()))
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        shield
            .wait_handshakes("", HandshakeResult::Timeout, 1)
            .await,
        1
    );
}

/// A real `openssl s_client` with a valid certificate that trickles a
/// request head one line at a time, slower than `header_timeout` allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_closed_at_the_header_timeout() {
    shield_test_support::require("openssl");
    let pki = Pki::new();
    let up = upstream().await;
    let shield = start(&pki, &up, "header_timeout = \"2s\"").await;
    let mut child = Command::new("openssl")
        .arg("s_client")
        .args(["-quiet", "-connect"])
        .arg(format!("127.0.0.1:{}", shield.tls_port()))
        .args(["-servername", SITE, "-CAfile"])
        .arg(&pki.server_ca_file)
        .arg("-cert")
        .arg(&pki.good.cert)
        .arg("-key")
        .arg(&pki.good.key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        let _ = stdin.write_all(b"GET / HTTP/1.1\n").await;
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            if stdin
                .write_all(format!("X-Slow-{i}: 1\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let status = tokio::time::timeout(Duration::from_secs(12), child.wait())
        .await
        .expect("s_client still connected: slowloris was not closed")
        .unwrap();
    let took = started.elapsed();
    trickle.abort();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert!(!out.contains("HTTP/1.1 200"), "{out}");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "closed after {took:?} ({status:?})"
    );
}

/// hyper's default cap, 100 header fields per request: 90 are served
/// (the test upstream, hyper too, has the same cap and shield adds six),
/// 101 get a 431 from shield itself, not from the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_fields_are_capped_at_100() {
    let pki = Pki::new();
    let up = upstream().await;
    let shield = start(&pki, &up, "").await;
    let config = client_config(&pki, Some(&pki.good), &[b"http/1.1"]);
    for (fields, status) in [(90, "HTTP/1.1 200"), (101, "HTTP/1.1 431")] {
        let mut tls = tls_connect(config.clone(), shield.tls_port(), SITE)
            .await
            .unwrap();
        // Host, Connection, and the rest.
        let mut head = format!("GET / HTTP/1.1\r\nHost: {SITE}\r\nConnection: close\r\n");
        for i in 3..=fields {
            head.push_str(&format!("x-field-{i}: {i}\r\n"));
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes()).await.unwrap();
        let answer = String::from_utf8_lossy(&read_to_close(&mut tls).await).into_owned();
        assert!(answer.starts_with(status), "{fields} fields: {answer}");
        let reached_upstream = answer.contains("x-upstream: echo");
        assert_eq!(reached_upstream, fields == 90, "{answer}");
        if reached_upstream {
            assert!(
                answer.contains(&format!("x-field-{fields}: {fields}")),
                "{answer}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_but_busy_ones_do_not() {
    let pki = Pki::new();
    let up = upstream().await;
    let shield = start(&pki, &up, "idle_timeout = \"2s\"").await;
    let config = client_config(&pki, Some(&pki.good), &[b"http/1.1"]);

    // A request that outlives idle_timeout is answered.
    let mut busy = tls_connect(config.clone(), shield.tls_port(), SITE)
        .await
        .unwrap();
    busy.write_all(&get("/slow?ms=3000")).await.unwrap();
    let mut head = [0u8; 12];
    busy.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");

    // Then the keep-alive connection closes about idle_timeout later.
    let mut rest = [0u8; 4096];
    let _ = busy.read(&mut rest).await;
    let started = Instant::now();
    read_to_close(&mut busy).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_pauses_accepting() {
    let pki = Pki::new();
    let up = upstream().await;
    let shield = start(&pki, &up, "max_connections = 2").await;
    let config = client_config(&pki, Some(&pki.good), &[b"http/1.1"]);
    let port = shield.tls_port();
    let first = tls_connect(config.clone(), port, SITE).await.unwrap();
    let _second = tls_connect(config.clone(), port, SITE).await.unwrap();

    // The third waits in the backlog: no refusal, no handshake yet.
    let third = tokio::spawn(tls_connect(config.clone(), port, SITE));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !third.is_finished(),
        "third connection was served above the cap"
    );
    assert_eq!(shield.metrics.handshakes(SITE, HandshakeResult::Ok), 2);

    drop(first);
    let mut third = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("third connection not accepted after one closed")
        .unwrap()
        .unwrap();
    third.write_all(&get("/")).await.unwrap();
    let mut head = [0u8; 12];
    third.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_announces_the_stream_cap() {
    let pki = Pki::new();
    let up = upstream().await;
    let shield = start(&pki, &up, "").await;
    let config = client_config(&pki, Some(&pki.good), &[b"h2"]);
    let tls = tls_connect(config, shield.tls_port(), SITE).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, mut connection) = h2::client::handshake(tls).await.unwrap();
    let request = http::Request::get(format!("https://{SITE}/"))
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let response = tokio::select! {
        response = response => response.unwrap(),
        _ = &mut connection => panic!("connection ended"),
    };
    assert_eq!(response.status(), 200);
    // The default of `max_concurrent_streams`: what Cloudflare would open.
    assert_eq!(connection.max_concurrent_send_streams(), 200);
}

/// 1,000 verified keep-alive connections at once: all served, and the
/// memory they take (both ends live in this process) stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_keep_memory_bounded() {
    const CONNECTIONS: usize = 1000;
    let pki = Pki::new();
    let up = upstream().await;
    let shield = start(&pki, &up, "").await;
    let config = client_config(&pki, Some(&pki.good), &[b"http/1.1"]);
    let port = shield.tls_port();
    // Warm up allocator arenas and the upstream pool.
    for _ in 0..20 {
        let mut tls = tls_connect(config.clone(), port, SITE).await.unwrap();
        tls.write_all(&get("/")).await.unwrap();
        let mut head = [0u8; 12];
        tls.read_exact(&mut head).await.unwrap();
    }
    let before = rss_kib();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            let mut tls = tls_connect(config, port, SITE).await.unwrap();
            tls.write_all(&get("/")).await.unwrap();
            let mut head = [0u8; 12];
            tls.read_exact(&mut head).await.unwrap();
            assert_eq!(&head, b"HTTP/1.1 200");
            let mut rest = [0u8; 2048];
            let _ = tls.read(&mut rest).await;
            tls
        }));
    }
    let mut open = Vec::new();
    for task in tasks {
        open.push(task.await.unwrap());
    }
    let after = rss_kib();
    let per_connection = (after.saturating_sub(before)) / CONNECTIONS as u64;
    eprintln!(
        "RSS {before} KiB -> {after} KiB: {per_connection} KiB per connection (client and server)"
    );
    assert!(
        per_connection < 160,
        "{per_connection} KiB per connection (client and server ends)"
    );
    assert_eq!(
        shield
            .wait_handshakes(SITE, HandshakeResult::Ok, CONNECTIONS as u64 + 20)
            .await,
        CONNECTIONS as u64 + 20
    );
    drop(open);
}
