//! Cloudflare's published ranges: what a range set is, where the first one
//! comes from, and the lifecycle that keeps it fresh.
//!
//! One job per submodule: [`source`] fetches (HTTPS API, text lists, files),
//! [`validate`] accepts or refuses an update whole, [`cache`] keeps the last
//! known good on disk atomically, [`refresh`] decides and schedules, and
//! [`metrics`] counts. Applying goes through
//! [`crate::dataplane::SharedMaps::apply_allowlist`] (add before remove), so
//! there is a single apply path.

pub mod cache;
pub mod metrics;
pub mod refresh;
pub mod source;
pub mod validate;

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Deserialize;

/// The API response embedded at build time (see `data/README.md`).
const SNAPSHOT_JSON: &str = include_str!("../../data/cloudflare-ips-api.json");

/// When the embedded snapshot was taken, for `shield ranges`.
pub const SNAPSHOT_DATE: &str = "2026";

/// Why a text is not a range list.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RangesError {
    /// Not JSON, or JSON of another shape (truncated, malformed).
    #[error("range list is not valid JSON of the Cloudflare API shape")]
    Json(#[from] serde_json::Error),
    /// The API answered, but with `success: false`.
    #[error("the Cloudflare API reported success = false")]
    NotSuccessful,
    /// An IPv6 prefix in the IPv4 list, or the reverse.
    #[error("{family} list holds {entry:?}, which is not a {family} CIDR")]
    WrongFamily { family: &'static str, entry: String },
    /// An entry that is not a CIDR at all.
    #[error("{entry:?} is not a CIDR (expected e.g. 173.245.48.0/20)")]
    InvalidCidr { entry: String },
}

/// Where a range set in force came from (the configured sources are
/// [`crate::config::RangeSource`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    /// The list compiled into the binary.
    Snapshot,
    /// A cache file, or the fetched URL(s) or path(s).
    Named(String),
}

impl std::fmt::Display for Provenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Provenance::Snapshot => write!(f, "embedded snapshot ({SNAPSHOT_DATE})"),
            Provenance::Named(name) => f.write_str(name),
        }
    }
}

/// A validated list of Cloudflare prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    pub ipv4: Vec<IpNetwork>,
    pub ipv6: Vec<IpNetwork>,
    pub etag: Option<String>,
    pub source: Provenance,
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
        RangeSet::from_api_json(SNAPSHOT_JSON, Provenance::Snapshot)
            .unwrap_or_else(|e| unreachable!("embedded snapshot is invalid: {e}"))
    }

    /// Parses the `GET /client/v4/ips` response shape.
    pub fn from_api_json(text: &str, source: Provenance) -> Result<RangeSet, RangesError> {
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

    /// Parses plain text lists (one CIDR a line, as `ips-v4`/`ips-v6` are
    /// served, with or without a trailing newline). Blank lines and `#`
    /// comments are skipped. The lists carry no etag, so one is derived
    /// from the content: equal lists get equal etags.
    pub fn from_text(text: &str, source: Provenance) -> Result<RangeSet, RangesError> {
        let mut set = RangeSet {
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            etag: None,
            source,
        };
        for line in text.lines() {
            let entry = line.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            match entry.parse::<IpNetwork>() {
                Ok(network @ IpNetwork::V4(_)) => set.ipv4.push(network),
                Ok(network @ IpNetwork::V6(_)) => set.ipv6.push(network),
                Err(_) => {
                    return Err(RangesError::InvalidCidr {
                        entry: entry.to_owned(),
                    })
                }
            }
        }
        set.etag = Some(set.content_etag());
        Ok(set)
    }

    /// A digest of the prefixes, order-insensitive: the etag of lists that
    /// have none of their own.
    pub fn content_etag(&self) -> String {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        for prefix in self.sorted_prefixes() {
            hasher.update(prefix.to_string().as_bytes());
            hasher.update(b"\n");
        }
        let digest = hasher.finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    /// The prefixes sorted and deduplicated, for comparing two sets.
    pub fn sorted_prefixes(&self) -> std::collections::BTreeSet<IpNetwork> {
        self.prefixes().collect()
    }

    /// Whether both sets allow exactly the same prefixes.
    pub fn same_prefixes(&self, other: &RangeSet) -> bool {
        self.sorted_prefixes() == other.sorted_prefixes()
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
            Ok(_) => Err(RangesError::WrongFamily {
                family,
                entry: entry.clone(),
            }),
            Err(_) => Err(RangesError::InvalidCidr {
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
            RangeSet::from_api_json(wrong, Provenance::Snapshot),
            Err(RangesError::WrongFamily { .. })
        ));
        let failed = r#"{"success":false,"result":{"ipv4_cidrs":[],"ipv6_cidrs":[]}}"#;
        assert!(matches!(
            RangeSet::from_api_json(failed, Provenance::Snapshot),
            Err(RangesError::NotSuccessful)
        ));
        let garbage = r#"{"success":true,"result":{"ipv4_cidrs":["1.2.3"],"ipv6_cidrs":[]}}"#;
        assert!(matches!(
            RangeSet::from_api_json(garbage, Provenance::Snapshot),
            Err(RangesError::InvalidCidr { .. })
        ));
    }

    #[test]
    fn text_lists_parse_without_trailing_newline_and_get_a_content_etag() {
        let v4 = include_str!("../../data/cloudflare-ips-v4.txt");
        let v6 = include_str!("../../data/cloudflare-ips-v6.txt");
        assert!(!v4.ends_with('\n'), "the fixture mirrors the served list");
        let text = RangeSet::from_text(&format!("{v4}\n{v6}"), Provenance::Snapshot).unwrap();
        let snapshot = RangeSet::snapshot();
        assert!(text.same_prefixes(&snapshot));
        let reordered = format!("{v6}\n{v4}\n");
        let again = RangeSet::from_text(&reordered, Provenance::Snapshot).unwrap();
        assert_eq!(text.etag, again.etag);
        assert!(text.etag.as_deref().unwrap().starts_with("sha256:"));
        assert!(matches!(
            RangeSet::from_text("173.245.48.0/20\nnot-a-cidr", Provenance::Snapshot),
            Err(RangesError::InvalidCidr { .. })
        ));
    }
}
