//! What the benches share: wall-clock timing and the device's GEMM ceiling.
#![allow(dead_code)]

use retrain::engine::Engine;
use retrain::gpu::kernels::ConvVariant;
use retrain::gpu::params::ConvParams;
use retrain::gpu::timer::GpuTimer;
use retrain::gpu::Gpu;
use std::time::Instant;

/// Median seconds of `f` after a warm-up: 3 runs, or fewer when a run is long.
pub fn wall_secs(mut f: impl FnMut()) -> f64 {
    f();
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < 3 && (times.is_empty() || started.elapsed().as_secs_f64() < 20.0) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    median(times)
}

/// The middle value (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// GFLOPS of an n×n×n GEMM (a 1×1 conv over a 1×n map with n channels) per variant.
pub fn gemm_ceiling(
    gpu: &Gpu,
    engine: &Engine,
    timer: &GpuTimer,
    n: u32,
) -> Vec<(ConvVariant, f64)> {
    let p = ConvParams {
        batch: 1,
        in_h: 1,
        in_w: n,
        in_c: n,
        out_h: 1,
        out_w: n,
        out_c: n,
        m: n,
        kernel_h: 1,
        kernel_w: 1,
        stride_h: 1,
        stride_w: 1,
        in_stride: n,
        out_stride: n,
        ..Default::default()
    };
    let buffer = |label: &str, floats: u32| gpu.storage_buffer(label, floats as u64 * 4);
    let (a, b, bias, c) = (
        buffer("A", n * n),
        buffer("B", n * n),
        buffer("bias", n),
        buffer("C", n * n),
    );
    let flops = 2.0 * (n as f64).powi(3);
    ConvVariant::CANDIDATES
        .iter()
        .filter(|v| v.fits(&p, gpu))
        .map(|&v| {
            let d = engine
                .kernels()
                .conv2d(gpu, &p, v, &a, (&b, &bias), &c, None);
            timer.time(gpu, &[&[&d]]).expect("warm-up");
            let best = (0..5)
                .map(|_| timer.time(gpu, &[&[&d]]).expect("time")[0])
                .fold(f64::INFINITY, f64::min);
            (v, flops / best / 1e9)
        })
        .collect()
}
