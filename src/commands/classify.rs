//! `retrain classify`: labels images with a trained classifier, applying
//! exactly the preprocessing recorded in it (label_image.py's job).

use crate::cli::{ClassifierArgs, ClassifyArgs};
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
    weights: Option<&Path>,
    classifier: &Classifier,
    beside: Option<PathBuf>,
) -> Result<PathBuf> {
    if let Some(w) = weights.map(Path::to_path_buf).or(beside) {
        return Ok(w);
    }
    if classifier.base_weights.is_file() {
        return Ok(classifier.base_weights.clone());
    }
    default_weights::resolve(None, classifier.architecture)
}

/// A trained classifier (a file or a saved-model folder, with `labels`
/// replacing its own when given) and the base weights it was trained on.
pub fn load_classifier(which: &ClassifierArgs) -> Result<(Classifier, WeightFile)> {
    let (classifier_path, beside) = locate(&which.graph);
    let mut classifier = Classifier::read(&classifier_path)?;
    if let Some(path) = &which.labels {
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
    let base = base_weights(which.weights.as_deref(), &classifier, beside)?;
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
    let file = file
        .with_replaced(&classifier.fine_tuned)
        .with_context(|| {
            format!(
                "{} does not fit its base weights",
                classifier_path.display()
            )
        })?;
    Ok((classifier, file))
}

/// The classifier and the engine running its base network with exactly the
/// preprocessing recorded in it, tuned for this device.
pub fn open_classifier(which: &ClassifierArgs) -> Result<(Classifier, Engine)> {
    let (classifier, file) = load_classifier(which)?;
    let mut engine = Engine::new(Gpu::new()?, &file, Some(classifier.input_size))?;
    engine.tune_on_first_use()?;
    engine.info.normalization = classifier.normalization.clone();
    Ok((classifier, engine))
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
    let (classifier, mut engine) = open_classifier(&args.classifier)?;
    let cutoff = cutoff(args, &classifier.labels)?;
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
            let decision = cutoff.map(|c| c.decide(row, &classifier.labels));
            print_top(path, row, &classifier.labels, args, decision);
        }
    }
    if failures > 0 && failures == args.inputs.len() {
        bail!("none of the images could be read");
    }
    Ok(())
}

/// `--threshold LABEL=P`: LABEL is called whenever its probability reaches P.
#[derive(Clone, Copy)]
struct Cutoff {
    class: usize,
    probability: f32,
}

fn cutoff(args: &ClassifyArgs, labels: &[String]) -> Result<Option<Cutoff>> {
    let Some((label, probability)) = &args.threshold else {
        return Ok(None);
    };
    let Some(class) = labels.iter().position(|l| l == label) else {
        bail!(
            "--threshold names the label {label:?}, but the classifier's labels are {}",
            labels.join(", ")
        );
    };
    Ok(Some(Cutoff {
        class,
        probability: *probability,
    }))
}

impl Cutoff {
    /// The label called for one image's probabilities: the cut-off's label
    /// when its probability reaches the cut-off, else the most probable other one.
    fn decide(self, probs: &[f32], labels: &[String]) -> String {
        if probs[self.class] >= self.probability {
            return labels[self.class].clone();
        }
        let mut others: Vec<(usize, f32)> = probs.iter().copied().enumerate().collect();
        others.retain(|&(c, _)| c != self.class);
        let best = others
            .iter()
            .fold(others[0], |b, &o| if o.1 > b.1 { o } else { b });
        labels[best.0].clone()
    }
}

/// `classify --json`'s line for one image.
#[derive(Serialize)]
struct ImageResult<'a> {
    path: String,
    predictions: &'a [Prediction],
    /// The label called under --threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<String>,
}

fn print_top(
    path: &Path,
    probs: &[f32],
    labels: &[String],
    args: &ClassifyArgs,
    decision: Option<String>,
) {
    let top = top_k(probs, labels, args.top_k);
    if args.json {
        let line = ImageResult {
            path: path.display().to_string(),
            predictions: &top,
            decision,
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
        if let (Some(decision), Some((label, p))) = (decision, &args.threshold) {
            println!("  decision: {decision} (cut-off: {label} when its probability ≥ {p})");
        }
    }
}
