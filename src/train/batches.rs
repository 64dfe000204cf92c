//! Where each training step's rows come from: class-balanced samples of the
//! cached bottlenecks (here), or freshly distorted images (distorted.rs).

use super::sampling;
use super::standardize::Standardizer;
use crate::gpu::Gpu;
use crate::head::GpuHeads;
use anyhow::Result;
use rand::rngs::StdRng;

/// Where each step's training rows come from.
pub trait BatchSource {
    /// Feature rows the source writes into, after the cached bottlenecks.
    fn spare_rows(&self) -> u32 {
        0
    }

    /// The feature rows of the next training step.
    fn next_rows(
        &mut self,
        gpu: &Gpu,
        heads: &GpuHeads,
        standardizer: Option<&Standardizer>,
        rng: &mut StdRng,
    ) -> Result<Vec<u32>>;
}

/// retrain.py's batches of cached bottlenecks: class-balanced samples of the training rows.
pub struct CachedBatches<'a> {
    pub train: &'a [Vec<u32>],
    pub size: usize,
}

impl BatchSource for CachedBatches<'_> {
    fn next_rows(
        &mut self,
        _: &Gpu,
        _: &GpuHeads,
        _: Option<&Standardizer>,
        rng: &mut StdRng,
    ) -> Result<Vec<u32>> {
        Ok(sampling::class_balanced(rng, self.train, self.size))
    }
}
