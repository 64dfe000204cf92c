//! The final test: the kept head on the test split, and its numbers —
//! accuracy, per-class precision and recall, the confusion matrix.

use super::bottlenecks::Bottlenecks;
use super::training_loop::Trained;
use crate::gpu::Gpu;
use anyhow::Result;
use serde::Serialize;

/// The chosen head on the test rows: accuracy, per-class table and, if
/// asked, every misclassified image; None without test images.
pub fn final_test(
    gpu: &Gpu,
    trained: &Trained,
    test_rows: &[u32],
    b: &Bottlenecks,
    labels: &[String],
    print_misclassified: bool,
) -> Result<Option<TestReport>> {
    if test_rows.is_empty() {
        log::warn!("no test images: skipping the final evaluation");
        return Ok(None);
    }
    let predicted = trained.heads.predict_rows(gpu, test_rows, trained.chosen)?;
    let truth: Vec<usize> = test_rows
        .iter()
        .map(|&r| b.examples[r as usize].class)
        .collect();
    let predicted: Vec<usize> = predicted.iter().map(|&p| p as usize).collect();
    let report = TestReport::new(labels.len(), &truth, &predicted);
    log::info!(
        "Final test accuracy = {:.1}% (N={})",
        report.accuracy * 100.0,
        report.n
    );
    log::info!("Per class:\n{}", report.table(labels));
    if print_misclassified {
        log::info!("=== MISCLASSIFIED TEST IMAGES ===");
        for ((&row, &t), &p) in test_rows
            .iter()
            .zip(&truth)
            .zip(&predicted)
            .filter(|((_, t), p)| t != p)
        {
            log::info!(
                "{:>40}  true: {}  predicted: {}",
                b.examples[row as usize].path.display(),
                labels[t],
                labels[p]
            );
        }
    }
    Ok(Some(report))
}

#[derive(Serialize, Clone, Debug)]
pub struct TestReport {
    pub n: usize,
    pub accuracy: f64,
    /// confusion[true][predicted].
    pub confusion: Vec<Vec<u32>>,
    pub precision: Vec<Option<f64>>,
    pub recall: Vec<Option<f64>>,
}

impl TestReport {
    pub fn new(classes: usize, truth: &[usize], predicted: &[usize]) -> Self {
        let mut confusion = vec![vec![0u32; classes]; classes];
        for (&t, &p) in truth.iter().zip(predicted) {
            confusion[t][p] += 1;
        }
        let correct: u32 = (0..classes).map(|c| confusion[c][c]).sum();
        let ratio = |num: u32, den: u32| (den > 0).then(|| num as f64 / den as f64);
        let precision = (0..classes)
            .map(|c| ratio(confusion[c][c], (0..classes).map(|t| confusion[t][c]).sum()))
            .collect();
        let recall = (0..classes)
            .map(|c| ratio(confusion[c][c], confusion[c].iter().sum()))
            .collect();
        TestReport {
            n: truth.len(),
            accuracy: ratio(correct, truth.len() as u32).unwrap_or(0.0),
            confusion,
            precision,
            recall,
        }
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

    #[test]
    fn precision_recall_and_confusion() {
        let r = TestReport::new(2, &[0, 0, 0, 1, 1], &[0, 0, 1, 1, 0]);
        assert_eq!(r.confusion, vec![vec![2, 1], vec![1, 1]]);
        assert_eq!(r.accuracy, 0.6);
        assert_eq!(r.precision, vec![Some(2.0 / 3.0), Some(0.5)]);
        assert_eq!(r.recall, vec![Some(2.0 / 3.0), Some(0.5)]);
    }
}
