//! What training is asked to do, as a plain struct the command layer builds:
//! the heads trained side by side (a learning rate and L2 penalty each) and
//! everything they share.

use crate::head::optimizer::{HeadSettings, TrainingRule};

/// How to train: the heads and everything they share.
#[derive(Clone, Debug)]
pub struct TrainingConfig {
    pub settings: Vec<HeadSettings>,
    pub rule: TrainingRule,
    pub standardize: bool,
    pub batch_size: u32,
    pub eval_interval: u32,
    /// Evaluations without a better validation cross-entropy before a head stops (0: never).
    pub patience: u32,
    /// Keep each head's best validation snapshot (true), or its last parameters (retrain.py).
    pub keep_best: bool,
    /// retrain.py's validation batch: a fresh class-balanced sample of this many
    /// rows at each evaluation. None: every validation row, every time.
    pub validation_sample: Option<usize>,
}
