//! The classifier head on top of the bottleneck: H heads trained side by side
//! on the GPU (gpu_heads.rs, shaders/head.wgsl), their optimiser settings, and
//! the classifier file a trained head is saved as. Training (crate::train)
//! and inference (`classify`) both build on this module.

pub mod classifier;
pub mod gpu_heads;
mod many_rows;
pub mod optimizer;

pub use classifier::Classifier;
pub use gpu_heads::{Batch, GpuHeads, Metrics};
