//! The array's metadata on disk: one sidecar file per replica
//! (`PATH.augur-meta`, or in `--meta-dir`), holding who the replica is
//! (array id, its index, the replica count, the size, the generation), its
//! state, and the write-intent bitmap.
//!
//! A sidecar holds two copies of its record, written in turn (the record's
//! sequence number picks the slot), each ending in a CRC-32 of the rest; the
//! valid copy with the higher sequence number wins. A write torn by a crash
//! damages only the copy being written. A file whose copies are both bad is
//! corrupt: the array refuses to start on it.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// What a sidecar's name ends with.
pub const META_SUFFIX: &str = ".augur-meta";
/// The write-intent bitmap's default region: 4 MiB (see the README's
/// measurement of the bitmap's cost per region size).
pub const DEFAULT_REGION_SIZE: u64 = 4 << 20;
/// The smallest region size accepted.
pub const MIN_REGION_SIZE: u64 = 64 << 10;

const MAGIC: &[u8; 8] = b"AUGURMD\x01";
const VERSION: u32 = 1;
/// Fixed part of a record: everything before the bitmap words.
const HEADER_LEN: usize = 8 + 4 + 16 + 2 + 2 + 8 + 8 + 8 + 8 + 8 + 1 + 3 + 4;

/// How an array keeps its metadata (see [`crate::ArrayConfig::meta`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaOptions {
    /// Where sidecars live; `None`: beside each replica (`PATH.augur-meta`).
    pub dir: Option<PathBuf>,
    /// Bytes per bitmap region for a new array (a power of two, at least
    /// 64 KiB); an existing array keeps its own.
    pub region_size: u64,
    /// Ignore the metadata found (corrupt, missing on some replicas, stale),
    /// write it anew and resync every region from replica 0.
    pub force_resync: bool,
    /// Start with a stale replica and bring it up to date in the
    /// background (from the bitmap where it covers the gap, else whole).
    pub resync_stale: bool,
}

impl Default for MetaOptions {
    fn default() -> Self {
        MetaOptions {
            dir: None,
            region_size: DEFAULT_REGION_SIZE,
            force_resync: false,
            resync_stale: false,
        }
    }
}

impl MetaOptions {
    /// The sidecar of the replica at `replica`.
    pub fn sidecar(&self, replica: &Path) -> PathBuf {
        match &self.dir {
            None => {
                let mut s = replica.as_os_str().to_owned();
                s.push(META_SUFFIX);
                PathBuf::from(s)
            }
            Some(d) => {
                let flat: String = replica
                    .to_string_lossy()
                    .trim_start_matches('/')
                    .chars()
                    .map(|c| if c == '/' { '_' } else { c })
                    .collect();
                d.join(format!("{flat}{META_SUFFIX}"))
            }
        }
    }

    /// Checks the region size.
    pub fn validate(&self) -> Result<(), String> {
        let r = self.region_size;
        if r < MIN_REGION_SIZE || !r.is_power_of_two() {
            return Err(format!(
                "bitmap region size {r} must be a power of two of at least {MIN_REGION_SIZE} bytes"
            ));
        }
        Ok(())
    }
}

/// A replica's state in its own record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Holds the array's data.
    InSync = 0,
    /// Being rebuilt: its data cannot be trusted until the rebuild ends.
    Rebuilding = 1,
}

/// One replica's metadata record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The array's identity, the same on every replica.
    pub array_id: u128,
    /// This replica's place in the array.
    pub index: u16,
    /// How many replicas the array has.
    pub count: u16,
    /// The array's size in bytes.
    pub size: u64,
    /// Bytes per bitmap region.
    pub region_size: u64,
    /// Bumped at every change of membership (a replica failed, added,
    /// rebuilt, removed); a replica behind the others is stale.
    pub generation: u64,
    /// The generation from which the bitmap has not been cleared because a
    /// replica was missing (0: not degraded): a replica that left at
    /// generation `degraded_since - 1` or later can come back from the bitmap.
    pub degraded_since: u64,
    /// Which copy is newest.
    pub seq: u64,
    /// This replica's state.
    pub state: SlotState,
    /// Dirty regions: bit `r % 64` of word `r / 64`.
    pub bitmap: Vec<u64>,
}

/// Why a sidecar could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// Both copies fail their checksum or are not Augur metadata.
    #[error("{path}: corrupt Augur metadata ({why})")]
    Corrupt {
        /// The sidecar.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Reading or writing it failed.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The sidecar.
        path: PathBuf,
        /// What we were doing.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Record {
    /// Regions of `region_size` covering `size` bytes.
    pub fn regions_for(size: u64, region_size: u64) -> usize {
        size.div_ceil(region_size) as usize
    }

    fn encoded_len(words: usize) -> usize {
        HEADER_LEN + words * 8 + 4
    }

    /// The bytes one copy takes in the file (a multiple of 4096).
    fn slot_len(words: usize) -> u64 {
        (Self::encoded_len(words) as u64).div_ceil(4096) * 4096
    }

    /// The record's bytes, its CRC-32 last.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::encoded_len(self.bitmap.len()));
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&self.array_id.to_le_bytes());
        b.extend_from_slice(&self.index.to_le_bytes());
        b.extend_from_slice(&self.count.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.region_size.to_le_bytes());
        b.extend_from_slice(&self.generation.to_le_bytes());
        b.extend_from_slice(&self.degraded_since.to_le_bytes());
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.push(self.state as u8);
        b.extend_from_slice(&[0; 3]);
        b.extend_from_slice(&(self.bitmap.len() as u32).to_le_bytes());
        for w in &self.bitmap {
            b.extend_from_slice(&w.to_le_bytes());
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses one copy; the error says what is wrong with it.
    pub fn decode(b: &[u8]) -> Result<Record, String> {
        if b.len() < HEADER_LEN + 4 {
            return Err(format!("{} bytes, shorter than a record", b.len()));
        }
        if &b[..8] != MAGIC {
            return Err("no Augur metadata magic".into());
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let version = u32_at(8);
        if version != VERSION {
            return Err(format!(
                "metadata version {version}, this build reads {VERSION}"
            ));
        }
        let words = u32_at(HEADER_LEN - 4) as usize;
        let len = Self::encoded_len(words);
        if b.len() < len {
            return Err(format!("bitmap of {words} words runs past the copy"));
        }
        let crc = u32_at(len - 4);
        if crc32fast::hash(&b[..len - 4]) != crc {
            return Err("checksum mismatch".into());
        }
        let state = match b[72] {
            0 => SlotState::InSync,
            1 => SlotState::Rebuilding,
            s => return Err(format!("unknown replica state {s}")),
        };
        let r = Record {
            array_id: u128::from_le_bytes(b[12..28].try_into().unwrap_or([0; 16])),
            index: u16_at(28),
            count: u16_at(30),
            size: u64_at(32),
            region_size: u64_at(40),
            generation: u64_at(48),
            degraded_since: u64_at(56),
            seq: u64_at(64),
            state,
            bitmap: (0..words).map(|i| u64_at(HEADER_LEN + i * 8)).collect(),
        };
        if r.region_size < MIN_REGION_SIZE || !r.region_size.is_power_of_two() {
            return Err(format!("bad region size {}", r.region_size));
        }
        if words != Self::regions_for(r.size, r.region_size).div_ceil(64) {
            return Err(format!(
                "{words} bitmap words for {} regions",
                Self::regions_for(r.size, r.region_size)
            ));
        }
        Ok(r)
    }

    /// Reads a sidecar: `Ok(None)` when it does not exist.
    pub fn load(path: &Path) -> Result<Option<Record>, MetaError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(MetaError::Io {
                    path: path.to_path_buf(),
                    what: "read",
                    source: e,
                });
            }
        };
        let first = Record::decode(&bytes);
        // The second copy starts after the first's slot, whose length
        // follows from the bitmap's: try the length the first copy (if
        // valid) or its header gives.
        let words = first.as_ref().map(|r| r.bitmap.len()).unwrap_or_else(|_| {
            bytes
                .get(HEADER_LEN - 4..HEADER_LEN)
                .map(|w| u32::from_le_bytes(w.try_into().unwrap_or([0; 4])) as usize)
                .unwrap_or(0)
        });
        let off = Self::slot_len(words) as usize;
        let second = bytes
            .get(off..)
            .map(Record::decode)
            .unwrap_or_else(|| Err("missing".into()));
        match (first, second) {
            (Ok(a), Ok(b)) => Ok(Some(if b.seq > a.seq { b } else { a })),
            (Ok(a), Err(_)) => Ok(Some(a)),
            (Err(_), Ok(b)) => Ok(Some(b)),
            (Err(a), Err(b)) => Err(MetaError::Corrupt {
                path: path.to_path_buf(),
                why: format!("first copy: {a}; second copy: {b}"),
            }),
        }
    }
}

/// A sidecar open for writing.
#[derive(Debug)]
pub struct Sidecar {
    path: PathBuf,
    file: File,
}

impl Sidecar {
    /// Opens (creating) the sidecar at `path`.
    pub fn open(path: &Path) -> Result<Sidecar, MetaError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| MetaError::Io {
                path: path.to_path_buf(),
                what: "open",
                source: e,
            })?;
        Ok(Sidecar {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `r` into the copy its sequence number picks, durably.
    pub fn store(&self, r: &Record) -> Result<(), MetaError> {
        let bytes = r.encode();
        let off = (r.seq % 2) * Record::slot_len(r.bitmap.len());
        let io = |what, e| MetaError::Io {
            path: self.path.clone(),
            what,
            source: e,
        };
        self.file
            .write_all_at(&bytes, off)
            .map_err(|e| io("write", e))?;
        self.file.sync_data().map_err(|e| io("fdatasync", e))
    }
}

/// A new array id: 16 bytes from the kernel's random pool.
pub fn new_array_id() -> u128 {
    let mut b = [0u8; 16];
    // SAFETY: `b` is a valid, writable 16-byte buffer for the duration of
    // the call; getrandom writes at most that many bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 16 {
        // No random pool: the time and pid still make clashes unlikely.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return t ^ (u128::from(std::process::id()) << 96);
    }
    u128::from_le_bytes(b)
}

/// An array id as messages show it: 32 hex digits, the first 8 enough to tell.
pub fn id_text(id: u128) -> String {
    format!("{id:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> Record {
        let size = 100 << 20;
        Record {
            array_id: 0x1234_5678_9abc_def0_0fed_cba9_8765_4321,
            index: 1,
            count: 3,
            size,
            region_size: 4 << 20,
            generation: 7,
            degraded_since: 0,
            seq,
            state: SlotState::InSync,
            bitmap: vec![0b1010; Record::regions_for(size, 4 << 20).div_ceil(64)],
        }
    }

    #[test]
    fn round_trip_and_checksum() {
        let r = rec(3);
        let b = r.encode();
        assert_eq!(Record::decode(&b).unwrap(), r);
        let mut bad = b.clone();
        bad[40] ^= 1;
        assert!(Record::decode(&bad).unwrap_err().contains("checksum"));
        assert!(Record::decode(&b[..20]).is_err());
        let mut other = b;
        other[0] = b'X';
        assert!(Record::decode(&other).unwrap_err().contains("magic"));
    }

    #[test]
    fn newest_valid_copy_wins_and_torn_copy_is_survived() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.augur-meta");
        assert!(Record::load(&p).unwrap().is_none());
        let s = Sidecar::open(&p).unwrap();
        s.store(&rec(4)).unwrap();
        s.store(&rec(5)).unwrap();
        assert_eq!(Record::load(&p).unwrap().unwrap().seq, 5);
        // Tear copy 5 (slot 1): copy 4 is used.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[0xFF; 16], Record::slot_len(1) + 30)
            .unwrap();
        assert_eq!(Record::load(&p).unwrap().unwrap().seq, 4);
        // Both torn: corrupt, named.
        f.write_all_at(&[0xFF; 16], 30).unwrap();
        let e = Record::load(&p).unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("r.augur-meta"), "{e}");
    }

    #[test]
    fn sidecar_names() {
        let o = MetaOptions::default();
        assert_eq!(
            o.sidecar(Path::new("/srv/a.img")),
            PathBuf::from("/srv/a.img.augur-meta")
        );
        let o = MetaOptions {
            dir: Some(PathBuf::from("/var/lib/augur")),
            ..MetaOptions::default()
        };
        assert_eq!(
            o.sidecar(Path::new("/dev/vdb")),
            PathBuf::from("/var/lib/augur/dev_vdb.augur-meta")
        );
        assert!(
            MetaOptions {
                region_size: 3 << 20,
                ..MetaOptions::default()
            }
            .validate()
            .is_err()
        );
    }
}
