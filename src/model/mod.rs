//! The network as data: the op graph, Inception V3 built from it, and the
//! engine's weight file.

pub mod graph;
pub mod inception_v3;
pub mod weights;
