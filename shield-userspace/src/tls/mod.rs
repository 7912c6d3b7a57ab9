//! The mTLS terminator: sites and their certificates, client-certificate
//! verification (CAs, pins, CRLs, the shared-CA warning), the acceptor with
//! its limits, and reload.
//!
//! [`Frontend`] is the entry point: it binds every site's listener, picks the
//! site by SNI, requires a client certificate that the site's policy accepts,
//! and hands the connection to [`crate::proxy`].

mod accept;
mod frontend;
pub mod load;
pub mod metrics;
mod site;
pub mod verify;
mod watch;

use std::{
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use rustls::crypto::CryptoProvider;

pub use frontend::{Frontend, FrontendOptions};
pub use metrics::{HandshakeResult, TlsMetrics};
pub use site::{Site, SiteTable};

/// Why TLS state could not be built; the running state is kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("client_spki_pins: {0:?} is not the base64 of a SHA-256 digest")]
    BadPin(String),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("upstream {upstream:?}: {reason}")]
    Upstream { upstream: String, reason: String },
    #[error("site {site}: {source}")]
    InSite {
        site: String,
        #[source]
        source: Box<TlsError>,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// The rustls crypto provider for every site and for tests' clients.
///
/// aws-lc-rs, rustls' default: it offers the X25519MLKEM768 hybrid key
/// exchange that Cloudflare prefers towards origins. Measuring it against
/// ring in the handshake benchmark (`cargo xtask bench tls`) is still to
/// do; this is the one place to change if ring wins.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}
