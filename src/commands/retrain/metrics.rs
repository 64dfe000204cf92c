//! metrics.json from the run's flags, training and final test (the document
//! itself is report::run_metrics).

use super::Sets;
use crate::cli::TrainArgs;
use crate::report::run_metrics::*;
use crate::train::bottlenecks::Bottlenecks;
use crate::train::config::TrainingConfig;
use crate::train::evaluation::{absolute, TestReport};
use crate::train::training_loop::Trained;

/// What the run was: its flags, configuration, classes, input size, device and seed.
pub struct Run<'a> {
    pub args: &'a TrainArgs,
    pub config: &'a TrainingConfig,
    pub labels: &'a [String],
    pub input_size: (u32, u32),
    pub device: &'a str,
    pub base: BaseWeights,
    pub seed: u64,
}

impl Run<'_> {
    /// The run's metrics, given how training and the final test went.
    pub fn metrics(
        self,
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
        let heads = trained
            .outcomes
            .iter()
            .zip(&trained.curves)
            .map(|(o, curve)| HeadMetrics {
                learning_rate: o.settings.learning_rate,
                l2: o.settings.l2,
                kept_step: o.step,
                stopped_at: o.stopped_at,
                validation_accuracy: o.selection.accuracy,
                validation_cross_entropy: o.selection.cross_entropy,
                curve: curve.clone(),
            })
            .collect();
        RunMetrics {
            seed: self.seed,
            steps: config.rule.steps,
            head_training: match args.retrain_py_head {
                true => "retrain.py",
                false => "sweep",
            }
            .into(),
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
            base: self.base,
            output_graph: absolute(&args.output_graph),
            image_dir: absolute(args.image_dir.as_deref().expect("required by clap")),
            images: image_counts(self.labels, sets, b.skipped),
            bottlenecks: BottleneckCounts {
                computed: b.computed,
                from_cache: b.examples.len() - b.computed - b.deferred,
                at_final_test: b.deferred,
            },
            fine_tuning: None,
            sweep: SweepMetrics {
                heads,
                chosen: trained.chosen,
                compared_on: match trained.selected_on_training {
                    true => "training",
                    false => "validation",
                }
                .into(),
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

/// Images per split, in all and per class.
fn image_counts(
    labels: &[String],
    [train, validation, test]: &Sets,
    skipped: usize,
) -> ImageCounts {
    let count = |rows: &Vec<Vec<u32>>| rows.iter().map(Vec::len).sum();
    let per_class = labels
        .iter()
        .enumerate()
        .map(|(c, label)| ClassCounts {
            label: label.clone(),
            training: train[c].len(),
            validation: validation[c].len(),
            testing: test[c].len(),
        })
        .collect();
    ImageCounts {
        training: count(train),
        validation: count(validation),
        testing: count(test),
        skipped,
        per_class,
    }
}
