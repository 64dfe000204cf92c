//! The head as `classify` (and later `serve`) applies it: probabilities of
//! batch after batch without compiling its kernels again, and a batch larger
//! than one grid dimension of workgroups holds.

mod common;

use common::{gpu, random_vec, rng};
use retrain::gpu::Gpu;
use retrain::head::{Classifier, GpuHeads};
use retrain::model::weights::Normalization;
use retrain::model::Architecture;
use std::collections::HashMap;

fn classifier(dim: usize, classes: usize) -> Classifier {
    let mut rng = rng(77);
    Classifier {
        architecture: Architecture::InceptionV3,
        weights: random_vec(&mut rng, dim * classes),
        biases: random_vec(&mut rng, classes),
        labels: (0..classes).map(|c| format!("class {c}")).collect(),
        base_fingerprint: "test".into(),
        base_weights: "test".into(),
        input_size: (75, 75),
        normalization: Normalization::unit(),
        fine_tuned: Vec::new(),
        extra: HashMap::new(),
    }
}

/// softmax(x·W + b), in f64.
fn reference(c: &Classifier, x: &[f32]) -> Vec<f64> {
    let classes = c.labels.len();
    let logits: Vec<f64> = (0..classes)
        .map(|k| {
            let dot: f64 = x
                .iter()
                .enumerate()
                .map(|(i, &v)| v as f64 * c.weights[i * classes + k] as f64)
                .sum();
            dot + c.biases[k] as f64
        })
        .collect();
    let top = logits.iter().cloned().fold(f64::MIN, f64::max);
    let total: f64 = logits.iter().map(|l| (l - top).exp()).sum();
    logits.iter().map(|l| (l - top).exp() / total).collect()
}

#[test]
fn batches_reuse_the_compiled_head_and_match_the_reference() {
    // A device of its own: the other test compiles kernels at the same time.
    let gpu = &Gpu::new().unwrap();
    let (dim, classes) = (37, 3);
    let c = classifier(dim, classes);
    let before = gpu.modules_compiled();
    let mut head = c.predictor(gpu, 16).unwrap();
    let compiled = gpu.modules_compiled();
    assert_eq!(compiled, before + 1, "the head's kernels are compiled once");
    let mut rng = rng(5);
    for n in [16, 5, 16] {
        let x = random_vec(&mut rng, n * dim);
        let probs = head.probabilities(gpu, &x).unwrap();
        for (row, p) in probs.chunks(classes).enumerate() {
            let want = reference(&c, &x[row * dim..(row + 1) * dim]);
            for k in 0..classes {
                assert!(
                    (p[k] as f64 - want[k]).abs() < 1e-5,
                    "row {row}: {p:?} vs {want:?}"
                );
            }
        }
    }
    assert_eq!(
        gpu.modules_compiled(),
        compiled,
        "no batch compiles the head again"
    );
    assert!(
        head.probabilities(gpu, &vec![0.5; 17 * dim]).is_err(),
        "more rows than set up for"
    );
}

#[test]
fn a_batch_past_one_grid_dimension_is_computed_whole() {
    // head.wgsl's 64-wide workgroups fold into a 2-D grid past 65,535 of them:
    // every stage must index rows by the flattened grid.
    let (gpu, _) = gpu();
    let n = 65_535 * 64 + 256;
    // Class 1 wins on every row: biases (0, 1), weights 0.
    let params = [0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
    let head = GpuHeads::fixed(gpu, &vec![1.0; n as usize * 2], (2, 2), &params).unwrap();
    let rows: Vec<u32> = (0..n).collect();
    let predicted = head.predict(gpu, &head.batch(gpu, n), &rows, 0).unwrap();
    let wrong = predicted.iter().filter(|&&p| p != 1).count();
    assert_eq!(wrong, 0, "{wrong} of {n} rows not computed");
}
