//! No adapter (forced with `AUGUR_GPU=off`): `auto` means the CPU with one
//! line that says so, `gpu` fails with a clear error. Its own test binary,
//! since it changes the environment.
#![cfg(feature = "wgpu")]

use augur_gpu_batcher::{GpuError, Offload, OffloadOptions, PredictOn};
use augur_predictor::{FeatureSet, Model};

#[test]
fn without_an_adapter_auto_is_the_cpu_and_gpu_is_an_error() {
    // SAFETY: the only test in this binary; no other thread reads the
    // environment.
    unsafe { std::env::set_var("AUGUR_GPU", "off") };
    let m = Model::random(FeatureSet::LinnOs, &[16], 2, 1).unwrap();
    for mode in [PredictOn::Auto, PredictOn::AutoContention] {
        let off = Offload::start(
            OffloadOptions {
                mode,
                ..OffloadOptions::default()
            },
            &m,
        )
        .unwrap();
        assert_eq!(off.status().device, "cpu");
        assert!(
            off.note().contains("no GPU adapter") && off.note().contains("on the CPU"),
            "{}",
            off.note()
        );
    }
    let e = Offload::start(
        OffloadOptions {
            mode: PredictOn::Gpu,
            ..OffloadOptions::default()
        },
        &m,
    )
    .err()
    .unwrap();
    assert!(matches!(e, GpuError::NoAdapter(_)), "{e}");
}
