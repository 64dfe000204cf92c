//! The network as data: the op graph, the networks built from it
//! (Inception V3, MobileNet V2) and what distinguishes them, the merging of
//! sibling 1×1 convs, and the engine's weight file.

pub mod architecture;
pub mod graph;
pub mod inception_v3;
pub mod merge;
pub mod mobilenet_v2;
pub mod ops;
pub mod weights;

pub use architecture::Architecture;
