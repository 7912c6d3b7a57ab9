//! `cargo xtask bench`: benchmarks with their anchors in the same run.

use anyhow::bail;

use crate::{bench_tls, setup, shell};

pub fn run(which: Option<&str>) -> anyhow::Result<()> {
    if !shell::is_root() {
        bail!("benchmarks load XDP programs: run as root");
    }
    setup::all()?;
    let xdp = || shell::cargo(&["bench", "--package", "shield-userspace", "--bench", "xdp"]);
    let ranges = || {
        shell::cargo(&[
            "bench",
            "--package",
            "shield-userspace",
            "--bench",
            "ranges",
        ])
    };
    let flood = || shell::cargo(&["bench", "--package", "shield-userspace", "--bench", "flood"]);
    match which {
        None => {
            xdp()?;
            ranges()?;
            flood()?;
            bench_tls::run()
        }
        Some("xdp") => xdp(),
        Some("ranges") => ranges(),
        Some("flood") => flood(),
        Some("tls") => bench_tls::run(),
        Some(other) => bail!("unknown benchmark {other:?}; known: xdp, ranges, flood, tls"),
    }
}
