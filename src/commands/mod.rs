//! One module per subcommand.

pub mod classify;
pub mod features;
pub mod info;
pub mod retrain;

use crate::cli::ModelArgs;
use crate::convert::default_weights;
use crate::engine::Engine;
use crate::gpu::Gpu;
use crate::model::weights::WeightFile;
use anyhow::Result;

/// Opens the GPU and the weights the user asked for (default weights fetched
/// on first use) and builds the engine at the requested input size, its
/// kernels tuned first when `tune` and the adapter is new.
pub fn open_engine(args: &ModelArgs, tune: bool) -> Result<Engine> {
    let path = default_weights::resolve(args.weights.as_deref())?;
    let file = WeightFile::open(&path)?;
    let mut engine = Engine::new(Gpu::new()?, &file, args.input_size)?;
    if tune {
        engine.tune_on_first_use()?;
    }
    Ok(engine)
}
