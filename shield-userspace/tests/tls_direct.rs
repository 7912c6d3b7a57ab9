//! The direct HTTP/1.1 path (`proxy::direct`) end to end, with a real TLS
//! client: upstream answers it re-frames (chunked, ended by close), pooled
//! upstream streams that turn out closed, pipelining, a connection moving
//! between the direct path and hyper, ambiguous upstream framing (502), and
//! a smuggling attempt that must never reach the upstream.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use shield_test_support::{
    pki::Pki,
    raw::{self, find},
    tls::{client_config, one_site_toml, tls_connect, upstream, Shield},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

const SITE: &str = "www.a.test";

/// An upstream writing canned answers: `answer(path)` gives the bytes and
/// whether to close the connection after them. Records every request line
/// and counts connections.
struct Canned {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Canned {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn canned(answer: fn(&str) -> (Vec<u8>, bool)) -> Canned {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (seen_by_task, counted) = (seen.clone(), connections.clone());
    let task = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let seen = seen_by_task.clone();
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
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
                    seen.lock().unwrap().push(line);
                    let (bytes, close) = answer(&path);
                    if tcp.write_all(&bytes).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    Canned {
        addr,
        seen,
        connections,
        task,
    }
}

/// One response read off `stream`: status, head (lowercase), body
/// (de-chunked). `buf` keeps what was read beyond it.
async fn response<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
) -> (u16, String, Vec<u8>) {
    raw::response(stream, buf, false).await.unwrap_or_else(|| {
        panic!(
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(buf)
        )
    })
}

async fn start(pki: &Pki, upstream: SocketAddr) -> Shield {
    let server = pki.server("site-a", &[SITE]);
    Shield::start(&one_site_toml(pki, &[SITE], &server, upstream, "")).await
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {SITE}\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answers_are_reframed_and_pooled_streams_retried() {
    let pki = Pki::new();
    let up = canned(|path| match path {
        "/chunked" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n".to_vec(),
            false,
        ),
        "/until-close" => (b"HTTP/1.0 200 OK\r\n\r\nall of it".to_vec(), true),
        // A stream the upstream closes without saying so: the pooled
        // stream is stale at the next request.
        "/then-close" => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(), true),
        "/head" => (b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_vec(), false),
        _ => (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(), false),
    })
    .await;
    let shield = start(&pki, up.addr).await;
    let config = client_config(&pki, Some(&pki.good), &[b"http/1.1"]);
    let mut tls = tls_connect(config, shield.tls_port(), SITE).await.unwrap();
    let mut buf = Vec::new();

    for _ in 0..2 {
        tls.write_all(get("/chunked").as_bytes()).await.unwrap();
        let (status, head, body) = response(&mut tls, &mut buf).await;
        assert_eq!(status, 200, "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert_eq!(body, b"hello world");
    }
    // Both chunked answers on one upstream stream, put back in between.
    assert_eq!(up.connections.load(Ordering::SeqCst), 1);

    tls.write_all(get("/until-close").as_bytes()).await.unwrap();
    let (status, head, body) = response(&mut tls, &mut buf).await;
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"all of it"[..]),
        "{head}"
    );
    assert!(head.starts_with("http/1.1 200"), "{head}");

    for _ in 0..5 {
        tls.write_all(get("/then-close").as_bytes()).await.unwrap();
        let (status, head, body) = response(&mut tls, &mut buf).await;
        assert_eq!((status, body.as_slice()), (200, &b"ok"[..]), "{head}");
    }

    tls.write_all(format!("HEAD /head HTTP/1.1\r\nHost: {SITE}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // The head states the length; no body follows it.
    let end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        let mut chunk = [0u8; 4096];
        let n = tls.read(&mut chunk).await.unwrap();
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    buf.drain(..end + 4);
    assert!(head.contains("content-length: 1234"), "{head}");
    tls.write_all(get("/chunked").as_bytes()).await.unwrap();
    let (status, _, body) = response(&mut tls, &mut buf).await;
    assert_eq!((status, body.as_slice()), (200, &b"hello world"[..]));
    assert_eq!(shield.http_metrics.requests(SITE, 200), 10);
    assert_eq!(shield.http_metrics.requests(SITE, 502), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_upstream_framing_is_a_502_and_the_connection_goes_on() {
    let pki = Pki::new();
    let up = canned(|path| match path {
        "/te-and-cl" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            true,
        ),
        "/two-lengths" => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            true,
        ),
        "/gzip" => (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx".to_vec(),
            true,
        ),
        "/garbage" => (b"HTTP/1.1 2x0 OK\r\n\r\n".to_vec(), true),
        _ => (
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood".to_vec(),
            false,
        ),
    })
    .await;
    let shield = start(&pki, up.addr).await;
    let config = client_config(&pki, Some(&pki.good), &[b"http/1.1"]);
    let mut tls = tls_connect(config, shield.tls_port(), SITE).await.unwrap();
    let mut buf = Vec::new();
    for bad in ["/te-and-cl", "/two-lengths", "/gzip", "/garbage"] {
        tls.write_all(get(bad).as_bytes()).await.unwrap();
        let (status, head, body) = response(&mut tls, &mut buf).await;
        assert_eq!(status, 502, "{bad}: {head}");
        assert!(
            String::from_utf8_lossy(&body).contains("(request "),
            "{bad}"
        );
        tls.write_all(get("/good").as_bytes()).await.unwrap();
        let (status, _, body) = response(&mut tls, &mut buf).await;
        assert_eq!(
            (status, body.as_slice()),
            (200, &b"good"[..]),
            "after {bad}"
        );
    }
    assert_eq!(shield.http_metrics.requests(SITE, 502), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_and_mixed_requests_share_one_connection() {
    let pki = Pki::new();
    let up = upstream().await;
    let shield = start(&pki, up.addr).await;
    let config = client_config(&pki, Some(&pki.good), &[b"http/1.1"]);
    let mut tls = tls_connect(config, shield.tls_port(), SITE).await.unwrap();
    let mut buf = Vec::new();

    // Two heads in one write: answered in order.
    tls.write_all(format!("{}{}", get("/one"), get("/two")).as_bytes())
        .await
        .unwrap();
    for path in ["/one", "/two"] {
        let (status, _, body) = response(&mut tls, &mut buf).await;
        assert_eq!(status, 200);
        assert!(body.starts_with(format!("GET {path}\n").as_bytes()));
    }
    // A POST goes to hyper, the GETs around it, immediately and after hyper
    // has parked the connection, to whichever path has it.
    let post = format!("POST /form HTTP/1.1\r\nHost: {SITE}\r\nContent-Length: 5\r\n\r\nx=1&y");
    for pause in [Duration::ZERO, Duration::from_millis(600)] {
        tls.write_all(post.as_bytes()).await.unwrap();
        let (status, _, body) = response(&mut tls, &mut buf).await;
        assert_eq!(status, 200);
        assert!(
            body.starts_with(b"POST /form\n"),
            "{}",
            String::from_utf8_lossy(&body)
        );
        tokio::time::sleep(pause).await;
        tls.write_all(get("/after").as_bytes()).await.unwrap();
        let (status, _, body) = response(&mut tls, &mut buf).await;
        assert_eq!(status, 200);
        assert!(body.starts_with(b"GET /after\n"));
    }
    assert_eq!(shield.http_metrics.requests(SITE, 200), 6);
}

/// A head with both `Content-Length` and `Transfer-Encoding` and a second
/// request in its body: it goes to hyper, which reads the body as chunked
/// and closes the connection after answering (RFC 9112 6.1), so the hidden
/// request is never read as one, and never reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smuggled_request_never_reaches_the_upstream() {
    let pki = Pki::new();
    let up = canned(|_| {
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            false,
        )
    })
    .await;
    let shield = start(&pki, up.addr).await;
    let config = client_config(&pki, Some(&pki.good), &[b"http/1.1"]);
    let mut tls = tls_connect(config, shield.tls_port(), SITE).await.unwrap();
    let hidden = format!("GET /smuggled HTTP/1.1\r\nHost: {SITE}\r\n\r\n");
    let attack = format!(
        "GET / HTTP/1.1\r\nHost: {SITE}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}",
        5 + hidden.len()
    );
    tls.write_all(attack.as_bytes()).await.unwrap();
    let answer = String::from_utf8_lossy(&shield_test_support::tls::read_to_close(&mut tls).await)
        .into_owned();
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // Two Host fields (RFC 9112 3.2), and a Host for another site: hyper's
    // path answers.
    for (head, status) in [
        (
            format!("GET /two-hosts HTTP/1.1\r\nHost: {SITE}\r\nHost: {SITE}\r\n\r\n"),
            "HTTP/1.1 4",
        ),
        (
            "GET /elsewhere HTTP/1.1\r\nHost: other.test\r\n\r\n".to_owned(),
            "HTTP/1.1 421",
        ),
    ] {
        let config = client_config(&pki, Some(&pki.good), &[b"http/1.1"]);
        let mut tls = tls_connect(config, shield.tls_port(), SITE).await.unwrap();
        tls.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let (code, answer, _) = response(&mut tls, &mut buf).await;
        assert!(
            answer.to_uppercase().starts_with(status),
            "{code}: {answer}"
        );
    }
    let seen = up.seen.lock().unwrap().clone();
    assert!(
        seen.iter().all(|line| !line.contains("smuggled")
            && !line.contains("two-hosts")
            && !line.contains("elsewhere")),
        "the upstream saw {seen:?}"
    );
}
