//! Request smuggling and response desync, from raw TLS clients with the
//! client certificate through both HTTP/1.1 paths (the direct path takes
//! bodyless GET and HEAD, hyper takes the rest) and over HTTP/2 (raw
//! frames), to an upstream that parses strictly by the framing it received
//! and answers each request with its own name. One connection worker, so every client shares one upstream
//! pool, and after every case a victim on a fresh connection must get its
//! own answer.
//!
//! Each case must end one of two ways: refused (a 4xx, or closed, with
//! nothing forwarded for the refused request), or each request the client
//! sent reaches the upstream exactly once, canonically framed, and the
//! client gets exactly those answers, in order.
// Test code: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use shield_test_support::{
    pki::Pki,
    raw::{self, Answer, Recording, Seen},
    tls::{client_config, one_site_toml, tls_connect, Shield},
};
use tokio::io::{AsyncRead, AsyncWriteExt};

const SITE: &str = "www.a.test";

struct Edge {
    pki: Pki,
    upstream: Recording,
    shield: Shield,
}

impl Edge {
    async fn start(answer: fn(&Seen) -> Answer) -> Edge {
        let pki = Pki::new();
        let upstream = raw::recording(answer).await;
        let server = pki.server("site-a", &[SITE]);
        let shield =
            Shield::one_worker(&one_site_toml(&pki, &[SITE], &server, upstream.addr, "")).await;
        Edge {
            pki,
            upstream,
            shield,
        }
    }

    async fn client(&self) -> impl AsyncRead + AsyncWriteExt + Unpin {
        let config = client_config(&self.pki, Some(&self.pki.good), &[b"http/1.1"]);
        tls_connect(config, self.shield.tls_port(), SITE)
            .await
            .unwrap()
    }

    /// `bytes` from a fresh client; every answer it gets until the
    /// connection closes or stays quiet for a while.
    async fn exchange(&self, bytes: &[u8]) -> Vec<(u16, Vec<u8>)> {
        let mut client = self.client().await;
        client.write_all(bytes).await.unwrap();
        let mut buf = Vec::new();
        let mut answers = Vec::new();
        loop {
            let next = tokio::time::timeout(
                Duration::from_millis(700),
                raw::response(&mut client, &mut buf, false),
            )
            .await;
            match next {
                Ok(Some((status, _, body))) => answers.push((status, body)),
                Ok(None) | Err(_) => return answers,
            }
        }
    }

    /// A fresh client's GET gets its own answer.
    async fn victim_is_served(&self, case: &str) {
        let path = "/victim";
        let answers = self
            .exchange(format!("GET {path} HTTP/1.1\r\nHost: {SITE}\r\n\r\n").as_bytes())
            .await;
        assert_eq!(
            answers,
            [(200, format!("GET {path}").into_bytes())],
            "after {case}: the victim got another's answer"
        );
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {SITE}\r\n\r\n")
}

/// The request a smuggling attempt hides in a body.
fn hidden() -> String {
    get("/smuggled")
}

/// (name, the bytes a client sends).
fn cases() -> Vec<(&'static str, String)> {
    let hidden = hidden();
    let n = hidden.len();
    let post = |fields: &str, body: &str| {
        format!("POST /attack HTTP/1.1\r\nHost: {SITE}\r\n{fields}\r\n{body}")
    };
    let chunked_hiding = format!("0\r\n\r\n{hidden}");
    vec![
        (
            "CL.TE",
            post(
                &format!(
                    "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                    chunked_hiding.len()
                ),
                &chunked_hiding,
            ),
        ),
        (
            "TE.CL",
            post(
                "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
                &format!("{n:x}\r\n{hidden}\r\n0\r\n\r\n"),
            ),
        ),
        (
            "TE with a space before the colon",
            post("Transfer-Encoding : chunked\r\n", &chunked_hiding),
        ),
        (
            "TE with a tab before the value",
            post("Transfer-Encoding:\tchunked\r\nContent-Length: 3\r\n", &chunked_hiding),
        ),
        (
            "TE chunked, identity",
            post("Transfer-Encoding: chunked, identity\r\n", &chunked_hiding),
        ),
        (
            "two TE fields",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                &chunked_hiding,
            ),
        ),
        ("TE xchunked", post("Transfer-Encoding: xchunked\r\n", &chunked_hiding)),
        (
            "a control byte in the TE name",
            post("Transfer\u{1}Encoding: chunked\r\n", &chunked_hiding),
        ),
        (
            "a control byte in the TE value",
            post("Transfer-Encoding: chunked\u{b}\r\n", &chunked_hiding),
        ),
        (
            "CL.CL",
            post(
                &format!("Content-Length: 0\r\nContent-Length: {n}\r\n"),
                &hidden,
            ),
        ),
        (
            "CL.0: a GET with a body",
            format!("GET /attack HTTP/1.1\r\nHost: {SITE}\r\nContent-Length: {n}\r\n\r\n{hidden}"),
        ),
        ("0.CL: +length", post(&format!("Content-Length: +{n}\r\n"), &hidden)),
        ("length with leading zeros", post(&format!("Content-Length: 00{n}\r\n"), &hidden)),
        ("length list", post(&format!("Content-Length: {n}, {n}\r\n"), &hidden)),
        (
            "chunk size with 0x",
            post("Transfer-Encoding: chunked\r\n", &format!("0x{n:x}\r\n{hidden}\r\n0\r\n\r\n")),
        ),
        (
            "chunk size with +",
            post("Transfer-Encoding: chunked\r\n", &format!("+{n:x}\r\n{hidden}\r\n0\r\n\r\n")),
        ),
        (
            "chunk size overflowing 64 bits",
            post(
                "Transfer-Encoding: chunked\r\n",
                &format!("1000000000000000{n:x}\r\n{hidden}\r\n0\r\n\r\n"),
            ),
        ),
        (
            "chunk extension with a bare LF",
            post("Transfer-Encoding: chunked\r\n", &format!("{n:x};a\n{hidden}\r\n0\r\n\r\n")),
        ),
        (
            "bare LF in a chunk line",
            post("Transfer-Encoding: chunked\r\n", &format!("{n:x}\n{hidden}\n0\n\n")),
        ),
        (
            "more chunk data than its size",
            post("Transfer-Encoding: chunked\r\n", &format!("1\r\nab\r\n0\r\n\r\n{hidden}")),
        ),
        (
            "bare CR line ends",
            format!("GET /attack HTTP/1.1\rHost: {SITE}\r\r{hidden}"),
        ),
        (
            "obs-fold",
            format!("GET /attack HTTP/1.1\r\nHost: {SITE}\r\nX-A: 1\r\n Content-Length: {n}\r\n\r\n{hidden}"),
        ),
        (
            "NUL in a value",
            format!("GET /attack HTTP/1.1\r\nHost: {SITE}\r\nX-A: 1\u{0}2\r\n\r\n{hidden}"),
        ),
        (
            "duplicate Host",
            format!("GET /attack HTTP/1.1\r\nHost: {SITE}\r\nHost: other.test\r\n\r\n{hidden}"),
        ),
        (
            "absolute-form disagreeing with Host",
            format!("GET http://other.test/attack HTTP/1.1\r\nHost: {SITE}\r\n\r\n{hidden}"),
        ),
        (
            "HTTP/1.0 with a body ended by close",
            format!("POST /attack HTTP/1.0\r\nHost: {SITE}\r\n\r\n{hidden}"),
        ),
        ("HTTP/1.2", format!("GET /attack HTTP/1.2\r\nHost: {SITE}\r\n\r\n{hidden}")),
        ("HTTP/2.0 request line", format!("GET /attack HTTP/2.0\r\nHost: {SITE}\r\n\r\n{hidden}")),
        (
            "premature Upgrade with bytes after it",
            format!(
                "GET /attack HTTP/1.1\r\nHost: {SITE}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n{hidden}"
            ),
        ),
        (
            "Expect without a body",
            format!("GET /attack HTTP/1.1\r\nHost: {SITE}\r\nExpect: 100-continue\r\n\r\n{hidden}"),
        ),
    ]
}

/// The requests in `sent` that a strict reader finds, each as `METHOD PATH`
/// of a request the client framed properly: what may reach the upstream.
fn canonical(answers: &[(u16, Vec<u8>)]) -> Vec<String> {
    answers
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| String::from_utf8_lossy(body).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_smuggling_attempt_desyncs_the_upstream_or_reaches_a_victim() {
    let edge = Edge::start(raw::echo).await;
    let mut outcomes = Vec::new();
    for (case, bytes) in cases() {
        let before = edge.upstream.seen().len();
        let answers = edge.exchange(bytes.as_bytes()).await;
        let seen: Vec<Seen> = edge.upstream.seen().split_off(before);
        assert!(
            seen.iter().all(|s| s.method != "UNPARSEABLE"),
            "{case}: the upstream got framing it cannot read strictly: {seen:?}"
        );
        // Every request the upstream saw was answered to this client as its
        // own, in order, and nothing else was.
        let reached: Vec<String> = seen
            .iter()
            .map(|s| format!("{} {}", s.method, s.path))
            .collect();
        assert_eq!(
            canonical(&answers),
            reached,
            "{case}: answers {answers:?} against what reached the upstream"
        );
        for (status, body) in &answers {
            assert!(
                *status == 200 || (400..500).contains(status),
                "{case}: {status} {}",
                String::from_utf8_lossy(body)
            );
        }
        edge.victim_is_served(case).await;
        let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
        outcomes.push(format!("{case}: {statuses:?} -> {reached:?}"));
    }
    // The outcomes, for the record (`--nocapture`).
    println!("{}", outcomes.join("\n"));
}

/// What the upstream does on the paths below.
fn misbehaving(seen: &Seen) -> Answer {
    match seen.path.as_str() {
        "/switch" => Answer::bytes(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        ),
        "/bare-lf-chunks" => Answer::bytes(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
        ),
        _ => raw::echo(seen),
    }
}

/// A malformed chunked request body is the client's error (400), never an
/// upstream failure (502); hyper's path takes every request with a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_body_is_a_400() {
    let edge = Edge::start(misbehaving).await;
    for bad in [
        "0x5\r\nhello\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "1000000000000000005\r\nhello\r\n0\r\n\r\n",
        "1\r\nhello\r\n0\r\n\r\n",
    ] {
        let request = format!(
            "POST /upload HTTP/1.1\r\nHost: {SITE}\r\nTransfer-Encoding: chunked\r\n\r\n{bad}"
        );
        let answers = edge.exchange(request.as_bytes()).await;
        assert!(
            answers.iter().all(|(status, _)| *status != 502),
            "{bad:?}: {answers:?}"
        );
        assert_eq!(
            answers.first().map(|(status, _)| *status),
            Some(400),
            "{bad:?}: {answers:?}"
        );
        edge.victim_is_served(bad).await;
    }
    assert_eq!(edge.shield.http_metrics.requests(SITE, 502), 0);
    assert!(edge.shield.http_metrics.requests(SITE, 400) >= 4);
}

/// An upstream's 101 to a request that asked for no upgrade is a 502 on
/// both paths; a chunked body with bare LF line ends is a 502 (with the
/// request id) when nothing of the response was sent yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_protocol_errors_are_a_502_on_both_paths() {
    let edge = Edge::start(misbehaving).await;
    for path in ["/switch", "/bare-lf-chunks"] {
        for request in [
            get(path),
            format!("POST {path} HTTP/1.1\r\nHost: {SITE}\r\nContent-Length: 1\r\n\r\nx"),
        ] {
            let answers = edge.exchange(request.as_bytes()).await;
            let (status, body) = answers.first().cloned().unwrap_or_default();
            assert_eq!(status, 502, "{request:?}: {answers:?}");
            assert!(
                String::from_utf8_lossy(&body).contains("(request "),
                "{request:?}: {answers:?}"
            );
            edge.victim_is_served(&request).await;
        }
    }
}

/// CONNECT is not forwarded to the application: 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_with_405() {
    let edge = Edge::start(raw::echo).await;
    let answers = edge
        .exchange(format!("CONNECT {SITE}:443 HTTP/1.1\r\nHost: {SITE}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(
        answers.first().map(|(status, _)| *status),
        Some(405),
        "{answers:?}"
    );
    assert!(
        edge.upstream.seen().is_empty(),
        "{:?}",
        edge.upstream.seen()
    );
}

/// The HTTP/2 classes: a request whose h2 framing and its fields disagree
/// (H2.CL), fields that only mean something in HTTP/1.1 (H2.TE and the
/// other connection-specific fields), and bytes in names or values that
/// would split a field when written as HTTP/1.1. Each must be refused as
/// malformed (RFC 9113 8.1.1, 8.2.1, 8.2.2: a stream error, or a 4xx), or
/// reach the upstream once, canonically framed, and never as two requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_h2_smuggling_attempt_reaches_the_upstream_as_another_request() {
    use shield_test_support::h2raw::{self, frame, headers_frames, literal, Raw, DATA, END_STREAM};

    let edge = Edge::start(raw::echo).await;
    let hidden = hidden();
    let base = |method: &str| h2raw::request_block(method, SITE, "/attack");
    let with = |method: &str, fields: &[(&str, &[u8])]| {
        let mut block = base(method);
        for (name, value) in fields {
            literal(&mut block, name, value);
        }
        block
    };
    // (name, header block, DATA after it)
    type Case = (&'static str, Vec<u8>, Option<Vec<u8>>);
    let cases: Vec<Case> = vec![
        (
            "H2.CL: content-length 0 with a body",
            with("POST", &[("content-length", b"0")]),
            Some(hidden.clone().into_bytes()),
        ),
        (
            "H2.CL: content-length shorter than the body",
            with("POST", &[("content-length", b"3")]),
            Some(hidden.clone().into_bytes()),
        ),
        (
            "H2.TE: transfer-encoding chunked",
            with("POST", &[("transfer-encoding", b"chunked")]),
            Some(format!("0\r\n\r\n{hidden}").into_bytes()),
        ),
        (
            "connection field",
            with("GET", &[("connection", b"keep-alive")]),
            None,
        ),
        (
            "keep-alive field",
            with("GET", &[("keep-alive", b"timeout=5")]),
            None,
        ),
        (
            "upgrade field",
            with("GET", &[("upgrade", b"websocket")]),
            None,
        ),
        (
            "te other than trailers",
            with("GET", &[("te", b"gzip")]),
            None,
        ),
        (
            "CR LF in a value",
            with("GET", &[("x-a", b"1\r\nTransfer-Encoding: chunked")]),
            None,
        ),
        (
            "LF in a value",
            with("GET", &[("x-a", b"1\nHost: other.test")]),
            None,
        ),
        ("NUL in a value", with("GET", &[("x-a", b"1\x002")]), None),
        (
            "CR LF in a name",
            with("GET", &[("x-a\r\nx-b", b"1")]),
            None,
        ),
        ("uppercase name", with("GET", &[("X-Upper", b"1")]), None),
        ("space in a name", with("GET", &[("x a", b"1")]), None),
        (
            "pseudo-header after a regular one",
            {
                let mut block = Vec::new();
                literal(&mut block, ":method", b"GET");
                literal(&mut block, ":scheme", b"https");
                literal(&mut block, "x-a", b"1");
                literal(&mut block, ":authority", SITE.as_bytes());
                literal(&mut block, ":path", b"/attack");
                block
            },
            None,
        ),
        (
            "a second :path",
            with("GET", &[(":path", b"/smuggled")]),
            None,
        ),
    ];
    let mut outcomes = Vec::new();
    for (case, block, body) in cases {
        let before = edge.upstream.seen().len();
        let config = client_config(&edge.pki, Some(&edge.pki.good), &[b"h2"]);
        let tls = tls_connect(config, edge.shield.tls_port(), SITE)
            .await
            .unwrap();
        let mut h2 = Raw::open(tls, &[], true).await;
        let mut bytes = headers_frames(1, &block, body.is_none());
        if let Some(body) = &body {
            bytes.extend(frame(DATA, END_STREAM, 1, body));
        }
        h2.send(&bytes).await;
        let received = h2
            .wait_for(Duration::from_secs(5), |r| {
                !r.resets.is_empty() || !r.goaway.is_empty() || !r.responses.is_empty() || r.closed
            })
            .await;
        // Let a request that got through reach the upstream.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let seen: Vec<Seen> = edge.upstream.seen().split_off(before);
        assert!(
            seen.iter()
                .all(|s| s.method != "UNPARSEABLE" && s.path != "/smuggled"),
            "{case}: the upstream saw {seen:?}"
        );
        assert!(seen.len() <= 1, "{case}: one request became {seen:?}");
        let refused = !received.resets.is_empty() || !received.goaway.is_empty();
        assert!(
            refused || !received.responses.is_empty(),
            "{case}: neither refused nor answered: {received:?}"
        );
        edge.victim_is_served(case).await;
        outcomes.push(format!(
            "{case}: resets {:?} goaway {:?} responses {:?} -> {:?}",
            received.resets,
            received.goaway,
            received.responses,
            seen.iter().map(|s| &s.path).collect::<Vec<_>>()
        ));
    }
    println!("{}", outcomes.join("\n"));
}
