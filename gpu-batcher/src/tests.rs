use super::*;

#[test]
fn buckets_are_powers_of_two_up_to_the_largest() {
    assert_eq!(bucket_for(0), Some(1));
    assert_eq!(bucket_for(1), Some(1));
    assert_eq!(bucket_for(3), Some(4));
    assert_eq!(bucket_for(64), Some(64));
    assert_eq!(bucket_for(65), Some(128));
    assert_eq!(bucket_for(MAX_BATCH), Some(MAX_BATCH));
    assert_eq!(bucket_for(MAX_BATCH + 1), None);
}

#[cfg(feature = "wgpu")]
#[test]
fn augur_gpu_off_means_no_adapter() {
    // SAFETY: no other thread of this test binary reads the environment now
    // (the only other test here does not).
    unsafe { std::env::set_var("AUGUR_GPU", "off") };
    let e = Gpu::open().unwrap_err();
    unsafe { std::env::remove_var("AUGUR_GPU") };
    assert!(matches!(e, GpuError::NoAdapter(_)), "{e}");
    assert!(e.to_string().contains("AUGUR_GPU=off"), "{e}");
}
