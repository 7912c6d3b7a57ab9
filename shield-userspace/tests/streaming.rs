//! Bodies stream through shield both ways: a 100 MiB upload (curl, h1 with
//! `Expect: 100-continue`, and h2) raises the real binary's memory by far
//! less than the body, and server-sent events arrive one by one, over h1
//! (the direct path) and h2 alike.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, StreamBody};
use hyper::{body::Frame, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use shield_test_support::{
    pki::Pki,
    process::{Sample, ShieldProcess},
    tls::{client_config, curl, h2_client, site_toml, tls_connect, Req},
};
use tokio::net::TcpListener;

const SITE: &str = "stream.example";
const UPLOAD: u64 = 100 * 1024 * 1024;
/// What the upload may add to shield's resident memory at its peak.
const UPLOAD_MEMORY_BOUND_KIB: i64 = 16 * 1024;
const EVENTS: usize = 5;
const EVENT_GAP: Duration = Duration::from_millis(200);

/// An HTTP/1.1 application: `/events` sends [`EVENTS`] server-sent events
/// [`EVENT_GAP`] apart; anything else reads the request body to its end,
/// slowly enough that shield must hold back, and answers with its length.
async fn application() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(|request: Request<hyper::body::Incoming>| async move {
                    if request.uri().path() == "/events" {
                        let (tx, rx) =
                            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
                        tokio::spawn(async move {
                            for n in 0..EVENTS {
                                let event = format!("data: event {n}\n\n");
                                let _ = tx.send(Ok(Frame::data(Bytes::from(event)))).await;
                                tokio::time::sleep(EVENT_GAP).await;
                            }
                        });
                        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx))
                            .boxed();
                        let mut response = Response::new(body);
                        response.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("text/event-stream"),
                        );
                        return Ok::<_, Infallible>(response);
                    }
                    let mut body = request.into_body();
                    let mut received = 0u64;
                    while let Some(frame) = body.frame().await {
                        if let Some(data) = frame.unwrap().data_ref() {
                            received += data.len() as u64;
                        }
                        // ~200 MiB/s at most: slower than loopback, so
                        // whatever shield buffers would show.
                        if received % (4 * 1024 * 1024) < 16 * 1024 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    let body =
                        http_body_util::Full::new(Bytes::from(format!("received {received}")))
                            .map_err(|never| match never {})
                            .boxed();
                    Ok(Response::new(body))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

fn start(pki: &Pki, app: std::net::SocketAddr) -> ShieldProcess {
    let server = pki.server("stream", &[SITE]);
    let site = site_toml(
        &[SITE],
        "127.0.0.1:0",
        &server,
        &[&pki.zone_ca.file],
        app,
        "",
    );
    ShieldProcess::start(env!("CARGO_BIN_EXE_shield"), &site)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_upload_streams_with_bounded_memory_over_h1_and_h2() {
    let app = application().await;
    let pki = Pki::new();
    let shield = start(&pki, app);
    let file = tempfile::NamedTempFile::new().unwrap();
    {
        use std::io::Write as _;
        let mut writer = std::io::BufWriter::new(file.as_file());
        let chunk = vec![0x5a_u8; 1024 * 1024];
        for _ in 0..UPLOAD / (1024 * 1024) {
            writer.write_all(&chunk).unwrap();
        }
    }
    let path = file.path().display().to_string();
    for http2 in [false, true] {
        let before = shield.sample();
        // The peak, sampled while the upload runs.
        let (peak, done) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let sampler = {
            let (peak, done, pid) = (peak.clone(), done.clone(), shield.pid());
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    peak.fetch_max(Sample::of(pid).rss_kib, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let started = Instant::now();
        // curl sends `Expect: 100-continue` before a large h1 upload and
        // waits a second for the 100 unless it comes.
        let out = curl(
            &pki,
            Req {
                host: SITE,
                port: shield.port,
                path: "/upload",
                client: Some(&pki.good),
                http2,
                extra: &["-T", &path, "-v"],
                ..Req::default()
            },
        )
        .await;
        done.store(true, Ordering::SeqCst);
        sampler.join().unwrap();
        assert_eq!(out.status, Some(200), "{out:?}");
        assert_eq!(out.body, format!("received {UPLOAD}"), "http2={http2}");
        if !http2 {
            assert!(
                out.stderr.contains("100 Continue"),
                "the client's Expect was answered: {}",
                out.stderr
            );
        }
        let growth = peak.load(Ordering::SeqCst) as i64 - before.rss_kib as i64;
        assert!(
            growth < UPLOAD_MEMORY_BOUND_KIB,
            "http2={http2}: a {UPLOAD}-byte upload raised shield's memory by {growth} KiB in {:?}",
            started.elapsed()
        );
        println!(
            "http2={http2}: 100 MiB upload, peak growth {growth} KiB, {:?}",
            started.elapsed()
        );
    }
}

/// The arrival time of each data frame of `/events` after the head.
async fn event_arrivals<B>(response: Response<B>) -> Vec<(Duration, Bytes)>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let started = Instant::now();
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            arrivals.push((started.elapsed(), data));
        }
    }
    arrivals
}

fn assert_one_by_one(arrivals: &[(Duration, Bytes)], over: &str) {
    let text: Vec<u8> = arrivals.iter().flat_map(|(_, d)| d.to_vec()).collect();
    let want: String = (0..EVENTS)
        .map(|n| format!("data: event {n}\n\n"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&text), want, "{over}");
    // Each event on its own, as produced: none waited for the next.
    for n in 1..EVENTS {
        let at = arrivals
            .iter()
            .find(|(_, d)| String::from_utf8_lossy(d).contains(&format!("event {n}")))
            .map(|(at, _)| *at)
            .unwrap();
        let previous = arrivals
            .iter()
            .find(|(_, d)| String::from_utf8_lossy(d).contains(&format!("event {}", n - 1)))
            .map(|(at, _)| *at)
            .unwrap();
        assert!(
            at - previous >= EVENT_GAP / 2,
            "{over}: event {n} came with event {} ({arrivals:?})",
            n - 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_one_by_one_over_h1_and_h2() {
    let app = application().await;
    let pki = Pki::new();
    let shield = start(&pki, app);
    let port = shield.port;

    let tls = tls_connect(
        client_config(&pki, Some(&pki.good), &[b"http/1.1"]),
        port,
        SITE,
    )
    .await
    .unwrap();
    let (mut h1, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::get("/events")
        .header("host", SITE)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let arrivals = event_arrivals(h1.send_request(request).await.unwrap()).await;
    assert_one_by_one(&arrivals, "h1");

    let mut h2 = h2_client(&pki, port, SITE).await;
    let request = Request::get(format!("https://{SITE}/events"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let arrivals = event_arrivals(h2.send_request(request).await.unwrap()).await;
    assert_one_by_one(&arrivals, "h2");
}
