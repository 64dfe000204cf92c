//! Each kernel against its CPU reference on random shapes and random data,
//! with the output buffer poisoned first so that an unwritten element fails.
//!
//! Longer than the crate's other files on purpose: the Inception V3 kernel
//! families' tests are here so that they share one GPU, one set of helpers
//! and one test binary (each binary links wgpu and starts a device);
//! MobileNet V2's depthwise kernel is tested in tests/depthwise.rs.

mod common;

use common::*;
use rand::Rng;
use retrain::cpu_reference;
use retrain::data::distortion::Distortion;
use retrain::engine::preprocess_params;
use retrain::gpu::kernels::{submit, ConvVariant, Kernels, PoolKind};
use retrain::gpu::params::{ConvParams, GlobalPoolParams, PoolParams};
use retrain::gpu::timer::GpuTimer;
use retrain::model::weights::Normalization;
use std::sync::OnceLock;

/// Output size along one axis for a window of `k` with `stride` and total padding `pad`.
fn out_size(input: u32, k: u32, stride: u32, pad: u32) -> u32 {
    (input + pad - k) / stride + 1
}

fn run_conv(seed: u64, kernel: (u32, u32), stride: u32, same: bool, slices: bool) {
    run_conv_with(seed, kernel, stride, same, slices, (1, 1));
}

/// A random conv whose input and output channel counts, offsets and strides
/// are multiples of `align` (input, output); an output aligned to 4 lets the
/// register-tiled variants run it.
fn run_conv_with(
    seed: u64,
    kernel: (u32, u32),
    stride: u32,
    same: bool,
    slices: bool,
    align: (u32, u32),
) {
    let mut rng = rng(seed);
    let a_in = |v: u32| v.div_ceil(align.0) * align.0;
    let a = |v: u32| v.div_ceil(align.1) * align.1;
    let (kh, kw) = kernel;
    let batch = rng.random_range(1..=3);
    let in_h = rng.random_range(kh.max(3)..20);
    let in_w = rng.random_range(kw.max(3)..20);
    let in_c = a_in(rng.random_range(1..40));
    let out_c = a(rng.random_range(1..80));
    let (pad_top, pad_left) = if same {
        ((kh - 1) / 2, (kw - 1) / 2)
    } else {
        (0, 0)
    };
    let out_h = out_size(in_h, kh, stride, 2 * pad_top);
    let out_w = out_size(in_w, kw, stride, 2 * pad_left);
    let (in_offset, in_extra) = if slices {
        (a_in(rng.random_range(0..5)), a_in(rng.random_range(0..5)))
    } else {
        (0, 0)
    };
    let (out_offset, out_extra) = if slices {
        (a(rng.random_range(1..7)), a(rng.random_range(0..7)))
    } else {
        (0, 0)
    };
    let p = ConvParams {
        batch,
        in_h,
        in_w,
        in_c,
        out_h,
        out_w,
        out_c,
        m: batch * out_h * out_w,
        kernel_h: kh,
        kernel_w: kw,
        stride_h: stride,
        stride_w: stride,
        pad_top,
        pad_left,
        in_stride: in_offset + in_c + in_extra,
        in_offset,
        out_stride: out_offset + out_c + out_extra,
        out_offset,
        activation: rng.random_range(0..3),
        residual: 0,
        res_stride: 0,
        res_offset: 0,
        _pad0: 0,
        _pad1: 0,
    };
    // Half the convs add a residual tensor (MobileNet V2's projections).
    let p = match rng.random_bool(0.5) {
        true => {
            let res_offset = a(rng.random_range(0..5));
            ConvParams {
                residual: 1,
                res_offset,
                res_stride: res_offset + out_c + a(rng.random_range(0..5)),
                ..p
            }
        }
        false => p,
    };
    let device = &gpu().0;
    // lavapipe's subgroups are 8 wide: there, every variant must really run.
    let lavapipe = device.info.driver == "llvmpipe";
    assert!(!lavapipe || device.whole_subgroups_of_8(8));
    let fitting = ConvVariant::CANDIDATES
        .iter()
        .filter(|v| v.fits(&p, device))
        .count();
    let on_device = ConvVariant::CANDIDATES
        .iter()
        .filter(|v| match v {
            ConvVariant::Subgroup { group, .. } => device.whole_subgroups_of_8(*group),
            _ => true,
        })
        .count();
    assert!(align.1 == 1 || fitting == on_device, "{p:?}");
    check_conv(&p, &mut rng);
}

/// Runs one conv on random data into a poisoned buffer with every kernel
/// variant and compares each with the CPU reference.
fn check_conv(p: &ConvParams, rng: &mut rand::rngs::StdRng) {
    for variant in ConvVariant::CANDIDATES {
        for set in kernel_sets() {
            check_conv_variant(p, variant, &set, rng);
        }
    }
}

/// Kernels a conv runs through: f16 or f32 weights, read through textures or not.
struct KernelSet {
    kernels: &'static Kernels,
    half: bool,
    textures: bool,
}

/// f32 and f16 weights read as this device reads them (through textures on a
/// CPU adapter such as lavapipe), and there also f32 weights read from the
/// storage buffers, as GPUs read them.
fn kernel_sets() -> Vec<KernelSet> {
    static HALF: OnceLock<Kernels> = OnceLock::new();
    static STORAGE: OnceLock<Kernels> = OnceLock::new();
    let (gpu, f32_kernels) = gpu();
    let cpu = gpu.info.device_type == wgpu::DeviceType::Cpu;
    let set = |kernels, half, textures| KernelSet {
        kernels,
        half,
        textures,
    };
    let mut sets = vec![
        set(f32_kernels, false, cpu),
        set(HALF.get_or_init(|| Kernels::new(gpu, true)), true, cpu),
    ];
    if cpu {
        let storage = STORAGE.get_or_init(|| Kernels::with_texture_reads(gpu, false, false));
        sets.push(set(storage, false, false));
    }
    sets
}

/// One conv with `variant` and the kernels of `set`, weights as f32 or as
/// f16 — then the reference uses the f16-rounded weights.
fn check_conv_variant(
    p: &ConvParams,
    variant: ConvVariant,
    set: &KernelSet,
    rng: &mut rand::rngs::StdRng,
) {
    let gpu = &gpu().0;
    let (kernels, half) = (set.kernels, set.half);
    let input = random_vec(rng, (p.batch * p.in_h * p.in_w * p.in_stride) as usize);
    let mut weights = random_vec(rng, (p.kernel_h * p.kernel_w * p.in_c * p.out_c) as usize);
    let bias = random_vec(rng, p.out_c as usize);
    let weight_bytes: Vec<u8> = if half {
        let halves: Vec<half::f16> = weights.iter().map(|&w| half::f16::from_f32(w)).collect();
        weights = halves.iter().map(|h| h.to_f32()).collect();
        let bits: Vec<u16> = halves.iter().map(|h| h.to_bits()).collect();
        bytemuck::cast_slice(&bits).to_vec()
    } else {
        bytemuck::cast_slice(&weights).to_vec()
    };
    let residual = random_vec(rng, (p.m * p.res_stride) as usize);
    let out_len = (p.m * p.out_stride) as usize;
    let mut expected = vec![POISON; out_len];
    cpu_reference::conv2d(p, &input, (&weights, &bias), &residual, &mut expected);
    let output = poisoned(gpu, out_len);
    let br = (p.residual != 0).then(|| upload(gpu, &residual));
    let (bi, bw, bb) = (
        upload(gpu, &input),
        gpu.storage_buffer_with("weights", &weight_bytes),
        upload(gpu, &bias),
    );
    let conv = kernels.conv2d(gpu, p, variant, &bi, (&bw, &bb), &output, br.as_ref());
    submit(gpu, &[&conv]);
    let textures = conv.copies_into_textures();
    assert_close(
        &download(gpu, &output, out_len),
        &expected,
        1e-5,
        &format!("conv {variant:?} f16 weights: {half}, textures: {textures} {p:?}"),
    );
    // Register tiles read aligned inputs through textures where the set does.
    let registers = variant != ConvVariant::Tiled && variant.fits(p, gpu);
    let aligned = [p.in_c, p.in_stride, p.in_offset]
        .iter()
        .all(|v| v % 4 == 0);
    assert_eq!(
        textures,
        set.textures && registers && aligned,
        "{variant:?} {p:?}"
    );
}

#[test]
fn conv_aligned_shapes_in_every_variant() {
    let shapes = [(1, 1), (3, 3), (5, 5), (1, 7), (7, 1), (1, 3), (3, 1)];
    for (i, &k) in shapes.iter().enumerate() {
        run_conv_with(800 + i as u64, k, 1, true, true, (4, 4));
        run_conv_with(850 + i as u64, k, 2, false, false, (4, 4));
        // Input channels not a multiple of 4 (the RGB first layer): scalar input reads.
        run_conv_with(870 + i as u64, k, 2, false, true, (1, 4));
    }
}

#[test]
fn conv_every_inception_shape() {
    let shapes = [(1, 1), (3, 3), (5, 5), (1, 3), (3, 1), (1, 7), (7, 1)];
    for (i, &k) in shapes.iter().enumerate() {
        run_conv(100 + i as u64, k, 1, true, false);
        run_conv(200 + i as u64, k, 1, false, false);
    }
}

#[test]
fn conv_stride_two_valid() {
    for (i, &k) in [(3, 3), (1, 1), (5, 5)].iter().enumerate() {
        run_conv(300 + i as u64, k, 2, false, false);
    }
}

#[test]
fn conv_reads_and_writes_channel_slices() {
    for (i, &k) in [(1, 1), (3, 3), (1, 7), (7, 1)].iter().enumerate() {
        run_conv(400 + i as u64, k, 1, true, true);
        run_conv(500 + i as u64, k, 2, false, true);
    }
}

/// A 3×3 conv, stride 1, SAME padding (one pixel), of `batch` `h`×`w`
/// images from `in_c` to `out_c` channels, unsliced, no activation.
fn same_3x3(batch: u32, (h, w): (u32, u32), (in_c, out_c): (u32, u32)) -> ConvParams {
    ConvParams {
        batch,
        in_h: h,
        in_w: w,
        in_c,
        out_h: h,
        out_w: w,
        out_c,
        m: batch * h * w,
        kernel_h: 3,
        kernel_w: 3,
        stride_h: 1,
        stride_w: 1,
        pad_top: 1,
        pad_left: 1,
        in_stride: in_c,
        out_stride: out_c,
        ..Default::default()
    }
}

/// The subgroup tiles' edges: an odd number of input channel quads (more
/// than two steps of eight channels), output quads neither a multiple of the
/// tile nor within one (17 against 8, 16 and 32), and a pixel count that is
/// not a multiple of any workgroup's pixels, with channel slices.
#[test]
fn conv_register_tile_edges() {
    let mut rng = rng(9);
    let p = ConvParams {
        in_stride: 84,
        in_offset: 4,
        out_stride: 76,
        out_offset: 8,
        activation: 1,
        ..same_3x3(3, (7, 5), (76, 68))
    };
    check_conv(&p, &mut rng);
}

/// A batch so large that the pixel groups of every register tile the device
/// runs pass its limit of workgroups per dimension (as Inception's first convs do
/// at lavapipe's batch of 24): the grid folds into z and the register tiles
/// still run, rather than falling back to the workgroup-memory tiles, and
/// agree with the reference.
#[test]
fn conv_register_tiles_past_the_grid_limit() {
    let gpu = &gpu().0;
    let max_groups = gpu.limits.max_compute_workgroups_per_dimension;
    // The subgroup tiles cover the most pixels per workgroup: 4 rows × 8 invocations.
    let (h, w) = (37, 29);
    let batch = (32 * max_groups as u64).div_ceil((h * w) as u64) as u32 + 1;
    let p = ConvParams {
        kernel_h: 1,
        kernel_w: 1,
        pad_top: 0,
        pad_left: 0,
        activation: 1,
        ..same_3x3(batch, (h, w), (4, 4))
    };
    let mut rng = rng(13);
    // The device's own kernels: the fold is the same whatever the operands are read from.
    let set = &kernel_sets()[0];
    let register_tiles = ConvVariant::CANDIDATES
        .into_iter()
        .filter(|&v| v != ConvVariant::Tiled);
    for variant in register_tiles {
        let on_device = match variant {
            ConvVariant::Subgroup { group, .. } => gpu.whole_subgroups_of_8(group),
            _ => true,
        };
        assert_eq!(variant.fits(&p, gpu), on_device, "{variant:?}");
        if on_device {
            let grid = variant.grid(&p, max_groups);
            assert!(grid[2] > 1, "{variant:?} does not fold: {grid:?}");
            check_conv_variant(&p, variant, set, &mut rng);
        }
    }
}

/// Timed runs (the benches' GpuTimer) get a start and an end whether their
/// first dispatch copies into textures or not, and with no dispatch at all.
#[test]
fn timed_runs_with_and_without_texture_copies() {
    let gpu = &gpu().0;
    let Some(timer) = GpuTimer::new(gpu, 3) else {
        assert_ne!(
            gpu.info.driver, "llvmpipe",
            "lavapipe has timestamp queries"
        );
        return;
    };
    let mut rng = rng(11);
    let p = same_3x3(1, (9, 9), (32, 32));
    let input = upload(gpu, &random_vec(&mut rng, 81 * 32));
    let weights = upload(gpu, &random_vec(&mut rng, 9 * 32 * 32));
    let bias = upload(gpu, &random_vec(&mut rng, 32));
    let output = poisoned(gpu, 81 * 32);
    let variant = ConvVariant::CANDIDATES[1];
    let convs: Vec<_> = kernel_sets()
        .iter()
        .filter(|s| !s.half)
        .map(|s| {
            s.kernels
                .conv2d(gpu, &p, variant, &input, (&weights, &bias), &output, None)
        })
        .collect();
    for conv in &convs {
        let times = timer.time(gpu, &[&[conv, conv], &[]]).unwrap();
        let textures = conv.copies_into_textures();
        assert!(
            times[0] > 0.0 && times[0] < 10.0,
            "textures {textures}: {times:?}"
        );
        assert!((0.0..10.0).contains(&times[1]), "an empty run: {times:?}");
    }
}

#[test]
fn conv_larger_than_one_tile() {
    // Several 64×64 tiles in both directions and a K that spans many slices.
    let mut rng = rng(7);
    let p = ConvParams {
        out_stride: 160,
        out_offset: 5,
        activation: 1,
        ..same_3x3(2, (17, 13), (70, 150))
    };
    check_conv(&p, &mut rng);
}

/// A random pool against the CPU reference; even seeds get channels, strides
/// and offsets aligned to 4 (the kernel's vec4 path, read through a texture
/// where the kernels read textures), odd seeds do not.
fn run_pool(seed: u64, kind: PoolKind, window: u32, stride: u32, same: bool) {
    for set in kernel_sets().iter().filter(|s| !s.half) {
        run_pool_with(set, seed, kind, window, stride, same);
    }
}

fn run_pool_with(set: &KernelSet, seed: u64, kind: PoolKind, window: u32, stride: u32, same: bool) {
    let (gpu, kernels) = (&gpu().0, set.kernels);
    let mut rng = rng(seed);
    let align = |v: u32| {
        if seed.is_multiple_of(2) {
            v.next_multiple_of(4)
        } else {
            v
        }
    };
    let batch = rng.random_range(1..=3);
    let in_h = rng.random_range(window..16);
    let in_w = rng.random_range(window..16);
    let channels = align(rng.random_range(1..50));
    let pad = if same { (window - 1) / 2 } else { 0 };
    let in_offset = align(rng.random_range(0..4));
    let out_offset = align(rng.random_range(0..4));
    let p = PoolParams {
        batch,
        in_h,
        in_w,
        channels,
        out_h: out_size(in_h, window, stride, 2 * pad),
        out_w: out_size(in_w, window, stride, 2 * pad),
        window_h: window,
        window_w: window,
        stride_h: stride,
        stride_w: stride,
        pad_top: pad,
        pad_left: pad,
        in_stride: in_offset + channels + align(rng.random_range(0..4)),
        in_offset,
        out_stride: out_offset + channels + align(rng.random_range(0..4)),
        out_offset,
    };
    let input = random_vec(&mut rng, (batch * in_h * in_w * p.in_stride) as usize);
    let out_len = (batch * p.out_h * p.out_w * p.out_stride) as usize;
    let mut expected = vec![POISON; out_len];
    cpu_reference::pool(kind, &p, &input, &mut expected);
    let output = poisoned(gpu, out_len);
    let bi = upload(gpu, &input);
    let pool = kernels.pool(gpu, kind, &p, &bi, &output);
    submit(gpu, &[&pool]);
    let textures = pool.copies_into_textures();
    assert_close(
        &download(gpu, &output, out_len),
        &expected,
        1e-6,
        &format!("{kind:?} pool, textures: {textures} {p:?}"),
    );
    assert_eq!(textures, set.textures && seed.is_multiple_of(2), "{p:?}");
}

#[test]
fn max_pool_3x3_stride_2_valid() {
    for seed in 0..4 {
        run_pool(600 + seed, PoolKind::Max, 3, 2, false);
    }
}

#[test]
fn avg_pool_3x3_same_counting_padding_like_pytorch() {
    for seed in 0..4 {
        run_pool(750 + seed, PoolKind::AverageCountingPadding, 3, 1, true);
    }
}

#[test]
fn avg_pool_3x3_same_excludes_padding() {
    for seed in 0..4 {
        run_pool(700 + seed, PoolKind::Average, 3, 1, true);
    }
}

#[test]
fn avg_pool_corner_divides_by_four() {
    // A hand-checked case: 2×2 input of ones and a 10 in one corner.
    let (gpu, kernels) = gpu();
    let input = [10.0f32, 1.0, 1.0, 1.0];
    let p = PoolParams {
        batch: 1,
        in_h: 2,
        in_w: 2,
        channels: 1,
        out_h: 2,
        out_w: 2,
        window_h: 3,
        window_w: 3,
        stride_h: 1,
        stride_w: 1,
        pad_top: 1,
        pad_left: 1,
        in_stride: 1,
        in_offset: 0,
        out_stride: 1,
        out_offset: 0,
    };
    let output = poisoned(gpu, 4);
    let bi = upload(gpu, &input);
    submit(
        gpu,
        &[&kernels.pool(gpu, PoolKind::Average, &p, &bi, &output)],
    );
    assert_eq!(download(gpu, &output, 4), vec![13.0 / 4.0; 4]);
}

#[test]
fn global_avg_pool_matches_reference() {
    let (gpu, kernels) = gpu();
    let mut rng = rng(800);
    for _ in 0..3 {
        let p = GlobalPoolParams {
            batch: rng.random_range(1..5),
            height: rng.random_range(1..10),
            width: rng.random_range(1..10),
            channels: rng.random_range(1..600),
        };
        let input = random_vec(
            &mut rng,
            (p.batch * p.height * p.width * p.channels) as usize,
        );
        let expected = cpu_reference::global_avg_pool(&p, &input);
        let output = poisoned(gpu, expected.len());
        let bi = upload(gpu, &input);
        submit(gpu, &[&kernels.global_avg_pool(gpu, &p, &bi, &output)]);
        assert_close(
            &download(gpu, &output, expected.len()),
            &expected,
            1e-6,
            "global avg pool",
        );
    }
}

/// Preprocesses a random image of `src` into slot 1 of a poisoned 2-slot
/// input on the GPU, checks it against the CPU reference, and returns slot 1.
fn run_preprocess(seed: u64, src: (u32, u32), out: (u32, u32), d: &Distortion) -> Vec<f32> {
    let (gpu, kernels) = gpu();
    let mut rng = rng(seed);
    let src_offset = rng.random_range(0..7);
    let pixels: Vec<u8> = (0..src_offset + src.0 * src.1 * 3)
        .map(|_| rng.random())
        .collect();
    let slots = 2;
    let n = Normalization {
        name: "test".into(),
        scale: [1.0 / 127.5, 1.0 / 255.0, 0.017],
        offset: [-1.0, 0.0, -2.1],
    };
    let p = preprocess_params(d, src, src_offset, 1, out, &n);
    let out_len = (slots * out.0 * out.1 * 3) as usize;
    let mut expected = vec![POISON; out_len];
    cpu_reference::preprocess(&p, &pixels, &mut expected);
    let output = poisoned(gpu, out_len);
    let bp = gpu.storage_buffer_with("pixels", &pixels);
    submit(gpu, &[&kernels.preprocess(gpu, &p, &bp, &output)]);
    let actual = download(gpu, &output, out_len);
    // Values are within ±2.6, so 4e-5 of the largest is about 1e-4 normalised units.
    assert_close(
        &actual,
        &expected,
        4e-5,
        &format!("preprocess {src:?} -> {out:?}, {d:?}"),
    );
    actual[out_len / 2..].to_vec()
}

fn plain(seed: u64, src: (u32, u32), out: (u32, u32)) -> Vec<f32> {
    run_preprocess(seed, src, out, &Distortion::none(out))
}

#[test]
fn preprocess_resizes_like_tensorflow() {
    plain(900, (37, 53), (20, 17)); // downscale
    plain(901, (11, 9), (30, 41)); // upscale
    plain(902, (64, 10), (31, 31)); // mixed
}

#[test]
fn preprocess_passes_same_size_through() {
    plain(903, (23, 29), (23, 29));
}

#[test]
fn distortions_match_the_cpu_reference_and_their_meaning() {
    let (src, out) = ((41, 57), (19, 23));
    let base = Distortion::none(out);
    fn at(img: &[f32], w: u32, y: u32, x: u32) -> &[f32] {
        &img[((y * w + x) * 3) as usize..][..3]
    }

    // No-op: identical to the plain resize.
    assert_eq!(run_preprocess(910, src, out, &base), plain(910, src, out));

    // Crop only: a window of the image resized to the larger size.
    let crop = Distortion {
        resize: (25, 30),
        crop: (4, 6),
        ..base
    };
    let cropped = run_preprocess(911, src, out, &crop);
    let large = plain(911, src, (25, 30));
    for y in 0..out.0 {
        for x in 0..out.1 {
            assert_eq!(at(&cropped, out.1, y, x), at(&large, 30, y + 4, x + 6));
        }
    }

    // Scale only (a resize to a larger size, window at the origin).
    run_preprocess(
        912,
        src,
        out,
        &Distortion {
            resize: (31, 29),
            ..base
        },
    );

    // Flip: the plain image mirrored left-right.
    let flipped = run_preprocess(913, src, out, &Distortion { flip: true, ..base });
    let unflipped = plain(913, src, out);
    for y in 0..out.0 {
        for x in 0..out.1 {
            assert_eq!(
                at(&flipped, out.1, y, x),
                at(&unflipped, out.1, y, out.1 - 1 - x)
            );
        }
    }

    // Brightness: the pixel values (before normalisation) scaled.
    let bright = run_preprocess(
        914,
        src,
        out,
        &Distortion {
            brightness: 1.3,
            ..base
        },
    );
    let n = [(1.0 / 127.5, -1.0), (1.0 / 255.0, 0.0), (0.017, -2.1)];
    for (i, (&b, &p)) in bright.iter().zip(&plain(914, src, out)).enumerate() {
        let (scale, offset) = n[i % 3];
        let expect = ((p - offset) / scale * 1.3) * scale + offset;
        assert!((b - expect).abs() < 1e-4, "{i}: {b} vs {expect}");
    }

    // All together.
    let all = Distortion {
        resize: (27, 35),
        crop: (5, 9),
        flip: true,
        brightness: 0.8,
    };
    run_preprocess(915, src, out, &all);
}
