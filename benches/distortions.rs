//! Distorted training against plain extraction (cargo bench --bench distortions):
//! images/s of `retrain`'s bottleneck extraction (decode on CPU threads one
//! batch ahead + forward pass) and of distorted training (every step's images
//! decoded or taken from the decoded-image cache, distorted, run through the
//! network, and a 16-head training step), on the example screenshots, on the
//! same device in the same run. The goal: distorted training at least half
//! the extraction rate. BENCH_INPUT sets the input size (default 299);
//! results also go to target/bench-distortions.json.

use rand::rngs::StdRng;
use rand::SeedableRng;
use retrain::convert::default_weights;
use retrain::data::dataset::Set;
use retrain::data::distortion::DistortionFlags;
use retrain::data::{images, loader};
use retrain::engine::Engine;
use retrain::gpu::Gpu;
use retrain::head::optimizer::{HeadSettings, Optimizer, TrainingRule};
use retrain::head::GpuHeads;
use retrain::model::weights::WeightFile;
use retrain::model::Architecture;
use retrain::train::batches::BatchSource;
use retrain::train::bottlenecks::Example;
use retrain::train::distorted::DistortedBatches;
use std::path::Path;
use std::time::Instant;

fn main() {
    let size: u32 = std::env::var("BENCH_INPUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(299);
    let file = WeightFile::open(
        &default_weights::resolve(None, Architecture::InceptionV3).expect("weights"),
    )
    .expect("weights");
    let mut engine =
        Engine::new(Gpu::new().expect("gpu"), &file, Some((size, size))).expect("engine");
    let gpu = engine.gpu.clone();
    let adapter = gpu.info.name.clone();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/webstyle");
    let paths = images::list_images(&root).expect("example images");
    let batch = engine.max_batch().min(paths.len() as u32) as usize;

    // Warm-up (pipelines, plan), then extraction as `retrain` does it.
    engine
        .bottlenecks(&[images::decode(&paths[0]).expect("decode")])
        .expect("warm-up");
    let t = Instant::now();
    let mut features = Vec::new();
    for decoded in loader::decode_batches(paths.clone(), batch) {
        let imgs: Vec<_> = decoded
            .into_iter()
            .map(|d| d.image.expect("decode"))
            .collect();
        features.extend(engine.bottlenecks(&imgs).expect("forward"));
    }
    let extraction = paths.len() as f64 / t.elapsed().as_secs_f64();
    println!("[{adapter}] extraction at {size}x{size}: {extraction:8.2} images/s");

    let examples: Vec<Example> = paths
        .iter()
        .map(|p| Example {
            class: p.parent().is_some_and(|d| d.ends_with("normal")) as usize,
            set: Set::Training,
            path: p.clone(),
        })
        .collect();
    let labels: Vec<u32> = examples.iter().map(|e| e.class as u32).collect();
    let mut train = vec![Vec::new(); 2];
    for (i, e) in examples.iter().enumerate() {
        train[e.class].push(i as u32);
    }
    let settings = vec![
        HeadSettings {
            learning_rate: 0.01,
            l2: 0.001
        };
        16
    ];
    let rule = TrainingRule {
        optimizer: Optimizer::ADAM,
        cosine_decay: true,
        ..TrainingRule::retrain_py(100)
    };
    let initial = vec![0.001f32; 16 * (2048 * 2 + 2)];
    let mut heads = GpuHeads::new(
        &gpu,
        &features,
        &labels,
        (2048, 2),
        &initial,
        &settings,
        rule,
    )
    .expect("heads");
    let flags = DistortionFlags {
        flip_left_right: true,
        random_crop: 10,
        random_scale: 10,
        random_brightness: 10,
    };
    let mut source = DistortedBatches::new(&mut engine, flags, &examples, &train, batch, 1 << 30);
    heads
        .add_spare_rows(&gpu, source.spare_rows())
        .expect("spare rows");
    let slot = heads.batch(&gpu, batch as u32);
    let mut rng = StdRng::seed_from_u64(1);
    let steps = (2 * paths.len() / batch).max(2) as u32;
    let mut step = |step: u32| {
        let rows = source
            .next_rows(&gpu, &heads, None, &mut rng)
            .expect("batch");
        heads.train_step(&gpu, &slot, &rows, step, step);
    };
    step(0); // warm-up
    let t = Instant::now();
    for s in 1..=steps {
        step(s);
    }
    heads
        .evaluate(&gpu, &slot, &(0..batch as u32).collect::<Vec<_>>())
        .expect("sync");
    let distorted = (steps as usize * batch) as f64 / t.elapsed().as_secs_f64();
    println!(
        "[{adapter}] distorted training at {size}x{size}, batch {batch}, 16 heads: {distorted:8.2} images/s ({:.0}% of extraction)",
        100.0 * distorted / extraction
    );
    let out = serde_json::json!({
        "adapter": adapter,
        "input": size,
        "batch": batch,
        "extraction_images_per_s": extraction,
        "distorted_training_images_per_s": distorted,
    });
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-distortions.json");
    std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).expect("write results");
    println!("wrote {}", path.display());
}
