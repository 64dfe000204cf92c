//! Input data: finding and decoding images, and writing arrays.

pub mod bottleneck_cache;
pub mod claims;
pub mod dataset;
pub mod decode_cache;
pub mod distortion;
pub mod images;
pub mod loader;
pub mod npy;
