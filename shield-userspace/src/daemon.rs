//! `shield run`: wires config, ranges and the dataplane together, then
//! waits for signals. SIGHUP reloads; SIGTERM and SIGINT exit and leave the
//! XDP program pinned, so enforcement outlives the process.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    config::Config,
    dataplane::{self, Dataplane, DataplaneSettings, PinLayout},
    ranges::{self, RangeSet},
    tls::{Frontend, TlsMetrics},
};

pub struct Daemon {
    config_path: PathBuf,
    config: Config,
    ranges: RangeSet,
    dataplane: Option<Dataplane>,
    frontend: Option<Frontend>,
    pub registry: prometheus_client::registry::Registry,
}

impl Daemon {
    /// Loads the config and brings the dataplane up. Enforcement starts
    /// here, before any network request.
    pub fn start(config_path: &Path) -> anyhow::Result<Daemon> {
        let config = Config::load(config_path).context("fix the config, then start again")?;
        let ranges = RangeSet::snapshot();
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
        let tls_metrics = TlsMetrics::register(&mut registry);
        let frontend = if config.sites.is_empty() {
            tracing::info!("no [[site]]: no TLS listener (XDP-only)");
            None
        } else {
            let frontend = Frontend::start(&config, tls_metrics).context(
                "the TLS frontend could not start; check the [[site]] files and listen addresses",
            )?;
            Some(frontend)
        };
        tracing::info!(
            source = %ranges.source,
            ipv4 = ranges.ipv4.len(),
            ipv6 = ranges.ipv6.len(),
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

    /// Re-reads the config; a bad one changes nothing.
    fn reload(&mut self) {
        let config = match Config::load(&self.config_path) {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(%error, "reload refused: keeping the running config");
                return;
            }
        };
        if config.xdp.interfaces != self.config.xdp.interfaces
            || config.xdp.mode != self.config.xdp.mode
        {
            tracing::warn!(
                "[xdp].interfaces and [xdp].mode apply on restart; other changes apply now"
            );
        }
        // TLS first: it validates every file before swapping, so a refusal
        // there leaves both layers as they were.
        if let Some(frontend) = &self.frontend {
            if let Err(error) = frontend.reload(&config) {
                tracing::error!(%error, "reload refused: keeping the running config");
                return;
            }
        }
        if let Some(dataplane) = self.dataplane.as_mut() {
            let allowlist = ranges::tagged_allowlist(&self.ranges, &config.ranges.extra_allow);
            let settings = DataplaneSettings::from_config(&config);
            match dataplane::write_policy(dataplane.maps(), &settings, &allowlist) {
                Ok(stats) => {
                    tracing::info!(added = stats.added, removed = stats.removed, "reloaded")
                }
                Err(error) => {
                    tracing::error!(%error, "reload could not update the kernel maps; keeping the running config");
                    return;
                }
            }
        }
        self.config = config;
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
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading {}", self.config_path.display());
                    self.reload();
                }
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
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
