//! The daemon's stop signals and the threads that must not take them.
//!
//! ublk's daemon blocks SIGINT and SIGTERM in every thread and waits for
//! them with `sigwait` in one thread of its own. A process-directed signal
//! goes to any thread that does not block it, so a thread that leaves them
//! unblocked takes the default action instead: the process dies, the
//! device is not stopped. Every thread the array starts by itself (the sync
//! worker, the stall watchdog) blocks them first.

/// Blocks SIGINT and SIGTERM in the calling thread; returns the mask it had.
pub(crate) fn block_stop_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset/sigaddset;
    // pthread_sigmask only reads `set` and writes `old`, for this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let mut old: libc::sigset_t = std::mem::zeroed();
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(old)
    }
}

/// Gives the calling thread back a mask [`block_stop_signals`] returned.
pub(crate) fn restore_signals(old: &libc::sigset_t) {
    // SAFETY: `old` came from pthread_sigmask; a null `oldset` is allowed.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut());
    }
}

/// Whether the thread of this process named `name` blocks SIGINT and
/// SIGTERM (from `/proc`; `None`: no such thread).
#[cfg(test)]
pub(crate) fn thread_blocks_stop_signals(name: &str) -> Option<bool> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(task.path().join("status")).ok()?;
        let blocked = status
            .lines()
            .find_map(|l| l.strip_prefix("SigBlk:"))
            .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())?;
        let bit = |sig: i32| 1u64 << (sig - 1);
        return Some(blocked & bit(libc::SIGINT) != 0 && blocked & bit(libc::SIGTERM) != 0);
    }
    None
}
