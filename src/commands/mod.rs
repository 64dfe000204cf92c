//! One module per subcommand.

pub mod classify;
pub mod features;
pub mod info;

use crate::cli::ModelArgs;
use crate::convert::default_weights;
use crate::engine::Engine;
use crate::gpu::Gpu;
use crate::model::weights::WeightFile;
use crate::progress::progress_bar;
use anyhow::Result;

/// Opens the GPU and the weights the user asked for (default weights fetched
/// on first use) and builds the engine at the requested input size, its
/// kernels tuned first when `tune` and the adapter is new.
pub fn open_engine(args: &ModelArgs, tune: bool) -> Result<Engine> {
    let path = default_weights::resolve(args.weights.as_deref())?;
    let file = WeightFile::open(&path)?;
    let mut engine = Engine::new(Gpu::new()?, &file, args.input_size)?;
    if tune {
        tune_on_first_use(&mut engine)?;
    }
    Ok(engine)
}

/// On an adapter's first use, times the conv kernel variants on each conv
/// shape and each group of sibling convs merged and apart, and caches the
/// fastest (RETRAIN_TUNE=0 skips this and runs with the defaults for the
/// adapter's kind, unmerged).
pub fn tune_on_first_use(engine: &mut Engine) -> Result<()> {
    if engine.is_tuned() || std::env::var("RETRAIN_TUNE").is_ok_and(|v| v == "0") {
        return Ok(());
    }
    let steps = engine.tuning_steps();
    eprintln!(
        "Tuning the conv kernels for \"{}\" (once for this device; RETRAIN_TUNE=0 skips it)",
        engine.gpu.info.name
    );
    let bar = progress_bar(steps, "conv shapes");
    let saved = engine.tune(&mut |_| bar.inc(1));
    bar.finish_and_clear();
    if let Err(e) = saved {
        // The measured choices are in use for this run; only the cache is missing.
        eprintln!("warning: {e:#}; the kernels will be tuned again next time");
    }
    Ok(())
}
