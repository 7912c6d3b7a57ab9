//! `cargo xtask setup | build | run | test | fuzz | bench | dist`.
//!
//! Each command sets up what it needs first, so a fresh clone needs no
//! manual step (`cargo xtask test` on a new Debian 12 host just works).

mod bench;
mod bench_tls;
mod build;
mod compat;
mod dist;
mod fuzz;
mod lab;
mod run;
mod setup;
mod shell;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "shield's development tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything the build and the tests need (idempotent).
    Setup,
    /// Build shield and its XDP program.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Without arguments: the lab. With `-- ARGS`: run `shield ARGS`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the .deb into target/dist (and check what it holds).
    Dist,
    /// Every test, privileged ones included (needs root); what CI runs.
    Test {
        /// The kernel-versus-reference differential on ten million frames
        /// instead of one million.
        #[arg(long)]
        long: bool,
    },
    /// Build the previous release's shield for the upgrade test (once) and
    /// print its path, for `SHIELD_PREVIOUS_BIN` when running that test alone.
    PreviousShield,
    /// The fuzz targets in fuzz/ (cargo-fuzz, nightly), 60 s each by default.
    Fuzz {
        /// One of `request_head`, `response_body`, `config`, `range_feeds`; all when omitted.
        target: Option<String>,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// The benchmarks of docs/BENCHMARKS.md (needs root).
    Bench {
        /// `xdp`, `ranges` or `tls`; all when omitted.
        which: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::all(),
        Task::Build { release } => build::all(release),
        Task::Run { args } => run::run(args),
        Task::Dist => dist::build().and_then(|deb| dist::check(&deb)),
        Task::Test { long } => test::all(long),
        Task::PreviousShield => {
            println!("{}", compat::previous_shield()?.display());
            Ok(())
        }
        Task::Fuzz { target, seconds } => fuzz::run(target.as_deref(), seconds),
        Task::Bench { which } => bench::run(which.as_deref()),
    }
}
