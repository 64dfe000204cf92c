//! The fine-tuning step of a small Inception-style network (a mixed block
//! with every branch kind, a reduction block with a strided conv and a max
//! pool into the concatenation, the global pool, the classifier), random
//! weights and small channel counts: the CPU reference's gradients against
//! central finite differences in f64, the GPU's against the reference, and
//! one optimiser step against the reference's.

mod common;

use common::*;
use rand::Rng;
use retrain::cpu_reference::backward::optimizer_step;
use retrain::cpu_reference::network::{loss_and_gradients, Parameters};
use retrain::fine_tune::blocks::TrainableBlocks;
use retrain::fine_tune::network::{TrainableNetwork, HEAD_BIASES, HEAD_WEIGHTS};
use retrain::fine_tune::settings::{FineTuneSettings, Rule};
use retrain::fine_tune::step::StepPlan;
use retrain::gpu::params::OptimizerParams;
use retrain::model::graph::{Graph, Padding::*, PoolOp};
use retrain::model::weights::{self, ModelInfo, Normalization, Tensor, WeightFile};
use std::collections::BTreeMap;

const CLASSES: usize = 3;
const BATCH: u32 = 4;

/// stem (6×6×5) → mixed0 (a mixed block) → mixed1 (a reduction block) → pool.
fn small_inception() -> Graph {
    let mut g = Graph::default();
    let x = g.tensor(6, 6, 5);
    g.name("stem", x);
    let out = g.tensor(6, 6, 3 + 2 + 2 + 3);
    let [b1, b2a, b2b, bpool] = out.split([3, 2, 2, 3]);
    g.conv_into("mixed0/branch1x1", x, b1, (1, 1), 1, Same)
        .unwrap();
    let t = g.conv("mixed0/branch3x3_1", x, 4, (1, 1), 1, Same).unwrap();
    g.conv_into("mixed0/branch3x3_2a", t, b2a, (1, 3), 1, Same)
        .unwrap();
    g.conv_into("mixed0/branch3x3_2b", t, b2b, (3, 1), 1, Same)
        .unwrap();
    let t = g.conv("mixed0/branch5x5_1", x, 3, (5, 5), 1, Same).unwrap();
    let t = g.conv("mixed0/branch7_1", t, 3, (1, 7), 1, Same).unwrap();
    let t = g.conv("mixed0/branch7_2", t, 3, (7, 1), 1, Same).unwrap();
    let t = g.pool(PoolOp::Average, t, 3, 1, Same).unwrap();
    g.conv_into("mixed0/branch_pool", t, bpool, (1, 1), 1, Same)
        .unwrap();
    g.name("mixed0", out);
    let x = out;
    let red = g.tensor(2, 2, 4 + x.channels);
    let [b3, bmax] = red.split([4, x.channels]);
    g.conv_into("mixed1/branch3x3", x, b3, (3, 3), 2, Valid)
        .unwrap();
    g.pool_into(PoolOp::Max, x, bmax, 3, 2, Valid).unwrap();
    g.name("mixed1", red);
    let pooled = g.global_avg_pool(red);
    g.name("bottleneck", pooled);
    g
}

fn random_parameters(g: &Graph, seed: u64) -> Parameters {
    let mut rng = rng(seed);
    let mut vec = |n: usize, scale: f64| -> Vec<f64> {
        (0..n).map(|_| rng.random_range(-scale..scale)).collect()
    };
    let mut convs = BTreeMap::new();
    for l in g.weighted_layers() {
        let fan_in = l.weight_shape[..3].iter().product::<usize>() as f64;
        let w = vec(l.weight_shape.iter().product(), 1.5 / fan_in.sqrt());
        let b = vec(l.outputs, 0.3);
        convs.insert(l.name.to_string(), (w, b));
    }
    let dim = 4 + 10;
    let head = (vec(dim * CLASSES, 1.0), vec(CLASSES, 0.3));
    Parameters { convs, head }
}

fn random_batch(g: &Graph, seed: u64) -> (Vec<f64>, Vec<u32>) {
    let mut rng = rng(seed);
    let n = g.shape(g.named("stem").unwrap()).elements() as usize * BATCH as usize;
    let input = (0..n).map(|_| rng.random_range(0.0..2.0)).collect();
    let labels = (0..BATCH)
        .map(|_| rng.random_range(0..CLASSES as u32))
        .collect();
    (input, labels)
}

fn trainable(g: &Graph) -> Graph {
    TrainableBlocks::new(g, "mixed0").unwrap().graph
}

/// Every parameter tensor as (name, values), the classifier's last.
fn flatten(p: &Parameters) -> Vec<(String, Vec<f64>)> {
    let mut out = Vec::new();
    for (name, (w, b)) in &p.convs {
        out.push((format!("{name}.weight"), w.clone()));
        out.push((format!("{name}.bias"), b.clone()));
    }
    out.push((HEAD_WEIGHTS.to_string(), p.head.0.clone()));
    out.push((HEAD_BIASES.to_string(), p.head.1.clone()));
    out
}

fn value_mut<'a>(p: &'a mut Parameters, name: &str) -> &'a mut Vec<f64> {
    match name {
        HEAD_WEIGHTS => &mut p.head.0,
        HEAD_BIASES => &mut p.head.1,
        _ => {
            let (layer, what) = name.rsplit_once('.').unwrap();
            let (w, b) = p.convs.get_mut(layer).unwrap();
            if what == "weight" {
                w
            } else {
                b
            }
        }
    }
}

#[test]
fn reference_gradients_match_finite_differences() {
    let g = trainable(&small_inception());
    let params = random_parameters(&g, 1);
    let (input, labels) = random_batch(&g, 2);
    let (_, grads) = loss_and_gradients(&g, BATCH, &input, &params, &labels);
    let eps = 1e-6;
    let mut checked = 0;
    for (name, analytic) in flatten(&grads) {
        let numeric: Vec<f64> = (0..analytic.len())
            .map(|i| {
                let loss_at = |delta: f64| {
                    let mut p = params.clone();
                    value_mut(&mut p, &name)[i] += delta;
                    loss_and_gradients(&g, BATCH, &input, &p, &labels).0
                };
                (loss_at(eps) - loss_at(-eps)) / (2.0 * eps)
            })
            .collect();
        let diff: f64 = analytic
            .iter()
            .zip(&numeric)
            .map(|(a, n)| (a - n).powi(2))
            .sum();
        let norm: f64 = numeric.iter().map(|n| n * n).sum();
        assert!(norm > 0.0, "{name}: no gradient reaches it");
        let err = (diff / norm).sqrt();
        assert!(
            err < 1e-6,
            "{name}: relative error {err:e} against finite differences"
        );
        checked += analytic.len();
    }
    assert!(checked > 1000, "{checked} parameters checked");
}

/// The small network as a weight file the fine-tuning network loads from.
fn weight_file(dir: &std::path::Path, params: &Parameters) -> WeightFile {
    let tensors: Vec<Tensor> = flatten(params)
        .into_iter()
        .filter(|(name, _)| name != HEAD_WEIGHTS && name != HEAD_BIASES)
        .map(|(name, values)| {
            let layer = name.rsplit_once('.').unwrap().0;
            let g = small_inception();
            let l = g.weighted_layers().find(|l| l.name == layer).unwrap();
            let shape = match name.ends_with(".weight") {
                true => l.weight_shape.clone(),
                false => vec![l.outputs],
            };
            Tensor {
                name,
                shape,
                data: values.iter().map(|&v| v as f32).collect(),
            }
        })
        .collect();
    let info = ModelInfo {
        architecture: "inception_v3".into(),
        source: "test".into(),
        input_height: 6,
        input_width: 6,
        bottleneck_size: 14,
        bottleneck_layer: "bottleneck".into(),
        normalization: Normalization::unit(),
        pytorch_padding: false,
        dtype: "f32".into(),
        fingerprint: String::new(),
    };
    let path = dir.join("small.safetensors");
    weights::write(&path, info, &tensors).unwrap();
    WeightFile::open(&path).unwrap()
}

fn settings(rule: Rule) -> FineTuneSettings {
    FineTuneSettings {
        from: "mixed0".into(),
        epochs: 1,
        learning_rate: 0.05,
        rule,
        weight_decay: 0.01,
        batch_size: BATCH,
        patience: 0,
    }
}

fn as_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn download(net: &TrainableNetwork, name: &str, gradients: bool) -> Vec<f32> {
    let gpu = &gpu().0;
    let p = net.parameter(name);
    let buffer = if gradients { &p.gradients } else { &p.values };
    common::download(gpu, buffer, p.shape.iter().product())
}

#[test]
fn gpu_step_matches_the_reference() {
    let gpu = &gpu().0;
    let dir = tempfile::tempdir().unwrap();
    let network = small_inception();
    let g = trainable(&network);
    let params = random_parameters(&g, 3);
    let (input, labels) = random_batch(&g, 4);
    let (_, grads) = loss_and_gradients(&g, BATCH, &input, &params, &labels);
    let file = weight_file(dir.path(), &params);
    for rule in [Rule::Sgd { momentum: 0.9 }, Rule::Adam] {
        let blocks = TrainableBlocks::new(&network, "mixed0").unwrap();
        let head = (as_f32(&params.head.0), as_f32(&params.head.1));
        let s = settings(rule);
        let mut net = TrainableNetwork::new(gpu, blocks, &file, (&head.0, &head.1), &s).unwrap();
        // The batch as two micro-batches whose gradients add up.
        let half = BATCH / 2;
        let plan = StepPlan::new(gpu, &net, half, 1.0 / BATCH as f32);
        let per_image = input.len() / BATCH as usize;
        for m in 0..2 {
            let rows = (m * half) as usize..((m + 1) * half) as usize;
            let cut = as_f32(&input[rows.start * per_image..rows.end * per_image]);
            plan.load(gpu, &cut, &labels[rows]);
            plan.run(gpu, true).unwrap();
        }
        for (name, expected) in flatten(&grads) {
            let actual = download(&net, &name, true);
            assert_rel_l2(
                &format!("{rule:?} gradient of {name}"),
                &actual,
                &as_f32(&expected),
                1e-4,
            );
        }
        // One update, against the reference optimiser on the same gradients.
        net.update(gpu, s.learning_rate);
        for ((name, mut values), (_, mut gradient)) in
            flatten(&params).into_iter().zip(flatten(&grads))
        {
            let decays = name.ends_with(".weight") || name == HEAD_WEIGHTS;
            let adam = matches!(rule, Rule::Adam);
            let p = OptimizerParams {
                count: values.len() as u32,
                rule: adam as u32,
                // Adam's bias corrections at step 1: √(1 − β2) / (1 − β1).
                step_size: if adam {
                    s.learning_rate * (1.0f32 - 0.999).sqrt() / 0.1
                } else {
                    s.learning_rate
                },
                decay: if decays {
                    s.learning_rate * s.weight_decay
                } else {
                    0.0
                },
                beta1: s.beta1(),
                beta2: s.beta2(),
                epsilon: 1e-7,
                _pad: 0,
            };
            let (mut first, mut second) = (vec![0.0; values.len()], vec![0.0; values.len()]);
            optimizer_step(&p, &mut values, &mut gradient, &mut first, &mut second);
            let actual = download(&net, &name, false);
            assert_rel_l2(
                &format!("{rule:?} update of {name}"),
                &actual,
                &as_f32(&values),
                1e-5,
            );
            assert!(
                download(&net, &name, true).iter().all(|&g| g == 0.0),
                "{name}: gradients cleared"
            );
        }
    }
}
