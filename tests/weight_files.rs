//! Damaged, incomplete or foreign weight files are refused with an error that
//! names the file or tensor; the converter refuses what is not Inception V3.

use retrain::convert::default_weights;
use retrain::model::inception_v3::inception_v3;
use retrain::model::weights::{self, ModelInfo, Normalization, Tensor, WeightFile};
use std::path::Path;
use std::process::Command;

fn info(architecture: &str) -> ModelInfo {
    ModelInfo {
        architecture: architecture.into(),
        source: "test".into(),
        input_height: 299,
        input_width: 299,
        bottleneck_size: 2048,
        bottleneck_layer: "test".into(),
        normalization: Normalization::unit(),
        average_pool_counts_padding: false,
        dtype: "f32".into(),
        fingerprint: String::new(),
    }
}

/// A weight file with the first conv right and `second` as the second conv's weight.
fn partial_file(path: &Path, second: Option<Vec<usize>>) {
    let mut tensors = vec![
        Tensor {
            name: "conv2d_1.weight".into(),
            shape: vec![3, 3, 3, 32],
            data: vec![0.5; 864],
        },
        Tensor {
            name: "conv2d_1.bias".into(),
            shape: vec![32],
            data: vec![0.1; 32],
        },
    ];
    if let Some(shape) = second {
        let n = shape.iter().product();
        tensors.push(Tensor {
            name: "conv2d_2.weight".into(),
            shape,
            data: vec![0.25; n],
        });
    }
    weights::write(path, info("inception_v3"), &tensors).unwrap();
}

fn check_error(path: &Path) -> String {
    let file = WeightFile::open(path).and_then(|f| f.check(&inception_v3(299, 299)?));
    format!("{:#}", file.expect_err("must be refused"))
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    partial_file(&path, None);
    let err = check_error(&path);
    assert!(
        err.contains("conv2d_2.weight") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn misshaped_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    partial_file(&path, Some(vec![3, 3, 32, 31]));
    let err = check_error(&path);
    assert!(
        err.contains("conv2d_2.weight") && err.contains("[3, 3, 32, 32]"),
        "{err}"
    );
}

#[test]
fn other_architecture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    weights::write(
        &path,
        info("resnet50"),
        &[Tensor {
            name: "x".into(),
            shape: vec![1],
            data: vec![1.0],
        }],
    )
    .unwrap();
    let err = check_error(&path);
    assert!(err.contains("resnet50"), "{err}");
}

#[test]
fn truncated_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    partial_file(&path, Some(vec![3, 3, 32, 32]));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = check_error(&path);
    assert!(
        err.contains("w.safetensors") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn cli_reports_bad_weights_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    partial_file(&path, None);
    let o = Command::new(env!("CARGO_BIN_EXE_retrain"))
        .args(["info", "--weights", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("conv2d_2.weight") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn converter_refuses_a_folder_without_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let o = Command::new(env!("CARGO_BIN_EXE_convert-weights"))
        .args([
            "--from",
            dir.path().to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no TF.js model"));
    assert!(!out.exists());
}

#[test]
fn default_weights_carry_the_expected_metadata() {
    let file = WeightFile::open(&default_weights::resolve(None).unwrap()).unwrap();
    assert_eq!(file.info.architecture, "inception_v3");
    assert_eq!(file.info.normalization, Normalization::unit());
    assert_eq!(
        (
            file.info.input_height,
            file.info.input_width,
            file.info.bottleneck_size
        ),
        (299, 299, 2048)
    );
    assert!(file.info.source.starts_with("nsfwjs@4.4.0"));
    assert_eq!(file.info.fingerprint.len(), 32);
    file.check(&inception_v3(299, 299).unwrap()).unwrap();
}
