//! `cargo xtask run`: without arguments the lab; with `-- ARGS`, `shield ARGS`.

use std::path::PathBuf;

use crate::{build, lab, shell};

pub fn run(args: Vec<String>) -> anyhow::Result<()> {
    build::all(false)?;
    if args.is_empty() {
        return lab::run(&shield_binary());
    }
    let mut cargo_args = vec![
        "run",
        "--quiet",
        "--package",
        "shield-userspace",
        "--bin",
        "shield",
        "--",
    ];
    cargo_args.extend(args.iter().map(String::as_str));
    shell::cargo(&cargo_args)
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
