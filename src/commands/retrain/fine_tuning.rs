//! The run's fine-tuning phase: checked before any work (the block exists,
//! the cut's cached activations fit on disk and in memory), then the kept
//! head and the top blocks trained together from the cached activations (or,
//! with distortions, from the frozen part run on distorted images), one
//! log line (and TensorBoard scalars) per epoch; the classifier then carries
//! the fine-tuned tensors, and the engine is rebuilt with them for the final
//! test, exactly as `classify` will run it.

use super::config::fine_tune_settings;
use crate::cli::TrainArgs;
use crate::data::bottleneck_cache::BottleneckCache;
use crate::data::dataset::Dataset;
use crate::engine::Engine;
use crate::fine_tune::blocks::TrainableBlocks;
use crate::fine_tune::distorted::DistortedCuts;
use crate::fine_tune::network::TrainableNetwork;
use crate::fine_tune::settings::{FineTuneSettings, Rule};
use crate::fine_tune::training::{
    cross_entropy_and_accuracy, fine_tune, CutData, CutSource, EpochRecord, FineTuned,
};
use crate::gpu::Gpu;
use crate::head::classifier::Classifier;
use crate::model::weights::WeightFile;
use crate::report::run_metrics::FineTuningMetrics;
use crate::resources::{available_disk, available_memory};
use crate::train::bottlenecks::{Bottlenecks, CutRequest};
use crate::train::standardize::StandardizedHead;
use crate::train::summaries::SummaryWriter;
use anyhow::{bail, Result};
use rand::rngs::StdRng;
use std::path::Path;

/// Fine-tuning as checked before any work.
pub struct Prepared {
    pub settings: FineTuneSettings,
    pub blocks: TrainableBlocks,
    /// Whether the training images' cut activations are cached too: not when
    /// they are distorted (the frozen part then runs on every distorted batch).
    pub cut_training: bool,
    /// How many images' cut activations are cached.
    pub cut_images: u64,
    /// Their bytes on disk.
    pub cut_cache_bytes: u64,
}

const MIB: u64 = 1 << 20;

/// The fine-tuning the flags ask for, checked against the network and the
/// machine: None when not asked for.
pub fn prepare(
    args: &TrainArgs,
    engine: &Engine,
    cache: &BottleneckCache,
    dataset: &Dataset,
) -> Result<Option<Prepared>> {
    let Some(settings) = fine_tune_settings(args) else {
        return Ok(None);
    };
    let blocks = TrainableBlocks::new(engine.network(), &settings.from)?;
    let cut_training = !args.distortions().any();
    let images = (dataset.classes.iter())
        .flat_map(|c| &c.images)
        .filter(|i| CutRequest::wanted(i.set, cut_training))
        .count() as u64;
    let cut_cache = cache.at_layer(&blocks.cut);
    let bytes = images * cut_cache.entry_bytes(blocks.cut_size());
    let need = CutCacheNeeds {
        from: &settings.from,
        cut: &blocks.cut,
        images,
        disk: bytes,
        memory: images * blocks.cut_size() as u64 * 2,
    };
    let dir = &args.bottleneck_dir;
    need.check((dir, available_disk(dir)), available_memory())?;
    Ok(Some(Prepared {
        settings,
        blocks,
        cut_training,
        cut_images: images,
        cut_cache_bytes: bytes,
    }))
}

/// What caching the cut's activations takes, on disk and in memory.
struct CutCacheNeeds<'a> {
    from: &'a str,
    cut: &'a str,
    images: u64,
    disk: u64,
    memory: u64,
}

impl CutCacheNeeds<'_> {
    /// An error saying what does not fit when the folder's free space or the
    /// machine's available memory (where known) is short.
    fn check(
        &self,
        (dir, free_disk): (&Path, Option<u64>),
        free_memory: Option<u64>,
    ) -> Result<()> {
        let (from, cut, images) = (self.from, self.cut, self.images);
        if let Some(free) = free_disk.filter(|&free| free < self.disk) {
            bail!(
                "fine-tuning from {from} caches the {cut} activations of {images} images: {} MiB, but {} has {} MiB free; free some space, or fine-tune from a higher block",
                self.disk / MIB,
                dir.display(),
                free / MIB
            );
        }
        if let Some(free) = free_memory.filter(|&free| free < self.memory) {
            bail!(
                "fine-tuning from {from} holds the {cut} activations of {images} images in memory: {} MiB, but {} MiB are available; fine-tune from a higher block",
                self.memory / MIB,
                free / MIB
            );
        }
        Ok(())
    }
}

impl Prepared {
    /// What the bottleneck pass also gathers: the cut's activations.
    pub fn cut_request(&self, cache: &BottleneckCache) -> CutRequest {
        CutRequest {
            cache: cache.at_layer(&self.blocks.cut),
            layer: self.blocks.cut.clone(),
            size: self.blocks.cut_size(),
            training: self.cut_training,
        }
    }

    /// Trains the blocks and the head (the classifier's, as the sweep trained
    /// it on standardised features) together and puts the result in the
    /// classifier (the kept epoch's head and fine-tuned tensors).
    pub fn run(
        self,
        (engine, file): (&mut Engine, &WeightFile),
        args: &TrainArgs,
        (classifier, head): (&mut Classifier, StandardizedHead),
        b: &Bottlenecks,
        (train, validation): (&[Vec<u32>], &[Vec<u32>]),
        rng: &mut StdRng,
    ) -> Result<FineTuningMetrics> {
        let Prepared {
            settings,
            blocks,
            cut_training,
            cut_images,
            cut_cache_bytes,
        } = self;
        let (from, cut) = (blocks.from.clone(), blocks.cut.clone());
        let trained_layers = blocks.layers().count();
        let gpu = &engine.gpu.clone();
        if cut_training {
            // Nothing runs the whole network until the final test: free its
            // batch's activations for the blocks' training.
            engine.release_memory();
        }
        let mut net = TrainableNetwork::new(gpu, blocks, file, &head, &settings)?;
        net.tune_on_first_use(gpu)?;
        log::info!(
            "Fine-tuning from {from} up ({trained_layers} conv layers and the head, {} parameters), {} epochs of {} images; the {cut} activations of {cut_images} images cached ({} MiB on disk, f16)",
            net.parameter_count(),
            settings.epochs,
            train.iter().map(Vec::len).sum::<usize>(),
            cut_cache_bytes / MIB,
        );
        let labels: Vec<u32> = b.examples.iter().map(|e| e.class as u32).collect();
        let data = CutData {
            cut: &b.cut,
            labels: &labels,
            train: train.concat(),
            validation: validation.concat(),
        };
        let summaries = args.summaries_dir.as_deref();
        let mut writer = summaries
            .map(|d| SummaryWriter::create(&d.join("fine_tune")))
            .transpose()?;
        let mut on_epoch = |r: &EpochRecord| {
            log_epoch(r);
            if let Some(w) = writer.as_mut() {
                if let Err(e) = write_scalars(w, r) {
                    log::warn!("cannot write the fine-tuning summaries: {e:#}");
                }
            }
        };
        let distortions = args.distortions();
        let mut cached = data.clone();
        let mut distorted;
        let source: &mut dyn CutSource = if !cut_training {
            log::info!("Distorting training images ({distortions:?}): every step runs its images through the frozen part up to {cut}");
            let paths = b.examples.iter().map(|e| e.path.clone()).collect();
            let cache = args.image_cache_mb << 20;
            distorted = DistortedCuts::new(engine, distortions, &cut, paths, cache);
            &mut distorted
        } else {
            &mut cached
        };
        let frozen_train = frozen_head_on(gpu, classifier, b, &data.train)?;
        let tuned = fine_tune(
            gpu,
            &mut net,
            (&data, source),
            &settings,
            frozen_train,
            rng,
            &mut on_epoch,
        )?;
        say_what_is_kept(&tuned, !args.retrain_py_head);
        (classifier.weights, classifier.biases) = tuned.head;
        classifier.fine_tuned = tuned.tensors;
        classifier
            .extra
            .insert("fine_tuned_from".into(), from.clone());
        classifier
            .extra
            .insert("fine_tune_epoch".into(), tuned.best_epoch.to_string());
        Ok(FineTuningMetrics {
            from,
            cut,
            trained_layers,
            parameters: net.parameter_count(),
            optimizer: match settings.rule {
                Rule::Adam => "adam".into(),
                Rule::Sgd { momentum } => format!("sgd (momentum {momentum})"),
            },
            learning_rate: settings.learning_rate,
            weight_decay: settings.weight_decay,
            dropout: settings.dropout,
            batch_size: settings.batch_size,
            micro_batch: tuned.micro_batch,
            epochs_asked: settings.epochs,
            patience: settings.patience,
            cut_cache_bytes,
            cut_storage: "f16".into(),
            best_epoch: tuned.best_epoch,
            epochs: tuned.epochs,
        })
    }
}

/// Logs which epoch the run keeps, and when it validates below the frozen
/// head, says so (and, after a head sweep, that the sweep chose that head
/// on the same validation images, so its figure reads high).
fn say_what_is_kept(tuned: &FineTuned, swept: bool) {
    let kept = tuned.best_epoch as usize;
    if kept == 0 {
        log::warn!("every fine-tuned epoch diverged (its loss is not a finite number): keeping the base network and the head as they were; try a lower --fine-tune-learning-rate");
        return;
    }
    let accuracy = |e: usize| tuned.epochs[e].validation_accuracy;
    let on = match accuracy(0) {
        Some(_) => "validation",
        None => "training",
    };
    log::info!("Keeping epoch {kept}'s parameters (the best fine-tuned epoch on the {on} images)");
    if let (Some(kept_accuracy), Some(frozen)) = (accuracy(kept), accuracy(0)) {
        if kept_accuracy < frozen {
            let why = match swept {
                true => " (which the head sweep chose on these same validation images, so it reads high)",
                false => "",
            };
            log::info!(
                "Epoch {kept} validates at {:.1}%, below the frozen head's {:.1}%{why}; if the final test disappoints, try a lower --fine-tune-learning-rate, or leave out --fine-tune",
                100.0 * kept_accuracy,
                100.0 * frozen
            );
        }
    }
}

/// The classifier's (the frozen head's) mean cross-entropy and accuracy on
/// the bottlenecks of examples `rows`.
fn frozen_head_on(
    gpu: &Gpu,
    classifier: &Classifier,
    b: &Bottlenecks,
    rows: &[u32],
) -> Result<(f32, f32)> {
    const BATCH: usize = 256;
    let mut predictor = classifier.predictor(gpu, BATCH as u32)?;
    let mut probabilities = Vec::new();
    for chunk in rows.chunks(BATCH) {
        let features: Vec<f32> = chunk
            .iter()
            .flat_map(|&r| &b.features[r as usize * b.dim..(r as usize + 1) * b.dim])
            .copied()
            .collect();
        probabilities.extend(predictor.probabilities(gpu, &features)?);
    }
    let labels: Vec<u32> = rows
        .iter()
        .map(|&r| b.examples[r as usize].class as u32)
        .collect();
    Ok(cross_entropy_and_accuracy(&probabilities, &labels))
}

fn log_epoch(r: &EpochRecord) {
    let validation = match (r.validation_accuracy, r.validation_cross_entropy) {
        (Some(a), Some(c)) => format!(
            "validation accuracy {:.1}%, cross-entropy {c:.4}",
            a * 100.0
        ),
        _ => "no validation images".into(),
    };
    let what = match r.epoch {
        0 => "Before fine-tuning".to_string(),
        e => format!(
            "Fine-tuning epoch {e} (learning rate {:.2e}, {:.1} s)",
            r.learning_rate, r.seconds
        ),
    };
    log::info!(
        "{what}: train accuracy {:.1}%, cross-entropy {:.4}; {validation}",
        r.train_accuracy * 100.0,
        r.train_cross_entropy
    );
}

fn write_scalars(w: &mut SummaryWriter, r: &EpochRecord) -> Result<()> {
    w.scalar("fine_tune/train_accuracy", r.train_accuracy, r.epoch)?;
    w.scalar(
        "fine_tune/train_cross_entropy",
        r.train_cross_entropy,
        r.epoch,
    )?;
    if let (Some(a), Some(c)) = (r.validation_accuracy, r.validation_cross_entropy) {
        w.scalar("fine_tune/validation_accuracy", a, r.epoch)?;
        w.scalar("fine_tune/validation_cross_entropy", c, r.epoch)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_cache_that_does_not_fit_is_refused_with_its_size() {
        let need = CutCacheNeeds {
            from: "mixed0",
            cut: "stem",
            images: 900,
            disk: 3000 * MIB,
            memory: 2900 * MIB,
        };
        let dir = Path::new("cache/bottlenecks");
        let err = |disk, memory| need.check((dir, disk), memory).unwrap_err().to_string();
        let disk = err(Some(1000 * MIB), Some(8000 * MIB));
        for part in [
            "stem activations of 900 images: 3000 MiB",
            "cache/bottlenecks has 1000 MiB free",
        ] {
            assert!(disk.contains(part), "{disk}");
        }
        let memory = err(Some(5000 * MIB), Some(2000 * MIB));
        for part in ["in memory: 2900 MiB", "but 2000 MiB are available"] {
            assert!(memory.contains(part), "{memory}");
        }
        assert!(need
            .check((dir, Some(3000 * MIB)), Some(2900 * MIB))
            .is_ok());
        // Unknown free space or memory is not a reason to refuse.
        assert!(need.check((dir, None), None).is_ok());
    }
}
