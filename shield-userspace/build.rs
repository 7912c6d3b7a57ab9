//! Builds the XDP program (shield-ebpf) for bpfel-unknown-none with the
//! nightly toolchain and bpf-linker; `AYA_BUILD_SKIP=1` skips it.
//!
//! aya-build forwards every line the nested cargo prints as a
//! `cargo:warning=`, and cargo replays a workspace build script's warnings
//! on every later build, so each `cargo build` would print dozens of
//! `warning: shield-userspace@0.1.0:    Compiling ...` lines. So aya-build
//! runs in a child process of this script (the script itself, run again
//! with [`CHILD`] set) whose output is sorted here: cargo directives go
//! through, the nested cargo's progress lines are kept back, and everything
//! else (rustc's diagnostics for shield-ebpf) stays a warning. When the
//! nested build fails, all of its output is shown.
use std::process::{Command, ExitCode};

use anyhow::Context as _;

/// Set in the child that runs aya-build.
const CHILD: &str = "SHIELD_BUILD_EBPF_CHILD";

fn main() -> anyhow::Result<ExitCode> {
    if std::env::var_os(CHILD).is_some() {
        build_ebpf()?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("cargo:rerun-if-changed=../shield-common/src");
    let script = std::env::current_exe().context("cannot find the build script's own path")?;
    let child = Command::new(&script)
        .env(CHILD, "1")
        .output()
        .with_context(|| format!("cannot run {} for the eBPF build", script.display()))?;
    let stdout = String::from_utf8_lossy(&child.stdout);
    let mut held = Vec::new();
    for line in stdout.lines() {
        match line.strip_prefix("cargo:warning=") {
            Some(message) if is_progress(message) => held.push(message),
            _ => println!("{line}"),
        }
    }
    if child.status.success() {
        return Ok(ExitCode::SUCCESS);
    }
    // Cargo shows a failed build script's stderr: the nested build's
    // progress, then aya-build's error.
    for line in held {
        eprintln!("{line}");
    }
    eprint!("{}", String::from_utf8_lossy(&child.stderr));
    Ok(ExitCode::FAILURE)
}

fn build_ebpf() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir).join("../shield-ebpf");
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("shield-ebpf not found at {}", ebpf_dir.display()))?;
    let root_dir = ebpf_dir.to_str().context("shield-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "shield-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

/// A cargo status line, such as `   Compiling core v0.0.0` or
/// `    Finished ...`: cargo right-aligns a capitalized verb after spaces,
/// where rustc's rendered diagnostics start with `warning:`, `error`, `-->`,
/// `|`, `=` or a line number.
fn is_progress(line: &str) -> bool {
    let rest = line.trim_start();
    rest.len() < line.len()
        && rest.split_once(' ').is_some_and(|(verb, _)| {
            verb.len() > 1
                && verb.starts_with(|c: char| c.is_ascii_uppercase())
                && verb[1..].chars().all(|c| c.is_ascii_lowercase())
        })
}
