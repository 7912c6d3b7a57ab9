//! The TLS terminator's metrics: one definition of every `result` label value.

use std::fmt::{self, Write as _};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// How a TLS handshake ended; the `result` label of `shield_tls_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeResult {
    /// Verified client certificate (or a resumed session of one).
    Ok,
    /// The client sent no certificate (TLS 1.3 alert `certificate_required`).
    NoClientCert,
    /// The chain does not lead to any configured client CA.
    UnknownCa,
    /// A signature in the chain does not verify, e.g. a look-alike CA that
    /// copies the zone CA's subject with another key.
    BadSignature,
    Expired,
    NotYetValid,
    /// The leaf lacks the `clientAuth` extended key usage.
    BadEku,
    /// Listed in one of the site's `client_crl`.
    Revoked,
    /// Chains to a configured CA but its key is not in `client_spki_pins`.
    PinMismatch,
    /// Any other defect of the client certificate (bad encoding, critical
    /// extension, unsupported algorithm, ...).
    BadClientCert,
    /// SNI missing or naming no site on this listener.
    UnknownSni,
    /// `handshake_timeout` elapsed.
    Timeout,
    /// Not TLS, or TLS we do not speak (version, ciphers, ALPN).
    ProtocolError,
    /// The client went away mid-handshake, or sent an alert itself.
    Aborted,
}

impl HandshakeResult {
    pub const ALL: [HandshakeResult; 14] = [
        HandshakeResult::Ok,
        HandshakeResult::NoClientCert,
        HandshakeResult::UnknownCa,
        HandshakeResult::BadSignature,
        HandshakeResult::Expired,
        HandshakeResult::NotYetValid,
        HandshakeResult::BadEku,
        HandshakeResult::Revoked,
        HandshakeResult::PinMismatch,
        HandshakeResult::BadClientCert,
        HandshakeResult::UnknownSni,
        HandshakeResult::Timeout,
        HandshakeResult::ProtocolError,
        HandshakeResult::Aborted,
    ];

    /// The label value (lower_snake_case).
    pub const fn as_str(self) -> &'static str {
        match self {
            HandshakeResult::Ok => "ok",
            HandshakeResult::NoClientCert => "no_client_cert",
            HandshakeResult::UnknownCa => "unknown_ca",
            HandshakeResult::BadSignature => "bad_signature",
            HandshakeResult::Expired => "expired",
            HandshakeResult::NotYetValid => "not_yet_valid",
            HandshakeResult::BadEku => "bad_eku",
            HandshakeResult::Revoked => "revoked",
            HandshakeResult::PinMismatch => "pin_mismatch",
            HandshakeResult::BadClientCert => "bad_client_cert",
            HandshakeResult::UnknownSni => "unknown_sni",
            HandshakeResult::Timeout => "timeout",
            HandshakeResult::ProtocolError => "protocol_error",
            HandshakeResult::Aborted => "aborted",
        }
    }
}

impl fmt::Display for HandshakeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for HandshakeResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandshakeLabels {
    site: String,
    result: HandshakeResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SiteLabels {
    site: String,
}

/// Metrics of the TLS terminator. Cheap to clone: clones share the same
/// series.
#[derive(Debug, Clone, Default)]
pub struct TlsMetrics {
    handshakes: Family<HandshakeLabels, Counter>,
    shared_ca_in_use: Family<SiteLabels, Gauge>,
}

impl TlsMetrics {
    /// Creates the metric families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = TlsMetrics::default();
        registry.register(
            "shield_tls_handshakes",
            "TLS handshakes by site and result",
            metrics.handshakes.clone(),
        );
        registry.register(
            "shield_tls_shared_ca_in_use",
            "1 when the site accepts Cloudflare's shared origin-pull CA, which any Cloudflare customer can present",
            metrics.shared_ca_in_use.clone(),
        );
        metrics
    }

    pub fn handshake(&self, site: &str, result: HandshakeResult) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                site: site.to_owned(),
                result,
            })
            .inc();
    }

    pub fn handshakes(&self, site: &str, result: HandshakeResult) -> u64 {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                site: site.to_owned(),
                result,
            })
            .get()
    }

    pub fn set_shared_ca_in_use(&self, site: &str, in_use: bool) {
        self.shared_ca_in_use
            .get_or_create(&SiteLabels {
                site: site.to_owned(),
            })
            .set(i64::from(in_use));
    }
}
