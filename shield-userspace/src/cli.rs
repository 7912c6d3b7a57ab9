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
    /// Remove the XDP program and its pins (all interfaces, or one).
    Detach {
        #[arg(long)]
        iface: Option<String>,
    },
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
