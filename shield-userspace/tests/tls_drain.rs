//! How established connections end on a reload and on shutdown: an h2
//! connection gets GOAWAY and its in-flight streams finish with their
//! answers, an HTTP/1.1 keep-alive connection closes once idle, and the
//! next request comes on a new connection, verified under the new config.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use shield::config::Config;
use shield_test_support::{
    pki::Pki,
    tls::{
        client_config, one_site_toml, read_to_close, site_toml, tls_connect, upstream, Shield,
        HTTP_OFF,
    },
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    task::JoinHandle,
    time::timeout,
};

const SITE: &str = "www.a.test";

/// An h2 connection of its own (so that its end can be watched): the
/// sender, and the connection's task, which ends `Ok` on a graceful close.
async fn h2_connection(
    pki: &Pki,
    port: u16,
) -> (
    hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    JoinHandle<hyper::Result<()>>,
) {
    let tls = tls_connect(client_config(pki, Some(&pki.good), &[b"h2"]), port, SITE)
        .await
        .unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    (sender, tokio::spawn(connection))
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("https://{SITE}{path}"))
        .body(Empty::new())
        .unwrap()
}

/// A slow request in flight on an h2 connection, `drain` run meanwhile:
/// the request is answered in full, the connection then ends gracefully
/// (GOAWAY, not a reset), and a new connection is served.
async fn in_flight_h2_streams_finish(drain: impl FnOnce(&Shield)) {
    let pki = Pki::new();
    let up = upstream().await;
    let server = pki.server("site-a", &[SITE]);
    let shield = Shield::start(&one_site_toml(&pki, &[SITE], &server, up.addr, "")).await;
    let port = shield.tls_port();

    let (mut sender, connection) = h2_connection(&pki, port).await;
    let warm = sender.send_request(get("/")).await.unwrap();
    assert_eq!(warm.status(), 200);
    let slow = tokio::spawn(sender.send_request(get("/slow?ms=1500")));
    tokio::time::sleep(Duration::from_millis(400)).await;

    drain(&shield);

    let answered = timeout(Duration::from_secs(10), slow)
        .await
        .expect("the in-flight stream was answered")
        .unwrap()
        .unwrap();
    assert_eq!(answered.status(), 200);
    let body = answered.into_body().collect().await.unwrap().to_bytes();
    assert!(
        body.starts_with(b"GET /slow?ms=1500"),
        "{:?}",
        String::from_utf8_lossy(&body)
    );
    // GOAWAY, then the close once nothing is in flight: the client's
    // connection ends without an error.
    let ended = timeout(Duration::from_secs(10), connection)
        .await
        .expect("the connection closed after its last stream");
    assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
    assert!(sender.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_sends_goaway_and_in_flight_streams_finish() {
    // The same config again: a reload retires connections whatever it
    // changed, as nginx's old workers close theirs.
    in_flight_h2_streams_finish(|shield| shield.frontend.reload(&shield.config).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_goaway_and_in_flight_streams_finish() {
    in_flight_h2_streams_finish(|shield| shield.frontend.shutdown()).await;
}

/// After a reload, connections verified under the old config carry no new
/// request: an idle HTTP/1.1 keep-alive connection is closed, a new one is
/// served (here: verified against the new config's CA only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_closes_idle_keep_alive_connections_of_the_old_config() {
    let pki = Pki::new();
    let up = upstream().await;
    let server = pki.server("site-a", &[SITE]);
    let shield = Shield::start(&one_site_toml(&pki, &[SITE], &server, up.addr, "")).await;
    let port = shield.tls_port();

    let config = client_config(&pki, Some(&pki.good), &[b"http/1.1"]);
    let mut tls = tls_connect(config, port, SITE).await.unwrap();
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {SITE}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0; 4096];
    let n = tls.read(&mut answer).await.unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &answer[..n]
    );

    // Only the rotation CA from now on: the old connection, verified with
    // the zone's CA, must not go on serving.
    let rotated = site_toml(
        &[SITE],
        "127.0.0.1:0",
        &server,
        &[&pki.rotation_ca.file],
        up.addr,
        "",
    );
    let after = format!("{HTTP_OFF}{rotated}");
    shield
        .frontend
        .reload(&Config::parse(&after).unwrap())
        .unwrap();

    let rest = timeout(Duration::from_secs(5), read_to_close(&mut tls))
        .await
        .expect("the idle connection of the old config was closed");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));

    let config = client_config(&pki, Some(&pki.rotated), &[b"http/1.1"]);
    let mut tls = tls_connect(config, port, SITE).await.unwrap();
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {SITE}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let n = tls.read(&mut answer).await.unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &answer[..n]
    );
}
