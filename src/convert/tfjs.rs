//! Reading a TF.js layers model: the topology + weights manifest (`model.json`,
//! or `model.min.js` wrapping a JavaScript object literal) and the weight
//! shards (raw binaries, or `*.min.js` files each wrapping one base64 string).

use super::{default_weights, js_literal, keras_part, Found, KernelLayout, SourceWeights};
use crate::model::graph::{Conv, Graph, Padding};
use crate::model::{inception_v3, mobilenet_v2, Architecture};
use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One dequantised tensor.
#[derive(Clone, Debug)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A TF.js model: its Keras topology and its weights by name.
pub struct TfjsModel {
    pub topology: Value,
    pub weights: HashMap<String, Array>,
    /// The files read, for hashing.
    pub files: Vec<PathBuf>,
}

/// The model description file in `dir`, and whether it is a JS bundle.
fn model_file(dir: &Path) -> Result<(PathBuf, bool)> {
    for (name, is_js) in [
        ("model.json", false),
        ("model.min.js", true),
        ("model.js", true),
    ] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok((p, is_js));
        }
    }
    bail!(
        "{}: no TF.js model here (expected model.json or model.min.js; for nsfwjs it is the package's dist/models/inception_v3 folder)",
        dir.display()
    )
}

/// Extracts `{modelTopology: …, weightsManifest: …}` from a JS bundle.
fn parse_bundle(path: &Path, text: &str) -> Result<Value> {
    let key = text
        .find("modelTopology")
        .ok_or_else(|| anyhow!("{}: no modelTopology in this file", path.display()))?;
    let start = text[..key]
        .rfind('{')
        .ok_or_else(|| anyhow!("{}: modelTopology is not inside an object", path.display()))?;
    let (value, _) = js_literal::parse(text, start)
        .with_context(|| format!("{}: cannot parse the model literal", path.display()))?;
    Ok(value)
}

/// The bytes of one shard: a raw file, or the base64 string inside `NAME.min.js`.
fn read_shard(dir: &Path, name: &str) -> Result<(Vec<u8>, PathBuf)> {
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok((
            std::fs::read(&raw).with_context(|| format!("cannot read {}", raw.display()))?,
            raw,
        ));
    }
    let js = dir.join(format!("{name}.min.js"));
    let text = std::fs::read_to_string(&js).with_context(|| {
        format!(
            "weight shard {name} not found in {} (tried {name} and {name}.min.js)",
            dir.display()
        )
    })?;
    let body = text
        .split_once("exports=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(b64, _)| b64)
        .ok_or_else(|| anyhow!("{}: no base64 string literal found", js.display()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(body)
        .with_context(|| format!("{}: damaged base64 data", js.display()))?;
    Ok((bytes, js))
}

fn shape_of(entry: &Value) -> Result<Vec<usize>> {
    entry["shape"]
        .as_array()
        .ok_or_else(|| anyhow!("manifest entry without a shape"))?
        .iter()
        .map(|d| {
            d.as_u64()
                .map(|d| d as usize)
                .ok_or_else(|| anyhow!("bad dimension {d}"))
        })
        .collect()
}

/// Decodes `count` values from the front of `bytes` per the entry's dtype and
/// quantisation; returns them and the number of bytes used.
fn decode(entry: &Value, count: usize, bytes: &[u8]) -> Result<(Vec<f32>, usize)> {
    let q = &entry["quantization"];
    let need = |width: usize| -> Result<&[u8]> {
        count
            .checked_mul(width)
            .and_then(|n| bytes.get(..n))
            .ok_or_else(|| anyhow!("weight data ends early (truncated shard?)"))
    };
    if q.is_null() {
        if entry["dtype"] != "float32" {
            bail!("unsupported dtype {}", entry["dtype"]);
        }
        let b = need(4)?;
        let data = b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        return Ok((data, b.len()));
    }
    let (min, scale) = (
        q["min"]
            .as_f64()
            .ok_or_else(|| anyhow!("quantization without min"))?,
        q["scale"]
            .as_f64()
            .ok_or_else(|| anyhow!("quantization without scale"))?,
    );
    // tfjs-core dequantises in double precision, then stores float32.
    let dequantise = |v: u32| (v as f64 * scale + min) as f32;
    match q["dtype"].as_str() {
        Some("uint8") => {
            let b = need(1)?;
            Ok((b.iter().map(|&v| dequantise(v as u32)).collect(), b.len()))
        }
        Some("uint16") => {
            let b = need(2)?;
            let data = b
                .chunks_exact(2)
                .map(|c| dequantise(u16::from_le_bytes([c[0], c[1]]) as u32))
                .collect();
            Ok((data, b.len()))
        }
        other => bail!("unsupported quantization dtype {other:?}"),
    }
}

impl TfjsModel {
    pub fn read(dir: &Path) -> Result<Self> {
        let (path, is_js) = model_file(dir)?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let model = if is_js {
            parse_bundle(&path, &text)?
        } else {
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not valid JSON", path.display()))?
        };
        let mut files = vec![path.clone()];
        let groups = model["weightsManifest"]
            .as_array()
            .ok_or_else(|| anyhow!("{}: no weightsManifest", path.display()))?;
        let mut weights = HashMap::new();
        for group in groups {
            let mut buffer = Vec::new();
            for shard in group["paths"].as_array().into_iter().flatten() {
                let name = shard
                    .as_str()
                    .ok_or_else(|| anyhow!("bad shard path {shard}"))?;
                let (bytes, file) = read_shard(dir, name)?;
                buffer.extend_from_slice(&bytes);
                files.push(file);
            }
            let mut at = 0;
            for entry in group["weights"].as_array().into_iter().flatten() {
                let name = entry["name"]
                    .as_str()
                    .ok_or_else(|| anyhow!("manifest entry without a name"))?;
                let shape = shape_of(entry).with_context(|| format!("manifest entry {name}"))?;
                let count = (shape.iter()).try_fold(1usize, |n, &d| n.checked_mul(d));
                let count = count.ok_or_else(|| {
                    anyhow!("manifest entry {name}: shape {shape:?} is too large")
                })?;
                let (data, used) = decode(entry, count, &buffer[at..])
                    .with_context(|| format!("{}: tensor {name}", dir.display()))?;
                at += used;
                weights.insert(name.to_string(), Array { shape, data });
            }
            if at != buffer.len() {
                bail!(
                    "{}: the shards hold {} bytes but the manifest describes {at}",
                    dir.display(),
                    buffer.len()
                );
            }
        }
        Ok(TfjsModel {
            topology: model["modelTopology"].clone(),
            weights,
            files,
        })
    }

    /// The Keras layer configs of the topology (`model_config.config.layers`).
    pub fn layers(&self) -> Vec<&Value> {
        let config = &self.topology["model_config"]["config"];
        let layers = if config["layers"].is_array() {
            &config["layers"]
        } else {
            &self.topology["config"]["layers"]
        };
        layers
            .as_array()
            .map(|l| l.iter().collect())
            .unwrap_or_default()
    }
}

/// Checks a Keras Conv2D layer config against the network's conv.
fn check_conv_layer(layer: &Value, conv: &Conv) -> Result<()> {
    let cfg = &layer["config"];
    let pair = |v: &Value| {
        v.as_array()
            .map(|a| a.iter().filter_map(|x| x.as_u64()).collect::<Vec<_>>())
    };
    let want_padding = match conv.padding {
        // Symmetric padding only appears for PyTorch weights, never in a Keras check.
        Padding::Same | Padding::Symmetric => "same",
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
    for (layer, k) in super::keras_numbered(graph, &inception_v3::keras_order())? {
        let conv = graph
            .convs()
            .find(|c| c.name == layer.name)
            .expect("Inception's layers are convs");
        let name = format!("conv2d_{k}");
        let layer = convs
            .iter()
            .find(|l| l["config"]["name"] == name.as_str())
            .ok_or_else(|| anyhow!("the model has no layer {name}"))?;
        check_conv_layer(layer, conv)?;
    }
    Ok(())
}

/// A TF.js layers model folder as a source. Inception V3's layers have
/// Keras's generated names, `conv2d_N/kernel` and `batch_normalization_N/{gamma?,
/// beta, moving_mean, moving_variance}`, mapped by creation order; MobileNet
/// V2's have names of their own (`block_3_expand/kernel`, `block_3_expand_BN/gamma`,
/// `block_3_depthwise/depthwise_kernel`, …), mapped by name.
pub fn read_source(dir: &Path) -> Result<SourceWeights> {
    let model = TfjsModel::read(dir)?;
    let architecture = match model.weights.keys().any(|n| n.starts_with("Conv1/")) {
        true => Architecture::MobileNetV2,
        false => Architecture::InceptionV3,
    };
    if architecture == Architecture::InceptionV3 {
        let graph = inception_v3::inception_v3(299, 299)?;
        check_topology(&model, &graph)
            .with_context(|| format!("{}: not the Inception V3 topology", dir.display()))?;
    }
    let bn_epsilon = super::keras_config::batch_norm_epsilon(model.layers())
        .with_context(|| dir.display().to_string())?;
    let order = architecture.keras_order();
    let role = |name: &str| match architecture {
        Architecture::InceptionV3 => keras_role(name),
        Architecture::MobileNetV2 => {
            let (layer, weight) = name.split_once('/')?;
            super::named_role(&order, mobilenet_v2::batch_norm_of, layer, weight)
        }
    };
    let mut tensors: Vec<Found> = model
        .weights
        .into_iter()
        .map(|(name, a)| Found {
            role: role(&name),
            name,
            shape: a.shape,
            data: a.data,
        })
        .collect();
    tensors.sort_by(|a, b| a.role.cmp(&b.role).then(a.name.cmp(&b.name)));
    let (format, name_of): (_, Box<dyn Fn(u32, super::Part) -> String + Send + Sync>) =
        match architecture {
            Architecture::InceptionV3 => (
                "TF.js layers model (Keras 2 layer names), mapped by creation order",
                Box::new(|k, part| match part {
                    super::Part::Kernel => format!("conv2d_{k}/kernel"),
                    _ => format!("batch_normalization_{k}/{}", super::keras_weight_name(part)),
                }),
            ),
            Architecture::MobileNetV2 => (
                "TF.js layers model (Keras layer names), mapped by name",
                Box::new(move |k, part| {
                    let layer = &order[k as usize - 1];
                    match part {
                        super::Part::Kernel => format!("{layer}/kernel"),
                        _ => format!(
                            "{}/{}",
                            mobilenet_v2::batch_norm_of(layer),
                            super::keras_weight_name(part)
                        ),
                    }
                }),
            ),
        };
    Ok(SourceWeights {
        architecture,
        bn_epsilon,
        format: format.into(),
        layout: KernelLayout::Hwio,
        tensors,
        source: default_weights::source_of(dir, architecture),
        name_of,
    })
}

/// `conv2d_N/kernel` or `batch_normalization_N/<weight>` → (N, part).
fn keras_role(name: &str) -> Option<(u32, super::Part)> {
    let (layer, weight) = name.split_once('/')?;
    let part = keras_part(weight)?;
    let index = if part == super::Part::Kernel {
        layer.strip_prefix("conv2d_")?
    } else {
        layer.strip_prefix("batch_normalization_")?
    };
    Some((index.parse().ok()?, part))
}
