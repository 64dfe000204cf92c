//! PyTorch Inception V3 and MobileNet V2 weights: timm's safetensors
//! (`inception_v3.tv_in1k`) and torchvision's `.pth` checkpoints (a zip of a
//! pickled state dict and raw storages), all with torchvision's names. MobileNet
//! V2: `features.N…` (see `mobilenet_modules`), batch norm eps 1e-5, ImageNet
//! mean/std input. Inception V3 — `Conv2d_1a_3x3.conv.weight`
//! (OIHW), `….bn.weight/bias/running_mean/running_var` (batch norm with gamma,
//! eps 0.001), `Mixed_5b.branch1x1…`. `AuxLogits.*`, `fc.*` and the
//! `num_batches_tracked` counters are not used.
//!
//! MobileNet V2's `classifier.*` is not used either.
//!
//! Inception V3's normalisation: these weights were ported from TensorFlow and expect
//! x/127.5 − 1. torchvision hides this behind `transform_input=True` (it maps
//! ImageNet mean/std input back to x/127.5 − 1 inside the model) and timm's
//! configuration for them uses mean = std = 0.5, which is the same thing; so
//! the engine file records x/127.5 − 1 unless `--normalize` says otherwise.

use super::pickle::{self, Value};
use super::{zip_member, Found, KernelLayout, Part, Source, SourceWeights};
use crate::model::weights::Normalization;
use crate::model::{inception_v3, Architecture};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;

/// torchvision's module names of the 94 conv+bn units, in Keras creation
/// order: the network's own names with torchvision's block names
/// (`mixed0/branch1x1` is `Mixed_5b.branch1x1`, `stem/conv2d_1a_3x3` is `Conv2d_1a_3x3`).
pub fn unit_names() -> Vec<String> {
    const BLOCKS: [&str; 11] = [
        "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
        "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c",
    ];
    inception_v3::keras_order()
        .iter()
        .map(|name| {
            let (block, unit) = name.split_once('/').expect("block/unit names");
            match block.strip_prefix("mixed") {
                Some(i) => format!("{}.{unit}", BLOCKS[i.parse::<usize>().expect("mixedN")]),
                None => format!("C{}", &unit[1..]),
            }
        })
        .collect()
}

/// torchvision's tensor name for Inception V3 conv `index`'s `part`.
pub fn tensor_name(units: &[String], index: u32, part: Part) -> String {
    let unit = &units[index as usize - 1];
    module_tensor(&(format!("{unit}.conv"), format!("{unit}.bn")), part)
}

/// torchvision's module names of MobileNet V2's layers, in Keras order:
/// (conv, its batch norm). `features.0` is the stem, `features.1` the block
/// without expansion, `features.2` … `features.17` Keras's `block_1` …
/// `block_16`, `features.18` the last 1×1 conv.
fn mobilenet_modules() -> Vec<(String, String)> {
    let mut modules = vec![("features.0.0".to_string(), "features.0.1".to_string())];
    for (conv, bn) in [("conv.0.0", "conv.0.1"), ("conv.1", "conv.2")] {
        modules.push((format!("features.1.{conv}"), format!("features.1.{bn}")));
    }
    for f in 2..=17 {
        for (conv, bn) in [
            ("conv.0.0", "conv.0.1"),
            ("conv.1.0", "conv.1.1"),
            ("conv.2", "conv.3"),
        ] {
            modules.push((format!("features.{f}.{conv}"), format!("features.{f}.{bn}")));
        }
    }
    modules.push(("features.18.0".into(), "features.18.1".into()));
    modules
}

/// The name of `part` of the layer whose modules are (conv, batch norm).
fn module_tensor((conv, bn): &(String, String), part: Part) -> String {
    match part {
        Part::Kernel => format!("{conv}.weight"),
        Part::Gamma => format!("{bn}.weight"),
        Part::Beta => format!("{bn}.bias"),
        Part::Mean => format!("{bn}.running_mean"),
        Part::Variance => format!("{bn}.running_var"),
    }
}

/// What a torchvision network needs beyond its names: its batch norms'
/// epsilon and the input normalisation its weights expect.
struct TorchNetwork {
    architecture: Architecture,
    modules: Vec<(String, String)>,
    bn_epsilon: f64,
    normalization: Normalization,
}

/// The network whose names `raw` has: MobileNet V2 (`features.0.0.weight`)
/// or Inception V3.
fn network_of(raw: &[(String, Vec<usize>, Vec<f32>)]) -> TorchNetwork {
    let mobilenet = raw
        .iter()
        .any(|(n, _, _)| n.strip_prefix("module.").unwrap_or(n) == "features.0.0.weight");
    match mobilenet {
        // torchvision's MobileNet V2: nn.BatchNorm2d's default epsilon, ImageNet mean/std input.
        true => TorchNetwork {
            architecture: Architecture::MobileNetV2,
            modules: mobilenet_modules(),
            bn_epsilon: 1e-5,
            normalization: Normalization::imagenet(),
        },
        false => TorchNetwork {
            architecture: Architecture::InceptionV3,
            modules: unit_names()
                .into_iter()
                .map(|u| (format!("{u}.conv"), format!("{u}.bn")))
                .collect(),
            bn_epsilon: super::BN_EPSILON,
            normalization: Normalization::signed(),
        },
    }
}

/// Source weights from (name, shape, values) in torchvision naming.
fn source(
    format: &str,
    path: &Path,
    raw: Vec<(String, Vec<usize>, Vec<f32>)>,
) -> Result<SourceWeights> {
    let network = network_of(&raw);
    let roles: HashMap<String, (u32, Part)> = (1u32..)
        .zip(&network.modules)
        .flat_map(|(k, m)| {
            [
                Part::Kernel,
                Part::Gamma,
                Part::Beta,
                Part::Mean,
                Part::Variance,
            ]
            .map(move |p| (module_tensor(m, p), (k, p)))
        })
        .collect();
    let tensors: Vec<Found> = raw
        .into_iter()
        .map(|(name, shape, data)| {
            // Checkpoints saved from a DataParallel model prefix every name with "module.".
            let role = roles
                .get(name.strip_prefix("module.").unwrap_or(&name))
                .copied();
            Found {
                name,
                shape,
                data,
                role,
            }
        })
        .collect();
    if tensors.iter().all(|t| t.role.is_none()) {
        bail!(
            "{}: none of its tensors has torchvision's Inception V3 or MobileNet V2 names (Conv2d_1a_3x3.conv.weight, features.0.0.weight, ...)",
            path.display()
        );
    }
    let modules = network.modules;
    Ok(SourceWeights {
        architecture: network.architecture,
        bn_epsilon: network.bn_epsilon,
        format: format!("{format}, mapped by torchvision's module names"),
        layout: KernelLayout::Oihw,
        tensors,
        source: Source {
            description: format!("{format} {}", path.display()),
            normalization: network.normalization,
            pytorch_padding: true,
        },
        name_of: Box::new(move |k, part| module_tensor(&modules[k as usize - 1], part)),
    })
}

/// Little-endian floats of a tensor's dtype as f32.
fn to_f32(dtype: &str, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        "F32" => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        "F64" => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        "F16" => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        "BF16" => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => bail!("tensors of type {other} are not supported"),
    })
}

/// timm's safetensors.
pub fn read_safetensors(path: &Path) -> Result<SourceWeights> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        anyhow!(
            "{}: not a readable safetensors file (truncated?): {e}",
            path.display()
        )
    })?;
    let mut raw = Vec::new();
    for (name, view) in st.tensors() {
        let dtype = format!("{:?}", view.dtype());
        let skip = name.ends_with("num_batches_tracked");
        let data = if skip {
            Vec::new()
        } else {
            to_f32(&dtype, view.data()).with_context(|| format!("{}: {name}", path.display()))?
        };
        raw.push((name, view.shape().to_vec(), data));
    }
    raw.sort_by(|a, b| a.0.cmp(&b.0));
    source("PyTorch safetensors (timm / torchvision names)", path, raw)
}

/// torchvision's `.pth`: `<archive>/data.pkl` plus `<archive>/data/<key>` storages.
pub fn read_pth(path: &Path) -> Result<SourceWeights> {
    let damaged = |e: String| {
        anyhow!(
            "{}: not a readable PyTorch checkpoint (truncated or damaged zip?): {e}",
            path.display()
        )
    };
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| damaged(e.to_string()))?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| {
            zip.name_for_index(i)
                .and_then(|n| n.ok())
                .map(|n| n.to_string())
        })
        .find(|n| n.ends_with("data.pkl"))
        .ok_or_else(|| {
            anyhow!(
                "{}: a zip without data.pkl, not a PyTorch checkpoint",
                path.display()
            )
        })?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut read_entry = |name: &str| zip_member(&mut zip, name, damaged);
    let state = pickle::load(&read_entry(&pkl_name)?)
        .with_context(|| format!("{}: {pkl_name}", path.display()))?;
    let state = match state {
        Value::Dict(items) => items,
        // A full checkpoint ({"state_dict": ...} or {"model": ...}).
        other => bail!(
            "{}: data.pkl holds {} rather than a state dict",
            path.display(),
            kind(&other)
        ),
    };
    let state = match state
        .iter()
        .find(|(k, _)| matches!(k.as_str(), Some("state_dict" | "model")))
    {
        Some((_, Value::Dict(inner))) => inner.clone(),
        _ => state,
    };
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut raw = Vec::new();
    for (key, value) in state {
        let name = key
            .as_str()
            .ok_or_else(|| anyhow!("{}: a state-dict key is not a string", path.display()))?
            .to_string();
        let t = TensorRef::parse(&value).with_context(|| format!("{}: {name}", path.display()))?;
        if !storages.contains_key(&t.key) {
            let bytes = read_entry(&format!("{prefix}data/{}", t.key))?;
            storages.insert(t.key.clone(), bytes);
        }
        let data = t
            .gather(&storages[&t.key])
            .with_context(|| format!("{}: {name}", path.display()))?;
        raw.push((name, t.shape, data));
    }
    source("PyTorch checkpoint (.pth, torchvision names)", path, raw)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Dict(_) => "a dict",
        Value::List(_) | Value::Tuple(_) => "a sequence",
        Value::Call(..) => "an object",
        _ => "a plain value",
    }
}

/// A pickled `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
struct TensorRef {
    key: String,
    dtype: &'static str,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

impl TensorRef {
    fn parse(v: &Value) -> Result<Self> {
        let Value::Call(callable, args) = v else {
            bail!("not a tensor")
        };
        match callable.as_ref() {
            Value::Global(m, n) if m == "torch._utils" && n == "_rebuild_tensor_v2" => {}
            other => bail!("not a plain tensor ({other:?})"),
        }
        let Some(Value::Persistent(id)) = args.first() else {
            bail!("tensor without storage")
        };
        // ('storage', torch.FloatStorage, key, location, numel)
        let id = id.items().ok_or_else(|| anyhow!("unexpected storage id"))?;
        let dtype = match id.get(1) {
            Some(Value::Global(_, n)) => match n.as_str() {
                "FloatStorage" => "F32",
                "DoubleStorage" => "F64",
                "HalfStorage" => "F16",
                "BFloat16Storage" => "BF16",
                "LongStorage" => "I64",
                other => bail!("storage type {other} is not supported"),
            },
            _ => bail!("unexpected storage type"),
        };
        let key = id
            .get(2)
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("storage without key"))?;
        let ints = |v: Option<&Value>| -> Result<Vec<usize>> {
            v.and_then(Value::items)
                .ok_or_else(|| anyhow!("tensor size/stride missing"))?
                .iter()
                .map(|x| {
                    x.as_int()
                        .and_then(|i| usize::try_from(i).ok())
                        .ok_or_else(|| anyhow!("tensor size/stride is not a natural number"))
                })
                .collect()
        };
        Ok(TensorRef {
            key: key.to_string(),
            dtype,
            offset: usize::try_from(args.get(1).and_then(Value::as_int).unwrap_or(0))?,
            shape: ints(args.get(2))?,
            stride: ints(args.get(3))?,
        })
    }

    /// The tensor's values in row-major order, read through its strides.
    fn gather(&self, storage: &[u8]) -> Result<Vec<f32>> {
        if self.dtype == "I64" {
            return Ok(Vec::new()); // counters (num_batches_tracked): not used
        }
        let values = to_f32(self.dtype, storage)?;
        let count = (self.shape.iter()).try_fold(1usize, |n, &d| n.checked_mul(d));
        let too_short = || anyhow!("storage too short for shape {:?} (truncated?)", self.shape);
        // A saved tensor never holds more values than its storage.
        let count = count.filter(|&n| n <= values.len()).ok_or_else(too_short)?;
        let mut out = Vec::with_capacity(count);
        for flat in 0..count {
            let (mut rest, mut at) = (flat, Some(self.offset));
            for (&dim, &stride) in self.shape.iter().zip(&self.stride).rev() {
                let step = (rest % dim).checked_mul(stride);
                at = at.zip(step).and_then(|(a, s)| a.checked_add(s));
                rest /= dim;
            }
            out.push(*at.and_then(|a| values.get(a)).ok_or_else(too_short)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_is_one_unit_per_conv_with_unique_names() {
        let units = unit_names();
        assert_eq!(units.len(), 94);
        let unique: std::collections::HashSet<_> = units.iter().collect();
        assert_eq!(unique.len(), 94);
        assert_eq!(
            tensor_name(&units, 94, Part::Variance),
            "Mixed_7c.branch_pool.bn.running_var"
        );
    }
}
