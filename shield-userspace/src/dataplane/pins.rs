//! Where shield keeps its kernel objects on bpffs.
//!
//! ```text
//! /sys/fs/bpf/shield/            shared by every interface
//!   POLICY ALLOW_V4 ALLOW_V6 PREFILTER_V4 PREFILTER_V6 COVERED_V4
//!   DESTINATIONS_V4 DESTINATIONS_V6 COOKIE_FLOWS DROP_EVENTS
//!   saved_sysctls                what syn_cookies = "always" replaced
//!   ifaces/<name>/               one per attached interface
//!     link  prog  COUNTERS  state
//! ```
//! The link pin is what keeps the program attached while no shield process
//! runs; the shared maps keep the allowlist that the program reads.

use std::path::{Path, PathBuf};

/// The pin root in production.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/shield";

/// Overrides the pin root; lets tests and several instances on one host keep
/// their pins apart.
pub const PIN_ROOT_ENV: &str = "SHIELD_PIN_ROOT";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PinLayout { root: root.into() }
    }

    /// `$SHIELD_PIN_ROOT`, else `/sys/fs/bpf/shield`.
    pub fn from_env() -> Self {
        match std::env::var_os(PIN_ROOT_ENV) {
            Some(root) if !root.is_empty() => PinLayout::new(root),
            _ => PinLayout::new(DEFAULT_PIN_ROOT),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn shared_map(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn interfaces_dir(&self) -> PathBuf {
        self.root.join("ifaces")
    }

    pub fn interface_dir(&self, interface: &str) -> PathBuf {
        self.interfaces_dir().join(interface)
    }

    pub fn link(&self, interface: &str) -> PathBuf {
        self.interface_dir(interface).join("link")
    }

    pub fn program(&self, interface: &str) -> PathBuf {
        self.interface_dir(interface).join("prog")
    }

    pub fn counters(&self, interface: &str) -> PathBuf {
        self.interface_dir(interface)
            .join(shield_common::map_names::COUNTERS)
    }

    pub fn state(&self, interface: &str) -> PathBuf {
        self.interface_dir(interface).join("state")
    }

    /// The TCP sysctls `syn_cookies = "always"` replaced (see `sysctl`).
    pub fn saved_sysctls(&self) -> PathBuf {
        self.root.join("saved_sysctls")
    }

    /// Names of the interfaces that have a pin directory.
    pub fn pinned_interfaces(&self) -> std::io::Result<Vec<String>> {
        let dir = self.interfaces_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}
