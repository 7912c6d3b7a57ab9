//! `cargo xtask fuzz [TARGET] [--seconds N]`: the cargo-fuzz targets in
//! `fuzz/` (nightly, libFuzzer), each from its committed seeds in
//! `fuzz/corpus/TARGET`. A crash leaves its input in `fuzz/artifacts/`
//! and fails the task.

use std::{path::Path, process::Command};

use anyhow::{bail, Context as _};

use crate::setup;

/// Every target in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &["request_head", "response_body", "config", "range_feeds"];

/// Runs `target` (every target when `None`) for `seconds` each.
pub fn run(target: Option<&str>, seconds: u64) -> anyhow::Result<()> {
    setup::fuzz_tools()?;
    let targets: Vec<&str> = match target {
        Some(name) if TARGETS.contains(&name) => vec![name],
        Some(name) => bail!(
            "no fuzz target {name:?}; the targets: {}",
            TARGETS.join(", ")
        ),
        None => TARGETS.to_vec(),
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for target in targets {
        println!("fuzz: {target} for {seconds} s");
        let status = Command::new("cargo")
            .current_dir(&workspace)
            // The fuzzed library embeds the XDP object, so its build runs.
            .env_remove("AYA_BUILD_SKIP")
            .args(["+nightly", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1")
            .status()
            .context("cannot start cargo fuzz")?;
        if !status.success() {
            bail!(
                "fuzz target {target} failed ({status}); the input is in fuzz/artifacts/{target}/"
            );
        }
    }
    Ok(())
}
