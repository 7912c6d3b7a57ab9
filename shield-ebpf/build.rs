//! Code generation options for bpf-linker, which turns the crate's bitcode
//! into BPF. aya-build owns RUSTFLAGS, so they go through link args.
fn main() {
    // Only bpf-linker knows the flag; a host build (`cargo check
    // --workspace`) links with cc.
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("bpf") {
        return;
    }
    // Header fields sit at odd offsets (Ethernet is 14 bytes, VLAN tags 4),
    // so most loads in the parser are unaligned. Without this feature LLVM
    // splits each into byte loads plus shifts; the kernel allows unaligned
    // packet access wherever the architecture does it efficiently (x86-64,
    // arm64), and the verifier refuses the program elsewhere rather than
    // faulting. Needs bpf-linker built against LLVM 22 (cargo xtask setup).
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
}
