//! Serving HTTP/1.1 or HTTP/2 (by ALPN) on a verified TLS connection.

use std::{convert::Infallible, future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use hyper::{
    body::Incoming,
    server::conn::{http1, http2},
    service::{service_fn, HttpService},
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite},
    sync::watch,
    time::sleep_until,
};

use crate::config::H2Limits;

use super::{
    activity::{Activity, Check, ReleaseIdle, Tracked},
    direct::{self, Direct},
    handler::{Client, Connection, GuardedBody},
    lifecycle::{close, linger, Clocks, Closing, CLOSE_GRACE, MAX_HEADER_BYTES, PARK_AFTER},
    metrics::HttpMetrics,
    upstream::UpstreamClient,
    Route,
};

/// The protocol ALPN chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpProtocol {
    Http1,
    /// With the site's HTTP/2 limits.
    Http2(H2Limits),
}

/// Serves `io`, verified as `client` for `route`, until the client leaves,
/// a timeout closes it, or `shutdown` says it is closing (in-flight
/// requests then finish first; see [`Closing`]).
pub async fn serve<IO>(
    io: IO,
    protocol: HttpProtocol,
    route: Arc<Route>,
    client: Client,
    upstream: UpstreamClient,
    metrics: HttpMetrics,
    mut shutdown: watch::Receiver<Closing>,
) where
    IO: AsyncRead + AsyncWrite + ReleaseIdle + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(protocol == HttpProtocol::Http1));
    let conn = Arc::new(Connection::new(
        route,
        client,
        activity.clone(),
        upstream,
        metrics,
        shutdown.clone(),
    ));
    let (header_timeout, idle_timeout) = (conn.route.header_timeout, conn.route.idle_timeout);
    let label = conn.route.label.clone();
    let direct = Arc::clone(&conn);
    let service = service_fn(move |request| conn.clone().handle(request));
    let io = Tracked::new(io, activity.clone());
    let clocks = Clocks {
        header_timeout,
        idle_timeout,
        label: &label,
    };
    match protocol {
        HttpProtocol::Http1 => {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                // Replaced by Activity (see there): hyper's timer would also
                // cut idle keep-alive connections.
                .header_read_timeout(None)
                // Header fields per request stay at hyper's default, 100
                // (more gets 431): setting any cap moves hyper's parse
                // array from the stack to a zeroed heap vector, ~2.8k
                // instructions per request at 200.
                .max_header_size(MAX_HEADER_BYTES);
            serve_http1(
                &builder,
                io,
                &direct,
                service,
                &activity,
                &clocks,
                &mut shutdown,
            )
            .await;
        }
        HttpProtocol::Http2(h2) => {
            let connection = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(h2.max_concurrent_streams)
                .max_pending_accept_reset_streams(h2.max_pending_reset_streams as usize)
                .max_send_buf_size(h2.max_send_buffer_bytes as usize)
                // The HPACK bomb and the CONTINUATION flood end here: h2
                // refuses a decoded list over this, and stops buffering a
                // block that grows past its abuse multiple of it.
                .max_header_list_size(MAX_HEADER_BYTES as u32)
                .serve_connection(TokioIo::new(io), service);
            // Boxed: h2's state would otherwise size every h1 connection's
            // task too.
            drive(
                Box::pin(connection).as_mut(),
                |connection| connection.graceful_shutdown(),
                &activity,
                &clocks,
                None,
                &mut shutdown,
            )
            .await;
        }
    }
}

/// The direct path serves the requests it takes (`direct`); at the first
/// it does not, hyper takes over until the connection has been idle for
/// [`PARK_AFTER`], then hands back the stream and is dropped. Parked, the
/// connection holds no buffers until the next request's first byte.
async fn serve_http1<IO, S>(
    builder: &http1::Builder,
    mut io: Tracked<IO>,
    conn: &Connection,
    mut service: S,
    activity: &Activity,
    clocks: &Clocks<'_>,
    shutdown: &mut watch::Receiver<Closing>,
) where
    IO: AsyncRead + AsyncWrite + ReleaseIdle + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = GuardedBody, Error = Infallible> + Unpin,
{
    loop {
        match direct::serve(&mut io, conn, clocks, shutdown).await {
            Direct::Ended => return,
            Direct::Park => {
                if !park(&mut io, activity, clocks, shutdown).await {
                    return;
                }
                continue;
            }
            Direct::Defer(read) => io.unread(read),
        }
        // Boxed, so that parking frees it. With upgrades: a WebSocket
        // handshake hands the stream to its tunnel (`websocket`).
        let mut connection = Box::new(
            builder
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        );
        match drive(
            Pin::new(&mut *connection),
            |connection| connection.graceful_shutdown(),
            activity,
            clocks,
            Some(PARK_AFTER),
            shutdown,
        )
        .await
        {
            Driven::Ended => {
                conn.tunnel_ended().await;
                return;
            }
            // hyper answered a bad request and gave up on the connection;
            // the client may still be sending the rest of it.
            Driven::Failed => {
                if let Some(parts) = connection.into_parts() {
                    linger(&mut parts.io.into_inner()).await;
                }
                return;
            }
            Driven::Park => {}
        }
        // Parking is only asked for with no request in flight, nothing of a
        // next one read and the last write finished, so hyper holds nothing
        // but a possibly read-ahead start of the next request.
        // None only after an upgrade, which never parks.
        let Some(parts) = connection.into_parts() else {
            return;
        };
        io = parts.io.into_inner();
        service = parts.service;
        // Even empty, it holds hyper's whole read buffer.
        let read_ahead = parts.read_buf;
        if !read_ahead.is_empty() {
            io.unread(read_ahead);
            continue;
        }
        drop(read_ahead);
        if !park(&mut io, activity, clocks, shutdown).await {
            return;
        }
    }
}

/// Waits for the first byte of the next request; false when the connection
/// is done (closed by the client, idle, or shutting down).
async fn park<IO>(
    io: &mut Tracked<IO>,
    activity: &Activity,
    clocks: &Clocks<'_>,
    shutdown: &mut watch::Receiver<Closing>,
) -> bool
where
    IO: AsyncRead + AsyncWrite + ReleaseIdle + Unpin,
{
    let mut first = [0; 1];
    loop {
        let wake = match activity.check(clocks.header_timeout, clocks.idle_timeout, None) {
            Check::WaitUntil(at) => at,
            Check::HeaderTimeout | Check::Idle | Check::Park => {
                tracing::debug!(site = %clocks.label, "closing idle connection");
                close(io).await;
                return false;
            }
        };
        tokio::select! {
            read = io.read(&mut first) => {
                return match read {
                    Ok(0) => {
                        close(io).await;
                        false
                    }
                    Ok(_) => {
                        io.unread(Bytes::copy_from_slice(&first));
                        true
                    }
                    Err(error) => {
                        tracing::debug!(site = %clocks.label, %error, "connection ended with an error");
                        false
                    }
                };
            }
            _ = sleep_until(wake) => {}
            changed = shutdown.changed() => {
                if Closing::after(changed, shutdown).is_closing() {
                    close(io).await;
                    return false;
                }
            }
        }
    }
}

enum Driven {
    Ended,
    /// hyper's connection ended with an error (a refused request, a broken
    /// connection).
    Failed,
    /// Idle for the `park_after` given: the caller may take the IO back.
    Park,
}

/// Runs hyper's `connection` under the connection's clocks; `graceful`
/// asks it to finish what is in flight and close (h2: GOAWAY).
async fn drive<C, E>(
    mut connection: Pin<&mut C>,
    graceful: fn(Pin<&mut C>),
    activity: &Activity,
    clocks: &Clocks<'_>,
    park_after: Option<Duration>,
    shutdown: &mut watch::Receiver<Closing>,
) -> Driven
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let Clocks {
        header_timeout,
        idle_timeout,
        label,
    } = *clocks;
    // Asked to finish what is in flight and close (idle, retired or
    // shutting down), and since when the grace runs (idle or shutdown; a
    // retired connection's in-flight work has no deadline of its own).
    let mut graceful_sent = false;
    let mut closing_since = None;
    loop {
        let wake = match closing_since {
            Some(since) => since + CLOSE_GRACE,
            None => match activity.check(header_timeout, idle_timeout, park_after) {
                Check::WaitUntil(at) => at,
                Check::HeaderTimeout => {
                    tracing::debug!(site = %label, "closing: request head not complete within header_timeout");
                    return Driven::Ended;
                }
                Check::Park => return Driven::Park,
                Check::Idle => {
                    tracing::debug!(site = %label, "closing idle connection");
                    if !graceful_sent {
                        graceful(connection.as_mut());
                        graceful_sent = true;
                    }
                    closing_since = Some(tokio::time::Instant::now());
                    continue;
                }
            },
        };
        tokio::select! {
            result = connection.as_mut() => {
                return match result {
                    Ok(()) => Driven::Ended,
                    Err(error) => {
                        tracing::debug!(site = %label, %error, "connection ended with an error");
                        Driven::Failed
                    }
                };
            }
            _ = sleep_until(wake) => {
                if closing_since.is_some() {
                    return Driven::Ended;
                }
            }
            // The wake computed above predates the request that just ended.
            _ = activity.went_quiet(), if closing_since.is_none() => {}
            changed = shutdown.changed(), if closing_since.is_none() => {
                let closing = Closing::after(changed, shutdown);
                if closing.is_closing() && !graceful_sent {
                    graceful(connection.as_mut());
                    graceful_sent = true;
                }
                if closing == Closing::Shutdown {
                    closing_since = Some(tokio::time::Instant::now());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    #[allow(clippy::type_complexity)]
    fn future_size<A, B, C, D, E, F, G, Fut: Future>(
        _: impl Fn(A, B, C, D, E, F, G) -> Fut,
    ) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// A connection's task is its memory while it is idle: nothing large
    /// may live in it inline (a 16 KiB buffer once did, doubling the RSS
    /// of every idle connection).
    #[test]
    fn an_idle_connections_task_stays_small() {
        let size = future_size(serve::<tokio::net::TcpStream>);
        // 2,264 bytes in a test build today.
        assert!(size <= 2560, "serve's future grew to {size} bytes");
    }

    /// A connection that never finishes, counting its polls.
    struct Counted(Arc<std::sync::atomic::AtomicUsize>);

    impl Future for Counted {
        type Output = Result<(), Infallible>;
        fn poll(
            self: Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Self::Output> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::task::Poll::Pending
        }
    }

    /// An h2 connection is driven without parking; when its last request
    /// ends, it is still polled once more after PARK_AFTER, which is when
    /// its stream gives its read buffer back (`Tracked`).
    #[tokio::test(start_paused = true)]
    async fn a_connection_is_polled_again_once_its_last_request_has_been_quiet() {
        use std::sync::atomic::Ordering::Relaxed;
        let activity = Arc::new(Activity::new(false));
        let request = activity.begin_request();
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (_open, shutdown) = watch::channel(Closing::Open);
        let driver = {
            let (activity, polls) = (activity.clone(), polls.clone());
            tokio::spawn(async move {
                let mut shutdown = shutdown;
                let clocks = Clocks {
                    header_timeout: Duration::from_secs(10),
                    idle_timeout: Duration::from_secs(900),
                    label: "test",
                };
                let mut connection = std::pin::pin!(Counted(polls));
                drive(
                    connection.as_mut(),
                    |_| {},
                    &activity,
                    &clocks,
                    None,
                    &mut shutdown,
                )
                .await;
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(request);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let at_end = polls.load(Relaxed);
        tokio::time::sleep(PARK_AFTER).await;
        assert!(
            polls.load(Relaxed) > at_end,
            "not polled after going quiet: its buffer would be kept for the idle timeout"
        );
        let after = polls.load(Relaxed);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(polls.load(Relaxed), after, "woken again with nothing new");
        driver.abort();
    }
}
