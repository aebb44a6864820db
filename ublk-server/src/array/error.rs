//! Errors of the array and its setup, each naming what is wrong.

use std::path::{Path, PathBuf};

/// Why an array could not be built or a request could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum ArrayError {
    /// A replica path that does not exist and no size to create it with.
    #[error("replica {0} does not exist (give --size to create it)")]
    Missing(PathBuf),
    /// An I/O error on a replica backing while setting up.
    #[error("{path}: {what}")]
    Io {
        /// The replica path.
        path: PathBuf,
        /// What we were doing.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Replica sizes differ.
    #[error("replica sizes differ: {0}")]
    SizeMismatch(String),
    /// A malformed replica spec or array setting.
    #[error("{0}")]
    BadSpec(String),
    /// A bad emulator profile.
    #[error(transparent)]
    Profile(#[from] crate::emu::ProfileError),
    /// An unknown routing policy name.
    #[error("unknown policy '{0}' (known: {known})", known = crate::route::POLICY_NAMES.join(", "))]
    UnknownPolicy(String),
    /// The replicas' metadata refuses them (corrupt, foreign, stale, out of order).
    #[error("{0}")]
    Metadata(String),
    /// io_uring could not be set up.
    #[error("io_uring setup failed: {0}")]
    Ring(std::io::Error),
}

impl ArrayError {
    /// Wraps an I/O error with the path and the step that failed.
    pub fn io(path: &Path, what: &'static str, source: std::io::Error) -> Self {
        ArrayError::Io {
            path: path.to_path_buf(),
            what,
            source,
        }
    }
}
