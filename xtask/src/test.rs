//! `cargo xtask test`: setup, then every test: unit, BPF test-run,
//! differential and end-to-end in network namespaces, plus fmt and clippy.
//! CI (`.ci/run`) calls exactly this, as root with CI=true, where a
//! privileged test that cannot run fails instead of skipping.

use anyhow::{bail, Context as _};

use crate::{compat, dist, setup, shell};

/// Prefix of what the end-to-end tests create (see tests/src/lib.rs).
const TEST_PREFIX: &str = "shtest-";

/// Frames of the differential test under `--long`.
const LONG_DIFFERENTIAL: &str = "10000000";

pub fn all(long: bool) -> anyhow::Result<()> {
    if !shell::is_root() {
        bail!("`cargo xtask test` runs privileged tests (XDP, network namespaces): run it as root");
    }
    setup::all()?;
    sweep_leftovers()?;
    shell::cargo(&["fmt", "--all", "--", "--check"])?;
    shell::cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    clippy_ebpf()?;
    shell::status(
        "promtool",
        &[
            "test",
            "rules",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../deploy/prometheus/shield-alerts.test.yml"
            ),
        ],
    )?;
    crate::build::workspace(false)?;
    if long {
        std::env::set_var("SHIELD_DIFF_CASES", LONG_DIFFERENTIAL);
    }
    // The upgrade test starts on the pins of this earlier shield.
    let previous = compat::previous_shield()?;
    let result = shell::cargo_with_env(
        &["test", "--", "--test-threads=2"],
        &[(compat::PREVIOUS_BIN_ENV, previous.as_os_str())],
    );
    sweep_leftovers()?;
    result?;
    crate::fuzz::run(None, 60)?;
    // The lab behind `cargo xtask run`, unattended for a while.
    crate::lab::smoke(&crate::run::shield_binary())?;
    // The package: built in release and checked (contents, conffile, unit).
    dist::check(&dist::build()?)
}

/// The eBPF crates, which the workspace's clippy leaves out (they build
/// only for the BPF target, with nightly and a `core` of their own). Their
/// own target directory, so this never invalidates the build scripts'
/// nested builds.
fn clippy_ebpf() -> anyhow::Result<()> {
    let status = std::process::Command::new("cargo")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("CARGO_TARGET_DIR", "target/ebpf-clippy")
        .args([
            "+nightly",
            "clippy",
            "--package",
            "shield-ebpf",
            "--package",
            "shield-test-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ])
        .status()
        .context("cannot start cargo +nightly clippy")?;
    if !status.success() {
        bail!("clippy refused the eBPF crates ({status})");
    }
    Ok(())
}

/// Removes namespaces and pins left by a killed test run.
pub fn sweep_leftovers() -> anyhow::Result<()> {
    let namespaces = shell::output("ip", &["netns", "list"])?;
    for line in namespaces.lines() {
        if let Some(name) = line
            .split_whitespace()
            .next()
            .filter(|n| n.starts_with(TEST_PREFIX))
        {
            shell::status("ip", &["netns", "del", name])?;
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TEST_PREFIX) {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
    }
    Ok(())
}
