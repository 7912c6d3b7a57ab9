//! The bench's tools: nginx-light, haproxy and valgrind from Debian, and oha (which
//! the tests need too, so `setup` installs it); each skipped when present.

use anyhow::{bail, Context as _};

use crate::{setup, shell};

pub fn bench_tools() -> anyhow::Result<()> {
    if !shell::succeeds("nginx", &["-v"]) {
        apt_install("nginx-light")?;
    }
    if !shell::succeeds("haproxy", &["-v"]) {
        apt_install("haproxy")?;
    }
    if !shell::succeeds("valgrind", &["--version"]) {
        apt_install("valgrind")?;
    }
    if !shell::succeeds("openssl", &["version"]) {
        bail!("openssl is missing (`cargo xtask setup` installs it)");
    }
    setup::oha()
}

/// One Debian package, with its dependencies but not its recommendations.
fn apt_install(package: &str) -> anyhow::Result<()> {
    if !shell::is_root() {
        bail!("{package} is missing: run as root (it is installed with apt-get)");
    }
    println!("bench: installing {package}");
    std::env::set_var("DEBIAN_FRONTEND", "noninteractive");
    shell::status("apt-get", &["update", "-q"])?;
    shell::status(
        "apt-get",
        &["install", "-y", "-q", "--no-install-recommends", package],
    )
    .with_context(|| format!("cannot install {package}; install it by hand and rerun"))
}
