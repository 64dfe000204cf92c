//! Training a classifier head on bottlenecks, retrain.py's way and better:
//! every image's bottleneck computed once and cached (bottlenecks.rs), rows
//! by class and split (rows.rs), batches of cached or distorted images
//! (batches.rs, distorted.rs), heads trained side by side and the best kept
//! (training_loop.rs, configured by config.rs), what the user sees (log.rs,
//! summaries.rs) and the final test (evaluation.rs). The command layer
//! (commands/retrain) strings these phases together.

pub mod batches;
pub mod bottlenecks;
pub mod config;
pub mod distorted;
pub mod evaluation;
pub mod log;
pub mod rows;
pub mod sampling;
pub mod standardize;
pub mod summaries;
pub mod training_loop;
