//! The upstream's response head: parsed, judged for framing (RFC 9112
//! 6.3), and rewritten for the client with hop-by-hop fields removed and
//! framing shield chooses. Ambiguous framing (both `Transfer-Encoding` and
//! `Content-Length`, conflicting lengths, a coding other than chunked) is
//! [`Malformed`]: a 502, never a guess.
//!
//! The judging is one; what is written is the client's protocol's: HTTP/1.1
//! bytes for the direct path (`Vec<u8>`), or the `http` response parts an
//! h2 stream answers with ([`H2Head`]).

use std::mem::MaybeUninit;

use http::{header, response, HeaderName, HeaderValue, Response, StatusCode};
use httparse::{Header, ParserConfig, Status};

use super::{
    body::Framing,
    wire::{push_date, push_field, push_status_line},
    Malformed, MAX_FIELDS,
};
use crate::proxy::headers::{self, Field, Options};

#[derive(Debug, PartialEq, Eq)]
pub(in crate::proxy) struct ResponseHead {
    /// Bytes of the upstream's head.
    pub len: usize,
    pub status: StatusCode,
    pub framing: Framing,
    /// The upstream may get another request on this connection.
    pub reusable: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(in crate::proxy) enum Parsed {
    Final(ResponseHead),
    /// A 1xx head of this many bytes, not passed on (the client sent no
    /// `Expect`; hyper's client skips them too).
    Informational(usize),
    Partial,
}

/// Where the client's response head is written.
pub(in crate::proxy) trait HeadOut {
    /// Forgets what a head not passed on (a 1xx) wrote.
    fn reset(&mut self);
    /// At most this many fields follow.
    fn expect_fields(&mut self, _count: usize) {}
    fn status(&mut self, status: StatusCode, reason: &str);
    /// A field passed on as the upstream sent it.
    fn field(&mut self, name: &str, value: &[u8]) -> Result<(), Malformed>;
    /// The framing shield chooses: a body of `length`, or one whose length
    /// is not known ahead (chunked, in HTTP/1.1).
    fn length(&mut self, length: u64);
    fn unknown_length(&mut self);
    /// The head is complete; `dated`: the upstream sent `Date`.
    fn finish(&mut self, dated: bool, client_close: bool);
}

/// The direct path's HTTP/1.1 head.
impl HeadOut for Vec<u8> {
    fn reset(&mut self) {
        self.clear();
    }

    fn status(&mut self, status: StatusCode, reason: &str) {
        push_status_line(self, status.as_u16(), reason);
    }

    fn field(&mut self, name: &str, value: &[u8]) -> Result<(), Malformed> {
        push_field(self, name, value);
        Ok(())
    }

    fn length(&mut self, length: u64) {
        push_field(
            self,
            header::CONTENT_LENGTH.as_str(),
            itoa::Buffer::new().format(length).as_bytes(),
        );
    }

    fn unknown_length(&mut self) {
        push_field(self, header::TRANSFER_ENCODING.as_str(), b"chunked");
    }

    fn finish(&mut self, dated: bool, client_close: bool) {
        if !dated {
            push_date(self);
        }
        if client_close {
            push_field(self, header::CONNECTION.as_str(), b"close");
        }
        self.extend_from_slice(b"\r\n");
    }
}

/// An h2 stream's head: HTTP/2 frames its own bodies and hyper's server
/// adds `Date`, so only the status and the fields are shield's.
pub(in crate::proxy) struct H2Head(pub response::Parts);

impl Default for H2Head {
    fn default() -> Self {
        H2Head(Response::new(()).into_parts().0)
    }
}

impl HeadOut for H2Head {
    fn reset(&mut self) {
        *self = H2Head::default();
    }

    fn expect_fields(&mut self, count: usize) {
        // One allocation, not a growth per power of two (and Date).
        self.0.headers.reserve(count + 1);
    }

    fn status(&mut self, status: StatusCode, _reason: &str) {
        self.0.status = status;
    }

    fn field(&mut self, name: &str, value: &[u8]) -> Result<(), Malformed> {
        // httparse took both as tokens and field content; `http` is
        // stricter only about control bytes in values.
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| Malformed("a field name HTTP/2 cannot carry"))?;
        let value = HeaderValue::from_bytes(value)
            .map_err(|_| Malformed("a field value HTTP/2 cannot carry"))?;
        self.0.headers.append(name, value);
        Ok(())
    }

    fn length(&mut self, length: u64) {
        self.0.headers.insert(header::CONTENT_LENGTH, length.into());
    }

    fn unknown_length(&mut self) {}

    fn finish(&mut self, _dated: bool, _client_close: bool) {}
}

/// Reads the upstream's response head at the start of `buf` and writes the
/// client's into `out`: hop-by-hop fields removed, the framing our own.
pub(in crate::proxy) fn prepare_response(
    buf: &[u8],
    head_request: bool,
    client_close: bool,
    out: &mut impl HeadOut,
) -> Result<Parsed, Malformed> {
    let mut fields = [const { MaybeUninit::<Header<'_>>::uninit() }; MAX_FIELDS];
    let mut response = httparse::Response::new(&mut []);
    let len = match ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    ) {
        Ok(Status::Complete(len)) => len,
        Ok(Status::Partial) => return Ok(Parsed::Partial),
        Err(_) => return Err(Malformed("response head does not parse")),
    };
    let code = response.code.unwrap_or_default();
    match code {
        101 => {
            return Err(Malformed(
                "101 Switching Protocols to a request without Upgrade",
            ))
        }
        100..=199 => return Ok(Parsed::Informational(len)),
        _ => {}
    }
    let status = StatusCode::from_u16(code).map_err(|_| Malformed("status code out of range"))?;

    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut upstream_close = response.version != Some(1);
    let mut dated = false;
    let mut options = Options::default();
    for field in response.headers.iter() {
        match Field::of(field.name) {
            Field::ContentLength => {
                let value =
                    content_length(field.value).ok_or(Malformed("invalid Content-Length"))?;
                if length.replace(value).is_some_and(|first| first != value) {
                    return Err(Malformed("conflicting Content-Length fields"));
                }
            }
            Field::TransferEncoding => {
                // hyper would pass other codings on; nothing local sends them.
                if chunked || !field.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(Malformed("a transfer coding other than chunked"));
                }
                chunked = true;
            }
            Field::Connection => {
                for option in headers::options_in(field.value) {
                    upstream_close |= option.eq_ignore_ascii_case(b"close");
                    if !options.push(option) {
                        return Err(Malformed("too many Connection options"));
                    }
                }
            }
            Field::Date => dated = true,
            _ => {}
        }
    }
    if chunked && length.is_some() {
        return Err(Malformed("both Transfer-Encoding and Content-Length"));
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

    out.expect_fields(response.headers.len());
    out.status(status, response.reason.unwrap_or(""));
    for field in response.headers.iter() {
        // The framing fields are shield's own, written below.
        let field_kind = Field::of(field.name);
        let dropped = field_kind == Field::ContentLength
            || field_kind.is_hop_by_hop()
            || options.names(field.name);
        if !dropped {
            out.field(field.name, field.value)?;
        }
    }
    match (framing, length) {
        (Framing::Chunked | Framing::UntilClose, _) => out.unknown_length(),
        // A HEAD or 304 answer states the length the body would have.
        (Framing::Length(length), _) | (Framing::Empty, Some(length)) if !no_content => {
            out.length(length);
        }
        _ => {}
    }
    out.finish(dated, client_close);
    Ok(Parsed::Final(ResponseHead {
        len,
        status,
        framing,
        reusable: !upstream_close && framing != Framing::UntilClose,
    }))
}

/// A `Content-Length` value: digits only.
fn content_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn respond(
        head: &str,
        head_request: bool,
        client_close: bool,
    ) -> (Result<Parsed, Malformed>, String) {
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
                matches!(respond(head, false, false).0, Err(Malformed(_))),
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
}
