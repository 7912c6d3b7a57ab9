//! `cargo xtask setup`: everything the build, tests and benchmarks need on
//! a fresh Debian 12 host. Each step checks first, so a second run takes
//! seconds.

use anyhow::{bail, Context as _};

use crate::shell;

/// Debian packages: LLVM 22 for bpf-linker (nightly 1.97 uses LLVM 22),
/// and the tools the tests and benchmarks drive.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "iproute2",
    "util-linux",
    "bpftool",
    "python3",
    "python3-scapy",
    "hping3",
    "xdp-tools",
    "nftables",
    "curl",
    "openssl",
    "iputils-ping",
    "tcpdump",
    // The monitoring tests: a real Prometheus scrape and `promtool test rules`.
    "prometheus",
    // The container test: podman with runc (Debian 12's crun refuses these
    // hosts' hybrid cgroups), debootstrap for a base image when no
    // container registry is reachable, and a venv for the schema check.
    "podman",
    "runc",
    "debootstrap",
    "python3-venv",
    // The .deb depends on it, and `dist::check` installs the .deb with dpkg.
    "ca-certificates",
];

/// kubernetes-validate bundles the Kubernetes JSON schemas, so the
/// manifests validate offline (kubeconform and kubeval are Go binaries
/// fetched from outside the package registries).
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
const TOOLS_VENV: &str = "/opt/shield-tools/venv";

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The last cargo-fuzz line that builds with rustc 1.95.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn all() -> anyhow::Result<()> {
    packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    bpffs()?;
    fuzz_tools()?;
    oha()?;
    kubernetes_validate()?;
    println!("setup: everything is installed");
    Ok(())
}

/// Only what building needs (what `cargo xtask build` checks).
pub fn build_tools() -> anyhow::Result<()> {
    packages()?;
    nightly_rust_src()?;
    bpf_linker()
}

/// oha 1.16 builds with rustc 1.95 and speaks client certificates.
pub const OHA_VERSION: &str = "1.16.0";

/// oha, the HTTP/2 load client of the tests and the benchmark.
pub fn oha() -> anyhow::Result<()> {
    let present =
        shell::output("oha", &["--version"]).is_ok_and(|version| version.contains(OHA_VERSION));
    if !present {
        println!("setup: building oha {OHA_VERSION} (a few minutes)");
        shell::cargo(&["install", "oha", "--version", OHA_VERSION, "--locked"])
            .context("cargo install oha failed")?;
    }
    Ok(())
}

/// In a venv of Debian's python3 (not whichever python3 is first on PATH),
/// linked into /usr/local/bin for the tests.
fn kubernetes_validate() -> anyhow::Result<()> {
    let present = shell::output("kubernetes-validate", &["--version"])
        .is_ok_and(|version| version.contains(KUBERNETES_VALIDATE_VERSION));
    if present || !shell::is_root() {
        return Ok(());
    }
    println!("setup: installing kubernetes-validate {KUBERNETES_VALIDATE_VERSION}");
    shell::status("/usr/bin/python3", &["-m", "venv", TOOLS_VENV])?;
    shell::status(
        &format!("{TOOLS_VENV}/bin/pip"),
        &[
            "install",
            "-q",
            &format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"),
        ],
    )
    .context("pip install kubernetes-validate failed")?;
    let link = std::path::Path::new("/usr/local/bin/kubernetes-validate");
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(format!("{TOOLS_VENV}/bin/kubernetes-validate"), link)
        .context("cannot link kubernetes-validate into /usr/local/bin")
}

/// Mounts bpffs at /sys/fs/bpf when a fresh host has not. shield mounts it
/// itself when missing, but tests start several shields at once, and two
/// racing mounts would stack a second bpffs over the first one's pins.
fn bpffs() -> anyhow::Result<()> {
    let fs_type = shell::output("stat", &["-f", "-c", "%T", "/sys/fs/bpf"]).unwrap_or_default();
    if fs_type.trim() == "bpf_fs" || !shell::is_root() {
        return Ok(());
    }
    println!("setup: mounting bpffs at /sys/fs/bpf");
    shell::status("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"])
}

fn installed(package: &str) -> bool {
    shell::output("dpkg-query", &["-W", "-f=${Status}", package])
        .is_ok_and(|status| status.contains("install ok installed"))
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !shell::is_root() {
        bail!("missing Debian packages {missing:?}: run `cargo xtask setup` as root (it uses apt-get)");
    }
    println!("setup: installing {}", missing.join(" "));
    shell::status("apt-get", &["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    std::env::set_var("DEBIAN_FRONTEND", "noninteractive");
    shell::status("apt-get", &args)
        .context("apt-get install failed (LLVM 22 comes from Debian 12's security/updates suite)")
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let toolchains = shell::output("rustup", &["toolchain", "list"])
        .context("rustup is needed for the nightly eBPF build")?;
    if !toolchains.lines().any(|t| t.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain");
        shell::status(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
        )?;
    }
    let components = shell::output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    if !components.lines().any(|c| c.starts_with("rust-src")) {
        println!("setup: adding rust-src to nightly (for -Z build-std=core)");
        shell::status(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    if shell::succeeds("bpf-linker", &["--version"]) {
        return Ok(());
    }
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)");
    std::env::set_var("LLVM_PREFIX", "/usr/lib/llvm-22");
    shell::status(
        env!("CARGO"),
        &[
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            "llvm-22",
        ],
    )
    .context("building bpf-linker failed; is llvm-22-dev installed?")
}

/// cargo-fuzz, for `cargo xtask fuzz` (the targets build with nightly).
pub fn fuzz_tools() -> anyhow::Result<()> {
    nightly_rust_src()?;
    if shell::succeeds("cargo", &["fuzz", "--version"]) {
        return Ok(());
    }
    println!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
    shell::status(
        env!("CARGO"),
        &[
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ],
    )
    .context("installing cargo-fuzz failed")
}
