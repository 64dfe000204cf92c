//! Classifier heads on the GPU (shaders/head.wgsl): H heads with their own
//! learning rate and L2 penalty train side by side on the same batches. Every
//! bottleneck lives on the device; a step uploads only the batch's row
//! indices and a 64-byte parameter block, and nothing but the logged scalars
//! comes back.

use super::optimizer::{HeadSettings, Optimizer, TrainingRule};
use crate::gpu::kernels;
use crate::gpu::params::HeadParams;
use crate::gpu::shader::{self, set_const};
use crate::gpu::Gpu;
use anyhow::{bail, Result};
use bytemuck::Zeroable;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// Buffers for batches of one size.
pub struct Batch {
    pub size: u32,
    params: wgpu::Buffer,
    rows: wgpu::Buffer,
    scores: wgpu::Buffer,
    stats: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
}

/// Per-head results of one evaluation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    pub cross_entropy: f32,
    pub accuracy: f32,
}

/// What a step does besides the forward pass.
enum Pass {
    Train { step: u32, dropout_seed: u32 },
    Evaluate,
    Forward,
}

pub struct GpuHeads {
    pub heads: u32,
    pub classes: u32,
    pub dim: u32,
    pub rows: u32,
    rule: TrainingRule,
    settings: Vec<HeadSettings>,
    active: Vec<bool>,
    pub(crate) features: wgpu::Buffer,
    labels: wgpu::Buffer,
    hyper: wgpu::Buffer,
    head: wgpu::Buffer,
    best: wgpu::Buffer,
    moments: wgpu::Buffer,
    layout: wgpu::BindGroupLayout,
    logits: wgpu::ComputePipeline,
    softmax: wgpu::ComputePipeline,
    update: wgpu::ComputePipeline,
    metrics: wgpu::ComputePipeline,
    /// Batches by size, for evaluations over many rows.
    pub(super) batches: RefCell<HashMap<u32, Rc<Batch>>>,
}

const GROUP: u32 = 64;
/// head.wgsl's ROW_TILE: batch rows per logits invocation, inputs per update invocation.
const ROW_TILE: u64 = 8;

/// head.wgsl's CLASS_TILE for `classes`: classes per invocation, no more than there are.
fn class_tile(classes: u32) -> u64 {
    match classes {
        0..=2 => 2,
        3..=4 => 4,
        _ => 8,
    }
}

/// A grid of 64-wide workgroups covering `n` invocations (head.wgsl's `flat_index`).
fn grid(gpu: &Gpu, n: u64) -> [u32; 3] {
    kernels::grid(n, GROUP, gpu.limits.max_compute_workgroups_per_dimension)
}

impl GpuHeads {
    /// Uploads `features` ([N, dim]), their class `labels`, and one head per
    /// entry of `settings`, starting from `initial` ([heads, dim·classes + classes]:
    /// each head's weights [dim, classes] then biases [classes]).
    pub fn new(
        gpu: &Gpu,
        features: &[f32],
        labels: &[u32],
        (dim, classes): (u32, u32),
        initial: &[f32],
        settings: &[HeadSettings],
        rule: TrainingRule,
    ) -> Result<Self> {
        let heads = settings.len() as u32;
        let per_head = (dim * classes + classes) as u64;
        assert_eq!(initial.len() as u64, heads as u64 * per_head);
        assert_eq!(features.len(), labels.len() * dim as usize);
        let limit = gpu.max_binding_bytes();
        let bytes = features.len() as u64 * 4;
        if bytes > limit {
            bail!(
                "{} bottlenecks ({} MiB) exceed what this device can bind at once ({} MiB)",
                labels.len(),
                bytes >> 20,
                limit >> 20
            );
        }
        if heads as usize > Self::max_heads(gpu, (dim, classes)) {
            bail!(
                "{heads} heads of {classes} classes need {} MiB of optimiser state, more than this device can bind ({} MiB): sweep fewer learning rates or L2 values",
                (2 * heads as u64 * per_head * 4) >> 20,
                limit >> 20
            );
        }
        let read_only = wgpu::BufferBindingType::Storage { read_only: true };
        let read_write = wgpu::BufferBindingType::Storage { read_only: false };
        let mut kinds = vec![wgpu::BufferBindingType::Uniform];
        kinds.extend([read_only; 4]);
        kinds.extend([read_write; 4]);
        let layout = gpu.buffer_layout("head", &kinds);
        let source = set_const(shader::HEAD, "CLASS_TILE", class_tile(classes) as u32);
        let [logits, softmax, update, metrics] = gpu.pipelines(
            "head",
            &source,
            &layout,
            ["logits", "softmax_xent", "update", "metrics_of_batch"],
        );
        // wgpu zero-initialises buffers: the moments start at 0 (SGD keeps none).
        let moment_bytes = rule.optimizer.moments() as u64 * heads as u64 * per_head * 4;
        let built = GpuHeads {
            heads,
            classes,
            dim,
            rows: labels.len() as u32,
            rule,
            settings: settings.to_vec(),
            active: vec![true; heads as usize],
            features: gpu.storage_buffer_with("bottlenecks", bytemuck::cast_slice(features)),
            labels: gpu.storage_buffer_with("labels", bytemuck::cast_slice(labels)),
            hyper: gpu.storage_buffer("head settings", heads as u64 * 16),
            head: gpu.storage_buffer_with("heads", bytemuck::cast_slice(initial)),
            best: gpu.storage_buffer_with("best heads", bytemuck::cast_slice(initial)),
            moments: gpu.storage_buffer("optimiser moments", moment_bytes),
            logits,
            softmax,
            update,
            metrics,
            layout,
            batches: RefCell::default(),
        };
        built.write_settings(gpu);
        Ok(built)
    }

    /// How many heads of this shape the device can train side by side: the
    /// optimiser's moments (2 per parameter) must fit one binding.
    pub fn max_heads(gpu: &Gpu, (dim, classes): (u32, u32)) -> usize {
        let per_head = (dim * classes + classes) as u64;
        (gpu.max_binding_bytes() / (2 * per_head * 4)) as usize
    }

    /// A single fixed head for inference on `features` ([N, dim]).
    pub fn fixed(
        gpu: &Gpu,
        features: &[f32],
        (dim, classes): (u32, u32),
        params: &[f32],
    ) -> Result<Self> {
        let rows = features.len() / dim as usize;
        let settings = HeadSettings {
            learning_rate: 0.0,
            l2: 0.0,
        };
        let rule = TrainingRule::retrain_py(0);
        Self::new(
            gpu,
            features,
            &vec![0; rows],
            (dim, classes),
            params,
            &[settings],
            rule,
        )
    }

    fn write_settings(&self, gpu: &Gpu) {
        let hyper: Vec<[f32; 4]> = self
            .settings
            .iter()
            .zip(&self.active)
            .map(|(s, &on)| [s.learning_rate, s.l2, on as u8 as f32, 0.0])
            .collect();
        gpu.queue
            .write_buffer(&self.hyper, 0, bytemuck::cast_slice(&hyper));
    }

    fn per_head(&self) -> u64 {
        (self.dim * self.classes + self.classes) as u64
    }

    /// Adds `spare` feature rows after the existing ones, for batches computed
    /// during training (distorted images). Call before making batches.
    pub fn add_spare_rows(&mut self, gpu: &Gpu, spare: u32) -> Result<()> {
        let old_rows = self.rows as u64;
        let rows = old_rows + spare as u64;
        let bytes = rows * self.dim as u64 * 4;
        if bytes > gpu.max_binding_bytes() {
            bail!(
                "{rows} bottlenecks ({} MiB) exceed what this device can bind at once ({} MiB)",
                bytes >> 20,
                gpu.max_binding_bytes() >> 20
            );
        }
        let features = gpu.storage_buffer("bottlenecks", bytes);
        let labels = gpu.storage_buffer("labels", rows * 4);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&self.features, 0, &features, 0, self.features.size());
        encoder.copy_buffer_to_buffer(&self.labels, 0, &labels, 0, old_rows * 4);
        gpu.queue.submit([encoder.finish()]);
        (self.features, self.labels, self.rows) = (features, labels, rows as u32);
        self.batches.borrow_mut().clear();
        Ok(())
    }

    /// Overwrites feature rows from `first_row` on with `features` ([n, dim]) and their `labels`.
    pub fn write_rows(&self, gpu: &Gpu, first_row: u32, features: &[f32], labels: &[u32]) {
        assert_eq!(features.len(), labels.len() * self.dim as usize);
        assert!(first_row as usize + labels.len() <= self.rows as usize);
        let offset = first_row as u64 * self.dim as u64 * 4;
        gpu.queue
            .write_buffer(&self.features, offset, bytemuck::cast_slice(features));
        gpu.queue.write_buffer(
            &self.labels,
            first_row as u64 * 4,
            bytemuck::cast_slice(labels),
        );
    }

    /// Stops (false) or resumes (true) updates of each head.
    pub fn set_active(&mut self, gpu: &Gpu, active: &[bool]) {
        self.active = active.to_vec();
        self.write_settings(gpu);
    }

    /// Buffers for batches of `size` rows.
    pub fn batch(&self, gpu: &Gpu, size: u32) -> Batch {
        let (h, b, c) = (self.heads as u64, size as u64, self.classes as u64);
        let params = gpu.uniform_buffer("head params", &HeadParams::zeroed());
        let rows = gpu.storage_buffer("batch rows", b * 4);
        // Outputs start as NaN, so anything a kernel fails to write shows.
        let nan = |label: &str, n: u64| {
            gpu.storage_buffer_with(label, bytemuck::cast_slice(&vec![f32::NAN; n as usize]))
        };
        let scores = nan("scores", 2 * h * b * c);
        let stats = nan("stats", 3 * h * b + 2 * h);
        let buffers = [
            &params,
            &self.features,
            &rows,
            &self.labels,
            &self.hyper,
            &self.head,
            &self.moments,
            &scores,
            &stats,
        ];
        let bind_group = gpu.bind_buffers("head batch", &self.layout, &buffers);
        Batch {
            size,
            params,
            rows,
            scores,
            stats,
            bind_group,
        }
    }

    fn params(&self, batch: &Batch, pass: &Pass) -> HeadParams {
        let (beta1, beta2, epsilon) = match self.rule.optimizer {
            Optimizer::Sgd => (0.0, 0.0, 0.0),
            Optimizer::Momentum { momentum } => (momentum, 0.0, 0.0),
            Optimizer::Adam {
                beta1,
                beta2,
                epsilon,
            } => (beta1, beta2, epsilon),
        };
        let (training, step, dropout_seed) = match *pass {
            Pass::Train { step, dropout_seed } => (1, step, dropout_seed),
            _ => (0, 0, 0),
        };
        let (adam_c1, adam_c2) = self.rule.adam_corrections(step);
        HeadParams {
            batch: batch.size,
            classes: self.classes,
            dim: self.dim,
            heads: self.heads,
            optimizer: self.rule.optimizer.code(),
            training,
            dropout_seed,
            _pad: 0,
            dropout: self.rule.dropout,
            label_smoothing: self.rule.label_smoothing,
            beta1,
            beta2,
            epsilon,
            lr_scale: self.rule.lr_scale(step),
            adam_c1,
            adam_c2,
        }
    }

    /// Records logits + softmax for `batch`, then the pass's own stage, and submits.
    fn run(&self, gpu: &Gpu, batch: &Batch, rows: &[u32], pass: Pass) {
        assert_eq!(rows.len(), batch.size as usize, "batch rows");
        let params = self.params(batch, &pass);
        gpu.queue
            .write_buffer(&batch.params, 0, bytemuck::bytes_of(&params));
        gpu.queue
            .write_buffer(&batch.rows, 0, bytemuck::cast_slice(rows));
        let (h, b, c) = (self.heads as u64, batch.size as u64, self.classes as u64);
        let class_tiles = c.div_ceil(class_tile(self.classes));
        let mut stages = vec![
            (
                &self.logits,
                grid(gpu, h * b.div_ceil(ROW_TILE) * class_tiles),
            ),
            (&self.softmax, grid(gpu, h * b)),
        ];
        let parameter_tiles = (self.dim as u64 + 1).div_ceil(ROW_TILE) * class_tiles;
        match pass {
            Pass::Train { .. } => stages.push((&self.update, grid(gpu, h * parameter_tiles))),
            Pass::Evaluate => stages.push((&self.metrics, [self.heads, 1, 1])),
            Pass::Forward => {}
        }
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_bind_group(0, &batch.bind_group, &[]);
            for (pipeline, groups) in stages {
                pass.set_pipeline(pipeline);
                pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
            }
        }
        gpu.queue.submit([encoder.finish()]);
    }

    /// One training step (0-based `step`) of every active head on the given
    /// feature rows; `dropout_seed` picks the step's dropout mask. Nothing is read back.
    pub fn train_step(&self, gpu: &Gpu, batch: &Batch, rows: &[u32], step: u32, dropout_seed: u32) {
        let pass = Pass::Train { step, dropout_seed };
        self.run(gpu, batch, rows, pass);
    }

    /// Each head's mean cross-entropy and accuracy on the given rows (no dropout or smoothing).
    pub fn evaluate(&self, gpu: &Gpu, batch: &Batch, rows: &[u32]) -> Result<Vec<Metrics>> {
        self.run(gpu, batch, rows, Pass::Evaluate);
        let h = self.heads as u64;
        let offset = 3 * h * batch.size as u64;
        // Only the per-head means come back, not the per-row statistics before them.
        let stats: Vec<f32> =
            bytemuck::pod_collect_to_vec(&gpu.read_range(&batch.stats, offset * 4, 2 * h * 4)?);
        Ok(stats
            .chunks(2)
            .map(|m| Metrics {
                cross_entropy: m[0],
                accuracy: m[1],
            })
            .collect())
    }

    /// Predicted class of each row by head `head`.
    pub fn predict(&self, gpu: &Gpu, batch: &Batch, rows: &[u32], head: u32) -> Result<Vec<u32>> {
        self.run(gpu, batch, rows, Pass::Forward);
        let b = batch.size as u64;
        let stats: Vec<f32> = bytemuck::pod_collect_to_vec(&gpu.read_range(
            &batch.stats,
            3 * head as u64 * b * 4,
            3 * b * 4,
        )?);
        Ok(stats.chunks(3).map(|s| s[2] as u32).collect())
    }

    /// Logits [heads, rows, classes] of the given rows.
    pub fn logits(&self, gpu: &Gpu, batch: &Batch, rows: &[u32]) -> Result<Vec<f32>> {
        self.run(gpu, batch, rows, Pass::Forward);
        let n = self.heads as u64 * batch.size as u64 * self.classes as u64;
        Ok(bytemuck::pod_collect_to_vec(
            &gpu.read_buffer(&batch.scores, n * 4)?,
        ))
    }

    /// Remembers the current parameters of head `head` as its best so far.
    pub fn keep_best(&self, gpu: &Gpu, head: u32) {
        let bytes = self.per_head() * 4;
        let offset = head as u64 * bytes;
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&self.head, offset, &self.best, offset, bytes);
        gpu.queue.submit([encoder.finish()]);
    }

    /// Puts every head's best parameters back in place of its current ones.
    pub fn restore_best(&self, gpu: &Gpu) {
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&self.best, 0, &self.head, 0, self.head.size());
        gpu.queue.submit([encoder.finish()]);
    }

    /// Head `head`'s current parameters: weights [dim, classes] then biases [classes].
    pub fn parameters(&self, gpu: &Gpu, head: u32) -> Result<Vec<f32>> {
        let bytes = self.per_head() * 4;
        Ok(bytemuck::pod_collect_to_vec(&gpu.read_range(
            &self.head,
            head as u64 * bytes,
            bytes,
        )?))
    }
}
