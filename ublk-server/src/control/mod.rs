//! The control plane: a unix socket per daemon to ask it how it is, swap
//! its model or policy live, and record its training log.
//!
//! Every `augur serve` and `augur fuse` daemon listens on
//! `/run/augur/<name>.sock` (`ublk0`, or `fuse-` and the mount path; the
//! directory is overridden by `$AUGUR_RUN_DIR`). The directory is 0700 and
//! the socket 0600, both the daemon's (root's); each connection's peer uid
//! is checked as well (SO_PEERCRED). A socket nobody answers on is stale
//! and replaced at start; one a live daemon answers on is refused, so two
//! daemons never share one. `augur ctl` is the client, `augur list` asks
//! each daemon for its policy and model.
//!
//! The protocol (version 1) is in [`protocol`]: one request per connection,
//! length-prefixed JSON both ways. A malformed, oversized or unknown request
//! gets an error reply; requests are answered on the control thread, never
//! on an I/O thread, and a model swap is one atomic pointer store the I/O
//! threads see at their next batch.
//!
//! | file | what it holds |
//! |---|---|
//! | `protocol.rs` | the messages, their framing and parsing |
//! | `server.rs` | the socket: directory, modes, stale sockets, peer check, the thread |
//! | `daemon.rs` | what a daemon answers with: status, stats, model, policy, recording |
//! | `models.rs` | the active model, rollback, and the history |
//! | `client.rs` | one request, one reply |

pub mod client;
pub mod daemon;
pub mod models;
pub mod protocol;
pub mod server;
pub mod tap;

pub use client::{ClientError, request};
pub use daemon::{Daemon, DaemonInfo};
pub use models::{ModelBook, ModelEntry, ModelEvent};
pub use protocol::{Command, PROTOCOL_VERSION, Reply, Request};
pub use server::{ControlError, ControlServer, fuse_name, run_dir, socket_for_ublk};
