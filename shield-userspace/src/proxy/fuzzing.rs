//! The direct path's HTTP/1.1 layers as the fuzz targets (`fuzz/`) call
//! them. Wrappers only, each a call and a change of type: the targets must
//! exercise the code that serves requests, not a copy of it.

use bytes::BytesMut;
use http::HeaderValue;

use super::{
    h1::{body, request, response},
    Route,
};

pub use super::h1::body::BodyError;
pub use super::h1::Malformed;

/// [`request::Prepared`].
#[derive(Debug, PartialEq, Eq)]
pub enum Prepared {
    Forward {
        head_len: usize,
        head_request: bool,
        close: bool,
    },
    Partial,
    Defer,
}

/// [`request::prepare_request`] for a connection to `sni` on `route`.
pub fn prepare_request(
    buf: &[u8],
    sni: &str,
    route: &Route,
    peer_ip: &HeaderValue,
    client_cert_sha256: &HeaderValue,
    request_id: &str,
    out: &mut Vec<u8>,
) -> Prepared {
    let context = request::Context {
        sni,
        route,
        peer_ip,
        client_cert_sha256,
    };
    match request::prepare_request(buf, context, request_id, out) {
        request::Prepared::Forward(request::Forward {
            head_len,
            head_request,
            close,
        }) => Prepared::Forward {
            head_len,
            head_request,
            close,
        },
        request::Prepared::Partial => Prepared::Partial,
        request::Prepared::Defer => Prepared::Defer,
    }
}

/// [`body::Framing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// [`response::Parsed`], with the head's fields that the targets check.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Final {
        len: usize,
        status: u16,
        framing: Framing,
        reusable: bool,
    },
    Informational(usize),
    Partial,
}

/// [`response::prepare_response`].
pub fn prepare_response(
    buf: &[u8],
    head_request: bool,
    client_close: bool,
    out: &mut Vec<u8>,
) -> Result<Parsed, Malformed> {
    Ok(
        match response::prepare_response(buf, head_request, client_close, out)? {
            response::Parsed::Final(head) => Parsed::Final {
                len: head.len,
                status: head.status.as_u16(),
                framing: match head.framing {
                    body::Framing::Empty => Framing::Empty,
                    body::Framing::Length(n) => Framing::Length(n),
                    body::Framing::Chunked => Framing::Chunked,
                    body::Framing::UntilClose => Framing::UntilClose,
                },
                reusable: head.reusable,
            },
            response::Parsed::Informational(len) => Parsed::Informational(len),
            response::Parsed::Partial => Parsed::Partial,
        },
    )
}

/// [`body::Reframe`].
pub struct Reframe(body::Reframe);

fn inner(framing: Framing) -> body::Framing {
    match framing {
        Framing::Empty => body::Framing::Empty,
        Framing::Length(n) => body::Framing::Length(n),
        Framing::Chunked => body::Framing::Chunked,
        Framing::UntilClose => body::Framing::UntilClose,
    }
}

impl Reframe {
    /// Re-encoded for HTTP/1.1.
    pub fn new(framing: Framing) -> Reframe {
        Reframe(body::Reframe::new(inner(framing), body::Encoding::Http1))
    }

    /// The payload alone, as an h2 stream gets it.
    pub fn plain(framing: Framing) -> Reframe {
        Reframe(body::Reframe::new(inner(framing), body::Encoding::Plain))
    }

    /// `Ok(true)`: the body ended ([`body::Progress::Done`]).
    pub fn feed(&mut self, input: &mut BytesMut, out: &mut Vec<u8>) -> Result<bool, BodyError> {
        self.0
            .feed(input, out)
            .map(|progress| progress == body::Progress::Done)
    }

    pub fn end(&mut self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        self.0.end(out)
    }
}
