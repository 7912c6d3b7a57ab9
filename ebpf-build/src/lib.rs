//! The build scripts' eBPF build: compiles one eBPF package of this
//! workspace for bpfel-unknown-none with the nightly toolchain and
//! bpf-linker (through aya-build) and leaves its objects in the calling
//! package's OUT_DIR. `AYA_BUILD_SKIP=1` skips it.
//!
//! aya-build forwards every line the nested cargo prints as a
//! `cargo:warning=`, and cargo replays a workspace build script's warnings
//! on every later build, so each `cargo build` would print dozens of
//! `warning: shield-userspace@0.1.0:    Compiling ...` lines. So aya-build
//! runs in a child process of the build script (the script itself, run
//! again with [`CHILD`] set) whose output is sorted here: cargo directives
//! go through, the nested cargo's progress lines are kept back, and
//! everything else (rustc's diagnostics for the eBPF crate) stays a
//! warning. When the nested build fails, all of its output is shown.
//!
//! The child also gets its own OUT_DIR, one directory per eBPF package for
//! every profile and tool ([`shared_dir`]): aya-build keeps the nested
//! build's target directory under OUT_DIR, which differs between `cargo
//! build`, `cargo build --release` and `cargo clippy`, while the eBPF build
//! it makes is the same in all of them (always `--release`, with fixed
//! flags). So the first `cargo xtask test` compiles each eBPF crate and its
//! `core` once instead of once per profile and tool; the objects are copied
//! from there.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::Context as _;

/// Set in the child that runs aya-build.
const CHILD: &str = "SHIELD_BUILD_EBPF_CHILD";

/// The build script's whole job for `package`, a directory next to the
/// calling package's: call it from `main` and return what it returns.
pub fn build(package: &str) -> anyhow::Result<ExitCode> {
    if std::env::var_os(CHILD).is_some() {
        build_ebpf(package)?;
        return Ok(ExitCode::SUCCESS);
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let shared = shared_dir(&out_dir, package)?;
    fs::create_dir_all(&shared).with_context(|| format!("cannot create {}", shared.display()))?;
    // Builds of two profiles may run at once; without the lock one could
    // copy objects while the other one writes them.
    let lock_path = shared.join(".lock");
    let lock = fs::File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    let script = std::env::current_exe().context("cannot find the build script's own path")?;
    let child = Command::new(&script)
        .env(CHILD, "1")
        .env("OUT_DIR", &shared)
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
        if !skipped() {
            copy_objects(&shared, &out_dir)?;
        }
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

fn build_ebpf(package: &str) -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = Path::new(&manifest_dir).join("..").join(package);
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("{package} not found at {}", ebpf_dir.display()))?;
    let root_dir = ebpf_dir
        .to_str()
        .with_context(|| format!("{package}'s path is not UTF-8"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: package,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

/// Where the nested build of `package` goes: OUT_DIR is
/// `PROFILE/build/CALLER-HASH/out`, PROFILE being `target/debug`,
/// `target/release` (or the same under a target triple), so next to the
/// profiles, in `target/PACKAGE`.
fn shared_dir(out_dir: &Path, package: &str) -> anyhow::Result<PathBuf> {
    let build = out_dir.ancestors().nth(2);
    let profile = build
        .filter(|build| build.file_name().is_some_and(|name| name == "build"))
        .and_then(Path::parent)
        .and_then(Path::parent)
        .with_context(|| {
            format!(
                "OUT_DIR {} is not under a profile's build directory",
                out_dir.display()
            )
        })?;
    Ok(profile.join(package))
}

/// aya-build's own switch, read the same way: when set, the shared
/// directory may hold objects of an older build, which must not be used.
fn skipped() -> bool {
    std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// The objects aya-build copied into the shared directory (the files at
/// its top; the nested target directory and the lock are not objects).
fn copy_objects(shared: &Path, out_dir: &Path) -> anyhow::Result<()> {
    let entries =
        fs::read_dir(shared).with_context(|| format!("cannot list {}", shared.display()))?;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if !entry.file_type()?.is_file() || name.to_string_lossy().starts_with('.') {
            continue;
        }
        let to = out_dir.join(&name);
        fs::copy(entry.path(), &to).with_context(|| {
            format!("cannot copy {} to {}", entry.path().display(), to.display())
        })?;
    }
    Ok(())
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
