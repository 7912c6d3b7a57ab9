//! Cloudflare's published ranges: the embedded snapshot and the set in force.
//!
//! The refresh lifecycle (fetch, validate, cache, schedule) builds on
//! [`RangeSet`]; this module owns what a range set is and where the first one
//! comes from.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Deserialize;

/// The API response embedded at build time (see `data/README.md`).
const SNAPSHOT_JSON: &str = include_str!("../../data/cloudflare-ips-api.json");

/// When the embedded snapshot was taken, for `shield ranges`.
pub const SNAPSHOT_DATE: &str = "2026";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RangesError {
    #[error("range list is not valid JSON of the Cloudflare API shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the Cloudflare API reported success = false")]
    NotSuccessful,
    #[error("{family} list holds {entry:?}, which is not a {family} CIDR")]
    WrongFamily { family: &'static str, entry: String },
}

/// Where a range set came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeSource {
    /// The list compiled into the binary.
    Snapshot,
    /// A cache file or a fetched URL/path (the refresh issue fills this in).
    Named(String),
}

impl std::fmt::Display for RangeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RangeSource::Snapshot => write!(f, "embedded snapshot ({SNAPSHOT_DATE})"),
            RangeSource::Named(name) => f.write_str(name),
        }
    }
}

/// A validated list of Cloudflare prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ipv4: Vec<IpNetwork>,
    pub ipv6: Vec<IpNetwork>,
    pub etag: Option<String>,
    pub source: RangeSource,
}

#[derive(Deserialize)]
struct ApiResponse {
    success: bool,
    result: ApiResult,
}

#[derive(Deserialize)]
struct ApiResult {
    ipv4_cidrs: Vec<String>,
    ipv6_cidrs: Vec<String>,
    #[serde(default)]
    etag: Option<String>,
}

impl RangeSet {
    /// The snapshot compiled into the binary.
    pub fn snapshot() -> RangeSet {
        // The JSON is a build input checked by `snapshot_matches_published_counts`.
        RangeSet::from_api_json(SNAPSHOT_JSON, RangeSource::Snapshot)
            .unwrap_or_else(|e| unreachable!("embedded snapshot is invalid: {e}"))
    }

    /// Parses the `GET /client/v4/ips` response shape.
    pub fn from_api_json(text: &str, source: RangeSource) -> Result<RangeSet, RangesError> {
        let response: ApiResponse = serde_json::from_str(text)?;
        if !response.success {
            return Err(RangesError::NotSuccessful);
        }
        Ok(RangeSet {
            ipv4: parse_family(&response.result.ipv4_cidrs, "IPv4", IpNetwork::is_ipv4)?,
            ipv6: parse_family(&response.result.ipv6_cidrs, "IPv6", IpNetwork::is_ipv6)?,
            etag: response.result.etag,
            source,
        })
    }

    pub fn prefixes(&self) -> impl Iterator<Item = IpNetwork> + '_ {
        self.ipv4.iter().chain(self.ipv6.iter()).copied()
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        self.prefixes().any(|p| p.contains(address))
    }
}

fn parse_family(
    entries: &[String],
    family: &'static str,
    is_family: fn(&IpNetwork) -> bool,
) -> Result<Vec<IpNetwork>, RangesError> {
    entries
        .iter()
        .map(|entry| match entry.trim().parse::<IpNetwork>() {
            Ok(network) if is_family(&network) => Ok(network),
            _ => Err(RangesError::WrongFamily {
                family,
                entry: entry.clone(),
            }),
        })
        .collect()
}

/// The allowlist the dataplane enforces: the ranges plus `extra_allow`,
/// each tagged with where it came from. A prefix in both keeps the
/// `extra_allow` tag, so removing it from the ranges cannot lock it out.
pub fn tagged_allowlist(ranges: &RangeSet, extra_allow: &[IpNetwork]) -> Vec<(IpNetwork, u8)> {
    let mut tagged: std::collections::BTreeMap<IpNetwork, u8> = ranges
        .prefixes()
        .map(|p| (p, shield_common::PREFIX_FROM_RANGES))
        .collect();
    for prefix in extra_allow {
        tagged.insert(*prefix, shield_common::PREFIX_FROM_EXTRA);
    }
    tagged.into_iter().collect()
}

/// The reference classifier's view of the same allowlist.
pub fn allowlist(ranges: &RangeSet, extra_allow: &[IpNetwork]) -> crate::policy::Allowlist {
    crate::policy::Allowlist::new(
        tagged_allowlist(ranges, extra_allow)
            .into_iter()
            .map(|(p, _)| p),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_matches_published_counts() {
        let snapshot = RangeSet::snapshot();
        assert_eq!(snapshot.ipv4.len(), 15);
        assert_eq!(snapshot.ipv6.len(), 7);
        assert_eq!(
            snapshot.etag.as_deref(),
            Some("38f79d050aa027e3be3865e495dcc9bc")
        );
        assert!(snapshot.contains("173.245.48.1".parse().unwrap()));
        assert!(snapshot.contains("2606:4700::1".parse().unwrap()));
        assert!(!snapshot.contains("203.0.113.1".parse().unwrap()));
    }

    #[test]
    fn rejects_wrong_family_and_failure() {
        let wrong =
            r#"{"success":true,"result":{"ipv4_cidrs":["2400:cb00::/32"],"ipv6_cidrs":[]}}"#;
        assert!(matches!(
            RangeSet::from_api_json(wrong, RangeSource::Snapshot),
            Err(RangesError::WrongFamily { .. })
        ));
        let failed = r#"{"success":false,"result":{"ipv4_cidrs":[],"ipv6_cidrs":[]}}"#;
        assert!(matches!(
            RangeSet::from_api_json(failed, RangeSource::Snapshot),
            Err(RangesError::NotSuccessful)
        ));
    }
}
