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

use std::{collections::BTreeSet, net::IpAddr};

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

/// Which of Cloudflare's networks the allowlist holds: `[ranges].china_network`,
/// parsed once into the type the fetch and the judgement take.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Networks {
    /// Cloudflare's global network only (`china_network = false`).
    #[default]
    Global,
    /// Also the China Network, run by JD Cloud (`china_network = true`).
    GlobalAndChina,
}

impl Networks {
    pub fn from_config(config: &crate::config::RangesConfig) -> Networks {
        if config.china_network {
            Networks::GlobalAndChina
        } else {
            Networks::Global
        }
    }

    pub const fn china(self) -> bool {
        matches!(self, Networks::GlobalAndChina)
    }
}

/// The network a prefix was published for, as `shield ranges` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Network {
    /// `ipv4_cidrs` / `ipv6_cidrs`, or the text lists.
    Cloudflare,
    /// `jdcloud_cidrs`.
    Jdcloud,
}

impl Network {
    pub const fn as_str(self) -> &'static str {
        match self {
            Network::Cloudflare => "cloudflare",
            Network::Jdcloud => "jdcloud",
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// The China Network's prefixes, both families in one list as the API
    /// gives them. `None`: the set was not fetched for the China Network
    /// (not asked for, a text list, an older cache, the snapshot), which
    /// is different from an empty answer and never satisfies
    /// `china_network = true`.
    pub jdcloud: Option<Vec<IpNetwork>>,
    pub etag: Option<String>,
    pub source: Provenance,
}

/// The shape of `GET /client/v4/ips` ("Cloudflare/JD Cloud IP Details"):
/// <https://developers.cloudflare.com/api/resources/ips/methods/list/>.
/// `result.jdcloud_cidrs` holds IPv4 and IPv6 CIDRs in one list and is
/// "only populated if ?networks=jdcloud is used".
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
    jdcloud_cidrs: Option<Vec<String>>,
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

    /// Parses the `GET /client/v4/ips` response shape; `jdcloud_cidrs` is
    /// kept when present (see [`RangeSet::for_networks`] for dropping it).
    pub fn from_api_json(text: &str, source: Provenance) -> Result<RangeSet, RangesError> {
        let response: ApiResponse = serde_json::from_str(text)?;
        if !response.success {
            return Err(RangesError::NotSuccessful);
        }
        let jdcloud = match &response.result.jdcloud_cidrs {
            // One list for both families, so there is no family to check.
            Some(entries) => Some(parse_family(entries, "JD Cloud", |_| true)?),
            None => None,
        };
        Ok(RangeSet {
            ipv4: parse_family(&response.result.ipv4_cidrs, "IPv4", IpNetwork::is_ipv4)?,
            ipv6: parse_family(&response.result.ipv6_cidrs, "IPv6", IpNetwork::is_ipv6)?,
            jdcloud,
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
            // The text lists are Cloudflare's global network only.
            jdcloud: None,
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
    pub fn sorted_prefixes(&self) -> BTreeSet<IpNetwork> {
        self.prefixes().collect()
    }

    /// Whether both sets hold exactly the same prefixes for each network
    /// (so a set with the China Network never equals one without it, even
    /// when JD Cloud's prefixes are all in Cloudflare's lists too).
    pub fn same_prefixes(&self, other: &RangeSet) -> bool {
        let sorted = |set: &RangeSet| -> (BTreeSet<IpNetwork>, Option<BTreeSet<IpNetwork>>) {
            (
                set.cloudflare_prefixes().collect(),
                set.jdcloud
                    .as_ref()
                    .map(|list| list.iter().copied().collect()),
            )
        };
        sorted(self) == sorted(other)
    }

    /// Every prefix the set allows, of all its networks.
    pub fn prefixes(&self) -> impl Iterator<Item = IpNetwork> + '_ {
        self.cloudflare_prefixes().chain(self.jdcloud_prefixes())
    }

    /// `ipv4_cidrs` and `ipv6_cidrs`: Cloudflare's global network.
    pub fn cloudflare_prefixes(&self) -> impl Iterator<Item = IpNetwork> + '_ {
        self.ipv4.iter().chain(self.ipv6.iter()).copied()
    }

    /// `jdcloud_cidrs`, empty when the set has no China Network.
    pub fn jdcloud_prefixes(&self) -> impl Iterator<Item = IpNetwork> + '_ {
        self.jdcloud.iter().flatten().copied()
    }

    /// Each prefix with the networks that publish it, sorted; a prefix in
    /// both lists names both.
    pub fn by_network(&self) -> Vec<(IpNetwork, Vec<Network>)> {
        let mut networks: std::collections::BTreeMap<IpNetwork, Vec<Network>> =
            std::collections::BTreeMap::new();
        for (prefixes, network) in [
            (
                self.cloudflare_prefixes().collect::<BTreeSet<_>>(),
                Network::Cloudflare,
            ),
            (self.jdcloud_prefixes().collect(), Network::Jdcloud),
        ] {
            for prefix in prefixes {
                networks.entry(prefix).or_default().push(network);
            }
        }
        networks.into_iter().collect()
    }

    /// The set as `networks` allows it: without the China Network, a
    /// `jdcloud_cidrs` list (fetched, cached or in a file) is dropped.
    pub fn for_networks(mut self, networks: Networks) -> RangeSet {
        if !networks.china() {
            self.jdcloud = None;
        }
        self
    }

    /// Whether the set holds what `networks` asks for: with the China
    /// Network, a set fetched without it does not.
    pub fn satisfies(&self, networks: Networks) -> bool {
        !networks.china() || self.jdcloud.is_some()
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

/// The allowlist the dataplane enforces: the ranges (Cloudflare's and, in
/// the set, JD Cloud's) plus `extra_allow`, each tagged with where it came
/// from. A prefix in both keeps the `extra_allow` tag, so removing it from
/// the ranges cannot lock it out; one that Cloudflare and JD Cloud both
/// publish keeps the Cloudflare tag, since it stays allowed whatever
/// `china_network` says.
pub fn tagged_allowlist(ranges: &RangeSet, extra_allow: &[IpNetwork]) -> Vec<(IpNetwork, u8)> {
    let mut tagged: std::collections::BTreeMap<IpNetwork, u8> = ranges
        .jdcloud_prefixes()
        .map(|p| (p, shield_common::PREFIX_FROM_JDCLOUD))
        .collect();
    for prefix in ranges.cloudflare_prefixes() {
        tagged.insert(prefix, shield_common::PREFIX_FROM_RANGES);
    }
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

    const WITH_JDCLOUD: &str = r#"{"success":true,"result":{"etag":"e","ipv4_cidrs":["173.245.48.0/20"],"ipv6_cidrs":["2400:cb00::/32"],"jdcloud_cidrs":["116.196.0.0/17","2402:db40:5100::/40"]}}"#;

    #[test]
    fn jdcloud_list_holds_both_families_and_is_kept_only_for_the_china_network() {
        let set = RangeSet::from_api_json(WITH_JDCLOUD, Provenance::Snapshot).unwrap();
        let jdcloud: Vec<IpNetwork> = vec![
            "116.196.0.0/17".parse().unwrap(),
            "2402:db40:5100::/40".parse().unwrap(),
        ];
        assert_eq!(set.jdcloud.as_deref(), Some(&jdcloud[..]));
        assert_eq!((set.ipv4.len(), set.ipv6.len()), (1, 1));
        assert!(set.contains("116.196.1.1".parse().unwrap()));
        assert!(set.contains("2402:db40:5100::1".parse().unwrap()));
        assert_eq!(set.prefixes().count(), 4);
        assert!(set.satisfies(Networks::GlobalAndChina));

        // china_network = false: the field, if present, is ignored.
        let global = set.clone().for_networks(Networks::Global);
        assert_eq!(global.jdcloud, None);
        assert!(!global.contains("116.196.1.1".parse().unwrap()));
        assert!(global.satisfies(Networks::Global));
        assert!(!global.satisfies(Networks::GlobalAndChina));
        assert_eq!(set.clone().for_networks(Networks::GlobalAndChina), set);

        // The field missing is not the same as an empty list.
        let missing = WITH_JDCLOUD.replace(
            r#","jdcloud_cidrs":["116.196.0.0/17","2402:db40:5100::/40"]"#,
            "",
        );
        let missing = RangeSet::from_api_json(&missing, Provenance::Snapshot).unwrap();
        assert_eq!(missing.jdcloud, None);
        let empty = WITH_JDCLOUD.replace(r#""116.196.0.0/17","2402:db40:5100::/40""#, "");
        let empty = RangeSet::from_api_json(&empty, Provenance::Snapshot).unwrap();
        assert_eq!(empty.jdcloud, Some(Vec::new()));
        assert!(empty.satisfies(Networks::GlobalAndChina));
        assert!(!RangeSet::snapshot().satisfies(Networks::GlobalAndChina));

        let bad = WITH_JDCLOUD.replace("116.196.0.0/17", "116.196.0/17");
        assert!(matches!(
            RangeSet::from_api_json(&bad, Provenance::Snapshot),
            Err(RangesError::InvalidCidr { entry }) if entry == "116.196.0/17"
        ));
    }

    #[test]
    fn a_set_with_the_china_network_differs_from_one_without_even_when_overlapping() {
        let set = RangeSet::from_api_json(WITH_JDCLOUD, Provenance::Snapshot).unwrap();
        let mut overlapping = set.clone();
        overlapping.jdcloud = Some(vec!["173.245.48.0/20".parse().unwrap()]);
        let without = set.clone().for_networks(Networks::Global);
        assert_eq!(overlapping.sorted_prefixes(), without.sorted_prefixes());
        assert!(!overlapping.same_prefixes(&without));
        assert!(overlapping.same_prefixes(&overlapping.clone()));
        let by_network = overlapping.by_network();
        assert_eq!(
            by_network,
            vec![
                (
                    "173.245.48.0/20".parse().unwrap(),
                    vec![Network::Cloudflare, Network::Jdcloud]
                ),
                ("2400:cb00::/32".parse().unwrap(), vec![Network::Cloudflare]),
            ]
        );
    }

    #[test]
    fn allowlist_tags_each_prefix_with_its_network() {
        let mut set = RangeSet::from_api_json(WITH_JDCLOUD, Provenance::Snapshot).unwrap();
        set.jdcloud
            .as_mut()
            .unwrap()
            .push("173.245.48.0/20".parse().unwrap());
        let extra: Vec<IpNetwork> = vec!["116.196.0.0/17".parse().unwrap()];
        let tagged: std::collections::BTreeMap<IpNetwork, u8> =
            tagged_allowlist(&set, &extra).into_iter().collect();
        let tag = |p: &str| tagged[&p.parse::<IpNetwork>().unwrap()];
        assert_eq!(tagged.len(), 4);
        assert_eq!(
            tag("2402:db40:5100::/40"),
            shield_common::PREFIX_FROM_JDCLOUD
        );
        // In both lists: Cloudflare's tag; in extra_allow too: extra's.
        assert_eq!(tag("173.245.48.0/20"), shield_common::PREFIX_FROM_RANGES);
        assert_eq!(tag("116.196.0.0/17"), shield_common::PREFIX_FROM_EXTRA);
        assert_eq!(tag("2400:cb00::/32"), shield_common::PREFIX_FROM_RANGES);
        let global = tagged_allowlist(&set.for_networks(Networks::Global), &[]);
        assert_eq!(global.len(), 2);
        assert!(global
            .iter()
            .all(|(_, tag)| *tag == shield_common::PREFIX_FROM_RANGES));
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
