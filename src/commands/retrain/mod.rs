//! `retrain` without a subcommand: retrain.py's job as a sequence of named
//! phases — check the flags, scan and split the folder, open the base model,
//! cache every bottleneck, train the heads, test the kept one, write the
//! classifier, the labels, metrics.json and report.html (every log line also
//! going to train.log).

mod config;
mod fine_tuning;
mod metrics;

pub use config::training_config;

use crate::cli::TrainArgs;
use crate::convert::default_weights;
use crate::data::bottleneck_cache::BottleneckCache;
use crate::data::dataset::Dataset;
use crate::engine::Engine;
use crate::gpu::Gpu;
use crate::head::classifier::{write_labels, write_saved_model, Classifier};
use crate::logging::{self, LOG_FILE};
use crate::model::weights::WeightFile;
use crate::report::run_metrics::{BaseWeights, RunMetrics, Timings, METRICS_FILE};
use crate::report::statistics::wilson_interval;
use crate::report::{self, REPORT_FILE};
use crate::train::batches::CachedBatches;
use crate::train::bottlenecks::{self, Bottlenecks, TestImages};
use crate::train::config::TrainingConfig;
use crate::train::distorted::DistortedBatches;
use crate::train::evaluation::final_test;
use crate::train::log::{heads_table, TrainingLog};
use crate::train::rows::{eval_rows, split_rows, TrainingData};
use crate::train::training_loop::{initial_heads, train_heads, Observers, Progress, Trained};
use anyhow::{Context, Result};
use rand::{rngs::StdRng, SeedableRng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Rows by class of the training, validation and test sets.
type Sets = [Vec<Vec<u32>>; 3];

pub fn run(args: &TrainArgs) -> Result<()> {
    let started = Instant::now();
    config::validate(args)?;
    let out = output_dir(args);
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create the output folder {}", out.display()))?;
    logging::also_to_file(&out.join(LOG_FILE))?;
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
    let (weights_path, file, mut engine) = open_base(args)?;
    let template = classifier_template(args, &labels, &file, &weights_path, &engine);
    let cache = bottlenecks::cache_for(&engine, &args.bottleneck_dir);
    let fine_tune = fine_tuning::prepare(args, &engine, &cache, &dataset)?;

    let t = Instant::now();
    let cut = fine_tune.as_ref().map(|f| f.cut_request(&cache));
    let test_images = match fine_tune {
        Some(_) => TestImages::Later,
        None => TestImages::Now,
    };
    let mut b = bottlenecks::gather(&mut engine, &cache, &dataset, cut.as_ref(), test_images)?;
    let bottleneck_secs = t.elapsed().as_secs_f64();
    log::info!(
        "Bottlenecks: {} from the cache, {} computed, {} unreadable images skipped ({bottleneck_secs:.1} s)",
        b.examples.len() - b.computed - b.deferred,
        b.computed,
        b.skipped
    );
    if b.deferred > 0 {
        log::info!(
            "{} test images run at the end, through the fine-tuned network",
            b.deferred
        );
    }
    let mut sets = split_rows(&b, &dataset, image_dir)?;

    let seed = args.seed.unwrap_or_else(rand::random);
    log::info!(
        "Seed {seed}; {} classes: {}",
        labels.len(),
        labels.join(", ")
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let config = config::fit_to_device(args, &engine.gpu, (b.dim, labels.len()));

    let t = Instant::now();
    let trained = train(&mut engine, &template, args, &b, &sets, &config, &mut rng)?;
    let training_secs = t.elapsed().as_secs_f64();
    if trained.outcomes.len() > 1 {
        if trained.selected_on_training {
            log::warn!("no validation images: the heads were compared on the training images, which favours the least regularised");
        }
        log::info!(
            "Sweep results ({training_secs:.1} s):\n{}",
            heads_table(&trained)
        );
    }

    let mut classifier = kept_classifier(&engine.gpu, &template, &trained, config.rule.steps)?;
    let t = Instant::now();
    let fine_tuned = match fine_tune {
        Some(f) => {
            let sets = (&sets[0][..], &sets[1][..]);
            let head = trained.chosen_standardized(&engine.gpu)?;
            let base = (&mut engine, &file);
            Some(f.run(base, args, (&mut classifier, head), &b, sets, &mut rng)?)
        }
        None => None,
    };
    let fine_tuning_secs = t.elapsed().as_secs_f64();

    let t = Instant::now();
    if !classifier.fine_tuned.is_empty() {
        // The test runs the fine-tuned network from the images, as `classify` will.
        let file = WeightFile::open(&weights_path)?.with_replaced(&classifier.fine_tuned)?;
        let gpu = engine.gpu.clone();
        let input = engine.input_size();
        drop(engine);
        engine = Engine::new(gpu, &file, Some(input))?;
    }
    if test_images == TestImages::Later {
        let cache = bottlenecks::cache_for(&engine, &args.bottleneck_dir);
        test_through(&mut engine, &cache, &dataset, &mut b, &mut sets[2])?;
    }
    let test_rows = eval_rows(&mut rng, &sets[2], args.test_batch_size);
    let gpu = &engine.gpu;
    let print_misclassified = args.print_misclassified_test_images;
    let report = final_test(gpu, &classifier, &test_rows, &b, print_misclassified)?;
    let eval_secs = t.elapsed().as_secs_f64();
    if let Some(r) = &report {
        classifier
            .extra
            .insert("test_accuracy".into(), r.accuracy.to_string());
    }
    write_classifier(&classifier, args)?;

    let timings = Timings {
        bottlenecks: bottleneck_secs,
        training: training_secs,
        fine_tuning: fine_tuning_secs,
        evaluation: eval_secs,
        total: started.elapsed().as_secs_f64(),
    };
    let run = metrics::Run {
        args,
        config: &config,
        labels: &labels,
        input_size: engine.input_size(),
        device: &engine.gpu.info.name,
        base: BaseWeights {
            architecture: engine.architecture().name().to_string(),
            fingerprint: file.info.fingerprint.clone(),
            path: template.base_weights.display().to_string(),
        },
        seed,
    };
    let mut metrics = run.metrics(&trained, report, &sets, &b, timings);
    metrics.fine_tuning = fine_tuned;
    crate::atomic_file::write_bytes(&out.join(METRICS_FILE), metrics.to_json()?.as_bytes())?;
    let report_path = out.join(REPORT_FILE);
    report::write(&metrics, &report_path)?;
    say_what_next(&metrics, args, &report_path, started);
    Ok(())
}

/// The bottlenecks of every test image through `engine`, read from `cache`
/// or computed; images that cannot be read leave the test set.
fn test_through(
    engine: &mut Engine,
    cache: &BottleneckCache,
    dataset: &Dataset,
    b: &mut Bottlenecks,
    test_set: &mut [Vec<u32>],
) -> Result<()> {
    let readable = bottlenecks::refresh(engine, cache, dataset, b, &test_set.concat())?;
    for rows in test_set {
        rows.retain(|r| readable.contains(r));
    }
    Ok(())
}

/// The base weights (the default ones fetched on first use), their file, and
/// the engine at the requested input size.
fn open_base(args: &TrainArgs) -> Result<(PathBuf, WeightFile, Engine)> {
    let path = default_weights::resolve(args.weights.as_deref(), args.architecture)?;
    let file = WeightFile::open(&path)?;
    let engine = Engine::new(Gpu::new()?, &file, args.input_size)?;
    Ok((path, file, engine))
}

/// Everything a saved classifier of this run records, without the head.
fn classifier_template(
    args: &TrainArgs,
    labels: &[String],
    file: &WeightFile,
    weights_path: &Path,
    engine: &Engine,
) -> Classifier {
    let extra = HashMap::from([("final_tensor_name".into(), args.final_tensor_name.clone())]);
    Classifier {
        architecture: engine.architecture(),
        weights: Vec::new(),
        biases: Vec::new(),
        labels: labels.to_vec(),
        base_fingerprint: file.info.fingerprint.clone(),
        base_weights: std::fs::canonicalize(weights_path)
            .unwrap_or_else(|_| weights_path.to_path_buf()),
        input_size: engine.input_size(),
        normalization: file.info.normalization.clone(),
        fine_tuned: Vec::new(),
        extra,
    }
}

/// The template with a head's parameters (for raw bottlenecks), the step it
/// was saved at and any other numbers worth recording.
fn snapshot(
    template: &Classifier,
    (weights, biases): (Vec<f32>, Vec<f32>),
    step: u32,
    extra: HashMap<String, String>,
) -> Classifier {
    let mut c = template.clone();
    (c.weights, c.biases) = (weights, biases);
    c.extra.insert("steps".into(), step.to_string());
    c.extra.extend(extra);
    c
}

/// Trains the configured heads on cached or distorted batches, with the
/// progress bar, the log lines and the intermediate classifiers.
fn train(
    engine: &mut Engine,
    template: &Classifier,
    args: &TrainArgs,
    b: &Bottlenecks,
    [train, validation, _]: &Sets,
    config: &TrainingConfig,
    rng: &mut StdRng,
) -> Result<Trained> {
    let classes = template.labels.len();
    let initial = initial_heads(rng, config.settings.len(), b.dim, classes);
    let row_labels: Vec<u32> = b.examples.iter().map(|e| e.class as u32).collect();
    let data = TrainingData {
        features: &b.features,
        labels: &row_labels,
        dim: b.dim as u32,
        classes: classes as u32,
        train,
        validation,
    };
    let heads = config.settings.len();
    let mut training_log =
        TrainingLog::new(args.summaries_dir.as_deref(), heads, config.rule.steps)?;
    let bar = training_log.bar.clone();
    let gpu = engine.gpu.clone();
    let mut evaluated = |p: &_| training_log.evaluated(p);
    let mut stepped = |step: u32, progress: &Progress| -> Result<()> {
        bar.inc(1);
        let every = args.intermediate_store_frequency;
        if every > 0 && step > 0 && step.is_multiple_of(every) {
            let path = args
                .intermediate_output_graphs_dir
                .join(format!("intermediate_{step}.safetensors"));
            log::info!("Saving intermediate result to {}", path.display());
            let head = progress.export_leader(&gpu)?;
            snapshot(template, head, step, HashMap::new()).write(&path)?;
        }
        Ok(())
    };
    let observers = Observers {
        evaluated: &mut evaluated,
        stepped: &mut stepped,
    };
    let distortions = args.distortions();
    let trained = if distortions.any() {
        engine.tune_on_first_use()?;
        log::info!(
            "Distorting training images ({distortions:?}): every step runs {} images through the network",
            config.batch_size
        );
        let mut batches = DistortedBatches::new(
            engine,
            distortions,
            &b.examples,
            train,
            config.batch_size as usize,
            args.image_cache_mb << 20,
        );
        train_heads(&gpu, &data, config, &initial, rng, &mut batches, observers)?
    } else {
        let mut batches = CachedBatches {
            train,
            size: config.batch_size as usize,
        };
        train_heads(&gpu, &data, config, &initial, rng, &mut batches, observers)?
    };
    bar.finish_and_clear();
    Ok(trained)
}

/// The kept head as a classifier for raw bottlenecks, with its numbers in
/// the metadata.
fn kept_classifier(
    gpu: &Gpu,
    template: &Classifier,
    trained: &Trained,
    steps: u32,
) -> Result<Classifier> {
    let last = trained.last.expect("at least one evaluation");
    let chosen = &trained.outcomes[trained.chosen as usize];
    let mut extra = HashMap::new();
    extra.insert("train_accuracy".into(), last.train.accuracy.to_string());
    extra.insert("cross_entropy".into(), last.train.cross_entropy.to_string());
    if let Some((v, _)) = last.validation {
        extra.insert("validation_accuracy".into(), v.accuracy.to_string());
    }
    let settings = chosen.settings;
    extra.insert("learning_rate".into(), settings.learning_rate.to_string());
    extra.insert("l2".into(), settings.l2.to_string());
    extra.insert("kept_step".into(), chosen.step.to_string());
    Ok(snapshot(template, trained.export(gpu)?, steps, extra))
}

/// Writes the classifier (and the saved-model folder when asked) and the labels file.
fn write_classifier(classifier: &Classifier, args: &TrainArgs) -> Result<()> {
    classifier.write(&args.output_graph)?;
    write_labels(&args.output_labels, &classifier.labels)?;
    if let Some(dir) = &args.saved_model_dir {
        write_saved_model(dir, &classifier.base_weights, classifier)?;
    }
    Ok(())
}

/// The folder of the classifier, where metrics.json, report.html and train.log go.
fn output_dir(args: &TrainArgs) -> PathBuf {
    match args.output_graph.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The last lines of a run: the result, where everything is, what to try next.
fn say_what_next(m: &RunMetrics, args: &TrainArgs, report: &Path, started: Instant) {
    if let Some(test) = &m.final_.test {
        let correct = test.correct();
        let (lo, hi) = wilson_interval(correct, test.n);
        log::info!(
            "Final test accuracy = {:.1}% (N={}; 95% interval {:.1}–{:.1}%)",
            test.accuracy * 100.0,
            test.n,
            lo * 100.0,
            hi * 100.0
        );
    }
    let beside = |name: &str| report.with_file_name(name).display().to_string();
    log::info!(
        "Wrote {}, {}, {} and {} ({:.1} s in all)",
        args.output_graph.display(),
        args.output_labels.display(),
        beside(METRICS_FILE),
        beside(LOG_FILE),
        started.elapsed().as_secs_f64()
    );
    log::info!("Report: {}", report.display());
    if m.fine_tuning.is_none() && m.base.architecture == "inception_v3" {
        log::info!("--fine-tune may raise accuracy: it trains the network's top blocks with the head (slower)");
    }
    log::info!(
        "Next, label images with it: retrain classify --graph {} IMAGE_OR_FOLDER...",
        args.output_graph.display()
    );
}
