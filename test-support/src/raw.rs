//! Raw HTTP/1.1 on both sides of shield, for tests that must see exactly
//! which bytes cross: a recording upstream that parses strictly by the
//! framing it received, and a response reader for raw clients.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// One request as the upstream received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The head, lowercase, without the request line.
    pub fields: String,
    pub body: Vec<u8>,
}

impl Seen {
    /// The value of a field (lowercase name), if present once or more.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
    }
}

/// What the upstream does for one request.
pub struct Answer {
    pub now: Vec<u8>,
    /// Bytes sent after a pause, unasked.
    pub later: Option<(Duration, Vec<u8>)>,
    /// Close the connection after answering.
    pub close: bool,
}

impl Answer {
    pub fn bytes(now: &[u8]) -> Answer {
        Answer {
            now: now.to_vec(),
            later: None,
            close: false,
        }
    }
}

/// 200 with the body `METHOD PATH`: each client can tell whether the answer
/// it got is its own.
pub fn echo(seen: &Seen) -> Answer {
    let body = format!("{} {}", seen.method, seen.path);
    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
    Answer::bytes(&[head.into_bytes(), body.into_bytes()].concat())
}

/// An upstream that records every request it could parse and answers by
/// `answer`. A request whose framing it cannot read strictly (both lengths,
/// a bad chunk) is recorded with method `UNPARSEABLE` and the connection
/// closed.
pub struct Recording {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recording {
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|seen| seen.path).collect()
    }
}

pub async fn recording(answer: fn(&Seen) -> Answer) -> Recording {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp, recorded.clone(), answer));
        }
    });
    Recording { addr, seen, task }
}

async fn serve(mut tcp: TcpStream, seen: Arc<Mutex<Vec<Seen>>>, answer: fn(&Seen) -> Answer) {
    let mut buf = Vec::new();
    loop {
        let request = match read_request(&mut tcp, &mut buf).await {
            Some(Ok(request)) => request,
            Some(Err(head)) => {
                seen.lock().unwrap().push(Seen {
                    method: "UNPARSEABLE".into(),
                    path: String::new(),
                    fields: head,
                    body: Vec::new(),
                });
                return;
            }
            None => return,
        };
        seen.lock().unwrap().push(request.clone());
        let Answer { now, later, close } = answer(&request);
        if tcp.write_all(&now).await.is_err() {
            return;
        }
        if let Some((pause, later)) = later {
            tokio::time::sleep(pause).await;
            if tcp.write_all(&later).await.is_err() {
                return;
            }
        }
        if close {
            return;
        }
    }
}

async fn fill(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match tcp.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// `None` at EOF; `Err(head)` for framing it refuses.
async fn read_request(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Result<Seen, String>> {
    let end = loop {
        match find(buf, b"\r\n\r\n") {
            Some(end) => break end,
            None if fill(tcp, buf).await => {}
            None => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end + 4);
    let (line, fields) = head.split_once("\r\n").unwrap_or((&head, ""));
    let mut words = line.split(' ');
    let method = words.next().unwrap_or_default().to_owned();
    let path = words.next().unwrap_or_default().to_owned();
    let fields = fields.to_ascii_lowercase();
    let mut seen = Seen {
        method,
        path,
        fields: fields.clone(),
        body: Vec::new(),
    };
    let lengths: Vec<&str> = fields
        .lines()
        .filter_map(|l| l.strip_prefix("content-length: "))
        .collect();
    let codings: Vec<&str> = fields
        .lines()
        .filter_map(|l| l.strip_prefix("transfer-encoding: "))
        .collect();
    match (lengths.as_slice(), codings.as_slice()) {
        ([], []) => {}
        ([length], []) => {
            let Ok(length) = length.parse::<usize>() else {
                return Some(Err(head));
            };
            while buf.len() < length {
                if !fill(tcp, buf).await {
                    return None;
                }
            }
            seen.body = buf.drain(..length).collect();
        }
        ([], ["chunked"]) => loop {
            let line_end = loop {
                match find(buf, b"\r\n") {
                    Some(at) => break at,
                    None if fill(tcp, buf).await => {}
                    None => return None,
                }
            };
            let Some(size) = std::str::from_utf8(&buf[..line_end])
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|s| usize::from_str_radix(s, 16).ok())
            else {
                return Some(Err(head));
            };
            buf.drain(..line_end + 2);
            // The data and its CRLF; after the last chunk, only the CRLF
            // that ends the (empty: shield sends no trailers) trailer section.
            while buf.len() < size + 2 {
                if !fill(tcp, buf).await {
                    return None;
                }
            }
            if &buf[size..size + 2] != b"\r\n" {
                return Some(Err(head));
            }
            seen.body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        },
        _ => return Some(Err(head)),
    }
    Some(Ok(seen))
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One response read off `stream`: status, head (lowercase) and body,
/// de-chunked; none for a HEAD, a 1xx, 204 or 304. `buf` keeps what was
/// read beyond it. `None` when the connection closed before a whole head.
pub async fn response<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> Option<(u16, String, Vec<u8>)> {
    async fn more<R: AsyncRead + Unpin>(stream: &mut R, buf: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer or a close within 10 s")
            .unwrap_or(0);
        buf.extend_from_slice(&chunk[..n]);
        n > 0
    }
    let end = loop {
        match find(buf, b"\r\n\r\n") {
            Some(end) => break end,
            None if more(stream, buf).await => {}
            None => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    buf.drain(..end + 4);
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
            .map(str::to_owned)
    };
    let mut body = Vec::new();
    if head_request || status < 200 || status == 204 || status == 304 {
        return Some((status, head, body));
    }
    if let Some(length) = field("content-length") {
        let length: usize = length.parse().ok()?;
        while buf.len() < length {
            if !more(stream, buf).await {
                return None;
            }
        }
        body.extend(buf.drain(..length));
    } else if field("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let line_end = loop {
                match find(buf, b"\r\n") {
                    Some(at) => break at,
                    None if more(stream, buf).await => {}
                    None => return None,
                }
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).ok()?, 16).ok()?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                if !more(stream, buf).await {
                    return None;
                }
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break;
            }
        }
    } else {
        while more(stream, buf).await {}
        body.append(buf);
    }
    Some((status, head, body))
}
