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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{header::HeaderName, HeaderMap};
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::{headers::Forwarding, Upstream};

    const SITE: &str = "www.example.com";
    const PEER: &str = "172.64.0.1";
    const CERT: &str = "ab12";

    fn route(upstream: &str) -> Route {
        Route {
            label: SITE.into(),
            names: vec![SITE.into(), "alt.example.com".into()],
            upstream: Upstream::parse(upstream).expect("upstream"),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(900),
            upstream_timeout: Duration::from_secs(30),
        }
    }

    fn prepare_with(upstream: &str, head: &str) -> (Prepared, String) {
        let route = route(upstream);
        let (peer_ip, cert) = (
            HeaderValue::from_static(PEER),
            HeaderValue::from_static(CERT),
        );
        let site = Site {
            sni: SITE,
            route: &route,
            peer_ip: &peer_ip,
            client_cert_sha256: &cert,
        };
        let mut out = Vec::new();
        let prepared = prepare_request(head.as_bytes(), site, "r1", &mut out);
        (prepared, String::from_utf8(out).expect("utf-8"))
    }

    fn prepare(head: &str) -> (Prepared, String) {
        prepare_with("http://127.0.0.1:8080", head)
    }

    fn forward(head: &str, head_request: bool, close: bool) -> Prepared {
        Prepared::Forward(Forward {
            head_len: head.len(),
            head_request,
            close,
        })
    }

    #[test]
    fn only_bodyless_get_and_head_for_this_site_take_the_direct_path() {
        let many_fields: String = (0..MAX_FIELDS).map(|i| format!("x-{i}: 1\r\n")).collect();
        let too_many = format!("GET / HTTP/1.1\r\nHost: {SITE}\r\n{many_fields}\r\n");
        let huge = format!(
            "GET / HTTP/1.1\r\nHost: {SITE}\r\nx: {}",
            "a".repeat(MAX_HEADER_BYTES)
        );
        let options = format!(
            "GET / HTTP/1.1\r\nHost: {SITE}\r\nConnection: {}\r\n\r\n",
            (0..=MAX_CONNECTION_OPTIONS)
                .map(|i| format!("x-{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let get = format!("GET /a?b=1 HTTP/1.1\r\nHost: {SITE}\r\n\r\n");
        let head = format!("HEAD / HTTP/1.1\r\nhost: {SITE}\r\n\r\n");
        let close = format!("GET / HTTP/1.1\r\nHost: {SITE}\r\nConnection: Close\r\n\r\n");
        let with_port = "GET / HTTP/1.1\r\nHost: WWW.Example.COM.:443\r\n\r\n".to_owned();
        let bare_lf = format!("GET / HTTP/1.1\nHost: {SITE}\n\n");
        let deferred = [
            "POST / HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 1\r\n\r\nx",
            "PUT / HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
            "CONNECT www.example.com:443 HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: www.example.com\r\n\r\n",
            "GET http://www.example.com/ HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: www.example.com\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: www.example.com\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: www.example.com\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: www.example.com\r\nHost: www.example.com\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: alt.example.com\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: other.example\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: www.example.com:x\r\n\r\n",
            "GET / HTTP/1.1\r\nHo st: www.example.com\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: www.example.com\r\n folded\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
            "\u{1}GET / HTTP/1.1\r\n\r\n",
            &too_many,
            &huge,
            &options,
        ];
        for request in deferred {
            assert_eq!(prepare(request).0, Prepared::Defer, "{request:?}");
        }
        for partial in ["", "GET / HT", "GET / HTTP/1.1\r\nHost: www.exa"] {
            assert_eq!(prepare(partial).0, Prepared::Partial, "{partial:?}");
        }
        let forwarded = [
            (&get, forward(&get, false, false)),
            (&head, forward(&head, true, false)),
            (&close, forward(&close, false, true)),
            (&with_port, forward(&with_port, false, false)),
            (&bare_lf, forward(&bare_lf, false, false)),
        ];
        for (request, want) in forwarded {
            assert_eq!(prepare(request).0, want, "{request:?}");
        }
        // Pipelined: only the first head is taken.
        let two = format!("{get}{get}");
        assert_eq!(prepare(&two).0, forward(&get, false, false));
        // A way out of an upstream prefix is hyper's to refuse.
        let escape = format!("GET /../admin HTTP/1.1\r\nHost: {SITE}\r\n\r\n");
        assert_eq!(
            prepare_with("http://127.0.0.1:1/app", &escape).0,
            Prepared::Defer
        );
        let (_, sent) = prepare_with("http://127.0.0.1:1/app", &get);
        assert!(sent.starts_with("GET /app/a?b=1 HTTP/1.1\r\n"), "{sent}");
    }

    /// The fields the upstream gets from the direct path, as `(name, value)`
    /// in order.
    fn sent_fields(sent: &str) -> Vec<(String, String)> {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut fields);
        assert!(matches!(
            request.parse(sent.as_bytes()),
            Ok(Status::Complete(len)) if len == sent.len()
        ));
        request
            .headers
            .iter()
            .map(|f| {
                (
                    f.name.to_owned(),
                    String::from_utf8(f.value.to_vec()).expect("utf-8"),
                )
            })
            .collect()
    }

    /// The same policy as `headers::prepare_request` on hyper's path: for each
    /// set of client fields, the upstream gets the same values per name (the
    /// order across names may differ; within a name it may not).
    #[test]
    fn header_policy_matches_the_hyper_path() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("Accept", "*/*"), ("User-Agent", "curl/8")],
            &[
                ("X-Forwarded-For", "6.6.6.6"),
                ("x-real-ip", "6.6.6.6"),
                ("Forwarded", "for=6.6.6.6"),
                ("X-Forwarded-Proto", "http"),
                ("X-Shield-Client-Cert-Sha256", "forged"),
                ("x-shield-request-id", "forged"),
                ("X-Shield-Other", "forged"),
                ("CF-Connecting-IP", "203.0.113.7"),
                ("Connection", "keep-alive, X-Secret"),
                ("X-Secret", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Connection", "keep-alive"),
                ("TE", "trailers"),
                ("Accept", "a"),
                ("accept", "b"),
            ],
            &[("cf-connecting-ip", "2001:DB8:0:0::1")],
            &[("cf-connecting-ip", " 203.0.113.7")],
            &[
                ("cf-connecting-ip", "not an ip"),
                ("cf-connecting-ip", "1.2.3.4"),
            ],
            &[
                ("cf-connecting-ip", "1.2.3.4"),
                ("Connection", "cf-connecting-ip"),
            ],
            &[("Connection", "close"), ("close", "x")],
            &[("X-Obs", "caf\u{e9}")],
        ];
        for fields in cases {
            let mut head = format!("GET / HTTP/1.1\r\nHost: {SITE}\r\n");
            let mut map = HeaderMap::new();
            map.insert(header::HOST, HeaderValue::from_static(SITE));
            for (name, value) in *fields {
                head.push_str(&format!("{name}: {value}\r\n"));
                map.append(
                    HeaderName::from_bytes(name.as_bytes()).expect("name"),
                    // As parsed: without the whitespace around it.
                    HeaderValue::from_bytes(value.trim().as_bytes()).expect("value"),
                );
            }
            head.push_str("\r\n");
            let (prepared, sent) = prepare(&head);
            assert!(matches!(prepared, Prepared::Forward(_)), "{head}");
            headers::prepare_request(
                &mut map,
                &Forwarding {
                    host: SITE,
                    peer_ip: &HeaderValue::from_static(PEER),
                    client_cert_sha256: &HeaderValue::from_static(CERT),
                    request_id: "r1",
                },
            );
            let mut direct = sent_fields(&sent);
            let mut hyper: Vec<(String, String)> = map
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8(v.as_bytes().to_vec()).expect("utf-8"),
                    )
                })
                .collect();
            // Stable sorts: values of one name keep their order.
            direct.sort_by(|a, b| a.0.cmp(&b.0));
            hyper.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(direct, hyper, "{head}");
        }
    }

    #[test]
    fn field_names_agree_with_the_header_policy_tables() {
        for name in &headers::HOP_BY_HOP {
            for spelling in [name.as_str().to_owned(), name.as_str().to_uppercase()] {
                assert!(
                    matches!(
                        Field::of(&spelling),
                        Field::HopByHop
                            | Field::Connection
                            | Field::TransferEncoding
                            | Field::Upgrade
                    ),
                    "{spelling}"
                );
            }
        }
        for name in &headers::REWRITTEN {
            assert_eq!(Field::of(name.as_str()), Field::Rewritten);
            assert_eq!(Field::of(&name.as_str().to_uppercase()), Field::Rewritten);
        }
        assert_eq!(Field::of("X-Shield-Anything"), Field::Ours);
        assert_eq!(Field::of("x-shield"), Field::Other);
        assert_eq!(
            Field::of(headers::CF_CONNECTING_IP.as_str()),
            Field::CfConnectingIp
        );
    }

    fn respond(
        head: &str,
        head_request: bool,
        client_close: bool,
    ) -> (Result<Parsed, UpstreamError>, String) {
        let mut out = Vec::new();
        let parsed = prepare_response(head.as_bytes(), head_request, client_close, &mut out);
        (parsed, String::from_utf8(out).expect("utf-8"))
    }

    fn final_head(head: &str, status: u16, framing: Framing, reusable: bool) -> Parsed {
        Parsed::Final(ResponseHead {
            len: head.len(),
            status: StatusCode::from_u16(status).expect("status"),
            framing,
            reusable,
        })
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let table: &[(&str, bool, u16, Framing, bool)] = &[
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
                false,
                200,
                Framing::Length(2),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n",
                false,
                200,
                Framing::Length(2),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n",
                false,
                200,
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\n",
                false,
                200,
                Framing::UntilClose,
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n",
                false,
                200,
                Framing::Length(2),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n",
                false,
                200,
                Framing::Length(2),
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                true,
                200,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                false,
                204,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
                false,
                304,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
                false,
                502,
                Framing::Length(0),
                true,
            ),
        ];
        for (head, head_request, status, framing, reusable) in table {
            let (parsed, _) = respond(head, *head_request, false);
            assert_eq!(
                parsed.expect("parses"),
                final_head(head, *status, *framing, *reusable),
                "{head:?}"
            );
        }
        let (parsed, _) = respond("HTTP/1.1 200 OK\r\nContent-Le", false, false);
        assert_eq!(parsed.expect("partial"), Parsed::Partial);
        let early = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";
        let (parsed, out) = respond(early, false, false);
        assert_eq!(parsed.expect("1xx"), Parsed::Informational(early.len()));
        assert!(out.is_empty());
        let refused = [
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/9.9 200 OK\r\n\r\n",
            "garbage\r\n\r\n",
        ];
        for head in refused {
            assert!(
                matches!(
                    respond(head, false, false).0,
                    Err(UpstreamError::Malformed(_))
                ),
                "{head:?}"
            );
        }
    }

    #[test]
    fn response_heads_lose_hop_by_hop_fields_and_get_our_framing() {
        let (_, out) = respond(
            "HTTP/1.1 200 Fine\r\nX-App: 1\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 2\r\n\
             Keep-Alive: timeout=5\r\nProxy-Connection: x\r\nUpgrade: h2c\r\nTE: x\r\n\
             Date: Mon, 23 Nov 2026 00:00:00 GMT\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            true,
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 Fine\r\nx-app: 1\r\ndate: Mon, 23 Nov 2026 00:00:00 GMT\r\n\
             transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        let (_, out) = respond("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n", false, false);
        assert!(
            out.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ndate: "),
            "{out}"
        );
        assert!(out.ends_with(" GMT\r\n\r\n"), "{out}");
        // A body the upstream ends by closing goes on chunked.
        let (_, out) = respond("HTTP/1.0 200 OK\r\n\r\n", false, false);
        assert!(out.contains("transfer-encoding: chunked\r\n"), "{out}");
        // HEAD and 304 state the length; 204 has none.
        let (_, out) = respond("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true, false);
        assert!(out.contains("content-length: 10\r\n"), "{out}");
        let (_, out) = respond(
            "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
        );
        assert!(!out.contains("content-length"), "{out}");
    }

    /// A loopback connection whose far end writes `parts` with a pause
    /// between them, then closes.
    async fn upstream_sending(parts: &[&'static [u8]]) -> TcpStream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let parts = parts.to_vec();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            for part in parts {
                tcp.write_all(part).await.expect("write");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        TcpStream::connect(addr).await.expect("connect")
    }

    async fn copied(
        parts: &[&'static [u8]],
        copy: impl AsyncFnOnce(
            &mut Vec<u8>,
            &mut TcpStream,
            &mut BytesMut,
            &mut Vec<u8>,
        ) -> Result<bool, Copy>,
    ) -> (Result<bool, Copy>, String) {
        let mut tcp = upstream_sending(parts).await;
        let (mut client, mut upstream, mut out) = (Vec::new(), BytesMut::new(), Vec::new());
        let result = copy(&mut client, &mut tcp, &mut upstream, &mut out).await;
        client.extend_from_slice(&out);
        (result, String::from_utf8(client).expect("utf-8"))
    }

    #[tokio::test]
    async fn chunked_bodies_pass_in_the_same_chunks_without_extensions_or_trailers() {
        let (result, sent) = copied(
            &[
                b"3\r\nab",
                b"c\r\n1",
                b"0;ext=1\r\n0123456789abcdef\r\n",
                b"0\r\nTrailer: x\r\n\r\n",
            ],
            async |client, tcp, upstream, out| copy_chunked(client, tcp, upstream, out).await,
        )
        .await;
        assert!(matches!(result, Ok(true)));
        assert_eq!(sent, "3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n");
        for bad in [
            &b"zz\r\n"[..],
            b"3\r\nabcX\r\n",
            b"3\r\nab",
            b"ffffffffffffffffff\r\n",
        ] {
            let (result, _) = copied(&[bad], async |client, tcp, upstream, out| {
                copy_chunked(client, tcp, upstream, out).await
            })
            .await;
            assert!(matches!(result, Err(Copy::Upstream(_))), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn length_bodies_stop_at_the_length() {
        let (result, sent) = copied(&[b"01234", b"56789"], async |client, tcp, upstream, out| {
            copy_length(client, tcp, upstream, out, 10).await
        })
        .await;
        assert!(matches!(result, Ok(true)));
        assert_eq!(sent, "0123456789");
        // More than the length: passed on up to it, and not reusable.
        let (result, sent) = copied(&[b"0123456789extra"], async |client, tcp, upstream, out| {
            copy_length(client, tcp, upstream, out, 10).await
        })
        .await;
        assert!(matches!(result, Ok(false)));
        assert_eq!(sent, "0123456789");
        let (result, _) = copied(&[b"0123"], async |client, tcp, upstream, out| {
            copy_length(client, tcp, upstream, out, 10).await
        })
        .await;
        assert!(matches!(
            result,
            Err(Copy::Upstream(UpstreamError::ClosedEarly))
        ));
    }

    #[tokio::test]
    async fn bodies_ended_by_close_go_on_chunked() {
        let (result, sent) = copied(&[b"abc", b"defg"], async |client, tcp, upstream, out| {
            copy_until_close(client, tcp, upstream, out).await
        })
        .await;
        assert!(matches!(result, Ok(false)));
        assert_eq!(sent, "3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n");
    }
}
