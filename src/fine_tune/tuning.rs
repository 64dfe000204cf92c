//! Fine-tuning's side of kernel tuning: a stride-1 conv's input gradient runs
//! as a forward conv of its own shape, so on a device's first fine-tuning
//! those shapes are measured, then checked whole against the defaults as the
//! engine's tuning is (gpu/tuning.rs).

use super::network::TrainableNetwork;
use crate::gpu::params::ConvParams;
use crate::gpu::tuning::{
    shape_key, time_convs_against_defaults, tune_and_check, tuning_disabled, CheckedTuning,
    TuningWork, CHECK_ROUNDS, WORSE_THAN_DEFAULTS,
};
use crate::gpu::Gpu;
use crate::progress::progress_bar;
use anyhow::Result;

impl TrainableNetwork {
    /// On a device's first fine-tuning of these blocks, tunes their input
    /// gradients' shapes (RETRAIN_TUNE=0 skips this, as it does the engine's).
    pub fn tune_on_first_use(&mut self, gpu: &Gpu) -> Result<()> {
        if tuning_disabled() {
            return Ok(());
        }
        self.tune_input_gradients(gpu, WORSE_THAN_DEFAULTS)
    }

    /// Measures the input gradients' conv shapes this device's tuning lacks,
    /// times them all in a row against the defaults, and tunes them again or
    /// keeps the defaults when they ran more than `worse` times slower; the
    /// shapes measured before (the engine's, checked with its network) stay
    /// as they are.
    pub fn tune_input_gradients(&mut self, gpu: &Gpu, worse: f64) -> Result<()> {
        let convs: Vec<ConvParams> = (self.blocks.input_gradient_convs().into_iter())
            .filter(|p| !self.tuning.choices.contains_key(&shape_key(p)))
            .collect();
        if convs.is_empty() {
            return Ok(());
        }
        log::info!("Tuning the conv kernels for the input gradients (once for this device)");
        let work = TuningWork {
            convs,
            ..Default::default()
        };
        tune_and_check(
            &mut InputGradientTuning {
                net: self,
                gpu,
                work,
            },
            worse,
        )
    }
}

/// The input gradients' conv shapes a device's tuning lacked, being tuned.
struct InputGradientTuning<'a> {
    net: &'a mut TrainableNetwork,
    gpu: &'a Gpu,
    work: TuningWork,
}

impl CheckedTuning for InputGradientTuning<'_> {
    fn what(&self) -> &'static str {
        "the input gradients' new shapes at one image"
    }

    fn tune_missing(&mut self) -> Result<()> {
        let net = &mut *self.net;
        let bar = progress_bar("tuning", self.work.len(), "conv shapes");
        let measured = (net.tuning).tune(self.gpu, &net.kernels, &self.work, &mut |_| bar.inc(1));
        bar.finish_and_clear();
        measured
    }

    fn time_against_defaults(&self) -> Result<(f64, f64)> {
        let (net, convs) = (&*self.net, &self.work.convs);
        time_convs_against_defaults(self.gpu, &net.kernels, &net.tuning, convs, CHECK_ROUNDS)
    }

    fn forget(&mut self) {
        self.net.tuning.forget(&self.work);
    }

    fn keep_defaults(&mut self) -> Result<()> {
        self.net.tuning.record_defaults(self.gpu, &self.work);
        Ok(())
    }

    fn save(&self) -> Result<()> {
        self.net.tuning.save()
    }
}
