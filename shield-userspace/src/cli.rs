//! The `shield` command line: parsing only; each command's work lives in
//! the module it belongs to.

use std::{net::IpAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "shield",
    version,
    about = "Origin shield for hosts behind Cloudflare: XDP allowlist of Cloudflare's ranges plus mTLS Authenticated Origin Pulls"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// Path of shield.toml.
    #[arg(long, short, default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: attach XDP, keep ranges fresh, terminate mTLS, serve metrics.
    Run(ConfigArg),
    /// Parse and validate the config, print the effective config; exit 0 if valid, 1 if not.
    CheckConfig(ConfigArg),
    /// The verdict the dataplane gives a source, and why; exit 0 pass, 1 drop.
    Classify {
        /// Source address to judge.
        address: IpAddr,
        /// Destination port.
        #[arg(long, default_value_t = 443)]
        port: u16,
        /// Destination address (of the source's family), judged against
        /// `[xdp].protected_destinations`; any protected one by default.
        #[arg(long)]
        destination: Option<IpAddr>,
        #[arg(long, value_enum, default_value_t = ProtoArg::Tcp)]
        proto: ProtoArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// The ranges in force: source, age, etag and prefixes with their network.
    Ranges {
        /// Fetch, validate, show the difference and write the cache; the
        /// running daemon applies it within seconds (or at once on SIGHUP).
        #[arg(long)]
        refresh: bool,
        /// Accept an update that removes more than half of the allowed
        /// address space (only with --refresh).
        #[arg(long, requires = "refresh")]
        accept_shrink: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Attached interfaces, mode and counters by reason, read from the pinned maps.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions (for packaging).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page in roff (for packaging).
    #[command(hide = true)]
    Manpage,
    /// Zone-level Authenticated Origin Pulls with a CA of this host's own.
    #[command(subcommand)]
    Aop(AopCommand),
    /// Remove the XDP program and its pins (all interfaces, or one).
    Detach {
        #[arg(long)]
        iface: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AopCommand {
    /// Make a CA and a client certificate, make shield accept the CA (config
    /// edit, reload, verified handshake), upload the certificate to the
    /// zone, wait until it is active, then enable AOP for the zone.
    Enroll(Box<EnrollArgs>),
}

#[derive(Debug, Clone, clap::Args)]
pub struct EnrollArgs {
    /// The zone's id (Cloudflare dashboard: the zone's overview page).
    #[arg(long)]
    pub zone: String,
    /// File holding the API token (permission "SSL and Certificates
    /// Write" on the zone); must be mode 0600 or stricter.
    #[arg(long)]
    pub api_token_file: PathBuf,
    /// Print each step (files, config edit, reload, requests) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The site whose client_ca gains the CA: one of its server_names
    /// (needed when the config has several sites).
    #[arg(long, value_name = "SERVER_NAME")]
    pub site: Option<String>,
    /// Directory for the CA and client certificate and their keys.
    #[arg(long, default_value = "/etc/shield/aop")]
    pub dir: PathBuf,
    /// Replace files from an earlier enrollment in --dir.
    #[arg(long)]
    pub overwrite: bool,
    /// Reload this daemon process with SIGHUP instead of `systemctl reload`.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// The systemd unit to reload (without --pid).
    #[arg(long, default_value = "shield", conflicts_with = "pid")]
    pub unit: String,
    /// Where the handshake check reaches the site (default: its listen
    /// address, loopback for a wildcard).
    #[arg(long, value_name = "ADDR:PORT")]
    pub verify_address: Option<std::net::SocketAddr>,
    /// How long shield may take to accept the new CA after the reload.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub verify_timeout: std::time::Duration,
    /// How long to wait for Cloudflare to report the certificate active.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub activation_timeout: std::time::Duration,
    /// Timeout of each API request.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, hide = true)]
    pub api_timeout: std::time::Duration,
    /// Base URL of the Cloudflare API (tests: a local fake).
    #[arg(long, default_value = crate::aop::api::DEFAULT_BASE, hide = true)]
    pub api_base: String,
    /// PEM file of the only CAs trusted for the API (tests: the fake's CA).
    #[arg(long, hide = true)]
    pub api_ca: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtoArg {
    Tcp,
    Udp,
}

impl From<ProtoArg> for shield_common::PortProtocol {
    fn from(value: ProtoArg) -> Self {
        match value {
            ProtoArg::Tcp => shield_common::PortProtocol::Tcp,
            ProtoArg::Udp => shield_common::PortProtocol::Udp,
        }
    }
}
