//! `cargo xtask run`: with arguments, `shield ARGS`.

use anyhow::bail;

use crate::{build, shell};

pub fn run(args: Vec<String>) -> anyhow::Result<()> {
    build::all(false)?;
    if args.is_empty() {
        bail!("the lab (`cargo xtask run` without arguments) is not built yet; use `cargo xtask run -- ARGS` to run shield");
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
