//! Detaching a pinned XDP link at once.
//!
//! Removing a link's pin alone leaves the kernel to drop its last
//! reference from a work queue, so the program could still run for a
//! moment after `shield detach` returned (long enough for a script that
//! checks `ip link` right after to see it). `BPF_LINK_DETACH` on the link
//! detaches it before the pin goes.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

/// `enum bpf_cmd` numbers (`include/uapi/linux/bpf.h`), fixed kernel ABI.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_DETACH: libc::c_long = 34;

/// The `BPF_OBJ_GET` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// The `BPF_LINK_DETACH` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct LinkDetach {
    link_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a #[repr(C)] member of `union bpf_attr` for `cmd`,
    // valid for the size passed; the kernel reads and writes only that.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Detaches the link pinned at `path` from its interface now; the pin
/// itself is left for the caller to remove. A kernel without
/// `BPF_LINK_DETACH` (before 5.9) is left to the unpin.
pub(super) fn detach_now(path: &Path) -> io::Result<()> {
    let name = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut get = ObjGet {
        pathname: name.as_ptr() as u64,
        ..ObjGet::default()
    };
    let fd = match bpf(BPF_OBJ_GET, &mut get) {
        Ok(fd) => fd,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else
    // owns.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut detach = LinkDetach { link_fd: fd as u32 };
    let detached = bpf(BPF_LINK_DETACH, &mut detach);
    drop(link);
    match detached {
        Ok(_) => Ok(()),
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
        Err(error) => Err(error),
    }
}
