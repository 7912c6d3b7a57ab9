//! Reading certificates, keys, CA bundles and CRLs from PEM (or DER) files.
//!
//! Every function returns a [`TlsError`] naming the file, so a failed reload
//! can say which file kept the old state in place.

use std::path::{Path, PathBuf};

use rustls::pki_types::{
    pem::{self, PemObject},
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer,
};

use super::TlsError;

/// Cloudflare's shared Authenticated Origin Pulls CA
/// (CN origin-pull.cloudflare.net, valid to 2029-11-01).
pub const CLOUDFLARE_ORIGIN_PULL_CA: &[u8] =
    include_bytes!("../../data/cloudflare-origin-pull-ca.pem");

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn bad(path: &Path, reason: &'static str) -> TlsError {
    TlsError::BadFile {
        path: path.to_owned(),
        reason,
    }
}

fn pem<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(pem::Error) -> TlsError + 'a {
    move |source| TlsError::Pem {
        path: path.to_owned(),
        what,
        source,
    }
}

/// All `CERTIFICATE` blocks of a PEM file, in file order.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    certificates_from(&read(path)?, path)
}

pub(crate) fn certificates_from(
    bytes: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem(path, "certificate"))?;
    if certs.is_empty() {
        return Err(bad(path, "contains no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(&read(path)?).map_err(|source| TlsError::Key {
        path: path.to_owned(),
        source: super::KeyError::Pem(source),
    })
}

/// CRLs of a file: PEM `X509 CRL` blocks, or a single DER CRL.
pub fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let from_pem = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem(path, "CRL"))?;
    if !from_pem.is_empty() {
        return Ok(from_pem);
    }
    // DER starts with a SEQUENCE tag; anything else is neither form.
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(bytes)]);
    }
    Err(bad(path, "contains no X509 CRL block and is not DER"))
}

/// Where a trust anchor came from, for error messages.
pub fn shared_ca_path() -> PathBuf {
    PathBuf::from(format!(
        "<embedded {}>",
        crate::config::ClientCa::CLOUDFLARE_SHARED
    ))
}
