//! `retrain classify`: labels images with a trained classifier, applying
//! exactly the preprocessing recorded in it (label_image.py's job).

use crate::cli::ClassifyArgs;
use crate::convert::default_weights;
use crate::data::{images, loader};
use crate::engine::Engine;
use crate::gpu::Gpu;
use crate::head::classifier::{top_k, Classifier, Prediction, SAVED_BASE, SAVED_CLASSIFIER};
use crate::model::weights::WeightFile;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The classifier file and, for a saved-model folder, the base weights beside it.
fn locate(graph: &Path) -> (PathBuf, Option<PathBuf>) {
    if graph.is_dir() {
        (graph.join(SAVED_CLASSIFIER), Some(graph.join(SAVED_BASE)))
    } else {
        (graph.to_path_buf(), None)
    }
}

fn base_weights(
    args: &ClassifyArgs,
    classifier: &Classifier,
    beside: Option<PathBuf>,
) -> Result<PathBuf> {
    if let Some(w) = args.weights.clone().or(beside) {
        return Ok(w);
    }
    if classifier.base_weights.is_file() {
        return Ok(classifier.base_weights.clone());
    }
    default_weights::resolve(None, classifier.architecture)
}

fn inputs(args: &ClassifyArgs) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for p in &args.inputs {
        if p.is_dir() {
            paths.extend(images::list_images(p)?);
        } else {
            paths.push(p.clone());
        }
    }
    Ok(paths)
}

pub fn run(args: &ClassifyArgs) -> Result<()> {
    let (classifier_path, beside) = locate(&args.graph);
    let mut classifier = Classifier::read(&classifier_path)?;
    if let Some(path) = &args.labels {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read labels file {}", path.display()))?;
        let labels: Vec<String> = text.lines().map(String::from).collect();
        if labels.len() != classifier.labels.len() {
            bail!(
                "{} lists {} labels but the classifier has {} classes",
                path.display(),
                labels.len(),
                classifier.labels.len()
            );
        }
        classifier.labels = labels;
    }
    let base = base_weights(args, &classifier, beside)?;
    let file = WeightFile::open(&base)?;
    if file.info.fingerprint != classifier.base_fingerprint {
        bail!(
            "{} was trained on other base weights (fingerprint {}) than {} ({}); pass the right one with --weights",
            classifier_path.display(),
            classifier.base_fingerprint,
            base.display(),
            file.info.fingerprint
        );
    }
    let mut engine = Engine::new(Gpu::new()?, &file, Some(classifier.input_size))?;
    engine.tune_on_first_use()?;
    engine.info.normalization = classifier.normalization.clone();
    let classes = classifier.labels.len();
    let mut failures = 0;
    let mut head = classifier.predictor(&engine.gpu, engine.max_batch())?;
    for decoded in loader::decode_batches(inputs(args)?, engine.max_batch() as usize) {
        let u = loader::usable(decoded, |img| engine.check_image(img));
        failures += u.skipped;
        let (paths, imgs) = (u.paths, u.images);
        if imgs.is_empty() {
            continue;
        }
        let features = engine.bottlenecks(&imgs)?;
        let probabilities = head.probabilities(&engine.gpu, &features)?;
        for (path, row) in paths.iter().zip(probabilities.chunks(classes)) {
            print_top(path, row, &classifier.labels, args.top_k, args.json);
        }
    }
    if failures > 0 && failures == args.inputs.len() {
        bail!("none of the images could be read");
    }
    Ok(())
}

/// `classify --json`'s line for one image.
#[derive(Serialize)]
struct ImageResult<'a> {
    path: String,
    predictions: &'a [Prediction],
}

fn print_top(path: &Path, probs: &[f32], labels: &[String], k: usize, json: bool) {
    let top = top_k(probs, labels, k);
    if json {
        let line = ImageResult {
            path: path.display().to_string(),
            predictions: &top,
        };
        println!(
            "{}",
            serde_json::to_string(&line).expect("plain data serialises")
        );
    } else {
        println!("{}", path.display());
        for p in &top {
            println!("  {:<24} {:.5}", p.label, p.score);
        }
    }
}
