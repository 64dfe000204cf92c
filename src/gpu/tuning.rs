//! Which conv kernel variant runs each conv shape on this device: measured
//! once per adapter (a few candidates timed on each distinct conv of the
//! network) and cached on disk, keyed by the adapter, its driver and the
//! engine version, so later runs start at once.

use super::context::Gpu;
use super::kernels::{submit, ConvParams, ConvVariant, Kernels};
use crate::hex::hex;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// The part of a conv's shape that decides the best variant: kernel, stride,
/// channels and the output map's size rounded up to a power of two (not the
/// batch, so a tuning at batch 1 serves every batch).
pub fn shape_key(p: &ConvParams) -> String {
    format!(
        "{}x{}s{}_{}to{}_map{}",
        p.kernel_h,
        p.kernel_w,
        p.stride_h,
        p.in_c,
        p.out_c,
        (p.out_h * p.out_w).next_power_of_two()
    )
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Tuning {
    /// Adapter, driver and engine version the choices were measured on.
    pub device: String,
    pub choices: BTreeMap<String, ConvVariant>,
}

/// Identifies what the measurements depend on: the adapter, its driver, the
/// engine version and the conv kernels themselves (any change re-tunes).
fn device_key(gpu: &Gpu) -> String {
    let i = &gpu.info;
    let kernels = Sha256::digest(
        [
            include_str!("../../shaders/conv2d.wgsl"),
            include_str!("../../shaders/conv2d_direct.wgsl"),
            &format!("{:?}", ConvVariant::CANDIDATES),
        ]
        .concat(),
    );
    format!(
        "{} | {:?} | {} {} | retrain {} | kernels {}",
        i.name,
        i.backend,
        i.driver,
        i.driver_info,
        env!("CARGO_PKG_VERSION"),
        hex(&kernels[..6])
    )
}

fn cache_path(device: &str) -> PathBuf {
    let hash = hex(&Sha256::digest(device.as_bytes())[..8]);
    crate::convert::default_weights::cache_dir().join(format!("tuning-{hash}.json"))
}

impl Tuning {
    /// This device's cached tuning, or an empty one.
    pub fn load(gpu: &Gpu) -> Self {
        let device = device_key(gpu);
        std::fs::read(cache_path(&device))
            .ok()
            .and_then(|b| serde_json::from_slice::<Tuning>(&b).ok())
            .filter(|t| t.device == device)
            .unwrap_or(Tuning {
                device,
                choices: BTreeMap::new(),
            })
    }

    /// The variant for a conv: the measured one, else a default by adapter kind.
    pub fn variant(&self, gpu: &Gpu, p: &ConvParams) -> ConvVariant {
        self.choices
            .get(&shape_key(p))
            .copied()
            .unwrap_or_else(|| default_variant(gpu))
    }

    /// Whether every conv of `convs` has a measured choice.
    pub fn covers(&self, convs: &[ConvParams]) -> bool {
        convs
            .iter()
            .all(|p| self.choices.contains_key(&shape_key(p)))
    }

    /// Times every candidate on each not yet tuned conv (on uninitialised
    /// data: the timing does not depend on the values) and keeps the fastest;
    /// `progress` is told each shape as it is done.
    pub fn tune(
        &mut self,
        gpu: &Gpu,
        kernels: &Kernels,
        convs: &[ConvParams],
        progress: &mut dyn FnMut(&str, ConvVariant),
    ) -> Result<()> {
        for p in convs {
            let key = shape_key(p);
            if self.choices.contains_key(&key) {
                continue;
            }
            let best = fastest(gpu, kernels, p)?;
            progress(&key, best);
            self.choices.insert(key, best);
        }
        Ok(())
    }

    /// Writes the choices to the cache (atomically).
    pub fn save(&self) -> Result<()> {
        let path = cache_path(&self.device);
        crate::atomic_file::write_bytes(&path, &serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write the kernel tuning to {}", path.display()))
    }
}

/// Before measuring: register tiles for CPU drivers, workgroup tiles for GPUs.
pub fn default_variant(gpu: &Gpu) -> ConvVariant {
    match gpu.info.device_type {
        wgpu::DeviceType::Cpu => ConvVariant::Direct {
            rows: 4,
            cols: 2,
            group: 64,
        },
        _ => ConvVariant::Tiled,
    }
}

/// Seconds one dispatch of conv `p` with `variant` takes on `buffers`
/// (input, weights, bias, output): the best of 2 after a warm-up.
fn time_variant(
    gpu: &Gpu,
    kernels: &Kernels,
    p: &ConvParams,
    variant: ConvVariant,
    [input, weights, bias, output]: [&wgpu::Buffer; 4],
) -> Result<f64> {
    let d = kernels.conv2d(gpu, p, variant, input, weights, bias, output);
    let run = || -> Result<f64> {
        let t = Instant::now();
        submit(gpu, &[&d]);
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .context("device lost while tuning")?;
        Ok(t.elapsed().as_secs_f64())
    };
    run()?;
    Ok(run()?.min(run()?))
}

/// The fastest candidate for conv `p`, all timed on the same buffers.
fn fastest(gpu: &Gpu, kernels: &Kernels, p: &ConvParams) -> Result<ConvVariant> {
    let buffer = |label: &str, floats: u32| gpu.storage_buffer(label, floats as u64 * 4);
    let input = buffer("tuning input", p.batch * p.in_h * p.in_w * p.in_stride);
    let weights = buffer("tuning weights", p.kernel_h * p.kernel_w * p.in_c * p.out_c);
    let bias = buffer("tuning bias", p.out_c);
    let output = buffer("tuning output", p.m * p.out_stride);
    let buffers = [&input, &weights, &bias, &output];
    let mut best = (f64::INFINITY, ConvVariant::Tiled);
    for v in ConvVariant::CANDIDATES
        .into_iter()
        .filter(|v| v.fits(p, gpu.limits.max_compute_workgroups_per_dimension))
    {
        let t = time_variant(gpu, kernels, p, v, buffers)?;
        if t < best.0 {
            best = (t, v);
        }
    }
    Ok(best.1)
}
