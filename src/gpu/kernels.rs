//! The network's compute pipelines (convs, depthwise convs, pools,
//! preprocessing), compiled
//! once per device, and how each is dispatched. Their parameter blocks are in
//! params.rs, their sources and specialisations in shader.rs.

use super::context::Gpu;
use super::conv_variant::input_aligned;
pub use super::conv_variant::ConvVariant;
use super::params::{ConvParams, DepthwiseParams, GlobalPoolParams, PoolParams, PreprocessParams};
use super::shader::{self, set_const, swap_block};
use super::texture_reads::{
    ScratchTextures, TextureCopy, SCRATCH_BYTES_PER_OPERAND_BYTE, TEXTURE_INPUT,
    TEXTURE_POOL_INPUT, TEXTURE_WEIGHTS,
};
use bytemuck::Pod;
use std::collections::HashMap;
use std::sync::Mutex;

/// The pool kernel's entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    /// The mean of the window's cells inside the input (TensorFlow).
    Average,
    /// The window's sum over its full size, padding included (PyTorch).
    AverageCountingPadding,
}

/// One recorded kernel launch: pipeline, bound resources, grid size, and the
/// buffers copied into the textures it reads (see texture_reads.rs), first.
pub struct Dispatch {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    groups: [u32; 3],
    copies: Vec<TextureCopy>,
}

impl Dispatch {
    /// A launch of `pipeline` over `groups` with `uniform` at binding 0 and
    /// each buffer at its binding.
    pub(super) fn bind(
        gpu: &Gpu,
        pipeline: &wgpu::ComputePipeline,
        uniform: &wgpu::Buffer,
        buffers: &[(u32, &wgpu::Buffer)],
        groups: [u32; 3],
    ) -> Self {
        let resources: Vec<(u32, wgpu::BindingResource)> = std::iter::once((0, uniform))
            .chain(buffers.iter().copied())
            .map(|(binding, b)| (binding, b.as_entire_binding()))
            .collect();
        Self::bind_resources(gpu, pipeline, resources, groups, Vec::new())
    }

    /// A launch of `pipeline` over `groups` with `params` in a new uniform
    /// buffer at binding 0, each buffer at its binding, and the texture of
    /// each copy at its binding, filled by the copy just before the launch.
    pub(super) fn with_textures<P: Pod>(
        gpu: &Gpu,
        pipeline: &wgpu::ComputePipeline,
        params: &P,
        buffers: &[(u32, &wgpu::Buffer)],
        textures: Vec<(u32, TextureCopy)>,
        groups: [u32; 3],
    ) -> Self {
        let uniform = gpu.uniform_buffer("kernel params", params);
        let views: Vec<(u32, wgpu::TextureView)> =
            textures.iter().map(|(b, copy)| (*b, copy.view())).collect();
        let resources = std::iter::once((0, uniform.as_entire_binding()))
            .chain(
                buffers
                    .iter()
                    .map(|(b, buffer)| (*b, buffer.as_entire_binding())),
            )
            .chain(
                views
                    .iter()
                    .map(|(b, view)| (*b, wgpu::BindingResource::TextureView(view))),
            )
            .collect();
        let copies = textures.into_iter().map(|(_, copy)| copy).collect();
        Self::bind_resources(gpu, pipeline, resources, groups, copies)
    }

    /// A launch of `pipeline` over `groups` with each resource at its binding,
    /// after `copies` fill the textures among them.
    fn bind_resources(
        gpu: &Gpu,
        pipeline: &wgpu::ComputePipeline,
        resources: Vec<(u32, wgpu::BindingResource)>,
        groups: [u32; 3],
        copies: Vec<TextureCopy>,
    ) -> Self {
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .into_iter()
            .map(|(binding, resource)| wgpu::BindGroupEntry { binding, resource })
            .collect();
        let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        Dispatch {
            pipeline: pipeline.clone(),
            bind_group,
            groups,
            copies,
        }
    }

    /// Whether this launch reads buffers copied into textures (texture_reads.rs).
    pub fn copies_into_textures(&self) -> bool {
        !self.copies.is_empty()
    }

    /// Records this launch into an open pass (its texture copies, if any,
    /// must already be recorded: see `record_all`).
    fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.dispatch_workgroups(self.groups[0], self.groups[1], self.groups[2]);
    }
}

/// conv2d_direct.wgsl's input binding and reader for channels not aligned to 4.
const SCALAR_INPUT: &str = "
@group(0) @binding(1) var<storage, read> input: array<f32>;
fn input_quad(pixel: u32, c4: u32) -> vec4<f32> {
    var q = vec4<f32>(0.0);
    for (var j = 0u; j < 4u; j++) {
        let c = c4 * 4u + j;
        if (c < p.in_c) {
            q[j] = input[pixel + c];
        }
    }
    return q;
}
";

/// conv2d.wgsl's weight binding and reader for f16 weights (pairs in a u32).
const HALF_WEIGHTS_TILED: &str = "
@group(0) @binding(2) var<storage, read> weights: array<u32>;
fn weight_at(i: u32) -> f32 {
    let pair = unpack2x16float(weights[i >> 1u]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
}
";

/// conv2d_direct.wgsl's weight binding and reader for f16 weights (four in a vec2<u32>).
const HALF_WEIGHTS_DIRECT: &str = "
@group(0) @binding(2) var<storage, read> weights: array<vec2<u32>>;
fn weight4_at(i: u32) -> vec4<f32> {
    let q = weights[i];
    return vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
}
fn weight_quads() -> u32 {
    return arrayLength(&weights);
}
";

/// pool.wgsl's value type for channels aligned to 4.
const VEC4_VALUES: &str = "
alias Value = vec4<f32>;
const LANES: u32 = 4u;
";

/// depthwise.wgsl's value type and its helpers for channels aligned to 4.
const VEC4_DEPTHWISE_VALUES: &str = "
alias Value = vec4<f32>;
const LANES: u32 = 4u;
fn activate_value(v: Value, kind: u32) -> Value {
    return activate4(v, kind);
}
fn select_lanes(w: array<f32, 4>) -> Value {
    return vec4<f32>(w[0], w[1], w[2], w[3]);
}
";

/// pool.wgsl's three entry points, compiled from one variant of its source.
struct PoolPipelines {
    max: wgpu::ComputePipeline,
    average: wgpu::ComputePipeline,
    average_counting_padding: wgpu::ComputePipeline,
}

impl PoolPipelines {
    fn new(gpu: &Gpu, source: &str) -> Self {
        let entry = |name: &str| pipeline(gpu, name, source, name);
        PoolPipelines {
            max: entry("max_pool"),
            average: entry("avg_pool"),
            average_counting_padding: entry("avg_pool_counting_padding"),
        }
    }

    fn of(&self, kind: PoolKind) -> &wgpu::ComputePipeline {
        match kind {
            PoolKind::Max => &self.max,
            PoolKind::Average => &self.average,
            PoolKind::AverageCountingPadding => &self.average_counting_padding,
        }
    }
}

/// How a register-tile conv reads its input and weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Reads {
    /// Storage buffers, the input one f32 at a time (channels not aligned to 4).
    ScalarInput,
    /// Storage buffers, vec4s.
    Vec4,
    /// Textures filled from the buffers before the dispatch.
    Textures,
}

/// The scratch textures a conv's input and weights are copied into.
struct OperandTextures {
    input: ScratchTextures,
    weights: ScratchTextures,
}

/// Every pipeline the engine uses, compiled once per device.
pub struct Kernels {
    /// Conv weights are f16 (read with unpack2x16float) rather than f32.
    half_weights: bool,
    conv2d: wgpu::ComputePipeline,
    /// conv2d_direct.wgsl and conv2d_subgroup.wgsl pipelines by variant and
    /// how they read their operands.
    register_tiles: Mutex<HashMap<(ConvVariant, Reads), wgpu::ComputePipeline>>,
    /// Where the register tiles read aligned inputs and weights from
    /// textures (CPU adapters, see texture_reads.rs): the scratch textures.
    operand_textures: Option<OperandTextures>,
    /// pool.wgsl reading one f32 at a time, one vec4 (aligned channels), and
    /// (on devices that read operands through textures) one vec4 from a texture.
    pool_scalar: PoolPipelines,
    pool_vec4: PoolPipelines,
    pool_texture: Option<PoolPipelines>,
    /// depthwise.wgsl's source reading one f32 at a time, and one vec4 (aligned channels).
    depthwise_sources: [String; 2],
    /// Its pipelines by whether the channels are aligned and the workgroup size.
    depthwise: Mutex<HashMap<(bool, u32), wgpu::ComputePipeline>>,
    global_avg_pool: wgpu::ComputePipeline,
    preprocess: wgpu::ComputePipeline,
    /// Bound as a conv's residual when it has none (the binding must hold a buffer).
    no_residual: wgpu::Buffer,
    max_groups: u32,
}

pub(super) fn pipeline(gpu: &Gpu, name: &str, source: &str, entry: &str) -> wgpu::ComputePipeline {
    pipeline_with(gpu, name, source, entry, &[])
}

/// A pipeline with values for the shader's `override` constants.
pub(super) fn pipeline_with(
    gpu: &Gpu,
    name: &str,
    source: &str,
    entry: &str,
    constants: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    let module = gpu.shader_module(name, source);
    gpu.device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                ..Default::default()
            },
            cache: None,
        })
}

pub(super) const CONV_TILE: u32 = 64;
pub(super) const POOL_GROUP: u32 = 256;
/// The depthwise kernel's workgroup sizes the autotuner tries.
pub const DEPTHWISE_GROUPS: [u32; 3] = [64, 128, 256];

/// Whether channel counts, strides and offsets are all multiples of 4, so
/// that a kernel can read and write them as vec4s.
pub(super) fn vec4_aligned(values: &[u32]) -> bool {
    values.iter().all(|v| v % 4 == 0)
}

/// A 1-D grid of `count` invocations in `group`-wide workgroups, folded into
/// 2-D when longer than `max_groups` workgroups (the shader flattens its
/// index with `num_workgroups`).
pub fn grid(count: u64, group: u32, max_groups: u32) -> [u32; 3] {
    let [x, y] = fold(count.div_ceil(group as u64).max(1), max_groups);
    [x, y, 1]
}

/// `groups` workgroups as rows of at most `max_groups`, split evenly so that
/// fewer than one per row run past the end.
pub(super) fn fold(groups: u64, max_groups: u32) -> [u32; 2] {
    let rows = groups.div_ceil(max_groups as u64).max(1);
    [groups.div_ceil(rows) as u32, rows as u32]
}

impl Kernels {
    /// The pipelines for conv weights stored as f32, or as f16 when
    /// `half_weights`; convs read their operands through textures on CPU adapters.
    pub fn new(gpu: &Gpu, half_weights: bool) -> Self {
        let cpu = gpu.info.device_type == wgpu::DeviceType::Cpu;
        Self::with_texture_reads(gpu, half_weights, cpu)
    }

    /// The same, choosing whether register-tile convs read aligned inputs and
    /// their weights from textures (`textures`) or from the storage buffers.
    pub fn with_texture_reads(gpu: &Gpu, half_weights: bool, textures: bool) -> Self {
        let pool_vec4_src = swap_block(shader::POOL, "VALUE", VEC4_VALUES);
        let mut conv_src = shader::CONV2D.to_string();
        let mut depthwise_src = shader::DEPTHWISE.to_string();
        if half_weights {
            conv_src = swap_block(&conv_src, "WEIGHTS", HALF_WEIGHTS_TILED);
            depthwise_src = swap_block(&depthwise_src, "WEIGHTS", HALF_WEIGHTS_TILED);
        }
        let depthwise_vec4_src = swap_block(&depthwise_src, "VALUE", VEC4_DEPTHWISE_VALUES);
        Kernels {
            half_weights,
            conv2d: pipeline(gpu, "conv2d", &conv_src, "main"),
            register_tiles: Mutex::default(),
            operand_textures: textures.then(|| OperandTextures {
                input: ScratchTextures::new(wgpu::TextureFormat::Rgba32Float),
                weights: ScratchTextures::new(match half_weights {
                    true => wgpu::TextureFormat::Rgba16Float,
                    false => wgpu::TextureFormat::Rgba32Float,
                }),
            }),
            pool_scalar: PoolPipelines::new(gpu, shader::POOL),
            pool_texture: textures.then(|| {
                let source = swap_block(&pool_vec4_src, "INPUT", TEXTURE_POOL_INPUT);
                PoolPipelines::new(gpu, &source)
            }),
            pool_vec4: PoolPipelines::new(gpu, &pool_vec4_src),
            depthwise_sources: [depthwise_src, depthwise_vec4_src],
            depthwise: Mutex::default(),
            global_avg_pool: pipeline(gpu, "global_avg_pool", shader::GLOBAL_AVG_POOL, "main"),
            preprocess: pipeline(gpu, "preprocess", shader::PREPROCESS, "main"),
            no_residual: gpu.storage_buffer("no residual", 16),
            max_groups: gpu.limits.max_compute_workgroups_per_dimension,
        }
    }

    /// Largest number of GEMM rows (batch·out_h·out_w) one conv dispatch can cover.
    pub fn max_conv_rows(&self) -> u64 {
        self.max_groups as u64 * CONV_TILE as u64
    }

    fn dispatch<P: Pod>(
        gpu: &Gpu,
        pipeline: &wgpu::ComputePipeline,
        params: &P,
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) -> Dispatch {
        let uniform = gpu.uniform_buffer("kernel params", params);
        let buffers: Vec<(u32, &wgpu::Buffer)> = (1..).zip(buffers.iter().copied()).collect();
        Dispatch::bind(gpu, pipeline, &uniform, &buffers, groups)
    }

    /// A 1-D grid of `count` invocations in 256-wide groups, folded into 2-D when too long.
    fn linear_grid(&self, count: u64) -> [u32; 3] {
        grid(count, POOL_GROUP, self.max_groups)
    }

    /// The conv `p` with `variant` (or the tiled kernel where it does not
    /// fit), adding `residual` when `p.residual` is 1 (the output's own
    /// values when it is 2).
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        &self,
        gpu: &Gpu,
        p: &ConvParams,
        variant: ConvVariant,
        input: &wgpu::Buffer,
        (weights, bias): (&wgpu::Buffer, &wgpu::Buffer),
        output: &wgpu::Buffer,
        residual: Option<&wgpu::Buffer>,
    ) -> Dispatch {
        assert_eq!(p.residual == 1, residual.is_some(), "conv residual");
        let residual = residual.unwrap_or(&self.no_residual);
        let buffers = [input, weights, bias, output, residual];
        let registers = !matches!(variant, ConvVariant::Tiled) && variant.fits(p, gpu);
        match registers {
            true => {
                let groups = variant.grid(p, self.max_groups);
                if let Some([input, weights]) = self.texture_copies(gpu, p, input, weights) {
                    let pipeline = self.register_tile_pipeline(gpu, variant, Reads::Textures);
                    let buffers = [(3, bias), (4, output), (5, residual)];
                    let textures = vec![(1, input), (2, weights)];
                    return Dispatch::with_textures(gpu, &pipeline, p, &buffers, textures, groups);
                }
                let reads = match input_aligned(p) {
                    true => Reads::Vec4,
                    false => Reads::ScalarInput,
                };
                let pipeline = self.register_tile_pipeline(gpu, variant, reads);
                Self::dispatch(gpu, &pipeline, p, &buffers, groups)
            }
            false => {
                let groups = ConvVariant::Tiled.grid(p, self.max_groups);
                Self::dispatch(gpu, &self.conv2d, p, &buffers, groups)
            }
        }
    }

    /// The copies of conv `p`'s input and weights into the scratch textures,
    /// when this device's convs read through textures, the input is read as
    /// vec4s and both fit in a texture.
    fn texture_copies(
        &self,
        gpu: &Gpu,
        p: &ConvParams,
        input: &wgpu::Buffer,
        weights: &wgpu::Buffer,
    ) -> Option<[TextureCopy; 2]> {
        let textures = self.operand_textures.as_ref()?;
        if !input_aligned(p) {
            return None;
        }
        let input_texels = p.batch as u64 * p.in_h as u64 * p.in_w as u64 * p.in_stride as u64 / 4;
        let weight_texels = (p.kernel_h * p.kernel_w) as u64 * p.in_c as u64 * p.out_c as u64 / 4;
        Some([
            textures.input.copy_of(gpu, input, input_texels)?,
            textures.weights.copy_of(gpu, weights, weight_texels)?,
        ])
    }

    /// conv2d_direct.wgsl or conv2d_subgroup.wgsl with the variant's tile
    /// constants and its operand readers, compiled on first use.
    fn register_tile_pipeline(
        &self,
        gpu: &Gpu,
        variant: ConvVariant,
        reads: Reads,
    ) -> wgpu::ComputePipeline {
        let (name, source, rows, cols, group) = match variant {
            ConvVariant::Direct { rows, cols, group } => {
                ("conv2d_direct", shader::CONV2D_DIRECT, rows, cols, group)
            }
            ConvVariant::Subgroup { rows, cols, group } => (
                "conv2d_subgroup",
                shader::CONV2D_SUBGROUP,
                rows,
                cols,
                group,
            ),
            ConvVariant::Tiled => unreachable!("only register tiles are compiled here"),
        };
        let mut cache = self.register_tiles.lock().expect("pipeline cache");
        cache
            .entry((variant, reads))
            .or_insert_with(|| {
                let source = set_const(source, "ROWS", rows);
                let mut source = set_const(&source, "COLS", cols);
                match reads {
                    Reads::ScalarInput => source = swap_block(&source, "INPUT", SCALAR_INPUT),
                    Reads::Vec4 => {}
                    Reads::Textures => {
                        source = swap_block(&source, "INPUT", TEXTURE_INPUT);
                        source = swap_block(&source, "WEIGHTS", TEXTURE_WEIGHTS);
                    }
                }
                if self.half_weights && reads != Reads::Textures {
                    source = swap_block(&source, "WEIGHTS", HALF_WEIGHTS_DIRECT);
                }
                let constants = [("GROUP", group as f64)];
                pipeline_with(gpu, name, &source, "main", &constants)
            })
            .clone()
    }

    pub fn pool(
        &self,
        gpu: &Gpu,
        kind: PoolKind,
        p: &PoolParams,
        input: &wgpu::Buffer,
        output: &wgpu::Buffer,
    ) -> Dispatch {
        let aligned = vec4_aligned(&[
            p.channels,
            p.in_stride,
            p.in_offset,
            p.out_stride,
            p.out_offset,
        ]);
        let (pipelines, lanes) = match aligned {
            true => (&self.pool_vec4, 4),
            false => (&self.pool_scalar, 1),
        };
        let count = p.batch as u64 * p.out_h as u64 * p.out_w as u64 * (p.channels / lanes) as u64;
        let groups = self.linear_grid(count);
        let texture = aligned.then(|| self.pool_texture_copy(gpu, p, input));
        if let Some((pipelines, copy)) = texture.flatten() {
            let (buffers, textures) = ([(2, output)], vec![(1, copy)]);
            return Dispatch::with_textures(gpu, pipelines.of(kind), p, &buffers, textures, groups);
        }
        Self::dispatch(gpu, pipelines.of(kind), p, &[input, output], groups)
    }

    /// Lets the scratch textures go (made again when next needed); their
    /// memory returns once the dispatches holding copies are dropped too.
    pub fn release_scratch_textures(&self) {
        if let Some(textures) = &self.operand_textures {
            textures.input.release();
            textures.weights.release();
        }
    }

    /// Bytes of scratch textures a batch's activations may take per image,
    /// when the largest activation takes `largest` bytes per image: the
    /// input texture's share (the weights' is the same for every batch).
    pub fn scratch_bytes_per_image(&self, largest: u64) -> u64 {
        match self.operand_textures {
            Some(_) => SCRATCH_BYTES_PER_OPERAND_BYTE * largest,
            None => 0,
        }
    }

    /// The texture pool pipelines and the copy of pool `p`'s input into a
    /// scratch texture, when this device reads operands through textures and
    /// the input fits in one.
    fn pool_texture_copy(
        &self,
        gpu: &Gpu,
        p: &PoolParams,
        input: &wgpu::Buffer,
    ) -> Option<(&PoolPipelines, TextureCopy)> {
        let pipelines = self.pool_texture.as_ref()?;
        let scratch = &self.operand_textures.as_ref()?.input;
        let texels = p.batch as u64 * p.in_h as u64 * p.in_w as u64 * p.in_stride as u64 / 4;
        Some((pipelines, scratch.copy_of(gpu, input, texels)?))
    }

    /// The depthwise conv `p` in workgroups of `group` invocations (one of
    /// DEPTHWISE_GROUPS), reading vec4s when channels and slices are aligned to 4.
    #[allow(clippy::too_many_arguments)]
    pub fn depthwise(
        &self,
        gpu: &Gpu,
        p: &DepthwiseParams,
        group: u32,
        input: &wgpu::Buffer,
        (weights, bias): (&wgpu::Buffer, &wgpu::Buffer),
        output: &wgpu::Buffer,
    ) -> Dispatch {
        let aligned = vec4_aligned(&[
            p.channels,
            p.in_stride,
            p.in_offset,
            p.out_stride,
            p.out_offset,
        ]);
        let lanes = if aligned { 4 } else { 1 };
        let pipeline = self
            .depthwise
            .lock()
            .expect("pipeline cache")
            .entry((aligned, group))
            .or_insert_with(|| {
                let source = &self.depthwise_sources[aligned as usize];
                pipeline_with(gpu, "depthwise", source, "main", &[("GROUP", group as f64)])
            })
            .clone();
        let count = p.batch as u64 * p.out_h as u64 * p.out_w as u64 * (p.channels / lanes) as u64;
        let buffers = [input, weights, bias, output];
        Self::dispatch(
            gpu,
            &pipeline,
            p,
            &buffers,
            grid(count, group, self.max_groups),
        )
    }

    pub fn global_avg_pool(
        &self,
        gpu: &Gpu,
        p: &GlobalPoolParams,
        input: &wgpu::Buffer,
        output: &wgpu::Buffer,
    ) -> Dispatch {
        let groups = [(p.batch * p.channels).div_ceil(POOL_GROUP), 1, 1];
        Self::dispatch(gpu, &self.global_avg_pool, p, &[input, output], groups)
    }

    pub fn preprocess(
        &self,
        gpu: &Gpu,
        p: &PreprocessParams,
        pixels: &wgpu::Buffer,
        output: &wgpu::Buffer,
    ) -> Dispatch {
        let groups = [p.out_w.div_ceil(16), p.out_h.div_ceil(16), 1];
        Self::dispatch(gpu, &self.preprocess, p, &[pixels, output], groups)
    }
}

/// Records `dispatches` in order and submits them.
pub fn submit(gpu: &Gpu, dispatches: &[&Dispatch]) -> wgpu::SubmissionIndex {
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    record_all(&mut encoder, dispatches.iter().copied(), None);
    gpu.queue.submit([encoder.finish()])
}

/// Where a timed run of dispatches writes its start and end timestamps.
pub struct Timestamps<'a> {
    pub queries: &'a wgpu::QuerySet,
    pub start: u32,
    pub end: u32,
}

/// Records `dispatches` in order into compute passes: one, closed and opened
/// again before each dispatch that first copies buffers into the textures it
/// reads (copies cannot happen inside a pass). With `timestamps`, the start
/// is written before the first copy and the end after the last dispatch.
pub fn record_all<'a>(
    encoder: &mut wgpu::CommandEncoder,
    dispatches: impl IntoIterator<Item = &'a Dispatch>,
    timestamps: Option<Timestamps>,
) {
    let list: Vec<&Dispatch> = dispatches.into_iter().collect();
    // The start is written by the first pass, or, when the first dispatch
    // copies, by an empty pass before the copies (GPUs, whose dispatches copy
    // nothing, keep one timed pass: some do not time an empty one).
    let start_pass = list.first().is_some_and(|d| !d.copies.is_empty());
    if let (Some(t), true) = (&timestamps, start_pass) {
        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                query_set: t.queries,
                beginning_of_pass_write_index: Some(t.start),
                end_of_pass_write_index: None,
            }),
        });
    }
    let mut start = 0;
    // At least one pass, so that a timed empty list still writes both timestamps.
    loop {
        let end = (start + 1..list.len())
            .find(|&i| !list[i].copies.is_empty())
            .unwrap_or(list.len());
        for c in list.get(start).map_or(&[][..], |d| &d.copies[..]) {
            c.record(encoder);
        }
        let timestamp_writes = timestamps.as_ref().and_then(|t| {
            let first = (start == 0 && !start_pass).then_some(t.start);
            let last = (end == list.len()).then_some(t.end);
            (first.is_some() || last.is_some()).then_some(wgpu::ComputePassTimestampWrites {
                query_set: t.queries,
                beginning_of_pass_write_index: first,
                end_of_pass_write_index: last,
            })
        });
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes,
        });
        for d in list.get(start..end).unwrap_or(&[]) {
            d.record(&mut pass);
        }
        start = end;
        if start >= list.len() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fold;

    /// A long run of workgroups, folded: all of them covered, no dimension
    /// past the limit, and fewer than one workgroup per row past the end.
    #[test]
    fn folded_grids_cover_every_workgroup_within_the_limit() {
        let max = 65_535u32;
        let counts = (0..=3 * max as u64).step_by(997).chain([
            1,
            max as u64,
            max as u64 + 1,
            64 * max as u64,
            64 * max as u64 + 1,
        ]);
        for groups in counts {
            let [first, rows] = fold(groups, max);
            let covered = first as u64 * rows as u64;
            assert!(first <= max && rows <= max, "{groups}: {first} x {rows}");
            assert!(covered >= groups, "{groups}: {first} x {rows}");
            assert!(
                covered - groups < rows.max(1) as u64,
                "{groups}: {first} x {rows}"
            );
        }
    }
}
