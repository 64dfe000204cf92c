//! The engine: Inception V3 for one input size on one device, with its
//! weights uploaded, turning decoded images into bottleneck vectors.

use crate::data::distortion::Distortion;
use crate::gpu::kernels::{ConvParams, Dispatch, Kernels};
use crate::gpu::scheduler::{assign_slots, conv_params, GpuWeights, Plan};
use crate::gpu::timer::GpuTimer;
use crate::gpu::tuning::{merge_key, shape_key, Tuning};
use crate::gpu::Gpu;
use crate::model::graph::{Graph, Op};
use crate::model::inception_v3::{self, INPUT, OUTPUT};
use crate::model::merge::{merge, sibling_groups, SiblingGroup};
use crate::model::weights::{ModelInfo, WeightFile};
use anyhow::{bail, Result};
use image::RgbImage;

/// Activation memory one batch may use; batches are split to stay under it.
const ACTIVATION_BUDGET: u64 = 1 << 30;
const MAX_BATCH: u32 = 64;

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
    plan: Option<Plan>,
    /// Decoded pixels of the batch being run (grown when a batch needs more).
    pixels: Option<wgpu::Buffer>,
    max_batch: u32,
}

impl Engine {
    /// Builds the network for `input` (height, width; default: the weights' own
    /// size), checks the weight file against it and uploads the weights.
    pub fn new(gpu: Gpu, file: &WeightFile, input: Option<(u32, u32)>) -> Result<Self> {
        let (h, w) = input.unwrap_or((file.info.input_height, file.info.input_width));
        let mut network = inception_v3::inception_v3(h, w)?;
        if file.info.average_pool_counts_padding {
            network.count_padding_in_average_pools();
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
            plan: None,
            pixels: None,
            max_batch: 0,
        };
        engine.set_merging(Merging::AsTuned)?;
        Ok(engine)
    }

    /// Chooses which sibling 1×1 convs run merged, and re-plans.
    pub fn set_merging(&mut self, merging: Merging) -> Result<()> {
        let groups: Vec<SiblingGroup> = sibling_groups(&self.network)
            .into_iter()
            .filter(|g| match merging {
                Merging::AsTuned => self.tuning.merges(&self.group_params(g)),
                Merging::All => true,
                Merging::None => false,
            })
            .collect();
        self.graph = merge(&self.network, &groups);
        self.weights.assemble_merged(&self.gpu, &self.graph);
        self.max_batch = max_batch(&self.gpu, &self.kernels, &self.graph)?;
        self.merging = merging;
        self.plan = None;
        Ok(())
    }

    /// The tuner's verdict on each distinct group of sibling 1×1 convs of the
    /// network (by merge key): merged or not; None where not yet measured.
    pub fn merge_decisions(&self) -> Vec<(String, Option<bool>)> {
        let (_, groups) = self.tuning_work();
        groups
            .iter()
            .map(|parts| {
                let key = merge_key(parts);
                let merged = self.tuning.merges.get(&key).copied();
                (key, merged)
            })
            .collect()
    }

    /// How many groups of sibling 1×1 convs the network has.
    pub fn sibling_groups(&self) -> usize {
        sibling_groups(&self.network).len()
    }

    /// How many groups of sibling convs run merged.
    pub fn merged_groups(&self) -> usize {
        self.graph
            .ops
            .iter()
            .filter(|op| matches!(op, Op::MergedConv(_)))
            .count()
    }

    /// The parameters of each conv dispatch of the network as it runs at
    /// `batch` (merged convs as their GEMM), one per tuning shape.
    pub fn distinct_convs(&self, batch: u32) -> Vec<ConvParams> {
        distinct(
            (self.graph.ops.iter())
                .filter_map(|op| op.as_conv())
                .map(|c| conv_params(&self.graph, &c, batch)),
        )
    }

    /// What tuning measures (at batch 1): every conv shape of the network,
    /// and every group of sibling convs that may be merged, by its parts.
    fn tuning_work(&self) -> (Vec<ConvParams>, Vec<Vec<ConvParams>>) {
        let convs = distinct(
            self.network
                .convs()
                .map(|c| conv_params(&self.network, c, 1)),
        );
        let mut seen = std::collections::HashSet::new();
        let groups = sibling_groups(&self.network)
            .iter()
            .map(|g| self.group_params(g))
            .filter(|parts| seen.insert(merge_key(parts)))
            .collect();
        (convs, groups)
    }

    fn group_params(&self, group: &SiblingGroup) -> Vec<ConvParams> {
        group
            .convs(&self.network)
            .into_iter()
            .map(|c| conv_params(&self.network, c, 1))
            .collect()
    }

    /// How many measurements a full tuning makes (conv shapes and groups).
    pub fn tuning_steps(&self) -> usize {
        let (convs, groups) = self.tuning_work();
        convs.len() + groups.len()
    }

    /// Whether every conv has a measured kernel variant for this device, and
    /// every group of sibling convs a measured merge decision.
    pub fn is_tuned(&self) -> bool {
        let (convs, groups) = self.tuning_work();
        self.tuning.covers(&convs, &groups)
    }

    /// Measures the kernel variants on each conv not yet tuned (at batch 1)
    /// and whether merging each group of sibling convs pays, and caches the
    /// results for this device. They apply at once (unless merging was set
    /// otherwise); an error writing the cache is returned after that (the
    /// run can go on).
    pub fn tune(&mut self, progress: &mut dyn FnMut(&str)) -> Result<()> {
        let (convs, groups) = self.tuning_work();
        self.tuning
            .tune(&self.gpu, &self.kernels, &convs, &groups, progress)?;
        self.set_merging(self.merging)?;
        self.tuning.save()
    }

    /// The kernel variant each conv runs with, by tuning shape.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    pub fn kernels(&self) -> &Kernels {
        &self.kernels
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

    fn plan(&mut self, batch: u32, outputs: &[&str]) -> Result<&Plan> {
        let stale = self
            .plan
            .as_ref()
            .is_none_or(|p| p.batch != batch || p.outputs != outputs);
        if stale {
            self.plan = None; // free the old plan's memory before allocating the new one
            self.plan = Some(Plan::new(
                &self.gpu,
                &self.kernels,
                &self.graph,
                &self.weights,
                &self.tuning,
                batch,
                outputs,
            )?);
        }
        Ok(self.plan.as_ref().expect("plan"))
    }

    /// GPU time of each dispatch of a forward pass at `batch`, as (what it
    /// computes, floating-point operations, seconds), from timestamp queries;
    /// None without them.
    pub fn profile(&mut self, batch: u32) -> Result<Option<Vec<(String, f64, f64)>>> {
        self.plan(batch, &[OUTPUT])?;
        let plan = self.plan.as_ref().expect("plan");
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
        let plan = self.plan.as_ref().expect("plan");
        self.gpu
            .queue
            .write_buffer(plan.input(), 0, bytemuck::cast_slice(input));
        plan.run(&self.gpu, &[])
    }

    /// Whether the device can take this decoded image (its pixels must fit one binding).
    pub fn check_image(&self, img: &RgbImage) -> Result<()> {
        if img.as_raw().len() as u64 > self.gpu.max_binding_bytes() {
            bail!(
                "{}×{} pixels is too large for this device",
                img.width(),
                img.height()
            );
        }
        Ok(())
    }

    /// Bottlenecks ([images.len(), 2048] row-major) of decoded RGB images:
    /// resized and normalised on the GPU, run in batches the device can hold.
    pub fn bottlenecks(&mut self, images: &[RgbImage]) -> Result<Vec<f32>> {
        let images: Vec<&RgbImage> = images.iter().collect();
        let none = vec![Distortion::none(self.input_size()); images.len()];
        self.distorted_bottlenecks(&images, &none)
    }

    /// Bottlenecks of decoded RGB images, each distorted as given on its way
    /// into the network (see shaders/preprocess.wgsl).
    pub fn distorted_bottlenecks(
        &mut self,
        images: &[&RgbImage],
        distortions: &[Distortion],
    ) -> Result<Vec<f32>> {
        assert_eq!(images.len(), distortions.len());
        let limit = self.gpu.max_binding_bytes();
        let mut out = Vec::with_capacity(images.len() * self.bottleneck_size());
        let mut start = 0;
        while start < images.len() {
            let mut end = start;
            let mut bytes = 0u64;
            while end < images.len() && end - start < self.max_batch as usize {
                let b = images[end].as_raw().len() as u64;
                if b > limit {
                    bail!(
                        "an image of {}×{} pixels is too large for this device",
                        images[end].width(),
                        images[end].height()
                    );
                }
                if bytes + b > limit {
                    break;
                }
                bytes += b;
                end += 1;
            }
            out.extend(self.run_images(&images[start..end], &distortions[start..end])?);
            start = end;
        }
        Ok(out)
    }

    fn run_images(&mut self, images: &[&RgbImage], distortions: &[Distortion]) -> Result<Vec<f32>> {
        let mut packed = Vec::new();
        let mut offsets = Vec::with_capacity(images.len());
        for img in images {
            offsets.push(packed.len() as u32);
            packed.extend_from_slice(img.as_raw());
        }
        let needed = (packed.len() as u64).next_multiple_of(4).max(4);
        if self.pixels.as_ref().is_none_or(|b| b.size() < needed) {
            self.pixels = Some(self.gpu.storage_buffer("decoded pixels", needed));
        }
        self.plan(images.len() as u32, &[OUTPUT])?;
        let pixels = self.pixels.as_ref().expect("pixels");
        self.gpu.write_padded(pixels, 0, &packed);
        let input = self.input_size();
        let n = &self.info.normalization;
        let plan = self.plan.as_ref().expect("plan");
        let preprocess: Vec<Dispatch> = images
            .iter()
            .zip(distortions)
            .zip(&offsets)
            .enumerate()
            .map(|(slot, ((img, d), &src_offset))| {
                let src = (img.height(), img.width());
                let p = d.params(src, src_offset, slot as u32, input, n);
                self.kernels.preprocess(&self.gpu, &p, pixels, plan.input())
            })
            .collect();
        Ok(plan.run(&self.gpu, &preprocess)?.remove(0))
    }
}

/// Conv parameters without repeated tuning shapes.
fn distinct(convs: impl Iterator<Item = ConvParams>) -> Vec<ConvParams> {
    let mut seen = std::collections::HashSet::new();
    convs.filter(|p| seen.insert(shape_key(p))).collect()
}

/// Largest batch whose biggest tensor fits one storage binding, whose convs fit
/// the dispatch grid, and whose activations fit the memory budget.
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
    let per_image: u64 = slot_sizes.iter().sum();
    let batch = (gpu.max_binding_bytes() / largest)
        .min(kernels.max_conv_rows() / rows)
        .min(ACTIVATION_BUDGET / per_image)
        .min(MAX_BATCH as u64);
    if batch == 0 {
        bail!("the input size is too large for this device: one image's activations do not fit");
    }
    Ok(batch as u32)
}
