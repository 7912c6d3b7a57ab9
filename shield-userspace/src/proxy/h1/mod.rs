//! HTTP/1.1 for the direct path, one layer per file: the request head
//! (`request`), the response head and its framing (`response`), the body
//! as a state machine (`body`), and the bytes on the wire (`wire`). Only
//! what these choose is ever written, to the upstream or to the client.
//!
//! Lower than the rest of `proxy`: nothing here knows about connections,
//! pools or sites beyond what a head needs to be judged.

pub(super) mod body;
pub(super) mod request;
pub(super) mod response;
pub(super) mod wire;

/// Header fields per head: hyper's default, which its path keeps too. A
/// request with more goes to hyper, which answers 431; a response with
/// more is malformed.
pub(super) const MAX_FIELDS: usize = 100;

/// Why an upstream's message cannot be passed on; the text names the rule
/// it broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub &'static str);
