//! The vendored h2's one change (third_party/README.md): a connection with
//! no stream open, nothing to read and nothing left to write gives its
//! read and write buffers back, and takes them again for the next frame;
//! not at the end of the poll that finished a burst of requests, but at
//! the next quiet one.
//!
//! Measured with a counting allocator in this test binary alone: live
//! heap bytes per idle connection pair (an h2 server and an h2 client on
//! an in-memory pipe, one request done), then a second request on every
//! pair, with a header block and a body larger than the buffers, so that
//! what was released is proven to come back.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use shield_test_support::heap::{live, Counting};
use tokio::sync::Notify;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const PAIRS: usize = 64;
/// The in-memory pipe's room each way: small, since a pipe keeps the
/// room it grew to and that would be counted with the connections.
const PIPE: usize = 1024;
/// What an idle pair may hold: 8.6 KiB here with the change (10.9 after
/// the larger second request), 72 KiB with h2 0.4.20 as released. Tight
/// enough that any one part of the change undone fails it: the 4 KiB of
/// Huffman room an `:authority` table entry pinned alone goes over.
const IDLE_PAIR_BOUND: isize = 12 * 1024;
/// Larger than the write buffer's 16 KiB and the read buffer's 8 KiB.
const BODY: usize = 100 * 1024;
/// A header block larger than the read buffer, smaller than the peer's
/// 16 KiB frames.
const BIG_HEADER: usize = 12 * 1024;

/// One server connection: answers every request with its own body's
/// length and a body of `BODY` bytes, until the client goes away. Each
/// `poke` polls it once more, as shield's connection driver does once a
/// connection has been quiet for `PARK_AFTER`: the poll that finishes a
/// burst of requests keeps the buffers, the next one with nothing new gives
/// them back.
async fn serve(io: tokio::io::DuplexStream, poke: Arc<Notify>) {
    let mut connection = h2::server::handshake(io).await.unwrap();
    loop {
        let accepted = tokio::select! {
            accepted = connection.accept() => accepted,
            () = poke.notified() => continue,
        };
        let Some(accepted) = accepted else {
            break;
        };
        let (request, mut respond) = accepted.unwrap();
        tokio::spawn(async move {
            let mut body = request.into_body();
            let mut got = 0;
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                got += chunk.len();
                body.flow_control().release_capacity(chunk.len()).unwrap();
            }
            let response = Response::builder()
                .header("x-got", got.to_string())
                .body(())
                .unwrap();
            let mut send = respond.send_response(response, false).unwrap();
            send.send_data(Bytes::from(vec![b'r'; BODY]), true).unwrap();
        });
    }
}

/// One request on `client`: returns the response's `x-got` and body length.
async fn exchange(
    client: &mut h2::client::SendRequest<Bytes>,
    header: Option<&str>,
    body: Option<Bytes>,
) -> (usize, usize) {
    let mut request = Request::post("https://localhost/");
    if let Some(value) = header {
        request = request.header("x-big", value);
    }
    let ready = client.clone().ready().await.unwrap();
    *client = ready;
    let (response, mut send) = client
        .send_request(request.body(()).unwrap(), body.is_none())
        .unwrap();
    if let Some(body) = body {
        send.reserve_capacity(body.len());
        send.send_data(body, true).unwrap();
    }
    let response = response.await.unwrap();
    let got: usize = response.headers()["x-got"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut body = response.into_body();
    let mut len = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        len += chunk.len();
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    (got, len)
}

/// Lets every connection task run until it has nothing left to do.
async fn settle() {
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Live heap per pair since `before`.
fn per_pair(before: isize) -> isize {
    (live() - before) / PAIRS as isize
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_h2_connection_gives_its_buffers_back_and_takes_them_again() {
    settle().await;
    let before = live();
    let poke = Arc::new(Notify::new());
    let mut clients = Vec::with_capacity(PAIRS);
    for _ in 0..PAIRS {
        let (near, far) = tokio::io::duplex(PIPE);
        tokio::spawn(serve(far, poke.clone()));
        let (client, connection) = h2::client::handshake(near).await.unwrap();
        tokio::spawn(async move {
            let _ = connection.await;
        });
        clients.push(client);
    }
    for client in &mut clients {
        assert_eq!(exchange(client, None, None).await, (0, BODY));
    }
    settle().await;
    // The poll that finished the request kept the server's buffers: a
    // client that sends its next request at once finds them there.
    let busy = per_pair(before);
    println!("live heap per h2 connection pair right after a request: {busy} bytes");
    assert!(
        busy > IDLE_PAIR_BOUND,
        "a pair holds {busy} bytes right after a request: the buffers went at the end of the burst"
    );
    poke.notify_waiters();
    settle().await;
    let idle = per_pair(before);
    println!("live heap per idle h2 connection pair (server and client): {idle} bytes");
    // Each side held 16 KiB of write buffer, 8 KiB of read buffer and 4 KiB
    // of HPACK decoding room for life before the change. What is left is
    // the HPACK tables, the stream stores, the settings and the pipe.
    assert!(
        idle < IDLE_PAIR_BOUND,
        "an idle pair holds {idle} bytes; its buffers were not given back"
    );

    // What was given back comes back when needed, on every connection.
    let big = "v".repeat(BIG_HEADER);
    for client in &mut clients {
        let upload = Bytes::from(vec![b'u'; BODY]);
        assert_eq!(
            exchange(client, Some(&big), Some(upload)).await,
            (BODY, BODY)
        );
    }
    drop(big);
    settle().await;
    poke.notify_waiters();
    settle().await;
    let after = per_pair(before);
    println!("after a second, larger request on each: {after} bytes per pair");
    assert!(
        after < IDLE_PAIR_BOUND,
        "an idle pair holds {after} bytes after a second request"
    );
}
