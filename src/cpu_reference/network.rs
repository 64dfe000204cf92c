//! A network's trainable part in plain f64: the ops after a cut run forward
//! from the cut's activations, the classifier's mean cross-entropy on top,
//! and every parameter's gradient by the backward references — the oracle the
//! GPU's fine-tuning step is tested against, itself tested against finite
//! differences.

use super::backward::{self, activation_grad, conv_input_grad, conv_parameter_grads};
use crate::gpu::lowering::{
    activation_grad_params, conv_params, global_pool_params, pool_kind, pool_params,
};
use crate::gpu::params::ClassifierTrainParams;
use crate::model::graph::{Graph, Op, TensorId};
use std::collections::BTreeMap;

/// Each conv's weights and bias by layer name, and the classifier's weights
/// [dim, classes] and biases.
#[derive(Clone, Debug, PartialEq)]
pub struct Parameters {
    pub convs: BTreeMap<String, (Vec<f64>, Vec<f64>)>,
    pub head: (Vec<f64>, Vec<f64>),
}

impl Parameters {
    /// The same structure with every value zero.
    pub fn zeros_like(&self) -> Self {
        let zeros = |v: &Vec<f64>| vec![0.0; v.len()];
        Parameters {
            convs: (self.convs.iter())
                .map(|(k, (w, b))| (k.clone(), (zeros(w), zeros(b))))
                .collect(),
            head: (zeros(&self.head.0), zeros(&self.head.1)),
        }
    }
}

/// Every tensor's values after running `graph`'s ops on `batch` images whose
/// input (the first op's input tensor) is `input`; tensors no op touches stay empty.
pub fn forward(graph: &Graph, batch: u32, input: &[f64], params: &Parameters) -> Vec<Vec<f64>> {
    let mut values: Vec<Vec<f64>> = vec![Vec::new(); graph.shapes.len()];
    let size = |t: TensorId| (graph.shape(t).elements() * batch as u64) as usize;
    values[graph.ops[0].input().0] = input.to_vec();
    for op in &graph.ops {
        let out = op.output();
        if values[out.0].is_empty() {
            values[out.0] = vec![0.0; size(out)];
        }
        let mut output = std::mem::take(&mut values[out.0]);
        let x = &values[op.input().0];
        match op {
            Op::Conv(c) => {
                let (w, b) = &params.convs[&c.name];
                let p = conv_params(graph, c, batch);
                assert!(c.residual.is_none(), "residual convs are not trained");
                super::conv2d(&p, x, (w, b), &[], &mut output);
            }
            Op::Pool(pool) => {
                let p = pool_params(graph, pool, batch);
                super::pool(pool_kind(pool.kind), &p, x, &mut output);
            }
            Op::GlobalAvgPool { input, .. } => {
                output = super::global_avg_pool(&global_pool_params(graph, *input, batch), x);
            }
            Op::MergedConv(_) | Op::Depthwise(_) => {
                panic!("only convs, pools and the global pool are trained")
            }
        }
        values[out.0] = output;
    }
    values
}

/// The batch's mean cross-entropy (the classifier on the last op's output)
/// and its gradient with respect to every parameter.
pub fn loss_and_gradients(
    graph: &Graph,
    batch: u32,
    input: &[f64],
    params: &Parameters,
    labels: &[u32],
) -> (f64, Parameters) {
    let values = forward(graph, batch, input, params);
    let features = graph.ops.last().expect("ops").output();
    let (weights, biases) = &params.head;
    let p = ClassifierTrainParams::new(
        batch,
        graph.shape(features).channels,
        biases.len() as u32,
        1.0 / batch as f32,
    );
    // Unstandardised features: mean 0, inv_std 1.
    let dim = p.dim as usize;
    let identity = (&vec![0.0; dim][..], &vec![1.0; dim][..]);
    let head = backward::classifier(&p, &values[features.0], (weights, biases), identity, labels);
    let loss = head.losses.iter().sum::<f64>() / batch as f64;
    let mut grads = params.zeros_like();
    grads.head = (head.grad_weights, head.grad_biases);
    let mut tensor_grads: Vec<Vec<f64>> = values.iter().map(|v| vec![0.0; v.len()]).collect();
    tensor_grads[features.0] = head.grad_features;
    let cut = graph.ops[0].input();
    for op in graph.ops.iter().rev() {
        let (input, out) = (op.input(), op.output());
        let mut grad_in = std::mem::take(&mut tensor_grads[input.0]);
        let grad_out = &mut tensor_grads[out.0];
        match op {
            Op::Conv(c) => {
                let p = conv_params(graph, c, batch);
                let mask = activation_grad_params(graph, c, batch);
                activation_grad(&mask, &values[out.0], grad_out);
                let (w, _) = &params.convs[&c.name];
                let (gw, gb) = grads.convs.get_mut(&c.name).expect("conv");
                conv_parameter_grads(&p, &values[input.0], grad_out, gw, gb);
                if input != cut {
                    conv_input_grad(&p, grad_out, w, &mut grad_in);
                }
            }
            Op::Pool(pool) => {
                let p = pool_params(graph, pool, batch);
                let kind = pool_kind(pool.kind);
                backward::pool_grad(kind, &p, &values[input.0], grad_out, &mut grad_in);
            }
            Op::GlobalAvgPool { input, .. } => {
                let p = global_pool_params(graph, *input, batch);
                backward::global_avg_pool_grad(&p, grad_out, &mut grad_in);
            }
            Op::MergedConv(_) | Op::Depthwise(_) => {
                panic!("only convs, pools and the global pool are trained")
            }
        }
        tensor_grads[input.0] = grad_in;
    }
    (loss, grads)
}
