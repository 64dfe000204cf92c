//! A trained classifier as it is stored and applied: the classifier file
//! (the head's weights with everything needed to apply it exactly as
//! trained), the labels file and the self-contained saved-model folder, all
//! written atomically; and the head's probabilities for bottlenecks.

use super::{Batch, GpuHeads};
use crate::atomic_file;
use crate::gpu::Gpu;
use crate::model::weights::{write_tensors, Normalization, Tensor};
use crate::model::Architecture;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::SafeTensors;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const FORMAT: &str = "retrain-classifier-v1";
/// Prefix of the base network's fine-tuned tensors inside a classifier file.
const FINE_TUNED_PREFIX: &str = "base/";
/// File names inside a --saved-model-dir folder.
pub const SAVED_BASE: &str = "base_weights.safetensors";
pub const SAVED_CLASSIFIER: &str = "classifier.safetensors";
pub const SAVED_LABELS: &str = "labels.txt";

/// A trained classifier head and what it needs to be applied exactly as trained.
#[derive(Clone, Debug)]
pub struct Classifier {
    /// The network whose bottlenecks the head reads.
    pub architecture: Architecture,
    /// [dim, classes] row-major.
    pub weights: Vec<f32>,
    pub biases: Vec<f32>,
    pub labels: Vec<String>,
    pub base_fingerprint: String,
    pub base_weights: PathBuf,
    pub input_size: (u32, u32),
    pub normalization: Normalization,
    /// The base network's layers as fine-tuning left them (weight-file names
    /// and layouts), replacing the base weights' own; empty without fine-tuning.
    pub fine_tuned: Vec<Tensor>,
    /// Everything else worth recording (steps, learning rate, accuracies, …).
    pub extra: HashMap<String, String>,
}

impl Classifier {
    pub fn dim(&self) -> usize {
        self.weights.len() / self.labels.len()
    }

    /// Weights then biases, as the head kernels hold them.
    pub fn parameters(&self) -> Vec<f32> {
        self.weights.iter().chain(&self.biases).copied().collect()
    }

    /// The head on the GPU, ready for batches of up to `capacity` bottlenecks.
    pub fn predictor(&self, gpu: &Gpu, capacity: u32) -> Result<Predictor> {
        let (dim, classes) = (self.dim() as u32, self.labels.len() as u32);
        let rows = vec![0.0; capacity as usize * dim as usize];
        Ok(Predictor {
            heads: GpuHeads::fixed(gpu, &rows, (dim, classes), &self.parameters())?,
            batches: HashMap::new(),
        })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let classes = self.labels.len();
        let mut tensors = vec![
            Tensor {
                name: "final_weights".into(),
                shape: vec![self.dim(), classes],
                data: self.weights.clone(),
            },
            Tensor {
                name: "final_biases".into(),
                shape: vec![classes],
                data: self.biases.clone(),
            },
        ];
        tensors.extend(self.fine_tuned.iter().map(|t| Tensor {
            name: format!("{FINE_TUNED_PREFIX}{}", t.name),
            ..t.clone()
        }));
        let n = &self.normalization;
        let mut meta = self.extra.clone();
        for (k, v) in [
            ("format", FORMAT.to_string()),
            ("architecture", self.architecture.name().to_string()),
            ("labels", serde_json::to_string(&self.labels)?),
            ("base_fingerprint", self.base_fingerprint.clone()),
            ("base_weights", self.base_weights.display().to_string()),
            (
                "input_size",
                format!("{}x{}", self.input_size.0, self.input_size.1),
            ),
            ("normalization", n.name.clone()),
            ("input_scale", format!("{:?}", n.scale)),
            ("input_offset", format!("{:?}", n.offset)),
        ] {
            meta.insert(k.to_string(), v);
        }
        write_tensors(path, &tensors, meta)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read classifier {}", path.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{}: damaged or not a classifier file ({e})", path.display()))?;
        let (_, header) = SafeTensors::read_metadata(&bytes)?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            bail!("{}: not a classifier written by retrain", path.display());
        }
        let get = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| anyhow!("{}: metadata lacks {k}", path.display()))
        };
        let tensor = |name: &str| -> Result<Vec<f32>> {
            let t = st
                .tensor(name)
                .map_err(|_| anyhow!("{}: tensor {name} is missing", path.display()))?;
            Ok(bytemuck::pod_collect_to_vec(t.data()))
        };
        let labels: Vec<String> = serde_json::from_str(&get("labels")?)?;
        let (weights, biases) = (tensor("final_weights")?, tensor("final_biases")?);
        if labels.is_empty() || biases.len() != labels.len() || weights.len() % labels.len() != 0 {
            bail!(
                "{}: the weights do not match its {} labels",
                path.display(),
                labels.len()
            );
        }
        let floats = |k: &str| -> Result<[f32; 3]> { Ok(serde_json::from_str(&get(k)?)?) };
        let mut fine_tuned = Vec::new();
        for (name, view) in st.tensors() {
            if let Some(layer) = name.strip_prefix(FINE_TUNED_PREFIX) {
                if view.dtype() != safetensors::Dtype::F32 {
                    bail!("{}: tensor {name} is not f32", path.display());
                }
                fine_tuned.push(Tensor {
                    name: layer.to_string(),
                    shape: view.shape().to_vec(),
                    data: bytemuck::pod_collect_to_vec(view.data()),
                });
            }
        }
        fine_tuned.sort_by(|a, b| a.name.cmp(&b.name));
        // Classifiers written before MobileNet V2 existed are Inception V3's.
        let architecture = meta
            .get("architecture")
            .map_or("inception_v3", String::as_str);
        Ok(Classifier {
            architecture: Architecture::from_name(architecture)
                .map_err(|e| anyhow!("{}: {e}", path.display()))?,
            weights,
            biases,
            base_fingerprint: get("base_fingerprint")?,
            base_weights: PathBuf::from(get("base_weights")?),
            input_size: crate::model::weights::parse_size(&get("input_size")?)?,
            normalization: Normalization {
                name: get("normalization")?,
                scale: floats("input_scale")?,
                offset: floats("input_offset")?,
            },
            labels,
            fine_tuned,
            extra: meta,
        })
    }
}

/// A label with its probability.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    pub label: String,
    pub score: f32,
}

/// The `k` (at least one) most probable labels of one image's `probs`, best first.
pub fn top_k(probs: &[f32], labels: &[String], k: usize) -> Vec<Prediction> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    order.truncate(k.max(1));
    order
        .into_iter()
        .map(|c| Prediction {
            label: labels[c].clone(),
            score: probs[c],
        })
        .collect()
}

/// A classifier's head on the GPU for batch after batch: its kernels compiled
/// and its parameters uploaded once, each batch's bottlenecks written into
/// its rows.
pub struct Predictor {
    heads: GpuHeads,
    /// Buffers for each batch size seen.
    batches: HashMap<u32, Batch>,
}

impl Predictor {
    /// Class probabilities ([N, classes]) of bottlenecks ([N, dim]).
    pub fn probabilities(&mut self, gpu: &Gpu, features: &[f32]) -> Result<Vec<f32>> {
        let n = features.len() / self.heads.dim as usize;
        if n > self.heads.rows as usize {
            bail!(
                "{n} images in one batch, more than the {} this head was set up for",
                self.heads.rows
            );
        }
        self.heads.write_rows(gpu, 0, features, &vec![0; n]);
        let heads = &self.heads;
        let batch = self
            .batches
            .entry(n as u32)
            .or_insert_with(|| heads.batch(gpu, n as u32));
        let rows: Vec<u32> = (0..n as u32).collect();
        let logits = self.heads.logits(gpu, batch, &rows)?;
        Ok(logits
            .chunks(self.heads.classes as usize)
            .flat_map(softmax)
            .collect())
    }
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let top = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - top).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// One label per line in class order, with a trailing newline (as retrain.py writes it).
pub fn write_labels(path: &Path, labels: &[String]) -> Result<()> {
    let text: String = labels.iter().map(|l| format!("{l}\n")).collect();
    atomic_file::write_bytes(path, text.as_bytes())
}

/// A folder holding the base weights, the classifier and the labels.
pub fn write_saved_model(dir: &Path, base_weights: &Path, classifier: &Classifier) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let base = dir.join(SAVED_BASE);
    atomic_file::replace_file(&base, |temp| {
        std::fs::copy(base_weights, temp)
            .with_context(|| format!("cannot copy {}", base_weights.display()))?;
        Ok(())
    })?;
    let mut c = classifier.clone();
    c.base_weights = PathBuf::from(SAVED_BASE);
    c.write(&dir.join(SAVED_CLASSIFIER))?;
    write_labels(&dir.join(SAVED_LABELS), &c.labels)
}
