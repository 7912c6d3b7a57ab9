//! `cargo xtask build`: the toolchain, then shield (whose build script
//! compiles the XDP program).

use crate::{setup, shell};

pub fn all(release: bool) -> anyhow::Result<()> {
    setup::build_tools()?;
    let mut args = vec!["build", "--package", "shield-userspace"];
    if release {
        args.push("--release");
    }
    shell::cargo(&args)
}
