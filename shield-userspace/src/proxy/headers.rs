//! What changes in the headers on the way upstream and back.
//!
//! The client is Cloudflare, verified by its certificate, so its
//! `CF-Connecting-IP` is the visitor's address; every other client-sent
//! statement about forwarding is dropped and rewritten.

use std::{borrow::Cow, net::IpAddr};

use http::{
    header::{self, HeaderName},
    HeaderMap, HeaderValue,
};

/// The verified client certificate's SHA-256 fingerprint (hex of the leaf DER).
pub const CLIENT_CERT_SHA256: HeaderName = HeaderName::from_static("x-shield-client-cert-sha256");
/// The id shield logs for this request.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-shield-request-id");
pub const CF_CONNECTING_IP: HeaderName = HeaderName::from_static("cf-connecting-ip");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The fields either path looks at, by name in any case: the one table
/// behind the header policy of hyper's path and of the direct path alike.
/// Matched by length first: comparing against `http`'s names one by one
/// cost more per request than the rest of the head handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Host,
    ContentLength,
    TransferEncoding,
    Expect,
    Upgrade,
    Connection,
    CfConnectingIp,
    Date,
    /// The other hop-by-hop fields (RFC 9110 7.6.1): `keep-alive`,
    /// `proxy-connection` (the pre-standard spellings that clients still
    /// send) and `te`.
    HopByHop,
    /// A forwarding statement only shield makes: `forwarded`, `x-real-ip`,
    /// `x-forwarded-for`, `x-forwarded-proto`.
    Rewritten,
    /// `x-shield-*`.
    Ours,
    Other,
}

impl Field {
    pub fn of(name: &str) -> Field {
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
            _ if is_ours_name(name) => Field::Ours,
            _ => Field::Other,
        }
    }

    /// Describes one connection, never forwarded (RFC 9110 7.6.1); so are
    /// the fields a `Connection` option names.
    pub const fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Field::Connection | Field::HopByHop | Field::TransferEncoding | Field::Upgrade
        )
    }

    /// Not passed upstream as the client sent it: hop-by-hop, replaced by
    /// what shield states ([`Forwarding`]), or framing. The upstream's
    /// framing is shield's own: hyper's client states the length of the
    /// body it actually decoded (or sends it chunked), so a client's
    /// `Content-Length` that its `Transfer-Encoding` overrode can never
    /// reach the upstream and be read there as a different length.
    pub const fn replaced_upstream(self) -> bool {
        self.is_hop_by_hop()
            || matches!(
                self,
                Field::Host | Field::Rewritten | Field::Ours | Field::ContentLength
            )
    }
}

/// The options of a `Connection` field value (RFC 9110 7.6.1).
pub fn options_in(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|option| !option.is_empty())
}

/// Whether a request's `TE` says the client accepts trailers: the one `TE`
/// HTTP/2 allows, and what a gRPC request carries. Read before the header
/// policy removes `TE` as hop-by-hop, to be stated again to an HTTP/2
/// upstream.
pub fn accepts_trailers(fields: &HeaderMap) -> bool {
    fields
        .get_all(header::TE)
        .iter()
        .flat_map(|value| options_in(value.as_bytes()))
        .any(|option| option.eq_ignore_ascii_case(b"trailers"))
}

/// `Connection` options per message; a message naming more is refused (the
/// direct path defers such a request to hyper's path, which allocates).
pub const MAX_CONNECTION_OPTIONS: usize = 8;

/// The `Connection` options of one message.
#[derive(Default)]
pub struct Options<'a> {
    listed: [&'a [u8]; MAX_CONNECTION_OPTIONS],
    count: usize,
}

impl<'a> Options<'a> {
    /// False when there is no room left.
    pub fn push(&mut self, option: &'a [u8]) -> bool {
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
    pub fn names(&self, name: &str) -> bool {
        self.listed[..self.count]
            .iter()
            .any(|option| option.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// A field value as text, when `HeaderValue::to_str` would give it.
pub fn visible_ascii(value: &[u8]) -> Option<&str> {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        .then(|| std::str::from_utf8(value).ok())
        .flatten()
}

/// The `Connection` options of `headers` that name other fields.
fn connection_options(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| options_in(value.as_bytes()))
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        .collect()
}

/// Removes the hop-by-hop fields, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    remove_where(headers, Field::is_hop_by_hop);
}

/// Removes every field `policy` picks, and those a `Connection` option
/// names. One pass over the names, and nothing else when none is picked:
/// most messages carry none of them, or only `Connection` (an upstream's
/// `Connection: keep-alive`), and each removal hashes its name.
fn remove_where(headers: &mut HeaderMap, policy: fn(Field) -> bool) {
    let mut picked: Vec<HeaderName> = Vec::new();
    let mut connection = false;
    for name in headers.keys() {
        let field = Field::of(name.as_str());
        connection |= field == Field::Connection;
        // `Host` is replaced by an insert; no need to remove it first.
        if policy(field) && field != Field::Host {
            picked.push(name.clone());
        }
    }
    if picked.is_empty() {
        return;
    }
    if connection {
        picked.extend(connection_options(headers));
    }
    for name in picked {
        headers.remove(name);
    }
}

/// What shield states about a request to the upstream.
pub struct Forwarding<'a> {
    pub host: &'a str,
    /// The TCP peer (a Cloudflare edge address), used when Cloudflare sent
    /// no usable `CF-Connecting-IP`.
    pub peer_ip: &'a HeaderValue,
    /// Made once per connection: it is the same for all its requests.
    pub client_cert_sha256: &'a HeaderValue,
    pub request_id: &'a str,
}

/// The names of the fields shield states. A `static`, not a `const`: a
/// const array of names is built and dropped again at each use.
static STATED: [HeaderName; 6] = [
    header::HOST,
    X_FORWARDED_FOR,
    X_REAL_IP,
    X_FORWARDED_PROTO,
    CLIENT_CERT_SHA256,
    REQUEST_ID,
];

/// The fields shield adds to every request for the upstream, in the order
/// the direct path writes them; each path passes its own kind of value.
pub fn statements<V: Clone>(
    host: V,
    visitor: V,
    client_cert_sha256: V,
    request_id: V,
    https: V,
) -> [(&'static HeaderName, V); 6] {
    let [host_name, xff, real_ip, proto, cert, id] = &STATED;
    [
        (host_name, host),
        (xff, visitor.clone()),
        (real_ip, visitor),
        (proto, https),
        (cert, client_cert_sha256),
        (id, request_id),
    ]
}

/// The `X-Forwarded-Proto` shield states: Cloudflare reached it over TLS.
pub const HTTPS: &str = "https";

/// Rewrites a verified request's headers for the upstream (hyper's path;
/// the direct path writes the same from the parsed head).
pub fn prepare_request(headers: &mut HeaderMap, fwd: &Forwarding<'_>) {
    // Read before stripping: a client listing it in `Connection` addresses
    // it to us, which is where it is used.
    let visitor = headers
        .get(&CF_CONNECTING_IP)
        .and_then(visitor_address)
        .unwrap_or_else(|| fwd.peer_ip.clone());
    remove_where(headers, Field::replaced_upstream);
    // Both are visible ASCII by construction (a normalized host, hex).
    let text = |text| HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""));
    let (host, request_id) = (text(fwd.host), text(fwd.request_id));
    for (name, value) in statements(
        host,
        visitor,
        fwd.client_cert_sha256.clone(),
        request_id,
        HeaderValue::from_static(HTTPS),
    ) {
        headers.insert(name, value);
    }
}

/// `CF-Connecting-IP` when it holds one IP address, in its one canonical
/// spelling (the upstream may compare addresses as text). A valid IPv4
/// address has only one, so its value is shared as it came; IPv6 can be
/// written several ways (case, zeros, `::`) and is written anew.
fn visitor_address(value: &HeaderValue) -> Option<HeaderValue> {
    match canonical_visitor(value.to_str().ok()?)? {
        Cow::Borrowed(_) => Some(value.clone()),
        Cow::Owned(text) => HeaderValue::from_str(&text).ok(),
    }
}

/// The canonical spelling of a `CF-Connecting-IP` value holding one IP
/// address: the value itself when it already is (valid IPv4 without
/// surrounding space), else written anew.
pub fn canonical_visitor(text: &str) -> Option<Cow<'_, str>> {
    match text.trim().parse::<IpAddr>().ok()? {
        IpAddr::V4(_) if text.trim().len() == text.len() => Some(Cow::Borrowed(text)),
        ip => Some(Cow::Owned(ip.to_string())),
    }
}

/// Whether a field name, in any case, is one of shield's `x-shield-*`.
pub fn is_ours_name(name: &str) -> bool {
    const OURS: &str = "x-shield-";
    name.len() >= OURS.len() && name.as_bytes()[..OURS.len()].eq_ignore_ascii_case(OURS.as_bytes())
}

/// The host a request is for, lowercase and without port: the URI authority
/// (h2 `:authority`, h1 absolute-form) else `Host`. `None` when absent, or
/// when both are present and disagree.
pub fn request_host(uri: &http::Uri, headers: &HeaderMap) -> Option<String> {
    let from_header = match headers.get(header::HOST) {
        Some(value) => Some(normalize_host(value.to_str().ok()?)?),
        None => None,
    };
    let from_uri = uri.authority().and_then(|a| normalize_host(a.host()));
    match (from_uri, from_header) {
        (Some(a), Some(b)) if a != b => None,
        (Some(a), _) => Some(a),
        (None, b) => b,
    }
}

/// Lowercase host without port or trailing dot; IPv6 literals keep brackets.
pub fn normalize_host(text: &str) -> Option<String> {
    let text = text.trim();
    let host = if text.starts_with('[') {
        let end = text.find(']')?;
        &text[..=end]
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            Some(_) => return None,
            None => text,
        }
    };
    let host = host.trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn spoofed_forwarding_is_replaced() {
        let mut headers = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("x-shield-client-cert-sha256", "forged"),
            ("cf-connecting-ip", "203.0.113.7"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
        ]);
        prepare_request(
            &mut headers,
            &Forwarding {
                host: "www.example.com",
                peer_ip: &HeaderValue::from_static("172.64.0.1"),
                client_cert_sha256: &HeaderValue::from_static("ab12"),
                request_id: "r1",
            },
        );
        assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(headers["x-forwarded-for"], "203.0.113.7");
        assert_eq!(headers["x-real-ip"], "203.0.113.7");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-shield-client-cert-sha256"], "ab12");
        assert_eq!(headers["host"], "www.example.com");
        assert_eq!(headers["accept"], "*/*");
        for gone in [
            "forwarded",
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "upgrade",
        ] {
            assert!(headers.get(gone).is_none(), "{gone} was forwarded");
        }
    }

    #[test]
    fn hop_by_hop_fields_are_stripped_and_the_rest_kept() {
        type Fields<'a> = &'a [(&'a str, &'a str)];
        // (fields in, fields that must be gone, fields that must stay)
        let table: [(Fields, &[&str], &[&str]); 4] = [
            (
                &[("connection", "keep-alive"), ("content-length", "3")],
                &["connection"],
                &["content-length"],
            ),
            (
                &[
                    ("Connection", "close, X-Trace"),
                    ("x-trace", "1"),
                    ("keep-alive", "timeout=5"),
                    ("server", "app"),
                ],
                &["connection", "x-trace", "keep-alive"],
                &["server"],
            ),
            (
                &[("transfer-encoding", "chunked"), ("upgrade", "h2c")],
                &["transfer-encoding", "upgrade"],
                &[],
            ),
            (
                &[("server", "app"), ("date", "x")],
                &[],
                &["server", "date"],
            ),
        ];
        for (fields, gone, kept) in table {
            let mut headers = map(fields);
            strip_hop_by_hop(&mut headers);
            for name in gone {
                assert!(headers.get(*name).is_none(), "{name} kept in {fields:?}");
            }
            for name in kept {
                assert!(headers.get(*name).is_some(), "{name} lost in {fields:?}");
            }
            assert_eq!(headers.len(), kept.len(), "{fields:?}");
        }
    }

    #[test]
    fn cf_connecting_ip_is_forwarded_in_canonical_form() {
        for (sent, forwarded) in [
            (" 2001:db8::7 ", "2001:db8::7"),
            ("2001:DB8:0:0::0007", "2001:db8::7"),
            ("203.0.113.9", "203.0.113.9"),
            (" 203.0.113.9", "203.0.113.9"),
        ] {
            let headers = prepared_from_peer(&[("cf-connecting-ip", sent)], "172.64.0.1");
            assert_eq!(headers["x-forwarded-for"], forwarded, "{sent:?}");
            assert_eq!(headers["x-real-ip"], forwarded, "{sent:?}");
        }
    }

    /// `fields` as prepared for the upstream of a connection from `peer`.
    fn prepared_from_peer(fields: &[(&str, &str)], peer: &'static str) -> HeaderMap {
        let mut headers = map(fields);
        prepare_request(
            &mut headers,
            &Forwarding {
                host: "a",
                peer_ip: &HeaderValue::from_static(peer),
                client_cert_sha256: &HeaderValue::from_static(""),
                request_id: "",
            },
        );
        headers
    }

    #[test]
    fn peer_is_used_without_a_valid_cf_connecting_ip() {
        let headers = prepared_from_peer(&[("cf-connecting-ip", "not an ip")], "2001:db8::1");
        assert_eq!(headers["x-forwarded-for"], "2001:db8::1");
    }

    #[test]
    fn the_field_table_knows_each_name_in_any_case() {
        let table = [
            (header::HOST, Field::Host),
            (header::CONTENT_LENGTH, Field::ContentLength),
            (header::TRANSFER_ENCODING, Field::TransferEncoding),
            (header::EXPECT, Field::Expect),
            (header::UPGRADE, Field::Upgrade),
            (header::CONNECTION, Field::Connection),
            (CF_CONNECTING_IP, Field::CfConnectingIp),
            (header::DATE, Field::Date),
            (header::TE, Field::HopByHop),
            (HeaderName::from_static("keep-alive"), Field::HopByHop),
            (HeaderName::from_static("proxy-connection"), Field::HopByHop),
            (header::FORWARDED, Field::Rewritten),
            (X_REAL_IP, Field::Rewritten),
            (X_FORWARDED_FOR, Field::Rewritten),
            (X_FORWARDED_PROTO, Field::Rewritten),
            (CLIENT_CERT_SHA256, Field::Ours),
            (REQUEST_ID, Field::Ours),
            (header::ACCEPT, Field::Other),
        ];
        for (name, field) in table {
            for spelling in [name.as_str().to_owned(), name.as_str().to_uppercase()] {
                assert_eq!(Field::of(&spelling), field, "{spelling}");
            }
        }
        assert_eq!(Field::of("X-Shield-Anything"), Field::Ours);
        assert_eq!(Field::of("x-shield"), Field::Other);
        // Every field shield states replaces whatever the client sent.
        for (name, _) in statements("", "", "", "", "") {
            assert!(Field::of(name.as_str()).replaced_upstream(), "{name}");
        }
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(
            normalize_host("WWW.Example.com:443").as_deref(),
            Some("www.example.com")
        );
        assert_eq!(
            normalize_host("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_host("[::1]:8443").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("a:b"), None);
        let uri: http::Uri = "https://a.example/x".parse().unwrap();
        assert_eq!(request_host(&uri, &map(&[("host", "b.example")])), None);
        assert_eq!(
            request_host(&uri, &map(&[("host", "A.example:443")])).as_deref(),
            Some("a.example")
        );
        let origin_form: http::Uri = "/x".parse().unwrap();
        assert_eq!(request_host(&origin_form, &HeaderMap::new()), None);
    }
}
