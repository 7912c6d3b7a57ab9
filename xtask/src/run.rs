//! `cargo xtask run`: without arguments the lab; with `-- ARGS`, `shield ARGS`.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::{build, lab, shell};

pub fn run(args: Vec<String>) -> anyhow::Result<()> {
    build::all(false)?;
    if args.is_empty() {
        return lab::run(&shield_binary());
    }
    // The binary itself rather than `cargo run --package shield-userspace`,
    // which would build the package alone (see `build::workspace`).
    let shield = shield_binary();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    shell::status(shield.to_str().context("target path is not UTF-8")?, &args)
}

pub fn shield_binary() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let target = if target.is_absolute() {
        target
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(target)
    };
    target.join("debug").join("shield")
}
