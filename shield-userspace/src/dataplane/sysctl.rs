//! The network namespace's TCP sysctls that XDP SYN cookies depend on:
//! read to build SYN-ACKs the kernel's cookie check agrees with, and set
//! by `syn_cookies = "always"`, which saves what it replaced in a pin so
//! that a detach (by any later shield process) puts it back.
//!
//! The pin lives on bpffs beside the program's, which is right for both:
//! bpffs and sysctls are both gone after a reboot, so a saved value never
//! outlives the change it undoes.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::maps::{Array, MapData};
use shield_common::{CookieOptions, COOKIE_SACK, COOKIE_TIMESTAMPS, COOKIE_WINDOW_SCALING};

use super::{io_error, DataplaneError, PinLayout};
use crate::config::SynCookies;

const PROC_IPV4: &str = "/proc/sys/net/ipv4";
const PROC_CORE: &str = "/proc/sys/net/core";

/// `net.ipv4.tcp_syncookies` and `tcp_timestamps` values "always" sets: cookies
/// for every SYN, and timestamps without a per-connection offset (the
/// kernel subtracts an offset it alone knows from an echoed timestamp, so
/// with one in force the options a cookie carries there would not decode).
const ALWAYS: Saved = Saved {
    syncookies: 2,
    timestamps: 2,
};

/// The sysctl values "always" replaced, as pinned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Saved {
    syncookies: u32,
    timestamps: u32,
}

// SAFETY: two u32s, no padding; any bit pattern is valid.
unsafe impl aya::Pod for Saved {}

/// The TCP sysctls of this network namespace that a cookie depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSysctls {
    /// `tcp_syncookies`; `None` when the kernel has no SYN cookies.
    pub syncookies: Option<u32>,
    pub timestamps: u32,
    pub sack: u32,
    pub window_scaling: u32,
    /// `tcp_rmem`: min, default, max.
    pub rmem: [u32; 3],
    /// `net.core.rmem_max`.
    pub rmem_max: u32,
}

impl TcpSysctls {
    pub fn read() -> Result<TcpSysctls, DataplaneError> {
        Self::read_from(Path::new(PROC_IPV4), Path::new(PROC_CORE))
    }

    fn read_from(ipv4: &Path, core: &Path) -> Result<TcpSysctls, DataplaneError> {
        let syncookies = match read_numbers(&ipv4.join("tcp_syncookies")) {
            Ok(values) => values.first().copied(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(sysctl_error(&ipv4.join("tcp_syncookies"), error)),
        };
        let one = |dir: &Path, name: &str| -> Result<u32, DataplaneError> {
            let path = dir.join(name);
            read_numbers(&path)
                .map_err(|error| sysctl_error(&path, error))?
                .first()
                .copied()
                .ok_or_else(|| sysctl_error(&path, invalid("empty")))
        };
        let rmem_path = ipv4.join("tcp_rmem");
        let rmem = match read_numbers(&rmem_path).map_err(|e| sysctl_error(&rmem_path, e))?[..] {
            [min, default, max] => [min, default, max],
            _ => return Err(sysctl_error(&rmem_path, invalid("not three numbers"))),
        };
        Ok(TcpSysctls {
            syncookies,
            timestamps: one(ipv4, "tcp_timestamps")?,
            sack: one(ipv4, "tcp_sack")?,
            window_scaling: one(ipv4, "tcp_window_scaling")?,
            rmem,
            rmem_max: one(core, "rmem_max")?,
        })
    }

    /// How the program builds a cookie's SYN-ACK so that the kernel takes
    /// it back as it would its own, for a listener with the default
    /// receive buffer. `mtu` is the smallest of the protected interfaces'.
    pub fn cookie_options(&self, mtu: u32) -> CookieOptions {
        let mut flags = 0;
        // Only without a timestamp offset do the options ride on the
        // timestamp; with timestamps off the kernel refuses any echo.
        if self.timestamps == 2 {
            flags |= COOKIE_TIMESTAMPS;
        }
        if self.sack != 0 {
            flags |= COOKIE_SACK;
        }
        if self.window_scaling != 0 {
            flags |= COOKIE_WINDOW_SCALING;
        }
        // The kernel scales for the largest buffer the socket could get.
        let space = self.rmem[2].max(self.rmem_max).max(1);
        let window_scale = (space.ilog2().saturating_sub(15)).min(14);
        // A default receive buffer offers half of itself as window.
        let window = (self.rmem[1] / 2).min(u32::from(u16::MAX));
        CookieOptions {
            flags,
            window_scale,
            window,
            mtu,
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

fn sysctl_error(path: &Path, source: io::Error) -> DataplaneError {
    DataplaneError::Io {
        context: format!("cannot read {}", path.display()),
        source,
    }
}

fn read_numbers(path: &Path) -> io::Result<Vec<u32>> {
    std::fs::read_to_string(path)?
        .split_whitespace()
        .map(|word| word.parse::<u32>().map_err(|_| invalid("not a number")))
        .collect()
}

fn write_number(path: &Path, value: u32) -> Result<(), DataplaneError> {
    std::fs::write(path, format!("{value}\n")).map_err(io_error(format!(
        "cannot write {} (shield needs CAP_NET_ADMIN in its network namespace)",
        path.display()
    )))
}

/// What [`apply`] did, so a failed start can undo it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Nothing changed.
    Unchanged,
    /// "always" set the sysctls now, saving what was there.
    SetAlways,
    /// A mode other than "always" put back what an earlier "always" saved.
    Restored,
}

/// Puts the namespace's sysctls where `mode` wants them: "always" sets them
/// (once; the values it replaced are pinned), the other modes restore what
/// an earlier "always" replaced.
pub fn apply(layout: &PinLayout, mode: SynCookies) -> Result<Applied, DataplaneError> {
    apply_at(layout, mode, Path::new(PROC_IPV4))
}

fn apply_at(layout: &PinLayout, mode: SynCookies, ipv4: &Path) -> Result<Applied, DataplaneError> {
    if mode != SynCookies::Always {
        return Ok(if restore_at(layout, ipv4)? {
            Applied::Restored
        } else {
            Applied::Unchanged
        });
    }
    let syncookies_path = ipv4.join("tcp_syncookies");
    let timestamps_path = ipv4.join("tcp_timestamps");
    let current = Saved {
        syncookies: read_one(&syncookies_path).map_err(|source| DataplaneError::Io {
            context: format!(
                "[xdp].syn_cookies = \"always\" needs a kernel with SYN cookies (CONFIG_SYN_COOKIES): cannot read {}; set syn_cookies = \"flood\" or \"off\"",
                syncookies_path.display()
            ),
            source,
        })?,
        timestamps: read_one(&timestamps_path).map_err(|e| sysctl_error(&timestamps_path, e))?,
    };
    let pin = saved_pin(layout);
    // Already in force from an earlier start: what it saved stays saved.
    if current == ALWAYS && pin.exists() {
        return Ok(Applied::Unchanged);
    }
    // A stale pin (the values changed since, by hand) is replaced by what
    // is there now, which is what a detach should come back to.
    let _ = std::fs::remove_file(&pin);
    write_saved(&pin, current)?;
    let set = write_number(&syncookies_path, ALWAYS.syncookies)
        .and_then(|()| write_number(&timestamps_path, ALWAYS.timestamps));
    if let Err(error) = set {
        let _ = write_number(&syncookies_path, current.syncookies);
        let _ = write_number(&timestamps_path, current.timestamps);
        let _ = std::fs::remove_file(&pin);
        return Err(error);
    }
    tracing::info!(
        tcp_syncookies = ALWAYS.syncookies,
        tcp_timestamps = ALWAYS.timestamps,
        was_syncookies = current.syncookies,
        was_timestamps = current.timestamps,
        "syn_cookies = \"always\": set the namespace's TCP sysctls"
    );
    Ok(Applied::SetAlways)
}

/// Puts back what "always" replaced, if it did; true when it did. A value
/// changed by hand since "always" set it is left as it is now.
pub fn restore(layout: &PinLayout) -> Result<bool, DataplaneError> {
    restore_at(layout, Path::new(PROC_IPV4))
}

fn restore_at(layout: &PinLayout, ipv4: &Path) -> Result<bool, DataplaneError> {
    let pin = saved_pin(layout);
    if !pin.exists() {
        return Ok(false);
    }
    let saved = read_saved(&pin)?;
    for (name, ours, theirs) in [
        ("tcp_syncookies", ALWAYS.syncookies, saved.syncookies),
        ("tcp_timestamps", ALWAYS.timestamps, saved.timestamps),
    ] {
        let path = ipv4.join(name);
        match read_one(&path) {
            Ok(now) if now == ours => write_number(&path, theirs)?,
            Ok(now) => {
                tracing::warn!(sysctl = %path.display(), now, "changed since syn_cookies = \"always\" set it: left as it is")
            }
            Err(error) => return Err(sysctl_error(&path, error)),
        }
    }
    std::fs::remove_file(&pin).map_err(io_error(format!("cannot remove {}", pin.display())))?;
    tracing::info!(
        tcp_syncookies = saved.syncookies,
        tcp_timestamps = saved.timestamps,
        "restored the TCP sysctls syn_cookies = \"always\" had set"
    );
    Ok(true)
}

fn read_one(path: &Path) -> io::Result<u32> {
    read_numbers(path)?
        .first()
        .copied()
        .ok_or_else(|| invalid("empty"))
}

fn saved_pin(layout: &PinLayout) -> PathBuf {
    layout.saved_sysctls()
}

fn map_error(path: &Path) -> impl FnOnce(aya::maps::MapError) -> DataplaneError + '_ {
    move |source| DataplaneError::Map {
        context: format!("cannot use {}", path.display()),
        source,
    }
}

fn read_saved(path: &Path) -> Result<Saved, DataplaneError> {
    let map = MapData::from_pin(path).map_err(map_error(path))?;
    let array: Array<MapData, Saved> =
        Array::try_from(aya::maps::Map::Array(map)).map_err(map_error(path))?;
    array.get(&0, 0).map_err(map_error(path))
}

fn write_saved(path: &Path, saved: Saved) -> Result<(), DataplaneError> {
    let mut array = Array::<MapData, Saved>::create(1, 0).map_err(map_error(path))?;
    array.set(0, saved, 0).map_err(map_error(path))?;
    array.pin(path).map_err(|source| DataplaneError::Pin {
        what: "saved sysctls",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysctls(timestamps: u32, rmem: [u32; 3], rmem_max: u32) -> TcpSysctls {
        TcpSysctls {
            syncookies: Some(1),
            timestamps,
            sack: 1,
            window_scaling: 1,
            rmem,
            rmem_max,
        }
    }

    #[test]
    fn cookie_options_follow_the_kernel_defaults() {
        // Linux's defaults: rmem 4096 131072 6291456, rmem_max 212992.
        let options = sysctls(1, [4096, 131072, 6291456], 212992).cookie_options(1500);
        // An offset on timestamps: no options can ride on them.
        assert_eq!(options.flags, COOKIE_SACK | COOKIE_WINDOW_SCALING);
        // ilog2(6291456) = 22: the kernel's receive scale 7.
        assert_eq!(options.window_scale, 7);
        assert_eq!(options.window, 65535);
        assert_eq!(options.mtu, 1500);
        let options = sysctls(2, [4096, 87380, 4194304], 212992).cookie_options(0);
        assert_eq!(
            options.flags,
            COOKIE_TIMESTAMPS | COOKIE_SACK | COOKIE_WINDOW_SCALING
        );
        assert_eq!(options.window_scale, 7);
        assert_eq!(options.window, 43690);
        // A huge buffer caps at the largest scale.
        assert_eq!(
            sysctls(2, [1, 1, u32::MAX], 1)
                .cookie_options(0)
                .window_scale,
            14
        );
        assert_eq!(sysctls(0, [1, 2, 3], 4).cookie_options(0).flags & 1, 0);
    }

    #[test]
    fn sysctls_parse_from_their_files() {
        let dir = tempfile::tempdir().unwrap();
        let ipv4 = dir.path().join("ipv4");
        let core = dir.path().join("core");
        std::fs::create_dir_all(&ipv4).unwrap();
        std::fs::create_dir_all(&core).unwrap();
        for (name, value) in [
            ("tcp_timestamps", "1\n"),
            ("tcp_sack", "1\n"),
            ("tcp_window_scaling", "1\n"),
            ("tcp_rmem", "4096\t131072\t6291456\n"),
        ] {
            std::fs::write(ipv4.join(name), value).unwrap();
        }
        std::fs::write(core.join("rmem_max"), "212992\n").unwrap();
        // No tcp_syncookies: a kernel without SYN cookies.
        let read = TcpSysctls::read_from(&ipv4, &core).unwrap();
        assert_eq!(read.syncookies, None);
        assert_eq!(read.rmem, [4096, 131072, 6291456]);
        std::fs::write(ipv4.join("tcp_syncookies"), "1\n").unwrap();
        assert_eq!(
            TcpSysctls::read_from(&ipv4, &core).unwrap().syncookies,
            Some(1)
        );
        std::fs::write(ipv4.join("tcp_rmem"), "4096 131072\n").unwrap();
        let error = TcpSysctls::read_from(&ipv4, &core).unwrap_err();
        assert!(error.to_string().contains("tcp_rmem"), "{error}");
    }
}
