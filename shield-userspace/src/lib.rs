//! shield: an origin shield for hosts behind Cloudflare.
//!
//! Two layers: an XDP allowlist of Cloudflare's ranges on the public
//! interfaces ([`dataplane`]), and an mTLS terminator that requires the
//! Authenticated Origin Pulls client certificate (`tls`, `proxy`).
pub mod aop;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod error;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod ranges;
pub mod tls;
/// What the fuzz targets (`fuzz/`) call that is not public otherwise; only
/// with the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::proxy::fuzzing::*;
}
