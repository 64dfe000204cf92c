//! Every image's bottleneck: read from the cache, or computed on the GPU in
//! batches (decoding one batch ahead) and cached at once, so an interrupted
//! run loses nothing.

use crate::data::bottleneck_cache::BottleneckCache;
use crate::data::dataset::{Dataset, Set};
use crate::data::loader;
use crate::engine::Engine;
use crate::progress::progress_bar;
use anyhow::Result;
use std::path::PathBuf;

/// One usable image: its class, its split set and where it came from.
#[derive(Clone, Debug)]
pub struct Example {
    pub class: usize,
    pub set: Set,
    pub path: PathBuf,
}

pub struct Bottlenecks {
    pub examples: Vec<Example>,
    /// [examples.len(), dim], row-major.
    pub features: Vec<f32>,
    pub dim: usize,
    pub computed: usize,
    pub skipped: usize,
}

impl Bottlenecks {
    /// The bottleneck of example `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }
}

struct Pending {
    index: usize,
    entry: PathBuf,
}

pub fn gather(
    engine: &mut Engine,
    cache: &BottleneckCache,
    dataset: &Dataset,
) -> Result<Bottlenecks> {
    let dim = engine.bottleneck_size();
    let mut examples = Vec::new();
    let mut vectors: Vec<Option<Vec<f32>>> = Vec::new();
    let mut pending = Vec::new();
    for (c, class) in dataset.classes.iter().enumerate() {
        for image in &class.images {
            let entry = match cache.entry_path(&class.folder, &image.path) {
                Ok(e) => e,
                Err(e) => {
                    log::warn!("skipping {}: {e:#}", image.path.display());
                    continue;
                }
            };
            let index = examples.len();
            examples.push(Example {
                class: c,
                set: image.set,
                path: image.path.clone(),
            });
            match cache.load(&entry, dim) {
                Ok(Some(v)) => vectors.push(Some(v)),
                Ok(None) => {
                    vectors.push(None);
                    pending.push(Pending { index, entry });
                }
                Err(e) => {
                    log::warn!(
                        "cached bottleneck {} cannot be trusted ({e:#}); recomputing it",
                        entry.display()
                    );
                    vectors.push(None);
                    pending.push(Pending { index, entry });
                }
            }
        }
    }
    let computed = compute(engine, cache, &examples, &pending, &mut vectors)?;
    let mut kept = Vec::new();
    let mut features = Vec::with_capacity(examples.len() * dim);
    for (example, v) in examples.into_iter().zip(vectors) {
        if let Some(v) = v {
            features.extend_from_slice(&v);
            kept.push(example);
        }
    }
    let skipped = dataset
        .classes
        .iter()
        .map(|c| c.images.len())
        .sum::<usize>()
        - kept.len();
    Ok(Bottlenecks {
        examples: kept,
        features,
        dim,
        computed,
        skipped,
    })
}

/// Computes and caches the pending entries; undecodable images stay `None`.
fn compute(
    engine: &mut Engine,
    cache: &BottleneckCache,
    examples: &[Example],
    pending: &[Pending],
    vectors: &mut [Option<Vec<f32>>],
) -> Result<usize> {
    if pending.is_empty() {
        return Ok(0);
    }
    // Tuned only when the network will run: a fully cached run needs no kernels.
    engine.tune_on_first_use()?;
    let (h, w) = engine.input_size();
    log::info!(
        "Computing {} bottlenecks at {h}×{w} on \"{}\"",
        pending.len(),
        engine.gpu.info.name
    );
    let dim = engine.bottleneck_size();
    let bar = progress_bar("bottlenecks", pending.len(), "images");
    let paths = pending
        .iter()
        .map(|p| examples[p.index].path.clone())
        .collect();
    let mut next = 0;
    let mut computed = 0;
    for decoded in loader::decode_batches(paths, engine.max_batch() as usize) {
        let batch_len = decoded.len();
        let u = loader::usable(decoded, |img| engine.check_image(img));
        let owners: Vec<&Pending> = u.positions.iter().map(|&k| &pending[next + k]).collect();
        next += batch_len;
        let images = u.images;
        let rows = engine.bottlenecks(&images)?;
        for (p, row) in owners.iter().zip(rows.chunks(dim)) {
            cache.store(&p.entry, row)?;
            vectors[p.index] = Some(row.to_vec());
            computed += 1;
        }
        bar.inc(batch_len as u64);
    }
    bar.finish_and_clear();
    Ok(computed)
}
