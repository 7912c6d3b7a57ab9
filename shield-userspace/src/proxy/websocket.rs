//! WebSocket upgrades (RFC 6455, HTTP/1.1 `Upgrade`): which requests ask
//! for one, what the upstream must answer, and the tunnel that carries the
//! bytes both ways after its 101 until either side closes or the tunnel
//! has been idle for the site's `idle_timeout`.
//!
//! Only `Upgrade: websocket` is passed on. Any other upgrade (`h2c`, TLS)
//! is a hop-by-hop request addressed to shield, stripped as before, so the
//! upstream never switches protocols on a connection it was not asked to.

use std::time::Duration;

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    sync::watch,
    time::{sleep_until, Instant},
};

use super::{
    headers,
    lifecycle::{close, shutdown_then_grace, Closing},
};

/// Bytes read from one side before they are written to the other.
const RELAY_CHUNK: usize = 16 * 1024;

const WEBSOCKET: HeaderValue = HeaderValue::from_static("websocket");
const UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");

/// A WebSocket opening handshake: an HTTP/1.1 GET whose `Upgrade` is
/// `websocket` and whose `Connection` names `upgrade` (RFC 6455 4.1).
pub(super) fn asked<B>(request: &Request<B>) -> bool {
    request.method() == Method::GET
        && request.version() == Version::HTTP_11
        && upgrade_is_websocket(request.headers())
        && request
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|value| headers::options_in(value.as_bytes()))
            .any(|option| option.eq_ignore_ascii_case(b"upgrade"))
}

/// The upstream switched to WebSocket, as asked.
pub(super) fn accepted<B>(response: &Response<B>) -> bool {
    response.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade_is_websocket(response.headers())
}

fn upgrade_is_websocket(fields: &HeaderMap) -> bool {
    let mut upgrade = fields.get_all(header::UPGRADE).iter();
    matches!(
        (upgrade.next(), upgrade.next()),
        (Some(value), None) if value.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket")
    )
}

/// The hop-by-hop fields of the handshake, set again after the header
/// policy removed every hop-by-hop field: the one case they are forwarded.
pub(super) fn set_upgrade_fields(fields: &mut HeaderMap) {
    fields.insert(header::CONNECTION, UPGRADE);
    fields.insert(header::UPGRADE, WEBSOCKET);
}

/// How a tunnel ended, for the log.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// One side closed the connection.
    Closed,
    /// Nothing crossed for the idle timeout.
    Idle,
    /// Shutdown was asked for, and the grace ran out.
    Shutdown,
    /// A read or write failed.
    Broken(std::io::ErrorKind),
}

/// Waits for both upgrades, then relays until the tunnel ends. `active`
/// counts the tunnel while it is open.
pub(super) async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    active: Gauge,
    mut shutdown: watch::Receiver<Closing>,
    site: String,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(site, %error, "WebSocket upgrade did not complete");
            return;
        }
    };
    active.inc();
    let ended = relay(
        TokioIo::new(client),
        TokioIo::new(upstream),
        idle,
        &mut shutdown,
    )
    .await;
    active.dec();
    tracing::debug!(site, ?ended, "WebSocket tunnel ended");
}

/// Copies bytes both ways until one side ends (EOF or error), the tunnel
/// is idle (no byte in either direction) for `idle`, or shutdown's grace
/// runs out. When one side ends, what it sent has been passed on and both
/// are closed: a WebSocket closes in-band (close frames) before TCP does, so
/// a side's end is the tunnel's end, as nginx treats it.
pub(super) async fn relay<A, B>(
    mut a: A,
    mut b: B,
    idle: Duration,
    shutdown: &mut watch::Receiver<Closing>,
) -> Ended
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_a, mut from_b) = (vec![0; RELAY_CHUNK], vec![0; RELAY_CHUNK]);
    let mut last = Instant::now();
    let grace = shutdown_then_grace(shutdown);
    tokio::pin!(grace);
    let ended = loop {
        let passed = tokio::select! {
            read = a.read(&mut from_a) => pass(read, &from_a, &mut b).await,
            read = b.read(&mut from_b) => pass(read, &from_b, &mut a).await,
            () = sleep_until(last + idle) => break Ended::Idle,
            () = &mut grace => break Ended::Shutdown,
        };
        match passed {
            Ok(true) => last = Instant::now(),
            Ok(false) => break Ended::Closed,
            Err(error) => break Ended::Broken(error.kind()),
        }
    };
    tokio::join!(close(&mut a), close(&mut b));
    ended
}

/// Writes what one side's read gave to the other side; false at its end.
async fn pass<W: AsyncWrite + Unpin>(
    read: std::io::Result<usize>,
    buf: &[u8],
    to: &mut W,
) -> std::io::Result<bool> {
    match read? {
        0 => Ok(false),
        n => to.write_all(&buf[..n]).await.map(|()| true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, fields: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().method(method).uri("/chat");
        for (name, value) in fields {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn only_a_websocket_get_with_connection_upgrade_asks() {
        let ws = [
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
        ];
        assert!(asked(&request(Method::GET, &ws)));
        assert!(asked(&request(
            Method::GET,
            &[("upgrade", "WebSocket"), ("connection", "upgrade")]
        )));
        assert!(!asked(&request(Method::POST, &ws)));
        assert!(!asked(&request(Method::GET, &[("upgrade", "websocket")])));
        assert!(!asked(&request(
            Method::GET,
            &[("upgrade", "h2c"), ("connection", "upgrade")]
        )));
        assert!(!asked(&request(
            Method::GET,
            &[("upgrade", "websocket, h2c"), ("connection", "upgrade")]
        )));
        assert!(!asked(&request(
            Method::GET,
            &[
                ("upgrade", "websocket"),
                ("upgrade", "websocket"),
                ("connection", "upgrade")
            ]
        )));
        let mut h2 = request(Method::GET, &ws);
        *h2.version_mut() = Version::HTTP_2;
        assert!(!asked(&h2));
    }

    #[test]
    fn the_upstream_must_switch_to_websocket() {
        let response = |status: u16, upgrade: Option<&str>| {
            let mut builder = Response::builder().status(status);
            if let Some(upgrade) = upgrade {
                builder = builder.header("upgrade", upgrade);
            }
            builder.body(()).expect("response")
        };
        assert!(accepted(&response(101, Some("websocket"))));
        assert!(!accepted(&response(101, Some("h2c"))));
        assert!(!accepted(&response(101, None)));
        assert!(!accepted(&response(200, Some("websocket"))));
    }

    #[tokio::test]
    async fn relay_passes_bytes_both_ways_and_ends_with_either_side() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let (_keep, mut shutdown) = watch::channel(Closing::Open);
        let relay = tokio::spawn(async move {
            relay(client, upstream, Duration::from_secs(5), &mut shutdown).await
        });
        client_peer.write_all(b"ping").await.expect("write");
        let mut got = [0; 4];
        upstream_peer.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"ping");
        // The upstream answers and closes: the client gets the answer,
        // then its end, and the upstream sees the client's side end too.
        upstream_peer.write_all(b"pong").await.expect("write");
        upstream_peer.shutdown().await.expect("shutdown");
        let mut back = Vec::new();
        client_peer.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, b"pong");
        assert_eq!(relay.await.expect("relay"), Ended::Closed);
        let mut rest = Vec::new();
        upstream_peer.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn relay_ends_when_idle() {
        let (client, _client_peer) = tokio::io::duplex(64);
        let (upstream, _upstream_peer) = tokio::io::duplex(64);
        let (_keep, mut shutdown) = watch::channel(Closing::Open);
        let ended = relay(client, upstream, Duration::from_secs(30), &mut shutdown).await;
        assert_eq!(ended, Ended::Idle);
    }
}
