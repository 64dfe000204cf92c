//! The engine's side of kernel tuning: what to measure for this network
//! (every conv shape, every group of sibling 1×1 convs, every depthwise conv
//! shape), measuring it on an adapter's first use, and which groups then run merged.

use super::{max_batch, Engine, Merging};
use crate::gpu::lowering::{conv_params, depthwise_params};
use crate::gpu::params::ConvParams;
use crate::gpu::scheduler::Plan;
use crate::gpu::tuning::{
    best_times_in_turns, depthwise_key, merge_key, shape_key, tune_and_check, tuning_disabled,
    CheckedTuning, TuningWork, CHECK_ROUNDS, WORSE_THAN_DEFAULTS,
};
use crate::model::graph::{Op, OUTPUT};
use crate::model::merge::{merge, sibling_groups, SiblingGroup};
use crate::progress::progress_bar;
use anyhow::Result;

impl Engine {
    /// Chooses which sibling 1×1 convs run merged, and re-plans.
    pub fn set_merging(&mut self, merging: Merging) -> Result<()> {
        let groups: Vec<SiblingGroup> = sibling_groups(&self.network)
            .into_iter()
            .filter(|g| match merging {
                Merging::AsTuned => self.tuning.merges(&self.group_params(g)),
                Merging::All => true,
                Merging::None => false,
            })
            .collect();
        self.graph = merge(&self.network, &groups);
        self.weights.assemble_merged(&self.gpu, &self.graph);
        self.max_batch = max_batch(&self.gpu, &self.kernels, &self.graph)?;
        self.merging = merging;
        self.plans.clear();
        Ok(())
    }

    /// The tuner's verdict on each distinct group of sibling 1×1 convs of the
    /// network (by merge key): merged or not; None where not yet measured.
    pub fn merge_decisions(&self) -> Vec<(String, Option<bool>)> {
        self.tuning_work()
            .groups
            .iter()
            .map(|parts| {
                let key = merge_key(parts);
                let merged = self.tuning.merges.get(&key).copied();
                (key, merged)
            })
            .collect()
    }

    /// How many groups of sibling 1×1 convs the network has.
    pub fn sibling_groups(&self) -> usize {
        sibling_groups(&self.network).len()
    }

    /// How many groups of sibling convs run merged.
    pub fn merged_groups(&self) -> usize {
        self.graph
            .ops
            .iter()
            .filter(|op| matches!(op, Op::MergedConv(_)))
            .count()
    }

    /// The parameters of each conv dispatch of the network as it runs at
    /// `batch` (merged convs as their GEMM), one per tuning shape.
    pub fn distinct_convs(&self, batch: u32) -> Vec<ConvParams> {
        distinct(
            (self.graph.ops.iter())
                .filter_map(|op| op.as_conv())
                .map(|c| conv_params(&self.graph, &c, batch)),
        )
    }

    /// What tuning measures (at batch 1): every conv shape of the network,
    /// every group of sibling convs that may be merged (by its parts), and
    /// every depthwise conv shape.
    fn tuning_work(&self) -> TuningWork {
        let convs = distinct(
            self.network
                .convs()
                .map(|c| conv_params(&self.network, c, 1)),
        );
        let mut seen = std::collections::HashSet::new();
        let groups = sibling_groups(&self.network)
            .iter()
            .map(|g| self.group_params(g))
            .filter(|parts| seen.insert(merge_key(parts)))
            .collect();
        let mut seen = std::collections::HashSet::new();
        let depthwise = (self.network.ops.iter())
            .filter_map(|op| match op {
                Op::Depthwise(d) => Some(depthwise_params(&self.network, d, 1)),
                _ => None,
            })
            .filter(|p| seen.insert(depthwise_key(p)))
            .collect();
        TuningWork {
            convs,
            groups,
            depthwise,
        }
    }

    fn group_params(&self, group: &SiblingGroup) -> Vec<ConvParams> {
        group
            .convs(&self.network)
            .into_iter()
            .map(|c| conv_params(&self.network, c, 1))
            .collect()
    }

    /// How many measurements a full tuning makes (shapes and groups).
    pub fn tuning_steps(&self) -> usize {
        self.tuning_work().len()
    }

    /// Whether every conv and depthwise conv has a measured kernel variant
    /// for this device, and every group of sibling convs a measured merge decision.
    pub fn is_tuned(&self) -> bool {
        self.tuning.covers(&self.tuning_work())
    }

    /// Measures the kernel variants on each conv not yet tuned (at batch 1)
    /// and whether merging each group of sibling convs pays, and caches the
    /// results for this device. They apply at once (unless merging was set
    /// otherwise); an error writing the cache is returned after that (the
    /// run can go on).
    pub fn tune(&mut self, progress: &mut dyn FnMut(&str)) -> Result<()> {
        self.measure(progress)?;
        self.tuning.save()
    }

    /// Measures what is not yet tuned and applies it.
    fn measure(&mut self, progress: &mut dyn FnMut(&str)) -> Result<()> {
        let work = self.tuning_work();
        self.tuning
            .tune(&self.gpu, &self.kernels, &work, progress)?;
        self.set_merging(self.merging)
    }

    /// On an adapter's first use, times the conv kernel variants on each conv
    /// shape and each group of sibling convs merged and apart, and caches the
    /// fastest (RETRAIN_TUNE=0 skips this and runs with the defaults for the
    /// adapter's kind, unmerged). The tuned network is then timed whole
    /// against the defaults: a tuning measured while the machine was busy
    /// can choose worse than them, so it is redone once, and if it still
    /// loses, the defaults are kept.
    pub fn tune_on_first_use(&mut self) -> Result<()> {
        if self.is_tuned() || tuning_disabled() {
            return Ok(());
        }
        log::info!(
            "Tuning the conv kernels for \"{}\" (once for this device; RETRAIN_TUNE=0 skips it)",
            self.gpu.info.name
        );
        tune_and_check(self, WORSE_THAN_DEFAULTS)
    }
}

impl CheckedTuning for Engine {
    fn what(&self) -> &'static str {
        "the network at one image"
    }

    fn tune_missing(&mut self) -> Result<()> {
        let bar = progress_bar("tuning", self.tuning_steps(), "conv shapes");
        let measured = self.measure(&mut |_| bar.inc(1));
        bar.finish_and_clear();
        measured
    }

    /// One image through the whole network as tuned, and with the defaults
    /// (unmerged): both plans built side by side, timed in turns.
    fn time_against_defaults(&self) -> Result<(f64, f64)> {
        let untuned = self.tuning.untuned();
        let plan = |graph, tuning| {
            let (gpu, kernels, weights) = (&self.gpu, &self.kernels, &self.weights);
            Plan::new(gpu, kernels, graph, weights, tuning, 1, &[OUTPUT])
        };
        let plans = [
            plan(&self.graph, &self.tuning)?,
            plan(&self.network, &untuned)?,
        ];
        let best = best_times_in_turns(CHECK_ROUNDS, plans.len(), |i| {
            plans[i].run(&self.gpu, &[]).map(drop)
        })?;
        Ok((best[0], best[1]))
    }

    fn forget(&mut self) {
        let work = self.tuning_work();
        self.tuning.forget(&work);
    }

    /// Records the defaults as this device's tuning for this network's
    /// shapes (also for another network sharing a shape: the device's timings
    /// proved unreliable) and applies them.
    fn keep_defaults(&mut self) -> Result<()> {
        let work = self.tuning_work();
        self.tuning.record_defaults(&self.gpu, &work);
        self.set_merging(self.merging)
    }

    fn save(&self) -> Result<()> {
        self.tuning.save()
    }
}

/// Conv parameters without repeated tuning shapes.
fn distinct(convs: impl Iterator<Item = ConvParams>) -> Vec<ConvParams> {
    let mut seen = std::collections::HashSet::new();
    convs.filter(|p| seen.insert(shape_key(p))).collect()
}
