//! The training pipelines, compiled once per device, and how each is
//! dispatched: the gradients of the network's ops (conv, activation, pools,
//! global average pool), the kept classifier's forward and backward pass, and
//! the optimiser update. Each gradient kernel adds into its output, so the
//! caller zeroes gradient buffers once per step and sums into them.

use super::context::Gpu;
use super::conv_variant::ConvVariant;
use super::kernels::{
    grid, pipeline, pipeline_with, vec4_aligned, Dispatch, Kernels, PoolKind, POOL_GROUP,
};
use super::params::{
    ActivationGradParams, ClassifierTrainParams, ConvParams, GlobalPoolParams, OptimizerParams,
    PoolParams,
};
use super::shader::{self, set_const, swap_block};
use super::texture_reads::{ScratchTextures, SCRATCH_BYTES_PER_OPERAND_BYTE};
use bytemuck::Pod;
use std::sync::Mutex;

/// conv2d_backward.wgsl's TILE: a vec4's channels. input_grad and weight_grad
/// take twice that per invocation along each channel axis.
const CONV_TILE: u32 = 4;
/// conv2d_backward.wgsl's PIXELS: input_grad's pixels per invocation.
const CONV_PIXELS: u64 = 8;

/// conv2d_backward_subgroup.wgsl's tiles, set in its source: input_grad's
/// pixels per invocation (ROWS), the channel quads a workgroup shares (COLS),
/// weight_grad's input channel quads per invocation (QUADS), and the
/// workgroup size (GROUP, one subgroup of 8). Measured on lavapipe with
/// `cargo bench --bench fine_tune` (BENCHMARKS.md).
const SUBGROUP_ROWS: u32 = 4;
const SUBGROUP_COLS: u32 = 16;
const SUBGROUP_QUADS: u32 = 2;
const SUBGROUP_GROUP: u32 = 8;

/// conv2d_backward.wgsl's operands as vec4s, for channels aligned to 4.
const VEC4_OPERANDS: &str = "
@group(0) @binding(1) var<storage, read> grad_out: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> weights: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> input: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> weights_t: array<vec4<f32>>;
fn grad_at(i: u32) -> f32 {
    return grad_out[i >> 2u][i & 3u];
}
fn grad_quad(base: u32, c0: u32, count: u32) -> vec4<f32> {
    return grad_out[(base + min(c0, count - 4u)) >> 2u];
}
fn input_quad(base: u32, c0: u32, count: u32) -> vec4<f32> {
    return input[(base + min(c0, count - 4u)) >> 2u];
}
fn weights_t_quad(base: u32, c0: u32, count: u32) -> vec4<f32> {
    return weights_t[(base + min(c0, count - 4u)) >> 2u];
}
// One 4×4 block: input channels 4·ci4.. × output channels 4·co4.. of one
// tap, read from the mirrored tap when `flip`.
fn transpose_step(index: u32, flip: bool) {
    let taps = p.kernel_h * p.kernel_w;
    let in_c4 = p.in_c / 4u;
    let out_c4 = p.out_c / 4u;
    if (index >= taps * in_c4 * out_c4) {
        return;
    }
    let ci4 = index % in_c4;
    let co4 = (index / in_c4) % out_c4;
    let tap = index / (in_c4 * out_c4);
    let source = select(tap, taps - 1u - tap, flip);
    let row = (source * p.in_c + 4u * ci4) * out_c4 + co4;
    let r = mat4x4<f32>(weights[row], weights[row + out_c4], weights[row + 2u * out_c4],
                        weights[row + 3u * out_c4]);
    let t = transpose(r);
    let column = (tap * p.out_c + 4u * co4) * in_c4 + ci4;
    for (var k = 0u; k < 4u; k++) {
        weights_t[column + k * in_c4] = t[k];
    }
}
";

/// Whether every channel count, stride and offset of conv `p` is a multiple of 4.
fn conv_aligned(p: &ConvParams) -> bool {
    vec4_aligned(&[
        p.in_c,
        p.in_stride,
        p.in_offset,
        p.out_c,
        p.out_stride,
        p.out_offset,
    ])
}

/// The forward conv whose output, added to what grad_in holds, is the stride-1
/// conv `p`'s input gradient: grad_out convolved with p's kernel mirrored
/// (taps in reverse order, weights [kh, kw, out_c, in_c]) and padded by what
/// the mirroring leaves (kernel − 1 − p's padding) — the "full" correlation.
/// None for strided convs and paddings as wide as the kernel.
pub fn input_grad_conv(p: &ConvParams) -> Option<ConvParams> {
    if p.stride_h != 1 || p.stride_w != 1 {
        return None;
    }
    // A padding as wide as the kernel (no network has one) stays on the own kernels.
    let pad_top = p.kernel_h.checked_sub(1 + p.pad_top)?;
    let pad_left = p.kernel_w.checked_sub(1 + p.pad_left)?;
    Some(ConvParams {
        in_h: p.out_h,
        in_w: p.out_w,
        in_c: p.out_c,
        out_h: p.in_h,
        out_w: p.in_w,
        out_c: p.in_c,
        m: p.batch * p.in_h * p.in_w,
        pad_top,
        pad_left,
        in_stride: p.out_stride,
        in_offset: p.out_offset,
        out_stride: p.in_stride,
        out_offset: p.in_offset,
        activation: 0,
        residual: 2,
        res_stride: 0,
        res_offset: 0,
        ..*p
    })
}

/// The vec4s of conv `p`'s output (or output gradient) tensor, all channels of its slices.
fn output_texels(p: &ConvParams) -> u64 {
    p.m as u64 * p.out_stride as u64 / 4
}

/// conv2d_backward.wgsl's entry points, compiled from one variant of its source.
struct ConvPipelines {
    transpose: wgpu::ComputePipeline,
    transpose_flipped: wgpu::ComputePipeline,
    input: wgpu::ComputePipeline,
    weight: wgpu::ComputePipeline,
    bias: wgpu::ComputePipeline,
}

impl ConvPipelines {
    fn new(gpu: &Gpu, source: &str) -> Self {
        let entry = |name: &str| pipeline(gpu, name, source, name);
        ConvPipelines {
            transpose: entry("transpose_weights"),
            transpose_flipped: entry("transpose_weights_flipped"),
            input: entry("input_grad"),
            weight: entry("weight_grad"),
            bias: entry("bias_grad"),
        }
    }
}

/// conv2d_backward_subgroup.wgsl's input_grad and weight_grad, and the
/// scratch textures their two operands are copied into.
struct SubgroupConvPipelines {
    input: wgpu::ComputePipeline,
    weight: wgpu::ComputePipeline,
    operands: [ScratchTextures; 2],
}

impl SubgroupConvPipelines {
    fn new(gpu: &Gpu) -> Self {
        let source = set_const(shader::CONV2D_BACKWARD_SUBGROUP, "ROWS", SUBGROUP_ROWS);
        let source = set_const(&source, "COLS", SUBGROUP_COLS);
        let source = set_const(&source, "QUADS", SUBGROUP_QUADS);
        let constants = [("GROUP", SUBGROUP_GROUP as f64)];
        let entry = |name: &str| pipeline_with(gpu, name, &source, name, &constants);
        SubgroupConvPipelines {
            input: entry("input_grad"),
            weight: entry("weight_grad"),
            operands: [0, 1].map(|_| ScratchTextures::new(wgpu::TextureFormat::Rgba32Float)),
        }
    }

    /// A launch of `pipeline` over `groups` reading `operands` (binding,
    /// buffer, vec4 count) from the scratch textures and writing `output`
    /// (binding, buffer); None when an operand does not fit in a texture.
    fn launch(
        &self,
        gpu: &Gpu,
        (pipeline, groups): (&wgpu::ComputePipeline, [u32; 3]),
        p: &ConvParams,
        operands: [(u32, &wgpu::Buffer, u64); 2],
        output: (u32, &wgpu::Buffer),
    ) -> Option<Dispatch> {
        let mut textures = Vec::new();
        for ((binding, buffer, texels), scratch) in operands.iter().zip(&self.operands) {
            textures.push((*binding, scratch.copy_of(gpu, buffer, *texels)?));
        }
        let buffers = [output];
        Some(Dispatch::with_textures(
            gpu, pipeline, p, &buffers, textures, groups,
        ))
    }

    /// input_grad's grid: pixel groups × blocks of input channels.
    fn input_grid(p: &ConvParams) -> [u32; 3] {
        let pixels = p.batch * p.in_h * p.in_w;
        [
            pixels.div_ceil(SUBGROUP_ROWS * SUBGROUP_GROUP),
            (p.in_c / 4).div_ceil(SUBGROUP_COLS),
            1,
        ]
    }

    /// weight_grad's grid: input channel groups × output channel blocks × taps.
    fn weight_grid(p: &ConvParams) -> [u32; 3] {
        [
            (p.in_c / 4).div_ceil(SUBGROUP_QUADS * SUBGROUP_GROUP),
            (p.out_c / 4).div_ceil(SUBGROUP_COLS),
            p.kernel_h * p.kernel_w,
        ]
    }
}

pub struct BackwardKernels {
    /// Reading one f32 at a time, and one vec4 (channels, strides and offsets aligned to 4).
    conv_scalar: ConvPipelines,
    conv_vec4: ConvPipelines,
    /// On CPU drivers with subgroups exactly 8 wide (lavapipe), the gradients of aligned
    /// convs share operands through the subgroup and read them from textures
    /// (several times faster there; GPUs keep conv2d_backward.wgsl, the only
    /// one measured on them).
    conv_subgroup: Option<SubgroupConvPipelines>,
    activation: wgpu::ComputePipeline,
    max_pool: wgpu::ComputePipeline,
    avg_pool: wgpu::ComputePipeline,
    avg_pool_counting_padding: wgpu::ComputePipeline,
    global_avg_pool: wgpu::ComputePipeline,
    optimizer: wgpu::ComputePipeline,
    classifier_forward: wgpu::ComputePipeline,
    classifier_weight_grads: wgpu::ComputePipeline,
    classifier_feature_grads: wgpu::ComputePipeline,
    max_groups: u32,
    /// Zeros: the bias of the forward convs that compute input gradients,
    /// shared by all of them and grown to the widest.
    no_bias: Mutex<Option<wgpu::Buffer>>,
}

/// The classifier's buffers, by their role in shaders/classifier_train.wgsl.
pub struct ClassifierBuffers<'a> {
    pub features: &'a wgpu::Buffer,
    pub weights: &'a wgpu::Buffer,
    pub biases: &'a wgpu::Buffer,
    pub labels: &'a wgpu::Buffer,
    pub probabilities: &'a wgpu::Buffer,
    pub losses: &'a wgpu::Buffer,
    pub grad_weights: &'a wgpu::Buffer,
    pub grad_biases: &'a wgpu::Buffer,
    pub grad_features: &'a wgpu::Buffer,
    /// The features' standardisation: f32 [2, dim], mean then inv_std.
    pub standardize: &'a wgpu::Buffer,
}

/// A parameter tensor and its optimiser state, for shaders/optimizer.wgsl.
pub struct OptimizerBuffers<'a> {
    pub parameters: &'a wgpu::Buffer,
    pub gradients: &'a wgpu::Buffer,
    pub first: &'a wgpu::Buffer,
    pub second: &'a wgpu::Buffer,
}

impl BackwardKernels {
    /// The kernels for `gpu`: on a CPU driver with subgroups 8 wide,
    /// conv2d_backward_subgroup.wgsl for aligned convs.
    pub fn new(gpu: &Gpu) -> Self {
        let cpu = gpu.info.device_type == wgpu::DeviceType::Cpu;
        Self::with_subgroup_convs(gpu, cpu)
    }

    /// Bytes of scratch textures a batch's gradients may take per image, when
    /// the largest activation takes `largest` bytes per image: the subgroup
    /// weight gradients copy an activation and an output gradient into their
    /// two operand textures (the transposed weights an input gradient copies
    /// are the same for every batch).
    pub fn scratch_bytes_per_image(&self, largest: u64) -> u64 {
        match self.conv_subgroup {
            Some(_) => 2 * SCRATCH_BYTES_PER_OPERAND_BYTE * largest,
            None => 0,
        }
    }

    /// The kernels for `gpu`, with the subgroup conv gradients when `wanted`
    /// and the device's subgroups are 8 wide (tests run both on one device).
    pub fn with_subgroup_convs(gpu: &Gpu, wanted: bool) -> Self {
        let vec4_source = swap_block(shader::CONV2D_BACKWARD, "OPERANDS", VEC4_OPERANDS);
        let pool = |entry: &str| pipeline(gpu, entry, shader::POOL_BACKWARD, entry);
        let classifier = |entry: &str| pipeline(gpu, entry, shader::CLASSIFIER_TRAIN, entry);
        BackwardKernels {
            conv_scalar: ConvPipelines::new(gpu, shader::CONV2D_BACKWARD),
            conv_vec4: ConvPipelines::new(gpu, &vec4_source),
            conv_subgroup: (wanted && gpu.whole_subgroups_of_8(SUBGROUP_GROUP))
                .then(|| SubgroupConvPipelines::new(gpu)),
            activation: pipeline(
                gpu,
                "activation_backward",
                shader::ACTIVATION_BACKWARD,
                "main",
            ),
            max_pool: pool("max_pool_backward"),
            avg_pool: pool("avg_pool_backward"),
            avg_pool_counting_padding: pool("avg_pool_counting_padding_backward"),
            global_avg_pool: pipeline(
                gpu,
                "global_avg_pool_backward",
                shader::GLOBAL_AVG_POOL_BACKWARD,
                "main",
            ),
            optimizer: pipeline(gpu, "optimizer", shader::OPTIMIZER, "main"),
            classifier_forward: classifier("forward"),
            classifier_weight_grads: classifier("weight_grads"),
            classifier_feature_grads: classifier("feature_grads"),
            max_groups: gpu.limits.max_compute_workgroups_per_dimension,
            no_bias: Mutex::default(),
        }
    }

    /// Whether aligned convs' gradients run conv2d_backward_subgroup.wgsl.
    pub fn has_subgroup_convs(&self) -> bool {
        self.conv_subgroup.is_some()
    }

    /// The conv gradient pipelines for `p`: vec4 reads when its channels,
    /// strides and offsets allow.
    fn conv_pipelines(&self, p: &ConvParams) -> &ConvPipelines {
        match conv_aligned(p) {
            true => &self.conv_vec4,
            false => &self.conv_scalar,
        }
    }

    /// The subgroup gradient pipelines, where the device has them, `p` is
    /// aligned and its grids fit.
    fn subgroup_pipelines(&self, p: &ConvParams) -> Option<&SubgroupConvPipelines> {
        let grids = [
            SubgroupConvPipelines::input_grid(p),
            SubgroupConvPipelines::weight_grid(p),
        ];
        let fits = grids.iter().flatten().all(|&g| g <= self.max_groups);
        self.conv_subgroup
            .as_ref()
            .filter(|_| conv_aligned(p) && fits)
    }

    /// A launch of one invocation per element of `count`, its parameters in a
    /// new uniform buffer.
    fn launch<P: Pod>(
        &self,
        gpu: &Gpu,
        pipeline: &wgpu::ComputePipeline,
        params: &P,
        buffers: &[(u32, &wgpu::Buffer)],
        count: u64,
    ) -> Dispatch {
        let groups = grid(count, POOL_GROUP, self.max_groups);
        let uniform = gpu.uniform_buffer("backward params", params);
        Dispatch::bind(gpu, pipeline, &uniform, buffers, groups)
    }

    /// grad_in += the conv's input gradient from `grad_out` (already through
    /// its activation's derivative): the weights transposed into `weights_t`
    /// (as many values as `weights`), then the gradient. With `forward`, a
    /// stride-1 conv's gradient runs as the forward conv input_grad_conv(p)
    /// on conv2d's kernels (tuned per device) with that variant, its weights
    /// flipped as it needs; otherwise on conv2d_backward's own kernels.
    pub fn conv_input_grad(
        &self,
        gpu: &Gpu,
        p: &ConvParams,
        grad_out: &wgpu::Buffer,
        (weights, weights_t): (&wgpu::Buffer, &wgpu::Buffer),
        grad_in: &wgpu::Buffer,
        forward: Option<(&Kernels, ConvVariant)>,
    ) -> [Dispatch; 2] {
        let weight_count = (p.kernel_h * p.kernel_w * p.in_c * p.out_c) as u64;
        let blocks = match conv_aligned(p) {
            true => weight_count / 16,
            false => weight_count,
        };
        let pipelines = self.conv_pipelines(p);
        let transpose = [(2, weights), (7, weights_t)];
        if let (Some((kernels, variant)), Some(g)) = (forward, input_grad_conv(p)) {
            let flip = &pipelines.transpose_flipped;
            let transpose = self.launch(gpu, flip, p, &transpose, blocks);
            let no_bias = self.no_bias(gpu, p.in_c);
            let weights = (weights_t, &no_bias);
            let gradient = kernels.conv2d(gpu, &g, variant, grad_out, weights, grad_in, None);
            return [transpose, gradient];
        }
        let pixels = p.batch as u64 * p.in_h as u64 * p.in_w as u64;
        let count = pixels.div_ceil(CONV_PIXELS) * p.in_c.div_ceil(2 * CONV_TILE) as u64;
        let buffers = [(1, grad_out), (7, weights_t), (4, grad_in)];
        let transpose = self.launch(gpu, &pipelines.transpose, p, &transpose, blocks);
        let subgroup = self.subgroup_pipelines(p).and_then(|s| {
            let operands = [
                (1, grad_out, output_texels(p)),
                (7, weights_t, weight_count / 4),
            ];
            let kernel = (&s.input, SubgroupConvPipelines::input_grid(p));
            s.launch(gpu, kernel, p, operands, (4, grad_in))
        });
        let gradient =
            subgroup.unwrap_or_else(|| self.launch(gpu, &pipelines.input, p, &buffers, count));
        [transpose, gradient]
    }

    /// A zero bias for `channels` output channels.
    fn no_bias(&self, gpu: &Gpu, channels: u32) -> wgpu::Buffer {
        let bytes = channels.next_multiple_of(4) as u64 * 4;
        let mut zeros = self.no_bias.lock().expect("the zero bias");
        match zeros.as_ref().filter(|b| b.size() >= bytes) {
            Some(b) => b.clone(),
            None => zeros.insert(gpu.storage_buffer("no bias", bytes)).clone(),
        }
    }

    /// grad_weights and grad_bias += the conv's parameter gradients.
    pub fn conv_parameter_grads(
        &self,
        gpu: &Gpu,
        p: &ConvParams,
        input: &wgpu::Buffer,
        grad_out: &wgpu::Buffer,
        (grad_weights, grad_bias): (&wgpu::Buffer, &wgpu::Buffer),
    ) -> [Dispatch; 2] {
        let blocks = (p.in_c.div_ceil(2 * CONV_TILE) * p.out_c.div_ceil(2 * CONV_TILE)) as u64;
        let weights = (p.kernel_h * p.kernel_w) as u64 * blocks;
        let buffers = [(1, grad_out), (3, input), (5, grad_weights)];
        let bias_buffers = [(1, grad_out), (6, grad_bias)];
        let pipelines = self.conv_pipelines(p);
        let subgroup = self.subgroup_pipelines(p).and_then(|s| {
            let input_texels =
                p.batch as u64 * p.in_h as u64 * p.in_w as u64 * p.in_stride as u64 / 4;
            let operands = [(1, grad_out, output_texels(p)), (3, input, input_texels)];
            let kernel = (&s.weight, SubgroupConvPipelines::weight_grid(p));
            s.launch(gpu, kernel, p, operands, (5, grad_weights))
        });
        let weight =
            subgroup.unwrap_or_else(|| self.launch(gpu, &pipelines.weight, p, &buffers, weights));
        [
            weight,
            self.launch(gpu, &pipelines.bias, p, &bias_buffers, p.out_c as u64),
        ]
    }

    /// grad *= the activation's derivative at `output`, in place.
    pub fn activation_grad(
        &self,
        gpu: &Gpu,
        p: &ActivationGradParams,
        output: &wgpu::Buffer,
        grad: &wgpu::Buffer,
    ) -> Dispatch {
        let count = p.rows as u64 * p.channels as u64;
        self.launch(gpu, &self.activation, p, &[(1, output), (2, grad)], count)
    }

    /// grad_in += the pool's input gradient (`input`, the pool's input, is
    /// bound for every kind: the entry points share the code that reads it).
    pub fn pool_grad(
        &self,
        gpu: &Gpu,
        kind: PoolKind,
        p: &PoolParams,
        input: &wgpu::Buffer,
        grad_out: &wgpu::Buffer,
        grad_in: &wgpu::Buffer,
    ) -> Dispatch {
        let pipeline = match kind {
            PoolKind::Max => &self.max_pool,
            PoolKind::Average => &self.avg_pool,
            PoolKind::AverageCountingPadding => &self.avg_pool_counting_padding,
        };
        let buffers = [(1, input), (2, grad_out), (3, grad_in)];
        let count = p.batch as u64 * p.in_h as u64 * p.in_w as u64 * p.channels as u64;
        self.launch(gpu, pipeline, p, &buffers, count)
    }

    /// grad_in += the global average pool's input gradient.
    pub fn global_avg_pool_grad(
        &self,
        gpu: &Gpu,
        p: &GlobalPoolParams,
        grad_out: &wgpu::Buffer,
        grad_in: &wgpu::Buffer,
    ) -> Dispatch {
        let count = (p.batch * p.height * p.width * p.channels) as u64;
        let buffers = [(1, grad_out), (2, grad_in)];
        self.launch(gpu, &self.global_avg_pool, p, &buffers, count)
    }

    /// The classifier's forward pass, its parameter gradients and its input
    /// gradients, in that order, for the pass `p` describes; they read their
    /// parameters from `uniform`, which the caller fills (and may rewrite
    /// between passes, e.g. for a new dropout mask).
    pub fn classifier(
        &self,
        gpu: &Gpu,
        (p, uniform): (&ClassifierTrainParams, &wgpu::Buffer),
        b: &ClassifierBuffers,
    ) -> [Dispatch; 3] {
        let buffers = [
            (1, b.features),
            (2, b.weights),
            (3, b.biases),
            (4, b.labels),
            (5, b.probabilities),
            (6, b.losses),
            (7, b.grad_weights),
            (8, b.grad_biases),
            (9, b.grad_features),
            (10, b.standardize),
        ];
        let rows = p.rows as u64;
        let parameters = (p.dim * p.classes + p.classes) as u64;
        let inputs = rows * p.dim as u64;
        let pick = |bindings: &[u32]| -> Vec<(u32, &wgpu::Buffer)> {
            buffers
                .iter()
                .copied()
                .filter(|(b, _)| bindings.contains(b))
                .collect()
        };
        let launch = |pipeline, bindings: &[u32], count| {
            let groups = grid(count, POOL_GROUP, self.max_groups);
            Dispatch::bind(gpu, pipeline, uniform, &pick(bindings), groups)
        };
        [
            launch(&self.classifier_forward, &[1, 2, 3, 4, 5, 6, 10], rows),
            launch(
                &self.classifier_weight_grads,
                &[1, 4, 5, 7, 8, 10],
                parameters,
            ),
            launch(&self.classifier_feature_grads, &[2, 4, 5, 9, 10], inputs),
        ]
    }

    /// The optimiser update of one parameter tensor of `count` values, its
    /// parameters read from `uniform` (an OptimizerParams the caller rewrites
    /// each step). Each buffer holds `padded(count)` values.
    pub fn optimizer(
        &self,
        gpu: &Gpu,
        uniform: &wgpu::Buffer,
        count: u64,
        b: &OptimizerBuffers,
    ) -> Dispatch {
        let buffers = [
            (1, b.parameters),
            (2, b.gradients),
            (3, b.first),
            (4, b.second),
        ];
        let groups = grid(count.div_ceil(4), POOL_GROUP, self.max_groups);
        Dispatch::bind(gpu, &self.optimizer, uniform, &buffers, groups)
    }
}

/// `count` rounded up to a multiple of 4: the values each of
/// shaders/optimizer.wgsl's buffers holds (it reads them as vec4s).
pub fn padded(count: usize) -> usize {
    count.next_multiple_of(4)
}

/// A zeroed OptimizerParams-sized uniform buffer the caller can rewrite.
pub fn optimizer_uniform(gpu: &Gpu) -> wgpu::Buffer {
    gpu.uniform_buffer("optimizer params", &OptimizerParams::default())
}
