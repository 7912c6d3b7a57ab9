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

const HOP_BY_HOP_FIELDS: usize = 6;
/// RFC 9110 7.6.1: fields that describe one connection, never forwarded.
/// `proxy-connection` and `keep-alive` are the pre-standard spellings that
/// clients still send. A `static`, not a `const`: a const array of names
/// is built and dropped again at each use.
pub(super) static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_FIELDS] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Forwarding statements that only shield may make.
pub(super) static REWRITTEN: [HeaderName; 4] = [
    X_FORWARDED_FOR,
    X_REAL_IP,
    header::FORWARDED,
    X_FORWARDED_PROTO,
];

/// Removes the hop-by-hop fields, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names instead of a hashed lookup per field: most
    // messages carry none of them or only `Connection` (an upstream's
    // `Connection: keep-alive`), and a removal hashes its name.
    let mut present = [false; HOP_BY_HOP_FIELDS];
    for name in headers.keys() {
        if let Some(at) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[at] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !HOP_BY_HOP.contains(name))
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
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

/// Rewrites a verified request's headers for the upstream.
pub fn prepare_request(headers: &mut HeaderMap, fwd: &Forwarding<'_>) {
    // Read before stripping: a client listing it in `Connection` addresses
    // it to us, which is where it is used.
    let visitor = headers.get(&CF_CONNECTING_IP).and_then(visitor_address);
    // The removals below hash every name they look up; a typical request
    // has none of these fields, which one pass over its names shows.
    if headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(name) || REWRITTEN.contains(name) || is_ours(name))
    {
        strip_hop_by_hop(headers);
        for name in &REWRITTEN {
            headers.remove(name);
        }
        let ours: Vec<HeaderName> = headers.keys().filter(|n| is_ours(n)).cloned().collect();
        for name in ours {
            headers.remove(name);
        }
    }
    let visitor = visitor.unwrap_or_else(|| fwd.peer_ip.clone());
    headers.insert(X_FORWARDED_FOR, visitor.clone());
    headers.insert(X_REAL_IP, visitor);
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
    if let Ok(host) = HeaderValue::from_str(fwd.host) {
        headers.insert(header::HOST, host);
    }
    headers.insert(CLIENT_CERT_SHA256, fwd.client_cert_sha256.clone());
    if let Ok(value) = HeaderValue::from_str(fwd.request_id) {
        headers.insert(REQUEST_ID, value);
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

fn is_ours(name: &HeaderName) -> bool {
    is_ours_name(name.as_str())
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
