//! How heads learn: the optimiser, the learning-rate schedule and the
//! per-step constants the update kernel needs; shared by every head of a sweep.

/// The update rule applied to each head's gradient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    Sgd,
    Momentum {
        momentum: f32,
    },
    Adam {
        beta1: f32,
        beta2: f32,
        epsilon: f32,
    },
}

impl Optimizer {
    pub const ADAM: Optimizer = Optimizer::Adam {
        beta1: 0.9,
        beta2: 0.999,
        epsilon: 1e-8,
    };

    /// The kernel's code for this rule (head.wgsl `Params.optimizer`).
    pub fn code(&self) -> u32 {
        match self {
            Optimizer::Sgd => 0,
            Optimizer::Momentum { .. } => 1,
            Optimizer::Adam { .. } => 2,
        }
    }

    /// Optimiser state per parameter: first moments, then second moments.
    pub fn moments(&self) -> usize {
        match self {
            Optimizer::Sgd => 0,
            Optimizer::Momentum { .. } => 1,
            Optimizer::Adam { .. } => 2,
        }
    }
}

/// Everything about training that all heads share.
#[derive(Clone, Copy, Debug)]
pub struct TrainingRule {
    pub optimizer: Optimizer,
    /// Cosine decay of the learning rate to zero over `steps` (false: constant).
    pub cosine_decay: bool,
    pub steps: u32,
    pub label_smoothing: f32,
    /// Probability of zeroing a bottleneck value during training (inverted dropout).
    pub dropout: f32,
}

impl TrainingRule {
    /// retrain.py's rule: plain SGD at a constant rate.
    pub fn retrain_py(steps: u32) -> Self {
        TrainingRule {
            optimizer: Optimizer::Sgd,
            cosine_decay: false,
            steps,
            label_smoothing: 0.0,
            dropout: 0.0,
        }
    }

    /// The learning-rate factor for (0-based) `step`.
    pub fn lr_scale(&self, step: u32) -> f32 {
        if !self.cosine_decay {
            return 1.0;
        }
        let progress = step as f64 / self.steps.max(1) as f64;
        (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())) as f32
    }

    /// Adam's bias corrections 1/(1 − β1^t), 1/(1 − β2^t) for (0-based) `step` (t = step + 1).
    pub fn adam_corrections(&self, step: u32) -> (f32, f32) {
        match self.optimizer {
            Optimizer::Adam { beta1, beta2, .. } => {
                let t = step as i32 + 1;
                let c = |beta: f32| (1.0 / (1.0 - (beta as f64).powi(t))) as f32;
                (c(beta1), c(beta2))
            }
            _ => (1.0, 1.0),
        }
    }
}

/// One head's own settings within a sweep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadSettings {
    pub learning_rate: f32,
    /// λ of the penalty λ/2·‖W‖² added to the mean cross-entropy (biases are not penalised).
    pub l2: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_decay_runs_from_one_to_zero() {
        let rule = TrainingRule {
            cosine_decay: true,
            ..TrainingRule::retrain_py(100)
        };
        assert_eq!(rule.lr_scale(0), 1.0);
        assert!((rule.lr_scale(50) - 0.5).abs() < 1e-6);
        assert!(rule.lr_scale(99) < 0.001);
        assert_eq!(TrainingRule::retrain_py(100).lr_scale(99), 1.0);
    }

    #[test]
    fn adam_corrections_undo_the_zero_start() {
        let rule = TrainingRule {
            optimizer: Optimizer::ADAM,
            ..TrainingRule::retrain_py(10)
        };
        let (c1, c2) = rule.adam_corrections(0);
        assert!((c1 - 10.0).abs() < 1e-4 && (c2 - 1000.0).abs() < 0.1);
    }
}
