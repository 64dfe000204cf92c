//! First measurements (cargo bench --bench forward): the whole forward pass in
//! images/s at a few batch sizes, and one head training step for 2, 100 and
//! 1000 classes. Wall-clock medians after a warm-up; the adapter is printed
//! beside every figure and the numbers are written to target/bench-forward.json.

use retrain::convert::default_weights;
use retrain::engine::Engine;
use retrain::gpu::Gpu;
use retrain::model::weights::WeightFile;
use retrain::train::head::GpuHeads;
use retrain::train::optimizer::{HeadSettings, Optimizer, TrainingRule};
use std::time::Instant;

fn median_secs(repeats: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up: pipeline compilation, plan building
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let size: u32 = std::env::var("BENCH_INPUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(299);
    let batches: Vec<u32> = std::env::var("BENCH_BATCHES")
        .unwrap_or_else(|_| "1,8".into())
        .split(',')
        .filter_map(|b| b.parse().ok())
        .collect();
    let file =
        WeightFile::open(&default_weights::resolve(None).expect("weights")).expect("weights");
    let mut engine =
        Engine::new(Gpu::new().expect("gpu"), &file, Some((size, size))).expect("engine");
    let adapter = engine.gpu.info.name.clone();
    let mut results = Vec::new();
    let max_batch = engine.max_batch();
    for &batch in batches.iter().filter(|&&b| b <= max_batch) {
        let input: Vec<f32> = (0..batch * size * size * 3)
            .map(|i| ((i % 255) as f32) / 127.5 - 1.0)
            .collect();
        let secs = median_secs(3, || {
            engine
                .run_tensors(&input, batch, &["bottleneck"])
                .expect("forward");
        });
        let rate = batch as f64 / secs;
        println!("[{adapter}] forward {size}x{size} batch {batch:>3}: {rate:8.2} images/s");
        results.push(serde_json::json!({"what": "forward", "input": size, "batch": batch, "images_per_s": rate}));
    }
    let gpu = &engine.gpu;
    let sweep = TrainingRule {
        optimizer: Optimizer::ADAM,
        cosine_decay: true,
        ..TrainingRule::retrain_py(4000)
    };
    for (classes, heads, rule) in [
        (2u32, 1usize, TrainingRule::retrain_py(4000)),
        (100, 1, TrainingRule::retrain_py(4000)),
        (1000, 1, TrainingRule::retrain_py(4000)),
        (2, 16, sweep),
    ] {
        let n = 2000usize;
        let features: Vec<f32> = (0..n * 2048).map(|i| (i % 97) as f32 / 97.0).collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| i % classes).collect();
        let initial = vec![0.001f32; heads * (2048 * classes + classes) as usize];
        let settings = vec![
            HeadSettings {
                learning_rate: 0.01,
                l2: 0.001
            };
            heads
        ];
        let head = GpuHeads::new(
            gpu,
            &features,
            &labels,
            (2048, classes),
            &initial,
            &settings,
            rule,
        )
        .expect("head");
        let batch = head.batch(gpu, 100);
        let rows: Vec<u32> = (0..100).map(|i| (i * 17) % n as u32).collect();
        let secs = median_secs(3, || {
            for step in 0..20 {
                head.train_step(gpu, &batch, &rows, step, step);
            }
            head.evaluate(gpu, &batch, &rows).expect("sync");
        }) / 20.0;
        println!(
            "[{adapter}] head step, {classes:>4} classes, {heads:>2} heads, batch 100: {:8.3} ms",
            secs * 1e3
        );
        results.push(serde_json::json!({"what": "head_step", "classes": classes, "heads": heads, "batch": 100, "ms": secs * 1e3}));
    }
    let out = serde_json::json!({"adapter": adapter, "results": results});
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-forward.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).expect("write results");
    println!("wrote {}", path.display());
}
