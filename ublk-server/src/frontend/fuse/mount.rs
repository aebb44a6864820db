//! The mount and its loop device: checking the mount directory, unmounting,
//! attaching and detaching loop devices, and `augur fuse --cleanup`.

use std::ffi::CString;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::array::ArrayError;

use super::{DISK_NAME, FuseError};

/// Unmounts `mount`: retries while busy for up to 3 s, then detaches lazily.
pub(super) fn unmount(mount: &Path, unmounter: &mut fuser::SessionUnmounter) {
    // First through fuser, which then forgets the mount (so it does not try
    // again when the session ends); if that fails, by hand.
    match unmounter.unmount() {
        Ok(()) => return,
        Err(e) => tracing::debug!("unmount {}: {e}; retrying", mount.display()),
    }
    let Ok(c) = CString::new(mount.as_os_str().as_bytes()) else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
        if rc == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EBUSY) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Some(libc::EBUSY) => {
                tracing::warn!(
                    "{} is still busy (open files, or a loop device in use); unmounting lazily",
                    mount.display()
                );
                // SAFETY: as above.
                let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                if rc != 0 {
                    tracing::error!(
                        "lazy unmount of {}: {}",
                        mount.display(),
                        std::io::Error::last_os_error()
                    );
                }
                break;
            }
            Some(libc::EINVAL) | Some(libc::ENOENT) => break, // not mounted any more
            _ => {
                tracing::error!("unmounting {}: {err}", mount.display());
                break;
            }
        }
    }
}

/// Checks that `dir` can be mounted on: an existing, empty directory that is
/// not a mount point. Returns its canonical path.
pub fn check_mount_dir(dir: &Path) -> Result<PathBuf, ArrayError> {
    let shown = dir.display();
    let canon = match dir.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(ArrayError::BadSpec(format!(
                "mount point {shown} does not exist"
            )));
        }
        Err(e) => return Err(mount_dir_error(dir, e)),
    };
    let meta = std::fs::metadata(&canon).map_err(|e| mount_dir_error(dir, e))?;
    if !meta.is_dir() {
        return Err(ArrayError::BadSpec(format!(
            "mount point {shown} is not a directory"
        )));
    }
    if is_mount_point(&canon) {
        return Err(ArrayError::BadSpec(format!(
            "{shown} is already a mount point (another augur fuse? `augur fuse --cleanup {shown}` clears a dead one)"
        )));
    }
    let mut entries = std::fs::read_dir(&canon).map_err(|e| mount_dir_error(dir, e))?;
    if entries.next().is_some() {
        return Err(ArrayError::BadSpec(format!(
            "mount point {shown} is not empty"
        )));
    }
    Ok(canon)
}

pub(super) fn mount_dir_error(dir: &Path, e: std::io::Error) -> ArrayError {
    let shown = dir.display();
    if e.raw_os_error() == Some(libc::ENOTCONN) {
        ArrayError::BadSpec(format!(
            "{shown} is a dead FUSE mount (a crashed daemon?): run `augur fuse --cleanup {shown}`"
        ))
    } else {
        ArrayError::BadSpec(format!("mount point {shown}: {e}"))
    }
}

/// What [`cleanup`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Loop devices detached (or, when still in use, set to detach on last close).
    pub loops: Vec<String>,
    /// True when the mount was (lazily) unmounted.
    pub unmounted: bool,
}

/// Clears what a crashed `augur fuse` left at `dir`: detaches every loop
/// device backed by `dir/disk.img`, then lazily unmounts `dir`. Harmless
/// when there is nothing to clear.
pub fn cleanup(dir: &Path) -> Result<CleanupReport, FuseError> {
    // The mount's root may answer ENOTCONN, so resolve only the parent.
    let name = dir
        .file_name()
        .ok_or_else(|| FuseError::BadInput(format!("{}: not a directory name", dir.display())))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = parent
        .canonicalize()
        .map_err(|e| FuseError::BadInput(format!("{}: {e}", parent.display())))?;
    let mount = parent.join(name);
    let disk = mount.join(DISK_NAME);
    let mut report = CleanupReport::default();
    for dev in loops_backed_by(&disk) {
        detach_loop(&dev);
        report.loops.push(dev);
    }
    if is_mount_point(&mount) {
        let c = CString::new(mount.as_os_str().as_bytes())
            .map_err(|_| FuseError::BadInput(format!("{}: bad path", mount.display())))?;
        // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(FuseError::Unmount {
                path: mount.clone(),
                source: e,
            });
        }
        report.unmounted = true;
    }
    Ok(report)
}

/// True when `path` (canonical) is listed as a mount point in this namespace.
pub(super) fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| unescape_mount(m) == want)
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space and so on).
pub(super) fn unescape_mount(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Loop devices whose backing file is `file` (read from sysfs, which still
/// names the file when its FUSE mount is dead).
pub(super) fn loops_backed_by(file: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return found;
    };
    let want = file.as_os_str().as_bytes();
    for e in dir.flatten() {
        let name = e.file_name();
        if !name.as_bytes().starts_with(b"loop") {
            continue;
        }
        let Ok(backing) = std::fs::read(e.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.strip_suffix(b"\n").unwrap_or(&backing);
        let backing = backing.strip_suffix(b" (deleted)").unwrap_or(backing);
        if backing == want {
            found.push(format!("/dev/{}", name.to_string_lossy()));
        }
    }
    found.sort();
    found
}

pub(super) fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

pub(super) fn losetup() -> Command {
    Command::new(which("losetup").unwrap_or_else(|| PathBuf::from("losetup")))
}

pub(super) fn attach_loop(disk: &Path) -> Result<String, FuseError> {
    let out = losetup()
        .args(["--direct-io=on", "--sector-size", "4096", "-f", "--show"])
        .arg(disk)
        .output()
        .map_err(|e| FuseError::Setup {
            what: "running losetup",
            source: e,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if !out.status.success() || !stdout.starts_with("/dev/") {
        return Err(FuseError::Loop(format!(
            "losetup on {} failed: {}",
            disk.display(),
            if stderr.is_empty() { &stdout } else { &stderr }
        )));
    }
    if !stderr.is_empty() {
        tracing::warn!("losetup: {stderr}");
    }
    tracing::info!("attached {stdout} to {}", disk.display());
    Ok(stdout)
}

pub(super) fn detach_loop(dev: &str) {
    match losetup().arg("-d").arg(dev).output() {
        Ok(o) if o.status.success() => {
            let sys = format!(
                "/sys/block/{}/loop/backing_file",
                dev.trim_start_matches("/dev/")
            );
            if Path::new(&sys).exists() {
                tracing::warn!(
                    "{dev} is still in use (a file system mounted on it?); it detaches when closed"
                );
            } else {
                tracing::info!("detached {dev}");
            }
        }
        Ok(o) => tracing::error!(
            "losetup -d {dev}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => tracing::error!("losetup -d {dev}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mount("/tmp/a\\040b"), b"/tmp/a b");
        assert_eq!(unescape_mount("/x\\"), b"/x\\");
        assert_eq!(unescape_mount("/plain"), b"/plain");
    }

    #[test]
    fn mount_dir_checks() {
        let d = tempfile::tempdir().unwrap();
        let e = check_mount_dir(&d.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        std::fs::write(d.path().join("f"), b"x").unwrap();
        let e = check_mount_dir(&d.path().join("f"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
        let e = check_mount_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
        let sub = d.path().join("m");
        std::fs::create_dir(&sub).unwrap();
        assert!(check_mount_dir(&sub).is_ok());
        assert!(check_mount_dir(Path::new("/proc")).is_err());
    }
}
