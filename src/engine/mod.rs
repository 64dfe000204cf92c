//! The engine: the network of a weight file (Inception V3 or MobileNet V2)
//! for one input size on one device, with its weights uploaded and a plan of
//! dispatches per batch size in use, turning decoded images into bottleneck
//! vectors (batching.rs). Which kernel variants run, and which sibling convs
//! merge, is tuning.rs.

mod batching;
mod tuning;

pub use batching::preprocess_params;

use crate::gpu::kernels::{Dispatch, Kernels};
use crate::gpu::scheduler::{GpuWeights, Plan};
use crate::gpu::slots::assign_slots;
use crate::gpu::timer::GpuTimer;
use crate::gpu::tuning::Tuning;
use crate::gpu::Gpu;
use crate::model::graph::Graph;
use crate::model::graph::{INPUT, OUTPUT};
use crate::model::weights::{ModelInfo, WeightFile};
use crate::model::Architecture;
use anyhow::{bail, Result};

/// Activation memory one batch may use; batches are split to stay under it.
const ACTIVATION_BUDGET: u64 = 1 << 30;
const MAX_BATCH: u32 = 64;
/// Plans kept at once by default (each holds a batch's activation memory).
const PLANS: usize = 2;

/// Which groups of sibling 1×1 convs run merged into one GEMM (model/merge.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merging {
    /// Those the tuning measured faster merged on this device.
    AsTuned,
    All,
    None,
}

pub struct Engine {
    pub gpu: Gpu,
    pub info: ModelInfo,
    kernels: Kernels,
    tuning: Tuning,
    /// The network as built, one op per conv.
    network: Graph,
    /// What runs: the network with the chosen sibling convs merged.
    graph: Graph,
    merging: Merging,
    weights: GpuWeights,
    /// Plans by batch size and outputs, the most recently used last.
    plans: Vec<Plan>,
    /// How many plans are kept (PLANS unless a server asks for more).
    plan_capacity: usize,
    plans_built: usize,
    /// Decoded pixels of the batch being run (grown when a batch needs more).
    pixels: Option<wgpu::Buffer>,
    max_batch: u32,
}

impl Engine {
    /// Builds the network for `input` (height, width; default: the weights' own
    /// size), checks the weight file against it and uploads the weights.
    pub fn new(gpu: Gpu, file: &WeightFile, input: Option<(u32, u32)>) -> Result<Self> {
        let (h, w) = input.unwrap_or((file.info.input_height, file.info.input_width));
        let mut network = Architecture::from_name(&file.info.architecture)?.build(h, w)?;
        if file.info.pytorch_padding {
            network.pad_as_pytorch();
        }
        // Uploading checks every tensor's presence and shape against the graph.
        let weights = GpuWeights::upload(&gpu, file, &network)?;
        let kernels = Kernels::new(&gpu, file.half_weights());
        let tuning = Tuning::load(&gpu);
        let mut engine = Engine {
            gpu,
            info: file.info.clone(),
            kernels,
            tuning,
            graph: network.clone(),
            network,
            merging: Merging::AsTuned,
            weights,
            plans: Vec::new(),
            plan_capacity: PLANS,
            plans_built: 0,
            pixels: None,
            max_batch: 0,
        };
        engine.set_merging(Merging::AsTuned)?;
        Ok(engine)
    }

    /// The kernel variant each conv runs with, by tuning shape.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    pub fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// The network as built (one op per conv), at this engine's input size.
    pub fn network(&self) -> &Graph {
        &self.network
    }

    /// The network this engine runs.
    pub fn architecture(&self) -> Architecture {
        Architecture::from_name(&self.info.architecture).expect("checked when the engine was built")
    }

    pub fn input_size(&self) -> (u32, u32) {
        let s = self.graph.shape(self.graph.named(INPUT).expect("input"));
        (s.height, s.width)
    }

    /// Most images one submission can hold on this device at this input size.
    pub fn max_batch(&self) -> u32 {
        self.max_batch
    }

    pub fn bottleneck_size(&self) -> usize {
        self.graph
            .shape(self.graph.named(OUTPUT).expect("output"))
            .channels as usize
    }

    /// Makes the plan for `batch` images reading back `outputs` the current
    /// one (`current_plan`): kept from an earlier batch of that size, or built.
    /// Plans are kept per batch size — a run alternates between a few (full
    /// batches and a remainder) — up to the plan capacity, the least recently
    /// used dropped.
    fn plan(&mut self, batch: u32, outputs: &[&str]) -> Result<()> {
        match (self.plans.iter()).position(|p| p.batch == batch && p.outputs == outputs) {
            Some(i) => {
                let plan = self.plans.remove(i);
                self.plans.push(plan);
            }
            None => {
                if self.plans.len() >= self.plan_capacity {
                    self.plans.remove(0); // free its memory before allocating the new one
                }
                let plan = Plan::new(
                    &self.gpu,
                    &self.kernels,
                    &self.graph,
                    &self.weights,
                    &self.tuning,
                    batch,
                    outputs,
                )?;
                self.plans.push(plan);
                self.plans_built += 1;
            }
        }
        Ok(())
    }

    /// The plan `plan` last made current.
    fn current_plan(&self) -> &Plan {
        self.plans.last().expect("a plan was made current")
    }

    /// Keeps up to `plans` plans (at least one): a server that runs a few
    /// batch sizes in turn builds each once.
    pub fn keep_plans(&mut self, plans: usize) {
        self.plan_capacity = plans.max(1);
    }

    /// Frees what the engine keeps between runs — the plans' activations, the
    /// decoded pixels' buffer and the scratch textures — while other work
    /// needs the memory; the next run makes them again.
    pub fn release_memory(&mut self) {
        self.plans.clear();
        self.pixels = None;
        self.kernels.release_scratch_textures();
    }

    /// How many plans this engine has built (each allocates every activation
    /// buffer and bind group of a batch size).
    pub fn plans_built(&self) -> usize {
        self.plans_built
    }

    /// GPU time of each dispatch of a forward pass at `batch`, as (what it
    /// computes, floating-point operations, seconds), from timestamp queries;
    /// None without them.
    pub fn profile(&mut self, batch: u32) -> Result<Option<Vec<(String, f64, f64)>>> {
        self.plan(batch, &[OUTPUT])?;
        let plan = self.current_plan();
        let ops: Vec<(&(String, f64), &Dispatch)> = plan.dispatches().collect();
        let Some(timer) = GpuTimer::new(&self.gpu, ops.len() as u32) else {
            return Ok(None);
        };
        let groups: Vec<[&Dispatch; 1]> = ops.iter().map(|(_, d)| [*d]).collect();
        let slices: Vec<&[&Dispatch]> = groups.iter().map(|g| g.as_slice()).collect();
        let times = timer.time(&self.gpu, &slices)?;
        Ok(Some(
            ops.iter()
                .zip(times)
                .map(|(((label, flops), _), t)| (label.clone(), *flops, t))
                .collect(),
        ))
    }

    /// Runs already-normalised input tensors (NHWC f32, `batch` images) and
    /// returns the named tensors (e.g. "stem", "mixed5", "bottleneck").
    pub fn run_tensors(
        &mut self,
        input: &[f32],
        batch: u32,
        outputs: &[&str],
    ) -> Result<Vec<Vec<f32>>> {
        let (h, w) = self.input_size();
        if input.len() != (batch * h * w * 3) as usize {
            bail!(
                "input holds {} values, expected {batch}×{h}×{w}×3",
                input.len()
            );
        }
        if batch > self.max_batch {
            bail!(
                "batch {batch} exceeds this device's maximum of {}",
                self.max_batch
            );
        }
        self.plan(batch, outputs)?;
        let plan = self.current_plan();
        self.gpu
            .queue
            .write_buffer(plan.input(), 0, bytemuck::cast_slice(input));
        plan.run(&self.gpu, &[])
    }
}

/// Largest batch whose biggest tensor fits one storage binding, whose convs fit
/// the dispatch grid, and whose activations (with the scratch textures they
/// are copied into on CPU adapters) fit the memory budget.
fn max_batch(gpu: &Gpu, kernels: &Kernels, graph: &Graph) -> Result<u32> {
    let largest = graph
        .shapes
        .iter()
        .map(|s| s.elements() * 4)
        .max()
        .unwrap_or(4);
    let rows = graph
        .shapes
        .iter()
        .map(|s| s.height as u64 * s.width as u64)
        .max()
        .unwrap_or(1);
    let (_, slot_sizes) = assign_slots(graph, 1, &[]);
    let per_image = slot_sizes.iter().sum::<u64>() + kernels.scratch_bytes_per_image(largest);
    let batch = (gpu.max_binding_bytes() / largest)
        .min(kernels.max_conv_rows() / rows)
        .min(ACTIVATION_BUDGET / per_image)
        .min(MAX_BATCH as u64);
    if batch == 0 {
        bail!("the input size is too large for this device: one image's activations do not fit");
    }
    Ok(batch as u32)
}
