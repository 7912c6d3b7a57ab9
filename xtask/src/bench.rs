//! `cargo xtask bench`: benchmarks with their anchors in the same run.

use anyhow::bail;

use crate::{setup, shell};

pub fn run(which: Option<&str>) -> anyhow::Result<()> {
    if !shell::is_root() {
        bail!("benchmarks load XDP programs: run as root");
    }
    setup::all()?;
    match which {
        None | Some("xdp") => {
            shell::cargo(&["bench", "--package", "shield-userspace", "--bench", "xdp"])
        }
        Some(other) => bail!("unknown benchmark {other:?}; known: xdp"),
    }
}
