//! MobileNet V2's depthwise conv kernel against its CPU reference on random
//! shapes and random data, the output buffer poisoned first: 3×3 stride 1 and
//! 2 with TF's SAME padding (even and odd sizes), VALID, channel slices,
//! aligned (vec4) and unaligned channels, every activation, f32 and f16
//! weights, every workgroup size the tuner may pick.

mod common;

use common::*;
use rand::Rng;
use retrain::cpu_reference;
use retrain::gpu::kernels::{submit, Kernels, DEPTHWISE_GROUPS};
use retrain::gpu::params::DepthwiseParams;
use retrain::model::graph::Padding;
use std::sync::OnceLock;

fn half_kernels() -> &'static Kernels {
    static KERNELS: OnceLock<Kernels> = OnceLock::new();
    KERNELS.get_or_init(|| Kernels::new(&gpu().0, true))
}

/// (output size, padding before) along one axis, TF's rule.
fn axis(input: u32, kernel: u32, stride: u32, padding: Padding) -> (u32, u32) {
    padding.resolve(input, kernel, stride).unwrap()
}

/// A random depthwise conv; `aligned` makes channels, strides and offsets
/// multiples of 4 (the vec4 path).
fn run_depthwise(seed: u64, stride: u32, padding: Padding, aligned: bool) {
    let mut rng = rng(seed);
    let a = |v: u32| if aligned { v.next_multiple_of(4) } else { v };
    let (kh, kw) = (3, 3);
    let batch = rng.random_range(1..=3);
    let in_h = rng.random_range(3..18);
    let in_w = rng.random_range(3..18);
    let channels = a(rng.random_range(1..40));
    let (out_h, pad_top) = axis(in_h, kh, stride, padding);
    let (out_w, pad_left) = axis(in_w, kw, stride, padding);
    let in_offset = a(rng.random_range(0..5));
    let out_offset = a(rng.random_range(0..5));
    let p = DepthwiseParams {
        batch,
        in_h,
        in_w,
        channels,
        out_h,
        out_w,
        kernel_h: kh,
        kernel_w: kw,
        stride_h: stride,
        stride_w: stride,
        pad_top,
        pad_left,
        in_stride: in_offset + channels + a(rng.random_range(0..5)),
        in_offset,
        out_stride: out_offset + channels + a(rng.random_range(0..5)),
        out_offset,
        activation: rng.random_range(0..3),
        ..Default::default()
    };
    for half in [false, true] {
        check(&p, half, &mut rng);
    }
}

/// One run into a poisoned buffer against the reference; with `half` the
/// weights are stored as f16 and the reference uses the rounded values.
fn check(p: &DepthwiseParams, half: bool, rng: &mut rand::rngs::StdRng) {
    let (gpu, f32_kernels) = gpu();
    let kernels = if half { half_kernels() } else { f32_kernels };
    // Inputs up to ±4 so that ReLU6 saturates somewhere.
    let input: Vec<f32> = random_vec(rng, (p.batch * p.in_h * p.in_w * p.in_stride) as usize)
        .iter()
        .map(|v| v * 4.0)
        .collect();
    let mut weights = random_vec(rng, (p.kernel_h * p.kernel_w * p.channels) as usize);
    let bias = random_vec(rng, p.channels as usize);
    let weight_bytes: Vec<u8> = if half {
        let halves: Vec<half::f16> = weights.iter().map(|&w| half::f16::from_f32(w)).collect();
        weights = halves.iter().map(|h| h.to_f32()).collect();
        let bits: Vec<u16> = halves.iter().map(|h| h.to_bits()).collect();
        // An odd count of f16 values still needs whole u32 words.
        let mut bytes = bytemuck::cast_slice(&bits).to_vec();
        bytes.resize(bytes.len().next_multiple_of(4), 0);
        bytes
    } else {
        bytemuck::cast_slice(&weights).to_vec()
    };
    let out_len = (p.batch * p.out_h * p.out_w * p.out_stride) as usize;
    let mut expected = vec![POISON; out_len];
    cpu_reference::depthwise(p, &input, (&weights, &bias), &mut expected);
    let (bi, bw, bb) = (
        upload(gpu, &input),
        gpu.storage_buffer_with("weights", &weight_bytes),
        upload(gpu, &bias),
    );
    for group in DEPTHWISE_GROUPS {
        let output = poisoned(gpu, out_len);
        submit(
            gpu,
            &[&kernels.depthwise(gpu, p, group, &bi, (&bw, &bb), &output)],
        );
        assert_close(
            &download(gpu, &output, out_len),
            &expected,
            1e-5,
            &format!("depthwise in groups of {group}, f16 weights: {half} {p:?}"),
        );
    }
}

#[test]
fn depthwise_stride_1_same() {
    for seed in 0..4 {
        run_depthwise(1000 + seed, 1, Padding::Same, seed % 2 == 0);
    }
}

#[test]
fn depthwise_stride_2_same_on_even_and_odd_sizes() {
    for seed in 0..6 {
        run_depthwise(1100 + seed, 2, Padding::Same, seed % 2 == 0);
    }
}

#[test]
fn depthwise_valid() {
    for seed in 0..4 {
        run_depthwise(1200 + seed, 2 - seed as u32 % 2, Padding::Valid, seed < 2);
    }
}

#[test]
fn relu6_saturates_at_six() {
    let (gpu, kernels) = gpu();
    // One pixel, one channel, the centre tap only: 10·1 + 0 → 6 after ReLU6.
    let p = DepthwiseParams {
        batch: 1,
        in_h: 1,
        in_w: 1,
        channels: 1,
        out_h: 1,
        out_w: 1,
        kernel_h: 3,
        kernel_w: 3,
        stride_h: 1,
        stride_w: 1,
        pad_top: 1,
        pad_left: 1,
        in_stride: 1,
        out_stride: 1,
        activation: 2,
        ..Default::default()
    };
    let mut weights = vec![0.0f32; 9];
    weights[4] = 1.0;
    let output = poisoned(gpu, 1);
    let (bi, bw, bb) = (
        upload(gpu, &[10.0]),
        upload(gpu, &weights),
        upload(gpu, &[0.0]),
    );
    submit(
        gpu,
        &[&kernels.depthwise(gpu, &p, 256, &bi, (&bw, &bb), &output)],
    );
    assert_eq!(download(gpu, &output, 1), vec![6.0]);
}
