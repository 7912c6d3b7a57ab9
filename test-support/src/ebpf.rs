//! The test-only XDP objects (shield-test-ebpf), built by this crate's
//! build script.

/// Drops every packet and does nothing else: the benchmark's anchor.
pub static ANCHOR_DROP: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/anchor-drop"));

/// Reads the packet without a bounds check, so the verifier must refuse it.
pub static REFUSED_BY_VERIFIER: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/refused-by-verifier"));
