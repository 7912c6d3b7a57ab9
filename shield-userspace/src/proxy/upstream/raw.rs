//! The raw exchange: a request without a body that hyper's server parsed
//! (an h2 stream's GET or HEAD, the common origin pull) sent upstream the
//! way the direct path sends its own, on a pooled plain TCP stream. The
//! head comes written by `h1::request` (the one header policy), the
//! response head is judged by `h1::response` into the parts of the h2
//! response, and the body is decoded by `h1::body` as the stream's task
//! polls it: one task per request, where hyper's client also woke the
//! upstream connection's own task and crossed two channels each time.
//!
//! Requests with a body stay with hyper's client, which streams them.

use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::{uri::Authority, Response};
use hyper::body::{Body, Frame};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use super::{UpstreamClient, UpstreamError};
use crate::proxy::h1::{
    body::{Encoding, Progress, Reframe, READ_CHUNK},
    response::H2Head,
};

impl UpstreamClient {
    /// Sends `head` (a GET or HEAD without a body, `head_request` for
    /// HEAD) to `authority` on a raw stream, retried on another when a
    /// reused one turns out closed; the response, its body still to come.
    pub(in crate::proxy) async fn request_raw(
        &self,
        authority: &Authority,
        head: &[u8],
        head_request: bool,
    ) -> Result<Response<RawBody>, UpstreamError> {
        let mut upstream = BytesMut::new();
        let mut parts = H2Head::default();
        let (tcp, answered) = self
            .exchange_head(
                authority,
                head,
                &mut upstream,
                (head_request, false),
                &mut parts,
            )
            .await?;
        let body = RawBody {
            tcp: Some(tcp),
            upstream,
            body: Reframe::new(answered.framing, Encoding::Plain),
            out: Vec::new(),
            reusable: answered.reusable,
            home: Some((self.clone(), authority.clone())),
        };
        Ok(Response::from_parts(parts.0, body))
    }
}

/// A response body read from its raw stream as it is polled. The stream
/// goes back to the pool when the body ended exactly where the upstream's
/// data did (nothing more was sent, and the upstream keeps it open), and
/// is closed otherwise: dropped early, broken, or ended by close.
#[derive(Debug)]
pub struct RawBody {
    /// `None` once the upstream closed, broke, or the stream went back.
    tcp: Option<TcpStream>,
    /// Read from the upstream, not yet decoded.
    upstream: BytesMut,
    body: Reframe,
    /// Decoded, not yet passed on.
    out: Vec<u8>,
    reusable: bool,
    /// Where the stream goes back to.
    home: Option<(UpstreamClient, Authority)>,
}

impl RawBody {
    /// The body is whole: the stream goes back if it is clean.
    fn release(&mut self) {
        let clean = self.reusable && self.upstream.is_empty();
        if let (Some(tcp), Some((client, authority))) = (self.tcp.take(), self.home.take()) {
            if clean {
                client.put_stream(&authority, tcp);
            }
        }
    }

    fn broken(
        &mut self,
        error: UpstreamError,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        self.tcp = None;
        self.home = None;
        Poll::Ready(Some(Err(error)))
    }

    fn decoded(&mut self) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let data = Bytes::from(std::mem::take(&mut self.out));
        Poll::Ready(Some(Ok(Frame::data(data))))
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = &mut *self;
        loop {
            match this.body.feed(&mut this.upstream, &mut this.out) {
                Err(error) => return this.broken(UpstreamError::Body(error)),
                Ok(Progress::Done) => {
                    this.release();
                    if this.out.is_empty() {
                        return Poll::Ready(None);
                    }
                    return this.decoded();
                }
                Ok(Progress::More) => {}
            }
            // What arrived goes on before waiting for more: a streamed
            // body (server-sent events) arrives as it is produced.
            if !this.out.is_empty() {
                return this.decoded();
            }
            let Some(tcp) = this.tcp.as_mut() else {
                return this.broken(UpstreamError::ClosedEarly);
            };
            this.upstream.reserve(READ_CHUNK);
            match ready!(poll_read_buf(Pin::new(tcp), cx, &mut this.upstream)) {
                Ok(0) => {
                    // Ended by close, or broken off: either way the stream
                    // is done with.
                    this.tcp = None;
                    this.home = None;
                    if let Err(error) = this.body.end(&mut this.out) {
                        return this.broken(UpstreamError::Body(error));
                    }
                }
                Ok(_) => {}
                Err(error) => return this.broken(UpstreamError::Io(error)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_done() && self.out.is_empty()
    }
}

impl Drop for RawBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304) is done before it is ever polled.
        if self.body.is_done() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{header, StatusCode};
    use http_body_util::BodyExt as _;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;
    use crate::proxy::metrics::HttpMetrics;

    /// An upstream that answers each request it reads on one connection
    /// with the next of `answers`, then keeps the connection open; the
    /// number of connections it accepted is the value of the task.
    async fn upstream(answers: Vec<&'static [u8]>) -> (Authority, tokio::task::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let task = tokio::spawn(async move {
            let mut accepted = 0;
            let mut answers = answers.into_iter();
            while let Ok((mut tcp, _)) = listener.accept().await {
                accepted += 1;
                let mut buf = vec![0; 4096];
                loop {
                    let mut read = 0;
                    while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut buf[read..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => read += n,
                        }
                    }
                    if read == 0 {
                        break;
                    }
                    match answers.next() {
                        Some(answer) => tcp.write_all(answer).await.unwrap(),
                        None => return accepted,
                    }
                }
            }
            accepted
        });
        (authority, task)
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n";

    #[tokio::test]
    async fn bodies_are_decoded_and_clean_streams_reused() {
        let (authority, upstream) = upstream(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabc",
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n2\r\nde\r\n1\r\nf\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ])
        .await;
        let client = super::super::client(HttpMetrics::default());
        let response = client.request_raw(&authority, GET, false).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "3");
        // Hop-by-hop fields never reach an h2 stream.
        assert!(!response.headers().contains_key(header::CONNECTION));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"abc");

        let response = client.request_raw(&authority, GET, false).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["x-a"], "1");
        assert!(!response.headers().contains_key(header::TRANSFER_ENCODING));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"def");

        // Empty from the start: dropped unpolled, the stream still goes back.
        let response = client.request_raw(&authority, GET, false).await.unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert!(response.body().is_end_stream());
        drop(response);

        // The fourth request finds no answer left: the upstream task ends,
        // having accepted one connection for all three.
        let fourth = client.request_raw(&authority, GET, false).await;
        assert!(fourth.is_err());
        assert_eq!(upstream.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_early_or_ended_by_close_is_not_reused() {
        let (authority, upstream) = upstream(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
        ])
        .await;
        let client = super::super::client(HttpMetrics::default());
        let mut body = client
            .request_raw(&authority, GET, false)
            .await
            .unwrap()
            .into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"abc");
        drop(body);
        // A new connection answers the second: the first was not pooled.
        let body = client
            .request_raw(&authority, GET, false)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"x");
        drop(client);
        upstream.abort();
        let _ = upstream.await;
    }

    #[tokio::test]
    async fn a_malformed_or_cut_body_is_an_error() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
            let server = tokio::spawn(async move {
                let (mut tcp, _) = listener.accept().await.unwrap();
                let mut buf = [0; 1024];
                let _ = tcp.read(&mut buf).await;
                tcp.write_all(answer).await.unwrap();
                // Closing cuts the second one short.
            });
            let client = super::super::client(HttpMetrics::default());
            let body = client
                .request_raw(&authority, GET, false)
                .await
                .unwrap()
                .into_body();
            server.await.unwrap();
            assert!(body.collect().await.is_err(), "{answer:?}");
        }
    }
}
