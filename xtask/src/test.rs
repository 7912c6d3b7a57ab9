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
    let deb = dist::build()?;
    dist::check(&deb)?;
    container(&deb)
}

/// The image built from the package, run in a lab: it needs the .deb, so
/// it runs here (ignored by the `cargo test` above, which precedes the
/// package). First run on a host ~1.5 min (the base image is made with
/// debootstrap and cached), later ones well under a minute.
fn container(deb: &std::path::Path) -> anyhow::Result<()> {
    let result = shell::cargo_with_env(
        &[
            "test",
            "-p",
            "shield-tests",
            "--test",
            "container_e2e",
            "--",
            "--ignored",
            "--exact",
            "the_image_from_the_deb_enforces_with_the_units_capabilities_and_survives_a_pod_swap",
        ],
        &[("SHIELD_DEB", deb.as_os_str())],
    );
    sweep_leftovers()?;
    result
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

/// The container test's own podman store (tests/tests/container_e2e.rs).
const TEST_PODMAN: [&str; 4] = [
    "--root",
    "/var/cache/shield-tests/podman",
    "--runroot",
    "/run/shield-tests-podman",
];

/// Removes namespaces, pins and containers left by a killed test run.
pub fn sweep_leftovers() -> anyhow::Result<()> {
    // Everything in that store but its cached base image is a test's.
    if std::path::Path::new(TEST_PODMAN[1]).exists() {
        let mut rm = TEST_PODMAN.to_vec();
        rm.extend(["--runtime", "runc", "rm", "--all", "--force", "--time", "0"]);
        shell::status("podman", &rm)?;
        let mut list = TEST_PODMAN.to_vec();
        list.extend(["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        for image in shell::output("podman", &list)?
            .lines()
            .filter(|i| i.starts_with("localhost/"))
        {
            let mut rmi = TEST_PODMAN.to_vec();
            rmi.extend(["rmi", image]);
            shell::status("podman", &rmi)?;
        }
    }
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
