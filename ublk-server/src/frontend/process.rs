//! What a block-device daemon asks of the kernel for its own process: to be
//! the OOM killer's last choice, and to allocate memory without recursing
//! into I/O. A daemon in the I/O path that the OOM killer takes leaves every
//! file system on its device waiting (ublk) or failing (FUSE); one whose
//! allocation starts writeback to its own device can deadlock.

use std::io::Write;
use std::sync::Mutex;

/// `--oom-score-adj`'s default: never chosen by the OOM killer, as other
/// daemons in the block I/O path (multipathd, iscsid) are set.
pub const DEFAULT_OOM_SCORE_ADJ: i32 = -1000;

/// `prctl` option of Linux 5.6 (`PR_SET_IO_FLUSHER`), absent from `libc`'s
/// Linux constants.
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// What [`protect_daemon`] could not do, held until the daemon is serving:
/// a command that fails on bad input still prints its one line only.
static REFUSED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Protects the calling process; call it before the daemon starts threads
/// (both settings are inherited by threads made later). Sets the OOM score
/// adjustment (-1000 to 1000) and marks the process an I/O flusher, whose
/// allocations do not wait on I/O (`PR_SET_IO_FLUSHER`). Both need
/// CAP_SYS_RESOURCE: what the kernel refuses is kept, one line each, for
/// [`warn_refused`] once the device is up, and the daemon serves on.
pub fn protect_daemon(oom_score_adj: i32) {
    let mut refused = Vec::new();
    if let Err(e) = set_oom_score_adj(oom_score_adj) {
        refused.push(format!(
            "cannot set /proc/self/oom_score_adj to {oom_score_adj}: {e}; the OOM killer may choose this daemon"
        ));
    }
    // SAFETY: prctl with integer arguments only; PR_SET_IO_FLUSHER reads
    // arg2 (1: set) and requires the rest to be 0.
    let r = unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) };
    if r != 0 {
        refused.push(format!(
            "cannot mark the daemon an I/O flusher (PR_SET_IO_FLUSHER): {}; under memory pressure its allocations may wait on writeback",
            std::io::Error::last_os_error()
        ));
    }
    *REFUSED.lock().unwrap_or_else(|p| p.into_inner()) = refused;
}

/// Logs, once, what [`protect_daemon`] could not do; the front-ends call it
/// when their device is up.
pub fn warn_refused() {
    for w in std::mem::take(&mut *REFUSED.lock().unwrap_or_else(|p| p.into_inner())) {
        tracing::warn!("{w}");
    }
}

fn set_oom_score_adj(v: i32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/oom_score_adj")?;
    f.write_all(format!("{v}\n").as_bytes())
}

/// `--oom-score-adj`: a whole number from -1000 to 1000.
pub fn parse_oom_score_adj(s: &str) -> Result<i32, String> {
    match s.parse::<i32>() {
        Ok(v) if (-1000..=1000).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a whole number from -1000 to 1000")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_takes_the_kernels_range_only() {
        assert_eq!(parse_oom_score_adj("-1000"), Ok(-1000));
        assert_eq!(parse_oom_score_adj("0"), Ok(0));
        assert_eq!(parse_oom_score_adj("1000"), Ok(1000));
        for bad in ["-1001", "1001", "x", "", "1.5"] {
            let e = parse_oom_score_adj(bad).unwrap_err();
            assert!(e.contains("-1000 to 1000"), "{bad}: {e}");
        }
    }
}
