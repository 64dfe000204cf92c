//! `retrain features`: bottleneck vectors of a folder or list of images, as .npy.

use super::open_engine;
use crate::cli::FeaturesArgs;
use crate::data::{images, loader, npy};
use crate::engine::Engine;
use crate::progress::progress_bar;
use crate::train::bottlenecks;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn input_paths(args: &FeaturesArgs) -> Result<Vec<PathBuf>> {
    let mut paths = match &args.image_dir {
        Some(dir) => images::list_images(dir)?,
        None => Vec::new(),
    };
    paths.extend(args.files.iter().cloned());
    if paths.is_empty() {
        bail!(
            "no images found (looked for {} files)",
            images::EXTENSIONS.join(", ")
        );
    }
    Ok(paths)
}

/// The `.paths` file beside an output: FILE.npy -> FILE.npy.paths.
pub fn paths_file(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".paths");
    PathBuf::from(name)
}

pub fn run(args: &FeaturesArgs) -> Result<()> {
    // The network first: an input size it cannot take is refused before any work.
    let mut engine = open_engine(&args.model)?;
    let paths = input_paths(args)?;
    engine.tune_on_first_use()?;
    let batch = args.batch_size.unwrap_or(u32::MAX).min(engine.max_batch()) as usize;
    let (h, w) = engine.input_size();
    log::info!(
        "{} images at {h}×{w} on \"{}\", {batch} per batch",
        paths.len(),
        engine.gpu.info.name
    );

    let started = Instant::now();
    let (rows, done, skipped) = match &args.bottleneck_dir {
        Some(dir) => through_cache(&mut engine, dir, paths)?,
        None => computed(&mut engine, paths, batch)?,
    };
    if done.is_empty() {
        bail!("none of the {skipped} images could be read; nothing written");
    }
    let cols = engine.bottleneck_size();
    npy::write_f32(&args.output, done.len(), cols, &rows)?;
    let listing: String = done.iter().map(|p| format!("{}\n", p.display())).collect();
    crate::atomic_file::write_bytes(&paths_file(&args.output), listing.as_bytes())?;
    let secs = started.elapsed().as_secs_f64();
    log::info!(
        "wrote {} ({} × {cols}) in {secs:.1} s, {:.1} images/s{}",
        args.output.display(),
        done.len(),
        done.len() as f64 / secs,
        if skipped > 0 {
            format!("; skipped {skipped} unreadable files")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// Rows, the images they belong to and how many images were skipped.
type Features = (Vec<f32>, Vec<PathBuf>, usize);

/// Every image's bottleneck, computed in batches of `batch`.
fn computed(engine: &mut Engine, paths: Vec<PathBuf>, batch: usize) -> Result<Features> {
    let bar = progress_bar("features", paths.len(), "images");
    let (mut rows, mut done, mut skipped) = (Vec::new(), Vec::new(), 0usize);
    for decoded in loader::decode_batches(paths, batch) {
        let u = loader::usable(decoded, |img| engine.check_image(img));
        skipped += u.skipped;
        bar.inc(u.skipped as u64);
        rows.extend(engine.bottlenecks(&u.images)?);
        bar.inc(u.paths.len() as u64);
        done.extend(u.paths);
    }
    bar.finish_and_clear();
    Ok((rows, done, skipped))
}

/// Every image's bottleneck, read from the cache in `dir` or computed and cached.
fn through_cache(engine: &mut Engine, dir: &Path, paths: Vec<PathBuf>) -> Result<Features> {
    let cache = bottlenecks::cache_for(engine, dir);
    let (vectors, computed) = bottlenecks::of_images(engine, &cache, &paths)?;
    log::info!(
        "Bottlenecks: {} from the cache, {computed} computed",
        vectors.iter().flatten().count() - computed
    );
    let (mut rows, mut done, mut skipped) = (Vec::new(), Vec::new(), 0usize);
    for (path, vector) in paths.into_iter().zip(vectors) {
        match vector {
            Some(v) => {
                rows.extend(v);
                done.push(path);
            }
            None => skipped += 1,
        }
    }
    Ok((rows, done, skipped))
}
