//! retrain: transfer learning with a pretrained Inception V3 whose every tensor
//! operation is a WGSL compute shader run through wgpu.

pub mod convert;
pub mod cpu_reference;
pub mod engine;
pub mod gpu;
pub mod model;
