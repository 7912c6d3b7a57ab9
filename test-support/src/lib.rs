//! What shield's integration tests and benchmarks share: the test PKI, the
//! TLS edge started in-process or as its own process, raw HTTP/1.1 and
//! HTTP/2 peers, hand-built frames and the XDP program under test-run.
//!
//! A library of its own, so each test binary links what it uses and none
//! carries unused support code. It enables shield's `testrun` feature,
//! which only builds that reach it through a dev-dependency see.
// Test support: a failed step is a failed test.
#![allow(clippy::unwrap_used)]

pub mod ebpf;
pub mod h2raw;
pub mod heap;
pub mod netns;
pub mod packet;
pub mod pki;
pub mod process;
pub mod raw;
pub mod tls;
pub mod xdp;

use std::process::Stdio;

pub use shield_tests::require_root;

/// Fails (never skips) when a tool the test drives is missing.
pub fn require(tool: &str) {
    let found = std::process::Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
        || std::process::Command::new(tool)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
    assert!(
        found,
        "`{tool}` is required by this test: apt-get install -y curl openssl"
    );
}
