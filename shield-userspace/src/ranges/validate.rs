//! Whether a fetched range set may replace the one in force. An update is
//! accepted whole or refused whole: one bad entry means the source is broken
//! or tampered with, and enforcing "the rest" would be a guess.

use std::collections::BTreeSet;

use ipnetwork::IpNetwork;

use super::{Networks, RangeSet};

/// Bounds an update must respect (`[ranges]` config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Shortest IPv4 prefix accepted (default /8).
    pub min_prefix_v4: u8,
    /// Shortest IPv6 prefix accepted (default /16).
    pub min_prefix_v6: u8,
    /// Most prefixes accepted per family.
    pub max_prefixes: usize,
}

/// Cloudflare publishes ~15 IPv4 and ~7 IPv6 prefixes; a list of thousands
/// is not theirs, and the kernel tries also hold `extra_allow`.
pub const DEFAULT_MAX_PREFIXES: usize = 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_prefix_v4: 8,
            min_prefix_v6: 16,
            max_prefixes: DEFAULT_MAX_PREFIXES,
        }
    }
}

impl Limits {
    pub fn from_config(config: &crate::config::RangesConfig) -> Limits {
        Limits {
            min_prefix_v4: config.min_prefix_v4,
            min_prefix_v6: config.min_prefix_v6,
            ..Limits::default()
        }
    }
}

/// Why an update was refused. Each cause has its own metric label
/// ([`super::metrics::RefreshResult`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// A prefix whose address has bits past its length.
    #[error("{prefix} has host bits set (the network is {network}); a source that publishes this is broken, so the update is refused")]
    HostBits {
        prefix: IpNetwork,
        network: IpNetwork,
    },
    /// A prefix shorter than `[ranges].min_prefix_v4`/`v6`.
    #[error("{prefix} is shorter than the /{floor} floor ([ranges].min_prefix_v4/v6); no CDN owns that much, so the update is refused")]
    PrefixTooShort { prefix: IpNetwork, floor: u8 },
    /// A prefix in private, loopback, documentation or other reserved space.
    #[error("{prefix} overlaps {reserved} ({what}), which can never be a Cloudflare address; the update is refused")]
    ReservedRange {
        prefix: IpNetwork,
        reserved: IpNetwork,
        what: &'static str,
    },
    /// No IPv4 prefix at all.
    #[error("the update has no IPv4 prefixes; an empty family would drop every IPv4 visitor, so it is refused")]
    EmptyIpv4,
    /// No IPv6 prefix at all.
    #[error("the update has no IPv6 prefixes; an empty family would drop every IPv6 visitor, so it is refused")]
    EmptyIpv6,
    /// More prefixes in one family than any CDN publishes.
    #[error("the update has {count} {family} prefixes, more than the cap of {max}; refused")]
    TooManyPrefixes {
        family: &'static str,
        count: usize,
        max: usize,
    },
    /// `china_network = true`, but the feed has no `jdcloud_cidrs` (an
    /// API that ignored `?networks=jdcloud`, a text list, a file without
    /// the field).
    #[error("{source_name} has no jdcloud_cidrs, but [ranges].china_network = true needs the China Network's ranges; only the Cloudflare API (asked with ?networks=jdcloud) or a file of its JSON shape carries them, so the update is refused")]
    JdcloudMissing { source_name: String },
    /// `jdcloud_cidrs` is there but empty.
    #[error("the update's jdcloud_cidrs is empty; that would drop every China Network visitor, so it is refused")]
    EmptyJdcloud,
    /// The shrink guard: over half of a family's allowed space would go.
    #[error("the update removes {removed_percent:.1}% of the allowed {family} address space (more than half); if Cloudflare really shrank its ranges, run `shield ranges --refresh --accept-shrink`")]
    Shrink {
        family: &'static str,
        removed_percent: f64,
    },
}

/// Ranges no public CDN address can fall in.
const RESERVED: &[(&str, &str)] = &[
    ("0.0.0.0/8", "unspecified / this network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved / broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("64:ff9b::/96", "NAT64"),
    ("100::/64", "discard-only"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

fn overlaps(a: &IpNetwork, b: &IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

fn reserved_overlap(prefix: &IpNetwork) -> Option<(IpNetwork, &'static str)> {
    RESERVED.iter().find_map(|(range, what)| {
        let range: IpNetwork = range.parse().ok()?;
        overlaps(prefix, &range).then_some((range, *what))
    })
}

/// Checks one set on its own (not against the one in force).
pub fn validate(set: &RangeSet, limits: &Limits) -> Result<(), Refusal> {
    for prefix in set.prefixes() {
        let network = IpNetwork::new(prefix.network(), prefix.prefix()).unwrap_or(prefix);
        if network.ip() != prefix.ip() {
            return Err(Refusal::HostBits { prefix, network });
        }
        let floor = match prefix {
            IpNetwork::V4(_) => limits.min_prefix_v4,
            IpNetwork::V6(_) => limits.min_prefix_v6,
        };
        if prefix.prefix() < floor {
            return Err(Refusal::PrefixTooShort { prefix, floor });
        }
        if let Some((reserved, what)) = reserved_overlap(&prefix) {
            return Err(Refusal::ReservedRange {
                prefix,
                reserved,
                what,
            });
        }
    }
    if set.ipv4.is_empty() {
        return Err(Refusal::EmptyIpv4);
    }
    if set.ipv6.is_empty() {
        return Err(Refusal::EmptyIpv6);
    }
    if set.jdcloud.as_ref().is_some_and(Vec::is_empty) {
        return Err(Refusal::EmptyJdcloud);
    }
    let (jdcloud_v4, jdcloud_v6) = jdcloud_families(set);
    for (family, count) in [
        ("IPv4", set.ipv4.len()),
        ("IPv6", set.ipv6.len()),
        ("JD Cloud IPv4", jdcloud_v4.len()),
        ("JD Cloud IPv6", jdcloud_v6.len()),
    ] {
        if count > limits.max_prefixes {
            return Err(Refusal::TooManyPrefixes {
                family,
                count,
                max: limits.max_prefixes,
            });
        }
    }
    Ok(())
}

/// Refuses a set that lacks a network `networks` asks for. A feed without
/// `jdcloud_cidrs` is not "no China Network ranges": it was not asked, or
/// cannot tell, and enforcing it would drop JD Cloud's visitors.
pub fn require_networks(set: &RangeSet, networks: Networks) -> Result<(), Refusal> {
    if set.satisfies(networks) {
        return Ok(());
    }
    Err(Refusal::JdcloudMissing {
        source_name: set.source.to_string(),
    })
}

/// The China Network's list split by family, for the per-family checks.
fn jdcloud_families(set: &RangeSet) -> (Vec<IpNetwork>, Vec<IpNetwork>) {
    set.jdcloud_prefixes().partition(IpNetwork::is_ipv4)
}

/// Refuses an update that removes more than half of the address space the
/// current set allows, in either family of either network. JD Cloud's
/// space is guarded on its own (it is small beside Cloudflare's, so losing
/// all of it would pass a guard over the sum), and only when the update
/// has the China Network: dropping it with `china_network = false` is the
/// operator's choice, not a shrink.
pub fn shrink_guard(current: &RangeSet, update: &RangeSet) -> Result<(), Refusal> {
    let (old_jd_v4, old_jd_v6) = jdcloud_families(current);
    let (new_jd_v4, new_jd_v6) = jdcloud_families(update);
    let mut pairs = vec![
        ("IPv4", current.ipv4.as_slice(), update.ipv4.as_slice()),
        ("IPv6", current.ipv6.as_slice(), update.ipv6.as_slice()),
    ];
    if update.jdcloud.is_some() {
        pairs.push(("JD Cloud IPv4", &old_jd_v4, &new_jd_v4));
        pairs.push(("JD Cloud IPv6", &old_jd_v6, &new_jd_v6));
    }
    for (family, old, new) in pairs {
        let fraction = removed_fraction(old, new);
        if fraction > 0.5 {
            return Err(Refusal::Shrink {
                family,
                removed_percent: fraction * 100.0,
            });
        }
    }
    Ok(())
}

/// Addresses in a prefix, as f64: exact enough for a ratio, and an IPv6 /0
/// (2^128) does not overflow.
fn size(prefix: &IpNetwork) -> f64 {
    let bits = match prefix {
        IpNetwork::V4(_) => 32,
        IpNetwork::V6(_) => 128,
    };
    2f64.powi(i32::from(bits - prefix.prefix()))
}

/// Only the outermost prefixes: CIDRs either nest or are disjoint, so what
/// remains is disjoint and sizes add up.
fn outermost(prefixes: &[IpNetwork]) -> Vec<IpNetwork> {
    let sorted: BTreeSet<IpNetwork> = prefixes
        .iter()
        .map(|p| IpNetwork::new(p.network(), p.prefix()).unwrap_or(*p))
        .collect();
    sorted
        .iter()
        .filter(|p| {
            !sorted
                .iter()
                .any(|q| q != *p && q.prefix() < p.prefix() && q.contains(p.network()))
        })
        .copied()
        .collect()
}

/// The share of `old`'s address space that `new` does not cover.
pub fn removed_fraction(old: &[IpNetwork], new: &[IpNetwork]) -> f64 {
    let old = outermost(old);
    let new = outermost(new);
    let total: f64 = old.iter().map(size).sum();
    if total == 0.0 {
        return 0.0;
    }
    let kept: f64 = old
        .iter()
        .map(|o| {
            if new
                .iter()
                .any(|n| n.prefix() <= o.prefix() && n.contains(o.network()))
            {
                size(o)
            } else {
                new.iter()
                    .filter(|n| n.prefix() > o.prefix() && o.contains(n.network()))
                    .map(size)
                    .sum()
            }
        })
        .sum();
    (total - kept) / total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranges::Provenance;

    fn set(v4: &[&str], v6: &[&str]) -> RangeSet {
        RangeSet {
            ipv4: v4.iter().map(|p| p.parse().unwrap()).collect(),
            ipv6: v6.iter().map(|p| p.parse().unwrap()).collect(),
            jdcloud: None,
            etag: None,
            source: Provenance::Snapshot,
        }
    }

    #[test]
    fn snapshot_is_valid() {
        validate(&RangeSet::snapshot(), &Limits::default()).unwrap();
    }

    #[test]
    fn each_defect_has_its_own_refusal() {
        let v6 = ["2400:cb00::/32"];
        let cases: &[(RangeSet, &str)] = &[
            (set(&["173.245.48.1/20"], &v6), "host_bits"),
            (set(&["0.0.0.0/0"], &v6), "short"),
            (set(&["2.0.0.0/7"], &v6), "short"),
            (set(&["173.245.48.0/20"], &["2000::/3"]), "short"),
            (set(&["10.1.0.0/16"], &v6), "reserved"),
            (set(&["127.0.0.0/8"], &v6), "reserved"),
            (set(&["169.254.1.0/24"], &v6), "reserved"),
            (set(&["224.0.0.0/8"], &v6), "reserved"),
            (set(&["192.0.2.0/24"], &v6), "reserved"),
            (set(&["0.0.0.0/32"], &v6), "reserved"),
            (set(&["173.245.48.0/20"], &["fe80::/64"]), "reserved"),
            (set(&["173.245.48.0/20"], &["2001:db8::/32"]), "reserved"),
            (set(&["173.245.48.0/20"], &["ff02::/16"]), "reserved"),
            (set(&["173.245.48.0/20"], &["::1/128"]), "reserved"),
            (set(&[], &v6), "empty4"),
            (set(&["173.245.48.0/20"], &[]), "empty6"),
        ];
        for (set, want) in cases {
            let got = match validate(set, &Limits::default()) {
                Err(Refusal::HostBits { .. }) => "host_bits",
                Err(Refusal::PrefixTooShort { .. }) => "short",
                Err(Refusal::ReservedRange { .. }) => "reserved",
                Err(Refusal::EmptyIpv4) => "empty4",
                Err(Refusal::EmptyIpv6) => "empty6",
                other => panic!("{set:?}: {other:?}"),
            };
            assert_eq!(got, *want, "{set:?}");
        }
        let many: Vec<String> = (0..1025)
            .map(|i| format!("1.{}.{}.0/24", i / 256, i % 256))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(matches!(
            validate(&set(&many, &v6), &Limits::default()),
            Err(Refusal::TooManyPrefixes { count: 1025, .. })
        ));
        let floor = Limits {
            min_prefix_v4: 16,
            ..Limits::default()
        };
        assert!(matches!(
            validate(&set(&["104.16.0.0/13"], &v6), &floor),
            Err(Refusal::PrefixTooShort { floor: 16, .. })
        ));
    }

    fn with_jdcloud(mut set: RangeSet, jdcloud: &[&str]) -> RangeSet {
        set.jdcloud = Some(jdcloud.iter().map(|p| p.parse().unwrap()).collect());
        set
    }

    #[test]
    fn jdcloud_prefixes_get_every_check_of_their_family() {
        let base = set(&["173.245.48.0/20"], &["2400:cb00::/32"]);
        let good = with_jdcloud(base.clone(), &["116.196.0.0/17", "2402:db40:5100::/40"]);
        validate(&good, &Limits::default()).unwrap();
        let cases: &[(&[&str], &str)] = &[
            (&["116.196.0.1/17"], "host_bits"),
            (&["2402:db40:5100::1/40"], "host_bits"),
            (&["116.0.0.0/7"], "short"),
            (&["2400::/15"], "short"),
            (&["10.0.0.0/16"], "reserved"),
            (&["fd00::/16"], "reserved"),
            (&[], "empty"),
        ];
        for (jdcloud, want) in cases {
            let update = with_jdcloud(base.clone(), jdcloud);
            let got = match validate(&update, &Limits::default()) {
                Err(Refusal::HostBits { .. }) => "host_bits",
                Err(Refusal::PrefixTooShort { .. }) => "short",
                Err(Refusal::ReservedRange { .. }) => "reserved",
                Err(Refusal::EmptyJdcloud) => "empty",
                other => panic!("{jdcloud:?}: {other:?}"),
            };
            assert_eq!(got, *want, "{jdcloud:?}");
        }
        let many: Vec<String> = (0..1025)
            .map(|i| format!("1.{}.{}.0/24", i / 256, i % 256))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(matches!(
            validate(&with_jdcloud(base.clone(), &many), &Limits::default()),
            Err(Refusal::TooManyPrefixes {
                family: "JD Cloud IPv4",
                count: 1025,
                ..
            })
        ));
        // The global lists must still hold both families on their own.
        let only_jdcloud = with_jdcloud(set(&[], &["2400:cb00::/32"]), &["116.196.0.0/17"]);
        assert_eq!(
            validate(&only_jdcloud, &Limits::default()),
            Err(Refusal::EmptyIpv4)
        );
    }

    #[test]
    fn the_china_network_is_required_only_when_asked_for() {
        let base = set(&["173.245.48.0/20"], &["2400:cb00::/32"]);
        require_networks(&base, Networks::Global).unwrap();
        let refusal = require_networks(&base, Networks::GlobalAndChina).unwrap_err();
        assert!(matches!(refusal, Refusal::JdcloudMissing { .. }));
        assert!(refusal.to_string().contains("china_network"), "{refusal}");
        require_networks(
            &with_jdcloud(base, &["116.196.0.0/17"]),
            Networks::GlobalAndChina,
        )
        .unwrap();
    }

    #[test]
    fn shrink_guard_watches_the_china_network_on_its_own() {
        let base = set(&["104.16.0.0/13"], &["2400:cb00::/32"]);
        let old = with_jdcloud(base.clone(), &["116.196.0.0/17", "2402:db40:5100::/40"]);
        // Losing all of JD Cloud's IPv4 is a tiny share of all IPv4, but
        // all of the China Network's: refused.
        let gone = with_jdcloud(base.clone(), &["2402:db40:5100::/40"]);
        assert!(matches!(
            shrink_guard(&old, &gone),
            Err(Refusal::Shrink {
                family: "JD Cloud IPv4",
                ..
            })
        ));
        let halved = with_jdcloud(base.clone(), &["116.196.0.0/18", "2402:db40:5100::/40"]);
        shrink_guard(&old, &halved).unwrap();
        // Growing into the China Network (turning it on) is no shrink, and
        // leaving it (china_network = false: no list) is the operator's call.
        shrink_guard(&base, &old).unwrap();
        shrink_guard(&old, &base).unwrap();
    }

    #[test]
    fn shrink_guard_counts_address_space_not_entries() {
        let v6 = ["2400:cb00::/32"];
        let old = set(&["104.16.0.0/13", "173.245.48.0/20"], &v6);
        // Splitting a prefix into its halves removes nothing.
        let split = set(&["104.16.0.0/14", "104.20.0.0/14", "173.245.48.0/20"], &v6);
        assert_eq!(removed_fraction(&old.ipv4, &split.ipv4), 0.0);
        shrink_guard(&old, &split).unwrap();
        // Dropping one of 22 small prefixes is fine; dropping the /13 is not.
        let small_gone = set(&["104.16.0.0/13"], &v6);
        shrink_guard(&old, &small_gone).unwrap();
        let big_gone = set(&["173.245.48.0/20"], &v6);
        assert!(matches!(
            shrink_guard(&old, &big_gone),
            Err(Refusal::Shrink { family: "IPv4", .. })
        ));
        // Exactly half is allowed, more is not.
        let half = set(&["104.16.0.0/14"], &v6);
        let only = set(&["104.16.0.0/13"], &v6);
        shrink_guard(&only, &half).unwrap();
        let quarter = set(&["104.16.0.0/15"], &v6);
        assert!(shrink_guard(&only, &quarter).is_err());
        // Growth is never a shrink; nested duplicates do not double count.
        let nested = set(&["104.16.0.0/13", "104.16.0.0/16"], &v6);
        assert_eq!(removed_fraction(&nested.ipv4, &only.ipv4), 0.0);
        let v6_gone = set(&["104.16.0.0/13"], &["2400:cb00::/40"]);
        assert!(matches!(
            shrink_guard(&only, &v6_gone),
            Err(Refusal::Shrink { family: "IPv6", .. })
        ));
    }
}
