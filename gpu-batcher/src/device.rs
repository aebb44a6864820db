//! The wgpu device and the models on it (burn's wgpu backend, WGSL).
//!
//! A [`GpuModel`] holds its weights twice on the device, once per
//! implementation of the forward pass ([`GpuKernel`]): as burn tensors for
//! the chain of burn ops (`x.matmul(w) + b`, ReLU, per layer: several
//! dispatches), and as one flat buffer for the fused cubecl kernel
//! (`crate::fused`: one dispatch). [`GpuModel::scores`] runs the one
//! [`GpuKernel::default_for`] names for the batch's bucket, the fused
//! kernel at every bucket (on lavapipe it is 2.1x to 4.9x faster at the
//! median: 216 µs against 578 µs for one read of the base model, 12.3 ms
//! against 24.6 ms for 1024 reads of the +2 model; the crate docs have the
//! table), or the one `AUGUR_GPU_KERNEL` names; [`GpuModel::scores_with`]
//! runs either. Both kernels read the same padded batch, so padding and
//! the slow score are the same on both.

use std::sync::OnceLock;

use augur_predictor::Model;
use augur_predictor::model::Activation;
use burn::backend::DispatchDevice;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use cubecl::client::Client;

use crate::fused::Fused;
use crate::{GpuError, GpuKernel, MAX_BATCH, bucket_for};

/// One wgpu adapter, shared by every model uploaded to it.
#[derive(Clone)]
pub struct Gpu {
    device: Device,
    /// The cubecl client of the same device (the fused kernel's).
    client: Client,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("device", &self.device).finish()
    }
}

/// The process's wgpu runtime: burn registers it once and cannot set it up
/// again, so the first outcome (device or reason) is kept.
static RUNTIME: OnceLock<Result<Device, String>> = OnceLock::new();

impl Gpu {
    /// Opens the default wgpu adapter (the best GPU there is; lavapipe on a
    /// machine whose only Vulkan driver is Mesa's software one). Fails with
    /// [`GpuError::NoAdapter`] when there is none, or when `AUGUR_GPU=off`.
    pub fn open() -> Result<Gpu, GpuError> {
        if std::env::var("AUGUR_GPU").is_ok_and(|v| v == "off") {
            return Err(GpuError::NoAdapter("turned off by AUGUR_GPU=off".into()));
        }
        // Vulkan only: Augur runs on Linux, and probing OpenGL (EGL) finds
        // nothing better and prints errors on machines without a display.
        let r = RUNTIME.get_or_init(|| {
            Device::wgpu_options()
                .graphics_api(burn::tensor::wgpu::WgpuBackend::Vulkan)
                .init()
                .map_err(|e| e.to_string())
        });
        match r {
            Ok(device) => {
                // The cubecl device behind burn's: its client is the one
                // burn's tensors run on (one per device, process-wide).
                #[allow(unreachable_patterns)]
                let client = match device.as_dispatch() {
                    DispatchDevice::Cube(cube) => cube.client(),
                    other => {
                        return Err(GpuError::NoAdapter(format!(
                            "burn's wgpu runtime gave a non-cubecl device: {other:?}"
                        )));
                    }
                };
                Ok(Gpu {
                    device: device.clone(),
                    client,
                })
            }
            Err(e) => Err(GpuError::NoAdapter(e.clone())),
        }
    }
}

/// One layer on the device: weights `[inputs, outputs]` (transposed from
/// the model's row-major `[outputs][inputs]`, so a batch is `x @ w`), bias
/// `[1, outputs]`.
struct GpuLayer {
    w: Tensor<2>,
    b: Tensor<2>,
    relu: bool,
}

/// A model's f32 layers on a [`Gpu`], uploaded once (for both
/// [`GpuKernel`]s).
pub struct GpuModel {
    gpu: Gpu,
    id: String,
    shape: String,
    inputs: usize,
    outputs: usize,
    layers: Vec<GpuLayer>,
    fused: Fused,
    /// `AUGUR_GPU_KERNEL` at upload, if set: the kernel for every bucket.
    forced: Option<GpuKernel>,
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuModel")
            .field("id", &self.id)
            .field("inputs", &self.inputs)
            .field("layers", &self.layers.len())
            .finish()
    }
}

impl GpuModel {
    /// Uploads `model`'s weights to `gpu`, for both kernels.
    pub fn upload(gpu: &Gpu, model: &Model) -> GpuModel {
        let layers = model
            .layers()
            .iter()
            .map(|l| {
                let mut wt = vec![0f32; l.inputs * l.outputs];
                for o in 0..l.outputs {
                    for i in 0..l.inputs {
                        wt[i * l.outputs + o] = l.weights[o * l.inputs + i];
                    }
                }
                GpuLayer {
                    w: Tensor::<2>::from_data(
                        TensorData::new(wt, [l.inputs, l.outputs]),
                        &gpu.device,
                    ),
                    b: Tensor::<2>::from_data(
                        TensorData::new(l.bias.clone(), [1, l.outputs]),
                        &gpu.device,
                    ),
                    relu: l.activation == Activation::Relu,
                }
            })
            .collect();
        GpuModel {
            gpu: gpu.clone(),
            id: model.id(),
            shape: model.shape_string(),
            inputs: model.feature_set().n_inputs(),
            outputs: model.n_outputs(),
            layers,
            fused: Fused::upload(&gpu.client, model),
            forced: GpuKernel::from_env(),
        }
    }

    /// The model's id (its file's CRC-32), to tell which model a batch used.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The model's shape (`Model::shape_string`, e.g. `31-256-2`).
    pub fn shape(&self) -> &str {
        &self.shape
    }

    /// Inputs per read.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// The kernel [`GpuModel::scores`] runs for a batch padded to
    /// `bucket`: `AUGUR_GPU_KERNEL` if it was set at upload, else
    /// [`GpuKernel::default_for`].
    pub fn kernel_for(&self, bucket: usize) -> GpuKernel {
        self.forced
            .unwrap_or_else(|| GpuKernel::default_for(bucket))
    }

    /// Slow scores (> 0 means slow) of `n` reads whose encoded inputs are
    /// `xs` (`inputs()` values each, as `Model::encode_f32` writes them),
    /// on the kernel [`GpuModel::kernel_for`] names for their bucket.
    /// Blocks until the device has answered.
    pub fn scores(&self, xs: &[f32], n: usize) -> Result<Vec<f32>, GpuError> {
        let kernel = self.kernel_for(bucket_for(n).unwrap_or(MAX_BATCH));
        self.scores_with(kernel, xs, n)
    }

    /// [`GpuModel::scores`] on the given kernel.
    pub fn scores_with(
        &self,
        kernel: GpuKernel,
        xs: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, GpuError> {
        if n > MAX_BATCH {
            return Err(GpuError::BatchTooLarge { n });
        }
        if xs.len() != n * self.inputs {
            return Err(GpuError::Shape {
                got: xs.len(),
                n,
                width: self.inputs,
            });
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let bucket = bucket_for(n).ok_or(GpuError::BatchTooLarge { n })?;
        let mut padded = vec![0f32; bucket * self.inputs];
        padded[..xs.len()].copy_from_slice(xs);
        match kernel {
            GpuKernel::Fused => self.fused.scores(&padded, n, bucket),
            GpuKernel::Ops => self.ops_scores(padded, n, bucket),
        }
    }

    /// The chain of burn ops: per layer `x.matmul(w) + b` (and ReLU), then
    /// one readback of the outputs.
    fn ops_scores(&self, padded: Vec<f32>, n: usize, bucket: usize) -> Result<Vec<f32>, GpuError> {
        let mut x = Tensor::<2>::from_data(
            TensorData::new(padded, [bucket, self.inputs]),
            &self.gpu.device,
        );
        for l in &self.layers {
            x = x.matmul(l.w.clone()) + l.b.clone();
            if l.relu {
                x = relu(x);
            }
        }
        let out = x
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| GpuError::Device(format!("{e:?}")))?;
        let k = self.outputs;
        Ok(out
            .chunks_exact(k)
            .take(n)
            .map(|o| if k == 2 { o[1] - o[0] } else { o[0] })
            .collect())
    }

    /// Runs one batch of every bucket on the kernel [`GpuModel::scores`]
    /// runs for it, so that each pipeline is compiled now and not on the
    /// I/O path.
    pub fn warm(&self) -> Result<(), GpuError> {
        for &b in &crate::BUCKETS {
            self.scores_with(self.kernel_for(b), &vec![0f32; b * self.inputs], b)?;
        }
        Ok(())
    }

    /// [`GpuModel::warm`] for `kernel` at every bucket.
    pub fn warm_with(&self, kernel: GpuKernel) -> Result<(), GpuError> {
        for &b in &crate::BUCKETS {
            self.scores_with(kernel, &vec![0f32; b * self.inputs], b)?;
        }
        Ok(())
    }
}
