//! The binary training-log file: [`LogWriter`], the streaming [`LogReader`],
//! and [`read_log`] / [`read_log_from`]. Format: see the crate docs.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::record::{RECORD_SIZE, RecordError, TrainingRecord};

/// First 8 bytes of every training-log file.
pub const LOG_MAGIC: [u8; 8] = *b"AUGURLOG";
/// Format version written and accepted.
pub const LOG_VERSION: u32 = 4;
/// Header size: magic, u32 version, u32 record size.
pub const HEADER_SIZE: usize = 16;

/// Why a training log could not be written or read; messages name the problem.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Underlying read/write failure.
    #[error("training log I/O error: {0}")]
    Io(#[from] io::Error),
    /// Opening a log file by path failed.
    #[error("cannot open training log {path}: {source}")]
    Open {
        /// The file that could not be opened.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file ends inside the 16-byte header.
    #[error("truncated training log header: {got} of {HEADER_SIZE} bytes")]
    TruncatedHeader {
        /// Bytes present.
        got: usize,
    },
    /// The first 8 bytes are not `AUGURLOG`.
    #[error("not an Augur training log: bad magic {found:02x?} (expected \"AUGURLOG\")")]
    BadMagic {
        /// The bytes found instead.
        found: [u8; 8],
    },
    /// A version this build does not read.
    #[error(
        "unsupported training log version {found} (this build reads version {LOG_VERSION}; versions 1 to 3 lack the pending-age, read-maximum or write-latency features: re-record them)"
    )]
    UnsupportedVersion {
        /// Version in the header.
        found: u32,
    },
    /// The header's record size does not match this build's layout.
    #[error("training log record size {found} does not match expected {RECORD_SIZE}")]
    RecordSize {
        /// Record size in the header.
        found: u32,
    },
    /// The file ends inside a record (e.g. a writer was killed mid-write).
    #[error("truncated record {index}: {got} of {RECORD_SIZE} bytes")]
    TruncatedRecord {
        /// 0-based index of the incomplete record.
        index: u64,
        /// Bytes of it present.
        got: usize,
    },
    /// A complete record with invalid contents.
    #[error("invalid record {index}: {source}")]
    InvalidRecord {
        /// 0-based index of the record.
        index: u64,
        /// What is wrong with it.
        #[source]
        source: RecordError,
    },
}

/// Binary training-log file (format documented in the crate docs).
///
/// Writes the header on creation and whole records on each `write`; wrap a
/// `File` in a `BufWriter` if you write records one by one.
#[derive(Debug)]
pub struct LogWriter<W: Write> {
    w: W,
    buf: Vec<u8>,
    written: u64,
}

impl<W: Write> LogWriter<W> {
    /// Start a log on `w`: writes the header.
    pub fn new(mut w: W) -> Result<Self, LogError> {
        let mut header = [0u8; HEADER_SIZE];
        header[..8].copy_from_slice(&LOG_MAGIC);
        header[8..12].copy_from_slice(&LOG_VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(RECORD_SIZE as u32).to_le_bytes());
        w.write_all(&header)?;
        Ok(Self {
            w,
            buf: Vec::new(),
            written: 0,
        })
    }

    /// Append `recs` (encoded into one buffer, then one `write_all`).
    pub fn write(&mut self, recs: &[TrainingRecord]) -> Result<(), LogError> {
        self.buf.clear();
        self.buf.reserve(recs.len() * RECORD_SIZE);
        for r in recs {
            self.buf.extend_from_slice(&r.to_bytes());
        }
        self.w.write_all(&self.buf)?;
        self.written += recs.len() as u64;
        Ok(())
    }

    /// Records written so far.
    pub fn records_written(&self) -> u64 {
        self.written
    }

    /// Flush and hand back the writer.
    pub fn finish(mut self) -> Result<W, LogError> {
        self.w.flush()?;
        Ok(self.w)
    }
}

/// Read until `buf` is full or EOF; returns bytes read (retries `Interrupted`).
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Streaming reader: validates the header, then yields one record at a time,
/// so multi-GB logs need not be loaded whole.
///
/// Iteration yields `Ok(record)` per record, then stops; a truncated trailing
/// record or an invalid one yields one `Err` and then the iterator ends.
#[derive(Debug)]
pub struct LogReader<R: Read> {
    r: R,
    index: u64,
    done: bool,
}

impl<R: Read> LogReader<R> {
    /// Read and validate the header (magic, version, record size).
    /// Wrap a `File` in a `BufReader` for speed.
    pub fn new(mut r: R) -> Result<Self, LogError> {
        let mut header = [0u8; HEADER_SIZE];
        let got = read_full(&mut r, &mut header)?;
        if got < 8 || header[..8] != LOG_MAGIC {
            if got >= 8 {
                let mut found = [0u8; 8];
                found.copy_from_slice(&header[..8]);
                return Err(LogError::BadMagic { found });
            }
            // A short file that is not even a magic prefix is not a log at all.
            if header[..got] != LOG_MAGIC[..got] {
                let mut found = [0u8; 8];
                found[..got].copy_from_slice(&header[..got]);
                return Err(LogError::BadMagic { found });
            }
            return Err(LogError::TruncatedHeader { got });
        }
        if got < HEADER_SIZE {
            return Err(LogError::TruncatedHeader { got });
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if version != LOG_VERSION {
            return Err(LogError::UnsupportedVersion { found: version });
        }
        let size = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        if size as usize != RECORD_SIZE {
            return Err(LogError::RecordSize { found: size });
        }
        Ok(Self {
            r,
            index: 0,
            done: false,
        })
    }

    /// Next record: `Ok(None)` at a clean end of file.
    pub fn read_record(&mut self) -> Result<Option<TrainingRecord>, LogError> {
        if self.done {
            return Ok(None);
        }
        let mut b = [0u8; RECORD_SIZE];
        let got = match read_full(&mut self.r, &mut b) {
            Ok(got) => got,
            Err(e) => {
                self.done = true;
                return Err(e.into());
            }
        };
        let index = self.index;
        if got == 0 {
            self.done = true;
            return Ok(None);
        }
        if got < RECORD_SIZE {
            self.done = true;
            return Err(LogError::TruncatedRecord { index, got });
        }
        match TrainingRecord::from_bytes(&b) {
            Ok(rec) => {
                self.index += 1;
                Ok(Some(rec))
            }
            Err(source) => {
                self.done = true;
                Err(LogError::InvalidRecord { index, source })
            }
        }
    }

    /// Records successfully read so far (also the index of the next one).
    pub fn records_read(&self) -> u64 {
        self.index
    }
}

impl<R: Read> Iterator for LogReader<R> {
    type Item = Result<TrainingRecord, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.read_record().transpose()
    }
}

/// Read a whole log file into memory (use [`LogReader`] to stream instead).
pub fn read_log(path: &Path) -> Result<Vec<TrainingRecord>, LogError> {
    let f = std::fs::File::open(path).map_err(|source| LogError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    read_log_from(io::BufReader::new(f))
}

/// Read a whole log from any reader; fails on the first problem.
pub fn read_log_from<R: Read>(r: R) -> Result<Vec<TrainingRecord>, LogError> {
    LogReader::new(r)?.collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::record_for;

    fn encoded(n: u64) -> (Vec<TrainingRecord>, Vec<u8>) {
        let recs: Vec<_> = (0..n).map(|i| record_for(i * 7919)).collect();
        let mut w = LogWriter::new(Vec::new()).expect("header");
        w.write(&recs[..recs.len() / 2]).expect("write");
        w.write(&recs[recs.len() / 2..]).expect("write");
        assert_eq!(w.records_written(), n);
        (recs, w.finish().expect("finish"))
    }

    #[test]
    fn file_round_trip_in_memory_streaming_and_on_disk() {
        let (recs, bytes) = encoded(50);
        assert_eq!(bytes.len(), HEADER_SIZE + 50 * RECORD_SIZE);
        assert_eq!(&bytes[..8], b"AUGURLOG");
        assert_eq!(read_log_from(&bytes[..]).expect("read"), recs);

        let mut reader = LogReader::new(&bytes[..]).expect("header");
        let mut n = 0;
        for (i, r) in reader.by_ref().enumerate() {
            assert_eq!(r.expect("record"), recs[i]);
            n += 1;
        }
        assert_eq!((n, reader.records_read()), (50, 50));

        let (empty, bytes0) = encoded(0);
        assert_eq!(read_log_from(&bytes0[..]).expect("empty log"), empty);

        let path = std::env::temp_dir().join(format!(
            "augur-feature-store-test-{}.log",
            std::process::id()
        ));
        std::fs::write(&path, &bytes).expect("write temp file");
        let back = read_log(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(back.expect("read file"), recs);

        let missing = read_log(Path::new("/nonexistent/augur.log")).unwrap_err();
        assert!(matches!(missing, LogError::Open { .. }));
        assert!(missing.to_string().contains("/nonexistent/augur.log"));
    }

    #[test]
    fn bad_magic_is_rejected() {
        let (_, mut bytes) = encoded(2);
        bytes[..8].copy_from_slice(b"NOTALOG!");
        let e = read_log_from(&bytes[..]).unwrap_err();
        assert!(matches!(e, LogError::BadMagic { found } if &found == b"NOTALOG!"));
        assert!(e.to_string().contains("bad magic"), "{e}");
        // A short non-log file is bad magic too, not a truncated header.
        let e = read_log_from(&b"hi"[..]).unwrap_err();
        assert!(matches!(e, LogError::BadMagic { .. }), "{e}");
    }

    #[test]
    fn wrong_version_and_record_size_are_rejected() {
        let (_, mut bytes) = encoded(2);
        bytes[8..12].copy_from_slice(&5u32.to_le_bytes());
        let e = read_log_from(&bytes[..]).unwrap_err();
        assert!(matches!(e, LogError::UnsupportedVersion { found: 5 }));
        assert!(e.to_string().contains("version 5"), "{e}");
        // Older logs (before the pending-age, read-maximum and write-latency
        // features) are named as such.
        for old in [1u32, 2, 3] {
            let (_, mut bytes) = encoded(2);
            bytes[8..12].copy_from_slice(&old.to_le_bytes());
            let e = read_log_from(&bytes[..]).unwrap_err();
            assert!(e.to_string().contains("re-record"), "{e}");
        }

        let (_, mut bytes) = encoded(2);
        bytes[12..16].copy_from_slice(&64u32.to_le_bytes());
        let e = read_log_from(&bytes[..]).unwrap_err();
        assert!(matches!(e, LogError::RecordSize { found: 64 }), "{e}");
    }

    #[test]
    fn truncated_file_reports_header_or_record_index() {
        let (recs, bytes) = encoded(5);
        let e = read_log_from(&bytes[..12]).unwrap_err();
        assert!(matches!(e, LogError::TruncatedHeader { got: 12 }), "{e}");
        let e = read_log_from(&bytes[..3]).unwrap_err();
        assert!(matches!(e, LogError::TruncatedHeader { got: 3 }), "{e}");
        assert!(matches!(
            read_log_from(&[][..]).unwrap_err(),
            LogError::TruncatedHeader { got: 0 }
        ));

        let cut = HEADER_SIZE + 3 * RECORD_SIZE + 10;
        let e = read_log_from(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(e, LogError::TruncatedRecord { index: 3, got: 10 }),
            "{e}"
        );
        assert!(e.to_string().contains("truncated record 3"), "{e}");

        // Streaming keeps the good prefix, then reports the error once.
        let items: Vec<_> = LogReader::new(&bytes[..cut]).expect("header").collect();
        assert_eq!(items.len(), 4);
        for (i, r) in items[..3].iter().enumerate() {
            assert_eq!(r.as_ref().expect("good record"), &recs[i]);
        }
        assert!(items[3].is_err());
    }

    #[test]
    fn invalid_record_contents_are_rejected_with_index() {
        let (_, mut bytes) = encoded(3);
        bytes[HEADER_SIZE + RECORD_SIZE + 18] = 200; // op byte of record 1
        let e = read_log_from(&bytes[..]).unwrap_err();
        assert!(
            matches!(
                e,
                LogError::InvalidRecord {
                    index: 1,
                    source: RecordError::InvalidOp(200)
                }
            ),
            "{e}"
        );
    }
}
