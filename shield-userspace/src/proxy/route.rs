//! Where a site's requests go, and which Host values belong to it.

use std::time::Duration;

use crate::config::SiteConfig;
pub use crate::config::{Upstream, UpstreamProtocol};

/// The HTTP side of one site.
#[derive(Debug)]
pub struct Route {
    /// The `site` label: the first server name.
    pub label: String,
    /// Lowercase server names.
    pub names: Vec<String>,
    pub upstream: Upstream,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub upstream_timeout: Duration,
    /// WebSocket upgrades are passed to the upstream (`websockets`).
    pub websockets: bool,
}

impl Route {
    pub fn new(config: &SiteConfig) -> Route {
        Route {
            label: config.label().to_owned(),
            names: config
                .server_names
                .iter()
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            upstream: config.upstream.clone(),
            header_timeout: config.header_timeout,
            idle_timeout: config.idle_timeout,
            upstream_timeout: config.upstream_timeout,
            websockets: config.websockets,
        }
    }

    pub fn serves(&self, host: &str) -> bool {
        self.names.iter().any(|n| n == host)
    }
}
