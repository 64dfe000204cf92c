//! Everything that talks to wgpu: the device, the kernels, and the scheduler
//! that turns the network graph into a static plan of dispatches.

pub mod backward;
pub mod context;
pub mod conv_variant;
pub mod kernels;
pub mod lowering;
pub mod params;
pub mod scheduler;
pub mod shader;
pub mod slots;
pub mod texture_reads;
pub mod timer;
pub mod tuning;

pub use context::Gpu;
