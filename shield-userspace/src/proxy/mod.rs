//! The HTTP side of the terminator: serving h1/h2 on verified TLS
//! connections, binding Host to SNI, the header policy, the pooled upstream
//! client, and the port-80 handler.

mod activity;
mod direct;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod h1;
mod handler;
pub mod headers;
mod lifecycle;
pub mod metrics;
pub mod plain;
mod route;
mod serve;
mod upstream;

pub use handler::Client;
pub use lifecycle::{H2_MAX_STREAMS, MAX_HEADER_BYTES};
pub use route::{Route, Upstream};
pub use serve::{serve, Protocol};
pub use upstream::{client as upstream_client, UpstreamClient};
