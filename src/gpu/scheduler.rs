//! The scheduler: turns a graph into a static plan for one batch size — buffer
//! slots shared by tensors whose lifetimes do not overlap, one bind group and
//! grid size per op — so that running a batch is one submission, no allocation.

use super::context::Gpu;
use super::kernels::{record_all, Dispatch, Kernels};
use super::lowering::{conv_params, depthwise_params, global_pool_params, pool_kind, pool_params};
use super::slots::assign_slots;
use super::tuning::{shape_key, Tuning};
use crate::model::graph::{Conv, Graph, Op, TensorId};
use crate::model::weights::WeightFile;
use anyhow::{Context, Result};
use std::collections::HashMap;

/// The folded weights and bias of each conv, uploaded once from the mapped
/// file, and of each merged conv, assembled on the GPU from its parts'. Keyed
/// by the names of the convs an op computes (one, or a merged conv's parts).
pub struct GpuWeights {
    buffers: HashMap<Vec<String>, (wgpu::Buffer, wgpu::Buffer)>,
    /// Bytes per stored weight: 4 (f32) or 2 (f16); biases are always f32.
    weight_bytes: u64,
}

impl GpuWeights {
    /// Checks the file against `graph` (every layer's tensors, and no other)
    /// and uploads each layer's weights and bias.
    pub fn upload(gpu: &Gpu, file: &WeightFile, graph: &Graph) -> Result<Self> {
        file.check(graph)?;
        let buffers = graph
            .weighted_layers()
            .map(|layer| {
                let w = file.tensor_bytes(&layer.weight_name(), &layer.weight_shape)?;
                let b = file.tensor_bytes(&layer.bias_name(), &[layer.outputs])?;
                let buffers = (
                    gpu.storage_buffer_with(&layer.weight_name(), w),
                    gpu.storage_buffer_with(&layer.bias_name(), b),
                );
                Ok((vec![layer.name.to_string()], buffers))
            })
            .collect::<Result<_>>()?;
        let weight_bytes = if file.half_weights() { 2 } else { 4 };
        Ok(GpuWeights {
            buffers,
            weight_bytes,
        })
    }

    /// Assembles the weights of every merged conv of `graph` not yet assembled.
    /// The parts' own buffers are kept (another plan may run them unmerged).
    pub fn assemble_merged(&mut self, gpu: &Gpu, graph: &Graph) {
        for op in &graph.ops {
            if let Op::MergedConv(m) = op {
                let units = op.weight_units();
                if !self.buffers.contains_key(&units) {
                    let merged = self.concatenate(gpu, &m.parts);
                    self.buffers.insert(units, merged);
                }
            }
        }
    }

    /// One weight buffer [in_c, Σ out_c] and one bias buffer from 1×1 convs'
    /// [in_c, out_c] weights, side by side along the output channels: one
    /// copy per part and input channel.
    fn concatenate(&self, gpu: &Gpu, parts: &[Conv]) -> (wgpu::Buffer, wgpu::Buffer) {
        let in_c = parts[0].input.channels as u64;
        let total: u64 = parts.iter().map(|c| c.output.channels as u64).sum();
        let weights = gpu.storage_buffer("merged weights", in_c * total * self.weight_bytes);
        let bias = gpu.storage_buffer("merged bias", total * 4);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let mut offset = 0;
        for part in parts {
            let (w, b) = &self.buffers[&vec![part.name.clone()]];
            let out_c = part.output.channels as u64;
            let row = out_c * self.weight_bytes;
            for r in 0..in_c {
                let to = (r * total + offset) * self.weight_bytes;
                encoder.copy_buffer_to_buffer(w, r * row, &weights, to, row);
            }
            encoder.copy_buffer_to_buffer(b, 0, &bias, offset * 4, out_c * 4);
            offset += out_c;
        }
        gpu.queue.submit([encoder.finish()]);
        (weights, bias)
    }

    /// The weights and bias of the layers `units` (one, or a merged conv's
    /// parts); None for an op without weights.
    fn of(&self, units: &[String]) -> Option<(&wgpu::Buffer, &wgpu::Buffer)> {
        let (w, b) = self.buffers.get(units)?;
        Some((w, b))
    }
}

/// A tensor copied back to the CPU after each run.
struct Readback {
    slot: usize,
    offset: u64,
    bytes: u64,
}

/// The static plan for one graph at one batch size.
pub struct Plan {
    pub batch: u32,
    pub outputs: Vec<String>,
    slots: Vec<wgpu::Buffer>,
    input_slot: usize,
    dispatches: Vec<Dispatch>,
    labels: Vec<(String, f64)>,
    readbacks: Vec<Readback>,
    staging: wgpu::Buffer,
}

impl Plan {
    /// Plans `graph` for `batch` images, reading back the named `outputs`.
    pub fn new(
        gpu: &Gpu,
        kernels: &Kernels,
        graph: &Graph,
        weights: &GpuWeights,
        tuning: &Tuning,
        batch: u32,
        outputs: &[&str],
    ) -> Result<Self> {
        let keep = outputs
            .iter()
            .map(|n| {
                graph
                    .named(n)
                    .with_context(|| format!("the network has no tensor named {n}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let (slot_of, sizes) = assign_slots(graph, batch, &keep);
        let slots: Vec<wgpu::Buffer> = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| gpu.storage_buffer(&format!("activation slot {i}"), s))
            .collect();
        let buffer = |t: TensorId| &slots[slot_of[t.0]];
        let labels = graph.ops.iter().map(|op| label(graph, op, batch)).collect();
        let dispatches = graph
            .ops
            .iter()
            .map(|op| {
                let weights = weights.of(&op.weight_units());
                dispatch(gpu, kernels, tuning, graph, op, batch, &buffer, weights)
            })
            .collect();
        let mut offset = 0;
        let readbacks = keep
            .iter()
            .map(|&t| {
                let bytes = graph.shape(t).elements() * batch as u64 * 4;
                let r = Readback {
                    slot: slot_of[t.0],
                    offset,
                    bytes,
                };
                offset += bytes;
                r
            })
            .collect();
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("plan readback"),
            size: offset.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let input = graph.ops.first().map(Op::input).context("empty graph")?;
        Ok(Plan {
            batch,
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            input_slot: slot_of[input.0],
            slots,
            dispatches,
            labels,
            readbacks,
            staging,
        })
    }

    /// The buffer holding the network input, NHWC f32 [batch, h, w, 3].
    pub fn input(&self) -> &wgpu::Buffer {
        &self.slots[self.input_slot]
    }

    /// Total bytes of activation memory this plan holds.
    pub fn activation_bytes(&self) -> u64 {
        self.slots.iter().map(|b| b.size()).sum()
    }

    /// The network's dispatches, in order, each with what it computes
    /// ("conv 3x3s1_64to96_map2048", "max pool", ...) and its floating-point
    /// operations (convs only; 0 for the rest), for profiling.
    pub fn dispatches(&self) -> impl Iterator<Item = (&(String, f64), &Dispatch)> {
        self.labels.iter().zip(&self.dispatches)
    }

    /// Runs `before` (e.g. preprocessing into the input) and then the network,
    /// in one submission; returns each requested output.
    pub fn run(&self, gpu: &Gpu, before: &[Dispatch]) -> Result<Vec<Vec<f32>>> {
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        record_all(&mut encoder, before.iter().chain(&self.dispatches), None);
        for r in &self.readbacks {
            encoder.copy_buffer_to_buffer(&self.slots[r.slot], 0, &self.staging, r.offset, r.bytes);
        }
        gpu.queue.submit([encoder.finish()]);
        let bytes = gpu.map_and_read(&self.staging)?;
        Ok(self
            .readbacks
            .iter()
            .map(|r| {
                bytemuck::pod_collect_to_vec(
                    &bytes[r.offset as usize..(r.offset + r.bytes) as usize],
                )
            })
            .collect())
    }
}

/// What an op computes, for profiles, and its floating-point operations.
fn label(graph: &Graph, op: &Op, batch: u32) -> (String, f64) {
    match op {
        Op::Conv(_) | Op::MergedConv(_) => {
            let p = conv_params(graph, &op.as_conv().expect("conv"), batch);
            let macs = p.m as f64 * p.out_c as f64 * (p.kernel_h * p.kernel_w * p.in_c) as f64;
            (format!("conv {}", shape_key(&p)), 2.0 * macs)
        }
        Op::Depthwise(d) => {
            let p = depthwise_params(graph, d, batch);
            let outputs = p.batch as f64 * p.out_h as f64 * p.out_w as f64 * p.channels as f64;
            let label = format!(
                "depthwise {}x{}s{}_{}",
                p.kernel_h, p.kernel_w, p.stride_h, p.channels
            );
            (label, 2.0 * outputs * (p.kernel_h * p.kernel_w) as f64)
        }
        Op::Pool(p) => (format!("{:?} pool", p.kind).to_lowercase(), 0.0),
        Op::GlobalAvgPool { .. } => ("global average pool".into(), 0.0),
    }
}

/// The dispatch of `op` at `batch`, its tensors in `buffer`'s slots and its
/// weights (when it has any) in `weights`.
#[allow(clippy::too_many_arguments)]
fn dispatch<'a>(
    gpu: &Gpu,
    kernels: &Kernels,
    tuning: &Tuning,
    graph: &Graph,
    op: &Op,
    batch: u32,
    buffer: &dyn Fn(TensorId) -> &'a wgpu::Buffer,
    weights: Option<(&wgpu::Buffer, &wgpu::Buffer)>,
) -> Dispatch {
    match op {
        Op::Conv(_) | Op::MergedConv(_) => {
            let c: Conv = op.as_conv().expect("conv");
            let p = conv_params(graph, &c, batch);
            let residual = c.residual.map(|r| buffer(r.tensor));
            let weights = weights.expect("conv weights");
            let (input, output) = (buffer(c.input.tensor), buffer(c.output.tensor));
            kernels.conv2d(
                gpu,
                &p,
                tuning.variant(gpu, &p),
                input,
                weights,
                output,
                residual,
            )
        }
        Op::Depthwise(d) => {
            let p = depthwise_params(graph, d, batch);
            let weights = weights.expect("depthwise weights");
            let group = tuning.depthwise_group(&p);
            let (input, output) = (buffer(d.input.tensor), buffer(d.output.tensor));
            kernels.depthwise(gpu, &p, group, input, weights, output)
        }
        Op::Pool(p) => {
            let params = pool_params(graph, p, batch);
            kernels.pool(
                gpu,
                pool_kind(p.kind),
                &params,
                buffer(p.input.tensor),
                buffer(p.output.tensor),
            )
        }
        Op::GlobalAvgPool { input, output } => {
            let p = global_pool_params(graph, *input, batch);
            kernels.global_avg_pool(gpu, &p, buffer(*input), buffer(*output))
        }
    }
}
