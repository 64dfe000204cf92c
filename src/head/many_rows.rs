//! Evaluations over any number of rows, in batches that fit
//! the device (batch buffers cached by size).

use super::gpu_heads::{Batch, GpuHeads, Metrics};
use crate::gpu::Gpu;
use anyhow::Result;
use std::rc::Rc;

impl GpuHeads {
    /// A cached batch of `size` rows.
    fn batch_of(&self, gpu: &Gpu, size: u32) -> Rc<Batch> {
        let mut batches = self.batches.borrow_mut();
        batches
            .entry(size)
            .or_insert_with(|| Rc::new(self.batch(gpu, size)))
            .clone()
    }

    /// The most rows one batch can hold within the device's binding limit.
    fn max_rows(&self, gpu: &Gpu) -> usize {
        let per_row = 2 * 4 * self.heads as u64 * self.classes as u64;
        (gpu.max_binding_bytes() / per_row).clamp(1, 1 << 16) as usize
    }

    /// Each head's metrics over any number of rows, in batches that fit the device.
    pub fn evaluate_rows(&self, gpu: &Gpu, rows: &[u32]) -> Result<Vec<Metrics>> {
        let mut sums = vec![(0.0f64, 0.0f64); self.heads as usize];
        for chunk in rows.chunks(self.max_rows(gpu)) {
            let batch = self.batch_of(gpu, chunk.len() as u32);
            for (sum, m) in sums.iter_mut().zip(self.evaluate(gpu, &batch, chunk)?) {
                sum.0 += m.cross_entropy as f64 * chunk.len() as f64;
                sum.1 += m.accuracy as f64 * chunk.len() as f64;
            }
        }
        let n = rows.len() as f64;
        Ok(sums
            .iter()
            .map(|&(xent, acc)| Metrics {
                cross_entropy: (xent / n) as f32,
                accuracy: (acc / n) as f32,
            })
            .collect())
    }
}
