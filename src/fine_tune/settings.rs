//! What fine-tuning is asked to do, as a plain struct the command layer
//! builds, with the learning-rate schedule it follows.

/// The optimiser of the blocks and the classifier.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    Sgd { momentum: f32 },
    Adam,
}

/// Images per training step unless asked otherwise (--fine-tune-batch-size).
pub const DEFAULT_BATCH: u32 = 16;

#[derive(Clone, Debug)]
pub struct FineTuneSettings {
    /// The first block that trains (a boundary name: "mixed9").
    pub from: String,
    pub epochs: u32,
    /// The peak learning rate, reached after the warm-up.
    pub learning_rate: f32,
    pub rule: Rule,
    /// Decoupled weight decay of conv and classifier weights (not biases).
    pub weight_decay: f32,
    /// Images per optimiser step.
    pub batch_size: u32,
    /// Dropout's probability on the classifier's input while training.
    pub dropout: f32,
    /// Epochs without a better validation result before stopping (0: never;
    /// never in the first half of the epochs either).
    pub patience: u32,
}

impl FineTuneSettings {
    /// Adam's β1, or SGD's momentum.
    pub fn beta1(&self) -> f32 {
        match self.rule {
            Rule::Sgd { momentum } => momentum,
            Rule::Adam => 0.9,
        }
    }

    pub fn beta2(&self) -> f32 {
        0.999
    }

    /// Whether training stops after `epoch`, the best so far being `best`:
    /// after `patience` epochs without a better one, but not in the first
    /// half of the epochs — at the peak learning rate the blocks first
    /// drift, and validation often dips before the decay brings it back up.
    pub fn stops_after(&self, epoch: u32, best: u32) -> bool {
        self.patience > 0
            && epoch - best >= self.patience
            && 2 * epoch >= self.epochs
            && epoch < self.epochs
    }

    /// The learning rate at `step` of `total`: a linear warm-up over the
    /// first tenth (the head and the blocks meet gently), then a cosine decay
    /// to zero, which lets few epochs converge.
    pub fn learning_rate_at(&self, step: u32, total: u32) -> f32 {
        let warmup = (total / 10).max(1);
        if step < warmup {
            return self.learning_rate * (step + 1) as f32 / warmup as f32;
        }
        let progress = (step - warmup) as f32 / (total - warmup).max(1) as f32;
        self.learning_rate * 0.5 * (1.0 + (std::f32::consts::PI * progress.min(1.0)).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_then_decays() {
        let s = FineTuneSettings {
            from: "mixed9".into(),
            epochs: 5,
            learning_rate: 0.01,
            rule: Rule::Adam,
            weight_decay: 0.0,
            batch_size: 16,
            dropout: 0.3,
            patience: 0,
        };
        let lr: Vec<f32> = (0..100).map(|t| s.learning_rate_at(t, 100)).collect();
        assert!((lr[0] - 0.001).abs() < 1e-7);
        assert!((lr[9] - 0.01).abs() < 1e-7);
        assert!(lr[10..].windows(2).all(|w| w[1] <= w[0]));
        assert!(lr[99] < 1e-5);
    }

    #[test]
    fn patience_stops_only_in_the_second_half() {
        let s = FineTuneSettings {
            from: "mixed9".into(),
            epochs: 8,
            learning_rate: 0.01,
            rule: Rule::Adam,
            weight_decay: 0.0,
            batch_size: 16,
            dropout: 0.5,
            patience: 2,
        };
        // Epoch 1 best: epochs 2-3 dip, no stop before epoch 4.
        assert!(!s.stops_after(3, 1));
        assert!(s.stops_after(4, 1));
        assert!(!s.stops_after(6, 5));
        assert!(s.stops_after(7, 5));
        // The last epoch ends training anyway.
        assert!(!s.stops_after(8, 1));
        let never = FineTuneSettings { patience: 0, ..s };
        assert!(!never.stops_after(7, 1));
    }
}
