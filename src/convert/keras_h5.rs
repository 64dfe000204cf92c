//! Keras HDF5 weights, in the two layouts Keras writes, each layer mapped
//! onto the network in the one way its file allows:
//!
//! - legacy: `<layer>/<layer>/<weight>` keyed by the layers' own names —
//!   Keras 2's `save_weights` (e.g. inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5)
//!   and full-model files (the same under `model_weights/`, Keras 2's or
//!   Keras 3's `save("x.h5")`). With the model's config (the root attribute
//!   `model_config`) the layers are mapped by it (keras_config.rs); without,
//!   by creation order (the numeric suffix of `conv2d_N`, `batch_normalization_N`).
//! - Keras 3: `layers/<class>_<n>/vars/<i>` as `save_weights("x.weights.h5")`
//!   and the `.keras` archive (keras_archive.rs) write it, entries numbered
//!   per class in Keras's walk of `model.layers` — not in creation order. In
//!   an archive the config maps them; a bare file is mapped by the walk the
//!   network definition records (`inception_v3::keras_walk_order`).
//!
//! Every other layer (a classifier on top, a wrapper) is not used.

use super::keras_config::{self, ConfigMapping};
use super::{keras_part, keras_weight_name, Found, KernelLayout, Part, Source, SourceWeights};
use crate::model::weights::Normalization;
use crate::model::{inception_v3, mobilenet_v2, Architecture};
use anyhow::{anyhow, bail, Result};
use hdf5_pure::{File, Group};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A Keras layer kind this converter maps.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Kind {
    Conv,
    BatchNorm,
}

/// `conv2d`, `conv2d_7`, `batch_normalization_3`, ... → (kind, suffix; none = 0).
fn layer_of(name: &str) -> Option<(Kind, u32)> {
    for (prefix, kind) in [
        ("conv2d", Kind::Conv),
        ("batch_normalization", Kind::BatchNorm),
    ] {
        if let Some(rest) = name.strip_prefix(prefix) {
            if rest.is_empty() {
                return Some((kind, 0));
            }
            return Some((kind, rest.strip_prefix('_')?.parse().ok()?));
        }
    }
    None
}

/// A stored dataset: path, shape, values.
type Dataset = (String, Vec<usize>, Vec<f32>);

/// Groups nest a few levels in Keras files; deeper is a damaged file or a
/// group linked into itself.
const MAX_GROUP_DEPTH: usize = 16;

/// Every dataset under `group`; `budget` is the bytes they may still take,
/// each dataset's declared size counted against it before it is read.
fn datasets(group: &Group, prefix: &str, out: &mut Vec<Dataset>, budget: &mut u64) -> Result<()> {
    if prefix.matches('/').count() > MAX_GROUP_DEPTH {
        bail!("groups nest deeper than {MAX_GROUP_DEPTH} levels at {prefix}");
    }
    for name in group.datasets()? {
        let ds = group.dataset(&name)?;
        let shape: Vec<usize> = ds.shape()?.iter().map(|&d| d as usize).collect();
        let bytes = (shape.iter())
            .try_fold(4u64, |n, &d| n.checked_mul(d as u64))
            .filter(|&b| b <= *budget)
            .ok_or_else(|| {
                anyhow!(
                    "dataset {prefix}{name} declares shape {shape:?}, more than the file can hold"
                )
            })?;
        *budget -= bytes;
        let data = ds
            .read_f32()
            .map_err(|e| anyhow!("dataset {prefix}{name} is not readable as float32: {e}"))?;
        out.push((format!("{prefix}{name}"), shape, data));
    }
    for name in group.groups()? {
        datasets(
            &group.group(&name)?,
            &format!("{prefix}{name}/"),
            out,
            budget,
        )?;
    }
    Ok(())
}

/// Where a dataset's variable sits: in Keras 3's layout its layer group
/// (`layers/conv2d_9`) and position (`vars/<i>`); in the legacy layout the
/// layer's name (the variable's parent group) and the weight's name.
#[derive(Clone, Debug, PartialEq)]
enum Slot {
    Positional { layer: String, position: usize },
    Named { layer: String, weight: String },
}

fn slot_of(path: &str) -> Option<Slot> {
    let parts: Vec<&str> = path.split('/').collect();
    let n = parts.len();
    if n >= 3 && parts[n - 2] == "vars" {
        let layer = parts[..n - 2].join("/");
        return Some(Slot::Positional {
            layer,
            position: parts[n - 1].parse().ok()?,
        });
    }
    (n >= 2).then(|| Slot::Named {
        layer: parts[n - 2].to_string(),
        weight: parts[n - 1].to_string(),
    })
}

impl Slot {
    fn layer(&self) -> &str {
        match self {
            Slot::Positional { layer, .. } | Slot::Named { layer, .. } => layer,
        }
    }
}

/// A Keras HDF5 file on disk, with its model config when it has one.
pub fn read(path: &Path) -> Result<SourceWeights> {
    let file = File::open(path).map_err(|e| {
        anyhow!(
            "{}: not a readable HDF5 file (truncated or damaged?): {e}",
            path.display()
        )
    })?;
    let config = model_config(&file).map_err(|e| {
        anyhow!(
            "{}: its model_config attribute is unreadable: {e:#}",
            path.display()
        )
    })?;
    let stored = std::fs::metadata(path).map_or(0, |m| m.len());
    read_file(
        &file,
        stored,
        config.as_ref(),
        &path.display().to_string(),
        "Keras HDF5",
    )
}

/// The root attribute `model_config` of a full-model file, parsed.
fn model_config(file: &File) -> Result<Option<Value>> {
    let attrs = file.root().attrs()?;
    match attrs.get("model_config").and_then(|a| a.as_str()) {
        Some(text) => Ok(Some(serde_json::from_str(text)?)),
        None => Ok(None),
    }
}

/// The weights of an open Keras HDF5 file of `stored_bytes` (`what` names it
/// in messages and in the weight file's metadata; `kind` says what it is),
/// mapped by `config` when given.
pub fn read_file(
    file: &File,
    stored_bytes: u64,
    config: Option<&Value>,
    what: &str,
    kind: &str,
) -> Result<SourceWeights> {
    let mut all = Vec::new();
    // Float32 data, possibly deflated: a hundred times the file is beyond any real one.
    let mut budget = stored_bytes.saturating_mul(100);
    datasets(&file.root(), "", &mut all, &mut budget).map_err(|e| {
        anyhow!("{what}: cannot read the HDF5 contents (truncated or damaged?): {e:#}")
    })?;
    let slots: Vec<Option<Slot>> = all.iter().map(|(p, _, _)| slot_of(p)).collect();
    let keras3 = slots
        .iter()
        .flatten()
        .any(|s| matches!(s, Slot::Positional { .. }));
    if slots.iter().flatten().any(|s| s.layer() == "bn_Conv1") {
        if keras3 {
            bail!("{what}: a MobileNet V2 in Keras 3's .weights.h5 layout, which retrain does not read yet: save the model with model.save(\"x.h5\") instead");
        }
        let mapping = "legacy layout <layer>/<layer>/<weight>, mapped by name";
        let units = by_name_mobilenet();
        return source_weights(
            all,
            &slots,
            units,
            (what, kind),
            mapping,
            Architecture::MobileNetV2,
        );
    }
    let graph = inception_v3::inception_v3(299, 299)?;
    let (units, epsilon, method) = match config {
        Some(c) => {
            let mapping = keras_config::map(c, &graph).map_err(|e| anyhow!("{what}: {e:#}"))?;
            let units = by_config(&mapping, keras3);
            (units, mapping.epsilon, "mapped by the model's config")
        }
        None if keras3 => (
            by_walk(&slots),
            super::BN_EPSILON,
            "mapped by Keras's layer walk order",
        ),
        None => (
            by_creation(&slots),
            super::BN_EPSILON,
            "mapped by creation order",
        ),
    };
    let layout = match keras3 {
        true => "Keras 3 layout layers/<class>_<n>/vars/<i>",
        false => "legacy layout <layer>/<layer>/<weight>",
    };
    let naming = match (config, keras3) {
        (None, false) if units.keys().any(|l| l.as_str() == "conv2d") => {
            ", Keras 3 layer names (conv2d, conv2d_1, ...)"
        }
        (None, false) => ", Keras 2 layer names (conv2d_1 ... conv2d_94)",
        _ => "",
    };
    let mut source = source_weights(
        all,
        &slots,
        units,
        (what, kind),
        &format!("{layout}, {method}{naming}"),
        Architecture::InceptionV3,
    )?;
    source.bn_epsilon = epsilon;
    Ok(source)
}

/// The datasets with their roles given by `units` (layer → kind and unit).
fn source_weights(
    all: Vec<Dataset>,
    slots: &[Option<Slot>],
    units: HashMap<String, (Kind, u32)>,
    (what, kind): (&str, &str),
    mapping: &str,
    architecture: Architecture,
) -> Result<SourceWeights> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in slots
        .iter()
        .flatten()
        .filter(|s| matches!(s, Slot::Positional { .. }))
    {
        *counts.entry(s.layer()).or_default() += 1;
    }
    let mut names: BTreeMap<(u32, Part), String> = BTreeMap::new();
    let mut tensors = Vec::new();
    for ((name, shape, data), slot) in all.into_iter().zip(slots) {
        let role = match slot.as_ref().and_then(|s| Some((s, units.get(s.layer())?))) {
            Some((slot, &(kind, unit))) => {
                let part = match slot {
                    Slot::Positional { layer, position } => {
                        positional(kind, *position, counts[layer.as_str()])
                    }
                    Slot::Named { weight, .. } => keras_part(weight),
                }
                .ok_or_else(|| anyhow!("{what}: unexpected variable {name}"))?;
                names.insert((unit, part), name.clone());
                Some((unit, part))
            }
            None => None,
        };
        tensors.push(Found {
            name,
            shape,
            data,
            role,
        });
    }
    if tensors.iter().all(|t| t.role.is_none()) {
        bail!("{what}: no conv2d or batch_normalization layers in this HDF5 file: is it a Keras Inception V3 or MobileNet V2?");
    }
    Ok(SourceWeights {
        format: format!("{kind}, {mapping}"),
        layout: KernelLayout::Hwio,
        tensors,
        source: Source {
            description: format!("{kind} {what}"),
            normalization: Normalization::signed(),
            pytorch_padding: false,
        },
        architecture,
        bn_epsilon: super::BN_EPSILON,
        name_of: Box::new(move |k, part| {
            names.get(&(k, part)).cloned().unwrap_or_else(|| {
                let layer = if part == Part::Kernel {
                    "conv2d"
                } else {
                    "batch_normalization"
                };
                format!(
                    "the {layer} layer of conv #{k} in creation order ({})",
                    keras_weight_name(part)
                )
            })
        }),
    })
}

/// MobileNet V2's layers, which Keras names itself: each conv and its batch
/// norm (`block_3_expand`, `block_3_expand_BN`) by name.
fn by_name_mobilenet() -> HashMap<String, (Kind, u32)> {
    let order = mobilenet_v2::keras_order();
    let mut units = HashMap::new();
    for (unit, layer) in (1..).zip(&order) {
        units.insert(layer.clone(), (Kind::Conv, unit));
        units.insert(mobilenet_v2::batch_norm_of(layer), (Kind::BatchNorm, unit));
    }
    units
}

/// Layer (store path in Keras 3's layout, name in the legacy one) → kind and
/// conv unit, as the model's config says.
fn by_config(mapping: &ConfigMapping, keras3: bool) -> HashMap<String, (Kind, u32)> {
    mapping
        .layers
        .iter()
        .map(|l| {
            let key = if keras3 { &l.store_path } else { &l.name };
            (key.clone(), (l.kind, l.unit))
        })
        .collect()
}

/// Keras 3 layer groups → kind and conv unit, by the walk the definition
/// records: the n-th conv and batch-norm entries of the layer list holding
/// the convs (the backbone, when a wrapper model holds it) are the walk's n-th.
fn by_walk(slots: &[Option<Slot>]) -> HashMap<String, (Kind, u32)> {
    let walk = inception_v3::keras_walk_order();
    let creation = inception_v3::keras_order();
    let unit = |n: u32| {
        let name = walk.get(n as usize)?;
        Some(creation.iter().position(|c| c == name)? as u32 + 1)
    };
    let mut by_list: BTreeMap<&str, Vec<(&str, Kind, u32)>> = BTreeMap::new();
    for slot in slots.iter().flatten() {
        let layer = slot.layer();
        let (list, name) = layer.rsplit_once('/').unwrap_or(("", layer));
        if let Some((kind, n)) = layer_of(name) {
            by_list.entry(list).or_default().push((layer, kind, n));
        }
    }
    let convs =
        |entries: &Vec<(&str, Kind, u32)>| entries.iter().filter(|e| e.1 == Kind::Conv).count();
    let backbone = by_list
        .values()
        .max_by_key(|e| convs(e))
        .cloned()
        .unwrap_or_default();
    backbone
        .into_iter()
        .filter_map(|(layer, kind, n)| Some((layer.to_string(), (kind, unit(n)?))))
        .collect()
}

/// Legacy layer names → kind and conv unit, by creation order: the layers
/// of each kind sorted by their numeric suffix.
fn by_creation(slots: &[Option<Slot>]) -> HashMap<String, (Kind, u32)> {
    let mut layers: BTreeMap<(Kind, u32), &str> = BTreeMap::new();
    for slot in slots.iter().flatten() {
        if let Some(layer) = layer_of(slot.layer()) {
            layers.insert(layer, slot.layer());
        }
    }
    let mut units = HashMap::new();
    for kind in [Kind::Conv, Kind::BatchNorm] {
        let of_kind = layers.iter().filter(|((k, _), _)| *k == kind);
        for (i, (_, name)) in of_kind.enumerate() {
            units.insert(name.to_string(), (kind, i as u32 + 1));
        }
    }
    units
}

/// Keras 3's variable order: a conv's `vars/0` is its kernel; a batch norm
/// has [gamma,] beta, moving mean, moving variance.
fn positional(kind: Kind, position: usize, count: usize) -> Option<Part> {
    match kind {
        Kind::Conv => (position == 0).then_some(Part::Kernel),
        Kind::BatchNorm => {
            let order: &[Part] = if count == 4 {
                &[Part::Gamma, Part::Beta, Part::Mean, Part::Variance]
            } else {
                &[Part::Beta, Part::Mean, Part::Variance]
            };
            order.get(position).copied()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_and_slots_are_recognised_in_every_layout() {
        assert_eq!(layer_of("conv2d"), Some((Kind::Conv, 0)));
        assert_eq!(layer_of("conv2d_94"), Some((Kind::Conv, 94)));
        assert_eq!(
            layer_of("batch_normalization_3"),
            Some((Kind::BatchNorm, 3))
        );
        assert_eq!(layer_of("conv2d_transpose"), None);
        assert_eq!(layer_of("predictions"), None);
        assert_eq!(
            slot_of("model_weights/conv2d_5/conv2d_5/kernel:0"),
            Some(Slot::Named {
                layer: "conv2d_5".into(),
                weight: "kernel:0".into()
            })
        );
        assert_eq!(
            slot_of("layers/functional/layers/batch_normalization/vars/2"),
            Some(Slot::Positional {
                layer: "layers/functional/layers/batch_normalization".into(),
                position: 2
            })
        );
        assert_eq!(positional(Kind::BatchNorm, 0, 3), Some(Part::Beta));
        assert_eq!(positional(Kind::BatchNorm, 0, 4), Some(Part::Gamma));
    }

    #[test]
    fn a_bare_keras3_file_is_read_in_walk_order() {
        let slot = |p: &str| slot_of(p);
        let slots = [
            slot("layers/conv2d_7/vars/0"),
            slot("layers/batch_normalization_7/vars/0"),
            slot("layers/dense/vars/0"),
        ];
        let units = by_walk(&slots);
        // The 8th conv of the walk is mixed0's second 3×3, the 10th in creation order.
        assert_eq!(units["layers/conv2d_7"], (Kind::Conv, 10));
        assert_eq!(units["layers/batch_normalization_7"], (Kind::BatchNorm, 10));
        assert!(!units.contains_key("layers/dense"));
    }
}
