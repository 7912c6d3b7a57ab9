//! Builds the XDP program (shield-ebpf) for bpfel-unknown-none with the
//! nightly toolchain and bpf-linker; `AYA_BUILD_SKIP=1` skips it.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir).join("../shield-ebpf");
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("shield-ebpf not found at {}", ebpf_dir.display()))?;
    let root_dir = ebpf_dir.to_str().context("shield-ebpf path is not UTF-8")?;
    println!("cargo:rerun-if-changed=../shield-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "shield-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
