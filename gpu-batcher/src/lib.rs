//! Batched inference of the slow-I/O predictor on the GPU (burn + wgpu), with
//! crossover calibration and a CPU/GPU policy.
//!
//! Not built yet: the batcher arrives in its own issue. Until then every
//! prediction runs on the CPU integer path of `augur-predictor`.
