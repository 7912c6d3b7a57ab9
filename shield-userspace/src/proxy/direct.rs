//! HTTP/1.1 GET and HEAD without a body, proxied without hyper.
//!
//! Why: through hyper's server, `http`'s `HeaderMap` and hyper's client a
//! keep-alive request cost as much CPU as nginx spends on it, and most of
//! the user-space share was those libraries' generality (about 30k of 48k
//! instructions; docs/BENCHMARKS.md). The common request on an origin, a GET
//! without a body, needs none of it.
//!
//! What it takes: a head that `httparse` (the parser hyper uses) parses
//! completely, HTTP/1.1, GET or HEAD, an origin-form target, exactly one
//! `Host` naming this connection's site, and no `Content-Length`,
//! `Transfer-Encoding`, `Expect` or `Upgrade` field. Such a request has no
//! body (RFC 9112 6.3) and its framing cannot be read two ways. Anything
//! else, malformed or merely unusual, goes to hyper with every byte read so
//! far ([`Direct::Defer`]): hyper stays the one judge of bad input and the
//! one place answering 400, 421 or 431, and this path only writes framing it
//! chose itself, to the upstream and back.
//!
//! Only idempotent methods take it, so a reused upstream connection that
//! turns out closed before answering is retried on another (RFC 9110 9.2.2).

use std::{
    borrow::Cow,
    cell::RefCell,
    io::Write as _,
    mem::MaybeUninit,
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, uri::PathAndQuery, HeaderValue, Method, StatusCode};
use httparse::{Header, ParserConfig, Status};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
    sync::watch,
    time::{sleep, sleep_until, timeout, Instant},
};

use super::{
    activity::{Check, Tracked},
    handler::{Connection, RequestId, UpstreamFailure},
    headers::{
        self, CLIENT_CERT_SHA256, REQUEST_ID, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_REAL_IP,
    },
    serve::{close, Limits, CLOSE_GRACE, PARK_AFTER},
    upstream::UpstreamError,
    Route, MAX_HEADER_BYTES,
};

/// Header fields per head: hyper's default, which its path keeps too. A
/// request with more goes to hyper, which answers 431.
const MAX_FIELDS: usize = 100;
/// `Connection` options per message; a request naming more goes to hyper.
const MAX_CONNECTION_OPTIONS: usize = 8;
/// Read from the client or the upstream this much at a time.
const READ_CHUNK: usize = 8 * 1024;
/// A body is passed on in writes of at most about this size.
const WRITE_CHUNK: usize = 16 * 1024;
/// A chunk-size line (with extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4 * 1024;

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

/// What a connection's requests need to know about their site.
#[derive(Debug, Clone, Copy)]
pub(super) struct Site<'a> {
    pub sni: &'a str,
    pub route: &'a Route,
    pub peer_ip: &'a HeaderValue,
    pub client_cert_sha256: &'a HeaderValue,
}

impl Connection {
    fn site(&self) -> Site<'_> {
        Site {
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
    limits: &Limits<'_>,
    shutdown: &mut watch::Receiver<bool>,
) -> Direct
where
    IO: AsyncRead + AsyncWrite + Unpin,
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
        let forward = match prepare_request(
            &buffers.client,
            conn.site(),
            request_id.as_str(),
            &mut buffers.request,
        ) {
            Prepared::Forward(forward) => forward,
            Prepared::Defer => return Direct::Defer(buffers.client.split().freeze()),
            Prepared::Partial => {
                if let Some(left) =
                    read_client(io, &mut buffers.client, conn, limits, &mut timer, shutdown).await
                {
                    return left;
                }
                continue;
            }
        };
        buffers.client.advance(forward.head_len);
        let guard = conn.activity.begin_request();
        let exchanged = tokio::select! {
            biased;
            exchanged = exchange(io, conn, &mut buffers, &forward, request_id.as_str()) => exchanged,
            () = shutdown_then_grace(shutdown) => {
                tracing::debug!(site = %limits.label, "closing: request still in flight after the shutdown grace");
                Exchanged::Broken
            }
        };
        drop(guard);
        match exchanged {
            Exchanged::Done if !forward.close && !*shutdown.borrow() => {}
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
    limits: &Limits<'_>,
    timer: &mut std::pin::Pin<&mut tokio::time::Sleep>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Direct>
where
    IO: AsyncRead + AsyncWrite + Unpin,
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
                        tracing::debug!(site = %limits.label, %error, "connection ended with an error");
                        Some(Direct::Ended)
                    }
                };
            }
            () = timer.as_mut() => {
                match conn.activity.check(limits.header_timeout, limits.idle_timeout, Some(PARK_AFTER)) {
                    Check::WaitUntil(at) => timer.as_mut().reset(at),
                    Check::HeaderTimeout => {
                        tracing::debug!(site = %limits.label, "closing: request head not complete within header_timeout");
                        return Some(Direct::Ended);
                    }
                    Check::Idle => {
                        tracing::debug!(site = %limits.label, "closing idle connection");
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
                if changed.is_err() || *shutdown.borrow() {
                    close(io).await;
                    return Some(Direct::Ended);
                }
            }
        }
    }
}

/// Resolves [`CLOSE_GRACE`] after shutdown is asked for.
async fn shutdown_then_grace(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    sleep_until(Instant::now() + CLOSE_GRACE).await;
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
async fn exchange<IO>(
    io: &mut Tracked<IO>,
    conn: &Connection,
    buffers: &mut Buffers,
    forward: &Forward,
    request_id: &str,
) -> Exchanged
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let authority = conn.route.upstream.authority();
    let answered = timeout(
        conn.route.upstream_timeout,
        response_head(conn, buffers, forward),
    )
    .await;
    let (mut tcp, head) = match answered {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => {
            let failure = UpstreamFailure::Error(&error);
            return answer_failure(io, conn, failure, request_id, forward.close).await;
        }
        Err(_) => {
            let failure = UpstreamFailure::Timeout;
            return answer_failure(io, conn, failure, request_id, forward.close).await;
        }
    };
    conn.count(head.status);
    let Buffers { upstream, out, .. } = buffers;
    let copied = match head.framing {
        Framing::Empty => Ok(upstream.is_empty()),
        Framing::Length(length) => copy_length(io, &mut tcp, upstream, out, length).await,
        Framing::Chunked => copy_chunked(io, &mut tcp, upstream, out).await,
        Framing::UntilClose => copy_until_close(io, &mut tcp, upstream, out).await,
    };
    let clean = match copied {
        Ok(clean) => clean,
        Err(Copy::Upstream(error)) => {
            tracing::warn!(site = %conn.route.label, request_id, %error, "upstream broke off a response body; closing the client connection");
            return Exchanged::Broken;
        }
        Err(Copy::Client) => return Exchanged::Broken,
    };
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
    let authority = conn.route.upstream.authority();
    loop {
        let (mut tcp, reused) = conn.upstream.stream(authority).await?;
        buffers.upstream.clear();
        match read_response_head(&mut tcp, buffers, forward).await {
            Ok(head) => return Ok((tcp, head)),
            Err(UpstreamError::Io(_) | UpstreamError::ClosedEarly)
                if reused && buffers.upstream.is_empty() =>
            {
                continue
            }
            Err(error) => return Err(error),
        }
    }
}

async fn read_response_head(
    tcp: &mut TcpStream,
    buffers: &mut Buffers,
    forward: &Forward,
) -> Result<ResponseHead, UpstreamError> {
    tcp.write_all(&buffers.request)
        .await
        .map_err(UpstreamError::Io)?;
    loop {
        if !buffers.upstream.is_empty() {
            buffers.out.clear();
            match prepare_response(
                &buffers.upstream,
                forward.head_request,
                forward.close,
                &mut buffers.out,
            )? {
                Parsed::Final(head) => {
                    buffers.upstream.advance(head.len);
                    return Ok(head);
                }
                Parsed::Informational(len) => {
                    buffers.upstream.advance(len);
                    continue;
                }
                Parsed::Partial if buffers.upstream.len() >= MAX_HEADER_BYTES => {
                    return Err(UpstreamError::Malformed("response head too large"));
                }
                Parsed::Partial => {}
            }
        }
        buffers.upstream.reserve(READ_CHUNK);
        if tcp
            .read_buf(&mut buffers.upstream)
            .await
            .map_err(UpstreamError::Io)?
            == 0
        {
            return Err(UpstreamError::ClosedEarly);
        }
    }
}

/// Why passing a body on stopped.
#[derive(Debug)]
enum Copy {
    Upstream(UpstreamError),
    Client,
}

/// Reads more of the body; an early end is the upstream's failure.
async fn read_more(tcp: &mut TcpStream, upstream: &mut BytesMut) -> Result<(), Copy> {
    upstream.reserve(READ_CHUNK);
    match tcp.read_buf(upstream).await {
        Ok(0) => Err(Copy::Upstream(UpstreamError::ClosedEarly)),
        Ok(_) => Ok(()),
        Err(error) => Err(Copy::Upstream(UpstreamError::Io(error))),
    }
}

/// Writes `out` to the client and empties it.
async fn write_out<IO: AsyncWrite + Unpin>(io: &mut IO, out: &mut Vec<u8>) -> Result<(), Copy> {
    if !out.is_empty() {
        io.write_all(out).await.map_err(|_| Copy::Client)?;
        out.clear();
    }
    io.flush().await.map_err(|_| Copy::Client)
}

/// A `Content-Length` body. `Ok(true)` when nothing followed it.
async fn copy_length<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    tcp: &mut TcpStream,
    upstream: &mut BytesMut,
    out: &mut Vec<u8>,
    mut remaining: u64,
) -> Result<bool, Copy> {
    loop {
        let take = usize::try_from(remaining)
            .unwrap_or(usize::MAX)
            .min(upstream.len());
        out.extend_from_slice(&upstream[..take]);
        upstream.advance(take);
        remaining -= take as u64;
        if remaining == 0 {
            return Ok(upstream.is_empty());
        }
        // Passed on before waiting for more.
        write_out(io, out).await?;
        read_more(tcp, upstream).await?;
    }
}

/// A chunked body, passed on in the same chunks, without extensions or
/// trailer fields. `Ok(true)` when nothing followed it.
async fn copy_chunked<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    tcp: &mut TcpStream,
    upstream: &mut BytesMut,
    out: &mut Vec<u8>,
) -> Result<bool, Copy> {
    let malformed = |what| Copy::Upstream(UpstreamError::Malformed(what));
    let mut decoder = Chunks::Size;
    loop {
        match decoder {
            Chunks::Size => match httparse::parse_chunk_size(upstream) {
                Ok(Status::Complete((len, 0))) => {
                    upstream.advance(len);
                    decoder = Chunks::Trailer;
                    continue;
                }
                Ok(Status::Complete((len, size))) => {
                    upstream.advance(len);
                    let _ = write!(out, "{size:x}\r\n");
                    decoder = Chunks::Data(size);
                    continue;
                }
                Ok(Status::Partial) if upstream.len() < MAX_CHUNK_LINE => {}
                _ => return Err(malformed("bad chunk size line")),
            },
            Chunks::Data(remaining) => {
                let take = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(upstream.len());
                out.extend_from_slice(&upstream[..take]);
                upstream.advance(take);
                let remaining = remaining - take as u64;
                decoder = if remaining == 0 {
                    out.extend_from_slice(b"\r\n");
                    Chunks::DataEnd
                } else {
                    Chunks::Data(remaining)
                };
                if remaining == 0 {
                    continue;
                }
            }
            Chunks::DataEnd => {
                if upstream.len() >= 2 {
                    if &upstream[..2] != b"\r\n" {
                        return Err(malformed("chunk data not followed by CRLF"));
                    }
                    upstream.advance(2);
                    decoder = Chunks::Size;
                    continue;
                }
            }
            Chunks::Trailer => {
                let mut fields = [httparse::EMPTY_HEADER; 16];
                match httparse::parse_headers(upstream, &mut fields) {
                    Ok(Status::Complete((len, _))) => {
                        upstream.advance(len);
                        out.extend_from_slice(b"0\r\n\r\n");
                        return Ok(upstream.is_empty());
                    }
                    Ok(Status::Partial) if upstream.len() < MAX_HEADER_BYTES => {}
                    _ => return Err(malformed("bad trailer section")),
                }
            }
        }
        if out.len() >= WRITE_CHUNK || upstream.is_empty() {
            write_out(io, out).await?;
        }
        read_more(tcp, upstream).await?;
    }
}

#[derive(Debug, Clone, Copy)]
enum Chunks {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
}

/// A body that ends when the upstream closes, passed on chunked.
async fn copy_until_close<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    tcp: &mut TcpStream,
    upstream: &mut BytesMut,
    out: &mut Vec<u8>,
) -> Result<bool, Copy> {
    loop {
        if !upstream.is_empty() {
            let _ = write!(out, "{:x}\r\n", upstream.len());
            out.extend_from_slice(upstream);
            out.extend_from_slice(b"\r\n");
            upstream.clear();
        }
        write_out(io, out).await?;
        upstream.reserve(READ_CHUNK);
        match tcp.read_buf(upstream).await {
            Ok(0) => {
                out.extend_from_slice(b"0\r\n\r\n");
                return Ok(false);
            }
            Ok(_) => {}
            Err(error) => return Err(Copy::Upstream(UpstreamError::Io(error))),
        }
    }
}

/// Answers 502 or 504 for a request whose upstream gave no response head.
async fn answer_failure<IO>(
    io: &mut IO,
    conn: &Connection,
    failure: UpstreamFailure<'_>,
    request_id: &str,
    close: bool,
) -> Exchanged
where
    IO: AsyncWrite + Unpin,
{
    let (status, body) = conn.upstream_failed(failure, request_id);
    conn.count(status);
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
    out.extend_from_slice(body.as_bytes());
    match write_out(io, &mut out).await {
        Ok(()) => Exchanged::Done,
        Err(_) => Exchanged::Broken,
    }
}

/// A request head this path forwards.
#[derive(Debug, PartialEq, Eq)]
struct Forward {
    /// Bytes of the client's head.
    head_len: usize,
    /// HEAD: the response has no body whatever its fields say.
    head_request: bool,
    /// The client asked to close after this response.
    close: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Prepared {
    Forward(Forward),
    /// More bytes are needed to decide.
    Partial,
    /// For hyper.
    Defer,
}

/// Decides whether the head at the start of `buf` takes this path, and if
/// so writes the upstream's request head into `out`, with the same header
/// policy as [`headers::prepare_request`].
fn prepare_request(buf: &[u8], site: Site<'_>, request_id: &str, out: &mut Vec<u8>) -> Prepared {
    let mut fields = [const { MaybeUninit::<Header<'_>>::uninit() }; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut []);
    let head_len = match ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buf,
        &mut fields,
    ) {
        Ok(Status::Complete(len)) if len <= MAX_HEADER_BYTES => len,
        Ok(Status::Partial) if buf.len() < MAX_HEADER_BYTES => return Prepared::Partial,
        _ => return Prepared::Defer,
    };
    if request.version != Some(1) {
        return Prepared::Defer;
    }
    let method = match request.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Prepared::Defer,
    };
    let target = match request.path.map(PathAndQuery::try_from) {
        Some(Ok(path)) if path.as_str().starts_with('/') => {
            match site.route.upstream.target_for(&method, Some(&path)) {
                Some(target) => target,
                None => return Prepared::Defer,
            }
        }
        _ => return Prepared::Defer,
    };

    let mut host = None;
    let mut visitor = None;
    let mut close = false;
    let mut options = Options::default();
    for field in request.headers.iter() {
        match Field::of(field.name) {
            // A second `Host` is hyper's to refuse.
            Field::Host if host.replace(field.value).is_some() => return Prepared::Defer,
            Field::ContentLength | Field::TransferEncoding | Field::Expect | Field::Upgrade => {
                return Prepared::Defer
            }
            Field::Connection => {
                for option in options_in(field.value) {
                    close |= option.eq_ignore_ascii_case(b"close");
                    if !options.push(option) {
                        return Prepared::Defer;
                    }
                }
            }
            Field::CfConnectingIp if visitor.is_none() => visitor = Some(field.value),
            _ => {}
        }
    }
    let Some(host) = host
        .and_then(visible_ascii)
        .and_then(headers::normalize_host)
    else {
        return Prepared::Defer;
    };
    if host != site.sni || !site.route.serves(&host) {
        return Prepared::Defer;
    }
    let visitor = match visitor
        .and_then(visible_ascii)
        .and_then(headers::canonical_visitor)
    {
        Some(Cow::Borrowed(text)) => Cow::Borrowed(text.as_bytes()),
        Some(Cow::Owned(text)) => Cow::Owned(text.into_bytes()),
        None => Cow::Borrowed(site.peer_ip.as_bytes()),
    };

    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        target
            .path_and_query()
            .map_or("/", PathAndQuery::as_str)
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for field in request.headers.iter() {
        let dropped = match Field::of(field.name) {
            Field::Host | Field::Connection | Field::HopByHop | Field::Rewritten | Field::Ours => {
                true
            }
            _ => options.names(field.name),
        };
        if !dropped {
            push_field(out, field.name, field.value);
        }
    }
    push_field(out, header::HOST.as_str(), host.as_bytes());
    push_field(out, X_FORWARDED_FOR.as_str(), &visitor);
    push_field(out, X_REAL_IP.as_str(), &visitor);
    push_field(out, X_FORWARDED_PROTO.as_str(), b"https");
    push_field(
        out,
        CLIENT_CERT_SHA256.as_str(),
        site.client_cert_sha256.as_bytes(),
    );
    push_field(out, REQUEST_ID.as_str(), request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
    Prepared::Forward(Forward {
        head_len,
        head_request: method == Method::HEAD,
        close,
    })
}

/// How a response body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// HEAD, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// Neither length nor chunked: the body ends when the upstream closes.
    UntilClose,
}

#[derive(Debug, PartialEq, Eq)]
struct ResponseHead {
    /// Bytes of the upstream's head.
    len: usize,
    status: StatusCode,
    framing: Framing,
    /// The upstream may get another request on this connection.
    reusable: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Final(ResponseHead),
    /// A 1xx head of this many bytes, not passed on (the client sent no
    /// `Expect`; hyper's client skips them too).
    Informational(usize),
    Partial,
}

/// Reads the upstream's response head at the start of `buf` and writes the
/// client's into `out`: hop-by-hop fields removed, the framing our own.
fn prepare_response(
    buf: &[u8],
    head_request: bool,
    client_close: bool,
    out: &mut Vec<u8>,
) -> Result<Parsed, UpstreamError> {
    let mut fields = [const { MaybeUninit::<Header<'_>>::uninit() }; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut []);
    let len = match ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    ) {
        Ok(Status::Complete(len)) => len,
        Ok(Status::Partial) => return Ok(Parsed::Partial),
        Err(_) => return Err(UpstreamError::Malformed("response head does not parse")),
    };
    let code = response.code.unwrap_or_default();
    match code {
        101 => {
            return Err(UpstreamError::Malformed(
                "101 Switching Protocols to a request without Upgrade",
            ))
        }
        100..=199 => return Ok(Parsed::Informational(len)),
        _ => {}
    }
    let status = StatusCode::from_u16(code)
        .map_err(|_| UpstreamError::Malformed("status code out of range"))?;

    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut upstream_close = response.version != Some(1);
    let mut dated = false;
    let mut options = Options::default();
    for field in response.headers.iter() {
        match Field::of(field.name) {
            Field::ContentLength => {
                let value = content_length(field.value)
                    .ok_or(UpstreamError::Malformed("invalid Content-Length"))?;
                if length.replace(value).is_some_and(|first| first != value) {
                    return Err(UpstreamError::Malformed(
                        "conflicting Content-Length fields",
                    ));
                }
            }
            Field::TransferEncoding => {
                // hyper would pass other codings on; nothing local sends them.
                if chunked || !field.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(UpstreamError::Malformed(
                        "a transfer coding other than chunked",
                    ));
                }
                chunked = true;
            }
            Field::Connection => {
                for option in options_in(field.value) {
                    upstream_close |= option.eq_ignore_ascii_case(b"close");
                    if !options.push(option) {
                        return Err(UpstreamError::Malformed("too many Connection options"));
                    }
                }
            }
            Field::Date => dated = true,
            _ => {}
        }
    }
    if chunked && length.is_some() {
        return Err(UpstreamError::Malformed(
            "both Transfer-Encoding and Content-Length",
        ));
    }
    let no_content = status == StatusCode::NO_CONTENT;
    let framing = match (
        head_request || no_content || status == StatusCode::NOT_MODIFIED,
        chunked,
        length,
    ) {
        (true, _, _) => Framing::Empty,
        (false, true, _) => Framing::Chunked,
        (false, false, Some(length)) => Framing::Length(length),
        (false, false, None) => Framing::UntilClose,
    };

    push_status_line(out, code, response.reason.unwrap_or(""));
    for field in response.headers.iter() {
        let dropped = match Field::of(field.name) {
            Field::ContentLength
            | Field::TransferEncoding
            | Field::Connection
            | Field::Upgrade
            | Field::HopByHop => true,
            _ => options.names(field.name),
        };
        if !dropped {
            push_field(out, field.name, field.value);
        }
    }
    match (framing, length) {
        (Framing::Chunked | Framing::UntilClose, _) => {
            push_field(out, header::TRANSFER_ENCODING.as_str(), b"chunked");
        }
        // A HEAD or 304 answer states the length the body would have.
        (Framing::Length(length), _) | (Framing::Empty, Some(length)) if !no_content => {
            push_field(
                out,
                header::CONTENT_LENGTH.as_str(),
                itoa::Buffer::new().format(length).as_bytes(),
            );
        }
        _ => {}
    }
    if !dated {
        push_date(out);
    }
    if client_close {
        push_field(out, header::CONNECTION.as_str(), b"close");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Parsed::Final(ResponseHead {
        len,
        status,
        framing,
        reusable: !upstream_close && framing != Framing::UntilClose,
    }))
}

/// The options of a `Connection` field value (RFC 9110 7.6.1).
fn options_in(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|option| !option.is_empty())
}

/// The `Connection` options of one message.
#[derive(Default)]
struct Options<'a> {
    listed: [&'a [u8]; MAX_CONNECTION_OPTIONS],
    count: usize,
}

impl<'a> Options<'a> {
    /// False when there is no room left.
    fn push(&mut self, option: &'a [u8]) -> bool {
        match self.listed.get_mut(self.count) {
            Some(slot) => {
                *slot = option;
                self.count += 1;
                true
            }
            None => false,
        }
    }

    /// Whether the field `name` is one the options name (and so is
    /// hop-by-hop).
    fn names(&self, name: &str) -> bool {
        self.listed[..self.count]
            .iter()
            .any(|option| option.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// The fields either direction looks at, by name in any case. Matched by
/// length first: comparing against `http`'s names one by one cost more per
/// request than the rest of the head handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Host,
    ContentLength,
    TransferEncoding,
    Expect,
    Upgrade,
    Connection,
    CfConnectingIp,
    Date,
    /// The other hop-by-hop fields (`headers::HOP_BY_HOP`): `keep-alive`,
    /// `proxy-connection`, `te`.
    HopByHop,
    /// A forwarding statement only shield makes (`headers::REWRITTEN`).
    Rewritten,
    /// `x-shield-*`.
    Ours,
    Other,
}

impl Field {
    fn of(name: &str) -> Field {
        let eq = |known: &str| name.eq_ignore_ascii_case(known);
        match name.len() {
            2 if eq("te") => Field::HopByHop,
            4 if eq("host") => Field::Host,
            4 if eq("date") => Field::Date,
            6 if eq("expect") => Field::Expect,
            7 if eq("upgrade") => Field::Upgrade,
            9 if eq("forwarded") || eq("x-real-ip") => Field::Rewritten,
            10 if eq("connection") => Field::Connection,
            10 if eq("keep-alive") => Field::HopByHop,
            14 if eq("content-length") => Field::ContentLength,
            15 if eq("x-forwarded-for") => Field::Rewritten,
            16 if eq("proxy-connection") => Field::HopByHop,
            16 if eq("cf-connecting-ip") => Field::CfConnectingIp,
            17 if eq("transfer-encoding") => Field::TransferEncoding,
            17 if eq("x-forwarded-proto") => Field::Rewritten,
            _ if headers::is_ours_name(name) => Field::Ours,
            _ => Field::Other,
        }
    }
}

/// A field value as text, when `HeaderValue::to_str` would give it.
fn visible_ascii(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// A `Content-Length` value: digits only.
fn content_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn push_status_line(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(code).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes a field with its name lowercased, as hyper's path sends them.
fn push_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    let start = out.len();
    out.extend_from_slice(name.as_bytes());
    out[start..].make_ascii_lowercase();
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// hyper adds `Date` to responses without one; so does this path, from a
/// per-thread copy made once a second.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second || text.is_empty() {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        push_field(out, header::DATE.as_str(), text.as_bytes());
    });
}
