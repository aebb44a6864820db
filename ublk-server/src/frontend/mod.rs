//! The block-device front-ends: how requests reach an [`Array`](crate::Array).
//!
//! - [`ublk`]: `/dev/ublkbN` through the kernel's ublk driver (io_uring);
//!   one thread per ublk queue, each owning its own array queue.
//! - [`fuse`]: one file, `disk.img`, in a FUSE mount (with an optional loop
//!   device on top), where the kernel has no ublk.

pub mod fuse;
pub mod ublk;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::array::Array;
use crate::control::{ControlServer, Daemon, DaemonInfo, ModelEntry, run_dir};
use crate::metrics::MetricsServer;

/// What a daemon serves besides its device: the control socket and, when
/// asked, the metrics endpoint. Dropping it stops both (metrics first).
pub(crate) struct Services {
    _metrics: Option<MetricsServer>,
    _control: ControlServer,
}

/// Starts the control socket (with `model` active) and, given an address,
/// the metrics endpoint, for a daemon serving `array`.
pub(crate) fn start_services(
    info: DaemonInfo,
    array: &Array,
    model: &ModelEntry,
    metrics: Option<SocketAddr>,
) -> Result<Services, String> {
    let daemon = Arc::new(Daemon::new(info, array.clone(), model.clone()));
    let control = ControlServer::start(daemon.clone(), &run_dir()).map_err(|e| e.to_string())?;
    let metrics = metrics
        .map(|addr| MetricsServer::start(daemon, addr))
        .transpose()?;
    Ok(Services {
        _metrics: metrics,
        _control: control,
    })
}
