//! Replica specifications (`PATH` or `emu:PROFILE:PATH`) and opening them.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::ArrayError;
use crate::emu::Profile;

/// Sector size every replica offset and length must be a multiple of.
pub const SECTOR: u64 = 512;

/// How one replica of the array is backed.
#[derive(Clone, Debug)]
pub struct ReplicaSpec {
    /// The file or block device holding the replica's data.
    pub path: PathBuf,
    /// When set, completions are delayed by the flash emulator with this profile.
    pub profile: Option<Profile>,
    /// The text the user gave (for messages).
    pub text: String,
}

impl ReplicaSpec {
    /// Parses `PATH` or `emu:PROFILE:PATH`; PROFILE is a shipped profile name or
    /// a path to a profile TOML file.
    pub fn parse(text: &str) -> Result<Self, ArrayError> {
        let (profile, path) = match text.strip_prefix("emu:") {
            Some(rest) => {
                let (prof, path) = rest.split_once(':').ok_or_else(|| {
                    ArrayError::BadSpec(format!(
                        "replica '{text}': expected emu:PROFILE:PATH (profiles: {})",
                        Profile::builtin_names().join(", ")
                    ))
                })?;
                let profile = if prof.ends_with(".toml") {
                    Profile::from_file(Path::new(prof))?
                } else {
                    Profile::builtin(prof)?
                };
                (Some(profile), path)
            }
            None => (None, text),
        };
        if path.is_empty() {
            return Err(ArrayError::BadSpec(format!("replica '{text}': empty path")));
        }
        Ok(ReplicaSpec {
            path: PathBuf::from(path),
            profile,
            text: text.to_string(),
        })
    }

    /// A spec for an emulated replica at `path` with `profile`.
    pub fn emulated(profile: Profile, path: PathBuf) -> Self {
        let text = format!("emu:{}:{}", profile.name, path.display());
        ReplicaSpec {
            path,
            profile: Some(profile),
            text,
        }
    }
}

/// An opened replica backing: the file, its size and whether O_DIRECT is on.
#[derive(Debug)]
pub struct Backing {
    /// The open file or block device.
    pub file: File,
    /// Size in bytes.
    pub size: u64,
    /// True when opened with O_DIRECT.
    pub direct: bool,
    /// True when the backing is a block device.
    pub is_blockdev: bool,
    /// True when this call created the file (so a failed setup removes it).
    pub created: bool,
}

/// Opens a replica backing read-write, with O_DIRECT where the file system
/// supports it. `create_size` creates a missing regular file of that size.
pub fn open_backing(path: &Path, create_size: Option<u64>) -> Result<Backing, ArrayError> {
    let exists = path.exists();
    if !exists && create_size.is_none() {
        return Err(ArrayError::Missing(path.to_path_buf()));
    }
    let mut created = false;
    if !exists {
        let size = create_size.unwrap_or(0);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| ArrayError::io(path, "create", e))?;
        created = true;
        if let Err(e) = f.set_len(size) {
            let _ = std::fs::remove_file(path);
            return Err(ArrayError::io(path, "size", e));
        }
    }
    let result = open_existing(path).map(|mut b| {
        b.created = created;
        b
    });
    if result.is_err() && created {
        let _ = std::fs::remove_file(path);
    }
    result
}

fn open_existing(path: &Path) -> Result<Backing, ArrayError> {
    let open = |direct: bool| {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(path)
    };
    let (file, direct) = match open(true) {
        Ok(f) => (f, true),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let f = open(false).map_err(|e| ArrayError::io(path, "open", e))?;
            tracing::warn!(
                "{}: the file system does not support O_DIRECT (tmpfs?); using buffered I/O, flush still makes data durable",
                path.display()
            );
            (f, false)
        }
        Err(e) => return Err(ArrayError::io(path, "open", e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| ArrayError::io(path, "stat", e))?;
    let is_blockdev = meta.file_type().is_block_device();
    let size = if is_blockdev {
        blockdev_size(&file).map_err(|e| ArrayError::io(path, "BLKGETSIZE64", e))?
    } else if meta.is_file() {
        meta.len()
    } else {
        return Err(ArrayError::BadSpec(format!(
            "{}: not a regular file or block device",
            path.display()
        )));
    };
    Ok(Backing {
        file,
        size,
        direct,
        is_blockdev,
        created: false,
    })
}

fn blockdev_size(file: &File) -> std::io::Result<u64> {
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: the fd is open for the duration of the call and `size` is a valid
    // u64 the ioctl writes into.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_specs() {
        let s = ReplicaSpec::parse("/tmp/a.img").unwrap();
        assert!(s.profile.is_none());
        let s = ReplicaSpec::parse("emu:gc-heavy:/tmp/a:b.img").unwrap();
        assert_eq!(s.profile.unwrap().name, "gc-heavy");
        assert_eq!(s.path, PathBuf::from("/tmp/a:b.img"));
        let e = ReplicaSpec::parse("emu:nope:/tmp/a")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
        assert!(ReplicaSpec::parse("emu:gc-heavy").is_err());
    }

    #[test]
    fn create_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r0");
        let e = open_backing(&p, None).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        let b = open_backing(&p, Some(1 << 20)).unwrap();
        assert!(b.created);
        assert_eq!(b.size, 1 << 20);
    }
}
