//! A `[[site]]` block: its names, files, upstream, clocks and HTTP/2
//! limits, with their defaults and the checks only a whole site allows.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::{ClientCa, InvalidKey, SpkiPin, Upstream};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    pub server_names: Vec<String>,
    #[serde(default = "default_site_listen")]
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The zone's AOP CA files, or [`ClientCa::CloudflareShared`].
    pub client_ca: Vec<ClientCa>,
    /// When not empty, a client certificate's key must be one of these.
    #[serde(default)]
    pub client_spki_pins: Vec<SpkiPin>,
    #[serde(default)]
    pub client_crl: Vec<PathBuf>,
    pub upstream: Upstream,
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long the upstream may take to answer with response headers
    /// before the client gets a 504.
    #[serde(default = "default_upstream_timeout", with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: streams past it are
    /// refused (`REFUSED_STREAM`), so one connection never has more
    /// requests than this at the upstream at once.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams a client may open and reset before shield has
    /// accepted them; one more is a GOAWAY (the rapid-reset attack, where
    /// each reset stream still costs the server its setup).
    #[serde(default = "default_max_pending_reset_streams")]
    pub max_pending_reset_streams: u32,
    /// Bytes of a response buffered per HTTP/2 stream while the client's
    /// flow-control window is closed; past it shield stops reading the
    /// upstream. Bounds what a reader that never opens its window costs.
    #[serde(default = "default_max_send_buffer_bytes")]
    pub max_send_buffer_bytes: u32,
    /// HTTP/1.1 `Upgrade: websocket` requests go to the upstream, and after
    /// its 101 the bytes flow both ways; `false` answers them 403.
    #[serde(default = "default_websockets")]
    pub websockets: bool,
}

/// A site's HTTP/2 limits, as the connection's h2 settings apply them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H2Limits {
    pub max_concurrent_streams: u32,
    pub max_pending_reset_streams: u32,
    pub max_send_buffer_bytes: u32,
}

/// The `site` label of what belongs to no configured site: a handshake
/// with an unknown SNI, a port-80 request with an unknown Host.
pub const NO_SITE: &str = "";

impl SiteConfig {
    /// The site's name in metrics (`site` label) and logs.
    pub fn label(&self) -> &str {
        self.server_names
            .first()
            .map(String::as_str)
            .unwrap_or(NO_SITE)
    }

    pub fn h2_limits(&self) -> H2Limits {
        H2Limits {
            max_concurrent_streams: self.max_concurrent_streams,
            max_pending_reset_streams: self.max_pending_reset_streams,
            max_send_buffer_bytes: self.max_send_buffer_bytes,
        }
    }
}

fn default_websockets() -> bool {
    true
}

fn default_site_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 443))
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout() -> Duration {
    // Cloudflare keeps idle origin connections for 900 s.
    Duration::from_secs(900)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_upstream_timeout() -> Duration {
    // nginx's proxy_read_timeout default; Cloudflare itself waits 100 s.
    Duration::from_secs(60)
}
fn default_max_concurrent_streams() -> u32 {
    // Cloudflare opens up to 200 streams per origin connection and honours
    // a lower advertised value; 200 lets it use what it would.
    200
}
fn default_max_pending_reset_streams() -> u32 {
    // h2's own default, the one its rapid-reset fix chose: a legitimate
    // client cancels a few requests at a time, never dozens unaccepted.
    20
}
fn default_max_send_buffer_bytes() -> u32 {
    // hyper's default (400 KiB): enough to keep a stream busy at the
    // stream window h2 grants, small enough that 200 stalled streams
    // stay under 80 MiB per connection.
    400 * 1024
}

/// Sane ranges for the HTTP/2 limits: below, legitimate traffic breaks;
/// above, the limit no longer bounds anything a host could afford.
const MAX_CONCURRENT_STREAMS: std::ops::RangeInclusive<u32> = 1..=10_000;
const PENDING_RESET_STREAMS: std::ops::RangeInclusive<u32> = 1..=10_000;
/// One maximal frame up to 16 MiB (h2 asserts the value fits a u32).
const SEND_BUFFER_BYTES: std::ops::RangeInclusive<u32> = 16 * 1024..=16 * 1024 * 1024;

pub(super) fn validate_sites(sites: &[SiteConfig]) -> Result<(), InvalidKey> {
    let mut names = BTreeSet::new();
    for (index, site) in sites.iter().enumerate() {
        let key = |field: &str| format!("site[{index}].{field}");
        if site.server_names.is_empty() {
            return Err(InvalidKey::new(
                key("server_names"),
                "needs at least one name",
            ));
        }
        for name in &site.server_names {
            let lower = name.to_ascii_lowercase();
            if lower.is_empty() || lower.contains(['/', ':', ' ']) {
                return Err(InvalidKey::new(
                    key("server_names"),
                    format!("{name:?} is not a host name"),
                ));
            }
            // SNI picks the site, so a name may belong to one site per listener.
            if !names.insert((site.listen, lower)) {
                return Err(InvalidKey::new(
                    key("server_names"),
                    format!(
                        "{name:?} is already served by another site on {}",
                        site.listen
                    ),
                ));
            }
        }
        if site.client_ca.is_empty() {
            return Err(InvalidKey::new(
                key("client_ca"),
                format!(
                    "needs your zone's AOP CA file, or [\"{}\"]",
                    ClientCa::CLOUDFLARE_SHARED
                ),
            ));
        }
        if site.max_connections == 0 {
            return Err(InvalidKey::new(
                key("max_connections"),
                "must be at least 1",
            ));
        }
        for (field, value, range) in [
            (
                "max_concurrent_streams",
                site.max_concurrent_streams,
                MAX_CONCURRENT_STREAMS,
            ),
            (
                "max_pending_reset_streams",
                site.max_pending_reset_streams,
                PENDING_RESET_STREAMS,
            ),
            (
                "max_send_buffer_bytes",
                site.max_send_buffer_bytes,
                SEND_BUFFER_BYTES,
            ),
        ] {
            if !range.contains(&value) {
                return Err(InvalidKey::new(
                    key(field),
                    format!("{value} is outside {} to {}", range.start(), range.end()),
                ));
            }
        }
        for (field, value) in [
            ("handshake_timeout", site.handshake_timeout),
            ("header_timeout", site.header_timeout),
            ("idle_timeout", site.idle_timeout),
            ("upstream_timeout", site.upstream_timeout),
        ] {
            if value.is_zero() {
                return Err(InvalidKey::new(key(field), "must be longer than zero"));
            }
        }
    }
    Ok(())
}
