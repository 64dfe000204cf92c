//! Training batches of distorted images (retrain.py's --random_crop,
//! --random_scale, --flip_left_right, --random_brightness): each step's
//! images are decoded (or taken from the decoded-image cache) on a background
//! thread while the GPU works on the step before, distorted on their way into
//! the network, and their bottlenecks written into the heads' spare rows.

use super::batches::BatchSource;
use super::bottlenecks::Example;
use super::sampling;
use super::standardize::Standardizer;
use crate::data::decode_cache::{DecodeCache, Prefetcher};
use crate::data::distortion::{Distortion, DistortionFlags};
use crate::engine::Engine;
use crate::gpu::Gpu;
use crate::head::GpuHeads;
use anyhow::{Context, Result};
use image::RgbImage;
use rand::rngs::StdRng;
use std::sync::Arc;

/// One step's sampled examples and how each is distorted.
struct Draw {
    rows: Vec<u32>,
    distortions: Vec<Distortion>,
}

pub struct DistortedBatches<'a> {
    engine: &'a mut Engine,
    flags: DistortionFlags,
    train: &'a [Vec<u32>],
    examples: &'a [Example],
    size: usize,
    /// First spare feature row of the heads, where the step's bottlenecks go.
    first_row: u32,
    prefetcher: Prefetcher,
    next: Option<Draw>,
}

impl<'a> DistortedBatches<'a> {
    /// Batches of `size` training images drawn from `train` (rows by class,
    /// indexing `examples`), with `cache_bytes` of decoded images kept.
    pub fn new(
        engine: &'a mut Engine,
        flags: DistortionFlags,
        examples: &'a [Example],
        train: &'a [Vec<u32>],
        size: usize,
        cache_bytes: u64,
    ) -> Self {
        let paths = examples.iter().map(|e| e.path.clone()).collect();
        DistortedBatches {
            engine,
            flags,
            train,
            examples,
            size,
            first_row: examples.len() as u32,
            prefetcher: Prefetcher::spawn(DecodeCache::new(paths, cache_bytes)),
            next: None,
        }
    }

    /// Samples a step's examples and distortions and starts decoding them.
    fn draw(&mut self, rng: &mut StdRng) -> Draw {
        let rows = sampling::class_balanced(rng, self.train, self.size);
        let input = self.engine.input_size();
        let distortions = rows.iter().map(|_| self.flags.sample(rng, input)).collect();
        self.prefetcher
            .request(rows.iter().map(|&r| r as usize).collect());
        Draw { rows, distortions }
    }
}

impl BatchSource for DistortedBatches<'_> {
    fn spare_rows(&self) -> u32 {
        self.size as u32
    }

    fn next_rows(
        &mut self,
        gpu: &Gpu,
        heads: &GpuHeads,
        standardizer: Option<&Standardizer>,
        rng: &mut StdRng,
    ) -> Result<Vec<u32>> {
        let current = match self.next.take() {
            Some(draw) => draw,
            None => self.draw(rng),
        };
        // The next step's images decode while this one runs on the GPU.
        self.next = Some(self.draw(rng));
        let images: Vec<Arc<RgbImage>> = self.prefetcher.receive()?;
        let refs: Vec<&RgbImage> = images.iter().map(|i| i.as_ref()).collect();
        let features = self
            .engine
            .distorted_bottlenecks(&refs, &current.distortions)
            .with_context(|| {
                let first = &self.examples[current.rows[0] as usize].path;
                format!(
                    "distorting training images (batch starting with {})",
                    first.display()
                )
            })?;
        let labels: Vec<u32> = current
            .rows
            .iter()
            .map(|&r| self.examples[r as usize].class as u32)
            .collect();
        heads.write_rows(gpu, self.first_row, &features, &labels);
        if let Some(s) = standardizer {
            s.apply(gpu, self.first_row, labels.len() as u32);
        }
        Ok((self.first_row..self.first_row + labels.len() as u32).collect())
    }
}
