//! The mTLS terminator: sites and their certificates by SNI, client-
//! certificate verification (CAs, pins, CRLs, the shared-CA warning), each
//! connection's handshake, and what a reload must check. The listeners
//! that use it are `listen`'s.

mod handshake;
pub mod load;
pub mod metrics;
mod site;
pub mod verify;
pub(crate) mod watch;

use std::{
    io,
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use rustls::crypto::CryptoProvider;

pub use handshake::{handshake, Refuse, Verified};
pub use metrics::{HandshakeResult, TlsMetrics};
pub use site::{Site, SiteTable};

/// Why TLS state could not be built; the running state is kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate, key, CA or CRL file could not be read.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file's PEM structure is broken.
    #[error("{path}: not a PEM {what} file")]
    Pem {
        path: PathBuf,
        /// What the file should hold: "certificate", "CRL".
        what: &'static str,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A file that parses but holds nothing usable.
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: &'static str },
    /// The private key file holds no key rustls can use.
    #[error("{path}: no usable private key")]
    Key {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
    /// The key is not the certificate's.
    #[error("{key} does not match {cert}")]
    KeyMismatch {
        key: PathBuf,
        cert: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// A `client_ca` certificate cannot be a trust anchor.
    #[error("{path}: not a usable CA certificate")]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier refused its CAs or CRLs.
    #[error("cannot build the client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// The crypto provider offers no safe protocol version.
    #[error("the crypto provider offers no safe TLS versions")]
    Protocol(#[source] rustls::Error),
    /// One of the other errors, in the named site.
    #[error("site {site}")]
    InSite {
        site: String,
        #[source]
        source: Box<TlsError>,
    },
}

/// Why a private key file was refused: not PEM, or a key rustls cannot use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// No PKCS#8, PKCS#1 or SEC1 key in the file.
    #[error(transparent)]
    Pem(rustls::pki_types::pem::Error),
    /// A key of a type or curve the crypto provider does not support.
    #[error(transparent)]
    Unsupported(rustls::Error),
}

/// Builds every site's TLS state from its files (certificate, key, CAs,
/// CRLs) and drops it: what a start or reload would refuse about the files,
/// with nothing bound and nothing applied.
pub fn check(config: &crate::config::Config) -> Result<(), TlsError> {
    for site in &config.sites {
        Site::build(site)?;
    }
    Ok(())
}

/// The rustls crypto provider for every site and for tests' clients.
///
/// aws-lc-rs, rustls' default. `cargo xtask bench tls` measures it against
/// ring (`--features ring`): the two are within the bench host's noise
/// (docs/BENCHMARKS.md). With speed a tie, aws-lc-rs stays for what ring
/// lacks: the
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::tests::count_in_chain;

    #[test]
    fn each_cause_is_printed_once() {
        let enoent = || io::Error::from_raw_os_error(libc::ENOENT);
        let cause = enoent().to_string();
        let read = TlsError::InSite {
            site: "www.example.com".into(),
            source: Box::new(TlsError::Read {
                path: "/x/missing.pem".into(),
                source: enoent(),
            }),
        };
        let (count, text) = count_in_chain(read, &cause);
        assert_eq!(count, 1, "{text}");
        assert_eq!(
            text.matches("cannot read /x/missing.pem").count(),
            1,
            "{text}"
        );

        let pem = rustls::pki_types::pem::Error::MissingSectionEnd {
            end_marker: b"-----END CERTIFICATE-----".to_vec(),
        };
        let cause = pem.to_string();
        let error = TlsError::Pem {
            path: "/x/ca.pem".into(),
            what: "certificate",
            source: pem,
        };
        let (count, text) = count_in_chain(error, &cause);
        assert_eq!(count, 1, "{text}");

        let mismatch = rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch);
        let cause = mismatch.to_string();
        let error = TlsError::KeyMismatch {
            key: "/k".into(),
            cert: "/c".into(),
            source: mismatch,
        };
        let (count, text) = count_in_chain(error, &cause);
        assert_eq!(count, 1, "{text}");
    }
}
