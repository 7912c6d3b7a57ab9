//! The client's request head: whether the direct path takes it, and if so
//! the upstream's request head, written with the one header policy
//! (`headers`).
//!
//! What it takes: a head that `httparse` (the parser hyper uses) parses
//! completely, HTTP/1.1, GET or HEAD, an origin-form target, exactly one
//! `Host` naming this connection's site, and no `Content-Length`,
//! `Transfer-Encoding`, `Expect` or `Upgrade` field. Such a request has no
//! body (RFC 9112 6.3) and its framing cannot be read two ways. Anything
//! else, malformed or merely unusual, is [`Prepared::Defer`]red to hyper,
//! which stays the one judge of bad input.

use std::{borrow::Cow, mem::MaybeUninit};

use http::{uri::PathAndQuery, HeaderMap, HeaderValue, Method};
use httparse::{Header, ParserConfig, Status};

use super::{
    wire::{push_field, push_lowercase_field},
    MAX_FIELDS,
};
use crate::proxy::{
    access,
    headers::{self, Field, Options},
    Route, UpstreamProtocol, MAX_HEADER_BYTES,
};

/// What a connection's requests need to know about their site and client.
#[derive(Debug, Clone, Copy)]
pub(in crate::proxy) struct Context<'a> {
    pub sni: &'a str,
    pub route: &'a Route,
    pub peer_ip: &'a HeaderValue,
    pub client_cert_sha256: &'a HeaderValue,
}

/// A request head this path forwards.
#[derive(Debug, PartialEq, Eq)]
pub(in crate::proxy) struct Forward {
    /// Bytes of the client's head.
    pub head_len: usize,
    /// HEAD: the response has no body whatever its fields say.
    pub head_request: bool,
    /// The client asked to close after this response.
    pub close: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(in crate::proxy) enum Prepared {
    Forward(Forward),
    /// More bytes are needed to decide.
    Partial,
    /// For hyper.
    Defer,
}

/// Decides whether the head at the start of `buf` takes this path, and if
/// so writes the upstream's request head into `out`, with the same header
/// policy as [`headers::prepare_request`].
pub(in crate::proxy) fn prepare_request(
    buf: &[u8],
    context: Context<'_>,
    request_id: &str,
    out: &mut Vec<u8>,
) -> Prepared {
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
    // The direct path writes HTTP/1.1 upstream; an h2c upstream is hyper's.
    if request.version != Some(1) || context.route.upstream.protocol() != UpstreamProtocol::Http1 {
        return Prepared::Defer;
    }
    let method = match request.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Prepared::Defer,
    };
    // The target as sent, not as parsed: `PathAndQuery` reads `#` or `?a`
    // as an empty path and prints it as `/`, where hyper answers 400.
    let origin_form = request.path.filter(|path| path.starts_with('/'));
    let target = match origin_form.map(PathAndQuery::try_from) {
        Some(Ok(path)) => match context.route.upstream.target_for(&method, Some(&path)) {
            Some(target) => target,
            None => return Prepared::Defer,
        },
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
                for option in headers::options_in(field.value) {
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
        .and_then(headers::visible_ascii)
        .and_then(headers::normalize_host)
    else {
        return Prepared::Defer;
    };
    if host != context.sni || !context.route.serves(&host) {
        return Prepared::Defer;
    }
    write_head(
        out,
        &method,
        &target,
        request
            .headers
            .iter()
            .map(|field| (field.name, field.value)),
        &options,
        Statement {
            lowercase: false,
            host: &host,
            visitor,
            context,
            request_id,
        },
    );
    Prepared::Forward(Forward {
        head_len,
        head_request: method == Method::HEAD,
        close,
    })
}

/// The access log's view of a head [`prepare_request`] forwarded: parsed
/// again, only when the log is on, so the path without it pays nothing.
pub(in crate::proxy) fn access_head(buf: &[u8], request_id: &str) -> Option<access::Head> {
    let mut fields = [const { MaybeUninit::<Header<'_>>::uninit() }; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut []);
    ParserConfig::default()
        .parse_request_with_uninit_headers(&mut request, buf, &mut fields)
        .ok()?;
    let field = |name: &str| {
        request
            .headers
            .iter()
            .find(|field| field.name.eq_ignore_ascii_case(name))
            .map(|field| field.value)
    };
    Some(access::Head::new(
        request.method?,
        request.path?,
        "HTTP/1.1",
        field("cf-connecting-ip"),
        field("cf-ray"),
        request_id,
    ))
}

/// What shield states about a request, beside the fields passed on.
struct Statement<'a> {
    /// The client's field names are lowercase already (hyper parsed
    /// them), so they are written as they are.
    lowercase: bool,
    host: &'a str,
    /// The first `CF-Connecting-IP`, if any.
    visitor: Option<&'a [u8]>,
    context: Context<'a>,
    request_id: &'a str,
}

/// The upstream's request head: the request line, the client's `fields`
/// that pass the one policy, and shield's statements.
fn write_head<'f>(
    out: &mut Vec<u8>,
    method: &Method,
    target: &http::Uri,
    fields: impl Iterator<Item = (&'f str, &'f [u8])>,
    options: &Options<'_>,
    statement: Statement<'_>,
) {
    let visitor = match statement
        .visitor
        .and_then(headers::visible_ascii)
        .and_then(headers::canonical_visitor)
    {
        Some(Cow::Borrowed(text)) => Cow::Borrowed(text.as_bytes()),
        Some(Cow::Owned(text)) => Cow::Owned(text.into_bytes()),
        None => Cow::Borrowed(statement.context.peer_ip.as_bytes()),
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
    for (name, value) in fields {
        if !Field::of(name).replaced_upstream() && !options.names(name) {
            if statement.lowercase {
                push_lowercase_field(out, name, value);
            } else {
                push_field(out, name, value);
            }
        }
    }
    let statements = headers::statements(
        statement.host.as_bytes(),
        &visitor,
        statement.context.client_cert_sha256.as_bytes(),
        statement.request_id.as_bytes(),
        headers::HTTPS.as_bytes(),
    );
    for (name, value) in statements {
        push_lowercase_field(out, name.as_str(), value);
    }
    out.extend_from_slice(b"\r\n");
}

/// The upstream's request head for a request hyper parsed (an h2
/// stream's, with `host` bound to the connection's name already and
/// `target` from `Upstream::target_for`), written as the direct path
/// writes its own, and `fields` left as they are. `false` when the
/// request names more `Connection` options than the direct path keeps:
/// hyper's client is then the one to send it.
pub(in crate::proxy) fn write_parsed_head(
    method: &Method,
    target: &http::Uri,
    fields: &HeaderMap,
    host: &str,
    context: Context<'_>,
    request_id: &str,
    out: &mut Vec<u8>,
) -> bool {
    let mut options = Options::default();
    for value in fields.get_all(http::header::CONNECTION) {
        for option in headers::options_in(value.as_bytes()) {
            if !options.push(option) {
                return false;
            }
        }
    }
    let visitor = fields
        .get(&headers::CF_CONNECTING_IP)
        .map(HeaderValue::as_bytes);
    write_head(
        out,
        method,
        target,
        fields
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes())),
        &options,
        Statement {
            lowercase: true,
            host,
            visitor,
            context,
            request_id,
        },
    );
    true
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{header, header::HeaderName, HeaderMap};

    use super::*;
    use crate::proxy::{
        headers::{Forwarding, MAX_CONNECTION_OPTIONS},
        Upstream,
    };

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
            websockets: true,
        }
    }

    /// `f` with the context of a connection to [`SITE`] whose site's
    /// upstream is `upstream`.
    fn in_context<T>(upstream: &str, f: impl FnOnce(Context<'_>) -> T) -> T {
        let route = route(upstream);
        let (peer_ip, cert) = (
            HeaderValue::from_static(PEER),
            HeaderValue::from_static(CERT),
        );
        f(Context {
            sni: SITE,
            route: &route,
            peer_ip: &peer_ip,
            client_cert_sha256: &cert,
        })
    }

    fn prepare_with(upstream: &str, head: &str) -> (Prepared, String) {
        let mut out = Vec::new();
        let prepared = in_context(upstream, |context| {
            prepare_request(head.as_bytes(), context, "r1", &mut out)
        });
        (prepared, String::from_utf8(out).expect("utf-8"))
    }

    /// [`write_parsed_head`] of a GET for `/` with `fields`: whether it
    /// took them, and what it wrote.
    fn write_parsed(fields: &HeaderMap) -> (bool, String) {
        let mut out = Vec::new();
        let target = http::Uri::from_static("/");
        let took = in_context("http://127.0.0.1:8080", |context| {
            write_parsed_head(&Method::GET, &target, fields, SITE, context, "r1", &mut out)
        });
        (took, String::from_utf8(out).expect("utf-8"))
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
            // Found by fuzzing (fuzz/ request_head): targets that parse
            // as an empty path, which hyper refuses.
            "GET # HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
            "GET ?a=1 HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
            "GET #/a HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
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
    fn too_many_connection_options_leave_the_raw_exchange() {
        let mut fields = HeaderMap::new();
        let many = ["a"; MAX_CONNECTION_OPTIONS + 1].join(", ");
        fields.insert(header::CONNECTION, HeaderValue::from_str(&many).unwrap());
        assert!(!write_parsed(&fields).0);
    }

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
            // The raw exchange writes the same head from the parsed fields
            // of hyper's server, without changing them.
            assert_eq!(write_parsed(&map), (true, sent.clone()), "{head}");
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
}
