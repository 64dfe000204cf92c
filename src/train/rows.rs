//! Feature rows: which rows of the bottleneck matrix belong to which class
//! and split set, and the rows an evaluation looks at.

use super::bottlenecks::Bottlenecks;
use super::sampling;
use crate::data::dataset::{Dataset, Set};
use anyhow::{bail, Result};
use rand::rngs::StdRng;

/// The cached bottlenecks ([N, dim]) with their labels, and the feature rows
/// by class of the two sets training looks at.
pub struct TrainingData<'a> {
    pub features: &'a [f32],
    pub labels: &'a [u32],
    pub dim: u32,
    pub classes: u32,
    pub train: &'a [Vec<u32>],
    pub validation: &'a [Vec<u32>],
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
pub fn eval_rows(rng: &mut StdRng, rows: &[Vec<u32>], size: i64) -> Vec<u32> {
    if size < 0 {
        rows.concat()
    } else {
        sampling::class_balanced(rng, rows, size as usize)
    }
}

/// Feature rows by class of the training, validation and test sets; an error
/// when a class has no training image, a warning when it lacks the others.
pub fn split_rows(
    b: &Bottlenecks,
    dataset: &Dataset,
    image_dir: &std::path::Path,
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
            log::warn!("class \"{}\" has no {set} images", labels[c]);
        }
    }
    Ok([train, validation, test])
}
