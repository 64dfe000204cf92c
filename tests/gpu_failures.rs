//! GPU failures end in a clear error, never a panic or a hang: a device
//! lost mid-run, a buffer larger than the device allows (what running out of
//! device memory also reports through), a plan larger than the device holds.

mod common;

use common::{example_folder, retrain, stderr};
use retrain::gpu::Gpu;

#[test]
fn a_lost_device_is_an_error_at_the_next_read_back() {
    let gpu = Gpu::new().unwrap();
    let buffer = gpu.storage_buffer_with("data", &[7u8; 64]);
    assert_eq!(gpu.read_buffer(&buffer, 64).unwrap(), vec![7u8; 64]);
    gpu.device.destroy();
    let err = format!("{:#}", gpu.read_buffer(&buffer, 64).unwrap_err());
    assert!(err.contains("lost"), "{err}");
}

#[test]
fn a_buffer_beyond_the_device_limit_is_an_error_not_a_panic() {
    let gpu = Gpu::new().unwrap();
    let too_large = gpu.limits.max_buffer_size.saturating_add(4);
    let buffer = gpu.storage_buffer("too large", too_large);
    let err = format!("{:#}", gpu.read_buffer(&buffer, 64).unwrap_err());
    assert!(err.contains("the GPU refused"), "{err}");
    // The device keeps saying so: nothing computed after it can be trusted.
    let fine = gpu.storage_buffer_with("fine", &[1u8; 16]);
    assert!(gpu.read_buffer(&fine, 16).is_err());
}

#[test]
fn an_input_size_the_device_cannot_hold_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    example_folder(dir.path(), 1);
    let o = retrain(
        dir.path(),
        &[
            "features",
            "--architecture",
            "mobilenet_v2",
            "--input-size",
            "60000",
            "--image-dir",
            "images",
            "--output",
            "f.npy",
        ],
    );
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(err.contains("too large for this device"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!dir.path().join("f.npy").exists());
}
