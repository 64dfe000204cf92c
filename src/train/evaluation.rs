//! The final test: the kept classifier on the test split, and its numbers —
//! accuracy, per-class precision and recall, the confusion matrix, and every
//! test image's probabilities (for the report's precision–recall curves and
//! its misclassified images).

use super::bottlenecks::Bottlenecks;
use crate::gpu::Gpu;
use crate::head::classifier::Classifier;
use crate::progress::progress_bar;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Test rows per head invocation: bounds the buffers of a large test split.
const ROWS_PER_BATCH: usize = 256;

/// An error naming the first of `rows` whose bottleneck holds a value that is not a number.
fn all_finite(b: &Bottlenecks, rows: &[u32]) -> Result<()> {
    match rows
        .iter()
        .find(|&&r| b.row(r as usize).iter().any(|v| !v.is_finite()))
    {
        Some(&r) => bail!(
            "the network's output for {} is not a number: are the weights damaged?",
            b.examples[r as usize].path.display()
        ),
        None => Ok(()),
    }
}

/// The classifier on the test rows, exactly as `classify` would run it on
/// the same bottlenecks; None without test images.
pub fn final_test(
    gpu: &Gpu,
    classifier: &Classifier,
    test_rows: &[u32],
    b: &Bottlenecks,
    print_misclassified: bool,
) -> Result<Option<TestReport>> {
    if test_rows.is_empty() {
        log::warn!("no test images: skipping the final evaluation");
        return Ok(None);
    }
    all_finite(b, test_rows)?;
    let classes = classifier.labels.len();
    let batch = ROWS_PER_BATCH.min(test_rows.len());
    let mut predictor = classifier.predictor(gpu, batch as u32)?;
    let bar = progress_bar("test", test_rows.len(), "images");
    let mut predictions = Vec::with_capacity(test_rows.len());
    for rows in test_rows.chunks(batch) {
        let features: Vec<f32> = rows
            .iter()
            .flat_map(|&r| b.row(r as usize).iter().copied())
            .collect();
        let probabilities = predictor.probabilities(gpu, &features)?;
        for (&r, p) in rows.iter().zip(probabilities.chunks(classes)) {
            let example = &b.examples[r as usize];
            predictions.push(TestPrediction {
                path: absolute(&example.path),
                truth: example.class,
                probabilities: p.to_vec(),
            });
        }
        bar.inc(rows.len() as u64);
    }
    bar.finish_and_clear();
    let report = TestReport::new(classes, predictions);
    log::info!("Per class:\n{}", report.table(&classifier.labels));
    if print_misclassified {
        log::info!("=== MISCLASSIFIED TEST IMAGES ===");
        for p in report
            .predictions
            .iter()
            .filter(|p| p.truth != p.predicted())
        {
            log::info!(
                "{:>40}  true: {}  predicted: {}",
                p.path,
                classifier.labels[p.truth],
                classifier.labels[p.predicted()]
            );
        }
    }
    Ok(Some(report))
}

/// The path as an absolute one, so that `retrain report` finds the image
/// (or the run's folders) from anywhere.
pub fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// One test image: where it is, its true class and the classifier's probabilities.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TestPrediction {
    pub path: String,
    pub truth: usize,
    pub probabilities: Vec<f32>,
}

impl TestPrediction {
    /// The most probable class (the first on a tie, as `top_k` orders them).
    pub fn predicted(&self) -> usize {
        let mut best = 0;
        for (c, &p) in self.probabilities.iter().enumerate() {
            if p > self.probabilities[best] {
                best = c;
            }
        }
        best
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct TestReport {
    pub n: usize,
    pub accuracy: f64,
    /// confusion[true][predicted].
    pub confusion: Vec<Vec<u32>>,
    pub precision: Vec<Option<f64>>,
    pub recall: Vec<Option<f64>>,
    pub predictions: Vec<TestPrediction>,
}

impl TestReport {
    pub fn new(classes: usize, predictions: Vec<TestPrediction>) -> Self {
        let mut confusion = vec![vec![0u32; classes]; classes];
        for p in &predictions {
            confusion[p.truth][p.predicted()] += 1;
        }
        let n = predictions.len();
        let correct: u32 = (0..classes).map(|c| confusion[c][c]).sum();
        let ratio = |num: u32, den: u32| (den > 0).then(|| num as f64 / den as f64);
        let precision = (0..classes)
            .map(|c| ratio(confusion[c][c], (0..classes).map(|t| confusion[t][c]).sum()))
            .collect();
        let recall = (0..classes)
            .map(|c| ratio(confusion[c][c], confusion[c].iter().sum()))
            .collect();
        TestReport {
            n,
            accuracy: ratio(correct, n as u32).unwrap_or(0.0),
            confusion,
            precision,
            recall,
            predictions,
        }
    }

    /// Test images classified correctly (the confusion matrix's diagonal).
    pub fn correct(&self) -> usize {
        (0..self.confusion.len())
            .map(|c| self.confusion[c][c] as usize)
            .sum()
    }

    /// A human-readable table of per-class precision/recall and the confusion matrix.
    pub fn table(&self, labels: &[String]) -> String {
        let width = labels.iter().map(|l| l.len()).max().unwrap_or(5).max(10);
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
        let mut out = format!(
            "{:width$}  precision  recall  (rows: true label, columns: predicted)\n",
            "class"
        );
        for (c, label) in labels.iter().enumerate() {
            out += &format!(
                "{label:width$}  {:>9}  {:>6}  ",
                pct(self.precision[c]),
                pct(self.recall[c])
            );
            out += &self.confusion[c]
                .iter()
                .map(|n| format!("{n:>6}"))
                .collect::<String>();
            out += "\n";
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(truth: usize, p0: f32) -> TestPrediction {
        TestPrediction {
            path: format!("{truth}/{p0}.jpg"),
            truth,
            probabilities: vec![p0, 1.0 - p0],
        }
    }

    #[test]
    fn precision_recall_and_confusion() {
        let predictions = [(0, 0.9), (0, 0.8), (0, 0.3), (1, 0.2), (1, 0.6)];
        let r = TestReport::new(2, predictions.map(|(t, p)| image(t, p)).to_vec());
        assert_eq!(r.confusion, vec![vec![2, 1], vec![1, 1]]);
        assert_eq!(r.accuracy, 0.6);
        assert_eq!(r.precision, vec![Some(2.0 / 3.0), Some(0.5)]);
        assert_eq!(r.recall, vec![Some(2.0 / 3.0), Some(0.5)]);
    }

    #[test]
    fn a_bottleneck_that_is_not_a_number_is_an_error_naming_its_image() {
        let example = |name: &str| crate::train::bottlenecks::Example {
            class: 0,
            set: crate::data::dataset::Set::Testing,
            path: name.into(),
        };
        let b = Bottlenecks {
            examples: vec![example("a.jpg"), example("b.jpg")],
            features: vec![0.5, 1.0, 2.0, f32::NAN],
            dim: 2,
            computed: 2,
            skipped: 0,
            deferred: 0,
            cut: vec![None, None],
        };
        assert!(all_finite(&b, &[0]).is_ok());
        let e = all_finite(&b, &[0, 1]).unwrap_err().to_string();
        assert!(e.contains("b.jpg") && e.contains("not a number"), "{e}");
    }
}
