//! Builds the test-only XDP programs (shield-test-ebpf) for
//! bpfel-unknown-none, as shield-userspace's build script does shield's.
use std::process::ExitCode;

fn main() -> anyhow::Result<ExitCode> {
    shield_ebpf_build::build("shield-test-ebpf")
}
