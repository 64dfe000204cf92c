//! The network as data: the op graph, Inception V3 built from it, the
//! merging of sibling 1×1 convs, and the engine's weight file.

pub mod graph;
pub mod inception_v3;
pub mod merge;
pub mod weights;
