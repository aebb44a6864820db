//! The control protocol, version 1: its messages and their framing.
//!
//! One request per connection. Each message, either way, is a 4-byte
//! big-endian length and then that many bytes of UTF-8 JSON. A request is
//! an object with `"version": 1` and a `"command"` (with its arguments
//! beside it); the reply is a [`Reply`]. A request over [`MAX_REQUEST`]
//! bytes is answered with an error without being read.
//!
//! ```text
//! -> {"version":1,"command":"model-load","file":"/var/lib/augur/m.augm"}
//! <- {"version":1,"ok":true,"degraded":false,"error":null,
//!     "result":{"old":"4f1c09aa","new":"d2b7e001"}}
//! ```

use std::io::{Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest request accepted, bytes of JSON.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Largest reply a client accepts, bytes of JSON.
pub const MAX_REPLY: usize = 16 << 20;

/// What a request asks the daemon to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Command {
    /// Device, replicas (with the last interval's IOPS and read latency),
    /// policy, model, uptime.
    Status,
    /// Counters since start, per replica and for the predictor.
    Stats,
    /// The active model.
    ModelShow,
    /// Validate a model file (or `default`) and swap it in.
    ModelLoad {
        /// A model file on the daemon's machine, or `default`.
        file: String,
    },
    /// Every model installed, rolled back or rejected since start.
    ModelHistory,
    /// Put the model before the active one back.
    ModelRollback,
    /// Write the active model to a new file (so that an adapted model
    /// outlives the daemon).
    ModelSave {
        /// The file to create (it must not exist).
        file: PathBuf,
    },
    /// Switch the routing policy (the active model stays).
    PolicySet {
        /// A policy name as `--policy` takes it.
        name: String,
    },
    /// Start writing the live device's training log to a new file.
    RecordStart {
        /// The file to create (it must not exist).
        file: PathBuf,
    },
    /// Stop recording; the reply says how many records were written.
    RecordStop,
    /// Switch every emulated replica to another profile (tests, demos).
    EmuSetProfile {
        /// A shipped profile's name, or a profile TOML file on the daemon's machine.
        profile: String,
    },
    /// Mark a replica failed, as an I/O error would (a drill).
    ReplicaFail {
        /// The replica's index.
        replica: usize,
    },
    /// Take a replica out of the array.
    ReplicaRemove {
        /// The replica's index.
        replica: usize,
    },
    /// Put a new replica into the first failed or removed slot; it is
    /// rebuilt in the background while the device serves.
    ReplicaAdd {
        /// `PATH` or `emu:PROFILE:PATH` on the daemon's machine.
        spec: String,
    },
    /// Replace a replica with a new one, rebuilt in the background.
    ReplicaReplace {
        /// The replica's index.
        replica: usize,
        /// `PATH` or `emu:PROFILE:PATH` on the daemon's machine.
        spec: String,
    },
    /// Compare every region of every live replica in the background
    /// (`status` shows progress and, at the end, the result).
    Scrub {
        /// Rewrite differing regions from the majority (the first replica with two).
        repair: bool,
    },
    /// Set the resync/rebuild/scrub rate limit.
    SyncRate {
        /// Bytes per second (0: no limit).
        bytes_per_s: u64,
    },
}

impl Command {
    /// The command names, as requests spell them.
    pub const NAMES: &'static [&'static str] = &[
        "status",
        "stats",
        "model-show",
        "model-load",
        "model-history",
        "model-rollback",
        "model-save",
        "policy-set",
        "record-start",
        "record-stop",
        "emu-set-profile",
        "replica-fail",
        "replica-remove",
        "replica-add",
        "replica-replace",
        "scrub",
        "sync-rate",
    ];
}

/// A request: the version and the command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Must be [`PROTOCOL_VERSION`].
    pub version: u32,
    /// What to do.
    #[serde(flatten)]
    pub command: Command,
}

impl Request {
    /// A request of this build's version.
    pub fn new(command: Command) -> Self {
        Request {
            version: PROTOCOL_VERSION,
            command,
        }
    }
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The daemon's protocol version.
    pub version: u32,
    /// False when the request failed; `error` says why.
    pub ok: bool,
    /// True while a replica has failed (the array serves from the others).
    pub degraded: bool,
    /// Why the request failed.
    pub error: Option<String>,
    /// The command's result (`null` on error).
    pub result: serde_json::Value,
}

impl Reply {
    /// A successful reply.
    pub fn ok(result: serde_json::Value, degraded: bool) -> Self {
        Reply {
            version: PROTOCOL_VERSION,
            ok: true,
            degraded,
            error: None,
            result,
        }
    }

    /// A failed reply.
    pub fn error(msg: impl Into<String>, degraded: bool) -> Self {
        Reply {
            version: PROTOCOL_VERSION,
            ok: false,
            degraded,
            error: Some(msg.into()),
            result: serde_json::Value::Null,
        }
    }
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix is over the limit.
    #[error("message of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// The length it announced.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The connection failed or closed early.
    #[error("reading the message: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes one message: length, then the bytes.
pub fn write_frame(w: &mut impl Write, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "message too large"))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// Reads one message of at most `max` bytes.
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Parses a request, with an error that names what is wrong.
pub fn parse_request(body: &[u8]) -> Result<Request, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("malformed request: {e}"))?;
    let version = v.get("version").and_then(|x| x.as_u64());
    match version {
        Some(n) if n == u64::from(PROTOCOL_VERSION) => {}
        Some(n) => {
            return Err(format!(
                "protocol version {n} is not spoken here (this daemon speaks {PROTOCOL_VERSION})"
            ));
        }
        None => return Err("malformed request: no \"version\" number".into()),
    }
    match v.get("command").and_then(|c| c.as_str()) {
        Some(c) if Command::NAMES.contains(&c) => {}
        Some(c) => {
            return Err(format!(
                "unknown command '{c}' (known: {})",
                Command::NAMES.join(", ")
            ));
        }
        None => return Err("malformed request: no \"command\" string".into()),
    }
    serde_json::from_value(v).map_err(|e| format!("malformed request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_say_why() {
        let cmds = [
            Command::Status,
            Command::Stats,
            Command::ModelShow,
            Command::ModelLoad {
                file: "m.augm".into(),
            },
            Command::ModelHistory,
            Command::ModelRollback,
            Command::ModelSave {
                file: "/tmp/m.augm".into(),
            },
            Command::PolicySet {
                name: "linnos".into(),
            },
            Command::RecordStart {
                file: "/tmp/x.log".into(),
            },
            Command::RecordStop,
            Command::EmuSetProfile {
                profile: "gc-heavy".into(),
            },
            Command::ReplicaFail { replica: 1 },
            Command::ReplicaRemove { replica: 2 },
            Command::ReplicaAdd {
                spec: "/srv/new.img".into(),
            },
            Command::ReplicaReplace {
                replica: 0,
                spec: "emu:gc-heavy:/srv/n.img".into(),
            },
            Command::Scrub { repair: true },
            Command::SyncRate {
                bytes_per_s: 1 << 20,
            },
        ];
        assert_eq!(cmds.len(), Command::NAMES.len());
        for c in cmds {
            let body = serde_json::to_vec(&Request::new(c.clone())).unwrap();
            let name = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["command"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(Command::NAMES.contains(&name.as_str()), "{name}");
            assert_eq!(parse_request(&body).unwrap().command, c);
        }
        for (body, says) in [
            (&b"{not json"[..], "malformed request"),
            (br#"{"command":"status"}"#, "no \"version\""),
            (br#"{"version":7,"command":"status"}"#, "version 7"),
            (
                br#"{"version":1,"command":"format"}"#,
                "unknown command 'format'",
            ),
            (br#"{"version":1}"#, "no \"command\""),
            (
                br#"{"version":1,"command":"model-load"}"#,
                "missing field `file`",
            ),
        ] {
            let e = parse_request(body).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn frames_round_trip_and_refuse_oversized() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").unwrap();
        assert_eq!(read_frame(&mut &buf[..], 5).unwrap(), b"hello");
        let e = read_frame(&mut &buf[..], 4).unwrap_err();
        assert!(
            e.to_string().contains("5 bytes is over the 4-byte limit"),
            "{e}"
        );
        assert!(matches!(
            read_frame(&mut &buf[..3], 9),
            Err(FrameError::Io(_))
        ));
    }
}
