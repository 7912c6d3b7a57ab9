//! Raw HTTP/2 frames over a verified TLS connection, for tests that must
//! misbehave in ways the `h2` client refuses to: a frame writer, the little
//! HPACK a test needs (literals without indexing, one dynamic-table insert
//! and indexed references to it), and a reader that records what the
//! server sent.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

pub const CANCEL: u32 = 0x8;
pub const REFUSED_STREAM: u32 = 0x7;

/// The largest frame payload a peer must accept before SETTINGS say more.
pub const MAX_FRAME: usize = 16_384;

/// One frame: 9-byte header, then the payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 1 << 24, "frame payload too long");
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in values {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

/// HPACK integer (RFC 7541 5.1) with an `n`-bit prefix under `first`'s
/// high bits.
pub fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn hpack_string(out: &mut Vec<u8>, text: &[u8]) {
    hpack_int(out, 0, 7, text.len());
    out.extend_from_slice(text);
}

/// A literal header field without indexing, new name (RFC 7541 6.2.2).
pub fn literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0x00);
    hpack_string(out, name.as_bytes());
    hpack_string(out, value);
}

/// A literal with incremental indexing, new name (6.2.1): the field enters
/// the dynamic table at index 62.
pub fn literal_indexed(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0x40);
    hpack_string(out, name.as_bytes());
    hpack_string(out, value);
}

/// An indexed header field (6.1).
pub fn indexed(out: &mut Vec<u8>, index: usize) {
    hpack_int(out, 0x80, 7, index);
}

/// The header block of a request to `authority`.
pub fn request_block(method: &str, authority: &str, path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    literal(&mut block, ":method", method.as_bytes());
    literal(&mut block, ":scheme", b"https");
    literal(&mut block, ":authority", authority.as_bytes());
    literal(&mut block, ":path", path.as_bytes());
    block
}

/// A header block as HEADERS plus as many CONTINUATION frames as it needs.
pub fn headers_frames(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let mut chunks = block.chunks(MAX_FRAME).peekable();
    let mut out = Vec::new();
    let mut first = true;
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let mut flags = if last { END_HEADERS } else { 0 };
        if first && end_stream {
            flags |= END_STREAM;
        }
        let kind = if first { HEADERS } else { CONTINUATION };
        out.extend(frame(kind, flags, stream, chunk));
        first = false;
    }
    if block.is_empty() {
        out = frame(
            HEADERS,
            END_HEADERS | if end_stream { END_STREAM } else { 0 },
            stream,
            &[],
        );
    }
    out
}

/// What the server sent on a raw connection.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// GOAWAY error codes, in order.
    pub goaway: Vec<u32>,
    /// The debug data of the last GOAWAY (h2 names the limit there).
    pub goaway_debug: String,
    /// (stream, error code) of each RST_STREAM.
    pub resets: Vec<(u32, u32)>,
    /// Streams that got a HEADERS frame (a response).
    pub responses: Vec<u32>,
    pub data_bytes: usize,
    pub pings: usize,
    pub settings_acks: usize,
    /// The connection ended (EOF or error) on the read side.
    pub closed: bool,
    /// Bytes of frames read.
    pub bytes: usize,
}

type Tls = TlsStream<TcpStream>;

/// A raw h2 connection: the preface is sent and the server's SETTINGS
/// acknowledged, so the server's own settings (its header list cap) apply.
pub struct Raw {
    pub write: WriteHalf<Tls>,
    pub received: Arc<Mutex<Received>>,
    reader: Option<ReadHalf<Tls>>,
    reader_task: Option<tokio::task::JoinHandle<()>>,
}

impl Raw {
    /// `client_settings` go in the client's first SETTINGS frame.
    /// The reader starts at once unless `read` is false (a client that
    /// never reads after the handshake).
    pub async fn open(mut tls: Tls, client_settings: &[(u16, u32)], read: bool) -> Raw {
        tls.write_all(PREFACE).await.unwrap();
        tls.write_all(&settings(client_settings)).await.unwrap();
        tls.flush().await.unwrap();
        // Until the server's own SETTINGS (not an ACK) arrives.
        let mut buf = Vec::new();
        loop {
            let (kind, flags, _, _) =
                tokio::time::timeout(Duration::from_secs(10), read_frame(&mut tls, &mut buf))
                    .await
                    .expect("server SETTINGS in time")
                    .expect("server SETTINGS");
            if kind == SETTINGS && flags & ACK == 0 {
                break;
            }
        }
        tls.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
        tls.flush().await.unwrap();
        let (read_half, write) = tokio::io::split(tls);
        let received = Arc::new(Mutex::new(Received::default()));
        let mut raw = Raw {
            write,
            received,
            reader: Some(read_half),
            reader_task: None,
        };
        if read {
            raw.start_reading();
        }
        raw
    }

    /// Starts recording what the server sends.
    pub fn start_reading(&mut self) {
        let Some(mut read_half) = self.reader.take() else {
            return;
        };
        let received = self.received.clone();
        self.reader_task = Some(tokio::spawn(async move {
            let mut buf = Vec::new();
            loop {
                let Some((kind, flags, stream, payload)) =
                    read_frame(&mut read_half, &mut buf).await
                else {
                    received.lock().unwrap().closed = true;
                    return;
                };
                let mut r = received.lock().unwrap();
                r.bytes += 9 + payload.len();
                match kind {
                    GOAWAY if payload.len() >= 8 => {
                        r.goaway
                            .push(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                        r.goaway_debug = String::from_utf8_lossy(&payload[8..]).into_owned();
                    }
                    RST_STREAM if payload.len() == 4 => r
                        .resets
                        .push((stream, u32::from_be_bytes(payload[..4].try_into().unwrap()))),
                    HEADERS => r.responses.push(stream),
                    DATA => r.data_bytes += payload.len(),
                    PING => r.pings += 1,
                    SETTINGS if flags & ACK != 0 => r.settings_acks += 1,
                    _ => {}
                }
            }
        }));
    }

    pub fn received(&self) -> Received {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what was received, or `limit` passes.
    pub async fn wait_for(&self, limit: Duration, done: impl Fn(&Received) -> bool) -> Received {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let received = self.received();
            if done(&received) || tokio::time::Instant::now() >= deadline {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes `bytes`; false once the server has closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.write.write_all(bytes).await.is_ok() && self.write.flush().await.is_ok()
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Some(task) = &self.reader_task {
            task.abort();
        }
    }
}

/// One frame: (type, flags, stream, payload); `None` at EOF or an error.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Option<(u8, u8, u32, Vec<u8>)> {
    loop {
        if buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() >= 9 + len {
                let (kind, flags) = (buf[3], buf[4]);
                let stream = u32::from_be_bytes(buf[5..9].try_into().unwrap()) & 0x7fff_ffff;
                let payload = buf[9..9 + len].to_vec();
                buf.drain(..9 + len);
                return Some((kind, flags, stream, payload));
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes `bytes` to `writer`, giving up after `stall` without progress:
/// returns how many bytes went out, and whether the writer stalled (the
/// server stopped reading) rather than failed (the server closed).
pub async fn write_until_stalled<W: AsyncWrite + Unpin>(
    writer: &mut W,
    bytes: &[u8],
    stall: Duration,
) -> (usize, Outcome) {
    let mut sent = 0;
    while sent < bytes.len() {
        let end = (sent + 64 * 1024).min(bytes.len());
        match tokio::time::timeout(stall, writer.write(&bytes[sent..end])).await {
            Err(_) => return (sent, Outcome::Stalled),
            Ok(Err(_)) | Ok(Ok(0)) => return (sent, Outcome::Closed),
            Ok(Ok(n)) => sent += n,
        }
    }
    match tokio::time::timeout(stall, writer.flush()).await {
        Err(_) => (sent, Outcome::Stalled),
        Ok(Err(_)) => (sent, Outcome::Closed),
        Ok(Ok(())) => (sent, Outcome::AllSent),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    AllSent,
    Stalled,
    Closed,
}
