//! HTTP/2 as Cloudflare drives it: 200 concurrent streams on one connection
//! (hyper's client), all at the upstream at once and all answered; and
//! oha's HTTP/2 load (8 connections x 25 streams) answered with 200s only.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::{service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use shield_test_support::{
    pki::Pki,
    require,
    tls::{h2_client, one_site_toml, Shield},
};
use tokio::{net::TcpListener, sync::Barrier};

const STREAMS: usize = 200;

/// An HTTP/1.1 upstream that holds each request until `hold` of them are
/// in at once (0: answers at once), counting the most it held.
async fn holding_upstream(hold: usize) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (active, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let barrier = Arc::new(Barrier::new(hold.max(1)));
    let seen = most.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (active, most, barrier) = (active.clone(), seen.clone(), barrier.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_: Request<hyper::body::Incoming>| {
                    let (active, most, barrier) = (active.clone(), most.clone(), barrier.clone());
                    async move {
                        let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        if hold > 0 {
                            barrier.wait().await;
                        }
                        active.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, most)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_streams_on_one_connection_are_all_answered() {
    const SITE: &str = "h2.example";
    let (upstream, most) = holding_upstream(STREAMS).await;
    let pki = Pki::new();
    let server = pki.server("h2", &[SITE]);
    let shield = Shield::start(&one_site_toml(&pki, &[SITE], &server, upstream, "")).await;
    let sender = h2_client(&pki, shield.tls_port(), SITE).await;
    let calls = (0..STREAMS).map(|i| {
        let mut sender = sender.clone();
        tokio::spawn(async move {
            let request = Request::get(format!("https://{SITE}/{i}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            sender.send_request(request).await.map(|r| r.status())
        })
    });
    let statuses = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(calls),
    )
    .await
    .expect("all 200 streams answered within 20 s (the upstream holds them until all are in)");
    for status in statuses {
        assert_eq!(status.unwrap().unwrap(), 200);
    }
    assert_eq!(most.load(Ordering::SeqCst), STREAMS);
    assert_eq!(shield.http_metrics.requests(SITE, 200), STREAMS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oha_over_http2_gets_only_200s() {
    require("oha");
    const SITE: &str = "localhost";
    const REQUESTS: u64 = 4000;
    let (upstream, _) = holding_upstream(0).await;
    let pki = Pki::new();
    let server = pki.server("h2", &[SITE]);
    let shield = Shield::start(&one_site_toml(&pki, &[SITE], &server, upstream, "")).await;
    let url = format!("https://{SITE}:{}/", shield.tls_port());
    let out = tokio::process::Command::new("oha")
        .args([
            "--no-tui",
            "--output-format",
            "json",
            "--http2",
            "-c",
            "8",
            "-p",
            "25",
        ])
        .args(["-n", &REQUESTS.to_string(), "--cacert"])
        .arg(&pki.server_ca_file)
        .arg("--cert")
        .arg(&pki.good.cert)
        .arg("--key")
        .arg(&pki.good.key)
        .arg(&url)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "oha failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        summary["statusCodeDistribution"],
        serde_json::json!({ "200": REQUESTS }),
        "{stdout}"
    );
    assert_eq!(shield.http_metrics.requests(SITE, 200), REQUESTS);
}
