//! One training or evaluation pass of the trainable blocks at one batch size:
//! a buffer per tensor they touch (all are read again by the backward pass),
//! the gradients planned into shared slots by their lifetimes (gpu::slots),
//! and the dispatches — forward from the cut's activations (the engine's
//! conv and pool kernels), the classifier, then every op's gradient in
//! reverse order, which adds into the parameters' gradients (summed over
//! micro-batches until the update).

use super::blocks::needs_gradient;
use super::network::{TrainableNetwork, HEAD_BIASES, HEAD_WEIGHTS};
use crate::gpu::backward::{input_grad_conv, ClassifierBuffers};
use crate::gpu::kernels::{record_all, Dispatch};
use crate::gpu::lowering::{
    activation_grad_params, conv_params, global_pool_params, pool_kind, pool_params,
};
use crate::gpu::params::ClassifierTrainParams;
use crate::gpu::slots::{share_slots, Life};
use crate::gpu::Gpu;
use crate::model::graph::{Graph, Op, TensorId};
use anyhow::Result;

pub struct StepPlan {
    pub batch: u32,
    activations: Vec<Option<wgpu::Buffer>>,
    /// The gradient slots.
    gradients: Vec<wgpu::Buffer>,
    cut: TensorId,
    labels: wgpu::Buffer,
    probabilities: wgpu::Buffer,
    losses: wgpu::Buffer,
    forward: Vec<Dispatch>,
    classify: Dispatch,
    /// The classifier's pass without dropout, and the uniform its kernels read.
    head_params: ClassifierTrainParams,
    head_uniform: wgpu::Buffer,
    /// The backward pass's dispatches, step by step (GradientPlan's steps).
    backward: Vec<Vec<Labelled>>,
    /// Per backward step: the gradient slots cleared before it (slot, bytes).
    clears: Vec<Vec<(usize, u64)>>,
    staging: wgpu::Buffer,
}

/// Where the backward pass keeps each tensor's gradient (of those that need
/// one: blocks::needs_gradient). Step 0 is the
/// classifier's backward, step 1 + k that of the k-th op from the end. A
/// gradient begins at the step of its last reader (whose backward first adds
/// into it) and ends at the step of its first writer (whose backward last
/// reads it); gradients whose lives do not overlap share a slot, cleared
/// when a gradient begins in it.
struct GradientPlan {
    /// Per tensor, whether its gradient is needed (blocks::needs_gradient).
    needed: Vec<bool>,
    slot_of: Vec<Option<usize>>,
    sizes: Vec<u64>,
    /// Per step, the slots of the gradients that begin there and their bytes.
    clears: Vec<Vec<(usize, u64)>>,
}

impl GradientPlan {
    fn new(graph: &Graph, batch: u32) -> Self {
        let n = graph.ops.len();
        let step_of = |i: usize| n - i;
        let needed = needs_gradient(graph);
        let mut span = vec![None::<(usize, usize)>; graph.shapes.len()];
        let features = graph.ops[n - 1].output();
        span[features.0] = Some((0, 0));
        for (i, op) in graph.ops.iter().enumerate().rev() {
            for t in op.inputs().into_iter().filter(|t| needed[t.0]) {
                let s = span[t.0].get_or_insert((step_of(i), step_of(i)));
                s.0 = s.0.min(step_of(i));
            }
            if let Some(s) = &mut span[op.output().0] {
                s.1 = s.1.max(step_of(i));
            }
        }
        let tensors: Vec<TensorId> = (0..span.len())
            .map(TensorId)
            .filter(|t| span[t.0].is_some())
            .collect();
        let lives: Vec<Life> = (tensors.iter())
            .map(|t| {
                let (first, last) = span[t.0].expect("a gradient");
                let bytes = graph.shape(*t).elements() * batch as u64 * 4;
                Life { first, last, bytes }
            })
            .collect();
        let (slots, sizes) = share_slots(&lives);
        let mut slot_of = vec![None; graph.shapes.len()];
        let mut clears = vec![Vec::new(); n + 1];
        for ((t, slot), life) in tensors.into_iter().zip(slots).zip(&lives) {
            slot_of[t.0] = Some(slot);
            clears[life.first].push((slot, life.bytes));
        }
        GradientPlan {
            needed,
            slot_of,
            sizes,
            clears,
        }
    }
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

/// What a pass does: evaluate, or train with dropout of the classifier's
/// input at `dropout` (a probability), its mask drawn from `seed`.
#[derive(Clone, Copy, Debug)]
pub enum Pass {
    Evaluate,
    Train { dropout: f32, seed: u32 },
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
        let plan = GradientPlan::new(graph, batch);
        let gradients: Vec<wgpu::Buffer> = (plan.sizes.iter())
            .map(|&bytes| gpu.storage_buffer("gradient slot", bytes))
            .collect();
        let act = |t: TensorId| activations[t.0].as_ref().expect("touched tensor");
        let grad = |t: TensorId| &gradients[plan.slot_of[t.0].expect("a gradient")];
        let classes = net.classes as u64;
        let labels = gpu.storage_buffer("labels", batch as u64 * 4);
        let probabilities = gpu.storage_buffer("probabilities", batch as u64 * classes * 4);
        let losses = gpu.storage_buffer("losses", batch as u64 * 4);
        let features = graph.ops.last().expect("ops").output();
        let head_params =
            ClassifierTrainParams::new(batch, graph.shape(features).channels, net.classes, scale);
        let head_uniform = gpu.uniform_buffer("classifier params", &head_params);
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
            standardize: &net.standardize,
        };
        let [classify, weight_grads, feature_grads] =
            net.backward
                .classifier(gpu, (&head_params, &head_uniform), &buffers);
        let forward = graph
            .ops
            .iter()
            .map(|op| forward_dispatch(gpu, net, op, batch, &act))
            .collect();
        let mut backward = vec![vec![
            labelled("classifier", 0.0, weight_grads),
            labelled("classifier", 0.0, feature_grads),
        ]];
        for op in graph.ops.iter().rev() {
            backward.push(backward_dispatches(
                gpu,
                net,
                op,
                batch,
                &plan.needed,
                &act,
                &grad,
            ));
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
            head_params,
            head_uniform,
            backward,
            clears: plan.clears,
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

    /// Runs the loaded batch forward and, when training, backward (adding into
    /// the parameters' gradients); returns the probabilities and losses (with
    /// the training pass's dropout).
    pub fn run(&self, gpu: &Gpu, pass: Pass) -> Result<PassResult> {
        let head = match pass {
            Pass::Evaluate => self.head_params,
            Pass::Train { dropout, seed } => self.head_params.with_dropout(dropout, seed),
        };
        gpu.queue
            .write_buffer(&self.head_uniform, 0, bytemuck::bytes_of(&head));
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        record_all(
            &mut encoder,
            self.forward.iter().chain([&self.classify]),
            None,
        );
        if matches!(pass, Pass::Train { .. }) {
            self.record_backward(&mut encoder);
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

    /// Records the backward pass: a compute pass from each step that clears
    /// gradient slots (clearing cannot happen inside one) to the next.
    fn record_backward(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut step = 0;
        while step < self.backward.len() {
            for &(slot, bytes) in &self.clears[step] {
                encoder.clear_buffer(&self.gradients[slot], 0, Some(bytes));
            }
            let first = step;
            step += 1;
            while step < self.backward.len() && self.clears[step].is_empty() {
                step += 1;
            }
            let dispatches = self.backward[first..step].iter().flatten();
            record_all(encoder, dispatches.map(|l| &l.dispatch), None);
        }
    }

    /// The backward pass's dispatches in order, each with its family and FLOPs.
    pub fn backward_dispatches(&self) -> Vec<&Labelled> {
        self.backward.iter().flatten().collect()
    }

    /// Bytes of activations and gradients per image of a plan for `net`.
    pub fn bytes_per_image(net: &TrainableNetwork) -> u64 {
        let graph = &net.blocks.graph;
        let mut tensors: Vec<TensorId> = graph.ops.iter().flat_map(|op| op.inputs()).collect();
        tensors.extend(graph.ops.iter().map(|op| op.output()));
        tensors.sort();
        tensors.dedup();
        let activations: u64 = tensors.iter().map(|&t| graph.shape(t).elements() * 4).sum();
        activations + GradientPlan::new(graph, 1).sizes.iter().sum::<u64>()
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
/// parameters' gradients, and into its input's gradient where it is `needed`.
fn backward_dispatches<'a>(
    gpu: &Gpu,
    net: &TrainableNetwork,
    op: &Op,
    batch: u32,
    needed: &[bool],
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
            if needed[input.0] {
                let w = (&weights.values, &weights.transposed);
                // Stride-1 convs' input gradients run on the forward conv kernels.
                let forward =
                    input_grad_conv(&p).map(|g| (&net.kernels, net.tuning.variant(gpu, &g)));
                let [t, x] = k.conv_input_grad(gpu, &p, grad(output), w, grad(input), forward);
                d.push(labelled("weight transpose", 0.0, t));
                d.push(labelled("conv input gradient", 2.0 * macs, x));
            }
            d
        }
        Op::Pool(pool) => {
            let p = pool_params(graph, pool, batch);
            let (input, output) = (pool.input.tensor, pool.output.tensor);
            if !needed[input.0] {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fine_tune::blocks::TrainableBlocks;
    use crate::model::inception_v3::inception_v3;

    #[test]
    fn gradients_share_slots_and_no_two_live_ones_share() {
        let network = inception_v3(299, 299).unwrap();
        for from in (0..=10).map(|i| format!("mixed{i}")) {
            let graph = TrainableBlocks::new(&network, &from).unwrap().graph;
            let plan = GradientPlan::new(&graph, 2);
            assert_eq!(plan.needed, needs_gradient(&graph));
            for (t, slot) in plan.slot_of.iter().enumerate() {
                assert_eq!(slot.is_some(), plan.needed[t], "{from}: tensor {t}");
            }
            let bytes = |t: usize| graph.shapes[t].elements() * 2 * 4;
            let with: Vec<usize> = (0..graph.shapes.len())
                .filter(|&t| plan.slot_of[t].is_some())
                .collect();
            let apart: u64 = with.iter().map(|&t| bytes(t)).sum();
            let shared: u64 = plan.sizes.iter().sum();
            // Sharing saves more the more blocks train (mixed0: ~83%); mixed10
            // alone, whose branches' gradients live together, saves ~13%.
            let bound = if from == "mixed10" { 0.9 } else { 0.8 };
            let share = shared as f64 / apart as f64;
            assert!(share < bound, "{from}: {shared} of {apart} bytes");
            // A gradient's life, from GradientPlan's definition.
            let n = graph.ops.len();
            let life = |t: usize| {
                let steps = graph.ops.iter().enumerate().filter_map(|(i, op)| {
                    let reads = op.inputs().contains(&TensorId(t));
                    let writes = op.output() == TensorId(t);
                    (reads || writes).then_some(n - i)
                });
                let (mut first, mut last) = (usize::MAX, 0);
                for s in steps {
                    (first, last) = (first.min(s), last.max(s));
                }
                match graph.ops[n - 1].output() == TensorId(t) {
                    true => (0, last),
                    false => (first, last),
                }
            };
            for &t in &with {
                let slot = plan.slot_of[t].unwrap();
                assert!(plan.sizes[slot] >= bytes(t));
                for &u in with
                    .iter()
                    .filter(|&&u| u > t && plan.slot_of[u] == Some(slot))
                {
                    let (a, b) = (life(t), life(u));
                    assert!(a.1 < b.0 || b.1 < a.0, "{from}: {t} {a:?} and {u} {b:?}");
                }
                assert!(plan.clears[life(t).0].contains(&(slot, bytes(t))));
            }
        }
    }
}
