//! The training loop: heads trained side by side on the same batches (a grid
//! of learning rates × L2 penalties), evaluated every few steps, each
//! remembering its parameters at its best validation cross-entropy and
//! stopping once that has not improved for a while; the best head by
//! validation accuracy (then cross-entropy) is kept. retrain.py's loop is the
//! special case of one head, no standardisation, no early stopping, and the
//! last parameters kept.

use super::batches::BatchSource;
use super::config::TrainingConfig;
use super::rows::TrainingData;
use super::sampling;
use super::standardize::{Standardization, StandardizedHead, Standardizer};
use crate::gpu::Gpu;
use crate::head::optimizer::HeadSettings;
use crate::head::{GpuHeads, Metrics};
use anyhow::Result;
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// What an evaluation found, for the leading head.
#[derive(Clone, Copy, Debug)]
pub struct EvalPoint {
    pub step: u32,
    pub leader: u32,
    pub train: Metrics,
    /// Validation metrics and the number of rows they were taken on.
    pub validation: Option<(Metrics, usize)>,
    pub active: usize,
}

/// One head's outcome.
#[derive(Clone, Debug)]
pub struct HeadOutcome {
    pub settings: HeadSettings,
    /// Step of the kept parameters and their metrics on the selection rows.
    pub step: u32,
    pub selection: Metrics,
    pub stopped_at: Option<u32>,
}

/// One head's numbers at each evaluation while it trained (columns of equal length).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    pub steps: Vec<u32>,
    pub train_accuracy: Vec<f32>,
    pub train_cross_entropy: Vec<f32>,
    /// On the rows the heads are compared on: validation, or training without validation images.
    pub selection_accuracy: Vec<f32>,
    pub selection_cross_entropy: Vec<f32>,
}

impl Curve {
    fn push(&mut self, step: u32, train: Metrics, selection: Metrics) {
        self.steps.push(step);
        self.train_accuracy.push(train.accuracy);
        self.train_cross_entropy.push(train.cross_entropy);
        self.selection_accuracy.push(selection.accuracy);
        self.selection_cross_entropy.push(selection.cross_entropy);
    }
}

pub struct Trained {
    pub heads: GpuHeads,
    pub chosen: u32,
    pub standardization: Option<Standardization>,
    pub outcomes: Vec<HeadOutcome>,
    /// Each head's curve, in the order of `outcomes`.
    pub curves: Vec<Curve>,
    /// True when the heads were chosen on training rows, for want of validation rows.
    pub selected_on_training: bool,
    pub last: Option<EvalPoint>,
    /// Steps run: fewer than asked when every head stopped early.
    pub steps: u32,
}

impl Trained {
    /// The chosen head for raw bottlenecks: weights [dim, classes], biases [classes].
    pub fn export(&self, gpu: &Gpu) -> Result<(Vec<f32>, Vec<f32>)> {
        export_head(gpu, &self.heads, self.chosen, self.standardization.as_ref())
    }

    /// The chosen head as it trained, on standardised features (the
    /// identity standardisation when the features were not standardised).
    pub fn chosen_standardized(&self, gpu: &Gpu) -> Result<StandardizedHead> {
        let (weights, biases) = head_parameters(gpu, &self.heads, self.chosen)?;
        let standardization = (self.standardization.clone())
            .unwrap_or_else(|| Standardization::identity(self.heads.dim as usize));
        Ok(StandardizedHead {
            weights,
            biases,
            standardization,
        })
    }
}

/// Head `head`'s current parameters as it trains: weights [dim, classes], biases [classes].
fn head_parameters(gpu: &Gpu, heads: &GpuHeads, head: u32) -> Result<(Vec<f32>, Vec<f32>)> {
    let mut weights = heads.parameters(gpu, head)?;
    let biases = weights.split_off((heads.dim * heads.classes) as usize);
    Ok((weights, biases))
}

/// Head `head`'s current parameters for raw bottlenecks.
pub fn export_head(
    gpu: &Gpu,
    heads: &GpuHeads,
    head: u32,
    standardization: Option<&Standardization>,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (weights, biases) = head_parameters(gpu, heads, head)?;
    Ok(match standardization {
        Some(s) => s.fold(&weights, &biases),
        None => (weights, biases),
    })
}

/// The heads in the middle of training, and which one leads.
pub struct Progress<'a> {
    pub heads: &'a GpuHeads,
    pub leader: u32,
    pub standardization: Option<&'a Standardization>,
}

impl Progress<'_> {
    /// The leading head's current parameters for raw bottlenecks.
    pub fn export_leader(&self, gpu: &Gpu) -> Result<(Vec<f32>, Vec<f32>)> {
        export_head(gpu, self.heads, self.leader, self.standardization)
    }
}

/// Called at each evaluation, and after each step (with its 0-based number).
pub struct Observers<'a> {
    pub evaluated: &'a mut dyn FnMut(&EvalPoint) -> Result<()>,
    pub stepped: &'a mut dyn FnMut(u32, &Progress) -> Result<()>,
}

/// retrain.py's initialisation for each head: weights ~ truncated normal
/// (σ 0.001), biases 0.
pub fn initial_heads(rng: &mut StdRng, heads: usize, dim: usize, classes: usize) -> Vec<f32> {
    (0..heads)
        .flat_map(|_| {
            let mut head = sampling::truncated_normal(rng, dim * classes, 0.001);
            head.extend(std::iter::repeat_n(0.0, classes));
            head
        })
        .collect()
}

/// Index of the best metrics: highest accuracy, then lowest cross-entropy.
fn best_of(metrics: impl Iterator<Item = Metrics>) -> u32 {
    let mut best: Option<(usize, Metrics)> = None;
    for (i, m) in metrics.enumerate() {
        let better = match best {
            None => true,
            Some((_, b)) => {
                m.accuracy > b.accuracy
                    || (m.accuracy == b.accuracy && m.cross_entropy < b.cross_entropy)
            }
        };
        if better {
            best = Some((i, m));
        }
    }
    best.map_or(0, |(i, _)| i as u32)
}

/// Trains the heads of `config` on `data` and picks one. `initial` holds
/// every head's starting parameters.
pub fn train_heads(
    gpu: &Gpu,
    data: &TrainingData,
    config: &TrainingConfig,
    initial: &[f32],
    rng: &mut StdRng,
    batches: &mut dyn BatchSource,
    observers: Observers,
) -> Result<Trained> {
    let mut heads = GpuHeads::new(
        gpu,
        data.features,
        data.labels,
        (data.dim, data.classes),
        initial,
        &config.settings,
        config.rule,
    )?;
    heads.add_spare_rows(gpu, batches.spare_rows())?;
    let train_rows = data.train.concat();
    let standardizer = if config.standardize {
        Some(Standardizer::fit(gpu, &heads, &train_rows)?)
    } else {
        None
    };
    let validation_rows = data.validation.concat();
    let selected_on_training = validation_rows.is_empty();
    let selection_rows = if selected_on_training {
        train_rows.clone()
    } else {
        validation_rows
    };
    let n = config.settings.len();
    let mut outcomes: Vec<HeadOutcome> = config
        .settings
        .iter()
        .map(|&settings| HeadOutcome {
            settings,
            step: 0,
            selection: Metrics {
                cross_entropy: f32::INFINITY,
                accuracy: 0.0,
            },
            stopped_at: None,
        })
        .collect();
    let mut curves = vec![Curve::default(); n];
    let mut since_best = vec![0u32; n];
    let mut active = vec![true; n];
    let train_batch = heads.batch(gpu, config.batch_size);
    let steps = config.rule.steps;
    let mut last = None;
    let mut leader = 0;
    for step in 0..steps {
        let rows = batches.next_rows(gpu, &heads, standardizer.as_ref(), rng)?;
        heads.train_step(gpu, &train_batch, &rows, step, rng.random());
        if step % config.eval_interval == 0 || step + 1 == steps {
            let train_metrics = heads.evaluate(gpu, &train_batch, &rows)?;
            let selection = heads.evaluate_rows(gpu, &selection_rows)?;
            let mut stopped = false;
            for h in 0..n {
                if !active[h] {
                    continue;
                }
                let m = selection[h];
                curves[h].push(step + 1, train_metrics[h], m);
                if !config.keep_best || m.cross_entropy < outcomes[h].selection.cross_entropy {
                    outcomes[h].selection = m;
                    outcomes[h].step = step + 1;
                    since_best[h] = 0;
                    if config.keep_best {
                        heads.keep_best(gpu, h as u32);
                    }
                } else {
                    since_best[h] += 1;
                    if config.patience > 0 && since_best[h] >= config.patience {
                        active[h] = false;
                        outcomes[h].stopped_at = Some(step + 1);
                        stopped = true;
                    }
                }
            }
            if stopped {
                heads.set_active(gpu, &active);
            }
            leader = best_of(selection.iter().copied());
            let validation = match (selected_on_training, config.validation_sample) {
                (true, _) => None,
                (false, None) => Some((selection[leader as usize], selection_rows.len())),
                (false, Some(size)) => {
                    let sample = sampling::class_balanced(rng, data.validation, size);
                    let m = heads.evaluate_rows(gpu, &sample)?;
                    Some((m[leader as usize], sample.len()))
                }
            };
            let point = EvalPoint {
                step,
                leader,
                train: train_metrics[leader as usize],
                validation,
                active: active.iter().filter(|&&a| a).count(),
            };
            (observers.evaluated)(&point)?;
            last = Some(point);
            if point.active == 0 {
                break;
            }
        }
        let progress = Progress {
            heads: &heads,
            leader,
            standardization: standardizer.as_ref().map(|s| &s.standardization),
        };
        (observers.stepped)(step, &progress)?;
    }
    if config.keep_best {
        heads.restore_best(gpu);
    }
    let chosen = best_of(outcomes.iter().map(|o| o.selection));
    Ok(Trained {
        heads,
        chosen,
        standardization: standardizer.map(|s| s.standardization),
        outcomes,
        curves,
        selected_on_training,
        // The last step is always evaluated, and an early end follows an evaluation.
        steps: last.map_or(0, |p: EvalPoint| p.step + 1),
        last,
    })
}
