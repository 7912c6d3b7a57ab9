//! The HTTP side of the terminator: serving h1/h2 on verified TLS
//! connections, binding Host to SNI, the header policy, and the pooled
//! upstream client.

pub mod access;
mod activity;
mod body;
mod direct;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod h1;
mod handler;
pub mod headers;
mod lifecycle;
pub mod metrics;
mod route;
mod serve;
mod upstream;
mod websocket;

pub use handler::{text, Client, ProxyBody};
pub use lifecycle::{linger, Closing, MAX_HEADER_BYTES};
pub use route::{Route, Upstream, UpstreamProtocol};
pub use serve::{serve, HttpProtocol};
pub use upstream::{client as upstream_client, UpstreamClient};
