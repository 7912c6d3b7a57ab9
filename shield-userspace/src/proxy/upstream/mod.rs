//! The pooled HTTP/1.1 client to the sites' upstreams.
//!
//! A lean pool over `hyper::client::conn::http1` instead of hyper-util's
//! legacy `Client`: profiling the keep-alive path showed the legacy client's
//! `send_request` and pool checkout, plus the task it spawns per request to
//! put the connection back, among the largest costs of a request
//! (docs/BENCHMARKS.md). Here a connection goes back to the pool from the
//! response body itself, when its last frame is read, and checkout is a lock
//! and a `pop`.
//!
//! The same pool also keeps plain TCP streams for the direct HTTP/1.1 path
//! (`proxy::direct`), which writes and reads the upstream's HTTP itself.
//!
//! An `h2c://` upstream gets one HTTP/2 connection per worker and
//! authority, shared by all requests (HTTP/2 multiplexes them, and the
//! upstream's `SETTINGS_MAX_CONCURRENT_STREAMS` is waited for, not
//! exceeded); a new one replaces it once it closes.

mod body;
mod pool;
mod raw;

use std::{
    collections::HashMap,
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::{Buf as _, BytesMut};
use http::{header, uri::Authority, HeaderValue, Request, Response};
use hyper::client::conn::{
    http1::{self, SendRequest},
    http2,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

pub use self::body::{client_body, started, ClientBody, PooledBody};
use self::{
    body::{Release, Returned},
    pool::Pool,
};
use super::{
    body::Watched,
    h1::{
        body::{BodyError, READ_CHUNK},
        response::{self, HeadOut, Parsed, ResponseHead},
        Malformed,
    },
    metrics::HttpMetrics,
    MAX_HEADER_BYTES,
};

/// A refused or unreachable upstream fails fast as a 502; this bounds only
/// the TCP connect, the answer itself is bounded by `upstream_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One pool per connection worker (`tls::workers`), for all sites: keyed by
/// authority, so sites sharing an upstream share its connections, and a
/// reload keeps them. Per worker, so a request and the upstream connection
/// it borrows stay on one thread (the mutex is never contended; it is there
/// because the worker's tasks must be `Send`).
#[derive(Debug, Clone)]
pub struct UpstreamClient {
    pool: Arc<Pool<SendRequest<ClientBody>>>,
    streams: Arc<Pool<TcpStream>>,
    h2c: Arc<Mutex<HashMap<Authority, http2::SendRequest<ClientBody>>>>,
}

/// A worker's client; its pools count what they discard in `metrics`.
pub fn client(metrics: HttpMetrics) -> UpstreamClient {
    UpstreamClient {
        pool: Arc::new(Pool::new(metrics.clone())),
        streams: Arc::new(Pool::new(metrics)),
        h2c: Arc::default(),
    }
}

/// Why an upstream request failed; all of them are a 502.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot resolve {authority}")]
    Resolve {
        authority: Authority,
        source: io::Error,
    },
    #[error("tcp connect to {authority} failed")]
    Connect {
        authority: Authority,
        source: io::Error,
    },
    #[error("tcp connect to {authority} timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { authority: Authority },
    #[error("HTTP handshake with the upstream failed")]
    Handshake(#[source] hyper::Error),
    #[error("upstream request failed")]
    Request(#[source] hyper::Error),
    #[error("upstream connection failed")]
    Io(#[source] io::Error),
    #[error("the upstream closed the connection before a complete response head")]
    ClosedEarly,
    #[error("malformed upstream response: {0}")]
    Malformed(&'static str),
    #[error("the upstream's response body cannot be passed on")]
    Body(#[source] BodyError),
}

impl UpstreamClient {
    /// Sends `request` (origin-form URI, as `Upstream::target_for` builds
    /// it) to `authority`, on an idle connection or a new one.
    pub async fn request(
        &self,
        authority: &Authority,
        mut request: Request<ClientBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        // What hyper-util's client did for HTTP/1: a Host header if none.
        if !request.headers().contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                request.headers_mut().insert(header::HOST, host);
            }
        }
        loop {
            let (mut sender, reused) = match self.checkout(authority).await {
                Some(sender) => (sender, true),
                // Boxed: the connect future is large and rare; inline, it
                // would be copied with every request's future.
                None => (Box::pin(connect(authority)).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let pool = Arc::clone(&self.pool);
                    let release = Release(Some(Returned {
                        pool,
                        authority: authority.clone(),
                        sender,
                    }));
                    return Ok(response.map(|body| Watched::new(body, release)));
                }
                Err(mut error) => match error.take_message() {
                    // An idle connection the upstream closed before the
                    // request was written: try again, as hyper-util did
                    // (`retry_canceled_requests`), until a new connection
                    // answers or fails.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(UpstreamError::Request(error.into_error())),
                },
            }
        }
    }

    /// Sends `request` (absolute URI: the site's name as authority, as an
    /// h1 request carries it in Host) to an `h2c://` upstream at
    /// `authority`, on the worker's connection to it or a new one. Never
    /// retried: the request may have reached the application.
    pub async fn request_h2c(
        &self,
        authority: &Authority,
        request: Request<ClientBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let mut sender = self.h2c_sender(authority).await?;
        // Waits while the upstream's stream limit is reached.
        sender.ready().await.map_err(UpstreamError::Request)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Request)?;
        // Nothing to give back: the connection is shared, not checked out.
        Ok(response.map(|body| Watched::new(body, Release(None))))
    }

    async fn h2c_sender(
        &self,
        authority: &Authority,
    ) -> Result<http2::SendRequest<ClientBody>, UpstreamError> {
        let open = self.h2c.lock().ok().and_then(|senders| {
            senders
                .get(authority)
                .filter(|sender| !sender.is_closed())
                .cloned()
        });
        if let Some(sender) = open {
            return Ok(sender);
        }
        let tcp = Box::pin(connect_tcp(authority)).await?;
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "h2c upstream connection ended with an error");
            }
        });
        if let Ok(mut senders) = self.h2c.lock() {
            senders.insert(authority.clone(), sender.clone());
        }
        Ok(sender)
    }

    /// The newest idle connection that is still usable, if any.
    async fn checkout(&self, authority: &Authority) -> Option<SendRequest<ClientBody>> {
        loop {
            let mut sender = self.pool.pop_clean(authority)?;
            // Normally ready at once; an error means the connection closed.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// A plain TCP stream to `authority` for the direct path: an idle one
    /// with nothing waiting to be read (`true`: it may still turn out
    /// closed, when the upstream's FIN crosses the request) or a new one.
    pub(super) async fn stream(
        &self,
        authority: &Authority,
    ) -> Result<(TcpStream, bool), UpstreamError> {
        match self.streams.pop_clean(authority) {
            Some(tcp) => Ok((tcp, true)),
            // Boxed for the same reason as in `request`.
            None => Ok((Box::pin(connect_tcp(authority)).await?, false)),
        }
    }

    /// Sends a WebSocket opening handshake on a connection of its own,
    /// never pooled: after a 101 it is the tunnel's (`hyper::upgrade::on`
    /// of the response), after any other answer it is dropped with the
    /// response.
    pub(super) async fn upgrade(
        &self,
        authority: &Authority,
        request: Request<ClientBody>,
    ) -> Result<Response<hyper::body::Incoming>, UpstreamError> {
        let tcp = Box::pin(connect_tcp(authority)).await?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream upgrade connection ended with an error");
            }
        });
        sender
            .send_request(request)
            .await
            .map_err(UpstreamError::Request)
    }

    /// Sends `request`, a head the `h1` layer wrote, on a raw stream to
    /// `authority` and reads the response head, written for the client
    /// into `out`, retrying a reused stream that fails before any answer
    /// (the request is idempotent: the direct path's and the raw
    /// exchange's are GET or HEAD). What followed the head is left in
    /// `upstream`. `head_request`: the response has no body;
    /// `client_close`: the client asked to close after it.
    pub(super) async fn exchange_head<O: HeadOut>(
        &self,
        authority: &Authority,
        request: &[u8],
        upstream: &mut BytesMut,
        (head_request, client_close): (bool, bool),
        out: &mut O,
    ) -> Result<(TcpStream, ResponseHead), UpstreamError> {
        loop {
            let (mut tcp, reused) = self.stream(authority).await?;
            upstream.clear();
            let head = async {
                tcp.write_all(request).await.map_err(UpstreamError::Io)?;
                read_response_head(&mut tcp, upstream, (head_request, client_close), out).await
            };
            match head.await {
                Ok(head) => return Ok((tcp, head)),
                Err(UpstreamError::Io(_) | UpstreamError::ClosedEarly)
                    if reused && upstream.is_empty() =>
                {
                    continue
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Gives back a stream whose last response was read to its end.
    pub(super) fn put_stream(&self, authority: &Authority, tcp: TcpStream) {
        self.streams.put(authority, tcp);
    }
}

/// Reads a response head from `tcp` into `upstream` until it is whole,
/// skipping 1xx heads, and writes the client's into `out`.
async fn read_response_head<O: HeadOut>(
    tcp: &mut TcpStream,
    upstream: &mut BytesMut,
    (head_request, client_close): (bool, bool),
    out: &mut O,
) -> Result<ResponseHead, UpstreamError> {
    loop {
        if !upstream.is_empty() {
            out.reset();
            match response::prepare_response(upstream, head_request, client_close, out)
                .map_err(|Malformed(what)| UpstreamError::Malformed(what))?
            {
                Parsed::Final(head) => {
                    upstream.advance(head.len);
                    return Ok(head);
                }
                Parsed::Informational(len) => {
                    upstream.advance(len);
                    continue;
                }
                Parsed::Partial if upstream.len() >= MAX_HEADER_BYTES => {
                    return Err(UpstreamError::Malformed("response head too large"));
                }
                Parsed::Partial => {}
            }
        }
        upstream.reserve(READ_CHUNK);
        if tcp.read_buf(upstream).await.map_err(UpstreamError::Io)? == 0 {
            return Err(UpstreamError::ClosedEarly);
        }
    }
}

async fn connect(authority: &Authority) -> Result<SendRequest<ClientBody>, UpstreamError> {
    let tcp = connect_tcp(authority).await?;
    let (sender, connection) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(UpstreamError::Handshake)?;
    // The connection's I/O runs as its own task for its whole life (not per
    // request); it ends when the upstream closes or every sender is dropped.
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

async fn connect_tcp(authority: &Authority) -> Result<TcpStream, UpstreamError> {
    let port = authority.port_u16().unwrap_or(80);
    // IPv6 literals come bracketed in the authority.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    // An IP literal (the usual local application) skips the resolver.
    let addrs: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|source| UpstreamError::Resolve {
            authority: authority.clone(),
            source,
        })?
        .collect();
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(error) => last = error,
            }
        }
        Err(last)
    })
    .await
    .map_err(|_| UpstreamError::ConnectTimeout {
        authority: authority.clone(),
    })?
    .map_err(|source| UpstreamError::Connect {
        authority: authority.clone(),
        source,
    })?;
    // Requests and answers are small writes; don't hold them for an ACK.
    tcp.set_nodelay(true)
        .map_err(|source| UpstreamError::Connect {
            authority: authority.clone(),
            source,
        })?;
    Ok(tcp)
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    };

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full};
    use hyper::body::Incoming;
    use hyper::{server::conn::http1 as server, service::service_fn};
    use tokio::net::TcpListener;

    use super::*;

    /// An upstream answering `body` to every request, counting connections;
    /// with `close`, every answer says `Connection: close` (and hyper then
    /// closes the connection after it).
    async fn upstream_with(body: &'static str, close: bool) -> (Authority, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(server::Builder::new().serve_connection(
                    TokioIo::new(tcp),
                    service_fn(move |_request| async move {
                        let mut response =
                            Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                        if close {
                            response
                                .headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        Ok::<_, std::convert::Infallible>(response)
                    }),
                ));
            }
        });
        (addr.to_string().parse().expect("authority"), accepted)
    }

    async fn upstream(body: &'static str) -> (Authority, Arc<AtomicUsize>) {
        upstream_with(body, false).await
    }

    /// A request with an `Incoming` body, as the proxy forwards: taken from
    /// a throwaway loopback exchange, since `Incoming` cannot be built.
    async fn request() -> Request<ClientBody> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (taken, take) = tokio::sync::oneshot::channel();
        let taken = Arc::new(Mutex::new(Some(taken)));
        tokio::spawn(async move {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let _ = server::Builder::new()
                .serve_connection(
                    TokioIo::new(tcp),
                    service_fn(move |request: Request<Incoming>| {
                        let taken = Arc::clone(&taken);
                        async move {
                            if let Some(taken) = taken.lock().expect("lock").take() {
                                let _ = taken.send(request);
                            }
                            Ok::<_, std::convert::Infallible>(Response::new(Empty::<Bytes>::new()))
                        }
                    }),
                )
                .await;
        });
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        tokio::spawn(async move {
            let _ = sender
                .send_request(
                    Request::get("/")
                        .header(header::HOST, "x")
                        .body(Empty::new())
                        .expect("request"),
                )
                .await;
        });
        let (mut parts, body) = take.await.expect("request taken").into_parts();
        parts.uri = http::Uri::from_static("/path");
        Request::from_parts(parts, client_body(body).0)
    }

    /// One request to `authority`, its body read to the end.
    async fn fetch(client: &UpstreamClient, authority: &Authority) -> Bytes {
        let response = client
            .request(authority, request().await)
            .await
            .expect("response");
        response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes()
    }

    #[tokio::test]
    async fn a_read_response_returns_its_connection_for_reuse() {
        let (authority, accepted) = upstream("hello").await;
        let client = client(HttpMetrics::default());
        for _ in 0..3 {
            assert_eq!(fetch(&client, &authority).await, "hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_use_separate_connections_then_share_the_idle_ones() {
        let (authority, accepted) = upstream("hi").await;
        let client = client(HttpMetrics::default());
        let first = client
            .request(&authority, request().await)
            .await
            .expect("first");
        let second = client
            .request(&authority, request().await)
            .await
            .expect("second");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        drop(first.into_body().collect().await.expect("body"));
        drop(second.into_body().collect().await.expect("body"));
        for _ in 0..2 {
            fetch(&client, &authority).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn each_upstream_keeps_its_own_connections() {
        let (first, first_accepted) = upstream("one").await;
        let (second, second_accepted) = upstream("two").await;
        let client = client(HttpMetrics::default());
        for _ in 0..2 {
            for (authority, want) in [(&first, "one"), (&second, "two")] {
                assert_eq!(fetch(&client, authority).await, want);
            }
        }
        assert_eq!(first_accepted.load(Ordering::SeqCst), 1);
        assert_eq!(second_accepted.load(Ordering::SeqCst), 1);
    }

    /// A connection the upstream closes after its response is never handed
    /// out again: every request still gets its answer, each on a new
    /// connection.
    #[tokio::test]
    async fn connection_close_from_the_upstream_is_honoured() {
        let (authority, accepted) = upstream_with("bye", true).await;
        let client = client(HttpMetrics::default());
        for round in 1..=3 {
            assert_eq!(fetch(&client, &authority).await, "bye");
            assert_eq!(accepted.load(Ordering::SeqCst), round);
        }
    }

    #[tokio::test]
    async fn an_unread_response_does_not_return_its_connection() {
        let (authority, accepted) = upstream("not read").await;
        let client = client(HttpMetrics::default());
        drop(
            client
                .request(&authority, request().await)
                .await
                .expect("response"),
        );
        fetch(&client, &authority).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connect_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let authority: Authority = listener
            .local_addr()
            .expect("addr")
            .to_string()
            .parse()
            .expect("authority");
        drop(listener);
        let error = client(HttpMetrics::default())
            .request(&authority, request().await)
            .await
            .expect_err("refused");
        assert!(matches!(error, UpstreamError::Connect { .. }), "{error:?}");
    }
}
