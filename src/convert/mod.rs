//! Converting published Inception V3 weights into the engine's weight file:
//! read the source (its format recognised from the content), map its tensors
//! onto the network's convs (by Keras's creation order, which every reader
//! translates its own names to), check every shape, fold each batch norm into
//! its conv, write safetensors in the kernels' layout, each conv's tensors
//! under its name in the network definition.

pub mod default_weights;
pub mod js_literal;
pub mod keras_archive;
pub mod keras_config;
pub mod keras_h5;
pub mod pickle;
pub mod tfjs;
pub mod torch;

use crate::model::graph::{Graph, WeightedLayer};
use crate::model::weights::{self, ModelInfo, Normalization, Tensor};
use crate::model::Architecture;
use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

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
    /// The framework pads windows as PyTorch does (see ModelInfo), or as TensorFlow does.
    pub pytorch_padding: bool,
}

/// What a source tensor is, in the network's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    Kernel,
    Gamma,
    Beta,
    Mean,
    Variance,
}

impl Part {
    fn describe(self) -> &'static str {
        match self {
            Part::Kernel => "kernel",
            Part::Gamma => "batch-norm gamma",
            Part::Beta => "batch-norm beta",
            Part::Mean => "batch-norm moving mean",
            Part::Variance => "batch-norm moving variance",
        }
    }
}

/// Keras's weight name (`kernel`, `gamma`, `moving_mean:0`, ...) → part.
pub(crate) fn keras_part(weight: &str) -> Option<Part> {
    Some(match weight.trim_end_matches(":0") {
        "kernel" | "depthwise_kernel" => Part::Kernel,
        "gamma" => Part::Gamma,
        "beta" => Part::Beta,
        "moving_mean" => Part::Mean,
        "moving_variance" => Part::Variance,
        _ => return None,
    })
}

/// Keras's name for a part.
pub(crate) fn keras_weight_name(part: Part) -> &'static str {
    match part {
        Part::Kernel => "kernel",
        Part::Gamma => "gamma",
        Part::Beta => "beta",
        Part::Mean => "moving_mean",
        Part::Variance => "moving_variance",
    }
}

/// How a source lays out conv kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelLayout {
    /// [kh, kw, in, out] (Keras, TF.js): the engine's own.
    Hwio,
    /// [out, in, kh, kw] (PyTorch).
    Oihw,
}

/// One tensor found in a source and what it is: conv `index` (Keras creation
/// order, 1-based) and part, or None when it is not used (top layers, ...).
pub struct Found {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub role: Option<(u32, Part)>,
}

/// Everything read from a source file or folder.
pub struct SourceWeights {
    /// The format as recognised, e.g. "Keras HDF5, Keras 2 layer names".
    pub format: String,
    pub layout: KernelLayout,
    pub tensors: Vec<Found>,
    pub source: Source,
    /// The network the weights are for.
    pub architecture: Architecture,
    /// The batch norms' epsilon (Keras's Inception V3: 0.001).
    pub bn_epsilon: f64,
    /// The name the source would give conv `index`'s `part`, for messages.
    pub name_of: Box<dyn Fn(u32, Part) -> String + Send + Sync>,
}

/// Reads any supported source, recognising the format from the content:
/// a folder (TF.js layers model), HDF5 (Keras), a zip (Keras .keras archive or PyTorch .pth) or
/// safetensors (timm), or a Keras `.keras` archive (a zip too).
pub fn read_source(path: &Path) -> Result<SourceWeights> {
    if path.is_dir() {
        return tfjs::read_source(path);
    }
    let mut head = [0u8; 8];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let head = &head[..n];
    if head.starts_with(b"\x89HDF\r\n\x1a\n") {
        keras_h5::read(path)
    } else if head.starts_with(b"PK\x03\x04") && keras_archive::is_archive(path) {
        keras_archive::read(path)
    } else if head.starts_with(b"PK\x03\x04") {
        torch::read_pth(path)
    } else if n == 8 && u64::from_le_bytes(head.try_into().unwrap()) < 100_000_000 {
        torch::read_safetensors(path)
    } else {
        bail!(
            "{}: not a format convert-weights knows (a TF.js model folder, Keras .h5, PyTorch .pth or safetensors)",
            path.display()
        )
    }
}

/// The engine tensors (folded weights and biases) of every layer of `graph`.
fn assemble(source: &SourceWeights, graph: &Graph) -> Result<Vec<Tensor>> {
    let network = source.architecture.name();
    let mut parts: BTreeMap<(u32, Part), &Found> = BTreeMap::new();
    for f in &source.tensors {
        if let Some(role) = f.role {
            if parts.insert(role, f).is_some() {
                bail!(
                    "two tensors map to {} of layer {}: is this an {network}?",
                    role.1.describe(),
                    role.0
                );
            }
        }
    }
    let order = source.architecture.keras_order();
    let expected = order.len() as u32;
    if let Some((index, _)) = parts.keys().find(|(i, _)| *i > expected) {
        bail!("the source has a layer #{index}; {network} has {expected}: is this an {network}?");
    }
    let mut tensors = Vec::new();
    for (layer, k) in keras_numbered(graph, &order)? {
        let out_c = layer.outputs;
        let get = |part: Part, shape: &[usize]| -> Result<&Found> {
            let name = (source.name_of)(k, part);
            let f = parts.get(&(k, part)).ok_or_else(|| {
                anyhow!(
                    "{name} ({} of {}, shape {shape:?}) is missing: is this an {network}?",
                    part.describe(),
                    layer.name
                )
            })?;
            if f.shape != shape {
                bail!(
                    "{} has shape {:?}, expected {shape:?} ({} of {}): is this an {network}?",
                    f.name,
                    f.shape,
                    part.describe(),
                    layer.name
                );
            }
            Ok(f)
        };
        // A depthwise kernel [kh, kw, C] is stored as Keras's [kh, kw, C, 1]
        // or PyTorch's [C, 1, kh, kw]: a conv from 1 channel to C, in layout.
        let hwio = match layer.weight_shape[..] {
            [kh, kw, c] => [kh, kw, 1, c],
            [kh, kw, i, o] => [kh, kw, i, o],
            _ => unreachable!("weights are 3-D or 4-D"),
        };
        let kernel = match (source.layout, layer.weight_shape.len()) {
            (KernelLayout::Hwio, 3) => get(Part::Kernel, &[hwio[0], hwio[1], hwio[3], 1])?
                .data
                .clone(),
            (KernelLayout::Hwio, _) => get(Part::Kernel, &hwio)?.data.clone(),
            (KernelLayout::Oihw, _) => oihw_to_hwio(
                &get(Part::Kernel, &[hwio[3], hwio[2], hwio[0], hwio[1]])?.data,
                hwio,
            ),
        };
        let gamma = match parts.contains_key(&(k, Part::Gamma)) {
            true => Some(get(Part::Gamma, &[out_c])?.data.as_slice()),
            false => None,
        };
        let bn = BatchNorm {
            gamma,
            beta: &get(Part::Beta, &[out_c])?.data,
            mean: &get(Part::Mean, &[out_c])?.data,
            variance: &get(Part::Variance, &[out_c])?.data,
            epsilon: source.bn_epsilon,
        };
        let (w, b) = fold_batch_norm(&kernel, &bn);
        tensors.push(Tensor {
            name: layer.weight_name(),
            shape: layer.weight_shape.clone(),
            data: w,
        });
        tensors.push(Tensor {
            name: layer.bias_name(),
            shape: vec![out_c],
            data: b,
        });
    }
    Ok(tensors)
}

/// Each layer of `graph` with weights, with its 1-based place in Keras's creation `order`.
fn keras_numbered<'g>(graph: &'g Graph, order: &[String]) -> Result<Vec<(WeightedLayer<'g>, u32)>> {
    graph
        .weighted_layers()
        .map(|layer| match order.iter().position(|n| n == layer.name) {
            Some(i) => Ok((layer, i as u32 + 1)),
            None => bail!("layer {} has no place in Keras's layer order", layer.name),
        })
        .collect()
}

/// The role of Keras weight `weight` of layer `layer` in a network whose
/// layers carry Keras's names (`order`), its batch norms named by `batch_norm_of`.
pub(crate) fn named_role(
    order: &[String],
    batch_norm_of: impl Fn(&str) -> String,
    layer: &str,
    weight: &str,
) -> Option<(u32, Part)> {
    let part = keras_part(weight)?;
    let position = match part {
        Part::Kernel => order.iter().position(|n| n == layer)?,
        _ => order.iter().position(|n| batch_norm_of(n) == layer)?,
    };
    Some((position as u32 + 1, part))
}

/// [out, in, kh, kw] -> [kh, kw, in, out].
fn oihw_to_hwio(oihw: &[f32], [kh, kw, ic, oc]: [usize; 4]) -> Vec<f32> {
    let mut hwio = vec![0.0; oihw.len()];
    for o in 0..oc {
        for i in 0..ic {
            for y in 0..kh {
                for x in 0..kw {
                    hwio[((y * kw + x) * ic + i) * oc + o] = oihw[((o * ic + i) * kh + y) * kw + x];
                }
            }
        }
    }
    hwio
}

/// What the user says about the weights, over the source's defaults.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub normalization: Option<Normalization>,
    pub pytorch_padding: Option<bool>,
    /// Store conv weights as f16 (half the file and the GPU memory).
    pub half_weights: bool,
}

/// Converts `from` (any supported source) into the engine's weight file at `output`.
pub fn convert(from: &Path, output: &Path, overrides: &Overrides) -> Result<ModelInfo> {
    let mut source = read_source(from)?;
    if let Some(n) = &overrides.normalization {
        source.source.normalization = n.clone();
    }
    if let Some(counts) = overrides.pytorch_padding {
        source.source.pytorch_padding = counts;
    }
    write_engine_file(&source, output, overrides.half_weights)
        .with_context(|| format!("{} ({})", from.display(), source.format))
}

/// Folds and writes `source`'s weights as an engine weight file, conv
/// weights as f16 when `half_weights` (folding is done in f64 first).
pub fn write_engine_file(
    source: &SourceWeights,
    output: &Path,
    half_weights: bool,
) -> Result<ModelInfo> {
    let arch = source.architecture;
    let side = arch.default_input();
    let graph = arch.build(side, side)?;
    let tensors = assemble(source, &graph)?;
    let info = ModelInfo {
        architecture: arch.name().into(),
        source: source.source.description.clone(),
        input_height: side,
        input_width: side,
        bottleneck_size: arch.bottleneck_size(),
        bottleneck_layer: arch.bottleneck_layer().into(),
        normalization: source.source.normalization.clone(),
        pytorch_padding: source.source.pytorch_padding,
        dtype: if half_weights { "f16" } else { "f32" }.into(),
        fingerprint: String::new(),
    };
    weights::write(output, info, &tensors)
}

/// What `convert-weights --inspect` prints: the format, every tensor found
/// and what it maps to, and what is missing.
pub fn inspect(path: &Path) -> Result<String> {
    let source = read_source(path)?;
    let side = source.architecture.default_input();
    let graph = source.architecture.build(side, side)?;
    let mut lines = vec![
        format!(
            "{}: {}, {}",
            path.display(),
            source.architecture.name(),
            source.format
        ),
        format!(
            "  normalisation by default: {}",
            source.source.normalization.describe()
        ),
        format!("  {} tensors:", source.tensors.len()),
    ];
    let order = source.architecture.keras_order();
    for f in &source.tensors {
        let target = match f.role {
            Some((k, part)) => match (k as usize).checked_sub(1).and_then(|i| order.get(i)) {
                Some(name) => format!("{name} {}", part.describe()),
                None => format!("conv #{k}, beyond Inception V3's {}", order.len()),
            },
            None => "not used".into(),
        };
        lines.push(format!(
            "    {:<60} {:<18} -> {target}",
            f.name,
            format!("{:?}", f.shape)
        ));
    }
    match assemble(&source, &graph) {
        Ok(t) => lines.push(format!(
            "  complete: {} engine tensors for the {} layers",
            t.len(),
            t.len() / 2
        )),
        Err(e) => lines.push(format!("  cannot convert: {e:#}")),
    }
    Ok(lines.join("\n"))
}

/// The bytes of member `name` of a zip archive; `damaged` words the error
/// (a member missing, truncated or not inflatable).
pub(crate) fn zip_member<R: std::io::Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    damaged: impl Fn(String) -> anyhow::Error,
) -> Result<Vec<u8>> {
    let entry = zip
        .by_name(name)
        .map_err(|e| damaged(format!("{name}: {e}")))?;
    // Weights deflate by a few percent; a member inflating a hundredfold is a zip bomb.
    let limit = entry.compressed_size().saturating_mul(100).max(1 << 20);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(entry, limit + 1), &mut bytes)
        .map_err(|e| damaged(format!("{name}: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(damaged(format!(
            "{name} inflates to over {limit} bytes, a hundred times its compressed size"
        )));
    }
    Ok(bytes)
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(crate::hex::hex(&Sha256::digest(&bytes)))
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
