//! Fine-tuning with distortions: each training micro-batch's images decoded
//! (or taken from the decoded-image cache), distorted on their way into the
//! network, and run through the frozen part up to the cut — no cache, since
//! no two epochs see the same pixels.

use super::training::CutSource;
use crate::data::decode_cache::{DecodeCache, Prefetcher};
use crate::data::distortion::DistortionFlags;
use crate::engine::Engine;
use anyhow::{Context, Result};
use image::RgbImage;
use rand::rngs::StdRng;
use std::path::PathBuf;
use std::sync::Arc;

pub struct DistortedCuts<'a> {
    engine: &'a mut Engine,
    flags: DistortionFlags,
    /// The cut's tensor name.
    layer: String,
    paths: Vec<PathBuf>,
    prefetcher: Prefetcher,
}

impl<'a> DistortedCuts<'a> {
    /// Activations at `layer` of the examples at `paths`, distorted as
    /// `flags` ask, with `cache_bytes` of decoded images kept.
    pub fn new(
        engine: &'a mut Engine,
        flags: DistortionFlags,
        layer: &str,
        paths: Vec<PathBuf>,
        cache_bytes: u64,
    ) -> Self {
        let prefetcher = Prefetcher::spawn(DecodeCache::new(paths.clone(), cache_bytes));
        DistortedCuts {
            engine,
            flags,
            layer: layer.to_string(),
            paths,
            prefetcher,
        }
    }
}

impl CutSource for DistortedCuts<'_> {
    fn cut(&mut self, rows: &[u32], rng: &mut StdRng) -> Result<Vec<f32>> {
        self.prefetcher
            .request(rows.iter().map(|&r| r as usize).collect());
        let images: Vec<Arc<RgbImage>> = self.prefetcher.receive()?;
        let refs: Vec<&RgbImage> = images.iter().map(|i| i.as_ref()).collect();
        let input = self.engine.input_size();
        let distortions: Vec<_> = rows.iter().map(|_| self.flags.sample(rng, input)).collect();
        let layer = self.layer.as_str();
        let mut outputs = self
            .engine
            .outputs(&refs, &distortions, &[layer])
            .with_context(|| {
                let first = &self.paths[rows[0] as usize];
                format!(
                    "distorting training images (batch starting with {})",
                    first.display()
                )
            })?;
        Ok(outputs.remove(0))
    }
}
