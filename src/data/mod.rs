//! Input data: finding and decoding images, and writing arrays.

pub mod images;
pub mod loader;
pub mod npy;
