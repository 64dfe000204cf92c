//! Which conv kernel variant runs each conv shape on this device, which
//! workgroup size each depthwise conv shape, and which groups of sibling 1×1
//! convs run merged into one GEMM: measured once per adapter (a few
//! candidates timed on each distinct conv of the network, each group timed
//! merged and one by one) and cached on disk, keyed by the adapter, its
//! driver and the engine version, so later runs start at once.

use super::context::Gpu;
use super::kernels::{submit, ConvVariant, Dispatch, Kernels, DEPTHWISE_GROUPS};
use super::params::{ConvParams, DepthwiseParams};
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

/// The part of a depthwise conv's shape that decides its best workgroup
/// size: kernel, stride, channels and output map rounded up to a power of two.
pub fn depthwise_key(p: &DepthwiseParams) -> String {
    format!(
        "dw{}x{}s{}_{}_map{}",
        p.kernel_h,
        p.kernel_w,
        p.stride_h,
        p.channels,
        (p.out_h * p.out_w).next_power_of_two()
    )
}

/// What a network asks the tuner to measure (at batch 1): its distinct conv
/// shapes, its groups of sibling 1×1 convs (by their parts), its distinct
/// depthwise conv shapes.
#[derive(Default)]
pub struct TuningWork {
    pub convs: Vec<ConvParams>,
    pub groups: Vec<Vec<ConvParams>>,
    pub depthwise: Vec<DepthwiseParams>,
}

impl TuningWork {
    /// How many measurements tuning all of it makes.
    pub fn len(&self) -> usize {
        self.convs.len() + self.groups.len() + self.depthwise.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A merged conv must save at least this share of its parts' time: merging
/// also keeps tensors alive longer, and timings this close are noise.
const MERGE_GAIN: f64 = 0.05;

/// Timed rounds per candidate after the warm-up; each candidate keeps its best.
const TIMING_ROUNDS: usize = 2;

/// A depthwise conv's workgroup size before measuring.
const DEFAULT_DEPTHWISE_GROUP: u32 = 256;

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Tuning {
    /// Adapter, driver and engine version the choices were measured on.
    pub device: String,
    pub choices: BTreeMap<String, ConvVariant>,
    /// For each group of sibling 1×1 convs (by `merge_key`), whether one
    /// merged GEMM was faster than the convs one by one.
    #[serde(default)]
    pub merges: BTreeMap<String, bool>,
    /// The fastest workgroup size for each depthwise conv shape (by `depthwise_key`).
    #[serde(default)]
    pub depthwise: BTreeMap<String, u32>,
}

/// Identifies what the measurements depend on: the adapter, its driver, the
/// engine version and the conv kernels themselves (any change re-tunes).
fn device_key(gpu: &Gpu) -> String {
    let i = &gpu.info;
    let kernels = Sha256::digest(
        [
            super::shader::CONV2D,
            super::shader::CONV2D_DIRECT,
            super::shader::CONV2D_SUBGROUP,
            super::shader::DEPTHWISE,
            &format!("{:?} {DEPTHWISE_GROUPS:?}", ConvVariant::CANDIDATES),
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
            .and_then(|b| Tuning::parse(&b, &device))
            .unwrap_or(Tuning {
                device,
                ..Default::default()
            })
    }

    /// A cached tuning's bytes, when they are this device's: choices that are
    /// not among the candidates (a damaged or hand-edited file) are dropped,
    /// so they are measured again rather than compiled.
    pub fn parse(bytes: &[u8], device: &str) -> Option<Self> {
        let mut t = serde_json::from_slice::<Tuning>(bytes).ok()?;
        if t.device != device {
            return None;
        }
        t.choices.retain(|_, v| ConvVariant::CANDIDATES.contains(v));
        t.depthwise.retain(|_, g| DEPTHWISE_GROUPS.contains(g));
        Some(t)
    }

    /// The variant for a conv: the measured one, else a default by adapter kind.
    pub fn variant(&self, gpu: &Gpu, p: &ConvParams) -> ConvVariant {
        self.choices
            .get(&shape_key(p))
            .copied()
            .unwrap_or_else(|| default_variant(gpu))
    }

    /// The workgroup size for a depthwise conv: the measured one, else the default.
    pub fn depthwise_group(&self, p: &DepthwiseParams) -> u32 {
        self.depthwise
            .get(&depthwise_key(p))
            .copied()
            .unwrap_or(DEFAULT_DEPTHWISE_GROUP)
    }

    /// An empty tuning for the same device: every choice the default.
    pub fn untuned(&self) -> Self {
        Tuning {
            device: self.device.clone(),
            ..Default::default()
        }
    }

    /// Drops what was measured for `work` (merged groups' GEMMs included),
    /// so that it is measured again.
    pub fn forget(&mut self, work: &TuningWork) {
        let merged = work.groups.iter().map(|g| merged_params(g));
        for p in work.convs.iter().copied().chain(merged) {
            self.choices.remove(&shape_key(&p));
        }
        for g in &work.groups {
            self.merges.remove(&merge_key(g));
        }
        for p in &work.depthwise {
            self.depthwise.remove(&depthwise_key(p));
        }
    }

    /// Records the defaults as the choices for `work`: the default variant,
    /// no merging, the default depthwise workgroup.
    pub fn record_defaults(&mut self, gpu: &Gpu, work: &TuningWork) {
        for p in &work.convs {
            self.choices.insert(shape_key(p), default_variant(gpu));
        }
        for g in &work.groups {
            self.merges.insert(merge_key(g), false);
        }
        for p in &work.depthwise {
            self.depthwise
                .insert(depthwise_key(p), DEFAULT_DEPTHWISE_GROUP);
        }
    }

    /// Whether a group of sibling convs (its parts' shapes) runs merged:
    /// as measured, else not.
    pub fn merges(&self, parts: &[ConvParams]) -> bool {
        self.merges.get(&merge_key(parts)) == Some(&true)
    }

    /// Whether everything in `work` has been measured.
    pub fn covers(&self, work: &TuningWork) -> bool {
        work.convs
            .iter()
            .all(|p| self.choices.contains_key(&shape_key(p)))
            && work
                .groups
                .iter()
                .all(|g| self.merges.contains_key(&merge_key(g)))
            && work
                .depthwise
                .iter()
                .all(|p| self.depthwise.contains_key(&depthwise_key(p)))
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
        work: &TuningWork,
        progress: &mut dyn FnMut(&str),
    ) -> Result<()> {
        for p in &work.convs {
            let key = shape_key(p);
            if !self.choices.contains_key(&key) {
                let (best, _) = fastest(gpu, kernels, p)?;
                self.choices.insert(key.clone(), best);
                progress(&key);
            }
        }
        for parts in &work.groups {
            let key = merge_key(parts);
            if !self.merges.contains_key(&key) {
                let pays = self.merging_pays(gpu, kernels, parts)?;
                self.merges.insert(key.clone(), pays);
                progress(&key);
            }
        }
        for p in &work.depthwise {
            let key = depthwise_key(p);
            if !self.depthwise.contains_key(&key) {
                self.depthwise
                    .insert(key.clone(), fastest_depthwise(gpu, kernels, p)?);
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
        let buffers: Vec<TimingBuffers> =
            parts.iter().map(|p| TimingBuffers::new(gpu, p)).collect();
        let each: Vec<Dispatch> = (parts.iter().zip(&buffers))
            .map(|(p, b)| conv_dispatch(gpu, kernels, p, self.variant(gpu, p), b.all()))
            .collect();
        let apart = best_times(gpu, &each)?.iter().sum::<f64>();
        Ok(merged < (1.0 - MERGE_GAIN) * apart)
    }

    /// Writes the choices to the cache (atomically).
    pub fn save(&self) -> Result<()> {
        let path = cache_path(&self.device);
        crate::atomic_file::write_bytes(&path, &serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write the kernel tuning to {}", path.display()))
    }
}

/// A tuning is redone when the work it was measured on runs more than this
/// many times slower with it than with the defaults (closer timings are noise).
pub const WORSE_THAN_DEFAULTS: f64 = 1.25;
/// Timed rounds of that comparison, after a warm-up.
pub const CHECK_ROUNDS: usize = 3;

/// A tuning that is checked whole against the defaults once measured, and
/// mended when it lost to them: the engine's network, fine-tuning's input
/// gradients.
pub trait CheckedTuning {
    /// What the check runs, for the log ("the network at one image").
    fn what(&self) -> &'static str;
    /// Measures what is not yet tuned and applies it.
    fn tune_missing(&mut self) -> Result<()>;
    /// Seconds of the whole work as tuned, and with the defaults.
    fn time_against_defaults(&self) -> Result<(f64, f64)>;
    /// Drops the work's measurements, so that `tune_missing` makes them again.
    fn forget(&mut self);
    /// Records the defaults as the work's choices and applies them.
    fn keep_defaults(&mut self) -> Result<()>;
    /// Writes the choices to the device's tuning cache.
    fn save(&self) -> Result<()>;
}

/// Tunes what is not yet tuned, then times the whole work as tuned and with
/// the defaults: when it is more than `worse` times slower tuned (a tuning
/// measured while the machine was busy), tunes everything again, and if it
/// loses again, keeps the defaults; then caches the choices. An error
/// measuring is returned; a failed check or cache write is only warned of
/// (the choices apply to this run).
pub fn tune_and_check(tuning: &mut impl CheckedTuning, worse: f64) -> Result<()> {
    let what = tuning.what();
    tuning.tune_missing()?;
    for attempt in 1..=2 {
        let (tuned, defaults) = match tuning.time_against_defaults() {
            Ok(times) => times,
            Err(e) => {
                log::warn!("{e:#}: the tuned kernels are kept unchecked");
                break;
            }
        };
        let times = format!("{tuned:.3} s, against {defaults:.3} s with the defaults");
        if tuned <= worse * defaults {
            log::info!("Tuned {what}: {times}");
            break;
        }
        if attempt == 1 {
            log::warn!(
                "The tuned kernels ran {what} slower than the defaults ({times}): \
                 the machine was probably busy while they were timed. Tuning again"
            );
            tuning.forget();
            tuning.tune_missing()?;
        } else {
            log::warn!(
                "The kernels tuned again ran {what} slower too ({times}): keeping the defaults"
            );
            tuning.keep_defaults()?;
        }
    }
    if let Err(e) = tuning.save() {
        // The chosen kernels are in use for this run; only the cache is missing.
        log::warn!("{e:#}; the kernels will be tuned again next time");
    }
    Ok(())
}

/// Seconds of `convs` run one after another with `tuning`'s variants, and
/// with the defaults, on the same buffers: the best of `rounds` turns after a
/// warm-up.
pub fn time_convs_against_defaults(
    gpu: &Gpu,
    kernels: &Kernels,
    tuning: &Tuning,
    convs: &[ConvParams],
    rounds: usize,
) -> Result<(f64, f64)> {
    let buffers: Vec<TimingBuffers> = convs.iter().map(|p| TimingBuffers::new(gpu, p)).collect();
    let dispatches = |variant: &dyn Fn(&ConvParams) -> ConvVariant| -> Vec<Dispatch> {
        (convs.iter().zip(&buffers))
            .map(|(p, b)| conv_dispatch(gpu, kernels, p, variant(p), b.all()))
            .collect()
    };
    let runs = [
        dispatches(&|p| tuning.variant(gpu, p)),
        dispatches(&|_| default_variant(gpu)),
    ];
    let best = best_times_in_turns(rounds, runs.len(), |i| {
        run_to_completion(gpu, &runs[i].iter().collect::<Vec<_>>())
    })?;
    Ok((best[0], best[1]))
}

/// Whether the user asked for no tuning (RETRAIN_TUNE=0): kernels then run
/// with what is cached, else the defaults.
pub fn tuning_disabled() -> bool {
    std::env::var("RETRAIN_TUNE").is_ok_and(|v| v == "0")
}

/// Before measuring: register tiles for CPU drivers (sharing weights through
/// the subgroup where it can), workgroup tiles for GPUs.
pub fn default_variant(gpu: &Gpu) -> ConvVariant {
    match gpu.info.device_type {
        wgpu::DeviceType::Cpu if gpu.whole_subgroups_of_8(8) => ConvVariant::Subgroup {
            rows: 4,
            cols: 16,
            group: 8,
        },
        wgpu::DeviceType::Cpu => ConvVariant::Direct {
            rows: 8,
            cols: 2,
            group: 16,
        },
        _ => ConvVariant::Tiled,
    }
}

/// Conv `p` with `variant` on `buffers` (input, weights, bias, output),
/// without the residual read (the same for every variant).
fn conv_dispatch(
    gpu: &Gpu,
    kernels: &Kernels,
    p: &ConvParams,
    variant: ConvVariant,
    [input, weights, bias, output]: [&wgpu::Buffer; 4],
) -> Dispatch {
    let p = &ConvParams { residual: 0, ..*p };
    kernels.conv2d(gpu, p, variant, input, (weights, bias), output, None)
}

/// Of `choices`, run by `dispatches` (one each), the fastest and its seconds.
fn fastest_of<T: Copy>(gpu: &Gpu, choices: &[T], dispatches: &[Dispatch]) -> Result<(T, f64)> {
    let times = best_times(gpu, dispatches)?;
    let (i, t) = times
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .context("no kernel candidate fits this conv")?;
    Ok((choices[i], *t))
}

/// Each dispatch's seconds, timed in turns over TIMING_ROUNDS rounds.
fn best_times(gpu: &Gpu, dispatches: &[Dispatch]) -> Result<Vec<f64>> {
    best_times_in_turns(TIMING_ROUNDS, dispatches.len(), |i| {
        run_to_completion(gpu, &[&dispatches[i]])
    })
}

/// Submits `dispatches` and waits until the device has run them.
fn run_to_completion(gpu: &Gpu, dispatches: &[&Dispatch]) -> Result<()> {
    submit(gpu, dispatches);
    gpu.device
        .poll(wgpu::PollType::wait_indefinitely())
        .context("device lost while tuning")?;
    Ok(())
}

/// The seconds of each of `count` candidates, `run(i)` running the i-th
/// to completion: a warm-up round, then the best of `rounds` rounds that
/// each run every candidate once, so that a spell of other load on the
/// machine slows every candidate alike instead of spoiling one.
pub fn best_times_in_turns(
    rounds: usize,
    count: usize,
    mut run: impl FnMut(usize) -> Result<()>,
) -> Result<Vec<f64>> {
    let mut best = vec![f64::INFINITY; count];
    for round in 0..=rounds {
        for (i, best) in best.iter_mut().enumerate() {
            let t = Instant::now();
            run(i)?;
            if round > 0 {
                *best = best.min(t.elapsed().as_secs_f64());
            }
        }
    }
    Ok(best)
}

/// The fastest workgroup size for depthwise conv `p`, each timed on the same buffers.
fn fastest_depthwise(gpu: &Gpu, kernels: &Kernels, p: &DepthwiseParams) -> Result<u32> {
    let buffer = |label: &str, floats: u32| gpu.storage_buffer(label, floats as u64 * 4);
    let input = buffer("tuning input", p.batch * p.in_h * p.in_w * p.in_stride);
    let weights = buffer("tuning weights", p.kernel_h * p.kernel_w * p.channels);
    let bias = buffer("tuning bias", p.channels);
    let output = buffer("tuning output", p.batch * p.out_h * p.out_w * p.out_stride);
    let dispatches: Vec<Dispatch> = (DEPTHWISE_GROUPS.iter())
        .map(|&group| kernels.depthwise(gpu, p, group, &input, (&weights, &bias), &output))
        .collect();
    Ok(fastest_of(gpu, &DEPTHWISE_GROUPS, &dispatches)?.0)
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

/// The fastest candidate for conv `p` and its seconds, all timed on the same buffers.
fn fastest(gpu: &Gpu, kernels: &Kernels, p: &ConvParams) -> Result<(ConvVariant, f64)> {
    let buffers = TimingBuffers::new(gpu, p);
    let variants: Vec<ConvVariant> = (ConvVariant::CANDIDATES.into_iter())
        .filter(|v| v.fits(p, gpu))
        .collect();
    let dispatches: Vec<Dispatch> = (variants.iter())
        .map(|&v| conv_dispatch(gpu, kernels, p, v, buffers.all()))
        .collect();
    fastest_of(gpu, &variants, &dispatches)
}
