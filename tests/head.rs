//! The heads' GPU training against the f64 CPU reference (same initial
//! weights, same sampled rows, K steps, each head within relative 1e-4), the
//! standardisation and its fold into an exported head, and the default
//! training against retrain.py's on badly scaled features.

mod common;

use clap::Parser;
use common::{gpu, random_vec, rel_l2, rng};
use rand::rngs::StdRng;
use rand::Rng;
use retrain::cli::Cli;
use retrain::commands::retrain::training_config;
use retrain::cpu_reference::{head_metrics, head_step, HeadState};
use retrain::head::optimizer::{HeadSettings, Optimizer, TrainingRule};
use retrain::head::GpuHeads;
use retrain::train::batches::CachedBatches;
use retrain::train::config::TrainingConfig;
use retrain::train::rows::TrainingData;
use retrain::train::standardize::Standardizer;
use retrain::train::training_loop::{self, Observers};

/// Features in [0, 2), like bottlenecks (non-negative).
fn features(rng: &mut StdRng, n: usize, dim: usize) -> Vec<f32> {
    random_vec(rng, n * dim)
        .iter()
        .map(|v| v.abs() * 2.0)
        .collect()
}

fn check_heads_against_reference(rule: TrainingRule, (dim, classes, batch): (u32, u32, u32)) {
    let (gpu, _) = gpu();
    let mut rng = rng(42 + dim as u64);
    let n = 60usize;
    let features = features(&mut rng, n, dim as usize);
    let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..classes)).collect();
    let settings = [
        HeadSettings {
            learning_rate: 0.05,
            l2: 0.0,
        },
        HeadSettings {
            learning_rate: 0.01,
            l2: 0.1,
        },
        HeadSettings {
            learning_rate: 0.002,
            l2: 1.0,
        },
    ];
    let per_head = (dim * classes + classes) as usize;
    let initial: Vec<f32> = random_vec(&mut rng, settings.len() * per_head)
        .iter()
        .map(|v| v * 0.01)
        .collect();
    let heads = GpuHeads::new(
        gpu,
        &features,
        &labels,
        (dim, classes),
        &initial,
        &settings,
        rule,
    )
    .unwrap();
    let slot = heads.batch(gpu, batch);
    let mut reference: Vec<HeadState> = initial.chunks(per_head).map(HeadState::new).collect();
    let shape = (dim as usize, classes as usize);
    for step in 0..8 {
        let rows: Vec<u32> = (0..batch).map(|_| rng.random_range(0..n as u32)).collect();
        if step % 3 == 0 {
            let metrics = heads.evaluate(gpu, &slot, &rows).unwrap();
            for (m, r) in metrics.iter().zip(&reference) {
                let (loss, acc) = head_metrics(&features, shape, &labels, &rows, &r.params);
                let loss_err = (m.cross_entropy as f64 - loss).abs();
                assert!(
                    loss_err <= 1e-4 * loss.abs().max(1.0),
                    "loss {} vs {loss}",
                    m.cross_entropy
                );
                assert!(
                    (m.accuracy as f64 - acc).abs() < 1e-6,
                    "accuracy {} vs {acc}",
                    m.accuracy
                );
            }
        }
        let seed: u32 = rng.random();
        heads.train_step(gpu, &slot, &rows, step, seed);
        for (state, s) in reference.iter_mut().zip(&settings) {
            head_step(
                &features, shape, &labels, &rows, state, s, &rule, step, seed,
            );
        }
    }
    for (h, (state, start)) in reference.iter().zip(initial.chunks(per_head)).enumerate() {
        let expected: Vec<f32> = state.params.iter().map(|&v| v as f32).collect();
        let moved = rel_l2(&expected, start);
        assert!(
            moved > 1e-3,
            "training must change head {h}'s weights ({moved})"
        );
        let err = rel_l2(&heads.parameters(gpu, h as u32).unwrap(), &expected);
        assert!(
            err <= 1e-4,
            "{rule:?} dim {dim} classes {classes} head {h}: relative error {err:e}"
        );
    }
}

/// (dim, classes, batch): class tiles of 4, 2, 8 and two 8s with a remainder;
/// dims and batches that are not multiples of the kernels' row tile.
const SHAPES: [(u32, u32, u32); 4] = [(37, 3, 10), (2048, 2, 100), (130, 7, 33), (45, 13, 21)];

#[test]
fn retrain_py_sgd_matches_the_cpu_reference() {
    for shape in SHAPES {
        check_heads_against_reference(TrainingRule::retrain_py(8), shape);
    }
}

#[test]
fn adam_with_decay_smoothing_and_dropout_matches_the_cpu_reference() {
    let rule = TrainingRule {
        optimizer: Optimizer::ADAM,
        cosine_decay: true,
        steps: 10,
        label_smoothing: 0.1,
        dropout: 0.25,
    };
    for shape in SHAPES {
        check_heads_against_reference(rule, shape);
    }
}

#[test]
fn momentum_matches_the_cpu_reference() {
    let rule = TrainingRule {
        optimizer: Optimizer::Momentum { momentum: 0.9 },
        cosine_decay: true,
        steps: 10,
        label_smoothing: 0.0,
        dropout: 0.5,
    };
    check_heads_against_reference(rule, (130, 7, 33));
    check_heads_against_reference(rule, (45, 13, 21));
}

#[test]
fn a_stopped_head_keeps_its_parameters() {
    let (gpu, _) = gpu();
    let mut rng = rng(3);
    let (n, dim, classes) = (40usize, 24u32, 3u32);
    let features = features(&mut rng, n, dim as usize);
    let labels: Vec<u32> = (0..n as u32).map(|i| i % classes).collect();
    let settings = [HeadSettings {
        learning_rate: 0.01,
        l2: 0.01,
    }; 2];
    let per_head = (dim * classes + classes) as usize;
    let initial = random_vec(&mut rng, 2 * per_head);
    let rule = TrainingRule {
        optimizer: Optimizer::ADAM,
        ..TrainingRule::retrain_py(5)
    };
    let mut heads = GpuHeads::new(
        gpu,
        &features,
        &labels,
        (dim, classes),
        &initial,
        &settings,
        rule,
    )
    .unwrap();
    heads.set_active(gpu, &[true, false]);
    let slot = heads.batch(gpu, 16);
    for step in 0..5 {
        heads.train_step(gpu, &slot, &(0..16).collect::<Vec<_>>(), step, 0);
    }
    assert!(rel_l2(&heads.parameters(gpu, 0).unwrap(), &initial[..per_head]) > 1e-3);
    assert_eq!(heads.parameters(gpu, 1).unwrap(), &initial[per_head..]);
}

#[test]
fn standardisation_matches_the_cpu_and_folds_into_the_exported_head() {
    check_standardisation(5, 50, 40, 3);
}

/// More feature values than one row of the grid covers (64-wide workgroups,
/// at most the device's limit per dimension): standardize.wgsl's grid folds
/// into two dimensions and must still reach every row.
#[test]
fn standardisation_past_the_grid_limit() {
    let max_groups = gpu().0.limits.max_compute_workgroups_per_dimension as usize;
    let dim = 2048;
    check_standardisation(6, (64 * max_groups).div_ceil(dim) + 3, dim as u32, 2);
}

/// Standardises `n` random, badly scaled feature rows of `dim` values on
/// the GPU: the statistics against the CPU's, and the head's logits on
/// them against the folded head's on the raw features.
fn check_standardisation(seed: u64, n: usize, dim: u32, classes: u32) {
    let (gpu, _) = gpu();
    let mut rng = rng(seed);
    let mut features = features(&mut rng, n, dim as usize);
    for (i, v) in features.iter_mut().enumerate() {
        let k = i % dim as usize;
        *v *= 10f32.powi(k as i32 % 7 - 3); // badly scaled
        if k == 5 {
            *v = 0.0; // a dimension that is always zero, as many bottleneck dimensions are
        }
    }
    let params = random_vec(&mut rng, (dim * classes + classes) as usize);
    let heads = GpuHeads::fixed(gpu, &features, (dim, classes), &params).unwrap();
    let selected: Vec<u32> = (0..n as u32).filter(|r| r % 3 != 0).collect();
    let s = Standardizer::fit(gpu, &heads, &selected)
        .unwrap()
        .standardization;
    for k in 0..dim as usize {
        let values: Vec<f64> = selected
            .iter()
            .map(|&r| features[r as usize * dim as usize + k] as f64)
            .collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
        let inv = if var == 0.0 { 0.0 } else { 1.0 / var.sqrt() };
        assert!(
            (s.mean[k] as f64 - mean).abs() <= 1e-5 * mean.abs().max(1e-3),
            "mean {k}"
        );
        assert!(
            (s.inv_std[k] as f64 - inv).abs() <= 1e-4 * inv,
            "inv_std {k}: {} vs {inv}",
            s.inv_std[k]
        );
    }
    // Logits of the head on standardised features equal those of the folded head on raw ones.
    let rows: Vec<u32> = (0..n as u32).collect();
    let on_standardized = heads
        .logits(gpu, &heads.batch(gpu, n as u32), &rows)
        .unwrap();
    let (w, b) = training_loop::export_head(gpu, &heads, 0, Some(&s)).unwrap();
    let raw = GpuHeads::fixed(gpu, &features, (dim, classes), &[w, b].concat()).unwrap();
    let on_raw = raw.logits(gpu, &raw.batch(gpu, n as u32), &rows).unwrap();
    let err = rel_l2(&on_raw, &on_standardized);
    assert!(err < 1e-4, "folded head differs: {err:e}");
}

#[test]
fn predictions_and_logits_match_the_weights() {
    let (gpu, _) = gpu();
    let mut rng = rng(7);
    let (n, dim, classes) = (20usize, 16u32, 4u32);
    let features = random_vec(&mut rng, n * dim as usize);
    let params = random_vec(&mut rng, (dim * classes + classes) as usize);
    let head = GpuHeads::fixed(gpu, &features, (dim, classes), &params).unwrap();
    let rows: Vec<u32> = (0..n as u32).rev().collect();
    let slot = head.batch(gpu, n as u32);
    let logits = head.logits(gpu, &slot, &rows).unwrap();
    let predicted = head.predict(gpu, &slot, &rows, 0).unwrap();
    for (b, &row) in rows.iter().enumerate() {
        let x = &features[row as usize * dim as usize..][..dim as usize];
        let expect: Vec<f32> = (0..classes as usize)
            .map(|c| {
                params[(dim * classes) as usize + c]
                    + (0..dim as usize)
                        .map(|k| x[k] * params[k * classes as usize + c])
                        .sum::<f32>()
            })
            .collect();
        for c in 0..classes as usize {
            assert!((logits[b * classes as usize + c] - expect[c]).abs() < 1e-4);
        }
        let best = (0..classes as usize).fold(0, |m, c| if expect[c] > expect[m] { c } else { m });
        assert_eq!(predicted[b] as usize, best);
    }
}

/// Linearly separable classes (with a margin) in a random direction, then
/// every dimension scaled by a factor from 1e-3 to 1e3.
fn badly_scaled_problem(
    rng: &mut StdRng,
    n: usize,
    dim: usize,
    classes: usize,
) -> (Vec<f32>, Vec<u32>) {
    let directions: Vec<f64> = (0..dim * classes)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let scales: Vec<f64> = (0..dim)
        .map(|k| 10f64.powf(-3.0 + 6.0 * k as f64 / (dim - 1) as f64))
        .collect();
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    while labels.len() < n {
        let z: Vec<f64> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut score: Vec<f64> = (0..classes)
            .map(|c| (0..dim).map(|k| z[k] * directions[k * classes + c]).sum())
            .collect();
        let best = (0..classes).fold(0, |m, c| if score[c] > score[m] { c } else { m });
        let top = score[best];
        score.sort_by(f64::total_cmp);
        if top - score[classes - 2] < 1.0 {
            continue; // keep a margin
        }
        features.extend(z.iter().zip(&scales).map(|(v, s)| (v * s) as f32));
        labels.push(best as u32);
    }
    (features, labels)
}

/// Test accuracy of the trained head chosen by `config` on the last 200 rows.
fn accuracy_with(
    config: &TrainingConfig,
    features: &[f32],
    labels: &[u32],
    dim: u32,
    classes: u32,
) -> f32 {
    let (gpu, _) = gpu();
    let n = labels.len() as u32;
    let by_class = |range: std::ops::Range<u32>| {
        let mut rows = vec![Vec::new(); classes as usize];
        for r in range {
            rows[labels[r as usize] as usize].push(r);
        }
        rows
    };
    let (train, validation) = (by_class(0..n - 400), by_class(n - 400..n - 200));
    let per_head = (dim * classes + classes) as usize;
    let mut rng = rng(11);
    let initial: Vec<f32> = (0..config.settings.len() * per_head)
        .map(|_| rng.random_range(-1e-3..1e-3))
        .collect();
    let data = TrainingData {
        features,
        labels,
        dim,
        classes,
        train: &train,
        validation: &validation,
    };
    let mut batches = CachedBatches {
        train: &train,
        size: config.batch_size as usize,
    };
    let trained = training_loop::train_heads(
        gpu,
        &data,
        config,
        &initial,
        &mut rng,
        &mut batches,
        Observers {
            evaluated: &mut |_| Ok(()),
            stepped: &mut |_, _| Ok(()),
        },
    )
    .unwrap();
    let (w, b) = trained.export(gpu).unwrap();
    let head = GpuHeads::fixed(gpu, features, (dim, classes), &[w, b].concat()).unwrap();
    let test: Vec<u32> = (n - 200..n).collect();
    let predicted = head.predict(gpu, &head.batch(gpu, 200), &test, 0).unwrap();
    let correct = test
        .iter()
        .zip(&predicted)
        .filter(|(&r, &p)| labels[r as usize] == p)
        .count();
    correct as f32 / test.len() as f32
}

#[test]
fn default_training_solves_badly_scaled_features_where_retrain_py_does_not() {
    let (dim, classes) = (32u32, 3u32);
    let (features, labels) =
        badly_scaled_problem(&mut rng(9), 2000, dim as usize, classes as usize);
    let args = |extra: &[&str]| {
        let mut argv = vec!["retrain", "--image-dir", "unused"];
        argv.extend(extra);
        training_config(&Cli::parse_from(argv).train)
    };
    let default = accuracy_with(&args(&[]), &features, &labels, dim, classes);
    let retrain_py = accuracy_with(
        &args(&["--retrain-py-head"]),
        &features,
        &labels,
        dim,
        classes,
    );
    eprintln!("default {default}, retrain.py {retrain_py}");
    assert!(default >= 0.99, "default training reached only {default}");
    assert!(
        retrain_py < 0.9,
        "retrain.py's training reached {retrain_py}: the problem is too easy"
    );
}
