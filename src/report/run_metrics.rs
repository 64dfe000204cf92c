//! metrics.json: what a `retrain` run was and how it went — its settings,
//! data, the sweep with every head's curve, the final test with every test
//! image's probabilities, and the time each phase took. Written at the end
//! of a run; the report is drawn from it alone (and the test images).

use crate::fine_tune::training::EpochRecord;
use crate::train::evaluation::TestReport;
use crate::train::training_loop::Curve;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The file's name, beside the classifier.
pub const METRICS_FILE: &str = "metrics.json";

#[derive(Serialize, Deserialize)]
pub struct RunMetrics {
    pub seed: u64,
    pub steps: u32,
    /// "retrain.py" or "sweep".
    pub head_training: String,
    pub optimizer: String,
    pub standardized: bool,
    pub label_smoothing: f32,
    pub dropout: f32,
    pub steps_run: u32,
    pub distortions: DistortionMetrics,
    pub train_batch_size: i64,
    pub labels: Vec<String>,
    pub input_size: [u32; 2],
    pub device: String,
    pub base: BaseWeights,
    /// The classifier written, and the folder the images came from (absolute).
    pub output_graph: String,
    pub image_dir: String,
    pub images: ImageCounts,
    pub bottlenecks: BottleneckCounts,
    pub sweep: SweepMetrics,
    /// The fine-tuning phase, when the run had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fine_tuning: Option<FineTuningMetrics>,
    #[serde(rename = "final")]
    pub final_: FinalMetrics,
    pub timings_seconds: Timings,
}

/// What fine-tuning trained, how, and each epoch's numbers.
#[derive(Clone, Serialize, Deserialize)]
pub struct FineTuningMetrics {
    /// The first block trained, and the tensor below it whose activations were cached.
    pub from: String,
    pub cut: String,
    pub trained_layers: usize,
    pub parameters: usize,
    pub optimizer: String,
    pub learning_rate: f32,
    pub weight_decay: f32,
    /// Dropout's probability on the classifier's input while training.
    #[serde(default)]
    pub dropout: f32,
    pub batch_size: u32,
    /// Images per pass (a step's gradients summed over its passes).
    pub micro_batch: u32,
    pub epochs_asked: u32,
    pub patience: u32,
    /// The cut's cached activations: bytes on disk and how they are stored.
    pub cut_cache_bytes: u64,
    pub cut_storage: String,
    /// The epoch whose parameters were kept: the best fine-tuned one (0, the
    /// frozen head, only when every fine-tuned epoch diverged).
    pub best_epoch: u32,
    pub epochs: Vec<EpochRecord>,
}

impl RunMetrics {
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not the metrics.json of a retrain run of this version",
                path.display()
            )
        })
    }
}

/// The network the head was trained on.
#[derive(Serialize, Deserialize)]
pub struct BaseWeights {
    pub architecture: String,
    pub fingerprint: String,
    pub path: String,
}

#[derive(Serialize, Deserialize)]
pub struct DistortionMetrics {
    pub flip_left_right: bool,
    pub random_crop: u32,
    pub random_scale: u32,
    pub random_brightness: u32,
    pub distorted_images: usize,
}

#[derive(Serialize, Deserialize)]
pub struct ImageCounts {
    pub training: usize,
    pub validation: usize,
    pub testing: usize,
    pub skipped: usize,
    pub per_class: Vec<ClassCounts>,
}

/// One class's images in each split.
#[derive(Serialize, Deserialize)]
pub struct ClassCounts {
    pub label: String,
    pub training: usize,
    pub validation: usize,
    pub testing: usize,
}

#[derive(Serialize, Deserialize)]
pub struct BottleneckCounts {
    pub computed: usize,
    pub from_cache: usize,
    /// Test images left for the final test (fine-tuning), read or computed then.
    #[serde(default)]
    pub at_final_test: usize,
}

#[derive(Serialize, Deserialize)]
pub struct SweepMetrics {
    pub heads: Vec<HeadMetrics>,
    pub chosen: u32,
    /// "training" or "validation": the rows the heads were compared on.
    pub compared_on: String,
}

/// One head of the sweep: its settings, how it ended and its curve.
#[derive(Serialize, Deserialize)]
pub struct HeadMetrics {
    pub learning_rate: f32,
    pub l2: f32,
    pub kept_step: u32,
    pub stopped_at: Option<u32>,
    pub validation_accuracy: f32,
    pub validation_cross_entropy: f32,
    pub curve: Curve,
}

/// The kept head: its settings, last training numbers and the final test.
#[derive(Serialize, Deserialize)]
pub struct FinalMetrics {
    pub learning_rate: f32,
    pub l2: f32,
    pub kept_step: u32,
    pub train_accuracy: f32,
    pub cross_entropy: f32,
    pub validation_accuracy: Option<f32>,
    pub test: Option<TestReport>,
}

/// Seconds spent in each phase of the run.
#[derive(Serialize, Deserialize)]
pub struct Timings {
    pub bottlenecks: f64,
    pub training: f64,
    #[serde(default)]
    pub fine_tuning: f64,
    pub evaluation: f64,
    pub total: f64,
}
