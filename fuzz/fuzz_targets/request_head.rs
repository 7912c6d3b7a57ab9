//! The direct path's request head against hyper's path. Whatever the
//! direct path takes must be a request that hyper's server accepts and that
//! hyper's path would forward (no 400, no 421), and the upstream must get
//! the same request either way: method, target, and per header name the
//! same values in the same order.

#![no_main]

use std::{
    convert::Infallible,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use http::{header, request::Parts, HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::Empty;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use shield::{
    fuzzing::{prepare_request, Prepared},
    proxy::{
        headers::{self, Forwarding},
        Route, Upstream, MAX_HEADER_BYTES,
    },
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const SITE: &str = "www.example.com";
const PEER: &str = "172.64.0.1";
const CERT: &str = "ab12";
const REQUEST_ID: &str = "0123456789abcdef";

fn route(upstream: &str) -> Route {
    Route {
        label: SITE.into(),
        names: vec![SITE.into(), "alt.example.com".into()],
        upstream: Upstream::parse(upstream).expect("upstream"),
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(900),
        upstream_timeout: Duration::from_secs(30),
        websockets: true,
    }
}

fn routes() -> &'static [Route; 2] {
    static ROUTES: OnceLock<[Route; 2]> = OnceLock::new();
    ROUTES.get_or_init(|| {
        [
            route("http://127.0.0.1:8080"),
            route("http://127.0.0.1:8080/app"),
        ]
    })
}

/// The request as hyper's server hands it to shield's handler, or `None`
/// when hyper refuses the head itself (it answers 400 or 431).
fn through_hyper(head: &[u8]) -> Option<Parts> {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
    }
    let seen: Arc<Mutex<Option<Parts>>> = Arc::default();
    let service = {
        let seen = Arc::clone(&seen);
        service_fn(move |request: Request<Incoming>| {
            *seen.lock().unwrap() = Some(request.into_parts().0);
            async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
        })
    };
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let (mut client, server) = tokio::io::duplex(2 * MAX_HEADER_BYTES);
            // As shield's h1 builder (proxy/serve.rs) is set up.
            let mut builder = http1::Builder::new();
            builder
                .header_read_timeout(None)
                .max_header_size(MAX_HEADER_BYTES);
            let connection = builder.serve_connection(TokioIo::new(server), service);
            let talk = async {
                client.write_all(head).await.expect("write");
                client.shutdown().await.expect("shutdown");
                let mut answer = Vec::new();
                let _ = client.read_to_end(&mut answer).await;
            };
            let (_, ()) = tokio::join!(connection, talk);
        })
    });
    let parts = seen.lock().unwrap().take();
    parts
}

/// `(name, value)` pairs sorted by name; a stable sort keeps the order of
/// the values of one name.
fn by_name(mut fields: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
}

fn closes(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|option| option.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, head)) = data.split_first() else {
        return;
    };
    let route = &routes()[usize::from(choice & 1)];
    let (peer, cert) = (
        HeaderValue::from_static(PEER),
        HeaderValue::from_static(CERT),
    );
    let mut sent = Vec::new();
    let prepared = prepare_request(head, SITE, route, &peer, &cert, REQUEST_ID, &mut sent);
    let Prepared::Forward {
        head_len,
        head_request,
        close,
    } = prepared
    else {
        assert!(sent.is_empty(), "wrote upstream bytes for {prepared:?}");
        return;
    };
    let head = &head[..head_len];

    let Some(mut parts) = through_hyper(head) else {
        panic!("the direct path took a head hyper refuses: {head:?}");
    };
    // What shield's handler does on hyper's path (proxy/handler.rs).
    assert!(
        matches!(parts.method, Method::GET | Method::HEAD),
        "{:?}",
        parts.method
    );
    assert_eq!(
        parts.headers.get_all(header::HOST).iter().count(),
        1,
        "hyper's path answers 400 to more than one Host: {head:?}"
    );
    let host = headers::request_host(&parts.uri, &parts.headers);
    assert!(
        host.as_deref() == Some(SITE) && route.serves(SITE),
        "hyper's path answers 421 (host {host:?}): {head:?}"
    );
    let Some(target) = route
        .upstream
        .target_for(&parts.method, parts.uri.path_and_query())
    else {
        panic!("hyper's path answers 400 to the target: {head:?}");
    };
    let client_close = closes(&parts.headers);
    headers::prepare_request(
        &mut parts.headers,
        &Forwarding {
            host: SITE,
            peer_ip: &peer,
            client_cert_sha256: &cert,
            request_id: REQUEST_ID,
        },
    );
    assert_eq!(head_request, parts.method == Method::HEAD);
    assert_eq!(close, client_close, "{head:?}");

    // What the direct path wrote, read back.
    let mut fields = vec![httparse::EMPTY_HEADER; 128];
    let mut upstream = httparse::Request::new(&mut fields);
    match upstream.parse(&sent) {
        Ok(httparse::Status::Complete(len)) => assert_eq!(len, sent.len(), "{sent:?}"),
        other => panic!("the upstream head does not parse ({other:?}): {sent:?}"),
    }
    assert_eq!(upstream.method, Some(parts.method.as_str()));
    assert_eq!(upstream.version, Some(1));
    assert_eq!(
        upstream.path,
        Some(target.path_and_query().map_or("/", |p| p.as_str())),
        "{head:?}"
    );
    let direct = by_name(
        upstream
            .headers
            .iter()
            .map(|f| (f.name.to_owned(), f.value.to_vec()))
            .collect(),
    );
    let hyper = by_name(
        parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect(),
    );
    assert_eq!(direct, hyper, "{head:?}");
});
