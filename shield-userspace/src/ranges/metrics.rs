//! `shield_ranges_*` metrics.

use std::{
    fmt::{self, Write as _},
    sync::atomic::AtomicU64,
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::RangeSet;

/// How a refresh ended; the `result` label of `shield_ranges_refresh_total`.
/// Every refusal cause has its own value so an alert can say which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefreshResult {
    /// A new set was accepted and applied.
    Updated,
    /// Same etag and prefixes: nothing written to the kernel.
    Unchanged,
    /// No complete answer in time.
    Timeout,
    /// The source's certificate is not trusted (or TLS failed otherwise).
    Tls,
    /// DNS, connect, reset, or a file that cannot be read.
    Network,
    /// An HTTP status other than 2xx.
    HttpStatus,
    /// A body over the size cap.
    TooLarge,
    /// A body (or file) that is not UTF-8 text.
    NotUtf8,
    /// Not the API's JSON shape (truncated, malformed).
    BadJson,
    /// The API answered `success: false`.
    NotSuccessful,
    /// An entry that is not a CIDR.
    InvalidCidr,
    /// An IPv6 prefix in the IPv4 list, or the reverse.
    WrongFamily,
    /// The refusal causes of [`Refusal`], one result each.
    HostBits,
    PrefixTooShort,
    ReservedRange,
    EmptyIpv4,
    EmptyIpv6,
    TooManyPrefixes,
    /// More than half of the address space would go; needs `--accept-shrink`.
    Shrink,
    /// Accepted, but the kernel maps could not be updated; the old set
    /// stays in force.
    ApplyError,
    /// Accepted and applied, but the cache file could not be written.
    CacheError,
    /// `china_network = true`, but the feed has no `jdcloud_cidrs`.
    JdcloudMissing,
    /// `jdcloud_cidrs` is there but empty.
    EmptyJdcloud,
}

impl RefreshResult {
    pub const ALL: [RefreshResult; 23] = [
        RefreshResult::Updated,
        RefreshResult::Unchanged,
        RefreshResult::Timeout,
        RefreshResult::Tls,
        RefreshResult::Network,
        RefreshResult::HttpStatus,
        RefreshResult::TooLarge,
        RefreshResult::BadJson,
        RefreshResult::NotSuccessful,
        RefreshResult::InvalidCidr,
        RefreshResult::WrongFamily,
        RefreshResult::HostBits,
        RefreshResult::PrefixTooShort,
        RefreshResult::ReservedRange,
        RefreshResult::EmptyIpv4,
        RefreshResult::EmptyIpv6,
        RefreshResult::TooManyPrefixes,
        RefreshResult::Shrink,
        RefreshResult::ApplyError,
        RefreshResult::CacheError,
        RefreshResult::NotUtf8,
        RefreshResult::JdcloudMissing,
        RefreshResult::EmptyJdcloud,
    ];

    /// The label value (lower_snake_case).
    pub const fn as_str(self) -> &'static str {
        match self {
            RefreshResult::Updated => "updated",
            RefreshResult::Unchanged => "unchanged",
            RefreshResult::Timeout => "timeout",
            RefreshResult::Tls => "tls",
            RefreshResult::Network => "network",
            RefreshResult::HttpStatus => "http_status",
            RefreshResult::TooLarge => "too_large",
            RefreshResult::BadJson => "bad_json",
            RefreshResult::NotSuccessful => "not_successful",
            RefreshResult::InvalidCidr => "invalid_cidr",
            RefreshResult::WrongFamily => "wrong_family",
            RefreshResult::HostBits => "host_bits",
            RefreshResult::PrefixTooShort => "prefix_too_short",
            RefreshResult::ReservedRange => "reserved_range",
            RefreshResult::EmptyIpv4 => "empty_ipv4",
            RefreshResult::EmptyIpv6 => "empty_ipv6",
            RefreshResult::TooManyPrefixes => "too_many_prefixes",
            RefreshResult::Shrink => "shrink",
            RefreshResult::ApplyError => "apply_error",
            RefreshResult::CacheError => "cache_error",
            RefreshResult::NotUtf8 => "not_utf8",
            RefreshResult::JdcloudMissing => "jdcloud_missing",
            RefreshResult::EmptyJdcloud => "empty_jdcloud",
        }
    }

    /// Whether the refresh counts as a success (resets the backoff).
    pub const fn is_success(self) -> bool {
        matches!(self, RefreshResult::Updated | RefreshResult::Unchanged)
    }
}

impl fmt::Display for RefreshResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for RefreshResult {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// The `family` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    Ipv4,
    Ipv6,
}

impl AddressFamily {
    pub const fn as_str(self) -> &'static str {
        match self {
            AddressFamily::Ipv4 => "ipv4",
            AddressFamily::Ipv6 => "ipv6",
        }
    }
}

impl EncodeLabelValue for AddressFamily {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FamilyLabels {
    family: AddressFamily,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: RefreshResult,
}

/// Cheap to clone: clones share the same series.
#[derive(Debug, Clone, Default)]
pub struct RangeMetrics {
    prefixes: Family<FamilyLabels, Gauge>,
    last_success: Gauge<f64, AtomicU64>,
    refreshes: Family<ResultLabels, Counter>,
}

impl RangeMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = RangeMetrics::default();
        registry.register(
            "shield_ranges_prefixes",
            "Cloudflare prefixes in force (with china_network, JD Cloud's too), by address family (extra_allow not included)",
            metrics.prefixes.clone(),
        );
        registry.register(
            "shield_ranges_last_success_timestamp_seconds",
            "Unix time of the last refresh that fetched a valid range set (0: never, running on cache or snapshot)",
            metrics.last_success.clone(),
        );
        registry.register(
            "shield_ranges_refresh",
            "Range refreshes by result; every refusal cause has its own result",
            metrics.refreshes.clone(),
        );
        metrics
    }

    /// Records the set now in force (JD Cloud's prefixes count in their
    /// family: the gauge is what the allowlist holds besides `extra_allow`).
    pub fn in_force(&self, ranges: &RangeSet) {
        let jdcloud_v4 = ranges.jdcloud_prefixes().filter(|p| p.is_ipv4()).count();
        let jdcloud_v6 = ranges.jdcloud_prefixes().filter(|p| p.is_ipv6()).count();
        for (family, count) in [
            (AddressFamily::Ipv4, ranges.ipv4.len() + jdcloud_v4),
            (AddressFamily::Ipv6, ranges.ipv6.len() + jdcloud_v6),
        ] {
            self.prefixes
                .get_or_create(&FamilyLabels { family })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    pub fn refreshed(&self, result: RefreshResult) {
        self.refreshes.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn refreshes(&self, result: RefreshResult) -> u64 {
        self.refreshes.get_or_create(&ResultLabels { result }).get()
    }

    pub fn succeeded_at(&self, at: SystemTime) {
        let seconds = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_success.set(seconds);
    }

    pub fn last_success(&self) -> f64 {
        self.last_success.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_uses_the_spec_names() {
        let mut registry = Registry::default();
        let metrics = RangeMetrics::register(&mut registry);
        metrics.in_force(&RangeSet::snapshot());
        metrics.refreshed(RefreshResult::EmptyIpv6);
        metrics.succeeded_at(UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "shield_ranges_prefixes{family=\"ipv4\"} 15",
            "shield_ranges_prefixes{family=\"ipv6\"} 7",
            "shield_ranges_refresh_total{result=\"empty_ipv6\"} 1",
            "shield_ranges_last_success_timestamp_seconds 1700000000",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
