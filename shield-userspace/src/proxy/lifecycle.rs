//! The limits and clocks of a client connection, and how it ends: shared
//! by hyper's path (`serve`) and the direct path, which both obey them.

use std::time::Duration;

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    sync::watch,
    time::{sleep_until, timeout, Instant},
};

/// Request head cap (start line and header fields). Cloudflare forwards at
/// most 32 KiB of request headers to an origin; twice that leaves room for
/// the headers it adds itself.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// After an idle or shutdown close is asked for, how long in-flight work
/// may take before the connection is dropped.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(30);
/// An h1 connection with nothing to do for this long sets hyper aside (its
/// read and write buffers, 16 KiB, are most of an idle connection's memory)
/// and waits for the next request's first byte with the TLS stream alone.
pub(super) const PARK_AFTER: Duration = Duration::from_millis(250);

/// How long a lingering close reads what the client still sends.
const LINGER: Duration = Duration::from_secs(5);
/// And how much of it, at most.
const LINGER_BYTES: usize = 16 * 1024 * 1024;

/// How far the close of the connections accepted under one config has
/// been asked for; it only ever moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    Open,
    /// A reload replaced the config they were accepted under: each takes
    /// no new request (h2: GOAWAY; h1: closes after the one in flight, at
    /// once when idle), and what is in flight finishes, however long it
    /// takes (as nginx's old workers do; a WebSocket tunnel runs on).
    Retired,
    /// The frontend stops: the same, and after [`CLOSE_GRACE`] whatever is
    /// still open is dropped.
    Shutdown,
}

impl Closing {
    /// Whether the connection is to take no more requests.
    pub fn is_closing(self) -> bool {
        self != Closing::Open
    }

    /// What `closing` says after its `changed()` gave `changed`: a sender
    /// gone is a shutdown.
    pub(super) fn after(
        changed: Result<(), watch::error::RecvError>,
        closing: &watch::Receiver<Closing>,
    ) -> Closing {
        match changed {
            Ok(()) => *closing.borrow(),
            Err(_) => Closing::Shutdown,
        }
    }
}

/// A site's clocks, as its connections apply them.
#[derive(Clone, Copy)]
pub(super) struct Clocks<'a> {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub label: &'a str,
}

/// What hyper does when it ends an idle connection: TLS close_notify, then
/// the TCP write side.
pub(super) async fn close<IO: AsyncWrite + Unpin>(io: &mut IO) {
    let _ = timeout(CLOSE_GRACE, io.shutdown()).await;
}

/// Closes a connection hyper gave up on after answering a bad request (400,
/// 431), or one whose answer went out before its body was read (port 80),
/// while the client may still be sending. Closing a socket with
/// unread bytes makes the kernel reset the connection, and a client still
/// writing (curl, for one) then fails on the reset and never reads the
/// answer. So the write side is closed first, and what still arrives is
/// read and dropped until the client closes too, for at most [`LINGER`] or
/// [`LINGER_BYTES`] (nginx's lingering close).
pub async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO) {
    let _ = timeout(LINGER, async {
        if io.shutdown().await.is_err() {
            return;
        }
        let mut drained = 0;
        // On the heap: on the stack of this async fn it would be part of
        // every connection task's state, 16 KiB per idle connection.
        let mut buf = vec![0; 16 * 1024];
        while drained < LINGER_BYTES {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Resolves [`CLOSE_GRACE`] after shutdown is asked for (not a reload's
/// retirement: that lets in-flight work finish). A sender gone is a
/// shutdown too.
pub(super) async fn shutdown_then_grace(closing: &mut watch::Receiver<Closing>) {
    while *closing.borrow_and_update() != Closing::Shutdown {
        if closing.changed().await.is_err() {
            break;
        }
    }
    sleep_until(Instant::now() + CLOSE_GRACE).await;
}
