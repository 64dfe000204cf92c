//! Fine-tuning's GPU side. Each training kernel against its f64 CPU
//! reference on random shapes and random data. Gradient kernels add into their output, so it starts from
//! random values where the kernel writes and poison (a NaN) in the channels
//! around its slice, which must come back untouched; kernels that overwrite
//! start from poison everywhere.
//!
//! Then the whole fine-tuning step of a small Inception-style network (a
//! mixed block with every branch kind, a reduction block with a strided conv
//! and a max pool into the concatenation, the global pool, the classifier),
//! random weights and small channel counts: the CPU reference's gradients
//! against central finite differences in f64, the GPU's against the
//! reference (as two micro-batches), and one optimiser step against the
//! reference's. One file, so that they share one GPU and one test binary.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::Rng;
use retrain::cpu_reference::backward as reference;
use retrain::cpu_reference::backward::optimizer_step;
use retrain::cpu_reference::network::{loss_and_gradients, Parameters};
use retrain::fine_tune::blocks::TrainableBlocks;
use retrain::fine_tune::network::{TrainableNetwork, HEAD_BIASES, HEAD_WEIGHTS};
use retrain::fine_tune::settings::{FineTuneSettings, Rule};
use retrain::fine_tune::step::{Pass, StepPlan};
use retrain::gpu::backward::{
    input_grad_conv, optimizer_uniform, padded, BackwardKernels, ClassifierBuffers,
    OptimizerBuffers,
};
use retrain::gpu::conv_variant::ConvVariant;
use retrain::gpu::kernels::{submit, PoolKind};
use retrain::gpu::params::{
    ActivationGradParams, ClassifierTrainParams, ConvParams, GlobalPoolParams, OptimizerParams,
    PoolParams,
};
use retrain::gpu::Gpu;
use retrain::model::graph::{Graph, Padding::*, PoolOp};
use retrain::model::weights::{self, ModelInfo, Normalization, Tensor, WeightFile};
use retrain::train::standardize::{Standardization, StandardizedHead};
use std::collections::BTreeMap;
use std::sync::OnceLock;

fn backward() -> &'static BackwardKernels {
    static KERNELS: OnceLock<BackwardKernels> = OnceLock::new();
    KERNELS.get_or_init(|| BackwardKernels::new(&gpu().0))
}

/// The conv gradient kernels with (where the device has subgroups) and
/// without conv2d_backward_subgroup.wgsl.
fn conv_backward(subgroups: bool) -> &'static BackwardKernels {
    static KERNELS: [OnceLock<BackwardKernels>; 2] = [OnceLock::new(), OnceLock::new()];
    KERNELS[subgroups as usize]
        .get_or_init(|| BackwardKernels::with_subgroup_convs(&gpu().0, subgroups))
}

fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// A buffer of `rows` pixels `stride` channels wide: random in channels
/// `offset..offset + channels`, poison elsewhere.
fn sliced(rng: &mut StdRng, rows: u32, stride: u32, offset: u32, channels: u32) -> Vec<f32> {
    let mut v = vec![POISON; (rows * stride) as usize];
    for r in 0..rows {
        for c in offset..offset + channels {
            v[(r * stride + c) as usize] = rng.random_range(-1.0..1.0);
        }
    }
    v
}

/// The reference's result where `start` had values, poison where it had poison.
fn keep_poison(start: &[f32], reference: &[f64]) -> Vec<f32> {
    start
        .iter()
        .zip(reference)
        .map(|(&s, &r)| if s.is_nan() { POISON } else { r as f32 })
        .collect()
}

/// Runs `dispatches` and checks `buffer` against `expected` (poison where it must stay).
fn check(
    gpu: &Gpu,
    dispatches: &[&retrain::gpu::kernels::Dispatch],
    buffer: &wgpu::Buffer,
    expected: &[f32],
    what: &str,
) {
    submit(gpu, dispatches);
    let actual = download(gpu, buffer, expected.len());
    assert_close(&actual, expected, 1e-4, what);
}

/// Output size along one axis: input, window, stride and padding before and after.
fn out_size(input: u32, k: u32, stride: u32, before: u32, after: u32) -> u32 {
    (input + before + after - k) / stride + 1
}

/// A random conv of `kernel` and `stride`, padded (a random TensorFlow-like
/// split) or not, reading and writing channel slices; with `aligned`, every
/// channel count, stride and offset a multiple of 4 (the vec4 kernels).
fn random_conv(
    rng: &mut StdRng,
    kernel: (u32, u32),
    stride: u32,
    padded: bool,
    aligned: bool,
) -> ConvParams {
    let a = |v: u32| if aligned { 4 * v } else { v };
    let (kh, kw) = kernel;
    let pads = |rng: &mut StdRng, k: u32| match padded {
        true => (rng.random_range(0..k), rng.random_range(0..k)),
        false => (0, 0),
    };
    let ((top, bottom), (left, right)) = (pads(rng, kh), pads(rng, kw));
    let batch = rng.random_range(1..=3);
    let in_h = rng.random_range(kh.max(2)..12);
    let in_w = rng.random_range(kw.max(2)..12);
    let in_c = a(rng.random_range(1..24));
    let out_c = a(rng.random_range(1..24));
    let (out_h, out_w) = (
        out_size(in_h, kh, stride, top, bottom),
        out_size(in_w, kw, stride, left, right),
    );
    let in_offset = a(rng.random_range(0..5));
    let out_offset = a(rng.random_range(0..5));
    ConvParams {
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
        pad_top: top,
        pad_left: left,
        in_stride: in_offset + in_c + a(rng.random_range(0..5)),
        in_offset,
        out_stride: out_offset + out_c + a(rng.random_range(0..5)),
        out_offset,
        ..Default::default()
    }
}

fn check_conv(seed: u64, kernel: (u32, u32), stride: u32, padded: bool, aligned: bool) {
    let p = random_conv(&mut rng(seed), kernel, stride, padded, aligned);
    let what = format!("conv {kernel:?} stride {stride} padded {padded} aligned {aligned}");
    check_conv_params(&p, seed, &what);
}

/// Conv `p`'s gradients on random data (from `seed`) against the reference,
/// with and without the subgroup kernels.
fn check_conv_params(p: &ConvParams, seed: u64, what: &str) {
    for subgroups in [false, true] {
        check_conv_with(conv_backward(subgroups), p, &mut rng(seed), what);
    }
}

fn check_conv_with(kernels: &BackwardKernels, p: &ConvParams, rng: &mut StdRng, what: &str) {
    let gpu = &gpu().0;
    let in_pixels = p.batch * p.in_h * p.in_w;
    let input = sliced(rng, in_pixels, p.in_stride, p.in_offset, p.in_c);
    let grad_out = sliced(rng, p.m, p.out_stride, p.out_offset, p.out_c);
    let weights = random_vec(rng, (p.kernel_h * p.kernel_w * p.in_c * p.out_c) as usize);
    let grad_in = sliced(rng, in_pixels, p.in_stride, p.in_offset, p.in_c);
    let grad_w = random_vec(rng, weights.len());
    let grad_b = random_vec(rng, p.out_c as usize);

    let mut expected_in = to_f64(&grad_in);
    reference::conv_input_grad(p, &to_f64(&grad_out), &to_f64(&weights), &mut expected_in);
    let (mut expected_w, mut expected_b) = (to_f64(&grad_w), to_f64(&grad_b));
    reference::conv_parameter_grads(
        p,
        &to_f64(&input),
        &to_f64(&grad_out),
        &mut expected_w,
        &mut expected_b,
    );

    let (bin, bgo, bw) = (
        upload(gpu, &input),
        upload(gpu, &grad_out),
        upload(gpu, &weights),
    );
    let (bgw, bgb) = (upload(gpu, &grad_w), upload(gpu, &grad_b));
    let what = format!(
        "{what}, subgroup kernels {}: {p:?}",
        kernels.has_subgroup_convs()
    );
    // Its own kernels, then (stride 1) each forward conv variant.
    let mut input_grad_kernels = vec![None];
    if input_grad_conv(p).is_some() {
        let forward = &common::gpu().1;
        input_grad_kernels.extend(ConvVariant::CANDIDATES.map(|v| Some((forward, v))));
    }
    let mut input_dispatches = vec![];
    for forward in input_grad_kernels {
        let bgi = upload(gpu, &grad_in);
        let transposed = poisoned(gpu, weights.len());
        let [t, d] = kernels.conv_input_grad(gpu, p, &bgo, (&bw, &transposed), &bgi, forward);
        let through = forward.map_or("its own kernels".into(), |(_, v)| format!("{v:?}"));
        check(
            gpu,
            &[&t, &d],
            &bgi,
            &keep_poison(&grad_in, &expected_in),
            &format!("input grad of {what} through {through}"),
        );
        input_dispatches.push([t, d]);
    }
    let [t, d] = &input_dispatches[0];
    let [dw, db] = kernels.conv_parameter_grads(gpu, p, &bin, &bgo, (&bgw, &bgb));
    // The subgroup kernels read their operands through textures, and only they do.
    let aligned = [
        p.in_c,
        p.in_stride,
        p.in_offset,
        p.out_c,
        p.out_stride,
        p.out_offset,
    ]
    .iter()
    .all(|v| v % 4 == 0);
    let subgroup = kernels.has_subgroup_convs() && aligned;
    for (dispatch, textures) in [(t, false), (d, subgroup), (&dw, subgroup), (&db, false)] {
        assert_eq!(dispatch.copies_into_textures(), textures, "{what}");
    }
    check(
        gpu,
        &[&dw],
        &bgw,
        &to_f32(&expected_w),
        &format!("weight grad of {what}"),
    );
    check(
        gpu,
        &[&db],
        &bgb,
        &to_f32(&expected_b),
        &format!("bias grad of {what}"),
    );
}

/// Every conv shape Inception V3's blocks contain, stride 1 and 2, SAME and VALID.
#[test]
fn conv_gradients_match_the_reference() {
    // lavapipe's subgroups are 8 wide: there the subgroup kernels must really run.
    let device = &gpu().0;
    if device.info.driver == "llvmpipe" {
        assert!(conv_backward(true).has_subgroup_convs());
    }
    let shapes = [(1, 1), (3, 3), (1, 3), (3, 1), (1, 7), (7, 1), (5, 5)];
    let mut seed = 0;
    for kernel in shapes {
        for stride in [1, 2] {
            for padded in [false, true] {
                // Unaligned channels run the scalar kernels, aligned ones the
                // vec4 kernels and (where the device has subgroups) the subgroup ones.
                for aligned in [false, true] {
                    seed += 1;
                    check_conv(seed, kernel, stride, padded, aligned);
                }
            }
        }
        // Input side aligned, output side not: the forward kernels that run a
        // stride-1 input gradient then read its output gradient one f32 at a time.
        seed += 1;
        let mut rng = rng(seed);
        let mut p = random_conv(&mut rng, kernel, 1, true, true);
        p.out_c = 4 * rng.random_range(1..6) + rng.random_range(1..4);
        p.out_offset = rng.random_range(0..5);
        p.out_stride = p.out_offset + p.out_c + rng.random_range(0..5);
        check_conv_params(&p, seed, &format!("conv {kernel:?} unaligned output"));
    }
}

/// The subgroup kernels' edges: input channel quads more than one
/// workgroup's (19 against 16) and odd, output quads more than one block
/// (17 against 16) and odd, pixels not a multiple of a workgroup's, channel
/// slices; stride 1 padded and stride 2 valid.
#[test]
fn conv_gradients_at_the_tile_edges() {
    for (stride, pad) in [(1, 1), (2, 0)] {
        let (in_h, in_w, out_c) = (9, 7, 68);
        let out_h = (in_h + 2 * pad - 3) / stride + 1;
        let out_w = (in_w + 2 * pad - 3) / stride + 1;
        let p = ConvParams {
            batch: 3,
            in_h,
            in_w,
            in_c: 76,
            out_h,
            out_w,
            out_c,
            m: 3 * out_h * out_w,
            kernel_h: 3,
            kernel_w: 3,
            stride_h: stride,
            stride_w: stride,
            pad_top: pad,
            pad_left: pad,
            in_stride: 84,
            in_offset: 4,
            out_stride: 76,
            out_offset: 8,
            ..Default::default()
        };
        check_conv_params(
            &p,
            40 + stride as u64,
            &format!("tile edges, stride {stride}"),
        );
    }
}

#[test]
fn activation_gradients_match_the_reference() {
    for seed in 0..6 {
        let mut rng = rng(100 + seed);
        let channels = rng.random_range(1..40);
        let offset = rng.random_range(0..5);
        let p = ActivationGradParams {
            rows: rng.random_range(1..200),
            channels,
            stride: offset + channels + rng.random_range(0..5),
            offset,
            activation: (seed % 3) as u32,
            ..Default::default()
        };
        check_activation(&p, &mut rng);
    }
}

/// A gradient longer than one row of the grid (256-wide workgroups, at most
/// the device's limit per dimension): the linear kernels' grids fold into
/// two dimensions, and every element must still be reached once.
#[test]
fn activation_gradient_past_the_grid_limit() {
    let max_groups = gpu().0.limits.max_compute_workgroups_per_dimension as u64;
    let channels = 64;
    let rows = u32::try_from((256 * max_groups).div_ceil(channels as u64) + 7)
        .expect("a device whose grid rows this test can pass with one buffer");
    let p = ActivationGradParams {
        rows,
        channels,
        stride: channels,
        offset: 0,
        activation: 1,
        ..Default::default()
    };
    check_activation(&p, &mut rng(106));
}

/// Runs activation_backward.wgsl over random outputs and gradients.
fn check_activation(p: &ActivationGradParams, rng: &mut StdRng) {
    let gpu = &gpu().0;
    // Outputs in [-2, 8): ReLU6's zero, linear and saturated parts all occur.
    let mut output = sliced(rng, p.rows, p.stride, p.offset, p.channels);
    output.iter_mut().for_each(|v| *v = *v * 5.0 + 3.0);
    let grad = sliced(rng, p.rows, p.stride, p.offset, p.channels);
    let mut expected = to_f64(&grad);
    reference::activation_grad(p, &to_f64(&output), &mut expected);
    let (bo, bg) = (upload(gpu, &output), upload(gpu, &grad));
    let d = backward().activation_grad(gpu, p, &bo, &bg);
    check(
        gpu,
        &[&d],
        &bg,
        &keep_poison(&grad, &expected),
        &format!("{p:?}"),
    );
}

fn check_pool(seed: u64, kind: PoolKind, window: u32, stride: u32, padded: bool) {
    let gpu = &gpu().0;
    let mut rng = rng(seed);
    let pad = |rng: &mut StdRng| {
        if padded {
            rng.random_range(0..window)
        } else {
            0
        }
    };
    let (top, bottom, left, right) = (pad(&mut rng), pad(&mut rng), pad(&mut rng), pad(&mut rng));
    let batch = rng.random_range(1..=3);
    let in_h = rng.random_range(window..14);
    let in_w = rng.random_range(window..14);
    let channels = rng.random_range(1..20);
    let in_offset = rng.random_range(0..4);
    let out_offset = rng.random_range(0..4);
    let p = PoolParams {
        batch,
        in_h,
        in_w,
        channels,
        out_h: out_size(in_h, window, stride, top, bottom),
        out_w: out_size(in_w, window, stride, left, right),
        window_h: window,
        window_w: window,
        stride_h: stride,
        stride_w: stride,
        pad_top: top,
        pad_left: left,
        in_stride: in_offset + channels + rng.random_range(0..4),
        in_offset,
        out_stride: out_offset + channels + rng.random_range(0..4),
        out_offset,
    };
    let in_pixels = batch * in_h * in_w;
    let input = sliced(&mut rng, in_pixels, p.in_stride, in_offset, channels);
    let grad_out = sliced(
        &mut rng,
        batch * p.out_h * p.out_w,
        p.out_stride,
        out_offset,
        channels,
    );
    let grad_in = sliced(&mut rng, in_pixels, p.in_stride, in_offset, channels);
    let mut expected = to_f64(&grad_in);
    reference::pool_grad(kind, &p, &to_f64(&input), &to_f64(&grad_out), &mut expected);
    let (bi, bgo, bgi) = (
        upload(gpu, &input),
        upload(gpu, &grad_out),
        upload(gpu, &grad_in),
    );
    let d = backward().pool_grad(gpu, kind, &p, &bi, &bgo, &bgi);
    let what = format!("{kind:?} pool {window}x{window} stride {stride}: {p:?}");
    check(gpu, &[&d], &bgi, &keep_poison(&grad_in, &expected), &what);
}

#[test]
fn pool_gradients_match_the_reference() {
    let mut seed = 200;
    for kind in [
        PoolKind::Max,
        PoolKind::Average,
        PoolKind::AverageCountingPadding,
    ] {
        for (window, stride) in [(3, 1), (3, 2), (2, 2)] {
            for padded in [false, true] {
                seed += 1;
                check_pool(seed, kind, window, stride, padded);
            }
        }
    }
}

#[test]
fn global_pool_gradient_matches_the_reference() {
    let gpu = &gpu().0;
    let mut rng = rng(300);
    // The gradient adds into what the input's gradient holds (random here).
    for _ in 0..6 {
        let p = GlobalPoolParams {
            batch: rng.random_range(1..5),
            height: rng.random_range(1..9),
            width: rng.random_range(1..9),
            channels: rng.random_range(1..60),
        };
        let grad_out = random_vec(&mut rng, (p.batch * p.channels) as usize);
        let grad_in = random_vec(
            &mut rng,
            (p.batch * p.height * p.width * p.channels) as usize,
        );
        let mut expected = to_f64(&grad_in);
        reference::global_avg_pool_grad(&p, &to_f64(&grad_out), &mut expected);
        let (bgo, bgi) = (upload(gpu, &grad_out), upload(gpu, &grad_in));
        let d = backward().global_avg_pool_grad(gpu, &p, &bgo, &bgi);
        check(
            gpu,
            &[&d],
            &bgi,
            &to_f32(&expected),
            &format!("global pool gradient {p:?}"),
        );
    }
}

#[test]
fn classifier_pass_matches_the_reference() {
    let gpu = &gpu().0;
    // Seeds 0 and 1 without dropout, 2 to 4 with (each mask drawn anew).
    for seed in 0..5 {
        let mut rng = rng(400 + seed);
        let (rows, dim, classes) = (
            rng.random_range(1..20),
            rng.random_range(1..70),
            rng.random_range(2..6),
        );
        let mut p = ClassifierTrainParams::new(rows, dim, classes, 1.0 / (rows + 3) as f32);
        if seed >= 2 {
            p = p.with_dropout(rng.random_range(0.1..0.6), rng.random());
        }
        let features = random_vec(&mut rng, (rows * dim) as usize);
        let weights = random_vec(&mut rng, (dim * classes) as usize);
        let biases = random_vec(&mut rng, classes as usize);
        let labels: Vec<u32> = (0..rows).map(|_| rng.random_range(0..classes)).collect();
        let grad_w = random_vec(&mut rng, weights.len());
        let grad_b = random_vec(&mut rng, biases.len());
        // A standardisation with a constant dimension or two (inv_std 0).
        let mean = random_vec(&mut rng, dim as usize);
        let inv_std: Vec<f32> = (0..dim)
            .map(|_| match rng.random_bool(0.1) {
                true => 0.0,
                false => rng.random_range(0.2..3.0),
            })
            .collect();
        let f64s = |v: &[f32]| to_f64(v);
        let expected = reference::classifier(
            &p,
            &f64s(&features),
            (&f64s(&weights), &f64s(&biases)),
            (&f64s(&mean), &f64s(&inv_std)),
            &labels,
        );
        let add = |start: &[f32], grad: &[f64]| -> Vec<f32> {
            start
                .iter()
                .zip(grad)
                .map(|(&s, &g)| (s as f64 + g) as f32)
                .collect()
        };
        let b = [&features, &weights, &biases].map(|v| upload(gpu, v));
        let labels_buffer = gpu.storage_buffer_with("labels", bytemuck::cast_slice(&labels));
        let probabilities = poisoned(gpu, (rows * classes) as usize);
        let losses = poisoned(gpu, rows as usize);
        let (bgw, bgb) = (upload(gpu, &grad_w), upload(gpu, &grad_b));
        let grad_features = poisoned(gpu, features.len());
        let uniform = gpu.uniform_buffer("classifier params", &p);
        let standardize = upload(gpu, &[&mean[..], &inv_std[..]].concat());
        let buffers = ClassifierBuffers {
            standardize: &standardize,
            features: &b[0],
            weights: &b[1],
            biases: &b[2],
            labels: &labels_buffer,
            probabilities: &probabilities,
            losses: &losses,
            grad_weights: &bgw,
            grad_biases: &bgb,
            grad_features: &grad_features,
        };
        let [forward, weight_grads, feature_grads] =
            backward().classifier(gpu, (&p, &uniform), &buffers);
        submit(gpu, &[&forward, &weight_grads, &feature_grads]);
        let pairs = [
            (
                &probabilities,
                to_f32(&expected.probabilities),
                "probabilities",
            ),
            (&losses, to_f32(&expected.losses), "losses"),
            (
                &bgw,
                add(&grad_w, &expected.grad_weights),
                "weight gradients",
            ),
            (&bgb, add(&grad_b, &expected.grad_biases), "bias gradients"),
            (
                &grad_features,
                to_f32(&expected.grad_features),
                "feature gradients",
            ),
        ];
        for (buffer, want, what) in pairs {
            assert_close(&download(gpu, buffer, want.len()), &want, 1e-4, what);
        }
    }
}

#[test]
fn optimizer_steps_match_the_reference() {
    let gpu = &gpu().0;
    for rule in [0, 1] {
        let mut rng = rng(500 + rule as u64);
        let count = rng.random_range(1..3000);
        let p = OptimizerParams {
            count,
            rule,
            step_size: 0.01,
            decay: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            _pad: 0,
        };
        let state: Vec<Vec<f32>> = (0..4)
            .map(|_| random_vec(&mut rng, count as usize))
            .collect();
        // A second moment is never negative.
        let second: Vec<f32> = state[3].iter().map(|v| v.abs()).collect();
        let (mut w, mut g, mut m) = (to_f64(&state[0]), to_f64(&state[1]), to_f64(&state[2]));
        let mut v = to_f64(&second);
        reference::optimizer_step(&p, &mut w, &mut g, &mut m, &mut v);
        // The kernel reads whole vec4s: the buffers are padded with zeros,
        // which must stay zeros.
        let buffers = [&state[0], &state[1], &state[2], &second].map(|s| {
            let mut s = s.clone();
            s.resize(padded(s.len()), 0.0);
            upload(gpu, &s)
        });
        let uniform = optimizer_uniform(gpu);
        gpu.queue.write_buffer(&uniform, 0, bytemuck::bytes_of(&p));
        let b = OptimizerBuffers {
            parameters: &buffers[0],
            gradients: &buffers[1],
            first: &buffers[2],
            second: &buffers[3],
        };
        submit(
            gpu,
            &[&backward().optimizer(gpu, &uniform, count as u64, &b)],
        );
        for (buffer, want, what) in [
            (&buffers[0], &w, "parameters"),
            (&buffers[1], &g, "gradients (cleared)"),
            (&buffers[2], &m, "first moment"),
            (&buffers[3], &v, "second moment"),
        ] {
            let mut got = download(gpu, buffer, padded(want.len()));
            let padding = got.split_off(want.len());
            assert_close(&got, &to_f32(want), 1e-5, &format!("rule {rule}: {what}"));
            assert!(
                padding.iter().all(|&v| v == 0.0),
                "rule {rule}: {what}'s padding"
            );
        }
    }
}

const CLASSES: usize = 3;
const BATCH: u32 = 4;

/// stem (6×6×5) → mixed0 (a mixed block) → mixed1 (a reduction block) → pool.
fn small_inception() -> Graph {
    let mut g = Graph::default();
    let x = g.tensor(6, 6, 5);
    g.name("stem", x);
    let out = g.tensor(6, 6, 3 + 2 + 2 + 3 + 2);
    let [b1, b2a, b2b, bpool, bcut] = out.split([3, 2, 2, 3, 2]);
    g.conv_into("mixed0/branch1x1", x, b1, (1, 1), 1, Same)
        .unwrap();
    let t = g.conv("mixed0/branch3x3_1", x, 4, (1, 1), 1, Same).unwrap();
    g.conv_into("mixed0/branch3x3_2a", t, b2a, (1, 3), 1, Same)
        .unwrap();
    g.conv_into("mixed0/branch3x3_2b", t, b2b, (3, 1), 1, Same)
        .unwrap();
    let t = g.conv("mixed0/branch5x5_1", x, 3, (5, 5), 1, Same).unwrap();
    let t = g.conv("mixed0/branch7_1", t, 3, (1, 7), 1, Same).unwrap();
    let t = g.conv("mixed0/branch7_2", t, 3, (7, 1), 1, Same).unwrap();
    let t = g.pool(PoolOp::Average, t, 3, 1, Same).unwrap();
    g.conv_into("mixed0/branch_pool", t, bpool, (1, 1), 1, Same)
        .unwrap();
    // As mixed9's pool branch: a pool of the block's input, whose gradient
    // is not needed when the block is the first to train.
    let t = g.pool(PoolOp::Average, x, 3, 1, Same).unwrap();
    g.conv_into("mixed0/branch_input_pool", t, bcut, (1, 1), 1, Same)
        .unwrap();
    g.name("mixed0", out);
    let x = out;
    let red = g.tensor(2, 2, 4 + x.channels);
    let [b3, bmax] = red.split([4, x.channels]);
    g.conv_into("mixed1/branch3x3", x, b3, (3, 3), 2, Valid)
        .unwrap();
    g.pool_into(PoolOp::Max, x, bmax, 3, 2, Valid).unwrap();
    g.name("mixed1", red);
    let pooled = g.global_avg_pool(red);
    g.name("bottleneck", pooled);
    g
}

fn bottleneck_size(g: &Graph) -> usize {
    g.shape(g.named("bottleneck").unwrap()).channels as usize
}

fn random_parameters(g: &Graph, seed: u64) -> Parameters {
    let mut rng = rng(seed);
    let mut vec = |n: usize, scale: f64| -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    };
    let mut convs = BTreeMap::new();
    for l in g.weighted_layers() {
        let fan_in = l.weight_shape[..3].iter().product::<usize>() as f64;
        let w = vec(l.weight_shape.iter().product(), 1.5 / fan_in.sqrt());
        let b = vec(l.outputs, 0.3);
        convs.insert(l.name.to_string(), (w, b));
    }
    let dim = bottleneck_size(g);
    let head = (vec(dim * CLASSES, 1.0), vec(CLASSES, 0.3));
    Parameters { convs, head }
}

fn random_batch(g: &Graph, seed: u64) -> (Vec<f64>, Vec<u32>) {
    let mut rng = rng(seed);
    let n = g.shape(g.named("stem").unwrap()).elements() as usize * BATCH as usize;
    let input = (0..n).map(|_| rng.random_range(0.0..2.0)).collect();
    let labels = (0..BATCH)
        .map(|_| rng.random_range(0..CLASSES as u32))
        .collect();
    (input, labels)
}

fn trainable(g: &Graph) -> Graph {
    TrainableBlocks::new(g, "mixed0").unwrap().graph
}

/// Every parameter tensor as (name, values), the classifier's last.
fn flatten(p: &Parameters) -> Vec<(String, Vec<f64>)> {
    let mut out = Vec::new();
    for (name, (w, b)) in &p.convs {
        out.push((format!("{name}.weight"), w.clone()));
        out.push((format!("{name}.bias"), b.clone()));
    }
    out.push((HEAD_WEIGHTS.to_string(), p.head.0.clone()));
    out.push((HEAD_BIASES.to_string(), p.head.1.clone()));
    out
}

fn value_mut<'a>(p: &'a mut Parameters, name: &str) -> &'a mut Vec<f64> {
    match name {
        HEAD_WEIGHTS => &mut p.head.0,
        HEAD_BIASES => &mut p.head.1,
        _ => {
            let (layer, what) = name.rsplit_once('.').unwrap();
            let (w, b) = p.convs.get_mut(layer).unwrap();
            if what == "weight" {
                w
            } else {
                b
            }
        }
    }
}

#[test]
fn reference_gradients_match_finite_differences() {
    let g = trainable(&small_inception());
    let params = random_parameters(&g, 1);
    let (input, labels) = random_batch(&g, 2);
    let (_, grads) = loss_and_gradients(&g, BATCH, &input, &params, &labels);
    let eps = 1e-6;
    let mut checked = 0;
    for (name, analytic) in flatten(&grads) {
        let numeric: Vec<f64> = (0..analytic.len())
            .map(|i| {
                let loss_at = |delta: f64| {
                    let mut p = params.clone();
                    value_mut(&mut p, &name)[i] += delta;
                    loss_and_gradients(&g, BATCH, &input, &p, &labels).0
                };
                (loss_at(eps) - loss_at(-eps)) / (2.0 * eps)
            })
            .collect();
        let diff: f64 = analytic
            .iter()
            .zip(&numeric)
            .map(|(a, n)| (a - n).powi(2))
            .sum();
        let norm: f64 = numeric.iter().map(|n| n * n).sum();
        assert!(norm > 0.0, "{name}: no gradient reaches it");
        let err = (diff / norm).sqrt();
        assert!(
            err < 1e-6,
            "{name}: relative error {err:e} against finite differences"
        );
        checked += analytic.len();
    }
    assert!(checked > 1000, "{checked} parameters checked");
}

/// The small network as a weight file the fine-tuning network loads from.
fn weight_file(dir: &std::path::Path, params: &Parameters) -> WeightFile {
    let tensors: Vec<Tensor> = flatten(params)
        .into_iter()
        .filter(|(name, _)| name != HEAD_WEIGHTS && name != HEAD_BIASES)
        .map(|(name, values)| {
            let layer = name.rsplit_once('.').unwrap().0;
            let g = small_inception();
            let l = g.weighted_layers().find(|l| l.name == layer).unwrap();
            let shape = match name.ends_with(".weight") {
                true => l.weight_shape.clone(),
                false => vec![l.outputs],
            };
            Tensor {
                name,
                shape,
                data: values.iter().map(|&v| v as f32).collect(),
            }
        })
        .collect();
    let info = ModelInfo {
        architecture: "inception_v3".into(),
        source: "test".into(),
        input_height: 6,
        input_width: 6,
        bottleneck_size: bottleneck_size(&small_inception()) as u32,
        bottleneck_layer: "bottleneck".into(),
        normalization: Normalization::unit(),
        pytorch_padding: false,
        dtype: "f32".into(),
        fingerprint: String::new(),
    };
    let path = dir.join("small.safetensors");
    weights::write(&path, info, &tensors).unwrap();
    WeightFile::open(&path).unwrap()
}

fn settings(rule: Rule) -> FineTuneSettings {
    FineTuneSettings {
        from: "mixed0".into(),
        epochs: 1,
        learning_rate: 0.05,
        rule,
        weight_decay: 0.01,
        batch_size: BATCH,
        dropout: 0.0,
        patience: 0,
    }
}

fn as_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn parameter(net: &TrainableNetwork, name: &str, gradients: bool) -> Vec<f32> {
    let gpu = &gpu().0;
    let p = net.parameter(name);
    let buffer = if gradients { &p.gradients } else { &p.values };
    common::download(gpu, buffer, p.shape.iter().product())
}

/// The reference's head, on features the classifier does not standardise.
fn unstandardized_head(params: &Parameters) -> StandardizedHead {
    StandardizedHead {
        weights: as_f32(&params.head.0),
        biases: as_f32(&params.head.1),
        standardization: Standardization::identity(params.head.0.len() / params.head.1.len()),
    }
}

#[test]
fn the_head_trains_standardized_and_comes_back_folded() {
    let gpu = &gpu().0;
    let dir = tempfile::tempdir().unwrap();
    let network = small_inception();
    let g = trainable(&network);
    let params = random_parameters(&g, 5);
    let file = weight_file(dir.path(), &params);
    let mut rng = rng(900);
    let mut head = unstandardized_head(&params);
    let dim = head.standardization.mean.len();
    head.standardization = Standardization {
        mean: random_vec(&mut rng, dim),
        inv_std: (0..dim).map(|_| rng.random_range(0.2..3.0)).collect(),
    };
    let blocks = TrainableBlocks::new(&network, "mixed0").unwrap();
    let net = TrainableNetwork::new(gpu, blocks, &file, &head, &settings(Rule::Adam)).unwrap();
    // On the GPU: the standardised head and its standardisation.
    let on_gpu = |name| parameter(&net, name, false);
    assert_eq!(on_gpu(HEAD_WEIGHTS), head.weights);
    assert_eq!(on_gpu(HEAD_BIASES), head.biases);
    let s = &head.standardization;
    let standardize = common::download(gpu, &net.standardize, 2 * dim);
    assert_eq!(standardize, [&s.mean[..], &s.inv_std[..]].concat());
    // Downloaded: folded for raw features, as classify applies it.
    let (weights, biases) = s.fold(&head.weights, &head.biases);
    let tensors = net.download(gpu).unwrap();
    let downloaded = |name| &tensors.iter().find(|t| t.name == name).unwrap().data;
    assert_eq!(downloaded(HEAD_WEIGHTS), &weights);
    assert_eq!(downloaded(HEAD_BIASES), &biases);
}

#[test]
fn gpu_step_matches_the_reference() {
    let gpu = &gpu().0;
    let dir = tempfile::tempdir().unwrap();
    let network = small_inception();
    let g = trainable(&network);
    let params = random_parameters(&g, 3);
    let (input, labels) = random_batch(&g, 4);
    let (_, grads) = loss_and_gradients(&g, BATCH, &input, &params, &labels);
    let file = weight_file(dir.path(), &params);
    for rule in [Rule::Sgd { momentum: 0.9 }, Rule::Adam] {
        let blocks = TrainableBlocks::new(&network, "mixed0").unwrap();
        let s = settings(rule);
        let head = unstandardized_head(&params);
        let mut net = TrainableNetwork::new(gpu, blocks, &file, &head, &s).unwrap();
        // The batch as two micro-batches whose gradients add up.
        let half = BATCH / 2;
        let plan = StepPlan::new(gpu, &net, half, 1.0 / BATCH as f32);
        let per_image = input.len() / BATCH as usize;
        for m in 0..2 {
            let rows = (m * half) as usize..((m + 1) * half) as usize;
            let cut = as_f32(&input[rows.start * per_image..rows.end * per_image]);
            plan.load(gpu, &cut, &labels[rows]);
            // No dropout: the reference's classifier keeps every feature.
            let pass = Pass::Train {
                dropout: 0.0,
                seed: 7,
            };
            plan.run(gpu, pass).unwrap();
        }
        for (name, expected) in flatten(&grads) {
            let actual = parameter(&net, &name, true);
            assert_rel_l2(
                &format!("{rule:?} gradient of {name}"),
                &actual,
                &as_f32(&expected),
                1e-4,
            );
        }
        // One update, against the reference optimiser on the same gradients.
        net.update(gpu, s.learning_rate);
        for ((name, mut values), (_, mut gradient)) in
            flatten(&params).into_iter().zip(flatten(&grads))
        {
            let decays = name.ends_with(".weight") || name == HEAD_WEIGHTS;
            let adam = matches!(rule, Rule::Adam);
            let p = OptimizerParams {
                count: values.len() as u32,
                rule: adam as u32,
                // Adam's bias corrections at step 1: √(1 − β2) / (1 − β1).
                step_size: if adam {
                    s.learning_rate * (1.0f32 - 0.999).sqrt() / 0.1
                } else {
                    s.learning_rate
                },
                decay: if decays {
                    s.learning_rate * s.weight_decay
                } else {
                    0.0
                },
                beta1: s.beta1(),
                beta2: s.beta2(),
                epsilon: 1e-7,
                _pad: 0,
            };
            let (mut first, mut second) = (vec![0.0; values.len()], vec![0.0; values.len()]);
            optimizer_step(&p, &mut values, &mut gradient, &mut first, &mut second);
            let actual = parameter(&net, &name, false);
            assert_rel_l2(
                &format!("{rule:?} update of {name}"),
                &actual,
                &as_f32(&values),
                1e-5,
            );
            assert!(
                parameter(&net, &name, true).iter().all(|&g| g == 0.0),
                "{name}: gradients cleared"
            );
        }
    }
}
