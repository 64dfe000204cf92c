//! From retrain's flags to the plain training configuration: each flag
//! value checked before any work (naming the flag), then the heads to train
//! side by side, as many as the device holds.

use crate::cli::TrainArgs;
use crate::fine_tune::settings::{FineTuneSettings, Rule};
use crate::gpu::Gpu;
use crate::head::optimizer::{HeadSettings, Optimizer, TrainingRule};
use crate::head::GpuHeads;
use crate::train::config::TrainingConfig;
use anyhow::{bail, Result};

/// Rejects flag values that cannot work, before any work, naming the flag.
pub fn validate(a: &TrainArgs) -> Result<()> {
    let pct_ok = |p: f64| (0.0..100.0).contains(&p);
    if !pct_ok(a.testing_percentage) {
        bail!(
            "--testing-percentage must be between 0 and 100 (got {})",
            a.testing_percentage
        );
    }
    if !pct_ok(a.validation_percentage) {
        bail!(
            "--validation-percentage must be between 0 and 100 (got {})",
            a.validation_percentage
        );
    }
    if a.testing_percentage + a.validation_percentage >= 100.0 {
        bail!("--testing-percentage plus --validation-percentage must stay under 100, leaving images to train on");
    }
    if a.train_batch_size < 1 {
        bail!(
            "--train-batch-size must be at least 1 (got {})",
            a.train_batch_size
        );
    }
    for (flag, v) in [
        ("--validation-batch-size", a.validation_batch_size),
        ("--test-batch-size", a.test_batch_size),
    ] {
        if v == 0 || v < -1 {
            bail!("{flag} must be -1 (all images) or at least 1 (got {v})");
        }
    }
    if a.how_many_training_steps == 0 {
        bail!("--how-many-training-steps must be at least 1");
    }
    if a.eval_step_interval == 0 {
        bail!("--eval-step-interval must be at least 1");
    }
    let positive = |v: f32| v.is_finite() && v > 0.0;
    if let Some(rate) = a.learning_rate.filter(|&r| !positive(r)) {
        bail!("--learning-rate must be a positive number (got {rate})");
    }
    if let Some(rate) = a.sweep_learning_rates.iter().find(|&&r| !positive(r)) {
        bail!("--sweep-learning-rates must be positive numbers (got {rate})");
    }
    if let Some(l2) = a.sweep_l2.iter().find(|&&v| !(v.is_finite() && v >= 0.0)) {
        bail!("--sweep-l2 must be zero or positive numbers (got {l2})");
    }
    if a.fine_tune_block().is_some() {
        validate_fine_tuning(a)?;
    }
    for (flag, v) in [
        ("--momentum", a.momentum),
        ("--label-smoothing", a.label_smoothing),
        ("--dropout", a.dropout),
        ("--fine-tune-momentum", a.fine_tune_momentum),
    ] {
        if !(0.0..1.0).contains(&v) {
            bail!("{flag} must be at least 0 and below 1 (got {v})");
        }
    }
    Ok(())
}

fn validate_fine_tuning(a: &TrainArgs) -> Result<()> {
    if a.fine_tune_epochs == 0 {
        bail!("--fine-tune-epochs must be at least 1");
    }
    if a.fine_tune_batch_size == 0 {
        bail!("--fine-tune-batch-size must be at least 1");
    }
    if !(a.fine_tune_learning_rate.is_finite() && a.fine_tune_learning_rate > 0.0) {
        bail!(
            "--fine-tune-learning-rate must be a positive number (got {})",
            a.fine_tune_learning_rate
        );
    }
    if !(a.fine_tune_weight_decay.is_finite() && (0.0..1.0).contains(&a.fine_tune_weight_decay)) {
        bail!(
            "--fine-tune-weight-decay must be at least 0 and below 1 (got {})",
            a.fine_tune_weight_decay
        );
    }
    if !(0.0..1.0).contains(&a.fine_tune_dropout) {
        bail!(
            "--fine-tune-dropout must be at least 0 and below 1 (got {})",
            a.fine_tune_dropout
        );
    }
    Ok(())
}

/// What fine-tuning the flags ask for, if any.
pub fn fine_tune_settings(a: &TrainArgs) -> Option<FineTuneSettings> {
    Some(FineTuneSettings {
        from: a.fine_tune_block()?.to_string(),
        epochs: a.fine_tune_epochs,
        learning_rate: a.fine_tune_learning_rate,
        rule: match a.fine_tune_optimizer.as_str() {
            "sgd" => Rule::Sgd {
                momentum: a.fine_tune_momentum,
            },
            _ => Rule::Adam,
        },
        weight_decay: a.fine_tune_weight_decay,
        batch_size: a.fine_tune_batch_size,
        dropout: a.fine_tune_dropout,
        patience: a.fine_tune_patience,
    })
}

/// The training the flags ask for: retrain.py's, or the default sweep of heads.
pub fn training_config(a: &TrainArgs) -> TrainingConfig {
    let steps = a.how_many_training_steps;
    let base = TrainingConfig {
        settings: vec![HeadSettings {
            learning_rate: a.learning_rate.unwrap_or(0.01),
            l2: 0.0,
        }],
        rule: TrainingRule::retrain_py(steps),
        standardize: false,
        batch_size: a.train_batch_size as u32,
        eval_interval: a.eval_step_interval,
        patience: 0,
        keep_best: false,
        validation_sample: (a.validation_batch_size > 0)
            .then_some(a.validation_batch_size as usize),
    };
    if a.retrain_py_head {
        return base;
    }
    let rates = match a.learning_rate {
        Some(rate) => vec![rate],
        None => a.sweep_learning_rates.clone(),
    };
    let optimizer = match a.optimizer.as_str() {
        "sgd" => Optimizer::Sgd,
        "momentum" => Optimizer::Momentum {
            momentum: a.momentum,
        },
        _ => Optimizer::ADAM,
    };
    TrainingConfig {
        settings: rates
            .iter()
            .flat_map(|&learning_rate| {
                a.sweep_l2
                    .iter()
                    .map(move |&l2| HeadSettings { learning_rate, l2 })
            })
            .collect(),
        rule: TrainingRule {
            optimizer,
            cosine_decay: true,
            steps,
            label_smoothing: a.label_smoothing,
            dropout: a.dropout,
        },
        standardize: true,
        patience: a.early_stopping_patience,
        keep_best: true,
        validation_sample: None,
        ..base
    }
}

/// The flags' training, with the sweep thinned to the heads the device holds.
pub fn fit_to_device(
    args: &TrainArgs,
    gpu: &Gpu,
    (dim, classes): (usize, usize),
) -> TrainingConfig {
    let mut config = training_config(args);
    let fit = GpuHeads::max_heads(gpu, (dim as u32, classes as u32)).max(1);
    if config.settings.len() > fit {
        log::warn!(
            "this device holds only {fit} heads of {classes} classes side by side: sweeping {fit} of the {} learning rate × L2 pairs",
            config.settings.len()
        );
        let all = std::mem::take(&mut config.settings);
        config.settings = (0..fit).map(|i| all[i * all.len() / fit]).collect();
    }
    if config.settings.len() > 1 {
        log::info!(
            "Training {} heads side by side ({} learning rates × {} L2 penalties, {:?}); the best on the validation images is kept",
            config.settings.len(),
            args.sweep_learning_rates.len(),
            args.sweep_l2.len(),
            config.rule.optimizer
        );
    }
    config
}
