//! The shield of an earlier commit, built once into `target/compat/`, for
//! the upgrade test: the new build must take over the pins that shield
//! left behind (another map layout included) without a window.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _};

/// The last commit before the counter layout got spare slots: its pinned
/// `COUNTERS` value has 21 slots, so taking over its pins exercises the
/// replacement of a map of another layout.
pub const PREVIOUS_COMMIT: &str = "d14c041b95541d789824aa4e4fbdd0f3c5ae0178";

/// Tells the end-to-end tests where the previous shield is.
pub const PREVIOUS_BIN_ENV: &str = "SHIELD_PREVIOUS_BIN";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The previous shield's binary, built on first use. The commit is fixed,
/// so a binary once built is reused as it is.
pub fn previous_shield() -> anyhow::Result<PathBuf> {
    let short = &PREVIOUS_COMMIT[..7];
    let dir = crate::run::shield_binary()
        .parent()
        .and_then(Path::parent)
        .context("unexpected target directory")?
        .join("compat")
        .join(short);
    let source = dir.join("src");
    let target = dir.join("target");
    let binary = target.join("debug").join("shield");
    if binary.exists() {
        return Ok(binary);
    }
    let workspace = workspace();
    let known = Command::new("git")
        .current_dir(&workspace)
        .args(["cat-file", "-e", &format!("{PREVIOUS_COMMIT}^{{commit}}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !known {
        bail!(
            "commit {short} is not in this clone's history (a shallow clone?); the upgrade \
             test needs the shield built from it: run `git fetch --unshallow` (or fetch {PREVIOUS_COMMIT})"
        );
    }
    let started = Instant::now();
    // A fresh tree each time: a half-extracted one from an interrupted run
    // must not be built.
    let _ = std::fs::remove_dir_all(&source);
    std::fs::create_dir_all(&source)
        .with_context(|| format!("cannot create {}", source.display()))?;
    extract(&workspace, &source)?;
    eprintln!("building shield {short} (the previous release) for the upgrade test");
    // Without debug info: this binary is only run, and it links faster.
    // Its output is kept back unless the build fails: that commit's
    // nested eBPF build still prints its progress as build-script
    // warnings, dozens of lines that are not this tree's.
    let built = Command::new(env!("CARGO"))
        .current_dir(&source)
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .args([
            "build",
            "--locked",
            "--package",
            "shield-userspace",
            "--bin",
            "shield",
        ])
        .output()
        .context("cannot start cargo")?;
    if !built.status.success() {
        eprint!("{}", String::from_utf8_lossy(&built.stderr));
        bail!("building shield {short} failed ({})", built.status);
    }
    anyhow::ensure!(binary.exists(), "{} was not built", binary.display());
    eprintln!("shield {short} built in {:.0?}", started.elapsed());
    Ok(binary)
}

/// `git archive COMMIT | tar -x`: the commit's tree, without touching the
/// repository's worktrees or index.
fn extract(workspace: &Path, into: &Path) -> anyhow::Result<()> {
    let mut archive = Command::new("git")
        .current_dir(workspace)
        .args(["archive", "--format=tar", PREVIOUS_COMMIT])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start git archive")?;
    let tar_input = archive.stdout.take().context("git archive has no stdout")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(into)
        .stdin(tar_input)
        .status()
        .context("cannot start tar")?;
    let archived = archive.wait().context("git archive")?;
    if !archived.success() || !tar.success() {
        bail!("extracting {PREVIOUS_COMMIT} failed (git archive {archived}, tar {tar})");
    }
    Ok(())
}
