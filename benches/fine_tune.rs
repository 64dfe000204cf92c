//! Fine-tuning against the forward pass (cargo bench --bench fine_tune), on
//! Inception V3's default weights at 299×299, mixed9 and mixed10 trainable:
//!
//! - one training step (forward, classifier, backward, optimiser update) of
//!   a batch against the forward pass of the same blocks on the same batch,
//!   as a ratio (the goal: ≤ 3.5×);
//! - each backward kernel family's GFLOPS in that step (GPU timestamps)
//!   against the project's GEMM ceiling measured in the same process.
//!
//! The batch is fine-tuning's default (16) unless BENCH_BATCH sets another.
//! Forward passes and steps alternate over a few rounds and the median of
//! their ratios is reported, so that a busy machine slows both alike.

use rand::{Rng, SeedableRng};
use retrain::convert::default_weights;
use retrain::engine::Engine;
use retrain::fine_tune::blocks::{TrainableBlocks, DEFAULT_FROM};
use retrain::fine_tune::network::TrainableNetwork;
use retrain::fine_tune::settings::{FineTuneSettings, Rule, DEFAULT_BATCH};
use retrain::fine_tune::step::{Pass, StepPlan};
use retrain::gpu::timer::GpuTimer;
use retrain::gpu::Gpu;
use retrain::model::weights::WeightFile;
use retrain::model::Architecture;
use retrain::train::standardize::{Standardization, StandardizedHead};
use std::collections::BTreeMap;

mod common;
use common::{gemm_ceiling, median, wall_secs};

fn main() {
    let gpu = Gpu::new().expect("a GPU adapter");
    let adapter = gpu.info.name.clone();
    let batch: u32 = std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_BATCH);
    let path = default_weights::resolve(None, Architecture::InceptionV3).expect("weights");
    let file = WeightFile::open(&path).expect("weight file");
    let mut engine = Engine::new(gpu.clone(), &file, None).expect("engine");
    engine.tune_on_first_use().expect("tuning");
    let blocks = TrainableBlocks::new(engine.network(), DEFAULT_FROM).expect("blocks");
    let cut = blocks.cut_size();
    let settings = FineTuneSettings {
        from: DEFAULT_FROM.into(),
        epochs: 1,
        learning_rate: 1e-4,
        rule: Rule::Adam,
        weight_decay: 1e-4,
        batch_size: batch,
        dropout: 0.3,
        patience: 0,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let head_weights: Vec<f32> = (0..2048 * 2)
        .map(|_| rng.random_range(-0.01..0.01))
        .collect();
    let head = StandardizedHead {
        weights: head_weights,
        biases: vec![0.0, 0.0],
        standardization: Standardization::identity(2048),
    };
    let mut net = TrainableNetwork::new(&gpu, blocks, &file, &head, &settings).expect("network");
    net.tune_on_first_use(&gpu).expect("tuning");
    let plan = StepPlan::new(&gpu, &net, batch, 1.0 / batch as f32);
    let values: Vec<f32> = (0..cut * batch as usize)
        .map(|_| rng.random_range(0.0..2.0))
        .collect();
    let labels: Vec<u32> = (0..batch).map(|i| i % 2).collect();
    plan.load(&gpu, &values, &labels);

    let forward = || {
        plan.run(&gpu, Pass::Evaluate).expect("forward");
    };
    let mut step = || {
        let pass = Pass::Train {
            dropout: 0.3,
            seed: 1,
        };
        plan.run(&gpu, pass).expect("step");
        net.update(&gpu, 1e-4);
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("poll");
    };
    let (forward, step) = alternating_secs(forward, &mut step);
    let ratio = median(step.iter().zip(&forward).map(|(s, f)| s / f).collect());
    println!(
        "[{adapter}] mixed9+mixed10 at batch {batch}: forward {:.3} s, training step {:.3} s (medians of {} rounds): {ratio:.2}× the forward (goal ≤ 3.5×)",
        median(forward.clone()),
        median(step.clone()),
        forward.len()
    );
    let update = wall_secs(|| {
        net.update(&gpu, 1e-4);
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("poll");
    });
    println!(
        "[{adapter}] of which the optimiser's update of {} parameters: {:.1} ms",
        net.parameter_count(),
        update * 1e3
    );

    let Some(timer) = GpuTimer::new(&gpu, 512) else {
        println!("[{adapter}] no timestamp queries: no per-family GFLOPS");
        return;
    };
    let ceiling = ["512", "1024"]
        .iter()
        .flat_map(|n| gemm_ceiling(&gpu, &engine, &timer, n.parse().unwrap()))
        .map(|(_, g)| g)
        .fold(0.0, f64::max);
    println!("[{adapter}] GEMM ceiling: {ceiling:.2} GFLOPS");
    let dispatches = plan.backward_dispatches();
    let groups: Vec<[&retrain::gpu::kernels::Dispatch; 1]> =
        dispatches.iter().map(|l| [&l.dispatch]).collect();
    let slices: Vec<&[&retrain::gpu::kernels::Dispatch]> =
        groups.iter().map(|g| g.as_slice()).collect();
    timer.time(&gpu, &slices).expect("warm-up");
    let times = timer.time(&gpu, &slices).expect("timestamps");
    let mut families: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (l, t) in dispatches.iter().zip(times) {
        let e = families.entry(l.family).or_default();
        e.0 += l.flops;
        e.1 += t;
    }
    println!("| family | time (ms) | GFLOPS | % of ceiling |\n| --- | --- | --- | --- |");
    for (family, (flops, secs)) in families {
        let gflops = flops / secs / 1e9;
        let share = if flops > 0.0 {
            format!("{:.0}%", 100.0 * gflops / ceiling)
        } else {
            "–".into()
        };
        let shown = if flops > 0.0 {
            format!("{gflops:.2}")
        } else {
            "–".into()
        };
        println!("| {family} | {:.2} | {shown} | {share} |", secs * 1e3);
    }
}

/// Wall seconds of `a` and `b` run in turn: one warm-up each, then rounds
/// until five, or three once a minute has passed.
fn alternating_secs(mut a: impl FnMut(), mut b: impl FnMut()) -> (Vec<f64>, Vec<f64>) {
    let time = |f: &mut dyn FnMut()| {
        let t = std::time::Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    a();
    b();
    let started = std::time::Instant::now();
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    while ta.len() < 3 || (ta.len() < 5 && started.elapsed().as_secs() < 60) {
        ta.push(time(&mut a));
        tb.push(time(&mut b));
    }
    (ta, tb)
}
