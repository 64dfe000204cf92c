//! Each training kernel against its f64 CPU reference on random shapes and
//! random data. Gradient kernels add into their output, so it starts from
//! random values where the kernel writes and poison (a NaN) in the channels
//! around its slice, which must come back untouched; kernels that overwrite
//! start from poison everywhere.

mod common;

use common::*;
use rand::rngs::StdRng;
use rand::Rng;
use retrain::cpu_reference::backward as reference;
use retrain::gpu::backward::{
    optimizer_uniform, BackwardKernels, ClassifierBuffers, OptimizerBuffers,
};
use retrain::gpu::kernels::{submit, PoolKind};
use retrain::gpu::params::{
    ActivationGradParams, ClassifierTrainParams, ConvParams, GlobalPoolParams, OptimizerParams,
    PoolParams,
};
use retrain::gpu::Gpu;
use std::sync::OnceLock;

fn backward() -> &'static BackwardKernels {
    static KERNELS: OnceLock<BackwardKernels> = OnceLock::new();
    KERNELS.get_or_init(|| BackwardKernels::new(&gpu().0))
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
/// split) or not, reading and writing channel slices.
fn random_conv(rng: &mut StdRng, kernel: (u32, u32), stride: u32, padded: bool) -> ConvParams {
    let (kh, kw) = kernel;
    let pads = |rng: &mut StdRng, k: u32| match padded {
        true => (rng.random_range(0..k), rng.random_range(0..k)),
        false => (0, 0),
    };
    let ((top, bottom), (left, right)) = (pads(rng, kh), pads(rng, kw));
    let batch = rng.random_range(1..=3);
    let in_h = rng.random_range(kh.max(2)..12);
    let in_w = rng.random_range(kw.max(2)..12);
    let in_c = rng.random_range(1..24);
    let out_c = rng.random_range(1..24);
    let (out_h, out_w) = (
        out_size(in_h, kh, stride, top, bottom),
        out_size(in_w, kw, stride, left, right),
    );
    let in_offset = rng.random_range(0..5);
    let out_offset = rng.random_range(0..5);
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
        in_stride: in_offset + in_c + rng.random_range(0..5),
        in_offset,
        out_stride: out_offset + out_c + rng.random_range(0..5),
        out_offset,
        ..Default::default()
    }
}

fn check_conv(seed: u64, kernel: (u32, u32), stride: u32, padded: bool) {
    let gpu = &gpu().0;
    let mut rng = rng(seed);
    let p = random_conv(&mut rng, kernel, stride, padded);
    let in_pixels = p.batch * p.in_h * p.in_w;
    let input = sliced(&mut rng, in_pixels, p.in_stride, p.in_offset, p.in_c);
    let grad_out = sliced(&mut rng, p.m, p.out_stride, p.out_offset, p.out_c);
    let weights = random_vec(
        &mut rng,
        (p.kernel_h * p.kernel_w * p.in_c * p.out_c) as usize,
    );
    let grad_in = sliced(&mut rng, in_pixels, p.in_stride, p.in_offset, p.in_c);
    let grad_w = random_vec(&mut rng, weights.len());
    let grad_b = random_vec(&mut rng, p.out_c as usize);

    let mut expected_in = to_f64(&grad_in);
    reference::conv_input_grad(&p, &to_f64(&grad_out), &to_f64(&weights), &mut expected_in);
    let (mut expected_w, mut expected_b) = (to_f64(&grad_w), to_f64(&grad_b));
    reference::conv_parameter_grads(
        &p,
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
    let (bgi, bgw, bgb) = (
        upload(gpu, &grad_in),
        upload(gpu, &grad_w),
        upload(gpu, &grad_b),
    );
    let what = format!("conv {kernel:?} stride {stride} padded {padded}: {p:?}");
    let transposed = poisoned(gpu, weights.len());
    let [t, d] = backward().conv_input_grad(gpu, &p, &bgo, (&bw, &transposed), &bgi);
    check(
        gpu,
        &[&t, &d],
        &bgi,
        &keep_poison(&grad_in, &expected_in),
        &format!("input grad of {what}"),
    );
    let [dw, db] = backward().conv_parameter_grads(gpu, &p, &bin, &bgo, (&bgw, &bgb));
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
    let shapes = [(1, 1), (3, 3), (1, 3), (3, 1), (1, 7), (7, 1), (5, 5)];
    let mut seed = 0;
    for kernel in shapes {
        for stride in [1, 2] {
            for padded in [false, true] {
                seed += 1;
                check_conv(seed, kernel, stride, padded);
            }
        }
    }
}

#[test]
fn activation_gradients_match_the_reference() {
    let gpu = &gpu().0;
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
        // Outputs in [-2, 8): ReLU6's zero, linear and saturated parts all occur.
        let mut output = sliced(&mut rng, p.rows, p.stride, p.offset, p.channels);
        output.iter_mut().for_each(|v| *v = *v * 5.0 + 3.0);
        let grad = sliced(&mut rng, p.rows, p.stride, p.offset, p.channels);
        let mut expected = to_f64(&grad);
        reference::activation_grad(&p, &to_f64(&output), &mut expected);
        let (bo, bg) = (upload(gpu, &output), upload(gpu, &grad));
        let d = backward().activation_grad(gpu, &p, &bo, &bg);
        check(
            gpu,
            &[&d],
            &bg,
            &keep_poison(&grad, &expected),
            &format!("{p:?}"),
        );
    }
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
    let p = GlobalPoolParams {
        batch: 3,
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
    check(gpu, &[&d], &bgi, &to_f32(&expected), "global pool gradient");
}

#[test]
fn classifier_pass_matches_the_reference() {
    let gpu = &gpu().0;
    for seed in 0..3 {
        let mut rng = rng(400 + seed);
        let (rows, dim, classes) = (
            rng.random_range(1..20),
            rng.random_range(1..70),
            rng.random_range(2..6),
        );
        let p = ClassifierTrainParams {
            rows,
            dim,
            classes,
            scale: 1.0 / (rows + 3) as f32,
        };
        let features = random_vec(&mut rng, (rows * dim) as usize);
        let weights = random_vec(&mut rng, (dim * classes) as usize);
        let biases = random_vec(&mut rng, classes as usize);
        let labels: Vec<u32> = (0..rows).map(|_| rng.random_range(0..classes)).collect();
        let grad_w = random_vec(&mut rng, weights.len());
        let grad_b = random_vec(&mut rng, biases.len());
        let f64s = |v: &[f32]| to_f64(v);
        let expected = reference::classifier(
            &p,
            &f64s(&features),
            (&f64s(&weights), &f64s(&biases)),
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
        let buffers = ClassifierBuffers {
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
        let [forward, weight_grads, feature_grads] = backward().classifier(gpu, &p, &buffers);
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
        let buffers = [&state[0], &state[1], &state[2], &second].map(|s| upload(gpu, s));
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
            assert_close(
                &download(gpu, buffer, want.len()),
                &to_f32(want),
                1e-5,
                &format!("rule {rule}: {what}"),
            );
        }
    }
}
