//! A response body on its way from the upstream to the client: decoded by
//! the upstream's framing and re-encoded in shield's, one state per framing
//! (as hyper's `decode::Kind`). Chunked bodies keep their chunks but lose
//! extensions and trailer fields; a body ended by close goes on chunked.
//! For an h2 stream ([`Encoding::Plain`]) only the payload is written:
//! HTTP/2 frames it itself.
//!
//! [`Reframe`] does no I/O, so every byte boundary can be tested (and
//! fuzzed); [`relay`] drives it over the sockets.

use std::io::Write as _;

use bytes::{Buf, BytesMut};
use httparse::Status;
use tokio::{
    io::{AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use super::Malformed;
use crate::proxy::MAX_HEADER_BYTES;

/// Read from the upstream this much at a time.
pub(in crate::proxy) const READ_CHUNK: usize = 8 * 1024;
/// A chunk-size line (with extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Trailer fields read (and dropped) at most.
const MAX_TRAILER_FIELDS: usize = 16;

/// How a response body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::proxy) enum Framing {
    /// HEAD, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// Neither length nor chunked: the body ends when the upstream closes.
    UntilClose,
}

/// Where a body being passed on is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Bytes left of the current chunk's data.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: expecting trailer fields and the final CRLF.
    Trailer,
}

/// Whether the body is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::proxy) enum Progress {
    /// Everything given was used (or is kept for a line not yet whole);
    /// more is needed.
    More,
    /// The body ended; what follows it is left in the input.
    Done,
}

/// Why a body could not be passed on whole: the upstream's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("malformed upstream body: {0}")]
    Malformed(Malformed),
    #[error("the upstream closed the connection in the middle of a body")]
    ClosedEarly,
}

/// What a body is re-encoded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::proxy) enum Encoding {
    /// HTTP/1.1 as shield frames it: a length kept, anything else chunked.
    Http1,
    /// The payload alone, for a protocol that frames it (h2).
    Plain,
}

/// The decoder and encoder of one body.
#[derive(Debug)]
pub(in crate::proxy) struct Reframe {
    state: State,
    encoding: Encoding,
}

impl Reframe {
    pub(in crate::proxy) fn new(framing: Framing, encoding: Encoding) -> Reframe {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(length) => State::Length(length),
            Framing::Chunked => State::Chunked(Chunk::Size),
            Framing::UntilClose => State::UntilClose,
        };
        Reframe { state, encoding }
    }

    /// Nothing more of the body is to come.
    pub(in crate::proxy) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Moves what it can of the body from `input` to `out`, re-encoded.
    pub(in crate::proxy) fn feed(
        &mut self,
        input: &mut BytesMut,
        out: &mut Vec<u8>,
    ) -> Result<Progress, BodyError> {
        loop {
            match self.state {
                State::Done => return Ok(Progress::Done),
                State::Length(remaining) => {
                    let left = remaining - take(input, out, remaining);
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                    if left > 0 {
                        return Ok(Progress::More);
                    }
                }
                State::UntilClose => {
                    if !input.is_empty() {
                        let plain = self.encoding == Encoding::Plain;
                        if !plain {
                            let _ = write!(out, "{:x}\r\n", input.len());
                        }
                        out.extend_from_slice(input);
                        if !plain {
                            out.extend_from_slice(b"\r\n");
                        }
                        input.clear();
                    }
                    return Ok(Progress::More);
                }
                State::Chunked(chunk) => match chunked(chunk, input, out, self.encoding)? {
                    Some(next) => self.state = next,
                    None => return Ok(Progress::More),
                },
            }
        }
    }

    /// The upstream closed its side: the end of a body ended by close, and
    /// an early end of any other.
    pub(in crate::proxy) fn end(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        match self.state {
            State::Done => Ok(()),
            State::UntilClose => {
                if self.encoding == Encoding::Http1 {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                self.state = State::Done;
                Ok(())
            }
            State::Length(_) | State::Chunked(_) => Err(BodyError::ClosedEarly),
        }
    }
}

/// Moves up to `limit` bytes from `input` to `out`; how many it moved.
fn take(input: &mut BytesMut, out: &mut Vec<u8>, limit: u64) -> u64 {
    let n = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .min(input.len());
    out.extend_from_slice(&input[..n]);
    input.advance(n);
    n as u64
}

/// One step of a chunked body: the next state, or `None` when `input`
/// holds too little to take one.
fn chunked(
    chunk: Chunk,
    input: &mut BytesMut,
    out: &mut Vec<u8>,
    encoding: Encoding,
) -> Result<Option<State>, BodyError> {
    let malformed = |what| BodyError::Malformed(Malformed(what));
    let framed = encoding == Encoding::Http1;
    let next = match chunk {
        Chunk::Size => match httparse::parse_chunk_size(input) {
            // httparse reads a line without a digit as size 0 and lets an
            // extension run on over a bare LF; hyper's decoder refuses
            // both, and both paths must end a body at the same byte.
            Ok(Status::Complete((len, _))) if !size_line_ok(&input[..len]) => {
                return Err(malformed("bad chunk size line"))
            }
            Ok(Status::Complete((len, 0))) => {
                input.advance(len);
                Chunk::Trailer
            }
            Ok(Status::Complete((len, size))) => {
                input.advance(len);
                if framed {
                    let _ = write!(out, "{size:x}\r\n");
                }
                Chunk::Data(size)
            }
            Ok(Status::Partial) if input.len() < MAX_CHUNK_LINE => return Ok(None),
            _ => return Err(malformed("bad chunk size line")),
        },
        Chunk::Data(remaining) => {
            if input.is_empty() {
                return Ok(None);
            }
            let left = remaining - take(input, out, remaining);
            if left > 0 {
                Chunk::Data(left)
            } else {
                if framed {
                    out.extend_from_slice(b"\r\n");
                }
                Chunk::DataEnd
            }
        }
        Chunk::DataEnd => {
            if input.len() < 2 {
                return Ok(None);
            }
            if &input[..2] != b"\r\n" {
                return Err(malformed("chunk data not followed by CRLF"));
            }
            input.advance(2);
            Chunk::Size
        }
        Chunk::Trailer => {
            let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
            match httparse::parse_headers(input, &mut fields) {
                Ok(Status::Complete((len, _))) => {
                    input.advance(len);
                    if framed {
                        out.extend_from_slice(b"0\r\n\r\n");
                    }
                    return Ok(Some(State::Done));
                }
                Ok(Status::Partial) if input.len() < MAX_HEADER_BYTES => return Ok(None),
                _ => return Err(malformed("bad trailer section")),
            }
        }
    };
    Ok(Some(State::Chunked(next)))
}

/// A chunk-size line httparse took, `CRLF` included: it starts with a
/// digit and holds no LF before its end.
fn size_line_ok(line: &[u8]) -> bool {
    line.first().is_some_and(u8::is_ascii_hexdigit) && !line[..line.len() - 2].contains(&b'\n')
}

/// Why passing a body on stopped.
#[derive(Debug)]
pub(in crate::proxy) enum Stop {
    /// The upstream broke off or sent a malformed body.
    Upstream(std::io::Error),
    UpstreamBody(BodyError),
    /// Writing to the client failed.
    Client,
}

/// Writes `out` to the client and empties it.
pub(in crate::proxy) async fn write_out<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut Vec<u8>,
) -> Result<(), Stop> {
    if !out.is_empty() {
        io.write_all(out).await.map_err(|_| Stop::Client)?;
        out.clear();
    }
    io.flush().await.map_err(|_| Stop::Client)
}

/// A relay that stopped before the body's end.
#[derive(Debug)]
pub(in crate::proxy) struct Broken {
    pub stop: Stop,
    /// Whether any of the response (its head included) reached the client
    /// before: if not, the client can still be answered with an error.
    pub sent: bool,
}

/// Passes a body on from `tcp` (of which `upstream` was read already) to
/// the client, through `out`, which may hold the response head. What was
/// read is written out before waiting for more, so a streamed body (server-
/// sent events) arrives as it is produced. `Ok(true)` when nothing followed
/// the body: the upstream stream may be reused.
pub(in crate::proxy) async fn relay<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    tcp: &mut TcpStream,
    upstream: &mut BytesMut,
    out: &mut Vec<u8>,
    framing: Framing,
) -> Result<bool, Broken> {
    let mut body = Reframe::new(framing, Encoding::Http1);
    let mut sent = false;
    let broken = |stop, sent| Broken { stop, sent };
    loop {
        match body.feed(upstream, out) {
            Ok(Progress::Done) => return Ok(upstream.is_empty()),
            Ok(Progress::More) => {}
            Err(error) => return Err(broken(Stop::UpstreamBody(error), sent)),
        }
        write_out(io, out)
            .await
            .map_err(|stop| broken(stop, true))?;
        sent = true;
        upstream.reserve(READ_CHUNK);
        match tcp.read_buf(upstream).await {
            Ok(0) => {
                body.end(out)
                    .map_err(|error| broken(Stop::UpstreamBody(error), sent))?;
                return Ok(false);
            }
            Ok(_) => {}
            Err(error) => return Err(broken(Stop::Upstream(error), sent)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;

    /// `input` fed to a fresh decoder in pieces split at `cuts`: whether it
    /// finished, and what it wrote followed by what it did not take.
    fn fed(
        framing: Framing,
        input: &[u8],
        cuts: &[usize],
    ) -> (Result<Progress, BodyError>, String) {
        fed_as(framing, Encoding::Http1, input, cuts)
    }

    fn fed_as(
        framing: Framing,
        encoding: Encoding,
        input: &[u8],
        cuts: &[usize],
    ) -> (Result<Progress, BodyError>, String) {
        let mut body = Reframe::new(framing, encoding);
        let (mut buffer, mut out) = (BytesMut::new(), Vec::new());
        let mut last = 0;
        let mut result = Ok(Progress::More);
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            buffer.extend_from_slice(&input[last..cut]);
            last = cut;
            result = body.feed(&mut buffer, &mut out);
            if !matches!(result, Ok(Progress::More)) {
                break;
            }
        }
        // What followed the body: left in the buffer, or not given yet.
        out.extend_from_slice(&buffer);
        out.extend_from_slice(&input[last..]);
        (result, String::from_utf8(out).expect("utf-8"))
    }

    /// The output does not depend on where the input was split: every
    /// single cut and every cut into single bytes give the same.
    #[test]
    fn the_output_does_not_depend_on_how_the_input_arrives() {
        let chunked = b"3\r\nabc\r\n10;ext=1\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\nnext";
        let cases: [(Framing, &[u8], &str, Progress); 4] = [
            (
                Framing::Chunked,
                chunked,
                "3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\nnext",
                Progress::Done,
            ),
            (
                Framing::Length(5),
                b"hellonext",
                "hellonext",
                Progress::Done,
            ),
            (Framing::Empty, b"next", "next", Progress::Done),
            (Framing::Length(9), b"hello", "hello", Progress::More),
        ];
        for (framing, input, want, progress) in cases {
            let bytes: Vec<usize> = (1..input.len()).collect();
            assert_eq!(fed(framing, input, &bytes), (Ok(progress), want.into()));
            for cut in 0..=input.len() {
                assert_eq!(
                    fed(framing, input, &[cut]),
                    (Ok(progress), want.into()),
                    "{framing:?} cut at {cut}"
                );
            }
        }
    }

    /// For h2 only the payload is written, wherever the input was split.
    #[test]
    fn plain_is_the_payload_alone() {
        let chunked = b"3\r\nabc\r\n10;ext=1\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\nnext";
        let cases: [(Framing, &[u8], &str, Progress); 3] = [
            (
                Framing::Chunked,
                chunked,
                "abc0123456789abcdefnext",
                Progress::Done,
            ),
            (
                Framing::Length(5),
                b"hellonext",
                "hellonext",
                Progress::Done,
            ),
            (
                Framing::UntilClose,
                b"all of it",
                "all of it",
                Progress::More,
            ),
        ];
        for (framing, input, want, progress) in cases {
            for cut in 0..=input.len() {
                assert_eq!(
                    fed_as(framing, Encoding::Plain, input, &[cut]),
                    (Ok(progress), want.into()),
                    "{framing:?} cut at {cut}"
                );
            }
        }
        let mut out = Vec::new();
        let mut until_close = Reframe::new(Framing::UntilClose, Encoding::Plain);
        assert_eq!(until_close.end(&mut out), Ok(()));
        assert!(out.is_empty() && until_close.is_done());
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"3\r\nabcX\r\n",
            b"ffffffffffffffffff\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            // Found by fuzzing (fuzz/ response_body): a size line without
            // digits, and an extension over a bare LF, which would end
            // the body where hyper's path refuses it.
            b"\r\n\r\n",
            b";x\r\n\r\n",
            b" \r\n\r\n",
            b"0;x\n0\r\n\r\n",
            b"1;a\nb\r\nx\r\n0\r\n\r\n",
        ] {
            let (result, _) = fed(Framing::Chunked, bad, &[]);
            assert!(
                matches!(result, Err(BodyError::Malformed(_))),
                "{bad:?}: {result:?}"
            );
        }
        let mut long = b"1".to_vec();
        long.resize(MAX_CHUNK_LINE, b';');
        assert!(fed(Framing::Chunked, &long, &[]).0.is_err());
    }

    #[test]
    fn an_early_end_is_the_upstreams_failure_except_for_a_body_ended_by_close() {
        let mut out = Vec::new();
        let mut body = Reframe::new(Framing::UntilClose, Encoding::Http1);
        let mut input = BytesMut::from(&b"abc"[..]);
        assert_eq!(body.feed(&mut input, &mut out), Ok(Progress::More));
        assert_eq!(body.end(&mut out), Ok(()));
        assert_eq!(out, b"3\r\nabc\r\n0\r\n\r\n");
        for framing in [Framing::Length(3), Framing::Chunked] {
            assert_eq!(
                Reframe::new(framing, Encoding::Http1).end(&mut out),
                Err(BodyError::ClosedEarly)
            );
        }
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

    async fn relayed(parts: &[&'static [u8]], framing: Framing) -> (Result<bool, Stop>, String) {
        let mut tcp = upstream_sending(parts).await;
        let (mut client, mut upstream, mut out) = (Vec::new(), BytesMut::new(), Vec::new());
        let result = relay(&mut client, &mut tcp, &mut upstream, &mut out, framing)
            .await
            .map_err(|broken| broken.stop);
        client.extend_from_slice(&out);
        (result, String::from_utf8(client).expect("utf-8"))
    }

    #[tokio::test]
    async fn bodies_are_relayed_over_sockets() {
        let (result, sent) = relayed(
            &[
                b"3\r\nab",
                b"c\r\n1",
                b"0;ext=1\r\n0123456789abcdef\r\n",
                b"0\r\nTrailer: x\r\n\r\n",
            ],
            Framing::Chunked,
        )
        .await;
        assert!(matches!(result, Ok(true)));
        assert_eq!(sent, "3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n");
        let (result, _) = relayed(&[b"3\r\nab"], Framing::Chunked).await;
        assert!(matches!(
            result,
            Err(Stop::UpstreamBody(BodyError::ClosedEarly))
        ));

        let (result, sent) = relayed(&[b"01234", b"56789"], Framing::Length(10)).await;
        assert!(matches!(result, Ok(true)));
        assert_eq!(sent, "0123456789");
        // More than the length: passed on up to it, and not reusable.
        let (result, sent) = relayed(&[b"0123456789extra"], Framing::Length(10)).await;
        assert!(matches!(result, Ok(false)));
        assert_eq!(sent, "0123456789");
        let (result, _) = relayed(&[b"0123"], Framing::Length(10)).await;
        assert!(matches!(
            result,
            Err(Stop::UpstreamBody(BodyError::ClosedEarly))
        ));

        let (result, sent) = relayed(&[b"abc", b"defg"], Framing::UntilClose).await;
        assert!(matches!(result, Ok(false)));
        assert_eq!(sent, "3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n");
    }
}
