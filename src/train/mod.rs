//! The main job, retrain.py's flow: scan and split the folder, cache every
//! bottleneck, train a new softmax head on the GPU, evaluate it on the test
//! split and write the classifier, the labels and metrics.json.

pub mod bottlenecks;
pub mod head;
pub mod outputs;
pub mod report;
pub mod sampling;
pub mod summaries;

use crate::cli::TrainArgs;
use crate::convert::default_weights;
use crate::data::bottleneck_cache::BottleneckCache;
use crate::data::dataset::{Dataset, Set};
use crate::engine::Engine;
use crate::gpu::Gpu;
use crate::model::weights::WeightFile;
use anyhow::{bail, Result};
use bottlenecks::Bottlenecks;
use head::GpuHead;
use outputs::Classifier;
use rand::{rngs::StdRng, SeedableRng};
use report::TestReport;
use std::collections::HashMap;
use std::time::Instant;

/// Log lines at or above the chosen verbosity go to stderr, retrain.py style.
pub struct Logger {
    level: u8,
}

impl Logger {
    pub fn new(verbosity: &str) -> Self {
        let level = ["DEBUG", "INFO", "WARN", "ERROR", "FATAL"]
            .iter()
            .position(|l| *l == verbosity)
            .unwrap_or(1);
        Logger { level: level as u8 }
    }
    pub fn info(&self, msg: impl AsRef<str>) {
        if self.level <= 1 {
            eprintln!("INFO: {}", msg.as_ref());
        }
    }
    pub fn warn(&self, msg: impl AsRef<str>) {
        if self.level <= 2 {
            eprintln!("WARNING: {}", msg.as_ref());
        }
    }
}

/// Rejects flag values that cannot work, before any work, naming the flag.
pub fn validate(a: &TrainArgs) -> Result<()> {
    let pct_ok = |p: f64| (0.0..100.0).contains(&p);
    if !pct_ok(a.testing_percentage) {
        bail!(
            "--testing-percentage must be between 0 and 100 (got {})",
            a.testing_percentage
        );
    }
    if !pct_ok(a.validation_percentage) {
        bail!(
            "--validation-percentage must be between 0 and 100 (got {})",
            a.validation_percentage
        );
    }
    if a.testing_percentage + a.validation_percentage >= 100.0 {
        bail!("--testing-percentage plus --validation-percentage must stay under 100, leaving images to train on");
    }
    if a.train_batch_size < 1 {
        bail!(
            "--train-batch-size must be at least 1 (got {})",
            a.train_batch_size
        );
    }
    for (flag, v) in [
        ("--validation-batch-size", a.validation_batch_size),
        ("--test-batch-size", a.test_batch_size),
    ] {
        if v == 0 || v < -1 {
            bail!("{flag} must be -1 (all images) or at least 1 (got {v})");
        }
    }
    if a.eval_step_interval == 0 {
        bail!("--eval-step-interval must be at least 1");
    }
    if !(a.learning_rate.is_finite() && a.learning_rate > 0.0) {
        bail!(
            "--learning-rate must be a positive number (got {})",
            a.learning_rate
        );
    }
    Ok(())
}

/// Feature rows of one set, grouped by class.
fn rows_by_class(b: &Bottlenecks, classes: usize, set: Set) -> Vec<Vec<u32>> {
    let mut rows = vec![Vec::new(); classes];
    for (i, e) in b.examples.iter().enumerate().filter(|(_, e)| e.set == set) {
        rows[e.class].push(i as u32);
    }
    rows
}

/// The rows an evaluation uses: all of them (`size` −1, in order) or a class-balanced sample.
fn eval_rows(rng: &mut StdRng, rows: &[Vec<u32>], size: i64) -> Vec<u32> {
    if size < 0 {
        rows.concat()
    } else {
        sampling::class_balanced(rng, rows, size as usize)
    }
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let started = Instant::now();
    validate(args)?;
    let log = Logger::new(&args.logging_verbosity);
    let image_dir = args
        .image_dir
        .as_deref()
        .expect("clap requires --image-dir");
    let dataset = Dataset::scan(
        image_dir,
        args.validation_percentage,
        args.testing_percentage,
    )?;
    let labels = dataset.labels();
    let classes = labels.len();

    let weights_path = default_weights::resolve(args.weights.as_deref())?;
    let file = WeightFile::open(&weights_path)?;
    let mut engine = Engine::new(Gpu::new()?, &file, args.input_size)?;
    let input_size = engine.input_size();
    let norm = &file.info.normalization;
    let cache = BottleneckCache::new(
        &args.bottleneck_dir,
        &file.info.fingerprint,
        input_size,
        norm.scale,
        norm.offset,
    );
    let t = Instant::now();
    let b = bottlenecks::gather(&mut engine, &cache, &dataset)?;
    let bottleneck_secs = t.elapsed().as_secs_f64();
    log.info(format!(
        "Bottlenecks: {} from the cache, {} computed, {} unreadable images skipped ({bottleneck_secs:.1} s)",
        b.examples.len() - b.computed,
        b.computed,
        b.skipped
    ));

    let train = rows_by_class(&b, classes, Set::Training);
    let validation = rows_by_class(&b, classes, Set::Validation);
    let test = rows_by_class(&b, classes, Set::Testing);
    if let Some(c) = train.iter().position(|r| r.is_empty()) {
        bail!(
            "class \"{}\" has no training images (it has too few images for the split); add images to {}",
            labels[c],
            image_dir.join(&dataset.classes[c].folder).display()
        );
    }
    for (set, rows) in [("validation", &validation), ("testing", &test)] {
        for c in (0..classes).filter(|&c| rows[c].is_empty()) {
            log.warn(format!("class \"{}\" has no {set} images", labels[c]));
        }
    }

    let seed = args.seed.unwrap_or_else(rand::random);
    log.info(format!(
        "Seed {seed}; {} classes: {}",
        classes,
        labels.join(", ")
    ));
    let mut rng = StdRng::seed_from_u64(seed);
    let dim = b.dim;
    let mut initial = sampling::truncated_normal(&mut rng, dim * classes, 0.001);
    initial.extend(std::iter::repeat_n(0.0, classes));
    let row_labels: Vec<u32> = b.examples.iter().map(|e| e.class as u32).collect();
    let gpu = &engine.gpu;
    let head = GpuHead::new(
        gpu,
        &b.features,
        &row_labels,
        dim as u32,
        classes as u32,
        &initial,
        args.learning_rate,
    )?;

    let snapshot = |step: u32, extra: HashMap<String, String>| {
        classifier(
            &head,
            gpu,
            &labels,
            &file,
            &weights_path,
            input_size,
            args,
            step,
            extra,
        )
    };

    let t = Instant::now();
    let train_batch = head.batch(gpu, args.train_batch_size as u32);
    let validation_count: usize = validation.iter().map(Vec::len).sum();
    let mut validation_batches: HashMap<u32, head::Batch> = HashMap::new();
    let mut last = (f32::NAN, f32::NAN, None::<f32>);
    let steps = args.how_many_training_steps;
    let mut writers = match &args.summaries_dir {
        Some(dir) => Some((
            summaries::SummaryWriter::create(&dir.join("train"))?,
            summaries::SummaryWriter::create(&dir.join("validation"))?,
        )),
        None => None,
    };
    for step in 0..steps {
        let rows = sampling::class_balanced(&mut rng, &train, args.train_batch_size as usize);
        head.train_step(gpu, &train_batch, &rows);
        if step % args.eval_step_interval == 0 || step + 1 == steps {
            let (xent, accuracy) = head.evaluate(gpu, &train_batch, &rows)?;
            log.info(format!(
                "Step {step}: Train accuracy = {:.1}%",
                accuracy * 100.0
            ));
            log.info(format!("Step {step}: Cross entropy = {xent:.6}"));
            if let Some((train_writer, _)) = writers.as_mut() {
                train_writer.scalar("accuracy", accuracy, step)?;
                train_writer.scalar("cross_entropy", xent, step)?;
            }
            let mut val_accuracy = None;
            if validation_count > 0 {
                let vrows = eval_rows(&mut rng, &validation, args.validation_batch_size);
                let n = vrows.len() as u32;
                let vb = validation_batches
                    .entry(n)
                    .or_insert_with(|| head.batch(gpu, n));
                let (val_xent, acc) = head.evaluate(gpu, vb, &vrows)?;
                log.info(format!(
                    "Step {step}: Validation accuracy = {:.1}% (N={n})",
                    acc * 100.0
                ));
                if let Some((_, validation_writer)) = writers.as_mut() {
                    validation_writer.scalar("accuracy", acc, step)?;
                    validation_writer.scalar("cross_entropy", val_xent, step)?;
                }
                val_accuracy = Some(acc);
            }
            last = (accuracy, xent, val_accuracy);
        }
        if args.intermediate_store_frequency > 0
            && step > 0
            && step % args.intermediate_store_frequency == 0
        {
            let path = args
                .intermediate_output_graphs_dir
                .join(format!("intermediate_{step}.safetensors"));
            log.info(format!("Saving intermediate result to {}", path.display()));
            snapshot(step, HashMap::new())?.write(&path)?;
        }
    }
    let training_secs = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let test_rows = eval_rows(&mut rng, &test, args.test_batch_size);
    let report = if test_rows.is_empty() {
        log.warn("no test images: skipping the final evaluation");
        None
    } else {
        let tb = head.batch(gpu, test_rows.len() as u32);
        let predicted = head.predict(gpu, &tb, &test_rows)?;
        let truth: Vec<usize> = test_rows
            .iter()
            .map(|&r| b.examples[r as usize].class)
            .collect();
        let predicted: Vec<usize> = predicted.iter().map(|&p| p as usize).collect();
        let report = TestReport::new(classes, &truth, &predicted);
        log.info(format!(
            "Final test accuracy = {:.1}% (N={})",
            report.accuracy * 100.0,
            report.n
        ));
        log.info(format!("Per class:\n{}", report.table(&labels)));
        if args.print_misclassified_test_images {
            log.info("=== MISCLASSIFIED TEST IMAGES ===");
            for ((&row, &t), &p) in test_rows
                .iter()
                .zip(&truth)
                .zip(&predicted)
                .filter(|((_, t), p)| t != p)
            {
                log.info(format!(
                    "{:>40}  true: {}  predicted: {}",
                    b.examples[row as usize].path.display(),
                    labels[t],
                    labels[p]
                ));
            }
        }
        Some(report)
    };
    let eval_secs = t.elapsed().as_secs_f64();

    let mut extra = HashMap::new();
    extra.insert("train_accuracy".into(), last.0.to_string());
    extra.insert("cross_entropy".into(), last.1.to_string());
    if let Some(v) = last.2 {
        extra.insert("validation_accuracy".into(), v.to_string());
    }
    if let Some(r) = &report {
        extra.insert("test_accuracy".into(), r.accuracy.to_string());
    }
    let final_classifier = snapshot(steps, extra)?;
    final_classifier.write(&args.output_graph)?;
    outputs::write_labels(&args.output_labels, &labels)?;
    if let Some(dir) = &args.saved_model_dir {
        outputs::write_saved_model(dir, &weights_path, &final_classifier)?;
    }
    let metrics = serde_json::json!({
        "seed": seed,
        "steps": steps,
        "learning_rate": args.learning_rate,
        "train_batch_size": args.train_batch_size,
        "labels": labels,
        "input_size": [input_size.0, input_size.1],
        "device": engine.gpu.info.name,
        "images": {
            "training": train.iter().map(Vec::len).sum::<usize>(),
            "validation": validation_count,
            "testing": test.iter().map(Vec::len).sum::<usize>(),
            "skipped": b.skipped,
        },
        "bottlenecks": { "computed": b.computed, "from_cache": b.examples.len() - b.computed },
        "final": {
            "train_accuracy": last.0,
            "cross_entropy": last.1,
            "validation_accuracy": last.2,
            "test": report,
        },
        "timings_seconds": {
            "bottlenecks": bottleneck_secs,
            "training": training_secs,
            "evaluation": eval_secs,
            "total": started.elapsed().as_secs_f64(),
        },
    });
    let metrics_path = args.output_graph.with_file_name("metrics.json");
    crate::atomic_file::write_bytes(
        &metrics_path,
        serde_json::to_string_pretty(&metrics)?.as_bytes(),
    )?;
    log.info(format!(
        "Wrote {}, {} and {} ({:.1} s in all)",
        args.output_graph.display(),
        args.output_labels.display(),
        metrics_path.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The head's current parameters with everything `classify` needs.
#[allow(clippy::too_many_arguments)]
fn classifier(
    head: &GpuHead,
    gpu: &Gpu,
    labels: &[String],
    file: &WeightFile,
    weights_path: &std::path::Path,
    input_size: (u32, u32),
    args: &TrainArgs,
    step: u32,
    mut extra: HashMap<String, String>,
) -> Result<Classifier> {
    let params = head.parameters(gpu)?;
    let n_weights = head.dim as usize * labels.len();
    extra.insert("steps".into(), step.to_string());
    extra.insert("learning_rate".into(), args.learning_rate.to_string());
    extra.insert("final_tensor_name".into(), args.final_tensor_name.clone());
    Ok(Classifier {
        weights: params[..n_weights].to_vec(),
        biases: params[n_weights..].to_vec(),
        labels: labels.to_vec(),
        base_fingerprint: file.info.fingerprint.clone(),
        base_weights: std::fs::canonicalize(weights_path)
            .unwrap_or_else(|_| weights_path.to_path_buf()),
        input_size,
        normalization: file.info.normalization.clone(),
        extra,
    })
}
