//! Converting published Inception V3 weights into the engine's weight file:
//! read the source, check it against the network definition, fold each batch
//! norm into its conv, write safetensors in the kernels' layout.

pub mod default_weights;
pub mod js_literal;
pub mod tfjs;

use crate::model::graph::{Conv, Graph, Padding};
use crate::model::inception_v3::{self, BOTTLENECK};
use crate::model::weights::{self, ModelInfo, Normalization, Tensor};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use tfjs::{Array, TfjsModel};

/// Keras's batch-norm epsilon, added exactly: two nsfwjs variances are 1.7e-14.
pub const BN_EPSILON: f64 = 0.001;

/// Batch norm parameters of one conv (gamma absent when the layer has scale=False).
pub struct BatchNorm<'a> {
    pub gamma: Option<&'a [f32]>,
    pub beta: &'a [f32],
    pub mean: &'a [f32],
    pub variance: &'a [f32],
    pub epsilon: f64,
}

/// Folds `y = gamma·(conv(x) − mean)/sqrt(var + eps) + beta` into the conv:
/// returns (weights scaled per output channel, bias). `kernel` is [.., out_c] row-major.
pub fn fold_batch_norm(kernel: &[f32], bn: &BatchNorm) -> (Vec<f32>, Vec<f32>) {
    let out_c = bn.beta.len();
    let inv: Vec<f64> = (0..out_c)
        .map(|c| {
            bn.gamma.map_or(1.0, |g| g[c] as f64) / (bn.variance[c] as f64 + bn.epsilon).sqrt()
        })
        .collect();
    let weights = kernel
        .iter()
        .enumerate()
        .map(|(i, &w)| (w as f64 * inv[i % out_c]) as f32)
        .collect();
    let bias = (0..out_c)
        .map(|c| (bn.beta[c] as f64 - bn.mean[c] as f64 * inv[c]) as f32)
        .collect();
    (weights, bias)
}

/// Where the weights came from, for the file's metadata.
pub struct Source {
    pub description: String,
    pub normalization: Normalization,
}

fn get<'a>(model: &'a TfjsModel, name: &str, shape: &[usize]) -> Result<&'a Array> {
    let a = model.weights.get(name).ok_or_else(|| {
        anyhow!("tensor \"{name}\" is missing (expected shape {shape:?}): is this an Inception V3?")
    })?;
    if a.shape != shape {
        bail!(
            "tensor \"{name}\" has shape {:?}, expected {shape:?}: is this an Inception V3?",
            a.shape
        );
    }
    Ok(a)
}

/// Checks a Keras Conv2D layer config against the network's conv.
fn check_conv_layer(layer: &Value, conv: &Conv) -> Result<()> {
    let cfg = &layer["config"];
    let pair = |v: &Value| {
        v.as_array()
            .map(|a| a.iter().filter_map(|x| x.as_u64()).collect::<Vec<_>>())
    };
    let want_padding = match conv.padding {
        Padding::Same => "same",
        Padding::Valid => "valid",
    };
    let kernel = pair(&cfg["kernel_size"]);
    let strides = pair(&cfg["strides"]);
    let ok = kernel == Some(vec![conv.kernel.0 as u64, conv.kernel.1 as u64])
        && strides == Some(vec![conv.stride as u64; 2])
        && cfg["padding"] == want_padding
        && cfg["filters"] == conv.output.channels;
    if !ok {
        bail!(
            "layer {} is {}×{} stride {:?} {} with {} filters; Inception V3 has {:?} stride {} {want_padding} with {}",
            cfg["name"],
            cfg["kernel_size"][0],
            cfg["kernel_size"][1],
            strides,
            cfg["padding"],
            cfg["filters"],
            conv.kernel,
            conv.stride,
            conv.output.channels
        );
    }
    Ok(())
}

/// Checks the Keras topology, when the model has one: the same 94 convs.
fn check_topology(model: &TfjsModel, graph: &Graph) -> Result<()> {
    let layers = model.layers();
    if layers.is_empty() {
        return Ok(());
    }
    let convs: Vec<&Value> = layers
        .iter()
        .copied()
        .filter(|l| l["class_name"] == "Conv2D")
        .collect();
    if convs.len() != graph.convs().count() {
        bail!(
            "the model has {} conv layers; Inception V3 has {}",
            convs.len(),
            graph.convs().count()
        );
    }
    for conv in graph.convs() {
        let name = format!("conv2d_{}", conv.index);
        let layer = convs
            .iter()
            .find(|l| l["config"]["name"] == name.as_str())
            .ok_or_else(|| anyhow!("the model has no layer {name}"))?;
        check_conv_layer(layer, conv)?;
    }
    Ok(())
}

/// Converts a Keras Inception V3 in TF.js layers format (conv2d_N/kernel +
/// batch_normalization_N/{gamma?, beta, moving_mean, moving_variance}).
pub fn convert_tfjs(dir: &Path, output: &Path, source: Source) -> Result<ModelInfo> {
    let model = TfjsModel::read(dir)?;
    let graph = inception_v3::inception_v3(299, 299)?;
    check_topology(&model, &graph)
        .with_context(|| format!("{}: not the Inception V3 topology", dir.display()))?;
    let mut tensors = Vec::new();
    for conv in graph.convs() {
        let k = conv.index;
        let out_c = conv.output.channels as usize;
        let kernel = get(&model, &format!("conv2d_{k}/kernel"), &conv.weight_shape())?;
        let bn_tensor = |p: &str| {
            get(&model, &format!("batch_normalization_{k}/{p}"), &[out_c])
                .map(|a| a.data.as_slice())
        };
        let gamma = model
            .weights
            .contains_key(&format!("batch_normalization_{k}/gamma"));
        let bn = BatchNorm {
            gamma: if gamma {
                Some(bn_tensor("gamma")?)
            } else {
                None
            },
            beta: bn_tensor("beta")?,
            mean: bn_tensor("moving_mean")?,
            variance: bn_tensor("moving_variance")?,
            epsilon: BN_EPSILON,
        };
        let (w, b) = fold_batch_norm(&kernel.data, &bn);
        tensors.push(Tensor {
            name: conv.weight_name(),
            shape: conv.weight_shape().to_vec(),
            data: w,
        });
        tensors.push(Tensor {
            name: conv.bias_name(),
            shape: vec![out_c],
            data: b,
        });
    }
    let info = ModelInfo {
        architecture: weights::ARCHITECTURE.into(),
        source: source.description,
        input_height: 299,
        input_width: 299,
        bottleneck_size: BOTTLENECK,
        bottleneck_layer: "mixed10 global average pool".into(),
        normalization: source.normalization,
        dtype: "f32".into(),
        fingerprint: String::new(),
    };
    weights::write(output, info, &tensors)
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_matches_batch_norm_applied_after_conv() {
        // One input channel, two outputs: conv(x) = x·w, then BN per output channel.
        let kernel = [0.5f32, -2.0];
        let bn = BatchNorm {
            gamma: Some(&[1.5, 0.25]),
            beta: &[0.1, -0.3],
            mean: &[0.2, 1.0],
            variance: &[4.0, 1.7e-14],
            epsilon: BN_EPSILON,
        };
        let (w, b) = fold_batch_norm(&kernel, &bn);
        for x in [-1.0f64, 0.3, 2.0] {
            for c in 0..2 {
                let conv = x * kernel[c] as f64;
                let g = bn.gamma.unwrap()[c] as f64;
                let want = g * (conv - bn.mean[c] as f64) / (bn.variance[c] as f64 + 0.001).sqrt()
                    + bn.beta[c] as f64;
                let got = x * w[c] as f64 + b[c] as f64;
                assert!(
                    (want - got).abs() < 1e-5 * want.abs().max(1.0),
                    "{want} vs {got}"
                );
            }
        }
    }
}
