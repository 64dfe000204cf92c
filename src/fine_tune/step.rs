//! One training or evaluation pass of the trainable blocks at one batch size:
//! a buffer per tensor they touch and per gradient, and the dispatches —
//! forward from the cut's activations (the engine's conv and pool kernels),
//! the classifier, then every op's gradient in reverse order, which adds into
//! the parameters' gradients (summed over micro-batches until the update).

use super::network::{TrainableNetwork, HEAD_BIASES, HEAD_WEIGHTS};
use crate::gpu::backward::ClassifierBuffers;
use crate::gpu::kernels::Dispatch;
use crate::gpu::lowering::{
    activation_grad_params, conv_params, global_pool_params, pool_kind, pool_params,
};
use crate::gpu::params::ClassifierTrainParams;
use crate::gpu::Gpu;
use crate::model::graph::{Op, TensorId};
use anyhow::Result;

pub struct StepPlan {
    pub batch: u32,
    activations: Vec<Option<wgpu::Buffer>>,
    gradients: Vec<Option<wgpu::Buffer>>,
    cut: TensorId,
    labels: wgpu::Buffer,
    probabilities: wgpu::Buffer,
    losses: wgpu::Buffer,
    forward: Vec<Dispatch>,
    classify: Dispatch,
    backward: Vec<Labelled>,
    staging: wgpu::Buffer,
}

/// A backward dispatch with its kernel family and floating-point operations
/// (for benchmarks).
pub struct Labelled {
    pub family: &'static str,
    pub flops: f64,
    pub dispatch: Dispatch,
}

fn labelled(family: &'static str, flops: f64, dispatch: Dispatch) -> Labelled {
    Labelled {
        family,
        flops,
        dispatch,
    }
}

/// What one pass gives back: each image's class probabilities and cross-entropy.
pub struct PassResult {
    pub probabilities: Vec<f32>,
    pub losses: Vec<f32>,
}

impl StepPlan {
    /// The pass for `batch` images, whose classifier gradients are scaled by
    /// `scale` (1 / the images of the whole optimiser step).
    pub fn new(gpu: &Gpu, net: &TrainableNetwork, batch: u32, scale: f32) -> Self {
        let graph = &net.blocks.graph;
        let cut = graph.ops[0].input();
        let bytes = |t: TensorId| graph.shape(t).elements() * batch as u64 * 4;
        let touched = |t: TensorId| {
            graph
                .ops
                .iter()
                .any(|op| op.output() == t || op.input() == t)
        };
        let activations: Vec<Option<wgpu::Buffer>> = (0..graph.shapes.len())
            .map(|t| {
                touched(TensorId(t)).then(|| gpu.storage_buffer("activation", bytes(TensorId(t))))
            })
            .collect();
        let gradients: Vec<Option<wgpu::Buffer>> = (0..graph.shapes.len())
            .map(|t| {
                let t = TensorId(t);
                (touched(t) && t != cut).then(|| gpu.storage_buffer("gradient", bytes(t)))
            })
            .collect();
        let act = |t: TensorId| activations[t.0].as_ref().expect("touched tensor");
        let grad = |t: TensorId| gradients[t.0].as_ref().expect("touched tensor");
        let classes = net.classes as u64;
        let labels = gpu.storage_buffer("labels", batch as u64 * 4);
        let probabilities = gpu.storage_buffer("probabilities", batch as u64 * classes * 4);
        let losses = gpu.storage_buffer("losses", batch as u64 * 4);
        let features = graph.ops.last().expect("ops").output();
        let p = ClassifierTrainParams {
            rows: batch,
            dim: graph.shape(features).channels,
            classes: net.classes,
            scale,
        };
        let head = |name| &net.parameter(name).values;
        let head_grad = |name| &net.parameter(name).gradients;
        let buffers = ClassifierBuffers {
            features: act(features),
            weights: head(HEAD_WEIGHTS),
            biases: head(HEAD_BIASES),
            labels: &labels,
            probabilities: &probabilities,
            losses: &losses,
            grad_weights: head_grad(HEAD_WEIGHTS),
            grad_biases: head_grad(HEAD_BIASES),
            grad_features: grad(features),
        };
        let [classify, weight_grads, feature_grads] = net.backward.classifier(gpu, &p, &buffers);
        let forward = graph
            .ops
            .iter()
            .map(|op| forward_dispatch(gpu, net, op, batch, &act))
            .collect();
        let mut backward = vec![
            labelled("classifier", 0.0, weight_grads),
            labelled("classifier", 0.0, feature_grads),
        ];
        for op in graph.ops.iter().rev() {
            backward.extend(backward_dispatches(gpu, net, op, batch, cut, &act, &grad));
        }
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("fine-tuning readback"),
            size: batch as u64 * (classes + 1) * 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        StepPlan {
            batch,
            activations,
            gradients,
            cut,
            labels,
            probabilities,
            losses,
            forward,
            classify,
            backward,
            staging,
        }
    }

    /// Writes the batch: the cut's activations ([batch, cut size]) and the labels.
    pub fn load(&self, gpu: &Gpu, cut: &[f32], labels: &[u32]) {
        let input = self.activations[self.cut.0].as_ref().expect("the cut");
        gpu.queue.write_buffer(input, 0, bytemuck::cast_slice(cut));
        gpu.queue
            .write_buffer(&self.labels, 0, bytemuck::cast_slice(labels));
    }

    /// Runs the loaded batch forward and, when `train`, backward (adding into
    /// the parameters' gradients); returns the probabilities and losses.
    pub fn run(&self, gpu: &Gpu, train: bool) -> Result<PassResult> {
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        if train {
            for g in self.gradients.iter().flatten() {
                encoder.clear_buffer(g, 0, None);
            }
        }
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            let backward = if train { &self.backward[..] } else { &[] };
            let backward = backward.iter().map(|l| &l.dispatch);
            for d in self.forward.iter().chain([&self.classify]).chain(backward) {
                d.record(&mut pass);
            }
        }
        let probability_bytes = self.probabilities.size();
        encoder.copy_buffer_to_buffer(&self.probabilities, 0, &self.staging, 0, probability_bytes);
        encoder.copy_buffer_to_buffer(
            &self.losses,
            0,
            &self.staging,
            probability_bytes,
            self.losses.size(),
        );
        gpu.queue.submit([encoder.finish()]);
        let bytes = gpu.map_and_read(&self.staging)?;
        let (probabilities, losses) = bytes.split_at(probability_bytes as usize);
        Ok(PassResult {
            probabilities: bytemuck::pod_collect_to_vec(probabilities),
            losses: bytemuck::pod_collect_to_vec(losses),
        })
    }

    /// The backward pass's dispatches in order, each with its family and FLOPs.
    pub fn backward_dispatches(&self) -> &[Labelled] {
        &self.backward
    }

    /// Bytes of activations and gradients per image of a plan for `net`.
    pub fn bytes_per_image(net: &TrainableNetwork) -> u64 {
        let graph = &net.blocks.graph;
        let cut = graph.ops[0].input();
        let mut tensors: Vec<TensorId> = graph.ops.iter().map(|op| op.output()).collect();
        tensors.sort();
        tensors.dedup();
        let outputs: u64 = tensors.iter().map(|&t| graph.shape(t).elements() * 8).sum();
        outputs + graph.shape(cut).elements() * 4
    }

    /// Bytes per image of the largest tensor a plan for `net` binds.
    pub fn largest_tensor_bytes(net: &TrainableNetwork) -> u64 {
        let graph = &net.blocks.graph;
        let tensors = graph.ops.iter().flat_map(|op| [op.input(), op.output()]);
        tensors
            .map(|t| graph.shape(t).elements() * 4)
            .max()
            .unwrap_or(4)
    }
}

/// The op's forward dispatch with the trainable parameters.
fn forward_dispatch<'a>(
    gpu: &Gpu,
    net: &TrainableNetwork,
    op: &Op,
    batch: u32,
    act: &dyn Fn(TensorId) -> &'a wgpu::Buffer,
) -> Dispatch {
    let graph = &net.blocks.graph;
    match op {
        Op::Conv(c) => {
            let p = conv_params(graph, c, batch);
            let weights = &net.parameter(&c.weight_name()).values;
            let bias = &net.parameter(&c.bias_name()).values;
            let variant = net.tuning.variant(gpu, &p);
            let (input, output) = (act(c.input.tensor), act(c.output.tensor));
            net.kernels
                .conv2d(gpu, &p, variant, input, (weights, bias), output, None)
        }
        Op::Pool(pool) => {
            let p = pool_params(graph, pool, batch);
            let (input, output) = (act(pool.input.tensor), act(pool.output.tensor));
            net.kernels
                .pool(gpu, pool_kind(pool.kind), &p, input, output)
        }
        Op::GlobalAvgPool { input, output } => {
            let p = global_pool_params(graph, *input, batch);
            net.kernels
                .global_avg_pool(gpu, &p, act(*input), act(*output))
        }
        Op::MergedConv(_) | Op::Depthwise(_) => unreachable!("TrainableBlocks refuses these"),
    }
}

/// The op's gradient dispatches: through its activation, into its
/// parameters' gradients, and into its input's gradient (none for the cut).
fn backward_dispatches<'a>(
    gpu: &Gpu,
    net: &TrainableNetwork,
    op: &Op,
    batch: u32,
    cut: TensorId,
    act: &dyn Fn(TensorId) -> &'a wgpu::Buffer,
    grad: &dyn Fn(TensorId) -> &'a wgpu::Buffer,
) -> Vec<Labelled> {
    let graph = &net.blocks.graph;
    let k = &net.backward;
    match op {
        Op::Conv(c) => {
            let p = conv_params(graph, c, batch);
            let (input, output) = (c.input.tensor, c.output.tensor);
            let mask = activation_grad_params(graph, c, batch);
            let weights = net.parameter(&c.weight_name());
            let bias = net.parameter(&c.bias_name());
            let macs = p.m as f64 * p.out_c as f64 * (p.kernel_h * p.kernel_w * p.in_c) as f64;
            let mask_dispatch = k.activation_grad(gpu, &mask, act(output), grad(output));
            let mut d = vec![labelled("activation", 0.0, mask_dispatch)];
            let gradients = (&weights.gradients, &bias.gradients);
            let [w, b] = k.conv_parameter_grads(gpu, &p, act(input), grad(output), gradients);
            d.push(labelled("conv weight gradient", 2.0 * macs, w));
            d.push(labelled("conv bias gradient", 0.0, b));
            if input != cut {
                let w = (&weights.values, &weights.transposed);
                let [t, x] = k.conv_input_grad(gpu, &p, grad(output), w, grad(input));
                d.push(labelled("weight transpose", 0.0, t));
                d.push(labelled("conv input gradient", 2.0 * macs, x));
            }
            d
        }
        Op::Pool(pool) => {
            let p = pool_params(graph, pool, batch);
            let (input, output) = (pool.input.tensor, pool.output.tensor);
            if input == cut {
                return vec![];
            }
            let kind = pool_kind(pool.kind);
            let d = k.pool_grad(gpu, kind, &p, act(input), grad(output), grad(input));
            vec![labelled("pool", 0.0, d)]
        }
        Op::GlobalAvgPool { input, output } => {
            let p = global_pool_params(graph, *input, batch);
            let d = k.global_avg_pool_grad(gpu, &p, grad(*output), grad(*input));
            vec![labelled("global pool", 0.0, d)]
        }
        Op::MergedConv(_) | Op::Depthwise(_) => unreachable!("TrainableBlocks refuses these"),
    }
}
