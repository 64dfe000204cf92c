//! The engine's weight file: safetensors holding each conv's folded weights in
//! the kernel's layout ([kh, kw, in_c, out_c], f32) and bias, plus metadata
//! describing the model. The engine memory-maps it and uploads from the mapping.

use super::graph::Graph;
use super::Architecture;
use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Bumped whenever the tensor layout in the file changes.
pub const LAYOUT: &str = "retrain-v2: NAME.weight [kh,kw,in,out] f32 with batch norm folded, NAME.bias [out]; NAME as the network definition names each conv";
/// Files of the first layout name each conv by its place in Keras's creation
/// order (`conv2d_N`); they are still read, through `inception_v3::keras_order`.
const LAYOUT_V1: &str =
    "retrain-v1: conv2d_N.weight [kh,kw,in,out] f32 with batch norm folded, conv2d_N.bias [out]";

/// How raw 0..255 pixel values become network inputs: `x·scale[c] + offset[c]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalization {
    pub name: String,
    pub scale: [f32; 3],
    pub offset: [f32; 3],
}

impl Normalization {
    /// x / 255, in [0, 1] (nsfwjs's convention).
    pub fn unit() -> Self {
        Self::uniform("unit", 1.0 / 255.0, 0.0)
    }
    /// x / 127.5 − 1, in [−1, 1] (Keras's Inception convention).
    pub fn signed() -> Self {
        Self::uniform("signed", 1.0 / 127.5, -1.0)
    }
    /// (x / 255 − mean) / std with ImageNet's mean and std (torchvision's convention).
    pub fn imagenet() -> Self {
        let mean = [0.485f64, 0.456, 0.406];
        let std = [0.229f64, 0.224, 0.225];
        Normalization {
            name: "imagenet".into(),
            scale: [0, 1, 2].map(|c| (1.0 / (255.0 * std[c])) as f32),
            offset: [0, 1, 2].map(|c| (-mean[c] / std[c]) as f32),
        }
    }
    fn uniform(name: &str, scale: f32, offset: f32) -> Self {
        Normalization {
            name: name.into(),
            scale: [scale; 3],
            offset: [offset; 3],
        }
    }
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "unit" => Ok(Self::unit()),
            "signed" => Ok(Self::signed()),
            "imagenet" => Ok(Self::imagenet()),
            other => bail!("unknown normalisation \"{other}\" (expected unit, signed or imagenet)"),
        }
    }
    pub fn describe(&self) -> &'static str {
        match self.name.as_str() {
            "unit" => "x/255",
            "signed" => "x/127.5 - 1",
            "imagenet" => "(x/255 - ImageNet mean) / ImageNet std",
            _ => "custom",
        }
    }
}

/// What the weight file says about the model it holds.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub architecture: String,
    pub source: String,
    pub input_height: u32,
    pub input_width: u32,
    pub bottleneck_size: u32,
    pub bottleneck_layer: String,
    pub normalization: Normalization,
    /// Whether windows are padded as PyTorch pads them (PyTorch-trained
    /// weights): average pools count the padding in their mean and SAME convs
    /// pad (k − 1)/2 on every side; else as TensorFlow does (Keras).
    pub pytorch_padding: bool,
    pub dtype: String,
    /// Hash of every tensor's name, shape and bytes: identifies the weights
    /// (bottleneck caches are keyed by it).
    pub fingerprint: String,
}

impl ModelInfo {
    fn to_metadata(&self) -> HashMap<String, String> {
        let n = &self.normalization;
        [
            ("architecture", self.architecture.clone()),
            ("layout", LAYOUT.to_string()),
            ("source", self.source.clone()),
            (
                "input_size",
                format!("{}x{}", self.input_height, self.input_width),
            ),
            ("bottleneck_size", self.bottleneck_size.to_string()),
            ("bottleneck_layer", self.bottleneck_layer.clone()),
            ("normalization", n.name.clone()),
            ("input_scale", format!("{:?}", n.scale)),
            ("input_offset", format!("{:?}", n.offset)),
            (
                "average_pool_padding",
                if self.pytorch_padding {
                    "included"
                } else {
                    "excluded"
                }
                .into(),
            ),
            ("dtype", self.dtype.clone()),
            ("fingerprint", self.fingerprint.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn from_metadata(path: &Path, meta: &HashMap<String, String>) -> Result<Self> {
        let get = |key: &str| {
            meta.get(key).cloned().ok_or_else(|| {
                anyhow!("{}: not a retrain weight file (metadata lacks \"{key}\"); convert it with convert-weights", path.display())
            })
        };
        let architecture = get("architecture")?;
        if Architecture::from_name(&architecture).is_err() {
            bail!(
                "{}: holds a {architecture} model, but retrain runs inception_v3 and mobilenet_v2",
                path.display()
            );
        }
        if ![LAYOUT, LAYOUT_V1].contains(&get("layout")?.as_str()) {
            bail!("{}: was written by another version of convert-weights (layout differs); convert the weights again", path.display());
        }
        let (h, w) = parse_size(&get("input_size")?)
            .with_context(|| format!("{}: bad input_size metadata", path.display()))?;
        let floats = |key: &str| -> Result<[f32; 3]> {
            serde_json::from_str(&get(key)?)
                .with_context(|| format!("{}: bad {key} metadata", path.display()))
        };
        Ok(ModelInfo {
            architecture,
            source: get("source")?,
            input_height: h,
            input_width: w,
            bottleneck_size: get("bottleneck_size")?.parse().context("bottleneck_size")?,
            bottleneck_layer: get("bottleneck_layer")?,
            normalization: Normalization {
                name: get("normalization")?,
                scale: floats("input_scale")?,
                offset: floats("input_offset")?,
            },
            // Files written before this key existed are Keras-style.
            pytorch_padding: meta
                .get("average_pool_padding")
                .is_some_and(|v| v == "included"),
            dtype: get("dtype")?,
            fingerprint: get("fingerprint")?,
        })
    }
}

/// Parses "H", "HxW" or "H×W".
pub fn parse_size(s: &str) -> Result<(u32, u32)> {
    let parts: Vec<&str> = s.split(['x', 'X', '×']).collect();
    let num = |p: &str| {
        p.trim()
            .parse::<u32>()
            .map_err(|_| anyhow!("\"{s}\" is not a size like 299 or 480x640"))
    };
    match parts.as_slice() {
        [side] => Ok((num(side)?, num(side)?)),
        [h, w] => Ok((num(h)?, num(w)?)),
        _ => bail!("\"{s}\" is not a size like 299 or 480x640"),
    }
}

/// A tensor to be written: name, shape, f32 values.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// How a tensor is stored: conv weights in the file's dtype, everything else f32.
fn stored(t: &Tensor, half_weights: bool) -> (Dtype, Vec<u8>) {
    if half_weights && t.name.ends_with(".weight") {
        let halves: Vec<u16> = t
            .data
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect();
        (Dtype::F16, bytemuck::cast_slice(&halves).to_vec())
    } else {
        (Dtype::F32, bytemuck::cast_slice(&t.data).to_vec())
    }
}

/// Hash of every tensor's name, shape and stored bytes, in name order.
fn fingerprint(tensors: &[(&Tensor, (Dtype, Vec<u8>))]) -> String {
    let mut sorted: Vec<(&Tensor, &[u8])> = tensors
        .iter()
        .map(|(t, (_, b))| (*t, b.as_slice()))
        .collect();
    sorted.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let mut hash = Sha256::new();
    for (t, bytes) in sorted {
        hash.update(t.name.as_bytes());
        hash.update([0]);
        for &d in &t.shape {
            hash.update((d as u64).to_le_bytes());
        }
        hash.update(bytes);
    }
    crate::hex::hex(&hash.finalize()[..16])
}

/// Writes a weight file atomically (temp file in the same folder, then rename),
/// conv weights as f16 when `info.dtype` is "f16"; fills in `info.fingerprint`
/// and returns the info written.
pub fn write(path: &Path, mut info: ModelInfo, tensors: &[Tensor]) -> Result<ModelInfo> {
    let half_weights = info.dtype == "f16";
    let stored: Vec<(&Tensor, (Dtype, Vec<u8>))> = tensors
        .iter()
        .map(|t| (t, stored(t, half_weights)))
        .collect();
    info.fingerprint = fingerprint(&stored);
    let views = stored
        .iter()
        .map(|(t, (dtype, data))| {
            Ok((
                t.name.clone(),
                TensorView::new(*dtype, t.shape.clone(), data)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    serialize(path, views, info.to_metadata())?;
    Ok(info)
}

/// Writes f32 tensors and metadata as a safetensors file, atomically.
pub fn write_tensors(
    path: &Path,
    tensors: &[Tensor],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|t| {
            let view = TensorView::new(Dtype::F32, t.shape.clone(), bytemuck::cast_slice(&t.data))?;
            Ok((t.name.clone(), view))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    serialize(path, views, metadata)
}

fn serialize(
    path: &Path,
    views: Vec<(String, TensorView<'_>)>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    crate::atomic_file::replace_file(path, |temp| {
        Ok(safetensors::serialize_to_file(views, Some(metadata), temp)?)
    })
}

/// An open, memory-mapped weight file.
pub struct WeightFile {
    pub path: PathBuf,
    map: Mmap,
    pub info: ModelInfo,
    /// For files of the first layout: each conv name's `conv2d_N`.
    v1_names: Option<HashMap<String, String>>,
    /// Tensors that take the place of the file's (fine-tuned layers), as
    /// stored bytes in the file's dtypes.
    replaced: HashMap<String, Vec<u8>>,
}

impl WeightFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)
            .with_context(|| format!("cannot open weight file {}", path.display()))?;
        // SAFETY: the file is only read; retrain never writes a weight file in place
        // (it writes a temp file and renames), so the mapping does not change under us.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        let tensors = SafeTensors::deserialize(&map).map_err(|e| {
            anyhow!(
                "{}: damaged or truncated weight file ({e}); convert the weights again",
                path.display()
            )
        })?;
        let (_, header) = SafeTensors::read_metadata(&map)?;
        drop(tensors);
        let meta = header.metadata().clone().ok_or_else(|| {
            anyhow!(
                "{}: not a retrain weight file (no metadata)",
                path.display()
            )
        })?;
        let info = ModelInfo::from_metadata(path, &meta)?;
        let v1_names = (meta.get("layout").map(String::as_str) == Some(LAYOUT_V1)).then(|| {
            let order = super::inception_v3::keras_order().into_iter();
            order
                .zip(1..)
                .map(|(name, k)| (name, format!("conv2d_{k}")))
                .collect()
        });
        Ok(WeightFile {
            path: path.to_path_buf(),
            map,
            info,
            v1_names,
            replaced: HashMap::new(),
        })
    }

    /// This file with `tensors` in place of its own tensors of those names
    /// and shapes (a fine-tuned classifier's layers). The fingerprint becomes
    /// the base's combined with the replacements', so caches keyed by it never
    /// mix the two networks.
    pub fn with_replaced(mut self, tensors: &[Tensor]) -> Result<Self> {
        let mut hash = Sha256::new();
        hash.update(self.info.fingerprint.as_bytes());
        for t in tensors {
            if t.data.len() != t.shape.iter().product::<usize>() {
                bail!(
                    "the fine-tuned tensor \"{}\" holds {} values for shape {:?}",
                    t.name,
                    t.data.len(),
                    t.shape
                );
            }
            self.tensor_bytes(&t.name, &t.shape).with_context(|| {
                format!(
                    "the fine-tuned tensor \"{}\" does not fit these base weights",
                    t.name
                )
            })?;
            let (_, bytes) = stored(t, self.half_weights());
            hash.update(t.name.as_bytes());
            hash.update(&bytes);
            self.replaced.insert(t.name.clone(), bytes);
        }
        self.info.fingerprint = crate::hex::hex(&hash.finalize()[..16]);
        Ok(self)
    }

    /// A tensor as f32 values (f16 weights widened), checked against `shape`.
    pub fn tensor_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let bytes = self.tensor_bytes(name, shape)?;
        Ok(match self.half_weights() && name.ends_with(".weight") {
            true => bytemuck::pod_collect_to_vec::<u8, half::f16>(bytes)
                .into_iter()
                .map(f32::from)
                .collect(),
            false => bytemuck::pod_collect_to_vec(bytes),
        })
    }

    /// Whether conv weights are stored as f16 (biases are always f32).
    pub fn half_weights(&self) -> bool {
        self.info.dtype == "f16"
    }

    /// The raw little-endian bytes of a tensor (f32, or f16 for the weights of
    /// an f16 file), checked against the shape the network expects.
    pub fn tensor_bytes(&self, name: &str, shape: &[usize]) -> Result<&[u8]> {
        let tensors = SafeTensors::deserialize(&self.map)?;
        let view = tensors.tensor(&self.stored_name(name)).map_err(|_| {
            anyhow!(
                "{}: tensor \"{name}\" is missing (expected shape {shape:?})",
                self.path.display()
            )
        })?;
        let expected = match self.half_weights() && name.ends_with(".weight") {
            true => Dtype::F16,
            false => Dtype::F32,
        };
        if view.dtype() != expected {
            bail!(
                "{}: tensor \"{name}\" is {:?}, expected {expected:?}",
                self.path.display(),
                view.dtype()
            );
        }
        if view.shape() != shape {
            bail!(
                "{}: tensor \"{name}\" has shape {:?}, expected {shape:?}",
                self.path.display(),
                view.shape()
            );
        }
        match self.replaced.get(name) {
            Some(bytes) => Ok(bytes),
            None => Ok(view.data()),
        }
    }

    /// The name `name` ("conv.weight", "conv.bias") is stored under.
    fn stored_name(&self, name: &str) -> String {
        let v1 = |(conv, what): (&str, &str)| {
            Some(format!("{}.{what}", self.v1_names.as_ref()?.get(conv)?))
        };
        name.rsplit_once('.')
            .and_then(v1)
            .unwrap_or_else(|| name.to_string())
    }

    /// Checks that every layer of `graph` has its weight and bias, correctly
    /// shaped, and that the file holds nothing else: a tensor no layer reads
    /// means the file was made for another definition of the network.
    pub fn check(&self, graph: &Graph) -> Result<()> {
        let mut used = std::collections::HashSet::new();
        for layer in graph.weighted_layers() {
            self.tensor_bytes(&layer.weight_name(), &layer.weight_shape)?;
            self.tensor_bytes(&layer.bias_name(), &[layer.outputs])?;
            used.extend([layer.weight_name(), layer.bias_name()].map(|n| self.stored_name(&n)));
        }
        let tensors = SafeTensors::deserialize(&self.map)?;
        let mut unused: Vec<String> = tensors
            .names()
            .into_iter()
            .filter(|n| !used.contains(*n))
            .map(String::from)
            .collect();
        if !unused.is_empty() {
            unused.sort();
            bail!(
                "{}: holds {} tensors no layer of the network reads (e.g. \"{}\"): it was written for another network; convert the weights again",
                self.path.display(),
                unused.len(),
                unused[0]
            );
        }
        Ok(())
    }
}
