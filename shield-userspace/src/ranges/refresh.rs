//! One refresh decision (fetch, compare, validate, guard) and the schedule
//! between refreshes. Applying to the kernel is the caller's: the daemon
//! owns the maps, `shield ranges --refresh` only writes the cache.

use std::{
    collections::BTreeSet,
    fmt::{self, Write as _},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use ipnetwork::IpNetwork;

use super::{
    cache::{self, Cached},
    metrics::{RangeMetrics, RefreshResult},
    source::{FetchError, Fetcher},
    validate::{self, Limits, Refusal},
    Networks, RangeSet, RangesError,
};
use crate::{config::RangeSource, error::Chain};

/// Why a refresh kept the set in force.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// No source gave a range set.
    #[error("range update not fetched")]
    Fetch(#[from] FetchError),
    /// A set was fetched and refused by validation or the shrink guard.
    #[error("range update refused, keeping the last known good set")]
    Refused(#[from] Refusal),
}

impl RefreshError {
    pub fn result(&self) -> RefreshResult {
        match self {
            RefreshError::Fetch(error) => match error {
                FetchError::Timeout { .. } => RefreshResult::Timeout,
                FetchError::Tls { .. } => RefreshResult::Tls,
                FetchError::Status { .. } => RefreshResult::HttpStatus,
                FetchError::TooLarge { .. } => RefreshResult::TooLarge,
                FetchError::NotUtf8 { .. } => RefreshResult::NotUtf8,
                FetchError::Parse { source, .. } => match source {
                    RangesError::Json(_) => RefreshResult::BadJson,
                    RangesError::NotSuccessful => RefreshResult::NotSuccessful,
                    RangesError::WrongFamily { .. } => RefreshResult::WrongFamily,
                    RangesError::InvalidCidr { .. } => RefreshResult::InvalidCidr,
                },
                FetchError::Network { .. }
                | FetchError::File { .. }
                | FetchError::Client(_)
                | FetchError::NoSources => RefreshResult::Network,
            },
            RefreshError::Refused(refusal) => match refusal {
                Refusal::HostBits { .. } => RefreshResult::HostBits,
                Refusal::PrefixTooShort { .. } => RefreshResult::PrefixTooShort,
                Refusal::ReservedRange { .. } => RefreshResult::ReservedRange,
                Refusal::EmptyIpv4 => RefreshResult::EmptyIpv4,
                Refusal::EmptyIpv6 => RefreshResult::EmptyIpv6,
                Refusal::TooManyPrefixes { .. } => RefreshResult::TooManyPrefixes,
                Refusal::Shrink { .. } => RefreshResult::Shrink,
                Refusal::JdcloudMissing { .. } => RefreshResult::JdcloudMissing,
                Refusal::EmptyJdcloud => RefreshResult::EmptyJdcloud,
            },
        }
    }
}

/// Prefixes an update adds and removes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<IpNetwork>,
    pub removed: Vec<IpNetwork>,
}

impl Diff {
    pub fn between(old: &RangeSet, new: &RangeSet) -> Diff {
        let old: BTreeSet<IpNetwork> = old.sorted_prefixes();
        let new: BTreeSet<IpNetwork> = new.sorted_prefixes();
        Diff {
            added: new.difference(&old).copied().collect(),
            removed: old.difference(&new).copied().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return writeln!(f, "no change");
        }
        for prefix in &self.added {
            writeln!(f, "+ {prefix}")?;
        }
        for prefix in &self.removed {
            writeln!(f, "- {prefix}")?;
        }
        Ok(())
    }
}

/// A refresh that keeps or replaces the set in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Same etag and prefixes as the set in force, confirmed by `source`.
    Unchanged { source: super::Provenance },
    /// Valid and within the shrink guard: apply it, then cache it.
    Accepted { ranges: RangeSet, diff: Diff },
}

impl Outcome {
    pub fn result(&self) -> RefreshResult {
        match self {
            Outcome::Unchanged { .. } => RefreshResult::Unchanged,
            Outcome::Accepted { .. } => RefreshResult::Updated,
        }
    }
}

/// Fetches and judges one update against the set in force.
pub async fn check(
    fetcher: &Fetcher,
    sources: &[RangeSource],
    networks: Networks,
    current: &RangeSet,
    limits: &Limits,
    accept_shrink: bool,
) -> Result<Outcome, RefreshError> {
    let fetched = fetcher.fetch(sources, networks).await?;
    judge(fetched, networks, current, limits, accept_shrink)
}

/// The decision part of [`check`], without the network.
pub fn judge(
    fetched: RangeSet,
    networks: Networks,
    current: &RangeSet,
    limits: &Limits,
    accept_shrink: bool,
) -> Result<Outcome, RefreshError> {
    // First: a feed without the China Network must not pass as "unchanged"
    // against a set in force that lacks it too (the snapshot, an old cache).
    validate::require_networks(&fetched, networks)?;
    // An unchanged etag alone is not trusted to mean unchanged content: a
    // source that reuses etags must still have its new data validated.
    if fetched.etag.is_some() && fetched.etag == current.etag && fetched.same_prefixes(current) {
        return Ok(Outcome::Unchanged {
            source: fetched.source,
        });
    }
    validate::validate(&fetched, limits)?;
    if !accept_shrink {
        validate::shrink_guard(current, &fetched)?;
    }
    let diff = Diff::between(current, &fetched);
    Ok(Outcome::Accepted {
        ranges: fetched,
        diff,
    })
}

/// What one refresh did, for logs and `shield ranges --refresh`.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub result: RefreshResult,
    /// What changed, when a new set was accepted.
    pub diff: Option<Diff>,
    /// Why the set in force was kept, when it was.
    pub error: Option<String>,
}

/// The range set in force and what keeps it: the decision ([`check`]) runs
/// wherever the caller likes (the daemon spawns it so signals are served
/// meanwhile); [`Refresher::commit`] then applies, caches and counts.
#[derive(Debug)]
pub struct Refresher {
    pub sources: Vec<RangeSource>,
    pub networks: Networks,
    pub limits: Limits,
    pub cache: PathBuf,
    fetcher: Fetcher,
    metrics: RangeMetrics,
    current: RangeSet,
    fetched_at: Option<SystemTime>,
}

impl Refresher {
    /// `current` is the set already enforced (from the cache or snapshot);
    /// a China Network list in it is dropped when the config does not
    /// allow that network (as [`RangeSet::for_networks`] does for the
    /// allowlist the daemon starts with).
    pub fn new(
        config: &crate::config::RangesConfig,
        fetcher: Fetcher,
        metrics: RangeMetrics,
        current: RangeSet,
        fetched_at: Option<SystemTime>,
    ) -> Refresher {
        let networks = Networks::from_config(config);
        let current = current.for_networks(networks);
        metrics.in_force(&current);
        Refresher {
            sources: config.sources.clone(),
            networks,
            limits: Limits::from_config(config),
            cache: config.cache.clone(),
            fetcher,
            metrics,
            current,
            fetched_at,
        }
    }

    pub fn current(&self) -> &RangeSet {
        &self.current
    }

    /// Takes new `[ranges]` settings (SIGHUP); the set in force stays,
    /// except that turning `china_network` off drops JD Cloud's prefixes
    /// from it at once (the caller applies the allowlist). Returns whether
    /// `china_network` changed: a refresh is then due, so that the China
    /// Network's ranges arrive now rather than at the next period, and the
    /// cache stops holding a list the config no longer asks for.
    pub fn reconfigure(&mut self, config: &crate::config::RangesConfig) -> bool {
        let networks = Networks::from_config(config);
        let changed = networks != self.networks;
        self.sources = config.sources.clone();
        self.networks = networks;
        self.limits = Limits::from_config(config);
        self.cache = config.cache.clone();
        if changed {
            self.current = self.current.clone().for_networks(networks);
            self.metrics.in_force(&self.current);
        }
        changed
    }

    /// Whether the set in force lacks a network the config asks for (the
    /// China Network, when the set came from the snapshot, a cache written
    /// without it, or before a reload turned `china_network` on).
    pub fn networks_pending(&self) -> bool {
        !self.current.satisfies(self.networks)
    }

    /// When the set in force was fetched (`None`: the embedded snapshot).
    pub fn fetched_at(&self) -> Option<SystemTime> {
        self.fetched_at
    }

    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    pub fn metrics(&self) -> &RangeMetrics {
        &self.metrics
    }

    /// Fetch, judge and commit in one go.
    pub async fn refresh<E: fmt::Display>(
        &mut self,
        accept_shrink: bool,
        apply: impl FnOnce(&RangeSet) -> Result<(), E>,
    ) -> Report {
        let decision = check(
            &self.fetcher,
            &self.sources,
            self.networks,
            &self.current,
            &self.limits,
            accept_shrink,
        )
        .await;
        self.commit(decision, apply)
    }

    /// Acts on a decision: a refused or failed update keeps the set in
    /// force and says why; an accepted one is applied first and cached
    /// after, so the cache never holds a set the kernel refused.
    pub fn commit<E: fmt::Display>(
        &mut self,
        decision: Result<Outcome, RefreshError>,
        apply: impl FnOnce(&RangeSet) -> Result<(), E>,
    ) -> Report {
        let now = SystemTime::now();
        let report = match decision {
            Err(error) => {
                let result = error.result();
                let error = Chain(&error).to_string();
                tracing::warn!(%result, %error, "range refresh failed; keeping the last known good set");
                Report {
                    result,
                    diff: None,
                    error: Some(error),
                }
            }
            Ok(Outcome::Unchanged { source }) => {
                self.current.source = source;
                self.fetched_at = Some(now);
                self.metrics.succeeded_at(now);
                // Only the fetch time changes; the kernel is not touched.
                if let Err(error) = self.write_cache() {
                    tracing::warn!(error = %Chain(&error), "ranges unchanged, but the cache could not be refreshed");
                }
                tracing::debug!(etag = ?self.current.etag, "ranges unchanged");
                Report {
                    result: RefreshResult::Unchanged,
                    diff: None,
                    error: None,
                }
            }
            Ok(Outcome::Accepted { ranges, diff }) => {
                if let Err(error) = apply(&ranges) {
                    tracing::error!(%error, "accepted range update could not be applied; the previous set stays in force");
                    let report = Report {
                        result: RefreshResult::ApplyError,
                        diff: Some(diff),
                        error: Some(error.to_string()),
                    };
                    self.metrics.refreshed(report.result);
                    return report;
                }
                tracing::info!(
                    source = %ranges.source,
                    etag = ?ranges.etag,
                    added = diff.added.len(),
                    removed = diff.removed.len(),
                    "ranges updated"
                );
                self.current = ranges;
                self.fetched_at = Some(now);
                self.metrics.in_force(&self.current);
                self.metrics.succeeded_at(now);
                match self.write_cache() {
                    Ok(()) => Report {
                        result: RefreshResult::Updated,
                        diff: Some(diff),
                        error: None,
                    },
                    Err(error) => {
                        let error = Chain(&error).to_string();
                        tracing::error!(%error, "ranges applied, but a restart would fall back to the older cache or snapshot");
                        Report {
                            result: RefreshResult::CacheError,
                            diff: Some(diff),
                            error: Some(error),
                        }
                    }
                }
            }
        };
        self.metrics.refreshed(report.result);
        report
    }

    /// Adopts a cache written by someone else (`shield ranges --refresh`):
    /// valid and different from the set in force means apply it. No shrink
    /// guard here: the command that wrote it applied the guard, or the
    /// operator overrode it with `--accept-shrink`.
    pub fn adopt_cache<E: fmt::Display>(
        &mut self,
        apply: impl FnOnce(&RangeSet) -> Result<(), E>,
    ) -> Option<Diff> {
        let mut cached = match cache::read(&self.cache, &self.limits) {
            Ok(Some(cached)) => cached,
            Ok(None) => return None,
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "ignoring the range cache; the set in force stays");
                return None;
            }
        };
        cached.ranges = cached.ranges.for_networks(self.networks);
        // Adopting a cache without the China Network would drop JD Cloud's
        // prefixes the set in force has (a cache written by a `shield
        // ranges --refresh` with another config).
        if !cached.ranges.satisfies(self.networks) && self.current.satisfies(self.networks) {
            tracing::warn!(cache = %self.cache.display(), "ignoring the range cache: it has no JD Cloud ranges and [ranges].china_network = true; the set in force stays");
            return None;
        }
        if cached.ranges.same_prefixes(&self.current) && cached.ranges.etag == self.current.etag {
            self.fetched_at = Some(cached.fetched_at).max(self.fetched_at);
            return None;
        }
        let diff = Diff::between(&self.current, &cached.ranges);
        if let Err(error) = apply(&cached.ranges) {
            tracing::error!(%error, "the range cache could not be applied; the set in force stays");
            return None;
        }
        tracing::info!(source = %cached.ranges.source, added = diff.added.len(), removed = diff.removed.len(), "adopted ranges from the cache");
        self.current = cached.ranges;
        self.fetched_at = Some(cached.fetched_at);
        self.metrics.in_force(&self.current);
        self.metrics.succeeded_at(cached.fetched_at);
        Some(diff)
    }

    fn write_cache(&self) -> Result<(), cache::CacheError> {
        cache::write(
            &self.cache,
            &Cached {
                ranges: self.current.clone(),
                fetched_at: self.fetched_at.unwrap_or_else(SystemTime::now),
            },
        )
    }
}

/// When the next refresh is due: the period with ±10% jitter (so a fleet
/// does not hit the API in lockstep), or after a failure an exponential
/// backoff from 30 s, never longer than the period.
#[derive(Debug, Clone)]
pub struct Schedule {
    period: Duration,
    failures: u32,
}

/// The first retry after a failure.
pub const FIRST_RETRY: Duration = Duration::from_secs(30);

impl Schedule {
    pub fn new(period: Duration) -> Schedule {
        Schedule {
            period,
            failures: 0,
        }
    }

    /// The delay after a refresh that ended with `result`. `unit` is a
    /// uniform random number in [0, 1) for the jitter.
    pub fn next(&mut self, result: RefreshResult, unit: f64) -> Duration {
        if result.is_success() {
            self.failures = 0;
            let jitter = (unit.clamp(0.0, 1.0) * 0.2) - 0.1;
            return self.period.mul_f64(1.0 + jitter);
        }
        self.failures = self.failures.saturating_add(1);
        let factor = 2u32.saturating_pow(self.failures.saturating_sub(1).min(20));
        FIRST_RETRY.saturating_mul(factor).min(self.period)
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// A human age: "3h 12m", "45s".
pub fn format_age(age: Duration) -> String {
    let secs = age.as_secs();
    let mut out = String::new();
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        let _ = write!(out, "{d}d {h}h");
    } else if h > 0 {
        let _ = write!(out, "{h}h {m}m");
    } else if m > 0 {
        let _ = write!(out, "{m}m {s}s");
    } else {
        let _ = write!(out, "{s}s");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranges::Provenance;

    #[test]
    fn labels_are_distinct_lower_snake_case() {
        let labels: BTreeSet<&str> = RefreshResult::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), RefreshResult::ALL.len());
        for label in labels {
            assert!(label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
        }
    }

    #[test]
    fn a_body_that_is_not_utf8_has_its_own_result() {
        let body = vec![0xff, b'1'];
        let source = std::str::from_utf8(&body).unwrap_err();
        let error = RefreshError::Fetch(FetchError::NotUtf8 {
            source_name: "https://api.example/ips".into(),
            source,
        });
        assert_eq!(error.result(), RefreshResult::NotUtf8);
        assert_eq!(error.result().as_str(), "not_utf8");
        assert!(RefreshResult::ALL.contains(&RefreshResult::NotUtf8));
        let (count, text) = crate::error::tests::count_in_chain(error, &source.to_string());
        assert_eq!(count, 1, "{text}");
        assert!(
            text.starts_with(
                "range update not fetched: https://api.example/ips: the body is not UTF-8"
            ),
            "{text}"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_period_and_success_resets_it() {
        let period = Duration::from_secs(600);
        let mut schedule = Schedule::new(period);
        let delays: Vec<u64> = (0..7)
            .map(|_| schedule.next(RefreshResult::Timeout, 0.5).as_secs())
            .collect();
        assert_eq!(delays, vec![30, 60, 120, 240, 480, 600, 600]);
        let after = schedule.next(RefreshResult::Unchanged, 0.0);
        assert_eq!(after, Duration::from_secs(540));
        assert_eq!(schedule.failures(), 0);
        assert_eq!(
            schedule.next(RefreshResult::Updated, 0.999_999).as_secs(),
            659
        );
        assert_eq!(schedule.next(RefreshResult::Shrink, 0.5).as_secs(), 30);
    }

    #[test]
    fn judge_unchanged_changed_and_refused() {
        let current = RangeSet::snapshot();
        let limits = Limits::default();
        let same = RangeSet {
            source: Provenance::Named("x".into()),
            ..current.clone()
        };
        let global = Networks::Global;
        assert_eq!(
            judge(same.clone(), global, &current, &limits, false).unwrap(),
            Outcome::Unchanged {
                source: Provenance::Named("x".into())
            }
        );
        // Same etag, other content: judged as new data.
        let mut sneaky = same.clone();
        sneaky.ipv4.push("10.0.0.0/8".parse().unwrap());
        let error = judge(sneaky, global, &current, &limits, false).unwrap_err();
        assert_eq!(error.result(), RefreshResult::ReservedRange);

        let mut grown = same.clone();
        grown.etag = Some("new".into());
        grown.ipv4.push("198.51.99.0/24".parse().unwrap());
        match judge(grown, global, &current, &limits, false).unwrap() {
            Outcome::Accepted { diff, .. } => {
                assert_eq!(diff.added, vec!["198.51.99.0/24".parse().unwrap()]);
                assert!(diff.removed.is_empty());
                assert_eq!(diff.to_string(), "+ 198.51.99.0/24\n");
            }
            other => panic!("{other:?}"),
        }

        let mut shrunk = same.clone();
        shrunk.etag = Some("new".into());
        shrunk.ipv4.retain(|p| p.prefix() >= 16);
        let error = judge(shrunk.clone(), global, &current, &limits, false).unwrap_err();
        assert_eq!(error.result(), RefreshResult::Shrink);
        assert!(Chain(&error).to_string().contains("--accept-shrink"));
        assert!(matches!(
            judge(shrunk, global, &current, &limits, true),
            Ok(Outcome::Accepted { .. })
        ));
    }

    #[test]
    fn judge_requires_the_china_network_when_asked_for() {
        let current = RangeSet::snapshot();
        let limits = Limits::default();
        let china = Networks::GlobalAndChina;
        // Same etag and prefixes as the snapshot, but no jdcloud_cidrs: not
        // "unchanged", refused with its own result.
        let error = judge(current.clone(), china, &current, &limits, false).unwrap_err();
        assert_eq!(error.result(), RefreshResult::JdcloudMissing);
        assert_eq!(error.result().as_str(), "jdcloud_missing");
        assert!(Chain(&error).to_string().contains("china_network"));

        let mut with = current.clone();
        with.jdcloud = Some(vec!["116.196.0.0/17".parse().unwrap()]);
        match judge(with.clone(), china, &current, &limits, false).unwrap() {
            Outcome::Accepted { diff, ranges } => {
                assert_eq!(diff.added, vec!["116.196.0.0/17".parse().unwrap()]);
                assert_eq!(ranges, with);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            judge(with.clone(), china, &with, &limits, false),
            Ok(Outcome::Unchanged { .. })
        ));
        let mut empty = with.clone();
        empty.jdcloud = Some(Vec::new());
        let error = judge(empty, china, &with, &limits, false).unwrap_err();
        assert_eq!(error.result(), RefreshResult::EmptyJdcloud);
        // Leaving the China Network: the global set replaces it.
        let global = with.clone().for_networks(Networks::Global);
        match judge(global, Networks::Global, &with, &limits, false).unwrap() {
            Outcome::Accepted { diff, .. } => {
                assert_eq!(diff.removed, vec!["116.196.0.0/17".parse().unwrap()])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn turning_the_china_network_on_or_off_is_a_reconfiguration_with_a_refresh_due() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::RangesConfig {
            cache: dir.path().join("ranges.json"),
            ..Default::default()
        };
        let mut with = RangeSet::snapshot();
        with.jdcloud = Some(vec!["116.196.0.0/17".parse().unwrap()]);
        let fetcher = Fetcher::new(super::super::source::FetchOptions::default()).unwrap();
        // A cache with JD Cloud's list, read with china_network = false:
        // the list is not in force.
        let mut refresher = Refresher::new(
            &config,
            fetcher,
            RangeMetrics::default(),
            with.clone(),
            None,
        );
        assert_eq!(refresher.current().jdcloud, None);
        assert!(!refresher.networks_pending());
        assert!(!refresher.reconfigure(&config), "no change, no refresh due");

        config.china_network = true;
        assert!(refresher.reconfigure(&config));
        assert_eq!(refresher.networks, Networks::GlobalAndChina);
        assert!(refresher.networks_pending(), "fetched without jdcloud");
        let decision = judge(
            with.clone(),
            refresher.networks,
            refresher.current(),
            &refresher.limits,
            false,
        );
        let report = refresher.commit(decision, |_| Ok::<(), String>(()));
        assert_eq!(report.result, RefreshResult::Updated);
        assert!(!refresher.networks_pending());
        assert!(refresher.current().contains("116.196.1.1".parse().unwrap()));
        let cached = cache::read(&config.cache, &refresher.limits)
            .unwrap()
            .unwrap();
        assert_eq!(cached.ranges.jdcloud, with.jdcloud);

        config.china_network = false;
        assert!(refresher.reconfigure(&config));
        assert_eq!(refresher.current().jdcloud, None, "dropped at once");
        assert!(!refresher.current().contains("116.196.1.1".parse().unwrap()));
        assert!(!refresher.networks_pending());
    }

    #[test]
    fn ages_read_well() {
        assert_eq!(format_age(Duration::from_secs(42)), "42s");
        assert_eq!(
            format_age(Duration::from_secs(3 * 3600 + 12 * 60)),
            "3h 12m"
        );
        assert_eq!(format_age(Duration::from_secs(2 * 86_400 + 3600)), "2d 1h");
    }
}
