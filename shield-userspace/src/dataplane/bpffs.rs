//! Making sure the BPF filesystem is there to pin into.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path};

use super::DataplaneError;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPFFS_MOUNT_POINT: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs is a plain C struct of integers, valid when zeroed.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct we own, which statfs(2)
    // only writes.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
}

/// Mounts bpffs at /sys/fs/bpf when the pin root's filesystem is not bpffs.
pub fn ensure_mounted(pin_root: &Path) -> Result<(), DataplaneError> {
    let existing = pin_root
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let bpffs_error = |source| DataplaneError::Bpffs {
        path: existing.display().to_string(),
        source,
    };
    if is_bpffs(existing).map_err(bpffs_error)? {
        return Ok(());
    }
    if !pin_root.starts_with(BPFFS_MOUNT_POINT) {
        return Err(DataplaneError::NotOnBpffs {
            path: pin_root.display().to_string(),
        });
    }
    let target = CString::new(BPFFS_MOUNT_POINT)
        .map_err(io::Error::other)
        .map_err(bpffs_error)?;
    let fstype = CString::new("bpf")
        .map_err(io::Error::other)
        .map_err(bpffs_error)?;
    // SAFETY: plain mount(2) with NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(DataplaneError::Bpffs {
            path: BPFFS_MOUNT_POINT.into(),
            source: io::Error::last_os_error(),
        });
    }
    tracing::info!("mounted bpffs at {BPFFS_MOUNT_POINT}");
    Ok(())
}
