//! The client side: one request to a daemon's socket, one reply back.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{Command, MAX_REPLY, Reply, Request, read_frame, write_frame};

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the path.
    #[error("no daemon answers on {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What connect said.
        source: std::io::Error,
    },
    /// The exchange failed midway.
    #[error("talking to {path}: {msg}")]
    Exchange {
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
}

/// Sends `cmd` to the daemon at `path` and returns its reply.
pub fn request(path: &Path, cmd: Command, timeout: Duration) -> Result<Reply, ClientError> {
    let mut s = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let fail = |msg: String| ClientError::Exchange {
        path: path.to_path_buf(),
        msg,
    };
    s.set_read_timeout(Some(timeout))
        .and_then(|_| s.set_write_timeout(Some(timeout)))
        .map_err(|e| fail(e.to_string()))?;
    let body = serde_json::to_vec(&Request::new(cmd)).map_err(|e| fail(e.to_string()))?;
    write_frame(&mut s, &body).map_err(|e| fail(e.to_string()))?;
    let reply = read_frame(&mut s, MAX_REPLY).map_err(|e| fail(e.to_string()))?;
    serde_json::from_slice(&reply).map_err(|e| fail(format!("unreadable reply: {e}")))
}
