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
mod workers;

use std::{
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use rustls::crypto::CryptoProvider;

pub use frontend::{Frontend, FrontendOptions, PreparedReload};
pub use metrics::{HandshakeResult, TlsMetrics};
pub use site::{Site, SiteTable};
pub use workers::WorkerError;

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
    #[error(transparent)]
    Workers(#[from] WorkerError),
}

/// The rustls crypto provider for every site and for tests' clients.
///
/// aws-lc-rs, rustls' default. Measured against ring (`--features ring`)
/// with `cargo xtask bench tls` on the 2-core bench host, full mTLS
/// handshakes (ECDSA P-256, X25519, no resumption), 2026-11-23: the two are
/// within the host's noise. Six interleaved 5 s pairs: aws-lc-rs median
/// 996/s, ring 1,025/s, ring/aws-lc-rs per pair 0.73 to 1.59, median 1.03;
/// in the bench run ring led (1,040 vs 896/s), in an earlier one aws-lc-rs
/// did (747 vs 648/s); ring also led keep-alive requests/s in the bench
/// run (7,219 vs 6,317/s), within the same noise.
/// With speed a tie, aws-lc-rs stays for what ring lacks: the
/// X25519MLKEM768 hybrid key exchange that Cloudflare prefers towards
/// origins, and a FIPS build. Building with `--features ring` switches.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(build_provider())).clone()
}

#[cfg(not(feature = "ring"))]
fn build_provider() -> CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

#[cfg(feature = "ring")]
fn build_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}
