//! Client-certificate policy of one site: trusted CAs, optional CRLs, optional
//! SPKI pins; and the mapping of a failed handshake to its `result` label.

use std::{io, sync::Arc};

use rustls::{
    client::danger::HandshakeSignatureValid,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        ParsedCertificate, WebPkiClientVerifier,
    },
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, RootCertStore,
    SignatureScheme,
};
use sha2::{Digest, Sha256};

use super::{metrics::HandshakeResult, TlsError};
use crate::config::SpkiPin;

pub fn spki_pin(spki_der: &[u8]) -> SpkiPin {
    SpkiPin(Sha256::digest(spki_der).into())
}

/// webpki chain validation (CAs, validity, `clientAuth` EKU, CRLs) followed by
/// the SPKI pin check. Pins narrow the CA check, they never replace it.
#[derive(Debug)]
pub struct ClientPolicy {
    webpki: Arc<dyn ClientCertVerifier>,
    pins: Vec<SpkiPin>,
}

impl ClientPolicy {
    pub fn new(
        roots: RootCertStore,
        crls: Vec<CertificateRevocationListDer<'static>>,
        pins: Vec<SpkiPin>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        if !crls.is_empty() {
            // A CRL covers the CA that issued it. During a CA rotation only one
            // of the two CAs may publish one; certificates of the other must
            // not fail as "status unknown".
            builder = builder.with_crls(crls).allow_unknown_revocation_status();
        }
        let webpki = builder.build().map_err(TlsError::Verifier)?;
        Ok(ClientPolicy { webpki, pins })
    }
}

impl ClientCertVerifier for ClientPolicy {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let verified = self
            .webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.pins.is_empty() {
            return Ok(verified);
        }
        let parsed = ParsedCertificate::try_from(end_entity)?;
        let pin = spki_pin(parsed.subject_public_key_info().as_ref());
        if self.pins.contains(&pin) {
            Ok(verified)
        } else {
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// The `result` label of a handshake that failed with `error`.
pub fn classify(error: &io::Error) -> HandshakeResult {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    {
        Some(tls) => classify_tls(tls),
        None => match error.kind() {
            io::ErrorKind::TimedOut => HandshakeResult::Timeout,
            io::ErrorKind::InvalidData => HandshakeResult::ProtocolError,
            _ => HandshakeResult::Aborted,
        },
    }
}

fn classify_tls(error: &Error) -> HandshakeResult {
    match error {
        Error::NoCertificatesPresented => HandshakeResult::NoClientCert,
        Error::InvalidCertificate(cert) => classify_certificate(cert),
        Error::AlertReceived(_) => HandshakeResult::Aborted,
        _ => HandshakeResult::ProtocolError,
    }
}

fn classify_certificate(error: &CertificateError) -> HandshakeResult {
    match error {
        CertificateError::UnknownIssuer => HandshakeResult::UnknownCa,
        CertificateError::BadSignature => HandshakeResult::BadSignature,
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            HandshakeResult::Expired
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            HandshakeResult::NotYetValid
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            HandshakeResult::BadEku
        }
        CertificateError::Revoked => HandshakeResult::Revoked,
        CertificateError::ApplicationVerificationFailure => HandshakeResult::PinMismatch,
        _ => HandshakeResult::BadClientCert,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_labels() {
        let wrap = |e: Error| io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(
            classify(&wrap(Error::NoCertificatesPresented)),
            HandshakeResult::NoClientCert
        );
        assert_eq!(
            classify(&wrap(Error::InvalidCertificate(CertificateError::Revoked))),
            HandshakeResult::Revoked
        );
        assert_eq!(
            classify(&io::Error::from(io::ErrorKind::UnexpectedEof)),
            HandshakeResult::Aborted
        );
    }
}
