//! `retrain export --format onnx`, checked by an independent runtime (the
//! tract-onnx crate): on the same pixels the exported Inception V3 and
//! MobileNet V2 classifiers give `classify`'s probabilities within 1e-4, and
//! the model carries its labels and preprocessing in its metadata.

use image::RgbImage;
use prost::Message;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tract_onnx::prelude::*;

mod common;
use common::{example_folder, retrain, stderr};

/// Screenshots resized on the CPU to exactly `(h, w)` and saved as PNG, so
/// that `classify`'s resize leaves them as they are: both see the same pixels.
fn images_at(root: &Path, (h, w): (u32, u32), n: usize) -> Vec<(PathBuf, RgbImage)> {
    let dir = root.join("at_size");
    std::fs::create_dir_all(&dir).unwrap();
    let mut sources: Vec<PathBuf> = ["broken", "normal"]
        .iter()
        .flat_map(|c| std::fs::read_dir(root.join("images").join(c)).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    sources.sort();
    sources
        .iter()
        .take(n)
        .enumerate()
        .map(|(i, src)| {
            let img = image::open(src).unwrap().to_rgb8();
            let img = image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle);
            let path = dir.join(format!("{i}.png"));
            img.save(&path).unwrap();
            (path, img)
        })
        .collect()
}

/// `classify --json`'s probabilities of each file, in label order.
fn classify(root: &Path, model: &Path, files: &[PathBuf], labels: &[String]) -> Vec<Vec<f32>> {
    let mut args = vec![
        "classify",
        "--json",
        "--top-k",
        "10",
        "--graph",
        model.to_str().unwrap(),
    ];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let o = retrain(root, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let predictions = v["predictions"].as_array().unwrap();
            labels
                .iter()
                .map(|label| {
                    let p = predictions
                        .iter()
                        .find(|p| p["label"] == label.as_str())
                        .unwrap();
                    p["score"].as_f64().unwrap() as f32
                })
                .collect()
        })
        .collect()
}

fn export_matches_classify(architecture: &str, size: u32) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    example_folder(root, 6);
    let size_text = size.to_string();
    let o = retrain(
        root,
        &[
            "--image-dir",
            "images",
            "--architecture",
            architecture,
            "--input-size",
            &size_text,
            "--how-many-training-steps",
            "30",
            "--validation-percentage",
            "0",
            "--testing-percentage",
            "0",
            "--seed",
            "2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let model = root.join("retrain-output/model.safetensors");
    let onnx = root.join("model.onnx");
    let o = retrain(
        root,
        &[
            "export",
            "--graph",
            model.to_str().unwrap(),
            "--format",
            "onnx",
            "--output",
            onnx.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // The metadata names the labels and the preprocessing.
    let bytes = std::fs::read(&onnx).unwrap();
    let proto = tract_onnx::pb::ModelProto::decode(bytes.as_slice()).unwrap();
    let meta = |key: &str| {
        proto
            .metadata_props
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.clone())
            .unwrap()
    };
    let labels: Vec<String> = serde_json::from_str(&meta("labels")).unwrap();
    assert_eq!(labels, ["broken", "normal"]);
    assert!(meta("resize").contains(&format!("{size}x{size}")));
    assert!(proto
        .opset_import
        .iter()
        .any(|o| o.domain.is_empty() && o.version >= 17));

    let images = images_at(root, (size, size), 6);
    let files: Vec<PathBuf> = images.iter().map(|(p, _)| p.clone()).collect();
    let expected = classify(root, &model, &files, &labels);
    let n = images.len();
    let pixels: Vec<u8> = images
        .iter()
        .flat_map(|(_, img)| img.as_raw().iter().copied())
        .collect();
    let s = size as usize;
    let runnable = tract_onnx::onnx()
        .model_for_path(&onnx)
        .unwrap()
        .with_input_fact(0, u8::fact([n, s, s, 3]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let input = tract_ndarray::Array4::from_shape_vec((n, s, s, 3), pixels).unwrap();
    let outputs = runnable.run(tvec!(Tensor::from(input).into())).unwrap();
    let probabilities = outputs[0].to_plain_array_view::<f32>().unwrap();
    assert_eq!(probabilities.shape(), [n, 2]);
    assert_eq!(
        outputs[1].shape()[1],
        if architecture == "inception_v3" {
            2048
        } else {
            1280
        }
    );
    for (i, row) in expected.iter().enumerate() {
        for (c, &p) in row.iter().enumerate() {
            let onnx = probabilities[[i, c]];
            assert!(
                (onnx - p).abs() <= 1e-4,
                "image {i}, class {c}: ONNX {onnx}, classify {p}"
            );
        }
    }
}

#[test]
fn mobilenet_v2_export_matches_classify() {
    export_matches_classify("mobilenet_v2", 96);
}

#[test]
fn inception_v3_export_matches_classify() {
    export_matches_classify("inception_v3", 75);
}
