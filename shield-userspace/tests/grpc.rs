//! `upstream = "h2c://..."`: HTTP/2 with prior knowledge to the local
//! application, so gRPC through Cloudflare works. A real gRPC client and
//! server (tonic, its health service) over TLS with the zone's client
//! certificate; trailers and streamed frames checked at the HTTP/2 level
//! with hyper's client; an h2c upstream that speaks HTTP/1.1 is a 502.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::{body::Frame, service::service_fn, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use shield_test_support::{
    pki::Pki,
    tls::{
        client_config, curl, h2_client, site_toml, tls_connect, upstream, Req, Shield, HTTP_OFF,
    },
};
use tokio::net::TcpListener;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

const SITE: &str = "grpc.example";
const SERVICE: &str = "shield.test.Echo";

/// shield with one site whose upstream is `h2c://{upstream}`.
async fn edge(pki: &Pki, upstream: std::net::SocketAddr) -> Shield {
    let server = pki.server("grpc", &[SITE]);
    let site = site_toml(
        &[SITE],
        "127.0.0.1:0",
        &server,
        &[&pki.zone_ca.file],
        upstream,
        "",
    )
    .replace("upstream = \"http://", "upstream = \"h2c://");
    Shield::start(&format!("{HTTP_OFF}{site}")).await
}

/// A tonic channel to shield over TLS (ALPN h2) with the client
/// certificate, `:authority` the site's name.
async fn channel(pki: &Pki, port: u16) -> tonic::transport::Channel {
    let config = client_config(pki, Some(&pki.good), &[b"h2"]);
    tonic::transport::Endpoint::from_shared(format!("http://{SITE}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let config = config.clone();
            async move { tls_connect(config, port, SITE).await.map(TokioIo::new) }
        }))
        .await
        .unwrap()
}

#[tokio::test]
async fn grpc_unary_server_streaming_and_an_error_status_cross_shield() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let pki = Pki::new();
    let shield = edge(&pki, addr).await;
    let mut client = HealthClient::new(channel(&pki, shield.tls_port()).await);

    // Unary.
    let answer = client
        .check(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status(), ServingStatus::Serving);

    // A non-OK status with its message: both come in the trailers.
    let status = client
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert!(!status.message().is_empty(), "{status:?}");

    // Server streaming: each change arrives while the call stays open.
    let mut watch = client
        .watch(HealthCheckRequest {
            service: SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next_status(&mut watch).await, Some(ServingStatus::Serving));
    reporter
        .set_service_status(SERVICE, tonic_health::ServingStatus::NotServing)
        .await;
    assert_eq!(
        next_status(&mut watch).await,
        Some(ServingStatus::NotServing)
    );
    reporter
        .set_service_status(SERVICE, tonic_health::ServingStatus::Serving)
        .await;
    assert_eq!(next_status(&mut watch).await, Some(ServingStatus::Serving));
    drop(watch);
    assert!(shield.http_metrics.requests(SITE, 200) >= 3);
    server.abort();
}

/// The next status a health watch reports.
async fn next_status(
    watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) -> Option<ServingStatus> {
    tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("a message within 5 s")
        .unwrap()
        .map(|message| message.status())
}

/// What the h2c upstream saw of a request.
#[derive(Debug, Clone, Default)]
struct Seen {
    authority: Option<String>,
    te: Option<String>,
    host: Option<String>,
    body: Vec<u8>,
    version: Option<http::Version>,
}

/// An HTTP/2-only upstream: records the request, then answers three
/// chunks 100 ms apart and trailers with custom metadata; on `/endless`, a
/// chunk every 50 ms until the stream is cancelled, which it records as an
/// empty `Seen` with no version.
async fn h2c_upstream() -> (std::net::SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let endless = parts.uri.path() == "/endless";
                        let body = body.collect().await.unwrap().to_bytes().to_vec();
                        record.lock().unwrap().push(Seen {
                            authority: parts.uri.authority().map(ToString::to_string),
                            te: header(&parts.headers, "te"),
                            host: header(&parts.headers, "host"),
                            body,
                            version: Some(parts.version),
                        });
                        let (tx, rx) =
                            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
                        let cancelled = record.clone();
                        tokio::spawn(async move {
                            if endless {
                                let tick = || Ok(Frame::data(Bytes::from("tick ")));
                                while tx.send(tick()).await.is_ok() {
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                                cancelled.lock().unwrap().push(Seen::default());
                                return;
                            }
                            for chunk in ["one ", "two ", "three"] {
                                let _ = tx.send(Ok(Frame::data(Bytes::from(chunk)))).await;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            trailers.insert("x-custom-trailer", "kept".parse().unwrap());
                            let _ = tx.send(Ok(Frame::trailers(trailers))).await;
                        });
                        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                        Ok::<_, Infallible>(Response::new(body))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn header(fields: &http::HeaderMap, name: &str) -> Option<String> {
    fields
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tokio::test]
async fn trailers_and_streamed_frames_cross_to_and_from_an_h2c_upstream() {
    let (addr, seen) = h2c_upstream().await;
    let pki = Pki::new();
    let shield = edge(&pki, addr).await;
    let mut sender = h2_client(&pki, shield.tls_port(), SITE).await;
    let request = Request::post(format!("https://{SITE}/shield.test.Echo/Say"))
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"hello upstream")))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let (mut data, mut arrivals, mut trailers) = (Vec::new(), Vec::new(), None);
    let started = std::time::Instant::now();
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(chunk) = frame.data_ref() {
            data.extend_from_slice(chunk);
            arrivals.push(started.elapsed());
        } else if let Ok(map) = frame.into_trailers() {
            trailers = Some(map);
        }
    }
    assert_eq!(data, b"one two three");
    // Streamed as produced, not gathered: the chunks came 100 ms apart.
    assert!(arrivals.len() >= 3, "{arrivals:?}");
    assert!(
        arrivals[arrivals.len() - 1] - arrivals[0] >= Duration::from_millis(150),
        "{arrivals:?}"
    );
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(trailers.get("x-custom-trailer").unwrap(), "kept");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].version, Some(http::Version::HTTP_2));
    assert_eq!(seen[0].authority.as_deref(), Some(SITE));
    assert_eq!(seen[0].te.as_deref(), Some("trailers"));
    assert_eq!(seen[0].host, None);
    assert_eq!(seen[0].body, b"hello upstream");
}

/// A client that cancels a stream (RST_STREAM) cancels it at the upstream.
#[tokio::test]
async fn a_cancelled_stream_is_cancelled_at_the_upstream() {
    let (addr, seen) = h2c_upstream().await;
    let pki = Pki::new();
    let shield = edge(&pki, addr).await;
    let mut sender = h2_client(&pki, shield.tls_port(), SITE).await;
    let request = Request::get(format!("https://{SITE}/endless"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut body = sender.send_request(request).await.unwrap().into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.data_ref().map(|d| d.as_ref()), Some(&b"tick "[..]));
    // Dropping the body resets the stream.
    drop(body);
    let cancelled = async {
        loop {
            if seen.lock().unwrap().iter().any(|s| s.version.is_none()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(3), cancelled)
        .await
        .expect("the upstream's stream is cancelled within 3 s");
    // The connection goes on: the next request on it is answered.
    let request = Request::post(format!("https://{SITE}/again"))
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let data = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&data[..], b"one two three");
}

#[tokio::test]
async fn an_h2c_upstream_that_speaks_http1_is_a_502_with_the_request_id() {
    shield_test_support::require("curl");
    let http1_only = upstream().await;
    let pki = Pki::new();
    let shield = edge(&pki, http1_only.addr).await;
    for http2 in [true, false] {
        let out = curl(
            &pki,
            Req {
                host: SITE,
                port: shield.tls_port(),
                client: Some(&pki.good),
                http2,
                ..Req::default()
            },
        )
        .await;
        assert_eq!(out.status, Some(502), "{out:?}");
        assert!(out.body.contains("(request "), "{out:?}");
    }
}
