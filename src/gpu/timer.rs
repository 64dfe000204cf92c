//! GPU timestamps around compute passes, for the benchmarks: each timed
//! dispatch runs in its own pass whose start and end the GPU stamps.
//! Needs the adapter's TIMESTAMP_QUERY feature (lavapipe has it).

use super::context::Gpu;
use super::kernels::{record_all, Dispatch, Timestamps};
use anyhow::{bail, Result};

pub struct GpuTimer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    capacity: u32,
}

impl GpuTimer {
    /// A timer for up to `passes` passes per measurement, if the device can stamp.
    pub fn new(gpu: &Gpu, passes: u32) -> Option<Self> {
        if !gpu.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return None;
        }
        let queries = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * passes,
        });
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: 16 * passes as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Some(GpuTimer {
            queries,
            resolve,
            capacity: passes,
        })
    }

    /// Seconds the GPU spent in each group of dispatches, each group in its own
    /// timed pass; all groups in one submission.
    pub fn time(&self, gpu: &Gpu, groups: &[&[&Dispatch]]) -> Result<Vec<f64>> {
        let n = groups.len() as u32;
        if n > self.capacity {
            bail!("{n} timed passes, the timer holds {}", self.capacity);
        }
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        for (i, group) in groups.iter().enumerate() {
            let timestamps = Timestamps {
                queries: &self.queries,
                start: 2 * i as u32,
                end: 2 * i as u32 + 1,
            };
            record_all(&mut encoder, group.iter().copied(), Some(timestamps));
        }
        encoder.resolve_query_set(&self.queries, 0..2 * n, &self.resolve, 0);
        gpu.queue.submit([encoder.finish()]);
        let ticks: Vec<u64> =
            bytemuck::pod_collect_to_vec(&gpu.read_buffer(&self.resolve, 16 * n as u64)?);
        let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        Ok(ticks
            .chunks(2)
            .map(|t| t[1].saturating_sub(t[0]) as f64 * period)
            .collect())
    }
}
