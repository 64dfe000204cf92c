//! One module per subcommand.

pub mod classify;
pub mod export;
pub mod features;
pub mod info;
pub mod report;
pub mod retrain;
pub mod serve;

use crate::cli::ModelArgs;
use crate::convert::default_weights;
use crate::engine::Engine;
use crate::gpu::Gpu;
use crate::model::weights::WeightFile;
use anyhow::Result;

/// Opens the GPU and the weights the user asked for (default weights fetched
/// on first use) and builds the engine at the requested input size.
pub fn open_engine(args: &ModelArgs) -> Result<Engine> {
    let path = default_weights::resolve(args.weights.as_deref(), args.architecture)?;
    let file = WeightFile::open(&path)?;
    Engine::new(Gpu::new()?, &file, args.input_size)
}
