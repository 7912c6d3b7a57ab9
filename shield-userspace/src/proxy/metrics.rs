//! The HTTP side's metrics: responses per site and code (TLS sites and
//! port 80 alike), open WebSocket tunnels per site, and the upstream
//! pool's discards.

use std::fmt::{self, Write as _};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Why an idle pooled upstream connection was not reused; the `reason`
/// label of `shield_upstream_discarded_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Discard {
    /// The upstream closed it while it was idle (normal for an upstream
    /// with a shorter keep-alive timeout than shield's pool).
    Closed,
    /// Bytes arrived on it that no request asked for: a late body, a second
    /// response. Always an upstream bug; reusing the connection would hand
    /// those bytes to the next client as its response.
    UnsolicitedBytes,
}

impl Discard {
    pub const ALL: [Discard; 2] = [Discard::Closed, Discard::UnsolicitedBytes];

    pub const fn as_str(self) -> &'static str {
        match self {
            Discard::Closed => "closed",
            Discard::UnsolicitedBytes => "unsolicited_bytes",
        }
    }
}

impl EncodeLabelValue for Discard {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    site: String,
    code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SiteLabels {
    site: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DiscardLabels {
    upstream: String,
    reason: Discard,
}

/// Cheap to clone: clones share the same series.
#[derive(Debug, Clone, Default)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    upgrades_active: Family<SiteLabels, Gauge>,
    upstream_discards: Family<DiscardLabels, Counter>,
}

impl HttpMetrics {
    /// Creates the metric families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = HttpMetrics::default();
        registry.register(
            "shield_http_requests",
            "HTTP responses by site and status code",
            metrics.requests.clone(),
        );
        registry.register(
            "shield_http_upgrades_active",
            "WebSocket tunnels open, by site",
            metrics.upgrades_active.clone(),
        );
        registry.register(
            "shield_upstream_discarded",
            "Idle pooled upstream connections not reused: closed by the upstream, or carrying bytes no request asked for (an upstream bug)",
            metrics.upstream_discards.clone(),
        );
        metrics
    }

    pub fn request(&self, site: &str, code: u16) {
        self.request_counter(site, code).inc();
    }

    /// The series of `site` and `code` itself, for a caller that counts
    /// often: the lookup allocates the label and hashes it under a lock.
    pub fn request_counter(&self, site: &str, code: u16) -> Counter {
        self.requests
            .get_or_create(&RequestLabels {
                site: site.to_owned(),
                code,
            })
            .clone()
    }

    pub fn requests(&self, site: &str, code: u16) -> u64 {
        self.request_counter(site, code).get()
    }

    /// The open WebSocket tunnels of `site`.
    pub fn upgrades_active(&self, site: &str) -> Gauge {
        self.upgrades_active
            .get_or_create(&SiteLabels {
                site: site.to_owned(),
            })
            .clone()
    }

    pub fn upstream_discard(&self, upstream: &str, reason: Discard) {
        self.upstream_discards
            .get_or_create(&DiscardLabels {
                upstream: upstream.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn upstream_discards(&self, upstream: &str, reason: Discard) -> u64 {
        self.upstream_discards
            .get_or_create(&DiscardLabels {
                upstream: upstream.to_owned(),
                reason,
            })
            .get()
    }
}
