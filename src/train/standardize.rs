//! Feature standardisation (shaders/standardize.wgsl): the training rows'
//! per-dimension mean and standard deviation, computed on the GPU and applied
//! in place to every bottleneck; and the fold that moves it into an exported
//! head, so that `classify` works on raw bottlenecks.

use crate::gpu::params::StandardizeParams;
use crate::gpu::{kernels, shader, Gpu};
use crate::head::GpuHeads;
use anyhow::Result;
use bytemuck::Zeroable;

/// x' = (x − mean) · inv_std, per dimension.
#[derive(Clone, Debug)]
pub struct Standardization {
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
}

/// A dimension whose deviation is below this share of its mean is constant
/// up to rounding.
const CONSTANT: f64 = 1e-6;

/// standardize.wgsl's workgroup size (both entry points).
const GROUP: u32 = 64;

impl Standardization {
    /// From per-dimension means and variances. A dimension that is constant on
    /// the training rows carries no information there; it is ignored
    /// (inv_std 0), so that other values on new images cannot blow up.
    pub fn from_moments(mean: Vec<f32>, variance: &[f32]) -> Self {
        let inv_std = mean
            .iter()
            .zip(variance)
            .map(|(&m, &v)| {
                let std = (v as f64).sqrt();
                if std == 0.0 || std < CONSTANT * (m as f64).abs() {
                    0.0
                } else {
                    (1.0 / std) as f32
                }
            })
            .collect();
        Standardization { mean, inv_std }
    }

    /// No standardisation of `dim` features: mean 0, inv_std 1.
    pub fn identity(dim: usize) -> Self {
        Standardization {
            mean: vec![0.0; dim],
            inv_std: vec![1.0; dim],
        }
    }

    /// A head for standardised features ([dim, classes] weights, [classes]
    /// biases) turned into the same head for raw features:
    /// W'[k, c] = W[k, c]·inv_std[k], b'[c] = b[c] − Σ_k mean[k]·inv_std[k]·W[k, c].
    pub fn fold(&self, weights: &[f32], biases: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let classes = biases.len();
        let mut folded = weights.to_vec();
        let mut shift: Vec<f64> = biases.iter().map(|&b| b as f64).collect();
        for (k, row) in folded.chunks_mut(classes).enumerate() {
            let s = self.inv_std[k];
            for (c, w) in row.iter_mut().enumerate() {
                *w *= s;
                shift[c] -= self.mean[k] as f64 * *w as f64;
            }
        }
        (folded, shift.iter().map(|&b| b as f32).collect())
    }
}

/// A head as the sweep trains it: weights [dim, classes] and biases [classes]
/// on features standardised by `standardization`.
pub struct StandardizedHead {
    pub weights: Vec<f32>,
    pub biases: Vec<f32>,
    pub standardization: Standardization,
}

/// The kernels and statistics that standardise the heads' bottlenecks in place.
pub struct Standardizer {
    pub standardization: Standardization,
    params: wgpu::Buffer,
    group: wgpu::BindGroup,
    apply: wgpu::ComputePipeline,
    selected: u32,
    dim: u32,
}

impl Standardizer {
    /// Takes the statistics of feature rows `rows` and standardises every row with them.
    pub fn fit(gpu: &Gpu, heads: &GpuHeads, rows: &[u32]) -> Result<Self> {
        let dim = heads.dim;
        let read_write = wgpu::BufferBindingType::Storage { read_only: false };
        let kinds = [
            wgpu::BufferBindingType::Uniform,
            wgpu::BufferBindingType::Storage { read_only: true },
            read_write,
            read_write,
        ];
        let layout = gpu.buffer_layout("standardize", &kinds);
        let [moments, apply] = gpu.pipelines(
            "standardize",
            shader::STANDARDIZE,
            &layout,
            ["moments", "standardize"],
        );
        let params = gpu.uniform_buffer("standardize params", &StandardizeParams::zeroed());
        let selected = gpu.storage_buffer_with("standardize rows", bytemuck::cast_slice(rows));
        let stats = gpu.storage_buffer("feature statistics", 2 * dim as u64 * 4);
        let group = gpu.bind_buffers(
            "standardize",
            &layout,
            &[&params, &selected, &heads.features, &stats],
        );
        let mut s = Standardizer {
            standardization: Standardization {
                mean: Vec::new(),
                inv_std: Vec::new(),
            },
            params,
            group,
            apply,
            selected: rows.len() as u32,
            dim,
        };
        s.dispatch(gpu, &moments, 0, 0, [dim.div_ceil(GROUP), 1, 1]);
        let m: Vec<f32> =
            bytemuck::pod_collect_to_vec(&gpu.read_buffer(&stats, 2 * dim as u64 * 4)?);
        s.standardization =
            Standardization::from_moments(m[..dim as usize].to_vec(), &m[dim as usize..]);
        gpu.queue.write_buffer(
            &stats,
            dim as u64 * 4,
            bytemuck::cast_slice(&s.standardization.inv_std),
        );
        s.apply(gpu, 0, heads.rows);
        Ok(s)
    }

    /// Standardises feature rows [first_row, first_row + rows) (written after `fit`).
    pub fn apply(&self, gpu: &Gpu, first_row: u32, rows: u32) {
        let max_groups = gpu.limits.max_compute_workgroups_per_dimension;
        let grid = kernels::grid(rows as u64 * self.dim as u64, GROUP, max_groups);
        self.dispatch(gpu, &self.apply, first_row, rows, grid);
    }

    fn dispatch(
        &self,
        gpu: &Gpu,
        pipeline: &wgpu::ComputePipeline,
        first_row: u32,
        rows: u32,
        groups: [u32; 3],
    ) {
        let params = StandardizeParams {
            selected: self.selected,
            first_row,
            rows,
            dim: self.dim,
        };
        gpu.queue
            .write_buffer(&self.params, 0, bytemuck::bytes_of(&params));
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &self.group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        gpu.queue.submit([encoder.finish()]);
    }
}
