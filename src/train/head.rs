//! The classifier head on the GPU (shaders/head.wgsl): every bottleneck lives
//! on the device; a step uploads only the batch's row indices, and nothing but
//! the logged scalars comes back.

use crate::gpu::Gpu;
use anyhow::{bail, Result};
use bytemuck::{Pod, Zeroable};

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct HeadParams {
    batch: u32,
    classes: u32,
    dim: u32,
    _unused: u32,
    learning_rate: f32,
    _pad: [f32; 3],
}

/// Buffers for batches of one size: its indices, scores and metrics.
pub struct Batch {
    pub size: u32,
    rows: wgpu::Buffer,
    scores: wgpu::Buffer,
    row_stats: wgpu::Buffer,
    metrics: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
}

pub struct GpuHead {
    pub classes: u32,
    pub dim: u32,
    learning_rate: f32,
    features: wgpu::Buffer,
    labels: wgpu::Buffer,
    head: wgpu::Buffer,
    layout: wgpu::BindGroupLayout,
    logits: wgpu::ComputePipeline,
    softmax: wgpu::ComputePipeline,
    sgd: wgpu::ComputePipeline,
    metrics: wgpu::ComputePipeline,
}

fn layout_entry(binding: u32, ty: wgpu::BufferBindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

const GROUP: u32 = 64;

impl GpuHead {
    /// Uploads `features` ([N, dim]), their class `labels` and the initial
    /// head parameters (weights [dim, classes] then biases [classes]).
    pub fn new(
        gpu: &Gpu,
        features: &[f32],
        labels: &[u32],
        dim: u32,
        classes: u32,
        initial: &[f32],
        learning_rate: f32,
    ) -> Result<Self> {
        let bytes = features.len() as u64 * 4;
        if bytes > gpu.max_binding_bytes() {
            bail!(
                "{} bottlenecks ({} MiB) exceed what this device can bind at once ({} MiB)",
                labels.len(),
                bytes >> 20,
                gpu.max_binding_bytes() >> 20
            );
        }
        assert_eq!(initial.len(), (dim * classes + classes) as usize);
        let read_only = wgpu::BufferBindingType::Storage { read_only: true };
        let read_write = wgpu::BufferBindingType::Storage { read_only: false };
        let mut entries = vec![layout_entry(0, wgpu::BufferBindingType::Uniform)];
        entries.extend((1..=3).map(|b| layout_entry(b, read_only)));
        entries.extend((4..=7).map(|b| layout_entry(b, read_write)));
        let layout = gpu
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("head"),
                entries: &entries,
            });
        let pipeline_layout = gpu
            .device
            .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some("head"),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            });
        let module = gpu
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("head"),
                source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/head.wgsl").into()),
            });
        let pipeline = |entry: &str| {
            gpu.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(entry),
                    layout: Some(&pipeline_layout),
                    module: &module,
                    entry_point: Some(entry),
                    compilation_options: Default::default(),
                    cache: None,
                })
        };
        Ok(GpuHead {
            classes,
            dim,
            learning_rate,
            features: gpu.storage_buffer_with("bottlenecks", bytemuck::cast_slice(features)),
            labels: gpu.storage_buffer_with("labels", bytemuck::cast_slice(labels)),
            head: gpu.storage_buffer_with("head", bytemuck::cast_slice(initial)),
            logits: pipeline("logits"),
            softmax: pipeline("softmax_xent"),
            sgd: pipeline("sgd"),
            metrics: pipeline("metrics_of_batch"),
            layout,
        })
    }

    /// Buffers for batches of `size` rows.
    pub fn batch(&self, gpu: &Gpu, size: u32) -> Batch {
        let params = gpu.uniform_buffer(
            "head params",
            &HeadParams {
                batch: size,
                classes: self.classes,
                dim: self.dim,
                _unused: 0,
                learning_rate: self.learning_rate,
                _pad: [0.0; 3],
            },
        );
        let rows = gpu.storage_buffer("batch rows", size as u64 * 4);
        // Outputs start as NaN, so anything a kernel fails to write shows.
        let nan = |label: &str, n: u64| {
            gpu.storage_buffer_with(label, bytemuck::cast_slice(&vec![f32::NAN; n as usize]))
        };
        let scores = nan("scores", 2 * size as u64 * self.classes as u64);
        let row_stats = nan("row stats", 3 * size as u64);
        let metrics = nan("metrics", 2);
        let buffers = [
            &params,
            &self.features,
            &rows,
            &self.labels,
            &self.head,
            &scores,
            &row_stats,
            &metrics,
        ];
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("head batch"),
            layout: &self.layout,
            entries: &entries,
        });
        Batch {
            size,
            rows,
            scores,
            row_stats,
            metrics,
            bind_group,
        }
    }

    /// Records logits + softmax for `batch` (and more passes given by `then`) and submits.
    fn run(
        &self,
        gpu: &Gpu,
        batch: &Batch,
        rows: &[u32],
        then: &[(&wgpu::ComputePipeline, [u32; 3])],
    ) {
        assert_eq!(rows.len(), batch.size as usize, "batch rows");
        gpu.queue
            .write_buffer(&batch.rows, 0, bytemuck::cast_slice(rows));
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_bind_group(0, &batch.bind_group, &[]);
            let stages = [
                (
                    &self.logits,
                    [(batch.size * self.classes).div_ceil(GROUP), 1, 1],
                ),
                (&self.softmax, [batch.size.div_ceil(GROUP), 1, 1]),
            ];
            for (pipeline, groups) in stages.iter().chain(then) {
                pass.set_pipeline(pipeline);
                pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
            }
        }
        gpu.queue.submit([encoder.finish()]);
    }

    fn sgd_grid(&self, gpu: &Gpu) -> [u32; 3] {
        let groups = (self.dim * self.classes + self.classes).div_ceil(GROUP);
        let x = groups.min(gpu.limits.max_compute_workgroups_per_dimension);
        [x, groups.div_ceil(x), 1]
    }

    /// One SGD step on the given feature rows; nothing is read back.
    pub fn train_step(&self, gpu: &Gpu, batch: &Batch, rows: &[u32]) {
        self.run(gpu, batch, rows, &[(&self.sgd, self.sgd_grid(gpu))]);
    }

    /// (mean cross-entropy, accuracy) of the current head on the given rows.
    pub fn evaluate(&self, gpu: &Gpu, batch: &Batch, rows: &[u32]) -> Result<(f32, f32)> {
        self.run(gpu, batch, rows, &[(&self.metrics, [1, 1, 1])]);
        let m: Vec<f32> = bytemuck::pod_collect_to_vec(&gpu.read_buffer(&batch.metrics, 8)?);
        Ok((m[0], m[1]))
    }

    /// Predicted class of each row.
    pub fn predict(&self, gpu: &Gpu, batch: &Batch, rows: &[u32]) -> Result<Vec<u32>> {
        self.run(gpu, batch, rows, &[]);
        let stats: Vec<f32> = bytemuck::pod_collect_to_vec(
            &gpu.read_buffer(&batch.row_stats, batch.size as u64 * 12)?,
        );
        Ok(stats.chunks(3).map(|s| s[2] as u32).collect())
    }

    /// Logits [rows, classes] of the given rows.
    pub fn logits(&self, gpu: &Gpu, batch: &Batch, rows: &[u32]) -> Result<Vec<f32>> {
        self.run(gpu, batch, rows, &[]);
        let n = batch.size as u64 * self.classes as u64;
        Ok(bytemuck::pod_collect_to_vec(
            &gpu.read_buffer(&batch.scores, n * 4)?,
        ))
    }

    /// The head's parameters: weights [dim, classes] then biases [classes].
    pub fn parameters(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let n = (self.dim * self.classes + self.classes) as u64;
        Ok(bytemuck::pod_collect_to_vec(
            &gpu.read_buffer(&self.head, n * 4)?,
        ))
    }
}
