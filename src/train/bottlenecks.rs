//! Every image's bottleneck — and, when fine-tuning, the validation images'
//! activations at the cut, and the training images' unless they are
//! distorted — read from the cache, or
//! computed on the GPU in batches (decoding one batch ahead, one pass for
//! both) and cached at once, so an interrupted run loses nothing. The test
//! images' can wait for the end of the run (`TestImages::Later`), when it is
//! known which network they go through.

use crate::data::bottleneck_cache::BottleneckCache;
use crate::data::claims::{self, Claim, Held};
use crate::data::dataset::{Dataset, Set};
use crate::data::distortion::Distortion;
use crate::data::loader;
use crate::engine::Engine;
use crate::model::graph::OUTPUT;
use crate::progress::progress_bar;
use anyhow::Result;
use half::f16;
use indicatif::ProgressBar;
use std::collections::{BTreeSet, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

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
    /// Test images left for `refresh` (TestImages::Later).
    pub deferred: usize,
    /// Each example's activations at the fine-tuning cut, for the images
    /// `CutRequest::wanted` names (None for the others).
    pub cut: Vec<Option<Vec<f16>>>,
}

/// When the test images' bottlenecks are computed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TestImages {
    /// With the others.
    Now,
    /// By `refresh` at the end (those not cached; until then their rows hold
    /// NaN): fine-tuning tests through the fine-tuned network when it wins,
    /// so computing them through the base network first could be wasted.
    Later,
}

/// The activations at a fine-tuning cut, gathered with the bottlenecks.
pub struct CutRequest {
    pub cache: BottleneckCache,
    /// The tensor's name ("mixed8") and values per image.
    pub layer: String,
    pub size: usize,
    /// Whether the training images' are wanted too, not only the validation images'.
    pub training: bool,
}

impl CutRequest {
    /// Whether an image of `set` gets its cut activations gathered, with or
    /// without the `training` images'.
    pub fn wanted(set: Set, training: bool) -> bool {
        set == Set::Validation || training && set == Set::Training
    }
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
    /// The cut's entry, when its activations there are wanted (CutRequest::wanted).
    cut_entry: Option<PathBuf>,
}

/// A cached entry, or None (with a warning when it cannot be trusted).
fn cached(cache: &BottleneckCache, entry: &std::path::Path, len: usize) -> Option<Vec<f32>> {
    match cache.load(entry, len) {
        Ok(v) => v,
        Err(e) => {
            log::warn!(
                "cached {} cannot be trusted ({e:#}); recomputing it",
                entry.display()
            );
            None
        }
    }
}

pub fn gather(
    engine: &mut Engine,
    cache: &BottleneckCache,
    dataset: &Dataset,
    cut: Option<&CutRequest>,
    test_images: TestImages,
) -> Result<Bottlenecks> {
    let dim = engine.bottleneck_size();
    let mut examples = Vec::new();
    let mut vectors: Vec<Option<Vec<f32>>> = Vec::new();
    let mut cuts: Vec<Option<Vec<f16>>> = Vec::new();
    let mut pending = Vec::new();
    let mut deferred = 0;
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
            let cut_entry = match cut {
                Some(c) if CutRequest::wanted(image.set, c.training) => {
                    Some(c.cache.entry_path(&class.folder, &image.path)?)
                }
                _ => None,
            };
            let mut vector = cached(cache, &entry, dim);
            let cut_values = match (cut, &cut_entry) {
                (Some(c), Some(e)) => cached(&c.cache, e, c.size).map(|v| to_f16(&v)),
                _ => None,
            };
            if vector.is_none() && image.set == Set::Testing && test_images == TestImages::Later {
                vector = Some(vec![f32::NAN; dim]);
                deferred += 1;
            }
            if vector.is_none() || cut_entry.is_some() && cut_values.is_none() {
                pending.push(Pending {
                    index,
                    entry,
                    cut_entry,
                });
            }
            vectors.push(vector);
            cuts.push(cut_values);
        }
    }
    let mut found = Found {
        vectors: &mut vectors,
        cuts: &mut cuts,
    };
    let computed = compute(engine, cache, cut, &examples, &pending, &mut found)?;
    let mut kept = Vec::new();
    let mut kept_cuts = Vec::new();
    let mut features = Vec::with_capacity(examples.len() * dim);
    for ((example, v), c) in examples.into_iter().zip(vectors).zip(cuts) {
        if let Some(v) = v {
            features.extend_from_slice(&v);
            kept.push(example);
            kept_cuts.push(c);
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
        deferred,
        cut: kept_cuts,
    })
}

/// Replaces the bottlenecks of examples `rows` with `engine`'s (another
/// network, e.g. the fine-tuned one, or the same one for test images left
/// for later), read from `cache` or computed and cached. Returns the rows
/// whose images could be read (the others are counted as skipped).
pub fn refresh(
    engine: &mut Engine,
    cache: &BottleneckCache,
    dataset: &Dataset,
    b: &mut Bottlenecks,
    rows: &[u32],
) -> Result<BTreeSet<u32>> {
    let dim = b.dim;
    let distinct: BTreeSet<u32> = rows.iter().copied().collect();
    let entries = (distinct.iter())
        .map(|&r| {
            let e = &b.examples[r as usize];
            let entry = cache.entry_path(&dataset.classes[e.class].folder, &e.path)?;
            Ok((r as usize, entry))
        })
        .collect::<Result<Vec<_>>>()?;
    let (mut vectors, _) = read_or_compute(engine, cache, &b.examples, entries)?;
    let mut read = BTreeSet::new();
    for r in distinct {
        match vectors[r as usize].take() {
            Some(v) => {
                b.features[r as usize * dim..(r as usize + 1) * dim].copy_from_slice(&v);
                read.insert(r);
            }
            None => b.skipped += 1,
        }
    }
    Ok(read)
}

/// The bottleneck cache in `dir` for what `engine` computes (its weights,
/// input size and normalisation).
pub fn cache_for(engine: &Engine, dir: &std::path::Path) -> BottleneckCache {
    let info = &engine.info;
    let norm = &info.normalization;
    BottleneckCache::new(
        dir,
        &info.fingerprint,
        engine.input_size(),
        norm.scale,
        norm.offset,
    )
}

/// The bottleneck of each image (None when it cannot be read), read from
/// `cache` or computed and cached, and how many were computed. An image's
/// entry sits under its folder's name, as `retrain` files the images of a
/// class folder, so the two share entries.
pub fn of_images(
    engine: &mut Engine,
    cache: &BottleneckCache,
    paths: &[PathBuf],
) -> Result<(Vec<Option<Vec<f32>>>, usize)> {
    let mut examples = Vec::new();
    let mut entries = Vec::new();
    for (index, path) in paths.iter().enumerate() {
        let folder = (path.parent().and_then(|p| p.file_name()))
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        examples.push(Example {
            class: 0,
            set: Set::Training,
            path: path.clone(),
        });
        match cache.entry_path(&folder, path) {
            Ok(entry) => entries.push((index, entry)),
            Err(e) => log::warn!("skipping {}: {e:#}", path.display()),
        }
    }
    read_or_compute(engine, cache, &examples, entries)
}

/// The bottleneck of each example `index` whose entry is given, read from
/// `cache` or computed and cached (None for the others, and for images that
/// cannot be read), and how many were computed.
fn read_or_compute(
    engine: &mut Engine,
    cache: &BottleneckCache,
    examples: &[Example],
    entries: Vec<(usize, PathBuf)>,
) -> Result<(Vec<Option<Vec<f32>>>, usize)> {
    let dim = engine.bottleneck_size();
    let mut vectors = vec![None; examples.len()];
    let mut pending = Vec::new();
    for (index, entry) in entries {
        vectors[index] = cached(cache, &entry, dim);
        if vectors[index].is_none() {
            pending.push(Pending {
                index,
                entry,
                cut_entry: None,
            });
        }
    }
    let mut cuts = vec![None; examples.len()];
    let mut found = Found {
        vectors: &mut vectors,
        cuts: &mut cuts,
    };
    let computed = compute(engine, cache, None, examples, &pending, &mut found)?;
    Ok((vectors, computed))
}

fn to_f16(values: &[f32]) -> Vec<f16> {
    values.iter().map(|&v| f16::from_f32(v)).collect()
}

/// Each example's bottleneck and cut activations found so far.
struct Found<'a> {
    vectors: &'a mut [Option<Vec<f32>>],
    cuts: &'a mut [Option<Vec<f16>>],
}

/// Computes and caches the pending entries; undecodable images stay `None`.
/// Entries another process sharing the cache is computing are waited for and
/// read, not computed again (data::claims). Returns how many this process computed.
fn compute(
    engine: &mut Engine,
    cache: &BottleneckCache,
    cut: Option<&CutRequest>,
    examples: &[Example],
    pending: &[Pending],
    found: &mut Found,
) -> Result<usize> {
    if pending.is_empty() {
        return Ok(0);
    }
    // Tuned only when the network will run: a fully cached run needs no kernels.
    engine.tune_on_first_use()?;
    let (h, w) = engine.input_size();
    let mut names = vec![OUTPUT];
    if let Some(c) = cut {
        names.push(&c.layer);
        let images = pending.iter().filter(|p| p.cut_entry.is_some()).count() as u64;
        log::info!(
            "Caching the {} activations of {images} images as f16 ({} MiB on disk)",
            c.layer,
            (images * c.cache.entry_bytes(c.size)) >> 20
        );
    }
    log::info!(
        "Computing {} bottlenecks at {h}×{w} on \"{}\"",
        pending.len(),
        engine.gpu.info.name
    );
    let dim = engine.bottleneck_size();
    let bar = progress_bar("bottlenecks", pending.len(), "images");
    let mut work = Work {
        cache,
        cut,
        examples,
        decoder: loader::Decoder::spawn(),
        batch: engine.max_batch() as usize,
        dim,
        todo: pending.iter().collect(),
        waiting: Vec::new(),
        from_others: 0,
        said_waiting: false,
    };
    let mut next = work.claim_next(found, &bar)?;
    let mut computed = 0;
    while !next.is_empty() || !work.waiting.is_empty() {
        if next.is_empty() {
            work.wait_for_others();
            next = work.claim_next(found, &bar)?;
            continue;
        }
        let current = std::mem::take(&mut next);
        let decoded = work.decoder.receive()?;
        next = work.claim_next(found, &bar)?;
        let u = loader::usable(decoded, |img| engine.check_image(img));
        let owners: Vec<&Pending> = u.positions.iter().map(|&k| current[k].0).collect();
        let images: Vec<&image::RgbImage> = u.images.iter().collect();
        let none = vec![Distortion::none(engine.input_size()); images.len()];
        let outputs = engine.outputs(&images, &none, &names)?;
        for (k, p) in owners.iter().enumerate() {
            let row = &outputs[0][k * dim..(k + 1) * dim];
            cache.store(&p.entry, row)?;
            found.vectors[p.index] = Some(row.to_vec());
            if let (Some(c), Some(entry)) = (cut, &p.cut_entry) {
                let values = &outputs[1][k * c.size..(k + 1) * c.size];
                c.cache.store(entry, values)?;
                found.cuts[p.index] = Some(to_f16(values));
            }
            computed += 1;
        }
        bar.inc(current.len() as u64); // the claims are released here, the entries written
    }
    bar.finish_and_clear();
    if work.from_others > 0 {
        log::info!(
            "{} bottlenecks were written meanwhile by another process sharing the cache",
            work.from_others
        );
    }
    Ok(computed)
}

/// The pending entries of a `compute`, claimed a batch at a time.
struct Work<'a> {
    cache: &'a BottleneckCache,
    cut: Option<&'a CutRequest>,
    examples: &'a [Example],
    /// Decodes each claimed batch while the one before runs.
    decoder: loader::Decoder,
    batch: usize,
    /// Values per bottleneck.
    dim: usize,
    todo: VecDeque<&'a Pending>,
    /// Entries another process has claimed.
    waiting: Vec<&'a Pending>,
    /// Entries found written by another process.
    from_others: usize,
    said_waiting: bool,
}

/// How often entries another process computes are looked for.
const POLL: Duration = Duration::from_millis(200);

impl<'a> Work<'a> {
    /// Claims the next batch and starts decoding it.
    fn claim_next(
        &mut self,
        found: &mut Found,
        bar: &ProgressBar,
    ) -> Result<Vec<(&'a Pending, Held)>> {
        let batch = self.claim_batch(found, bar)?;
        if !batch.is_empty() {
            let paths = batch
                .iter()
                .map(|(p, _)| self.examples[p.index].path.clone());
            self.decoder.request(paths.collect());
        }
        Ok(batch)
    }

    /// Claims up to a batch of entries to compute; entries another process
    /// has written meanwhile are read instead, those it is computing wait.
    fn claim_batch(
        &mut self,
        found: &mut Found,
        bar: &ProgressBar,
    ) -> Result<Vec<(&'a Pending, Held)>> {
        let mut batch = Vec::new();
        while batch.len() < self.batch {
            let Some(p) = self.todo.pop_front() else {
                break;
            };
            match claims::claim(&p.entry)? {
                Claim::Mine(held) if !self.read_written(p, found) => batch.push((p, held)),
                Claim::Mine(_) => bar.inc(1),
                Claim::Theirs => self.waiting.push(p),
            }
        }
        Ok(batch)
    }

    /// Whether another process wrote `p`'s entries (then they are in `found`).
    fn read_written(&mut self, p: &Pending, found: &mut Found) -> bool {
        let complete = |e: &std::path::Path| e.exists();
        if !complete(&p.entry) || p.cut_entry.as_deref().is_some_and(|e| !complete(e)) {
            return false;
        }
        let vector = cached(self.cache, &p.entry, self.dim);
        let cut = match (self.cut, &p.cut_entry) {
            (Some(c), Some(e)) => cached(&c.cache, e, c.size).map(|v| Some(to_f16(&v))),
            _ => Some(None),
        };
        let (Some(vector), Some(cut)) = (vector, cut) else {
            return false;
        };
        found.vectors[p.index] = Some(vector);
        found.cuts[p.index] = cut;
        self.from_others += 1;
        true
    }

    /// Sleeps a little, then looks again at the entries others were computing.
    fn wait_for_others(&mut self) {
        if !self.said_waiting {
            log::info!(
                "waiting for {} bottlenecks another process sharing the cache is computing",
                self.waiting.len()
            );
            self.said_waiting = true;
        }
        std::thread::sleep(POLL);
        self.todo.extend(self.waiting.drain(..));
    }
}
