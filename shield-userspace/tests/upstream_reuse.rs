//! A pooled upstream stream is reused only when provably clean: bytes an
//! upstream sends after a complete response (a late body to a HEAD or a
//! 204, an unsolicited second response) must never reach the next request,
//! whichever client sends it. One connection worker, so every client shares
//! the one pool the bytes landed in; victims on fresh connections.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use shield::proxy::metrics::Discard;
use shield_test_support::{
    pki::Pki,
    raw::{self, Answer, Seen},
    tls::{client_config, h2_client, one_site_toml, tls_connect, Shield},
};
use tokio::io::AsyncWriteExt;

const SITE: &str = "www.a.test";

/// The misbehaving requests, and the status each is answered with.
const CASES: [(&str, &str, u16); 3] = [
    ("HEAD", "/head-late-body", 200),
    ("GET", "/no-content-late-body", 204),
    ("GET", "/late-response", 200),
];
/// How long after its answer the upstream sends the stray bytes.
const LATE: Duration = Duration::from_millis(300);

/// What the stray bytes are made to look like: a response another request
/// would take as its own.
const POISON: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned";

/// Every request answered with its own name (`raw::echo`), except the
/// paths that misbehave: `/head-late-body` (a HEAD answered with
/// `Content-Length: 137`, and 137 bytes of body later),
/// `/no-content-late-body` (a 204, and a body later) and `/late-response`
/// (a complete answer, and a second one later).
fn answer(seen: &Seen) -> Answer {
    let mut late_body = POISON.to_vec();
    late_body.resize(137, b'x');
    let (now, later): (&[u8], Vec<u8>) = match seen.path.as_str() {
        "/head-late-body" => (b"HTTP/1.1 200 OK\r\nContent-Length: 137\r\n\r\n", late_body),
        "/no-content-late-body" => (b"HTTP/1.1 204 No Content\r\n\r\n", POISON.to_vec()),
        "/late-response" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            POISON.to_vec(),
        ),
        _ => return raw::echo(seen),
    };
    Answer {
        now: now.to_vec(),
        later: Some((LATE, later)),
        close: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_an_upstream_sends_unasked_never_reach_another_request() {
    let pki = Pki::new();
    let upstream = raw::recording(answer).await;
    let addr = upstream.addr;
    let server = pki.server("site-a", &[SITE]);
    let shield = Shield::one_worker(&one_site_toml(&pki, &[SITE], &server, addr, "")).await;
    let connect = || async {
        let config = client_config(&pki, Some(&pki.good), &[b"http/1.1"]);
        tls_connect(config, shield.tls_port(), SITE).await.unwrap()
    };
    for (round, (method, path, status)) in CASES.into_iter().enumerate() {
        let mut client = connect().await;
        let mut buf = Vec::new();
        let request = format!("{method} {path} HTTP/1.1\r\nHost: {SITE}\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        let (got, _, _) = raw::response(&mut client, &mut buf, method == "HEAD")
            .await
            .expect("an answer");
        assert_eq!(got, status, "{method} {path}");
        // The stray bytes are in the pooled stream's socket by now.
        tokio::time::sleep(LATE * 2).await;

        // The same client, then clients on fresh connections.
        let mut fresh = [connect().await, connect().await];
        for (who, stream) in std::iter::once(&mut client)
            .chain(fresh.iter_mut())
            .enumerate()
        {
            let own = format!("/after{round}/client{who}");
            let request = format!("GET {own} HTTP/1.1\r\nHost: {SITE}\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut buf = if who == 0 {
                std::mem::take(&mut buf)
            } else {
                Vec::new()
            };
            let (got, _, body) = raw::response(stream, &mut buf, false)
                .await
                .expect("an answer");
            assert_eq!(
                (got, String::from_utf8_lossy(&body).into_owned()),
                (200, format!("GET {own}")),
                "after {method} {path}: client {who} got an answer not meant for it"
            );
        }
        assert_eq!(
            shield
                .http_metrics
                .upstream_discards(&addr.to_string(), Discard::UnsolicitedBytes),
            round as u64 + 1,
            "after {method} {path}"
        );
    }
    let series = format!(
        "shield_upstream_discarded_total{{upstream=\"{addr}\",reason=\"unsolicited_bytes\"}} 3"
    );
    let text = shield.metrics_text();
    assert!(text.contains(&series), "{series} not in\n{text}");
}

/// The same over h2, where a GET or HEAD takes the raw exchange on the
/// same pool of plain streams: the same clients, the same proof.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_an_upstream_sends_unasked_never_reach_another_h2_request() {
    let pki = Pki::new();
    let upstream = raw::recording(answer).await;
    let addr = upstream.addr;
    let server = pki.server("site-a", &[SITE]);
    let shield = Shield::one_worker(&one_site_toml(&pki, &[SITE], &server, addr, "")).await;
    let port = shield.tls_port();
    let request = |method: &str, path: &str| {
        http::Request::builder()
            .method(method)
            .uri(format!("https://{SITE}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    for (round, (method, path, status)) in CASES.into_iter().enumerate() {
        let mut client = h2_client(&pki, port, SITE).await;
        let response = client.send_request(request(method, path)).await.unwrap();
        assert_eq!(response.status(), status, "{method} {path}");
        response.into_body().collect().await.unwrap();
        // The stray bytes are in the pooled stream's socket by now.
        tokio::time::sleep(LATE * 2).await;

        // The same connection, then fresh ones.
        let mut senders = vec![client];
        for _ in 0..2 {
            senders.push(h2_client(&pki, port, SITE).await);
        }
        for (who, sender) in senders.iter_mut().enumerate() {
            let own = format!("/after{round}/client{who}");
            let response = sender.send_request(request("GET", &own)).await.unwrap();
            let got = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(
                (got.as_u16(), String::from_utf8_lossy(&body).into_owned()),
                (200, format!("GET {own}")),
                "after {method} {path}: client {who} got an answer not meant for it"
            );
        }
        assert_eq!(
            shield
                .http_metrics
                .upstream_discards(&addr.to_string(), Discard::UnsolicitedBytes),
            round as u64 + 1,
            "after {method} {path}"
        );
    }
}
