//! The fine-tuning loop: epochs over the training images' cut activations
//! (cached, or from distorted images) in shuffled batches (split into
//! micro-batches the device can hold, their gradients summed), the
//! learning-rate schedule, validation after every epoch, the best epoch's
//! parameters kept and early stopping. Epoch 0 is the frozen head before
//! any fine-tuning, recorded for comparison; the kept epoch is the best
//! fine-tuned one whose loss is finite (the frozen head only when none is).

use super::network::{TrainableNetwork, HEAD_BIASES, HEAD_WEIGHTS};
use super::settings::FineTuneSettings;
use super::step::{Pass, StepPlan};
use crate::gpu::Gpu;
use crate::model::weights::Tensor;
use crate::progress::progress_bar;
use anyhow::Result;
use half::f16;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Instant;

/// Activation and gradient memory one micro-batch may use.
const MEMORY_BUDGET: u64 = 1 << 30;

/// The cached cut activations and labels, and which examples train and validate.
#[derive(Clone)]
pub struct CutData<'a> {
    /// Each example's activations at the cut (f16), for the ones used here.
    pub cut: &'a [Option<Vec<f16>>],
    pub labels: &'a [u32],
    pub train: Vec<u32>,
    pub validation: Vec<u32>,
}

/// Where each training micro-batch's activations at the cut come from: the
/// cache, or the frozen part run on freshly distorted images (distorted.rs).
pub trait CutSource {
    /// The activations of examples `rows`, [rows.len(), cut size].
    fn cut(&mut self, rows: &[u32], rng: &mut StdRng) -> Result<Vec<f32>>;
}

impl CutSource for CutData<'_> {
    fn cut(&mut self, rows: &[u32], _: &mut StdRng) -> Result<Vec<f32>> {
        Ok(self.cached(rows))
    }
}

impl CutData<'_> {
    /// The cached activations of examples `rows`, as f32.
    fn cached(&self, rows: &[u32]) -> Vec<f32> {
        let mut cut = Vec::new();
        for &r in rows {
            let values = self.cut[r as usize]
                .as_ref()
                .expect("cut activations of this image");
            cut.extend(values.iter().map(|v| v.to_f32()));
        }
        cut
    }
}

/// One epoch's numbers (epoch 0: before fine-tuning).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: u32,
    /// The learning rate at the epoch's last step (0 for epoch 0).
    pub learning_rate: f32,
    pub train_cross_entropy: f32,
    pub train_accuracy: f32,
    pub validation_cross_entropy: Option<f32>,
    pub validation_accuracy: Option<f32>,
    pub seconds: f64,
}

impl EpochRecord {
    /// What epochs are compared on: validation when there is any, else training.
    fn selection(&self) -> (f32, f32) {
        match (self.validation_accuracy, self.validation_cross_entropy) {
            (Some(a), Some(c)) => (a, c),
            _ => (self.train_accuracy, self.train_cross_entropy),
        }
    }

    /// Whether its numbers can be compared at all (a diverged epoch's loss is not finite).
    fn finite(&self) -> bool {
        let (a, c) = self.selection();
        a.is_finite() && c.is_finite()
    }

    /// Higher accuracy, then lower cross-entropy.
    fn better_than(&self, other: &EpochRecord) -> bool {
        let ((a, c), (b, d)) = (self.selection(), other.selection());
        a > b || (a == b && c < d)
    }
}

pub struct FineTuned {
    /// The kept epoch's block tensors (empty when no epoch had a finite loss).
    pub tensors: Vec<Tensor>,
    /// The kept epoch's classifier: weights [dim, classes] and biases.
    pub head: (Vec<f32>, Vec<f32>),
    pub epochs: Vec<EpochRecord>,
    pub best_epoch: u32,
    /// Images per micro-batch.
    pub micro_batch: u32,
}

/// Mean cross-entropy and accuracy of a pass.
#[derive(Default)]
struct Tally {
    loss: f64,
    correct: usize,
    images: usize,
}

impl Tally {
    fn add(&mut self, probabilities: &[f32], losses: &[f32], labels: &[u32]) {
        let classes = probabilities.len() / labels.len();
        for (i, &label) in labels.iter().enumerate() {
            let p = &probabilities[i * classes..(i + 1) * classes];
            let best = (0..classes)
                .max_by(|&a, &b| p[a].total_cmp(&p[b]))
                .unwrap_or(0);
            self.correct += (best == label as usize) as usize;
            self.loss += losses[i] as f64;
        }
        self.images += labels.len();
    }
    fn means(&self) -> (f32, f32) {
        let n = self.images.max(1) as f64;
        ((self.loss / n) as f32, (self.correct as f64 / n) as f32)
    }
}

/// The passes in use, one per batch size, all scaling gradients by 1 / batch size.
struct Plans {
    scale: f32,
    by_size: HashMap<u32, StepPlan>,
}

impl Plans {
    /// Runs one micro-batch (the activations `cut` of examples `rows`)
    /// forward, and backward when `train`.
    fn run(
        &mut self,
        (gpu, net): (&Gpu, &TrainableNetwork),
        data: &CutData,
        (rows, cut): (&[u32], &[f32]),
        pass: Pass,
        t: &mut Tally,
    ) -> Result<()> {
        let labels: Vec<u32> = rows.iter().map(|&r| data.labels[r as usize]).collect();
        let scale = self.scale;
        let plan = (self.by_size.entry(rows.len() as u32))
            .or_insert_with(|| StepPlan::new(gpu, net, rows.len() as u32, scale));
        plan.load(gpu, cut, &labels);
        let result = plan.run(gpu, pass)?;
        t.add(&result.probabilities, &result.losses, &labels);
        Ok(())
    }

    fn evaluate(
        &mut self,
        on: (&Gpu, &TrainableNetwork),
        data: &CutData,
        rows: &[u32],
        micro: u32,
    ) -> Result<(f32, f32)> {
        let mut t = Tally::default();
        for chunk in rows.chunks(micro as usize) {
            let cut = data.cached(chunk);
            self.run(on, data, (chunk, &cut), Pass::Evaluate, &mut t)?;
        }
        Ok(t.means())
    }
}

/// The largest micro-batch (at most `batch`) whose activations, gradients
/// and scratch textures fit the memory budget and whose largest tensor fits
/// one binding.
pub fn micro_batch(gpu: &Gpu, net: &TrainableNetwork, batch: u32) -> u32 {
    let largest = StepPlan::largest_tensor_bytes(net);
    let one = StepPlan::bytes_per_image(net)
        + net.kernels.scratch_bytes_per_image(largest)
        + net.backward.scratch_bytes_per_image(largest);
    let fits = (MEMORY_BUDGET / one)
        .min(gpu.max_binding_bytes() / largest)
        .max(1);
    (batch as u64).min(fits) as u32
}

/// Mean cross-entropy and accuracy of class `probabilities` ([N, classes])
/// against `labels` (0 for no labels), the probability clamped as
/// classifier_train.wgsl's loss clamps it.
pub fn cross_entropy_and_accuracy(probabilities: &[f32], labels: &[u32]) -> (f32, f32) {
    if labels.is_empty() {
        return (0.0, 0.0);
    }
    let classes = probabilities.len() / labels.len();
    let losses: Vec<f32> = labels
        .iter()
        .enumerate()
        .map(|(i, &l)| -probabilities[i * classes + l as usize].max(1e-30).ln())
        .collect();
    let mut t = Tally::default();
    t.add(probabilities, &losses, labels);
    t.means()
}

/// Fine-tunes `net` on the training examples of `data` (their activations
/// from `source`), validating on the cached activations of its validation
/// examples after every epoch. `frozen_train` is epoch 0's training
/// cross-entropy and accuracy, which the caller measures on the training
/// images' bottlenecks (the frozen head's, so the blocks need not run over
/// every training image first).
pub fn fine_tune(
    gpu: &Gpu,
    net: &mut TrainableNetwork,
    (data, source): (&CutData, &mut dyn CutSource),
    settings: &FineTuneSettings,
    frozen_train: (f32, f32),
    rng: &mut StdRng,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<FineTuned> {
    let batch = settings.batch_size.min(data.train.len() as u32).max(1);
    let micro = micro_batch(gpu, net, batch);
    let steps_per_epoch = data.train.len() as u32 / batch;
    let total_steps = steps_per_epoch * settings.epochs;
    let mut plans = Plans {
        scale: 1.0 / batch as f32,
        by_size: HashMap::new(),
    };
    let started = Instant::now();
    let mut record = validation(gpu, net, &mut plans, data, micro)?;
    (record.train_cross_entropy, record.train_accuracy) = frozen_train;
    record.seconds = started.elapsed().as_secs_f64();
    on_epoch(&record);
    let mut epochs = vec![record];
    // Epoch 0 is recorded but does not compete: a head sweep chose it on
    // these same validation images, so its accuracy there reads high. It is
    // kept only when every fine-tuned epoch diverges.
    let (mut best_epoch, mut best) = (0, net.download(gpu)?);
    let mut train = data.train.clone();
    let mut step = 0;
    for epoch in 1..=settings.epochs {
        let started = Instant::now();
        train.shuffle(rng);
        let bar = progress_bar(
            &format!("epoch {epoch}/{}", settings.epochs),
            (steps_per_epoch * batch) as usize,
            "images",
        );
        let mut tally = Tally::default();
        let mut lr = 0.0;
        for rows in train.chunks_exact(batch as usize) {
            for chunk in rows.chunks(micro as usize) {
                let cut = source.cut(chunk, rng)?;
                let pass = Pass::Train {
                    dropout: settings.dropout,
                    seed: rng.random(),
                };
                plans.run((gpu, net), data, (chunk, &cut), pass, &mut tally)?;
            }
            lr = settings.learning_rate_at(step, total_steps);
            net.update(gpu, lr);
            step += 1;
            bar.inc(batch as u64);
        }
        bar.finish_and_clear();
        let mut record = validation(gpu, net, &mut plans, data, micro)?;
        // The training numbers as the epoch trained (the parameters moving).
        (record.train_cross_entropy, record.train_accuracy) = tally.means();
        (record.epoch, record.learning_rate) = (epoch, lr);
        record.seconds = started.elapsed().as_secs_f64();
        on_epoch(&record);
        let improved = record.finite()
            && (best_epoch == 0 || record.better_than(&epochs[best_epoch as usize]));
        epochs.push(record);
        if improved {
            best_epoch = epoch;
            best = net.download(gpu)?;
        } else if settings.stops_after(epoch, best_epoch) {
            log::info!(
                "Fine-tuning stopped early: no better validation for {} epochs",
                settings.patience
            );
            break;
        }
    }
    let head = |name: &str| {
        best.iter()
            .find(|t| t.name == name)
            .expect("head tensor")
            .data
            .clone()
    };
    let head = (head(HEAD_WEIGHTS), head(HEAD_BIASES));
    let tensors = match best_epoch {
        0 => Vec::new(),
        _ => best
            .into_iter()
            .filter(|t| t.name != HEAD_WEIGHTS && t.name != HEAD_BIASES)
            .collect(),
    };
    Ok(FineTuned {
        tensors,
        head,
        epochs,
        best_epoch,
        micro_batch: micro,
    })
}

/// A record with the validation images' numbers at the current parameters
/// (the rest filled in by the caller).
fn validation(
    gpu: &Gpu,
    net: &TrainableNetwork,
    plans: &mut Plans,
    data: &CutData,
    micro: u32,
) -> Result<EpochRecord> {
    let validation = match data.validation.is_empty() {
        true => None,
        false => Some(plans.evaluate((gpu, net), data, &data.validation, micro)?),
    };
    Ok(EpochRecord {
        epoch: 0,
        learning_rate: 0.0,
        train_cross_entropy: 0.0,
        train_accuracy: 0.0,
        validation_cross_entropy: validation.map(|v| v.0),
        validation_accuracy: validation.map(|v| v.1),
        seconds: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_zero_numbers_are_the_loss_kernels() {
        // Rows predicting class 0, 1 and 0 with certainty; labels 0, 0 and 1.
        let probabilities = [0.9, 0.1, 0.2, 0.8, 1.0, 0.0];
        let (loss, accuracy) = cross_entropy_and_accuracy(&probabilities, &[0, 0, 1]);
        // The last row's probability is clamped at 1e-30, as the kernel clamps it.
        let want = -(0.9f32.ln() + 0.2f32.ln() + 1e-30f32.ln()) / 3.0;
        assert!((loss - want).abs() < 1e-4, "{loss} against {want}");
        assert!((accuracy - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(cross_entropy_and_accuracy(&[], &[]), (0.0, 0.0));
    }
}
