//! WebSockets through shield: a tokio-tungstenite client over TLS with the
//! zone's client certificate, a tokio-tungstenite echo server upstream.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _};
use shield_test_support::{
    pki::Pki,
    raw::{self, Answer, Seen},
    tls::{client_config, one_site_toml, tls_connect, upstream, Shield},
};
use tokio::{io::AsyncWriteExt as _, net::TcpListener};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest as _,
        protocol::{frame::coding::CloseCode, CloseFrame},
        Error as WsError, Message,
    },
    WebSocketStream,
};

const SITE: &str = "ws.example";
/// What the echo server answers by closing the WebSocket itself.
const SERVER_CLOSE: &str = "close from the server, please";

/// A WebSocket echo server; counts the handshakes it completed.
struct Echo {
    addr: std::net::SocketAddr,
    handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_server() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counted = handshakes.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let counted = counted.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                while let Some(Ok(message)) = ws.next().await {
                    let echo = match message {
                        Message::Text(text) if text.as_str() == SERVER_CLOSE => {
                            let frame = CloseFrame {
                                code: CloseCode::Normal,
                                reason: "done".into(),
                            };
                            let _ = ws.close(Some(frame)).await;
                            continue;
                        }
                        echo @ (Message::Text(_) | Message::Binary(_)) => echo,
                        _ => continue,
                    };
                    if ws.send(echo).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Echo {
        addr,
        handshakes,
        task,
    }
}

struct Edge {
    pki: Pki,
    shield: Shield,
}

impl Edge {
    async fn start(upstream: std::net::SocketAddr, extra: &str) -> Edge {
        let pki = Pki::new();
        let server = pki.server("ws", &[SITE]);
        let shield = Shield::start(&one_site_toml(&pki, &[SITE], &server, upstream, extra)).await;
        Edge { pki, shield }
    }

    /// A TLS connection as Cloudflare opens one for a WebSocket: HTTP/1.1.
    async fn tls(&self) -> TlsStream<tokio::net::TcpStream> {
        let config = client_config(&self.pki, Some(&self.pki.good), &[b"http/1.1"]);
        tls_connect(config, self.shield.tls_port(), SITE)
            .await
            .unwrap()
    }

    async fn websocket(
        &self,
    ) -> Result<WebSocketStream<TlsStream<tokio::net::TcpStream>>, WsError> {
        let request = format!("wss://{SITE}/chat").into_client_request().unwrap();
        let (ws, response) = tokio_tungstenite::client_async(request, self.tls().await).await?;
        assert_eq!(response.status(), 101);
        Ok(ws)
    }

    fn active(&self) -> i64 {
        self.shield.http_metrics.upgrades_active(SITE).get()
    }

    /// Waits (briefly) for the open-tunnel gauge to read `n`.
    async fn wait_active(&self, n: i64) {
        for _ in 0..200 {
            if self.active() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(self.active(), n, "shield_http_upgrades_active");
    }
}

async fn next_data<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("an answer within 5 s")
        .expect("the stream goes on")
        .expect("a message")
}

/// The client sees the end of the WebSocket (a close frame, then the end
/// of the stream) within `within`.
async fn closed<S>(ws: &mut WebSocketStream<S>, within: Duration) -> Option<CloseFrame>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut frame = None;
    tokio::time::timeout(within, async {
        while let Some(message) = ws.next().await {
            match message {
                Ok(Message::Close(close)) => frame = close,
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .await
    .expect("the WebSocket ends in time");
    frame
}

#[tokio::test]
async fn two_websockets_echo_at_once_and_close_from_either_side() {
    let echo = echo_server().await;
    let edge = Edge::start(echo.addr, "").await;
    let (mut first, mut second) = (
        edge.websocket().await.unwrap(),
        edge.websocket().await.unwrap(),
    );
    edge.wait_active(2).await;
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for round in 0..5 {
        first
            .send(Message::text(format!("first {round}")))
            .await
            .unwrap();
        second.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(
            next_data(&mut first).await,
            Message::text(format!("first {round}"))
        );
        assert_eq!(next_data(&mut second).await, Message::binary(big.clone()));
    }
    // The client closes the first: the close handshake crosses shield.
    first.close(None).await.unwrap();
    closed(&mut first, Duration::from_secs(5)).await;
    // The server closes the second, and the second stays usable until then.
    second.send(Message::text("still here")).await.unwrap();
    assert_eq!(next_data(&mut second).await, Message::text("still here"));
    second.send(Message::text(SERVER_CLOSE)).await.unwrap();
    let frame = closed(&mut second, Duration::from_secs(5)).await;
    assert_eq!(frame.map(|f| f.code), Some(CloseCode::Normal));
    edge.wait_active(0).await;
    assert_eq!(echo.handshakes.load(Ordering::SeqCst), 2);
    assert_eq!(edge.shield.http_metrics.requests(SITE, 101), 2);
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_the_idle_timeout() {
    let echo = echo_server().await;
    let edge = Edge::start(echo.addr, "idle_timeout = \"1s\"").await;
    let mut ws = edge.websocket().await.unwrap();
    ws.send(Message::text("once")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("once"));
    edge.wait_active(1).await;
    let started = std::time::Instant::now();
    closed(&mut ws, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the idle timeout: {:?}",
        started.elapsed()
    );
    edge.wait_active(0).await;
}

#[tokio::test]
async fn a_site_without_websockets_answers_403_and_forwards_nothing() {
    let echo = echo_server().await;
    let edge = Edge::start(echo.addr, "websockets = false").await;
    match edge.websocket().await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| "a WebSocket")),
    }
    assert_eq!(echo.handshakes.load(Ordering::SeqCst), 0);
    assert_eq!(edge.shield.http_metrics.requests(SITE, 403), 1);
}

/// A handshake, written by hand: the answer's status, head (lowercase) and
/// body.
async fn raw_handshake(edge: &Edge) -> (u16, String, String) {
    let mut tls = edge.tls().await;
    tls.write_all(
        format!(
            "GET /chat HTTP/1.1\r\nHost: {SITE}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Keep-Alive: timeout=5\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, head, body) = raw::response(&mut tls, &mut Vec::new(), false)
        .await
        .expect("an answer");
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_handshake_reaches_the_upstream_with_the_header_policy_and_its_refusal_comes_back() {
    // An HTTP echo that does not switch: its 200 lists what it received.
    let upstream = upstream().await;
    let edge = Edge::start(upstream.addr, "").await;
    let (status, _, body) = raw_handshake(&edge).await;
    assert_eq!(status, 200, "{body}");
    let body = body.to_ascii_lowercase();
    assert!(body.contains("upgrade: websocket"), "{body}");
    assert!(body.contains("connection: upgrade"), "{body}");
    assert!(
        body.contains("sec-websocket-key: dghlihnhbxbszsbub25jzq=="),
        "{body}"
    );
    assert!(body.contains("x-shield-request-id: "), "{body}");
    assert!(!body.contains("keep-alive"), "{body}");
    assert!(!body.contains("6.6.6.6"), "{body}");
    assert_eq!(edge.active(), 0);
}

fn switch_to_h2c(_: &Seen) -> Answer {
    Answer::bytes(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
    )
}

#[tokio::test]
async fn an_upstream_switching_to_another_protocol_is_a_502() {
    let upstream = raw::recording(switch_to_h2c).await;
    let edge = Edge::start(upstream.addr, "").await;
    let (status, _, body) = raw_handshake(&edge).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("(request "),
        "the 502 names the request id: {body}"
    );
    assert_eq!(edge.active(), 0);
}
