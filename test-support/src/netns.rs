//! A private network namespace for one test's thread: its own loopback,
//! sockets and TCP sysctls, gone when the thread ends.
//!
//! `BPF_PROG_TEST_RUN` runs an XDP program on the loopback device of the
//! calling thread's namespace, and the socket helpers look up sockets
//! there, so a test that needs listeners and sysctls of its own runs the
//! program from such a thread.

use std::process::Command;

/// Runs `body` on a thread of its own in a fresh network namespace with
/// loopback up. A panic in `body` fails the caller.
pub fn isolated<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare on this thread alone; no memory is involved.
        let status = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            status,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        // A child process inherits the namespace of the thread it forks from.
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("run ip");
        assert!(up.success(), "ip link set lo up failed");
        body()
    });
    match thread.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Writes a sysctl of this thread's namespace, e.g. `net/ipv4/tcp_syncookies`.
pub fn set_sysctl(name: &str, value: &str) {
    let path = format!("/proc/sys/{name}");
    std::fs::write(&path, value).unwrap_or_else(|e| panic!("write {path}: {e}"));
}
