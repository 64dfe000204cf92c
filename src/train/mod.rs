//! The main job, retrain.py's flow: scan and split the folder, cache every
//! bottleneck, train a new softmax head on the GPU, evaluate it on the test
//! split and write the classifier, the labels and metrics.json.

pub mod bottlenecks;
pub mod distorted;
pub mod head;
pub mod log;
pub mod optimizer;
pub mod outputs;
pub mod report;
pub mod sampling;
pub mod standardize;
pub mod summaries;
pub mod sweep;

use crate::cli::TrainArgs;
use crate::convert::default_weights;
use crate::data::bottleneck_cache::BottleneckCache;
use crate::data::dataset::{Dataset, Set};
use crate::engine::Engine;
use crate::gpu::Gpu;
use crate::model::weights::WeightFile;
use anyhow::{bail, Result};
use bottlenecks::Bottlenecks;
use log::{Logger, TrainingLog};
use outputs::Classifier;
use rand::{rngs::StdRng, SeedableRng};
use report::TestReport;
use std::collections::HashMap;
use std::time::Instant;

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
    if a.how_many_training_steps == 0 {
        bail!("--how-many-training-steps must be at least 1");
    }
    if a.eval_step_interval == 0 {
        bail!("--eval-step-interval must be at least 1");
    }
    let positive = |v: f32| v.is_finite() && v > 0.0;
    if let Some(rate) = a.learning_rate.filter(|&r| !positive(r)) {
        bail!("--learning-rate must be a positive number (got {rate})");
    }
    if let Some(rate) = a.sweep_learning_rates.iter().find(|&&r| !positive(r)) {
        bail!("--sweep-learning-rates must be positive numbers (got {rate})");
    }
    if let Some(l2) = a.sweep_l2.iter().find(|&&v| !(v.is_finite() && v >= 0.0)) {
        bail!("--sweep-l2 must be zero or positive numbers (got {l2})");
    }
    for (flag, v) in [
        ("--momentum", a.momentum),
        ("--label-smoothing", a.label_smoothing),
        ("--dropout", a.dropout),
    ] {
        if !(0.0..1.0).contains(&v) {
            bail!("{flag} must be at least 0 and below 1 (got {v})");
        }
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

    let [train, validation, test] = split_rows(&b, &dataset, image_dir, &log)?;

    let seed = args.seed.unwrap_or_else(rand::random);
    log.info(format!(
        "Seed {seed}; {} classes: {}",
        classes,
        labels.join(", ")
    ));
    let mut rng = StdRng::seed_from_u64(seed);
    let dim = b.dim;
    let config = heads_config(args, &engine.gpu, (dim, classes), &log);
    let initial = initial_heads(&mut rng, config.settings.len(), dim, classes);
    let row_labels: Vec<u32> = b.examples.iter().map(|e| e.class as u32).collect();
    let gpu = &engine.gpu.clone();
    let snapshot =
        |step: u32, weights: Vec<f32>, biases: Vec<f32>, extra: HashMap<String, String>| {
            classifier(
                (weights, biases),
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
    let heads_count = config.settings.len();
    let mut training_log = TrainingLog::new(
        &log,
        args.summaries_dir.as_deref(),
        heads_count,
        config.rule.steps,
    )?;
    let bar = training_log.bar.clone();
    let mut evaluated = |p: &sweep::EvalPoint| training_log.evaluated(p);
    let mut stepped = |step: u32, progress: &sweep::Progress| -> Result<()> {
        bar.inc(1);
        let images_per_s = (step + 1) as f64 * config.batch_size as f64 / t.elapsed().as_secs_f64();
        bar.set_message(format!("{images_per_s:.1} images/s"));
        let every = args.intermediate_store_frequency;
        if every > 0 && step > 0 && step.is_multiple_of(every) {
            let path = args
                .intermediate_output_graphs_dir
                .join(format!("intermediate_{step}.safetensors"));
            bar.suspend(|| log.info(format!("Saving intermediate result to {}", path.display())));
            let (w, bias) = progress.export_leader(gpu)?;
            snapshot(step, w, bias, HashMap::new())?.write(&path)?;
        }
        Ok(())
    };
    let data = sweep::TrainingData {
        features: &b.features,
        labels: &row_labels,
        dim: dim as u32,
        classes: classes as u32,
        train: &train,
        validation: &validation,
    };
    let distortions = args.distortions();
    let mut cached;
    let mut distorted;
    let batches: &mut dyn sweep::BatchSource = if distortions.any() {
        crate::commands::tune_on_first_use(&mut engine)?;
        log.info(format!(
            "Distorting training images ({distortions:?}): every step runs {} images through the network",
            config.batch_size
        ));
        distorted = distorted::DistortedBatches::new(
            &mut engine,
            distortions,
            &b.examples,
            &train,
            config.batch_size as usize,
            args.image_cache_mb << 20,
        );
        &mut distorted
    } else {
        cached = sweep::CachedBatches {
            train: &train,
            size: config.batch_size as usize,
        };
        &mut cached
    };
    let trained = sweep::train(
        gpu,
        &data,
        &config,
        &initial,
        &mut rng,
        batches,
        sweep::Observers {
            evaluated: &mut evaluated,
            stepped: &mut stepped,
        },
    )?;
    bar.finish_and_clear();
    let training_secs = t.elapsed().as_secs_f64();
    if heads_count > 1 {
        if trained.selected_on_training {
            log.warn("no validation images: the heads were compared on the training images, which favours the least regularised");
        }
        log.info(format!(
            "Sweep results ({training_secs:.1} s):\n{}",
            sweep_table(&trained)
        ));
    }
    let last = trained.last.expect("at least one evaluation");
    let chosen = &trained.outcomes[trained.chosen as usize];

    let t = Instant::now();
    let test_rows = eval_rows(&mut rng, &test, args.test_batch_size);
    let report = final_test(gpu, &trained, &test_rows, &b, &labels, args, &log)?;
    let eval_secs = t.elapsed().as_secs_f64();

    let validation_accuracy = last.validation.map(|(v, _)| v.accuracy);
    let mut extra = HashMap::new();
    extra.insert("train_accuracy".into(), last.train.accuracy.to_string());
    extra.insert("cross_entropy".into(), last.train.cross_entropy.to_string());
    if let Some(v) = validation_accuracy {
        extra.insert("validation_accuracy".into(), v.to_string());
    }
    if let Some(r) = &report {
        extra.insert("test_accuracy".into(), r.accuracy.to_string());
    }
    extra.insert(
        "learning_rate".into(),
        chosen.settings.learning_rate.to_string(),
    );
    extra.insert("l2".into(), chosen.settings.l2.to_string());
    let (weights, biases) = trained.export(gpu)?;
    extra.insert("kept_step".into(), chosen.step.to_string());
    let final_classifier = snapshot(config.rule.steps, weights, biases, extra)?;
    final_classifier.write(&args.output_graph)?;
    outputs::write_labels(&args.output_labels, &labels)?;
    if let Some(dir) = &args.saved_model_dir {
        outputs::write_saved_model(dir, &weights_path, &final_classifier)?;
    }
    let timings = Timings {
        bottlenecks: bottleneck_secs,
        training: training_secs,
        evaluation: eval_secs,
        total: started.elapsed().as_secs_f64(),
    };
    let sets = [&train, &validation, &test];
    let device = &engine.gpu.info.name;
    let metrics = metrics_json(
        args,
        &config,
        &trained,
        report.as_ref(),
        sets,
        (&b, &labels),
        (input_size, device),
        seed,
        &timings,
    );
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

/// A head's parameters (for raw bottlenecks) with everything `classify` needs.
#[allow(clippy::too_many_arguments)]
fn classifier(
    (weights, biases): (Vec<f32>, Vec<f32>),
    labels: &[String],
    file: &WeightFile,
    weights_path: &std::path::Path,
    input_size: (u32, u32),
    args: &TrainArgs,
    step: u32,
    mut extra: HashMap<String, String>,
) -> Result<Classifier> {
    extra.insert("steps".into(), step.to_string());
    extra.insert("final_tensor_name".into(), args.final_tensor_name.clone());
    Ok(Classifier {
        weights,
        biases,
        labels: labels.to_vec(),
        base_fingerprint: file.info.fingerprint.clone(),
        base_weights: std::fs::canonicalize(weights_path)
            .unwrap_or_else(|_| weights_path.to_path_buf()),
        input_size,
        normalization: file.info.normalization.clone(),
        extra,
    })
}

/// The sweep's heads, one line each, the kept one marked.
fn sweep_table(t: &sweep::Trained) -> String {
    let mut lines = vec![format!(
        "  {:>4}  {:>13}  {:>9}  {:>10}  {:>13}  {:>9}  {}",
        "head", "learning rate", "L2", "val. acc.", "val. x-entropy", "kept step", "stopped"
    )];
    for (i, o) in t.outcomes.iter().enumerate() {
        lines.push(format!(
            "{} {:>4}  {:>13}  {:>9}  {:>9.1}%  {:>14.4}  {:>9}  {}",
            if i as u32 == t.chosen { "*" } else { " " },
            i,
            o.settings.learning_rate,
            o.settings.l2,
            o.selection.accuracy * 100.0,
            o.selection.cross_entropy,
            o.step,
            o.stopped_at
                .map_or("-".to_string(), |s| format!("at step {s}"))
        ));
    }
    lines.join("\n")
}

/// Feature rows by class of the training, validation and test sets; an error
/// when a class has no training image, a warning when it lacks the others.
fn split_rows(
    b: &Bottlenecks,
    dataset: &Dataset,
    image_dir: &std::path::Path,
    log: &Logger,
) -> Result<[Vec<Vec<u32>>; 3]> {
    let labels = dataset.labels();
    let classes = labels.len();
    let [train, validation, test] =
        [Set::Training, Set::Validation, Set::Testing].map(|set| rows_by_class(b, classes, set));
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
    Ok([train, validation, test])
}

/// The flags' training, with the sweep thinned to the heads the device holds.
fn heads_config(
    args: &TrainArgs,
    gpu: &Gpu,
    (dim, classes): (usize, usize),
    log: &Logger,
) -> sweep::SweepConfig {
    let mut config = sweep::SweepConfig::from_args(args);
    let fit = head::GpuHeads::max_heads(gpu, (dim as u32, classes as u32)).max(1);
    if config.settings.len() > fit {
        log.warn(format!(
            "this device holds only {fit} heads of {classes} classes side by side: sweeping {fit} of the {} learning rate × L2 pairs",
            config.settings.len()
        ));
        let all = std::mem::take(&mut config.settings);
        config.settings = (0..fit).map(|i| all[i * all.len() / fit]).collect();
    }
    if config.settings.len() > 1 {
        log.info(format!(
            "Training {} heads side by side ({} learning rates × {} L2 penalties, {:?}); the best on the validation images is kept",
            config.settings.len(),
            args.sweep_learning_rates.len(),
            args.sweep_l2.len(),
            config.rule.optimizer
        ));
    }
    config
}

/// retrain.py's initialisation for each head: weights ~ truncated normal
/// (σ 0.001), biases 0.
fn initial_heads(rng: &mut StdRng, heads: usize, dim: usize, classes: usize) -> Vec<f32> {
    (0..heads)
        .flat_map(|_| {
            let mut head = sampling::truncated_normal(rng, dim * classes, 0.001);
            head.extend(std::iter::repeat_n(0.0, classes));
            head
        })
        .collect()
}

/// The chosen head on the test rows: accuracy, per-class table and, if
/// asked, every misclassified image; None without test images.
fn final_test(
    gpu: &Gpu,
    trained: &sweep::Trained,
    test_rows: &[u32],
    b: &Bottlenecks,
    labels: &[String],
    args: &TrainArgs,
    log: &Logger,
) -> Result<Option<TestReport>> {
    if test_rows.is_empty() {
        log.warn("no test images: skipping the final evaluation");
        return Ok(None);
    }
    let predicted = trained.heads.predict_rows(gpu, test_rows, trained.chosen)?;
    let truth: Vec<usize> = test_rows
        .iter()
        .map(|&r| b.examples[r as usize].class)
        .collect();
    let predicted: Vec<usize> = predicted.iter().map(|&p| p as usize).collect();
    let report = TestReport::new(labels.len(), &truth, &predicted);
    log.info(format!(
        "Final test accuracy = {:.1}% (N={})",
        report.accuracy * 100.0,
        report.n
    ));
    log.info(format!("Per class:\n{}", report.table(labels)));
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
    Ok(Some(report))
}

/// Seconds spent in each phase of the run.
struct Timings {
    bottlenecks: f64,
    training: f64,
    evaluation: f64,
    total: f64,
}

/// metrics.json: the run's settings, the sweep's grid, the final numbers and timings.
#[allow(clippy::too_many_arguments)]
fn metrics_json(
    args: &TrainArgs,
    config: &sweep::SweepConfig,
    trained: &sweep::Trained,
    report: Option<&TestReport>,
    [train, validation, test]: [&Vec<Vec<u32>>; 3],
    (b, labels): (&Bottlenecks, &[String]),
    (input_size, device): ((u32, u32), &str),
    seed: u64,
    timings: &Timings,
) -> serde_json::Value {
    let distortions = args.distortions();
    let last = trained.last.expect("at least one evaluation");
    let validation_accuracy = last.validation.map(|(v, _)| v.accuracy);
    let chosen = &trained.outcomes[trained.chosen as usize];
    let sweep: Vec<_> = trained
        .outcomes
        .iter()
        .map(|o| {
            serde_json::json!({
                "learning_rate": o.settings.learning_rate,
                "l2": o.settings.l2,
                "kept_step": o.step,
                "stopped_at": o.stopped_at,
                "validation_accuracy": o.selection.accuracy,
                "validation_cross_entropy": o.selection.cross_entropy,
            })
        })
        .collect();
    serde_json::json!({
        "seed": seed,
        "steps": config.rule.steps,
        "head_training": if args.retrain_py_head { "retrain.py" } else { "sweep" },
        "optimizer": format!("{:?}", config.rule.optimizer),
        "standardized": config.standardize,
        "label_smoothing": config.rule.label_smoothing,
        "dropout": config.rule.dropout,
        "steps_run": trained.steps,
        "distortions": {
            "flip_left_right": distortions.flip_left_right,
            "random_crop": distortions.random_crop,
            "random_scale": distortions.random_scale,
            "random_brightness": distortions.random_brightness,
            "distorted_images": if distortions.any() { trained.steps as usize * config.batch_size as usize } else { 0 },
        },
        "train_batch_size": args.train_batch_size,
        "labels": labels,
        "input_size": [input_size.0, input_size.1],
        "device": device,
        "images": {
            "training": train.iter().map(Vec::len).sum::<usize>(),
            "validation": validation.iter().map(Vec::len).sum::<usize>(),
            "testing": test.iter().map(Vec::len).sum::<usize>(),
            "skipped": b.skipped,
        },
        "bottlenecks": { "computed": b.computed, "from_cache": b.examples.len() - b.computed },
        "sweep": {
            "heads": sweep,
            "chosen": trained.chosen,
            "compared_on": if trained.selected_on_training { "training" } else { "validation" },
        },
        "final": {
            "learning_rate": chosen.settings.learning_rate,
            "l2": chosen.settings.l2,
            "kept_step": chosen.step,
            "train_accuracy": last.train.accuracy,
            "cross_entropy": last.train.cross_entropy,
            "validation_accuracy": validation_accuracy,
            "test": report,
        },
        "timings_seconds": {
            "bottlenecks": timings.bottlenecks,
            "training": timings.training,
            "evaluation": timings.evaluation,
            "total": timings.total,
        },
    })
}
