//! `cargo xtask build`: the toolchain, then shield (whose build script
//! compiles the XDP program).

use crate::{setup, shell};

pub fn all(release: bool) -> anyhow::Result<()> {
    setup::build_tools()?;
    workspace(release)
}

/// `cargo build` of the workspace's default members, the one build that
/// `build`, `run`, `test` and `dist` all make, so that each finds what the
/// others built fresh. Building `--package shield-userspace` alone is not
/// the same build: cargo resolves features for the packages selected, and
/// shield-common, a member in its own right here, would lose its `default`
/// feature there, which makes it and everything above it a second build.
pub fn workspace(release: bool) -> anyhow::Result<()> {
    let mut args = vec!["build"];
    if release {
        args.push("--release");
    }
    shell::cargo(&args)
}
