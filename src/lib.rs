//! retrain: transfer learning with a pretrained Inception V3 or MobileNet V2 whose every tensor
//! operation is a WGSL compute shader run through wgpu.

pub mod atomic_file;
pub mod cache_dir;
pub mod cli;
pub mod commands;
pub mod convert;
pub mod cpu_reference;
pub mod data;
pub mod engine;
pub mod export;
pub mod fine_tune;
pub mod fuzz_targets;
pub mod gpu;
pub mod head;
pub mod hex;
pub mod logging;
pub mod model;
pub mod progress;
pub mod report;
pub mod resources;
pub mod serve;
pub mod train;
