//! The engine against the device's own ceiling (cargo bench --bench kernels):
//!
//! - the ceiling: the project's own GEMM (a 1×1 conv, N×N×N) in GFLOPS, the
//!   best of the conv kernel variants over a few sizes N (best of 5 runs
//!   each), in the same process;
//! - every distinct conv shape of Inception V3 (batch 1 and 8): time, GFLOPS,
//!   % of the ceiling, the variant the tuning chose; pools as time;
//! - the forward pass in images/s at batch 1, 8 and 32 (capped at what the
//!   device holds) and each layer family's share of its time;
//! - the forward pass with every group of sibling 1×1 convs merged, none,
//!   and as tuned (with the tuner's decision per group);
//! - `retrain features`' path (decoding on CPU threads + forward) on the
//!   example JPEGs, beside the forward-only rate;
//! - head training steps for 2, 100 and 1000 classes, and a 16-head sweep step.
//!
//! GPU times come from timestamp queries (median of repeats after a warm-up);
//! rates from wall-clock. Every line names the adapter. Results also go to
//! target/bench-kernels.json. BENCH_INPUT sets the input size (default 299),
//! BENCH_GEMM the GEMM sizes (default 1024,2048,4096 on GPUs, 512,1024 on
//! CPU adapters), BENCH_BATCHES the forward batches (default 1,8,32), and
//! BENCH_ONLY=forward runs the forward passes alone (Inception V3 beside
//! MobileNet V2), for slow adapters.
//!
//! Longer than the crate's other files on purpose: one bench binary measures
//! everything against the same ceiling in one process, on one device.

use retrain::convert::default_weights;
use retrain::data::{images, loader};
use retrain::engine::{Engine, Merging};
use retrain::gpu::kernels::ConvVariant;
use retrain::gpu::timer::GpuTimer;
use retrain::gpu::tuning::shape_key;
use retrain::gpu::Gpu;
use retrain::head::optimizer::{HeadSettings, Optimizer, TrainingRule};
use retrain::head::GpuHeads;
use retrain::model::weights::WeightFile;
use retrain::model::Architecture;
use serde_json::{json, Value};

mod common;
use common::{gemm_ceiling, median, wall_secs};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

fn env_u32(name: &str) -> Option<u32> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// Per-label GPU seconds and FLOPs of a forward pass at `batch` (median of 3 profiles).
fn profile(engine: &mut Engine, batch: u32) -> Vec<ProfileRow> {
    engine.profile(batch).expect("profile"); // warm-up
    let runs: Vec<Vec<(String, f64, f64)>> = (0..3)
        .map(|_| engine.profile(batch).expect("profile").expect("timestamps"))
        .collect();
    let mut by_label: BTreeMap<String, (f64, f64, usize)> = BTreeMap::new();
    for (i, (label, flops, _)) in runs[0].iter().enumerate() {
        let t = median(runs.iter().map(|r| r[i].2).collect());
        let e = by_label.entry(label.clone()).or_default();
        e.0 += flops;
        e.1 += t;
        e.2 += 1;
    }
    let mut rows: Vec<_> = by_label
        .into_iter()
        .map(|(l, (f, t, n))| (l, f, t, n))
        .collect();
    rows.sort_by(|a, b| b.2.total_cmp(&a.2));
    rows
}

fn family(label: &str) -> &'static str {
    if label.starts_with("conv 1x1") {
        "1x1 conv"
    } else if label.starts_with("depthwise") {
        "depthwise conv"
    } else if label.starts_with("conv") {
        "spatial conv"
    } else if label.contains("pool") {
        "pooling"
    } else {
        "other"
    }
}

/// One line of a profile: what a layer computes, its floating-point
/// operations, its GPU seconds and how many layers of that label there are.
type ProfileRow = (String, f64, f64, usize);

/// Forward images/s of `engine` at `batch` on a synthetic input, each layer
/// family's share of the GPU time, and the per-layer profile.
fn forward_rate(
    engine: &mut Engine,
    batch: u32,
) -> (f64, BTreeMap<&'static str, f64>, Vec<ProfileRow>) {
    let (h, w) = engine.input_size();
    let input: Vec<f32> = (0..batch * h * w * 3)
        .map(|i| (i % 255) as f32 / 255.0)
        .collect();
    let secs = wall_secs(|| {
        engine
            .run_tensors(&input, batch, &["bottleneck"])
            .expect("forward");
    });
    let rows = profile(engine, batch);
    let total: f64 = rows.iter().map(|r| r.2).sum();
    let mut shares: BTreeMap<&'static str, f64> = BTreeMap::new();
    for r in &rows {
        *shares.entry(family(&r.0)).or_default() += r.2 / total;
    }
    (batch as f64 / secs, shares, rows)
}

/// "1x1 conv 22%, spatial conv 76%, …".
fn share_text(shares: &BTreeMap<&str, f64>) -> String {
    let parts: Vec<String> = shares
        .iter()
        .map(|(f, s)| format!("{f} {:.0}%", s * 100.0))
        .collect();
    parts.join(", ")
}

/// MobileNet V2's forward pass at 224×224 beside Inception V3's (`inception`:
/// this run's forward rows): images/s, the ratio, each layer family's share
/// and the depthwise convs' GFLOPS.
fn mobilenet_forward(gpu: &Gpu, adapter: &str, inception: &[Value]) -> Value {
    let path =
        default_weights::resolve(None, Architecture::MobileNetV2).expect("MobileNet V2 weights");
    let file = WeightFile::open(&path).expect("weights");
    let mut engine = Engine::new(gpu.clone(), &file, None).expect("engine");
    engine.tune_on_first_use().expect("tuning");
    let (size, _) = engine.input_size();
    println!();
    let mut rows = Vec::new();
    for row in inception {
        let batch = (row["batch"].as_u64().expect("batch") as u32).min(engine.max_batch());
        let (rate, shares, profile) = forward_rate(&mut engine, batch);
        let (dw_flops, dw_secs) = profile
            .iter()
            .filter(|r| r.0.starts_with("depthwise"))
            .fold((0.0, 0.0), |(f, t), r| (f + r.1, t + r.2));
        let ratio = rate / row["images_per_s"].as_f64().expect("rate");
        println!(
            "[{adapter}] MobileNet V2 forward {size}×{size} batch {batch:>2}: {rate:8.2} images/s = {ratio:.1}× Inception V3's  ({}; depthwise {:.2} GFLOPS)",
            share_text(&shares),
            dw_flops / dw_secs / 1e9
        );
        rows.push(json!({"batch": batch, "images_per_s": rate, "times_inception_v3": ratio, "shares": shares, "depthwise_gflops": dw_flops / dw_secs / 1e9}));
    }
    Value::Array(rows)
}

/// Forward images/s at each batch with sibling 1×1 convs merged as tuned,
/// all, or none; leaves the engine as tuned.
fn compare_merging(engine: &mut Engine, adapter: &str, batches: &[u32]) -> Value {
    let (size, _) = engine.input_size();
    let decisions: BTreeMap<String, Option<bool>> = engine.merge_decisions().into_iter().collect();
    for (group, merged) in &decisions {
        let verdict = match merged {
            Some(true) => "merged",
            Some(false) => "apart",
            None => "not tuned",
        };
        println!("[{adapter}] tuner: sibling convs {group}: {verdict}");
    }
    let mut rows = Vec::new();
    for &batch in batches {
        let input: Vec<f32> = (0..batch * size * size * 3)
            .map(|i| (i % 251) as f32 / 251.0)
            .collect();
        for merging in [Merging::None, Merging::All, Merging::AsTuned] {
            engine.set_merging(merging).expect("merging");
            let secs = wall_secs(|| {
                engine
                    .run_tensors(&input, batch, &["bottleneck"])
                    .expect("forward");
            });
            let groups = engine.merged_groups();
            println!(
                "[{adapter}] forward batch {batch:>2}, sibling convs merged {merging:?} ({groups} groups): {:8.2} images/s",
                batch as f64 / secs
            );
            rows.push(json!({"batch": batch, "merging": format!("{merging:?}"), "groups": groups, "images_per_s": batch as f64 / secs}));
        }
    }
    json!({"decisions": decisions, "forward": rows})
}

/// Sections 1 and 2: the GEMM ceiling, then every conv shape against it.
fn ceiling_and_layers(engine: &mut Engine, timer: &GpuTimer, adapter: &str, out: &mut Value) {
    let gpu = engine.gpu.clone();
    let (size, _) = engine.input_size();
    // 1. The ceiling.
    let cpu = gpu.info.device_type == wgpu::DeviceType::Cpu;
    let sizes: Vec<u32> = std::env::var("BENCH_GEMM")
        .unwrap_or_else(|_| if cpu { "512,1024" } else { "1024,2048,4096" }.into())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let mut gemm = Vec::new();
    for &n in &sizes {
        for (v, g) in gemm_ceiling(&gpu, engine, timer, n) {
            println!("[{adapter}] GEMM {n}³ {v:?}: {g:.2} GFLOPS");
            gemm.push(json!({"n": n, "variant": format!("{v:?}"), "gflops": g}));
        }
    }
    let ceiling = gemm
        .iter()
        .filter_map(|g| g["gflops"].as_f64())
        .fold(0.0, f64::max);
    println!("[{adapter}] ceiling: {ceiling:.2} GFLOPS");
    out["gemm"] = json!({"runs": gemm, "ceiling_gflops": ceiling});

    // 2. Every conv shape, and the pools.
    let max_batch = engine.max_batch();
    let mut layers = Vec::new();
    for batch in [1, 8.min(max_batch)] {
        println!(
            "\n[{adapter}] layers at {size}×{size}, batch {batch} (GPU time per forward pass)"
        );
        println!(
            "{:<36} {:>5} {:>10} {:>8} {:>8}  variant",
            "layer", "count", "ms", "GFLOPS", "% ceil"
        );
        let variants: BTreeMap<String, ConvVariant> = engine
            .distinct_convs(batch)
            .iter()
            .map(|p| (shape_key(p), engine.tuning().variant(&gpu, p)))
            .collect();
        let rows = profile(engine, batch);
        let (conv_flops, conv_secs) = rows
            .iter()
            .filter(|r| r.1 > 0.0)
            .fold((0.0, 0.0), |(f, t), r| (f + r.1, t + r.2));
        for (label, flops, secs, count) in &rows {
            let gflops = flops / secs / 1e9;
            let variant = label
                .strip_prefix("conv ")
                .and_then(|k| variants.get(k))
                .map(|v| format!("{v:?}"))
                .unwrap_or_default();
            if *flops > 0.0 {
                println!(
                    "{label:<36} {count:>5} {:>10.3} {gflops:>8.2} {:>7.1}%  {variant}",
                    secs * 1e3,
                    100.0 * gflops / ceiling
                );
            } else {
                println!("{label:<36} {count:>5} {:>10.3}", secs * 1e3);
            }
            layers.push(json!({"batch": batch, "layer": label, "count": count, "ms": secs * 1e3, "gflops": gflops, "percent_of_ceiling": 100.0 * gflops / ceiling, "variant": variant}));
        }
        let conv_gflops = conv_flops / conv_secs / 1e9;
        println!(
            "[{adapter}] all convs at batch {batch}: {conv_gflops:.2} GFLOPS = {:.1}% of the ceiling",
            100.0 * conv_gflops / ceiling
        );
        out[format!("convs_batch_{batch}")] =
            json!({"gflops": conv_gflops, "percent_of_ceiling": 100.0 * conv_gflops / ceiling});
    }
    out["layers"] = Value::Array(layers);
}

fn main() {
    let size = env_u32("BENCH_INPUT").unwrap_or(299);
    let file = WeightFile::open(
        &default_weights::resolve(None, Architecture::InceptionV3).expect("weights"),
    )
    .expect("weights");
    let mut engine =
        Engine::new(Gpu::new().expect("gpu"), &file, Some((size, size))).expect("engine");
    engine.tune_on_first_use().expect("tuning");
    let gpu = engine.gpu.clone();
    let adapter = format!("{} ({:?})", gpu.info.name, gpu.info.backend);
    println!(
        "adapter: {adapter}; driver: {} {}",
        gpu.info.driver, gpu.info.driver_info
    );
    let timer =
        GpuTimer::new(&gpu, 1).expect("this bench needs timestamp queries (TIMESTAMP_QUERY)");
    let mut out = json!({"adapter": adapter, "input": size});
    let only_forward = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "forward");
    if !only_forward {
        ceiling_and_layers(&mut engine, &timer, &adapter, &mut out);
    }
    let max_batch = engine.max_batch();

    // 3. The forward pass.
    // 3. The forward pass.
    println!();
    let mut forward = Vec::new();
    let wanted = std::env::var("BENCH_BATCHES").unwrap_or_else(|_| "1,8,32".into());
    let mut batches: Vec<u32> = wanted
        .split(',')
        .filter_map(|b| b.parse::<u32>().ok())
        .map(|b| b.min(max_batch))
        .collect();
    batches.dedup();
    for &batch in &batches {
        let (rate, shares, _) = forward_rate(&mut engine, batch);
        println!(
            "[{adapter}] forward {size}×{size} batch {batch:>2}: {rate:8.2} images/s  ({})",
            share_text(&shares)
        );
        forward.push(json!({"batch": batch, "images_per_s": rate, "shares": shares}));
    }
    out["forward"] = Value::Array(forward.clone());
    out["mobilenet_v2"] = mobilenet_forward(&gpu, &adapter, &forward);
    if only_forward {
        write_results(&out);
        return;
    }
    out["merging"] = compare_merging(&mut engine, &adapter, &[1, 8.min(max_batch)]);

    // 4. End to end, as `retrain features` runs.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/webstyle");
    let paths = images::list_images(&root).expect("example images");
    let batch = max_batch.min(paths.len() as u32) as usize;
    let t = Instant::now();
    for decoded in loader::decode_batches(paths.clone(), batch) {
        let imgs: Vec<_> = decoded
            .into_iter()
            .map(|d| d.image.expect("decode"))
            .collect();
        engine.bottlenecks(&imgs).expect("forward");
    }
    let e2e = paths.len() as f64 / t.elapsed().as_secs_f64();
    let input: Vec<f32> = vec![0.5; batch * (size * size * 3) as usize];
    let fwd = batch as f64
        / wall_secs(|| {
            engine
                .run_tensors(&input, batch as u32, &["bottleneck"])
                .expect("forward");
        });
    println!(
        "[{adapter}] features on {} JPEGs (decode + forward, batch {batch}): {e2e:.2} images/s = {:.0}% of forward-only {fwd:.2}",
        paths.len(),
        100.0 * e2e / fwd
    );
    out["features_end_to_end"] =
        json!({"images": paths.len(), "images_per_s": e2e, "forward_only_images_per_s": fwd});

    // 5. Head steps.
    let sweep = TrainingRule {
        optimizer: Optimizer::ADAM,
        cosine_decay: true,
        ..TrainingRule::retrain_py(4000)
    };
    let mut heads_out = Vec::new();
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
            &gpu,
            &features,
            &labels,
            (2048, classes),
            &initial,
            &settings,
            rule,
        )
        .expect("head");
        let slot = head.batch(&gpu, 100);
        let rows: Vec<u32> = (0..100).map(|i| (i * 17) % n as u32).collect();
        let secs = wall_secs(|| {
            for step in 0..20 {
                head.train_step(&gpu, &slot, &rows, step, step);
            }
            head.evaluate(&gpu, &slot, &rows).expect("sync");
        }) / 20.0;
        println!(
            "[{adapter}] head step, {classes:>4} classes, {heads:>2} heads, batch 100: {:8.3} ms",
            secs * 1e3
        );
        heads_out.push(json!({"classes": classes, "heads": heads, "batch": 100, "ms": secs * 1e3}));
    }
    out["head_steps"] = Value::Array(heads_out);
    write_results(&out);
}

/// target/bench-kernels.json.
fn write_results(out: &Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-kernels.json");
    std::fs::write(&path, serde_json::to_string_pretty(out).unwrap()).expect("write results");
    println!("wrote {}", path.display());
}
