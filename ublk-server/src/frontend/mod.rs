//! The block-device front-ends: how requests reach an [`Array`](crate::Array).
//!
//! - [`ublk`]: `/dev/ublkbN` through the kernel's ublk driver (io_uring);
//!   one thread per ublk queue, each owning its own array queue.
//! - [`fuse`]: one file, `disk.img`, in a FUSE mount (with an optional loop
//!   device on top), where the kernel has no ublk.
//! - [`process`]: what either daemon asks of the kernel for itself (OOM
//!   score, I/O flusher).

pub mod fuse;
pub mod process;
pub mod ublk;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use augur_gpu_batcher::{Offload, OffloadOptions, PredictOn};

use crate::adapt::AdaptConfig;

use crate::array::Array;
use crate::control::{ControlServer, Daemon, DaemonInfo, ModelEntry, run_dir};
use crate::metrics::MetricsServer;
use crate::route::Policy;

/// What a daemon serves besides its device: the control socket and, when
/// asked, the metrics endpoint. Dropping it stops both (metrics first).
pub(crate) struct Services {
    adapt: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
    _metrics: Option<MetricsServer>,
    _control: ControlServer,
}

impl Drop for Services {
    fn drop(&mut self) {
        if let Some((stop, t)) = self.adapt.take() {
            stop.store(true, Ordering::Release);
            // A round in the middle of training is not waited for: the
            // device is already stopped, and nothing it holds needs saving.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::info!("adapt: a round is still training; exiting without it");
            }
        }
    }
}

/// Online adaptation for a daemon: its configuration and how often a round runs.
#[derive(Clone, Debug)]
pub struct AdaptOptions {
    /// The adapter's configuration.
    pub config: AdaptConfig,
    /// Time between two rounds.
    pub every: std::time::Duration,
}

/// Starts the control socket (with `model` active) and, given an address,
/// the metrics endpoint, for a daemon serving `array`.
pub(crate) fn start_services(
    info: DaemonInfo,
    array: &Array,
    model: &ModelEntry,
    predict: OffloadOptions,
    metrics: Option<SocketAddr>,
    adapt: Option<&AdaptOptions>,
) -> Result<Services, String> {
    // The GPU opens here, once the device is up and every flag checked: it
    // takes seconds (pipelines, calibration), and until then the policy
    // scores on the CPU.
    let offload = Offload::start(predict, model.predictor.model())
        .map_err(|e| format!("--predict-on {}: {e}", predict.mode.name()))?;
    if predict.mode != PredictOn::Cpu {
        eprintln!("{}", offload.note());
    }
    let policy = Policy::from_name(
        array.policy().name(),
        Some(offload.predictor(model.predictor.clone())),
    )
    .map_err(|e| e.to_string())?;
    array.set_policy(policy);
    let daemon = Arc::new(Daemon::new(info, array.clone(), model.clone(), offload));
    let control = ControlServer::start(daemon.clone(), &run_dir()).map_err(|e| e.to_string())?;
    let metrics = metrics
        .map(|addr| MetricsServer::start(daemon.clone(), addr))
        .transpose()?;
    let adapt = match adapt {
        Some(a) => {
            let stop = Arc::new(AtomicBool::new(false));
            let t = daemon.start_adapter(a.config.clone(), a.every, stop.clone())?;
            Some((stop, t))
        }
        None => None,
    };
    Ok(Services {
        adapt,
        _metrics: metrics,
        _control: control,
    })
}
