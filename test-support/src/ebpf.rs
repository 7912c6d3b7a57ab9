//! The test-only XDP objects (shield-test-ebpf), built by this crate's
//! build script.

/// The benchmarks' anchors: `anchor_drop` drops every packet and does
/// nothing else, `anchor_read_drop` reads the headers' first cache line
/// and drops.
pub static ANCHOR_DROP: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/anchor-drop"));

/// Reads the packet without a bounds check, so the verifier must refuse it.
pub static REFUSED_BY_VERIFIER: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/refused-by-verifier"));

/// Passes every packet: the flood bench's receiver without a filter in XDP
/// (a veth delivers XDP_TX frames only to an end that runs XDP).
pub static ANCHOR_PASS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/anchor-pass"));

/// The flood bench's generator, run in live-frames mode.
pub static TRAFFICGEN: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/trafficgen"));

/// The flood bench's edge end of the veth: passes what is addressed to the
/// edge, drops the answers to forged sources.
pub static SINK: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sink"));
