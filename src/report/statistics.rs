//! The numbers the report derives from the test predictions: the 95%
//! interval of an accuracy, each class's precision–recall curve, and the
//! probability cut-offs that reach a given recall.

/// z for a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// The Wilson score interval (95%) of `successes` out of `n`: unlike p ± z·σ
/// it stays within [0, 1] and is sensible at small N and at 0% or 100%.
pub fn wilson_interval(successes: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (successes as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let denominator = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / denominator;
    let half = Z95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denominator;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// A point of a precision–recall curve: the images whose score is at least
/// `threshold` are called positive.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrPoint {
    pub threshold: f32,
    pub precision: f64,
    pub recall: f64,
    /// Images called positive at this threshold.
    pub flagged: usize,
}

/// The precision–recall curve of `scores` (one per image, the probability of
/// the class) against `positive` (whether the image is of the class), one
/// point per distinct score, highest threshold first. Empty without positives.
pub fn pr_curve(scores: &[f32], positive: &[bool]) -> Vec<PrPoint> {
    let total = positive.iter().filter(|&&p| p).count();
    if total == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = Vec::new();
    let (mut true_positives, mut flagged) = (0usize, 0usize);
    for (i, &image) in order.iter().enumerate() {
        flagged += 1;
        true_positives += positive[image] as usize;
        // Tied scores are called positive together.
        if order
            .get(i + 1)
            .is_some_and(|&next| scores[next] == scores[image])
        {
            continue;
        }
        points.push(PrPoint {
            threshold: scores[image],
            precision: true_positives as f64 / flagged as f64,
            recall: true_positives as f64 / total as f64,
            flagged,
        });
    }
    points
}

/// The highest threshold whose recall reaches `recall` (the operating point
/// that flags the fewest images for it).
pub fn cutoff_for_recall(curve: &[PrPoint], recall: f64) -> Option<PrPoint> {
    // A tolerance so that 0.95 is reached by 19 of 20, despite rounding.
    curve.iter().copied().find(|p| p.recall >= recall - 1e-9)
}

/// A cut-off printed to four decimals, rounded down so that it still admits
/// the image whose probability it is.
pub fn cutoff_text(threshold: f32) -> String {
    format!("{:.4}", (threshold as f64 * 1e4).floor() / 1e4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 5e-4
    }

    #[test]
    fn wilson_matches_hand_computed_values() {
        // 18/20: centre (0.9 + 1.92/40)/(1 + 3.84/20) = 0.8356, half-width 0.1366.
        let (lo, hi) = wilson_interval(18, 20);
        assert!(close(lo, 0.6990) && close(hi, 0.9721), "{lo} {hi}");
        // 0/10: [0, z²/(n + z²)] = [0, 0.2775].
        let (lo, hi) = wilson_interval(0, 10);
        assert!(lo == 0.0 && close(hi, 0.2775), "{lo} {hi}");
        // 50/100: 0.5 ± 1.96·√(0.0025 + 0.000096)/1.0384 = [0.4038, 0.5962].
        let (lo, hi) = wilson_interval(50, 100);
        assert!(close(lo, 0.4038) && close(hi, 0.5962), "{lo} {hi}");
        assert_eq!(wilson_interval(0, 0), (0.0, 1.0));
    }

    #[test]
    fn curve_and_cutoffs_match_a_hand_count() {
        // Four positives among six images, by decreasing score: + + − + − +.
        let scores = [0.4, 0.9, 0.7, 0.8, 0.3, 0.6];
        let positive = [false, true, false, true, true, true];
        let curve = pr_curve(&scores, &positive);
        let expected = [
            (0.9, 1.0, 0.25, 1),
            (0.8, 1.0, 0.5, 2),
            (0.7, 2.0 / 3.0, 0.5, 3),
            (0.6, 0.75, 0.75, 4),
            (0.4, 0.6, 0.75, 5),
            (0.3, 4.0 / 6.0, 1.0, 6),
        ];
        assert_eq!(curve.len(), expected.len());
        for (p, &(t, precision, recall, flagged)) in curve.iter().zip(&expected) {
            assert_eq!((p.threshold, p.flagged), (t, flagged));
            assert!(
                close(p.precision, precision) && close(p.recall, recall),
                "{p:?}"
            );
        }
        let at = |r| cutoff_for_recall(&curve, r).unwrap();
        assert_eq!(at(0.5).threshold, 0.8);
        assert_eq!(at(0.75).threshold, 0.6);
        assert_eq!(at(0.9).threshold, 0.3);
        assert!(close(at(0.9).precision, 4.0 / 6.0));
    }

    #[test]
    fn cutoffs_are_printed_rounded_down() {
        assert_eq!(cutoff_text(0.28179), "0.2817");
        assert_eq!(cutoff_text(0.5), "0.5000");
        assert_eq!(cutoff_text(0.0), "0.0000");
    }

    #[test]
    fn tied_scores_form_one_point() {
        let curve = pr_curve(&[0.5, 0.5, 0.2], &[true, false, true]);
        assert_eq!(curve.len(), 2);
        assert_eq!((curve[0].flagged, curve[0].recall), (2, 0.5));
        assert!(pr_curve(&[0.5], &[false]).is_empty());
    }
}
