//! The direct path's connection loop: HTTP/1.1 GET and HEAD without a
//! body, proxied without hyper, one request after another, with the
//! connection's clocks (`lifecycle`) and the upstream exchange with retry.
//! Which requests it takes and what it writes are decided in `h1`.
//!
//! Why: through hyper's server, `http`'s `HeaderMap` and hyper's client a
//! keep-alive request cost as much CPU as nginx spends on it, and most of
//! the user-space share was those libraries' generality. The common request
//! on an origin, a GET without a body, needs none of it. Anything else goes
//! to hyper with every byte read so far ([`Direct::Defer`]): hyper stays the
//! one judge of bad input and the one place answering 400, 421 or 431.
//!
//! Only idempotent methods take it, so a reused upstream connection that
//! turns out closed before answering is retried on another (RFC 9110 9.2.2).

use bytes::{Buf, Bytes, BytesMut};
use http::header;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite},
    net::TcpStream,
    sync::watch,
    time::{sleep, timeout, Instant},
};

use super::{
    access,
    activity::{Check, ReleaseIdle, Tracked},
    h1::{
        body::{self, write_out, Broken, Stop, READ_CHUNK},
        request::{self, Context, Forward, Prepared},
        response::ResponseHead,
        wire::{push_date, push_field, push_status_line},
    },
    handler::{Connection, RequestId, UpstreamFailure},
    lifecycle::{close, shutdown_then_grace, Clocks, Closing, PARK_AFTER},
    upstream::UpstreamError,
};

/// How the direct path left a connection.
#[derive(Debug)]
pub(super) enum Direct {
    /// The connection is done: closed by the client, timed out, shutting
    /// down, or broken.
    Ended,
    /// Nothing in flight or buffered for [`PARK_AFTER`].
    Park,
    /// A request this path does not take: these bytes, its start and all
    /// read after it, are for hyper.
    Defer(Bytes),
}

impl Connection {
    pub(super) fn context(&self) -> Context<'_> {
        Context {
            sni: &self.sni,
            route: &self.route,
            peer_ip: &self.peer_ip,
            client_cert_sha256: &self.client_cert_sha256,
        }
    }
}

/// Buffers, kept while the connection is busy and dropped when it parks.
#[derive(Default)]
struct Buffers {
    /// Read from the client, not yet handled.
    client: BytesMut,
    /// The request head for the upstream.
    request: Vec<u8>,
    /// Read from the upstream, not yet passed on.
    upstream: BytesMut,
    /// The response for the client, head and body.
    out: Vec<u8>,
}

/// Serves the connection's requests while they suit this path.
pub(super) async fn serve<IO>(
    io: &mut Tracked<IO>,
    conn: &Connection,
    clocks: &Clocks<'_>,
    shutdown: &mut watch::Receiver<Closing>,
) -> Direct
where
    IO: AsyncRead + AsyncWrite + ReleaseIdle + Unpin,
{
    let mut buffers = Buffers::default();
    // One timer for the connection's clocks (see `Activity`), reset only
    // when it fires: it fires at least every `PARK_AFTER`, and no deadline
    // is nearer than that.
    let timer = sleep(PARK_AFTER);
    tokio::pin!(timer);
    loop {
        let request_id = RequestId::random();
        buffers.request.clear();
        let forward = match request::prepare_request(
            &buffers.client,
            conn.context(),
            request_id.as_str(),
            &mut buffers.request,
        ) {
            Prepared::Forward(forward) => forward,
            Prepared::Defer => return Direct::Defer(buffers.client.split().freeze()),
            Prepared::Partial => {
                if let Some(left) =
                    read_client(io, &mut buffers.client, conn, clocks, &mut timer, shutdown).await
                {
                    return left;
                }
                continue;
            }
        };
        let access = access::enabled()
            .then(|| request::access_head(&buffers.client[..forward.head_len], request_id.as_str()))
            .flatten();
        buffers.client.advance(forward.head_len);
        let guard = conn.activity.begin_request();
        let mut outcome = access::Outcome::default();
        let written = io.written();
        let exchanged = tokio::select! {
            biased;
            exchanged = exchange(io, conn, &mut buffers, &forward, request_id.as_str(), &mut outcome) => exchanged,
            () = shutdown_then_grace(shutdown) => {
                tracing::debug!(site = %clocks.label, "closing: request still in flight after the shutdown grace");
                Exchanged::Broken
            }
        };
        drop(guard);
        if let Some(head) = access {
            // What went out for this response, less its head.
            outcome.bytes_sent = (io.written() - written).saturating_sub(outcome.bytes_sent);
            access::log(
                &head,
                &conn.route.label,
                conn.client_cert_sha256.to_str().unwrap_or_default(),
                outcome,
            );
        }
        match exchanged {
            Exchanged::Done if !forward.close && !shutdown.borrow().is_closing() => {}
            Exchanged::Done => {
                close(io).await;
                return Direct::Ended;
            }
            Exchanged::Broken => return Direct::Ended,
        }
    }
}

/// Reads more of a request head; `Some` when the connection is to leave
/// this path instead.
async fn read_client<IO>(
    io: &mut Tracked<IO>,
    buffer: &mut BytesMut,
    conn: &Connection,
    clocks: &Clocks<'_>,
    timer: &mut std::pin::Pin<&mut tokio::time::Sleep>,
    shutdown: &mut watch::Receiver<Closing>,
) -> Option<Direct>
where
    IO: AsyncRead + AsyncWrite + ReleaseIdle + Unpin,
{
    buffer.reserve(READ_CHUNK);
    loop {
        tokio::select! {
            biased;
            read = io.read_buf(buffer) => {
                return match read {
                    Ok(0) if buffer.is_empty() => {
                        close(io).await;
                        Some(Direct::Ended)
                    }
                    // The client left in the middle of a head.
                    Ok(0) => Some(Direct::Ended),
                    Ok(_) => None,
                    Err(error) => {
                        tracing::debug!(site = %clocks.label, %error, "connection ended with an error");
                        Some(Direct::Ended)
                    }
                };
            }
            () = timer.as_mut() => {
                match conn.activity.check(clocks.header_timeout, clocks.idle_timeout, Some(PARK_AFTER)) {
                    Check::WaitUntil(at) => timer.as_mut().reset(at),
                    Check::HeaderTimeout => {
                        tracing::debug!(site = %clocks.label, "closing: request head not complete within header_timeout");
                        return Some(Direct::Ended);
                    }
                    Check::Idle => {
                        tracing::debug!(site = %clocks.label, "closing idle connection");
                        close(io).await;
                        return Some(Direct::Ended);
                    }
                    // Read-ahead of a next head that came with the last
                    // request is not timed by `Activity`; it is not idle.
                    Check::Park if !buffer.is_empty() => {
                        timer.as_mut().reset(Instant::now() + PARK_AFTER);
                    }
                    Check::Park => return Some(Direct::Park),
                }
            }
            changed = shutdown.changed() => {
                let closing = Closing::after(changed, shutdown);
                // Retired, a head already begun is read and answered
                // first; shutting down, the connection closes now.
                if closing == Closing::Shutdown || (closing.is_closing() && buffer.is_empty()) {
                    close(io).await;
                    return Some(Direct::Ended);
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Exchanged {
    /// The response went out whole.
    Done,
    /// The client connection cannot go on (a write failed, or the upstream
    /// broke off in the middle of a body).
    Broken,
}

/// One request: upstream and back.
/// `outcome` learns the status, the upstream's time and, in `bytes_sent`,
/// the length of the response head (which the caller takes off what was
/// written).
async fn exchange<IO>(
    io: &mut Tracked<IO>,
    conn: &Connection,
    buffers: &mut Buffers,
    forward: &Forward,
    request_id: &str,
    outcome: &mut access::Outcome,
) -> Exchanged
where
    IO: AsyncRead + AsyncWrite + ReleaseIdle + Unpin,
{
    let authority = conn.route.upstream.authority();
    let sent = Instant::now();
    let answered = timeout(
        conn.route.upstream_timeout,
        response_head(conn, buffers, forward),
    )
    .await;
    let (mut tcp, head) = match answered {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => {
            let failure = UpstreamFailure::Error(&error);
            return answer_failure(io, conn, failure, request_id, forward.close, outcome).await;
        }
        Err(_) => {
            let failure = UpstreamFailure::Timeout;
            return answer_failure(io, conn, failure, request_id, forward.close, outcome).await;
        }
    };
    outcome.status = head.status.as_u16();
    outcome.upstream = Some(sent.elapsed());
    outcome.bytes_sent = buffers.out.len() as u64;
    let Buffers { upstream, out, .. } = buffers;
    let clean = match body::relay(io, &mut tcp, upstream, out, head.framing).await {
        Ok(clean) => clean,
        Err(Broken { stop, sent }) => {
            let error = match stop {
                Stop::Upstream(error) => UpstreamError::Io(error),
                Stop::UpstreamBody(error) => UpstreamError::Body(error),
                Stop::Client => {
                    conn.count(head.status);
                    return Exchanged::Broken;
                }
            };
            if !sent {
                // Nothing of the response went out: the client can still
                // get a 502 instead of a closed connection.
                out.clear();
                let failure = UpstreamFailure::Error(&error);
                return answer_failure(io, conn, failure, request_id, forward.close, outcome).await;
            }
            conn.count(head.status);
            tracing::warn!(site = %conn.route.label, request_id, error = %error, "upstream broke off a response body; closing the client connection");
            return Exchanged::Broken;
        }
    };
    conn.count(head.status);
    if write_out(io, out).await.is_err() {
        return Exchanged::Broken;
    }
    // Reused only when nothing but the response came: anything more would
    // be read as the answer to the next request.
    if head.reusable && clean {
        conn.upstream.put_stream(authority, tcp);
    }
    Exchanged::Done
}

/// Sends the request head upstream and reads the response head, retrying a
/// reused connection that fails before any answer. Leaves the client's
/// response head in `buffers.out`, and what followed it in
/// `buffers.upstream`.
async fn response_head(
    conn: &Connection,
    buffers: &mut Buffers,
    forward: &Forward,
) -> Result<(TcpStream, ResponseHead), UpstreamError> {
    let Buffers {
        request,
        upstream,
        out,
        ..
    } = buffers;
    conn.upstream
        .exchange_head(
            conn.route.upstream.authority(),
            request,
            upstream,
            (forward.head_request, forward.close),
            out,
        )
        .await
}

/// Answers 502 or 504 for a request whose upstream gave no response head.
async fn answer_failure<IO>(
    io: &mut IO,
    conn: &Connection,
    failure: UpstreamFailure<'_>,
    request_id: &str,
    close: bool,
    outcome: &mut access::Outcome,
) -> Exchanged
where
    IO: AsyncWrite + Unpin,
{
    let (status, body) = conn.upstream_failed(failure, request_id);
    conn.count(status);
    *outcome = access::Outcome {
        status: status.as_u16(),
        upstream: None,
        bytes_sent: 0,
    };
    let mut out = Vec::with_capacity(256 + body.len());
    push_status_line(
        &mut out,
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
    );
    push_field(
        &mut out,
        header::CONTENT_TYPE.as_str(),
        b"text/plain; charset=utf-8",
    );
    push_field(
        &mut out,
        header::CONTENT_LENGTH.as_str(),
        itoa::Buffer::new().format(body.len()).as_bytes(),
    );
    push_date(&mut out);
    if close {
        push_field(&mut out, header::CONNECTION.as_str(), b"close");
    }
    out.extend_from_slice(b"\r\n");
    outcome.bytes_sent = out.len() as u64;
    out.extend_from_slice(body.as_bytes());
    match write_out(io, &mut out).await {
        Ok(()) => Exchanged::Done,
        Err(_) => Exchanged::Broken,
    }
}
