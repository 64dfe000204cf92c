//! The GPU worker: owns the engine and the classifier's head, takes queued
//! requests in batches — whatever arrived within `max_wait`, up to the
//! batch — and answers each. Batches are padded to a few sizes (powers of
//! two up to the largest) so that the engine builds each size's plan once.

use super::Shared;
use crate::engine::Engine;
use crate::head::classifier::{Classifier, Predictor};
use anyhow::Result;
use image::RgbImage;
use serde::Serialize;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Opens the classifier and its engine; run on the worker's own thread.
pub type OpenModel = Box<dyn FnOnce() -> Result<(Classifier, Engine)> + Send>;

/// Why a request got no answer from the GPU: the HTTP status and the reason.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

/// One request's images and where its answer goes: the class probabilities
/// of each image, in order.
pub struct Job {
    pub images: Vec<RgbImage>,
    pub reply: tokio::sync::oneshot::Sender<Result<Vec<Vec<f32>>, Refusal>>,
}

pub struct Settings {
    pub max_batch: Option<u32>,
    pub max_wait: Duration,
}

/// What /v1/model tells about the loaded classifier.
#[derive(Clone, Debug, Serialize)]
pub struct ModelSummary {
    pub labels: Vec<String>,
    pub architecture: String,
    pub input_size: [u32; 2],
    pub normalization: String,
    pub base_fingerprint: String,
    pub device: String,
    pub max_batch: u32,
    /// What training recorded in the classifier (steps, learning rate, accuracies, …).
    pub training: HashMap<String, String>,
}

pub fn spawn(
    open: OpenModel,
    jobs: Receiver<Job>,
    shared: Arc<Shared>,
    settings: Settings,
    failed: tokio::sync::oneshot::Sender<anyhow::Error>,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("gpu worker".into())
        .spawn(move || match Batcher::open(open, &settings, shared) {
            Ok(mut batcher) => batcher.serve(&jobs, settings.max_wait),
            Err(e) => {
                let _ = failed.send(e);
            }
        })
        .expect("a thread can be started")
}

struct Batcher {
    engine: Engine,
    head: Predictor,
    classes: usize,
    max_batch: usize,
    /// The batch sizes run, smallest first.
    sizes: Vec<usize>,
    shared: Arc<Shared>,
}

impl Batcher {
    fn open(open: OpenModel, settings: &Settings, shared: Arc<Shared>) -> Result<Self> {
        let (classifier, mut engine) = open()?;
        let device_batch = engine.max_batch();
        let max_batch = settings
            .max_batch
            .map_or(device_batch, |b| b.min(device_batch))
            .max(1);
        let sizes = batch_sizes(max_batch as usize);
        engine.keep_plans(sizes.len());
        let head = classifier.predictor(&engine.gpu, max_batch)?;
        let device = engine.gpu.info.name.clone();
        shared.metrics.set_device(&device);
        let (h, w) = engine.input_size();
        let summary = ModelSummary {
            labels: classifier.labels.clone(),
            architecture: classifier.architecture.name().into(),
            input_size: [h, w],
            normalization: classifier.normalization.name.clone(),
            base_fingerprint: classifier.base_fingerprint.clone(),
            device: device.clone(),
            max_batch,
            training: classifier.extra.clone(),
        };
        log::info!(
            "Model ready on \"{device}\": {} at {h}×{w}, classes {}; batches of up to {max_batch}",
            summary.architecture,
            summary.labels.join(", ")
        );
        shared.model.set(summary).expect("the model is loaded once");
        Ok(Batcher {
            engine,
            head,
            classes: classifier.labels.len(),
            max_batch: max_batch as usize,
            sizes,
            shared,
        })
    }

    /// Takes batches until every sender of the queue is gone.
    fn serve(&mut self, jobs: &Receiver<Job>, max_wait: Duration) {
        while let Ok(first) = jobs.recv() {
            let mut batch = vec![first];
            let mut images = batch[0].images.len();
            let deadline = Instant::now() + max_wait;
            while images < self.max_batch {
                match jobs.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(job) => {
                        images += job.images.len();
                        batch.push(job);
                    }
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            self.shared.metrics.queue_depth.dec_by(batch.len() as i64);
            self.answer(batch);
        }
    }

    /// Runs the batch's usable images and answers every job.
    fn answer(&mut self, batch: Vec<Job>) {
        let mut usable = Vec::with_capacity(batch.len());
        for job in batch {
            // The first image the device cannot hold refuses its request.
            let too_large = job
                .images
                .iter()
                .find_map(|img| self.engine.check_image(img).err());
            match too_large {
                None => usable.push(job),
                Some(e) => {
                    let message = format!("{e:#}");
                    let _ = job.reply.send(Err(Refusal {
                        status: 413,
                        message,
                    }));
                }
            }
        }
        let images: Vec<&RgbImage> = usable.iter().flat_map(|j| &j.images).collect();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| self.probabilities(&images)));
        let mut rows = match outcome {
            Ok(Ok(probabilities)) => probabilities,
            Ok(Err(e)) => return refuse_all(usable, &format!("{e:#}")),
            Err(_) => return refuse_all(usable, "the GPU worker failed on this batch"),
        }
        .into_iter();
        self.shared.metrics.images.inc_by(images.len() as u64);
        for job in usable {
            let answer: Vec<Vec<f32>> = rows.by_ref().take(job.images.len()).collect();
            let _ = job.reply.send(Ok(answer));
        }
    }

    /// Each image's class probabilities, in batches padded to a planned size.
    fn probabilities(&mut self, images: &[&RgbImage]) -> Result<Vec<Vec<f32>>> {
        let mut rows = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.max_batch) {
            let size = *self
                .sizes
                .iter()
                .find(|&&s| s >= chunk.len())
                .expect("max_batch is a size");
            self.shared.metrics.batch_size.observe(chunk.len() as f64);
            let mut padded = chunk.to_vec();
            padded.resize(size, chunk[chunk.len() - 1]);
            let features = self.engine.bottlenecks(&padded)?;
            let probabilities = self.head.probabilities(&self.engine.gpu, &features)?;
            rows.extend(
                probabilities
                    .chunks(self.classes)
                    .take(chunk.len())
                    .map(<[f32]>::to_vec),
            );
        }
        Ok(rows)
    }
}

fn refuse_all(jobs: Vec<Job>, message: &str) {
    log::error!("a batch failed: {message}");
    for job in jobs {
        let refusal = Refusal {
            status: 500,
            message: message.to_string(),
        };
        let _ = job.reply.send(Err(refusal));
    }
}

/// Powers of two below `max`, then `max`.
fn batch_sizes(max: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> = (0..).map(|p| 1 << p).take_while(|&s| s < max).collect();
    sizes.push(max);
    sizes
}

#[cfg(test)]
mod tests {
    #[test]
    fn batch_sizes_are_powers_of_two_then_the_largest() {
        assert_eq!(super::batch_sizes(1), vec![1]);
        assert_eq!(super::batch_sizes(24), vec![1, 2, 4, 8, 16, 24]);
        assert_eq!(super::batch_sizes(64), vec![1, 2, 4, 8, 16, 32, 64]);
    }
}
