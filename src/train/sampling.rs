//! Seeded randomness as retrain.py uses it: class-balanced batches and the
//! truncated-normal weight initialisation.

use rand::rngs::StdRng;
use rand::Rng;

/// retrain.py's MAX_NUM_IMAGES_PER_CLASS + 1: the range image indices are drawn from.
const INDEX_RANGE: u32 = 1 << 27;

/// `size` rows drawn as retrain.py draws a batch: each picks a class uniformly
/// (among classes that have rows), then one of its rows, with replacement.
pub fn class_balanced(rng: &mut StdRng, rows_by_class: &[Vec<u32>], size: usize) -> Vec<u32> {
    let classes: Vec<&Vec<u32>> = rows_by_class.iter().filter(|r| !r.is_empty()).collect();
    (0..size)
        .map(|_| {
            let rows = classes[rng.random_range(0..classes.len())];
            rows[rng.random_range(0..INDEX_RANGE) as usize % rows.len()]
        })
        .collect()
}

/// Normal(0, stddev) values, redrawn beyond two standard deviations
/// (tf.truncated_normal).
pub fn truncated_normal(rng: &mut StdRng, n: usize, stddev: f64) -> Vec<f32> {
    (0..n)
        .map(|_| loop {
            // Box–Muller.
            let u1: f64 = 1.0 - rng.random::<f64>();
            let u2: f64 = rng.random();
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            if z.abs() <= 2.0 {
                break (z * stddev) as f32;
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn truncated_normal_stays_in_bounds_with_the_right_spread() {
        let v = truncated_normal(&mut StdRng::seed_from_u64(1), 20000, 0.001);
        assert!(v.iter().all(|x| x.abs() <= 0.002));
        let sd = (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
        assert!((sd - 0.00088).abs() < 0.00005, "{sd}"); // a 2σ-truncated normal has σ ≈ 0.88
    }

    #[test]
    fn batches_balance_classes() {
        let rows = vec![vec![0, 1, 2, 3, 4, 5, 6, 7, 8], vec![9], vec![]];
        let batch = class_balanced(&mut StdRng::seed_from_u64(2), &rows, 1000);
        let ninth = batch.iter().filter(|&&r| r == 9).count();
        assert!((400..600).contains(&ninth), "{ninth}");
    }
}
