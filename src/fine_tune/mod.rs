//! Fine-tuning: the kept head and the network's top blocks trained together
//! at a low learning rate from the activations at the cut below them (cached,
//! or computed per batch from distorted images): which blocks train
//! (blocks.rs), their parameters and optimiser state on the GPU (network.rs),
//! one pass per batch size (step.rs), and the kernel tuning of the input
//! gradients (tuning.rs).

pub mod blocks;
pub mod distorted;
pub mod network;
pub mod settings;
pub mod step;
pub mod training;
pub mod tuning;
