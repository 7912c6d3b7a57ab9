//! `cargo xtask dist`: the .deb (cargo-deb) with the binary, the example
//! config as a conffile, the systemd unit, shell completions and the man
//! page; and the checks `cargo xtask test` runs on it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::{build, shell};

const CARGO_DEB_VERSION: &str = "3.8.0";

fn target_dir() -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    if target.is_absolute() {
        target
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(target)
    }
}

fn cargo_deb() -> anyhow::Result<()> {
    if shell::succeeds(env!("CARGO"), &["deb", "--version"]) {
        return Ok(());
    }
    println!("dist: installing cargo-deb {CARGO_DEB_VERSION}");
    shell::cargo(&[
        "install",
        "cargo-deb",
        "--version",
        CARGO_DEB_VERSION,
        "--locked",
    ])
}

/// Builds the package and returns its path.
pub fn build() -> anyhow::Result<PathBuf> {
    cargo_deb()?;
    build::all(true)?;
    let target = target_dir();
    let shield = target.join("release/shield");
    // Generated assets live under target/release/ because cargo-deb maps
    // exactly that prefix to the real target dir (CARGO_TARGET_DIR included).
    let generated = target.join("release/dist");
    let dist = target.join("dist");
    std::fs::create_dir_all(&generated)?;
    std::fs::create_dir_all(&dist)?;
    let shield = shield.to_str().context("target path is not UTF-8")?;
    for (shell_name, file) in [
        ("bash", "shield.bash"),
        ("zsh", "_shield"),
        ("fish", "shield.fish"),
    ] {
        std::fs::write(
            generated.join(file),
            shell::output(shield, &["completions", shell_name])?,
        )?;
    }
    std::fs::write(
        generated.join("shield.1"),
        shell::output(shield, &["manpage"])?,
    )?;
    let _ = std::fs::remove_file(generated.join("shield.1.gz"));
    shell::status(
        "gzip",
        &["-9n", generated.join("shield.1").to_str().context("path")?],
    )?;
    let out = shell::output(
        env!("CARGO"),
        &[
            "deb",
            "--package",
            "shield-userspace",
            "--no-build",
            "--output",
            dist.to_str().context("path")?,
        ],
    )?;
    let deb = PathBuf::from(
        out.lines()
            .last()
            .context("cargo deb printed no path")?
            .trim(),
    );
    println!("dist: {}", deb.display());
    Ok(deb)
}

/// What the package must hold, checked on the built .deb.
pub fn check(deb: &Path) -> anyhow::Result<()> {
    let deb_str = deb.to_str().context("path")?;
    let contents = shell::output("dpkg-deb", &["--contents", deb_str])?;
    let unit = [
        "./lib/systemd/system/shield.service",
        "./usr/lib/systemd/system/shield.service",
    ]
    .into_iter()
    .find(|path| contents.contains(path))
    .with_context(|| format!("no systemd unit in the package:\n{contents}"))?;
    for path in [
        "./usr/bin/shield",
        "./etc/shield/shield.toml",
        "./usr/share/bash-completion/completions/shield",
        "./usr/share/zsh/vendor-completions/_shield",
        "./usr/share/fish/vendor_completions.d/shield.fish",
        "./usr/share/man/man1/shield.1.gz",
    ] {
        if !contents.contains(path) {
            bail!("{path} missing from {}:\n{contents}", deb.display());
        }
    }
    let prerm = shell::output("dpkg-deb", &["--info", deb_str, "prerm"])?;
    if !prerm.contains("shield detach") {
        bail!("the package must detach XDP when removed; prerm:\n{prerm}");
    }
    let conffiles = shell::output("dpkg-deb", &["--info", deb_str, "conffiles"])?;
    if !conffiles
        .lines()
        .any(|l| l.trim() == "/etc/shield/shield.toml")
    {
        bail!("/etc/shield/shield.toml must be a conffile; conffiles:\n{conffiles}");
    }
    // Install it for real (CI and the dev VM are throwaway hosts), check the
    // installed unit and binary, then purge so the host is as before.
    shell::status("dpkg", &["-i", deb_str])?;
    let installed = check_installed(unit.trim_start_matches('.'));
    shell::status("dpkg", &["--purge", "shield"])?;
    installed?;
    println!(
        "dist: {} holds the binary, conffile, unit (verified), completions and man page",
        deb.display()
    );
    Ok(())
}

fn check_installed(unit: &str) -> anyhow::Result<()> {
    shell::status("systemd-analyze", &["verify", "--man=no", unit])
        .context("the installed systemd unit does not pass systemd-analyze verify")?;
    let printed = shell::output(
        "/usr/bin/shield",
        &["check-config", "--config", "/etc/shield/shield.toml"],
    )
    .context("the packaged example config must validate")?;
    if !printed.contains("enforce = false") {
        bail!("the packaged config must start in monitor mode:\n{printed}");
    }
    let man = shell::output("zcat", &["/usr/share/man/man1/shield.1.gz"])?;
    if !man.contains(".TH shield 1") {
        bail!("the man page is not a roff page for shield(1)");
    }
    Ok(())
}
