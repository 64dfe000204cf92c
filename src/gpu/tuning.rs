//! Which conv kernel variant runs each conv shape on this device, and which
//! groups of sibling 1×1 convs run merged into one GEMM: measured once per
//! adapter (a few candidates timed on each distinct conv of the network, each
//! group timed merged and one by one) and cached on disk, keyed by the
//! adapter, its driver and the engine version, so later runs start at once.

use super::context::Gpu;
use super::kernels::{submit, ConvVariant, Kernels};
use super::params::ConvParams;
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

/// A group of sibling 1×1 convs (see model/merge.rs) by its parts' shapes:
/// "1x1s1_192to48+64_map2048".
pub fn merge_key(parts: &[ConvParams]) -> String {
    let outs: Vec<String> = parts.iter().map(|p| p.out_c.to_string()).collect();
    let whole = ConvParams {
        out_c: 0,
        ..parts[0]
    };
    shape_key(&whole).replace("to0_", &format!("to{}_", outs.join("+")))
}

/// A merged conv must save at least this share of its parts' time: merging
/// also keeps tensors alive longer, and timings this close are noise.
const MERGE_GAIN: f64 = 0.05;

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Tuning {
    /// Adapter, driver and engine version the choices were measured on.
    pub device: String,
    pub choices: BTreeMap<String, ConvVariant>,
    /// For each group of sibling 1×1 convs (by `merge_key`), whether one
    /// merged GEMM was faster than the convs one by one.
    #[serde(default)]
    pub merges: BTreeMap<String, bool>,
}

/// Identifies what the measurements depend on: the adapter, its driver, the
/// engine version and the conv kernels themselves (any change re-tunes).
fn device_key(gpu: &Gpu) -> String {
    let i = &gpu.info;
    let kernels = Sha256::digest(
        [
            super::shader::CONV2D,
            super::shader::CONV2D_DIRECT,
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
    crate::cache_dir::cache_dir().join(format!("tuning-{hash}.json"))
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
                ..Default::default()
            })
    }

    /// The variant for a conv: the measured one, else a default by adapter kind.
    pub fn variant(&self, gpu: &Gpu, p: &ConvParams) -> ConvVariant {
        self.choices
            .get(&shape_key(p))
            .copied()
            .unwrap_or_else(|| default_variant(gpu))
    }

    /// Whether a group of sibling convs (its parts' shapes) runs merged:
    /// as measured, else not.
    pub fn merges(&self, parts: &[ConvParams]) -> bool {
        self.merges.get(&merge_key(parts)) == Some(&true)
    }

    /// Whether every conv of `convs` has a measured choice, and every group
    /// of sibling convs of `groups` a measured merge decision.
    pub fn covers(&self, convs: &[ConvParams], groups: &[Vec<ConvParams>]) -> bool {
        convs
            .iter()
            .all(|p| self.choices.contains_key(&shape_key(p)))
            && groups
                .iter()
                .all(|g| self.merges.contains_key(&merge_key(g)))
    }

    /// Times every candidate on each not yet tuned conv (on uninitialised
    /// data: the timing does not depend on the values) and keeps the fastest;
    /// then times each not yet tuned group of sibling convs merged (its best
    /// variant) against its parts one by one, and merges it if that pays.
    /// `progress` is told each shape and group as it is done.
    pub fn tune(
        &mut self,
        gpu: &Gpu,
        kernels: &Kernels,
        convs: &[ConvParams],
        groups: &[Vec<ConvParams>],
        progress: &mut dyn FnMut(&str),
    ) -> Result<()> {
        for p in convs {
            let key = shape_key(p);
            if !self.choices.contains_key(&key) {
                let (best, _) = fastest(gpu, kernels, p)?;
                self.choices.insert(key.clone(), best);
                progress(&key);
            }
        }
        for parts in groups {
            let key = merge_key(parts);
            if !self.merges.contains_key(&key) {
                let pays = self.merging_pays(gpu, kernels, parts)?;
                self.merges.insert(key.clone(), pays);
                progress(&key);
            }
        }
        Ok(())
    }

    /// Times a group's merged GEMM (choosing its variant) against the sum of
    /// its parts, each with its chosen variant.
    fn merging_pays(&mut self, gpu: &Gpu, kernels: &Kernels, parts: &[ConvParams]) -> Result<bool> {
        let whole = merged_params(parts);
        let (variant, merged) = fastest(gpu, kernels, &whole)?;
        self.choices.entry(shape_key(&whole)).or_insert(variant);
        let mut apart = 0.0;
        for p in parts {
            let buffers = TimingBuffers::new(gpu, p);
            apart += time_variant(gpu, kernels, p, self.variant(gpu, p), buffers.all())?;
        }
        Ok(merged < (1.0 - MERGE_GAIN) * apart)
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
            rows: 8,
            cols: 2,
            group: 16,
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
    // The residual read is the same for every variant: timed without it.
    let p = &ConvParams { residual: 0, ..*p };
    let d = kernels.conv2d(gpu, p, variant, input, (weights, bias), output, None);
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

/// The conv a group of sibling 1×1 convs merges into: all their output
/// channels, in a tensor of its own.
fn merged_params(parts: &[ConvParams]) -> ConvParams {
    let out_c = parts.iter().map(|p| p.out_c).sum();
    ConvParams {
        out_c,
        out_stride: out_c,
        out_offset: 0,
        ..parts[0]
    }
}

/// Input, weights, bias and output buffers sized for one conv.
struct TimingBuffers([wgpu::Buffer; 4]);

impl TimingBuffers {
    fn new(gpu: &Gpu, p: &ConvParams) -> Self {
        let buffer = |label: &str, floats: u32| gpu.storage_buffer(label, floats as u64 * 4);
        TimingBuffers([
            buffer("tuning input", p.batch * p.in_h * p.in_w * p.in_stride),
            buffer("tuning weights", p.kernel_h * p.kernel_w * p.in_c * p.out_c),
            buffer("tuning bias", p.out_c),
            buffer("tuning output", p.m * p.out_stride),
        ])
    }

    fn all(&self) -> [&wgpu::Buffer; 4] {
        let [a, b, c, d] = &self.0;
        [a, b, c, d]
    }
}

/// The fastest candidate for conv `p` and its time, all timed on the same buffers.
fn fastest(gpu: &Gpu, kernels: &Kernels, p: &ConvParams) -> Result<(ConvVariant, f64)> {
    let buffers = TimingBuffers::new(gpu, p);
    let mut best = (ConvVariant::Tiled, f64::INFINITY);
    for v in ConvVariant::CANDIDATES
        .into_iter()
        .filter(|v| v.fits(p, gpu.limits.max_compute_workgroups_per_dimension))
    {
        let t = time_variant(gpu, kernels, p, v, buffers.all())?;
        if t < best.1 {
            best = (v, t);
        }
    }
    Ok(best)
}
