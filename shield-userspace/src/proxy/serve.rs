//! Serving HTTP/1.1 or HTTP/2 (by ALPN) on a verified TLS connection.

use std::{future::Future, pin::pin, sync::Arc, time::Duration};

use hyper::{
    server::conn::{http1, http2},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::graceful::GracefulConnection,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
    time::sleep_until,
};

use super::{
    activity::{Activity, Check, Tracked},
    handler::Connection,
};

/// Request head cap (start line and header fields). Cloudflare forwards at
/// most 32 KiB of request headers to an origin; twice that leaves room for
/// the headers it adds itself.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Header fields per h1 request (hyper's default is 100).
const MAX_HEADERS: usize = 200;
/// Concurrent h2 streams per connection.
pub const H2_MAX_STREAMS: u32 = 128;
/// After an idle or shutdown close is asked for, how long in-flight work
/// may take before the connection is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(30);

/// The protocol ALPN chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Serves `io` until the client leaves, a timeout closes it, or `shutdown`
/// turns true (in-flight requests then finish first).
pub async fn serve<IO>(
    io: IO,
    protocol: Protocol,
    make: impl FnOnce(Arc<Activity>) -> Connection,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(protocol == Protocol::Http1));
    let conn = Arc::new(make(activity.clone()));
    let (header_timeout, idle_timeout) = (conn.route.header_timeout, conn.route.idle_timeout);
    let label = conn.route.label.clone();
    let service = service_fn(move |request| conn.clone().handle(request));
    let io = TokioIo::new(Tracked::new(io, activity.clone()));
    let limits = Limits {
        header_timeout,
        idle_timeout,
        label: &label,
    };
    match protocol {
        Protocol::Http1 => {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                // Replaced by Activity (see there): hyper's timer would also
                // cut idle keep-alive connections.
                .header_read_timeout(None)
                .max_header_size(MAX_HEADER_BYTES)
                .max_headers(MAX_HEADERS)
                .serve_connection(io, service);
            drive(connection, &activity, limits, &mut shutdown).await;
        }
        Protocol::Http2 => {
            let connection = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(H2_MAX_STREAMS)
                .max_header_list_size(MAX_HEADER_BYTES as u32)
                .serve_connection(io, service);
            drive(connection, &activity, limits, &mut shutdown).await;
        }
    }
}

struct Limits<'a> {
    header_timeout: Duration,
    idle_timeout: Duration,
    label: &'a str,
}

async fn drive<C>(
    connection: C,
    activity: &Activity,
    limits: Limits<'_>,
    shutdown: &mut watch::Receiver<bool>,
) where
    C: GracefulConnection + Future<Output = Result<(), <C as GracefulConnection>::Error>>,
    <C as GracefulConnection>::Error: std::fmt::Display,
{
    let Limits {
        header_timeout,
        idle_timeout,
        label,
    } = limits;
    let mut connection = pin!(connection);
    let mut closing_since = None;
    loop {
        let wake = match closing_since {
            Some(since) => since + CLOSE_GRACE,
            None => match activity.check(header_timeout, idle_timeout) {
                Check::WaitUntil(at) => at,
                Check::HeaderTimeout => {
                    tracing::debug!(site = %label, "closing: request head not complete within header_timeout");
                    return;
                }
                Check::Idle => {
                    tracing::debug!(site = %label, "closing idle connection");
                    connection.as_mut().graceful_shutdown();
                    closing_since = Some(tokio::time::Instant::now());
                    continue;
                }
            },
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(site = %label, %error, "connection ended with an error");
                }
                return;
            }
            _ = sleep_until(wake) => {
                if closing_since.is_some() {
                    return;
                }
            }
            changed = shutdown.changed(), if closing_since.is_none() => {
                if changed.is_err() || *shutdown.borrow() {
                    connection.as_mut().graceful_shutdown();
                    closing_since = Some(tokio::time::Instant::now());
                }
            }
        }
    }
}
