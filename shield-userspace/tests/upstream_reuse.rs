//! A pooled upstream stream is reused only when provably clean: bytes an
//! upstream sends after a complete response (a late body to a HEAD or a
//! 204, an unsolicited second response) must never reach the next request,
//! whichever client sends it. One connection worker, so every client shares
//! the one pool the bytes landed in; victims on fresh connections.

mod tls_support;

use std::{net::SocketAddr, num::NonZeroUsize, time::Duration};

use shield::{proxy::metrics::Discard, tls::FrontendOptions};
use tls_support::{client_config, one_site_toml, pki::Pki, tls_connect, Shield};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const SITE: &str = "www.a.test";
/// How long after its answer the upstream sends the stray bytes.
const LATE: Duration = Duration::from_millis(300);

/// What the stray bytes are made to look like: a response another request
/// would take as its own.
const POISON: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\npoisoned";

/// A raw upstream answering each request with a body naming the request it
/// saw (`GET /path`), except the paths that misbehave: `/head-late-body`
/// (a HEAD answered with `Content-Length: 137`, and 137 bytes of body
/// later), `/no-content-late-body` (a 204, and a body later) and
/// `/late-response` (a complete answer, and a second one later).
async fn recording_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = find(&buf, b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let mut words = head.split(' ');
                    let method = words.next().unwrap_or_default().to_owned();
                    let path = words.next().unwrap_or_default().to_owned();
                    let (now, later) = answer(&method, &path);
                    if tcp.write_all(&now).await.is_err() {
                        return;
                    }
                    if let Some(later) = later {
                        tokio::time::sleep(LATE).await;
                        if tcp.write_all(&later).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, task)
}

fn answer(method: &str, path: &str) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut late_body = POISON.to_vec();
    late_body.resize(137, b'x');
    match path {
        "/head-late-body" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 137\r\n\r\n".to_vec(),
            Some(late_body),
        ),
        "/no-content-late-body" => (
            b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            Some(POISON.to_vec()),
        ),
        "/late-response" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            Some(POISON.to_vec()),
        ),
        _ => {
            let body = format!("{method} {path}");
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            ([head.into_bytes(), body.into_bytes()].concat(), None)
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One response head and its `Content-Length` body (none for a HEAD).
async fn response<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> (u16, Vec<u8>) {
    async fn fill<R: AsyncRead + Unpin>(stream: &mut R, buf: &mut Vec<u8>) {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("response within 10 s")
            .unwrap_or(0);
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = loop {
        match find(buf, b"\r\n\r\n") {
            Some(end) => break end,
            None => fill(stream, buf).await,
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    buf.drain(..end + 4);
    let status: u16 = head[9..12].parse().unwrap();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |l| l.parse().unwrap());
    if head_request || status == 204 {
        return (status, Vec::new());
    }
    while buf.len() < length {
        fill(stream, buf).await;
    }
    (status, buf.drain(..length).collect())
}

async fn one_worker_shield(pki: &Pki, upstream: SocketAddr) -> Shield {
    let server = pki.server("site-a", &[SITE]);
    Shield::start_with(
        &one_site_toml(pki, &[SITE], &server, upstream, ""),
        FrontendOptions {
            watch_interval: None,
            workers: NonZeroUsize::new(1),
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_an_upstream_sends_unasked_never_reach_another_request() {
    let pki = Pki::new();
    let (addr, _upstream) = recording_upstream().await;
    let shield = one_worker_shield(&pki, addr).await;
    let connect = || async {
        let config = client_config(&pki, Some(&pki.good), &[b"http/1.1"]);
        tls_connect(config, shield.tls_port(), SITE).await.unwrap()
    };
    let cases = [
        ("HEAD", "/head-late-body", 200),
        ("GET", "/no-content-late-body", 204),
        ("GET", "/late-response", 200),
    ];
    for (round, (method, path, status)) in cases.into_iter().enumerate() {
        let mut client = connect().await;
        let mut buf = Vec::new();
        let request = format!("{method} {path} HTTP/1.1\r\nHost: {SITE}\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        let (got, _) = response(&mut client, &mut buf, method == "HEAD").await;
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
            let (got, body) = response(stream, &mut buf, false).await;
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
