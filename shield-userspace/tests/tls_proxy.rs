//! The HTTP side against real curl: header policy, Host/SNI binding,
//! 502/504, the header cap, h2 settings and port 80.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use shield_test_support::{
    pki::Pki,
    raw,
    tls::{
        client_config, closed_port, curl, one_site_toml, silent_upstream, site_toml, tls_connect,
        upstream, Req, Shield, HTTP_OFF,
    },
};
use tokio::io::AsyncWriteExt as _;

const SITE: &str = "www.a.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sees_rewritten_forwarding_headers_over_h1_and_h2() {
    let pki = Pki::new();
    let up = upstream().await;
    let server = pki.server("site-a", &[SITE]);
    let toml = one_site_toml(&pki, &[SITE], &server, up.addr, "");
    let shield = Shield::start(&toml).await;
    for http2 in [false, true] {
        let out = curl(
            &pki,
            Req {
                host: SITE,
                port: shield.tls_port(),
                path: "/p?q=1",
                client: Some(&pki.good),
                http2,
                headers: &[
                    "CF-Connecting-IP: 203.0.113.9",
                    "X-Forwarded-For: 6.6.6.6",
                    "X-Real-IP: 6.6.6.6",
                    "Forwarded: for=6.6.6.6",
                    "X-Forwarded-Proto: http",
                    "X-Shield-Client-Cert-Sha256: forged",
                    "Keep-Alive: timeout=1",
                    "Connection: X-Hop",
                    "X-Hop: secret",
                    "X-App: kept",
                ],
                extra: &["-D", "-"],
            },
        )
        .await;
        assert_eq!(out.status, Some(200), "{out:?}");
        let seen = out.echoed();
        let one = |name: &str| seen.get(name).cloned().unwrap_or_default();
        assert!(out.body.contains("GET /p?q=1"), "{}", out.body);
        assert_eq!(one("x-forwarded-for"), ["203.0.113.9"], "{}", out.body);
        assert_eq!(one("x-real-ip"), ["203.0.113.9"]);
        assert_eq!(one("x-forwarded-proto"), ["https"]);
        assert_eq!(one("host"), [SITE]);
        assert_eq!(one("x-shield-client-cert-sha256"), [pki.good.sha256_hex()]);
        assert_eq!(one("x-app"), ["kept"]);
        assert_eq!(one("x-shield-request-id").len(), 1);
        // curl drops connection-specific fields itself over h2.
        let gone: &[&str] = if http2 {
            &["forwarded"]
        } else {
            &["forwarded", "x-hop", "keep-alive"]
        };
        for gone in gone {
            assert!(
                !seen.contains_key(*gone),
                "{gone} reached the upstream: {}",
                out.body
            );
        }
        // The upstream's own hop-by-hop answer headers stop at shield.
        let head = out.body.to_ascii_lowercase();
        assert!(head.contains("x-upstream: echo"), "{}", out.body);
        assert!(!head.contains("keep-alive: timeout=5"), "{}", out.body);
    }
    assert_eq!(shield.http_metrics.requests(SITE, 200), 2);
}

/// With `upstream = "http://host:port/app"`, requests go under `/app`, and
/// a path with a dot segment, which an upstream normalizing it would take
/// out of `/app`, is refused with 400 (curl --path-as-is sends it raw).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_prefix_cannot_be_escaped() {
    let pki = Pki::new();
    let up = upstream().await;
    let server = pki.server("site-a", &[SITE]);
    let plain = format!("upstream = \"http://{}\"", up.addr);
    let toml = one_site_toml(&pki, &[SITE], &server, up.addr, "");
    assert!(toml.contains(&plain), "{toml}");
    let toml = toml.replace(&plain, &format!("upstream = \"http://{}/app\"", up.addr));
    let shield = Shield::start(&toml).await;
    for http2 in [false, true] {
        for (path, status, seen) in [
            ("/p?q=1", 200, Some("GET /app/p?q=1")),
            ("/../admin", 400, None),
            ("/a/%2e%2E/admin", 400, None),
        ] {
            let out = curl(
                &pki,
                Req {
                    host: SITE,
                    port: shield.tls_port(),
                    path,
                    client: Some(&pki.good),
                    http2,
                    headers: &[],
                    extra: &["--path-as-is"],
                },
            )
            .await;
            assert_eq!(out.status, Some(status), "{path} h2={http2}: {out:?}");
            match seen {
                Some(line) => assert!(out.body.contains(line), "{}", out.body),
                None => assert!(!out.body.contains("GET /app"), "{}", out.body),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_must_match_sni() {
    let pki = Pki::new();
    let up = upstream().await;
    let server = pki.server("site-ab", &[SITE, "a.test", "www.b.test"]);
    let toml = one_site_toml(&pki, &[SITE, "a.test"], &server, up.addr, "");
    let shield = Shield::start(&toml).await;
    for http2 in [false, true] {
        for host in ["a.test", "www.b.test", "evil.example"] {
            let header = format!("Host: {host}");
            let out = curl(
                &pki,
                Req {
                    host: SITE,
                    port: shield.tls_port(),
                    client: Some(&pki.good),
                    http2,
                    headers: &[&header],
                    ..Req::default()
                },
            )
            .await;
            assert_eq!(out.status, Some(421), "Host {host} h2={http2}: {out:?}");
            assert!(!out.body.contains("GET /"), "reached the upstream: {out:?}");
        }
        // Host with port and different case still matches.
        let header = format!("Host: WWW.A.TEST:{}", shield.tls_port());
        let out = curl(
            &pki,
            Req {
                host: SITE,
                port: shield.tls_port(),
                client: Some(&pki.good),
                http2,
                headers: &[&header],
                ..Req::default()
            },
        )
        .await;
        assert_eq!(out.status, Some(200), "{out:?}");
    }
    assert_eq!(shield.http_metrics.requests(SITE, 421), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_refused_is_502_and_slow_is_504() {
    let pki = Pki::new();
    let server = pki.server("site-a", &[SITE]);
    let refused = closed_port().await;
    let (silent, _silent_task) = silent_upstream().await;
    let toml = format!(
        "{HTTP_OFF}{}{}",
        site_toml(
            &[SITE],
            "127.0.0.1:0",
            &server,
            &[&pki.zone_ca.file],
            refused,
            ""
        ),
        site_toml(
            &["www.slow.test"],
            "127.0.0.1:0",
            &pki.server("slow", &["www.slow.test"]),
            &[&pki.zone_ca.file],
            silent,
            "upstream_timeout = \"1s\""
        ),
    );
    let shield = Shield::start(&toml).await;
    let port = shield.tls_port();
    for http2 in [false, true] {
        let out = curl(
            &pki,
            Req {
                host: SITE,
                port,
                client: Some(&pki.good),
                http2,
                ..Req::default()
            },
        )
        .await;
        assert_eq!(out.status, Some(502), "{out:?}");
        assert!(
            out.body.starts_with("Bad Gateway") && out.body.contains("request "),
            "{out:?}"
        );
        let started = std::time::Instant::now();
        let out = curl(
            &pki,
            Req {
                host: "www.slow.test",
                port,
                client: Some(&pki.good),
                http2,
                ..Req::default()
            },
        )
        .await;
        assert_eq!(out.status, Some(504), "{out:?}");
        assert!(out.body.starts_with("Gateway Timeout"), "{out:?}");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(shield.http_metrics.requests(SITE, 502), 2);
    assert_eq!(shield.http_metrics.requests("www.slow.test", 504), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    let pki = Pki::new();
    let up = upstream().await;
    let server = pki.server("site-a", &[SITE]);
    let toml = one_site_toml(&pki, &[SITE], &server, up.addr, "");
    let shield = Shield::start(&toml).await;
    let big = format!("X-Big: {}", "a".repeat(100 * 1024));
    let out = curl(
        &pki,
        Req {
            host: SITE,
            port: shield.tls_port(),
            client: Some(&pki.good),
            headers: &[&big],
            ..Req::default()
        },
    )
    .await;
    assert_eq!(out.status, Some(431), "{:?} {}", out.status, out.stderr);
}

/// A client still sending when shield refuses its head still reads the
/// 431: shield closes its side and reads the rest away (a lingering close)
/// instead of closing on unread bytes, which makes the kernel reset the
/// connection under the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_an_oversized_head_reads_its_431() {
    let pki = Pki::new();
    let up = upstream().await;
    let server = pki.server("site-a", &[SITE]);
    let shield = Shield::start(&one_site_toml(&pki, &[SITE], &server, up.addr, "")).await;
    let config = client_config(&pki, Some(&pki.good), &[b"http/1.1"]);
    let tls = tls_connect(config, shield.tls_port(), SITE).await.unwrap();
    let (mut read, mut write) = tokio::io::split(tls);
    // Like curl, the client sends all of its request before it reads, and
    // a failed write is the end of it: 8 MiB, refused after the first 64 KiB.
    let writer = tokio::spawn(async move {
        let head = format!("GET / HTTP/1.1\r\nHost: {SITE}\r\nX-Big: ");
        write.write_all(head.as_bytes()).await?;
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..128 {
            write.write_all(&chunk).await?;
        }
        write.write_all(b"\r\n\r\n").await?;
        Ok::<_, std::io::Error>(write)
    });
    let sent = writer.await.unwrap();
    assert!(sent.is_ok(), "the client's request was cut off: {sent:?}");
    let answer = raw::response(&mut read, &mut Vec::new(), false).await;
    assert_eq!(answer.map(|(status, ..)| status), Some(431));
}

/// A client posting a body to port 80 reads its redirect although nothing
/// reads the body: the close waits for what it still sends (a lingering
/// close, as on the TLS side), where closing on unread bytes would make
/// the kernel reset the connection under the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_posting_to_port_80_reads_its_redirect() {
    let pki = Pki::new();
    let up = upstream().await;
    let server = pki.server("site-a", &[SITE]);
    let site = site_toml(
        &[SITE],
        "127.0.0.1:0",
        &server,
        &[&pki.zone_ca.file],
        up.addr,
        "",
    );
    let shield = Shield::start(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\naction = \"redirect\"\n{site}"
    ))
    .await;
    let port = shield.frontend.http_local_addr().unwrap().port();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut read, mut write) = tcp.into_split();
    // Like curl, all of the request before any of the answer: 8 MiB.
    let writer = tokio::spawn(async move {
        let chunk = vec![b'a'; 64 * 1024];
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: {SITE}\r\nContent-Length: {}\r\n\r\n",
            128 * chunk.len()
        );
        write.write_all(head.as_bytes()).await?;
        for _ in 0..128 {
            write.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(write)
    });
    let sent = writer.await.unwrap();
    assert!(sent.is_ok(), "the client's request was cut off: {sent:?}");
    let answer = raw::response(&mut read, &mut Vec::new(), false).await;
    assert_eq!(answer.map(|(status, ..)| status), Some(301));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_80_redirects_denies_or_is_off() {
    shield_test_support::require("curl");
    let pki = Pki::new();
    let up = upstream().await;
    let server = pki.server("site-a", &[SITE]);
    let site = site_toml(
        &[SITE, "a.test"],
        "127.0.0.1:0",
        &server,
        &[&pki.zone_ca.file],
        up.addr,
        "",
    );
    let plain = |shield: &Shield, host: &str| {
        let port = shield
            .frontend
            .http_local_addr()
            .expect("port-80 listener")
            .port();
        let host = host.to_owned();
        async move {
            shield_test_support::tls::parse_curl(
                tokio::process::Command::new("curl")
                    .args(["-sS", "-D", "-", "-w", "\n%{http_code}", "-H"])
                    .arg(format!("Host: {host}"))
                    .arg(format!("http://127.0.0.1:{port}/x?y=1"))
                    .output()
                    .await
                    .unwrap(),
            )
        }
    };

    let shield = Shield::start(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\naction = \"redirect\"\n{site}"
    ))
    .await;
    let tls_port = shield.tls_port();
    let out = plain(&shield, "a.test").await;
    assert_eq!(out.status, Some(301), "{out:?}");
    assert!(
        out.body
            .contains(&format!("location: https://a.test:{tls_port}/x?y=1")),
        "{out:?}"
    );
    // No open redirect for hosts we do not serve.
    let out = plain(&shield, "evil.example").await;
    assert_eq!(out.status, Some(421), "{out:?}");
    assert_eq!(shield.http_metrics.requests(SITE, 301), 1);
    drop(shield);

    let shield = Shield::start(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\naction = \"deny\"\n{site}"
    ))
    .await;
    assert_eq!(plain(&shield, "www.a.test").await.status, Some(403));
    drop(shield);

    let shield = Shield::start(&format!("{HTTP_OFF}{site}")).await;
    assert!(shield.frontend.http_local_addr().is_none());
}
