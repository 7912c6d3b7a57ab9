//! `shield run`: wires config, ranges and the dataplane together, then
//! waits for signals. SIGHUP reloads; SIGTERM and SIGINT exit and leave the
//! XDP program pinned, so enforcement outlives the process.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    config::Config,
    dataplane::{self, Dataplane, PinLayout},
    error::Chain,
    listen::Frontend,
    proxy::metrics::HttpMetrics,
    ranges::{
        self,
        metrics::RangeMetrics,
        refresh::{self, Refresher, Schedule},
        source::{FetchOptions, Fetcher},
        Networks, RangeSet,
    },
    tls::TlsMetrics,
};

pub struct Daemon {
    config_path: PathBuf,
    config: Config,
    /// The range set in force and its refresh state.
    ranges: Refresher,
    dataplane: Option<Dataplane>,
    frontend: Option<Frontend>,
    pub registry: prometheus_client::registry::Registry,
}

impl Daemon {
    /// Loads the config and brings the dataplane up. Enforcement starts
    /// here, before any network request.
    pub fn start(config_path: &Path) -> anyhow::Result<Daemon> {
        let config = Config::load(config_path).context("fix the config, then start again")?;
        // Before anything is attached: a site whose files are unusable
        // would stop the start half-way, with XDP up and no TLS listener.
        crate::tls::check(&config).context(
            "a [[site]]'s certificate, key, CA or CRL file is unusable; fix it, then start again",
        )?;
        // Last known good from the cache, else the embedded snapshot: no
        // network request happens before enforcement starts.
        let (ranges, fetched_at) = ranges::cache::load_or_snapshot(
            &config.ranges.cache,
            &ranges::validate::Limits::from_config(&config.ranges),
        );
        let ranges = ranges.for_networks(Networks::from_config(&config.ranges));
        let dataplane = if config.xdp_enabled() {
            let allowlist = ranges::tagged_allowlist(&ranges, &config.ranges.extra_allow);
            let dataplane = Dataplane::start(&config, PinLayout::from_env(), &allowlist)
                .context("XDP could not be set up; nothing was left half attached")?;
            for interface in dataplane.interfaces() {
                tracing::info!(
                    interface = %interface.name,
                    mode = interface.mode.name(),
                    attachment = ?interface.attachment,
                    "enforcing on interface"
                );
            }
            Some(dataplane)
        } else {
            tracing::info!("no [xdp].interfaces: XDP is off (TLS-only)");
            None
        };
        let mut registry = prometheus_client::registry::Registry::default();
        if config.xdp_enabled() {
            registry.register_collector(Box::new(crate::metrics::XdpCollector::new(
                PinLayout::from_env(),
            )));
        }
        if let Some(dropped) = crate::logging::dropped_lines() {
            registry.register_collector(Box::new(dropped));
        }
        crate::proxy::access::set_enabled(config.log.access);
        let tls_metrics = TlsMetrics::register(&mut registry);
        let http_metrics = HttpMetrics::register(&mut registry);
        let fetcher = Fetcher::new(FetchOptions::default())
            .context("cannot set up the HTTPS client for range refreshes")?;
        let ranges = Refresher::new(
            &config.ranges,
            fetcher,
            RangeMetrics::register(&mut registry),
            ranges,
            fetched_at,
        );
        if ranges.networks_pending() {
            warn_networks_pending(&config, ranges.current());
        }
        let frontend = if config.sites.is_empty() {
            tracing::info!("no [[site]]: no TLS listener (XDP-only)");
            None
        } else {
            let frontend = Frontend::start(&config, tls_metrics, http_metrics).context(
                "the TLS frontend could not start; check the [[site]] files and listen addresses",
            )?;
            Some(frontend)
        };
        tracing::info!(
            source = %ranges.current().source,
            ipv4 = ranges.current().ipv4.len(),
            ipv6 = ranges.current().ipv6.len(),
            jdcloud = ranges.current().jdcloud_prefixes().count(),
            extra = config.ranges.extra_allow.len(),
            enforce = config.xdp.enforce,
            "shield ready"
        );
        Ok(Daemon {
            config_path: config_path.to_owned(),
            config,
            ranges,
            dataplane,
            frontend,
            registry,
        })
    }

    /// Re-reads the config; a bad one changes nothing. True when
    /// `[ranges].china_network` changed, so a range refresh is due now.
    fn reload(&mut self) -> bool {
        let config = match Config::load(&self.config_path) {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(error = %Chain(&error), "reload refused: keeping the running config");
                return false;
            }
        };
        if config.xdp.interfaces != self.config.xdp.interfaces
            || config.xdp.mode != self.config.xdp.mode
        {
            tracing::warn!(
                "[xdp].interfaces and [xdp].mode apply on restart; other changes apply now"
            );
        }
        if config.log.format != self.config.log.format {
            tracing::warn!("[log].format applies on restart; [log].access applies now");
        }
        if !self.apply_reload(&config) {
            return false;
        }
        crate::proxy::access::set_enabled(config.log.access);
        let networks_changed = self.ranges.reconfigure(&config.ranges);
        self.config = config;
        // `shield ranges --refresh` may have written a new cache.
        self.adopt_range_cache();
        if networks_changed {
            tracing::info!(
                china_network = self.config.ranges.china_network,
                "[ranges].china_network changed; a range refresh is due now"
            );
            if self.ranges.networks_pending() {
                warn_networks_pending(&self.config, self.ranges.current());
            }
        }
        networks_changed
    }

    /// Applies a loaded config to both layers; false (and logged) when
    /// either refused it, with the TLS layer unchanged.
    fn apply_reload(&mut self, config: &Config) -> bool {
        // TLS is prepared first (every file read and checked, listeners
        // bound) but applied last, after the kernel maps: a refusal by
        // either leaves the TLS layer as it was.
        let tls = match &self.frontend {
            Some(frontend) => match frontend.prepare_reload(config) {
                Ok(prepared) => Some(prepared),
                Err(error) => {
                    tracing::error!(error = %Chain(&error), "reload refused: keeping the running config");
                    return false;
                }
            },
            None => None,
        };
        if let Some(dataplane) = self.dataplane.as_mut() {
            // Turning `china_network` off takes JD Cloud's prefixes out now;
            // turning it on adds them with the refresh that follows.
            let in_force = self
                .ranges
                .current()
                .clone()
                .for_networks(Networks::from_config(&config.ranges));
            let allowlist = ranges::tagged_allowlist(&in_force, &config.ranges.extra_allow);
            let settings = match dataplane.reload_settings(config) {
                Ok(settings) => settings,
                Err(error) => {
                    tracing::error!(error = %Chain(&error), "reload refused: cannot apply [xdp].syn_cookies; keeping the running config");
                    return false;
                }
            };
            match dataplane::write_policy(dataplane.maps(), &settings, &allowlist) {
                Ok(stats) => {
                    tracing::info!(added = stats.added, removed = stats.removed, "reloaded")
                }
                Err(error) => {
                    // The allowlist apply is add-before-remove, so whatever
                    // part landed drops no address that both the old and
                    // the new config allow.
                    tracing::error!(error = %Chain(&error), "reload could not update the kernel maps; keeping the running TLS config");
                    return false;
                }
            }
        }
        if let Some(tls) = tls {
            tls.commit();
        }
        true
    }

    /// Applies a range set through the single gapless apply path (add
    /// before remove), with the running `extra_allow`. The error is the
    /// whole cause chain, as the refresh report and log print it.
    fn apply_ranges(
        dataplane: &mut Option<Dataplane>,
        config: &Config,
        set: &RangeSet,
    ) -> Result<(), String> {
        match dataplane {
            Some(dataplane) => dataplane
                .maps()
                .apply_allowlist(&ranges::tagged_allowlist(set, &config.ranges.extra_allow))
                .map(|_| ())
                .map_err(|error| Chain(&error).to_string()),
            None => Ok(()),
        }
    }

    /// Picks up a cache written by `shield ranges --refresh`.
    fn adopt_range_cache(&mut self) {
        let Daemon {
            ranges,
            dataplane,
            config,
            ..
        } = self;
        ranges.adopt_cache(|set| Daemon::apply_ranges(dataplane, config, set));
    }

    /// Applies (or refuses) a finished refresh; returns when the next is due.
    fn finish_refresh(
        &mut self,
        decision: Result<refresh::Outcome, refresh::RefreshError>,
        schedule: &mut Schedule,
    ) -> tokio::time::Instant {
        let Daemon {
            ranges,
            dataplane,
            config,
            ..
        } = self;
        let report = ranges.commit(decision, |set| Daemon::apply_ranges(dataplane, config, set));
        let delay = schedule.next(report.result, rand::random::<f64>());
        tracing::debug!(result = %report.result, next_in = ?delay, "range refresh done");
        tokio::time::Instant::now() + delay
    }

    pub async fn run(mut self) -> anyhow::Result<()> {
        let registry = std::sync::Arc::new(std::mem::take(&mut self.registry));
        let metrics_server = crate::metrics::serve(self.config.metrics.listen, registry)
            .await
            .context("metrics could not start")?;
        // Who is being dropped, sampled and rate-limited in the kernel.
        let drop_logger = match &self.dataplane {
            Some(dataplane) => {
                let names = dataplane
                    .interfaces()
                    .iter()
                    .map(|i| (i.ifindex, i.name.clone()))
                    .collect();
                Some(
                    dataplane::events::spawn_logger(dataplane.layout(), names)
                        .context("cannot read drop events")?,
                )
            }
            None => None,
        };
        let mut hangup =
            signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
        let mut terminate =
            signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut interrupt =
            signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        // systemd (Type=notify): ready only now that XDP is attached, TLS
        // listens and metrics are served. Outside systemd this does nothing.
        if let Err(error) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            tracing::warn!(%error, "could not tell systemd that shield is ready");
        }
        // Refreshes run in their own task so signals are served while a
        // fetch waits on the network; the maps are only written here.
        let period = match self.config.ranges.refresh {
            crate::config::Refresh::Every(period) => Some(period),
            crate::config::Refresh::Off => None,
        };
        let mut schedule = Schedule::new(period.unwrap_or(Duration::MAX));
        // The first refresh soon after start (jittered), not at once: a
        // fleet restarted together should not hit the API in lockstep. But
        // at once when the set in force lacks the China Network the config
        // asks for: JD Cloud's visitors are dropped until it arrives.
        let first_delay = if self.ranges.networks_pending() {
            Duration::ZERO
        } else {
            refresh::FIRST_RETRY.mul_f64(rand::random::<f64>())
        };
        let mut next_refresh = tokio::time::Instant::now() + first_delay;
        let mut in_flight: Option<tokio::task::JoinHandle<_>> = None;
        let mut cache_poll = tokio::time::interval(CACHE_POLL);
        let mut cache_seen = ranges::cache::modified(&self.config.ranges.cache);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next_refresh), if period.is_some() && in_flight.is_none() => {
                    let fetcher = self.ranges.fetcher().clone();
                    let sources = self.ranges.sources.clone();
                    let networks = self.ranges.networks;
                    let current = self.ranges.current().clone();
                    let limits = self.ranges.limits;
                    in_flight = Some(tokio::spawn(async move {
                        refresh::check(&fetcher, &sources, networks, &current, &limits, false).await
                    }));
                }
                joined = finished(&mut in_flight) => {
                    in_flight = None;
                    match joined {
                        Ok(decision) => {
                            next_refresh = self.finish_refresh(decision, &mut schedule);
                            cache_seen = ranges::cache::modified(&self.config.ranges.cache);
                        }
                        Err(error) => {
                            tracing::error!(%error, "range refresh task failed; retrying later");
                            next_refresh = tokio::time::Instant::now()
                                + schedule.next(crate::ranges::metrics::RefreshResult::Network, 0.5);
                        }
                    }
                }
                _ = cache_poll.tick() => {
                    let modified = ranges::cache::modified(&self.config.ranges.cache);
                    if modified != cache_seen {
                        cache_seen = modified;
                        self.adopt_range_cache();
                    }
                }
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading {}", self.config_path.display());
                    if self.reload() {
                        // A fetch started under the old networks would
                        // commit a set the new config does not ask for.
                        if let Some(task) = in_flight.take() {
                            task.abort();
                        }
                        next_refresh = tokio::time::Instant::now();
                    }
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        if let Some(task) = in_flight {
            task.abort();
        }
        metrics_server.abort();
        if let Some(logger) = drop_logger {
            logger.abort();
        }
        if let Some(frontend) = &self.frontend {
            frontend.shutdown();
        }
        tracing::info!(
            "exiting; the XDP program stays attached (pinned). `shield detach` removes it"
        );
        Ok(())
    }
}

/// The set in force lacks the China Network that `[ranges].china_network`
/// asks for: say so, naming the key, and when it will come.
fn warn_networks_pending(config: &Config, current: &RangeSet) {
    let when = match config.ranges.refresh {
        crate::config::Refresh::Every(_) => "the refresh running now",
        crate::config::Refresh::Off => {
            "`shield ranges --refresh` ([ranges].refresh = \"off\", so shield will not fetch them)"
        }
    };
    tracing::warn!(
        source = %current.source,
        "[ranges].china_network = true, but the ranges in force have no China Network (JD Cloud) ranges (the embedded snapshot never has them, nor does a cache fetched without them); JD Cloud visitors are dropped until {when} brings them"
    );
}

/// How often the daemon looks for a cache written by
/// `shield ranges --refresh` (a metadata read, nothing more).
const CACHE_POLL: Duration = Duration::from_secs(10);

/// Waits for the task if there is one; never resolves otherwise.
async fn finished<T>(
    task: &mut Option<tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}
