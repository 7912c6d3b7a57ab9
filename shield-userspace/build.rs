//! Builds the XDP program (shield-ebpf) for bpfel-unknown-none; how, and
//! why in a child process, is in the `shield-ebpf-build` crate.
use std::process::ExitCode;

fn main() -> anyhow::Result<ExitCode> {
    // shield-ebpf's objects depend on the layouts it shares with userspace.
    println!("cargo:rerun-if-changed=../shield-common/src");
    shield_ebpf_build::build("shield-ebpf")
}
