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

use super::{refresh::RefreshResult, RangeSet};

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
            "Cloudflare prefixes in force, by address family (extra_allow not included)",
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

    /// Records the set now in force.
    pub fn in_force(&self, ranges: &RangeSet) {
        for (family, count) in [
            (AddressFamily::Ipv4, ranges.ipv4.len()),
            (AddressFamily::Ipv6, ranges.ipv6.len()),
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
