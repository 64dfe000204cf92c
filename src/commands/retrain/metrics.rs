//! metrics.json: the run's settings, the sweep's grid, the final numbers and
//! the time each phase took, written from typed structs.

use super::Sets;
use crate::cli::TrainArgs;
use crate::train::bottlenecks::Bottlenecks;
use crate::train::config::TrainingConfig;
use crate::train::evaluation::TestReport;
use crate::train::training_loop::Trained;
use serde::Serialize;

/// What the run was: its flags, configuration, classes, input size, device and seed.
pub struct Run<'a> {
    pub args: &'a TrainArgs,
    pub config: &'a TrainingConfig,
    pub labels: &'a [String],
    pub input_size: (u32, u32),
    pub device: &'a str,
    pub seed: u64,
}

impl Run<'_> {
    /// The run's metrics, given how training and the final test went.
    pub fn metrics(
        &self,
        trained: &Trained,
        test: Option<TestReport>,
        sets: &Sets,
        b: &Bottlenecks,
        timings_seconds: Timings,
    ) -> RunMetrics {
        let (args, config) = (self.args, self.config);
        let distortions = args.distortions();
        let last = trained.last.expect("at least one evaluation");
        let chosen = &trained.outcomes[trained.chosen as usize];
        let count = |rows: &Vec<Vec<u32>>| rows.iter().map(Vec::len).sum();
        let heads = trained
            .outcomes
            .iter()
            .map(|o| HeadMetrics {
                learning_rate: o.settings.learning_rate,
                l2: o.settings.l2,
                kept_step: o.step,
                stopped_at: o.stopped_at,
                validation_accuracy: o.selection.accuracy,
                validation_cross_entropy: o.selection.cross_entropy,
            })
            .collect();
        RunMetrics {
            seed: self.seed,
            steps: config.rule.steps,
            head_training: if args.retrain_py_head {
                "retrain.py"
            } else {
                "sweep"
            },
            optimizer: format!("{:?}", config.rule.optimizer),
            standardized: config.standardize,
            label_smoothing: config.rule.label_smoothing,
            dropout: config.rule.dropout,
            steps_run: trained.steps,
            distortions: DistortionMetrics {
                flip_left_right: distortions.flip_left_right,
                random_crop: distortions.random_crop,
                random_scale: distortions.random_scale,
                random_brightness: distortions.random_brightness,
                distorted_images: match distortions.any() {
                    true => trained.steps as usize * config.batch_size as usize,
                    false => 0,
                },
            },
            train_batch_size: args.train_batch_size,
            labels: self.labels.to_vec(),
            input_size: [self.input_size.0, self.input_size.1],
            device: self.device.to_string(),
            images: ImageCounts {
                training: count(&sets[0]),
                validation: count(&sets[1]),
                testing: count(&sets[2]),
                skipped: b.skipped,
            },
            bottlenecks: BottleneckCounts {
                computed: b.computed,
                from_cache: b.examples.len() - b.computed,
            },
            sweep: SweepMetrics {
                heads,
                chosen: trained.chosen,
                compared_on: match trained.selected_on_training {
                    true => "training",
                    false => "validation",
                },
            },
            final_: FinalMetrics {
                learning_rate: chosen.settings.learning_rate,
                l2: chosen.settings.l2,
                kept_step: chosen.step,
                train_accuracy: last.train.accuracy,
                cross_entropy: last.train.cross_entropy,
                validation_accuracy: last.validation.map(|(v, _)| v.accuracy),
                test,
            },
            timings_seconds,
        }
    }
}

#[derive(Serialize)]
pub struct RunMetrics {
    pub seed: u64,
    pub steps: u32,
    /// "retrain.py" or "sweep".
    pub head_training: &'static str,
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
    pub images: ImageCounts,
    pub bottlenecks: BottleneckCounts,
    pub sweep: SweepMetrics,
    #[serde(rename = "final")]
    pub final_: FinalMetrics,
    pub timings_seconds: Timings,
}

impl RunMetrics {
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }
}

#[derive(Serialize)]
pub struct DistortionMetrics {
    pub flip_left_right: bool,
    pub random_crop: u32,
    pub random_scale: u32,
    pub random_brightness: u32,
    pub distorted_images: usize,
}

#[derive(Serialize)]
pub struct ImageCounts {
    pub training: usize,
    pub validation: usize,
    pub testing: usize,
    pub skipped: usize,
}

#[derive(Serialize)]
pub struct BottleneckCounts {
    pub computed: usize,
    pub from_cache: usize,
}

#[derive(Serialize)]
pub struct SweepMetrics {
    pub heads: Vec<HeadMetrics>,
    pub chosen: u32,
    /// "training" or "validation": the rows the heads were compared on.
    pub compared_on: &'static str,
}

/// One head of the sweep: its settings and how it ended.
#[derive(Serialize)]
pub struct HeadMetrics {
    pub learning_rate: f32,
    pub l2: f32,
    pub kept_step: u32,
    pub stopped_at: Option<u32>,
    pub validation_accuracy: f32,
    pub validation_cross_entropy: f32,
}

/// The kept head: its settings, last training numbers and the final test.
#[derive(Serialize)]
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
#[derive(Serialize)]
pub struct Timings {
    pub bottlenecks: f64,
    pub training: f64,
    pub evaluation: f64,
    pub total: f64,
}
