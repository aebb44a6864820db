//! Is ublk here? The driver, its control device and the running kernel.

use std::io::ErrorKind;
use std::path::Path;

use super::{CONTROL_PATH, ServeError};

/// `None` when ublk can be used here; otherwise one line saying why not and
/// what to use instead.
pub fn unavailable_reason() -> Option<String> {
    const FALLBACK: &str = "use `augur fuse` instead";
    let release = kernel_release();
    if Path::new(CONTROL_PATH).exists() {
        return match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(CONTROL_PATH)
        {
            Ok(_) => None,
            Err(e) if e.kind() == ErrorKind::PermissionDenied => Some(format!(
                "ublk is not usable: cannot open {CONTROL_PATH}: {e} (creating ublk devices needs root); {FALLBACK}"
            )),
            Err(e) => Some(format!(
                "ublk is not usable: cannot open {CONTROL_PATH}: {e}; {FALLBACK}"
            )),
        };
    }
    let version = parse_kernel_version(&release);
    let reason = if version.is_some_and(|v| v < (6, 0)) {
        format!("kernel {release} is too old for ublk (it needs Linux 6.0 or later)")
    } else if Path::new("/sys/module/ublk_drv").exists() {
        format!(
            "the ublk_drv module is loaded but {CONTROL_PATH} is missing (a container without the device node?)"
        )
    } else if module_available(&release) {
        format!("{CONTROL_PATH} is missing: the ublk_drv module is not loaded (modprobe ublk_drv)")
    } else {
        format!(
            "{CONTROL_PATH} is missing: kernel {release} has no ublk driver (CONFIG_BLK_DEV_UBLK) and no ublk_drv module"
        )
    };
    Some(format!("ublk is not available: {reason}; {FALLBACK}"))
}

pub(super) fn check_available() -> Result<(), ServeError> {
    match unavailable_reason() {
        None => Ok(()),
        Some(msg) => Err(ServeError::Unavailable(msg)),
    }
}

pub(super) fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "(unknown)".into())
}

pub(super) fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

pub(super) fn module_available(release: &str) -> bool {
    let dir = Path::new("/lib/modules")
        .join(release)
        .join("kernel/drivers/block");
    [
        "ublk_drv.ko",
        "ublk_drv.ko.xz",
        "ublk_drv.ko.zst",
        "ublk_drv.ko.gz",
    ]
    .iter()
    .any(|f| dir.join(f).exists())
}
