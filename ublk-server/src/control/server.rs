//! The control socket: its directory and modes, stale-socket detection, the
//! peer check, and the thread that answers requests.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::daemon::Daemon;
use super::protocol::{FrameError, MAX_REQUEST, Reply, parse_request, read_frame, write_frame};

/// How long a client may take to send its request or read the reply.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The accept loop's sleep while no client is waiting.
const IDLE: Duration = Duration::from_millis(20);
/// An oversized request is read (and thrown away) up to this much so that
/// its sender can read the error; beyond it the connection is just closed.
const DRAIN_LIMIT: usize = 16 << 20;

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket directory could not be made private.
    #[error("control directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The directory belongs to another user.
    #[error("control directory {path} is owned by uid {owner}, not this daemon's uid {me}")]
    DirOwner {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        me: u32,
    },
    /// A live daemon already listens there.
    #[error("{0} is in use by a running daemon (augur list shows it)")]
    InUse(PathBuf),
    /// Something that is not a socket has the name.
    #[error("{0} exists and is not a socket; remove it")]
    NotASocket(PathBuf),
    /// Binding or setting up the socket failed.
    #[error("control socket {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// Where control sockets live: `$AUGUR_RUN_DIR`, else `/run/augur`.
pub fn run_dir() -> PathBuf {
    std::env::var_os("AUGUR_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/augur"))
}

/// The socket of ublk device `id`.
pub fn socket_for_ublk(id: u32) -> PathBuf {
    run_dir().join(format!("ublk{id}.sock"))
}

/// The socket name of a FUSE daemon mounted on `mount`: `fuse-` and the
/// path with `/` as `-` (`/mnt/a` -> `fuse-mnt-a`), shortened with a hash
/// when it would not fit a socket address.
pub fn fuse_name(mount: &Path) -> String {
    let flat: String = mount
        .to_string_lossy()
        .trim_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = format!("fuse-{flat}");
    if name.len() <= 64 {
        return name;
    }
    let h = crc32fast::hash(mount.as_os_str().as_encoded_bytes());
    format!("fuse-{}-{h:08x}", &flat[flat.len() - 40..])
}

/// The effective uid of this process.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid of the process at the other end of `s` (SO_PEERCRED).
fn peer_uid(s: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` holds the
    // size of `cred`, as SO_PEERCRED requires; the fd is open for the call.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Makes `dir` exist, owned by this uid, mode 0700.
fn private_dir(dir: &Path) -> Result<(), ControlError> {
    let err = |source| ControlError::Dir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let md = std::fs::metadata(dir).map_err(err)?;
    if md.uid() != euid() {
        return Err(ControlError::DirOwner {
            path: dir.to_path_buf(),
            owner: md.uid(),
            me: euid(),
        });
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// Binds `path`, replacing a stale socket (nobody answers on it) and
/// refusing one a live daemon holds.
fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let bind_err = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(md) => {
            use std::os::unix::fs::FileTypeExt;
            if !md.file_type().is_socket() {
                return Err(ControlError::NotASocket(path.to_path_buf()));
            }
            match UnixStream::connect(path) {
                Ok(_) => return Err(ControlError::InUse(path.to_path_buf())),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::info!("removing stale control socket {}", path.display());
                    std::fs::remove_file(path).map_err(bind_err)?;
                }
                Err(e) => return Err(bind_err(e)),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let l = match UnixListener::bind(path) {
        Ok(l) => l,
        // Another daemon bound it since the check.
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return Err(ControlError::InUse(path.to_path_buf()));
        }
        Err(e) => return Err(bind_err(e)),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    l.set_nonblocking(true).map_err(bind_err)?;
    Ok(l)
}

/// A running control socket; dropping it stops the thread and removes the
/// socket.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    daemon: Arc<Daemon>,
}

impl ControlServer {
    /// Listens on `<dir>/<name>.sock` for `daemon` ([`run_dir`] is the
    /// usual `dir`).
    pub fn start(daemon: Arc<Daemon>, dir: &Path) -> Result<ControlServer, ControlError> {
        private_dir(dir)?;
        let path = dir.join(format!("{}.sock", daemon.info().name));
        let listener = bind(&path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, daemon) = (stop.clone(), daemon.clone());
            std::thread::Builder::new()
                .name("augur-control".into())
                .spawn(move || serve(&listener, &daemon, &stop))
                .map_err(|source| ControlError::Bind {
                    path: path.clone(),
                    source,
                })?
        };
        tracing::info!("control socket {}", path.display());
        Ok(ControlServer {
            path,
            stop,
            thread: Some(thread),
            daemon,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.daemon.finish();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The control thread: answers one connection at a time until stopped.
fn serve(listener: &UnixListener, daemon: &Daemon, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        daemon.tick();
        match listener.accept() {
            Ok((s, _)) => {
                if let Err(e) = answer(s, daemon) {
                    tracing::debug!("control connection: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(IDLE),
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                std::thread::sleep(IDLE);
            }
        }
    }
}

fn send(s: &mut UnixStream, r: &Reply) -> std::io::Result<()> {
    let body = serde_json::to_vec(r).map_err(std::io::Error::other)?;
    write_frame(s, &body)
}

/// Reads one request from `s` and writes the reply.
fn answer(mut s: UnixStream, daemon: &Daemon) -> std::io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let degraded = daemon.array().live_count() < daemon.array().replica_count();
    // The socket's mode keeps others out; this is the second line.
    let uid = peer_uid(&s)?;
    if uid != 0 && uid != euid() {
        tracing::warn!("control socket: refused uid {uid}");
        return send(
            &mut s,
            &Reply::error(
                format!("permission denied: uid {uid} is not root"),
                degraded,
            ),
        );
    }
    let body = match read_frame(&mut s, MAX_REQUEST) {
        Ok(b) => b,
        Err(FrameError::TooLarge { len, max }) => {
            let r = Reply::error(
                format!("request of {len} bytes is over the {max}-byte limit"),
                degraded,
            );
            if len <= DRAIN_LIMIT {
                let _ = std::io::copy(&mut (&mut s).take(len as u64), &mut std::io::sink());
            }
            return send(&mut s, &r);
        }
        Err(FrameError::Io(e)) => return Err(e),
    };
    let reply = match parse_request(&body) {
        Ok(req) => daemon.handle(req.command),
        Err(e) => Reply::error(e, degraded),
    };
    send(&mut s, &reply)?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_sockets_are_replaced_live_ones_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("run");
        private_dir(&dir).unwrap();
        let md = std::fs::metadata(&dir).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o700);
        let p = dir.join("x.sock");
        let live = bind(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A daemon answers on it: refused, and its socket stays.
        assert!(matches!(bind(&p), Err(ControlError::InUse(_))));
        assert!(p.exists());
        // The daemon died without removing it: stale, replaced.
        drop(live);
        assert!(p.exists());
        let again = bind(&p).unwrap();
        drop(again);
        // Not a socket: left alone, named.
        let f = dir.join("f.sock");
        std::fs::write(&f, b"keep").unwrap();
        let e = bind(&f).err().unwrap().to_string();
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read(&f).unwrap(), b"keep");
    }

    #[test]
    fn fuse_names_are_flat_and_short() {
        assert_eq!(fuse_name(Path::new("/mnt/augur")), "fuse-mnt-augur");
        assert_eq!(fuse_name(Path::new("/tmp/a b/c/")), "fuse-tmp-a-b-c");
        let long = Path::new("/x").join("y".repeat(200));
        let n = fuse_name(&long);
        assert!(n.len() <= 64 && n.starts_with("fuse-"), "{n}");
        assert_ne!(n, fuse_name(&Path::new("/z").join("y".repeat(200))));
    }
}
