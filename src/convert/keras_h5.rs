//! Keras HDF5 weights: `save_weights` files such as
//! inception_v3_weights_tf_dim_ordering_tf_kernels(_notop).h5 (layer groups
//! holding `<layer>/kernel:0`, ...), full-model files (the same under
//! `model_weights/`) and Keras 3 `.weights.h5` (`layers/<layer>/vars/<i>`).
//! Layers are recognised by name — Keras 2's `conv2d_1` … `conv2d_94` or
//! Keras 3's `conv2d`, `conv2d_1` … — and put in creation order by their
//! numeric suffix; every other layer (the classifier on top) is not used.

use super::{keras_part, keras_weight_name, Found, KernelLayout, Part, Source, SourceWeights};
use crate::model::weights::Normalization;
use anyhow::{anyhow, bail, Result};
use hdf5_pure::{File, Group};
use std::collections::BTreeMap;
use std::path::Path;

/// A Keras layer kind this converter maps.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
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

/// Every dataset under `group`, as (path, shape, values).
fn datasets(
    group: &Group,
    prefix: &str,
    out: &mut Vec<(String, Vec<usize>, Vec<f32>)>,
) -> Result<()> {
    for name in group.datasets()? {
        let ds = group.dataset(&name)?;
        let shape = ds.shape()?.iter().map(|&d| d as usize).collect();
        let data = ds
            .read_f32()
            .map_err(|e| anyhow!("dataset {prefix}{name} is not readable as float32: {e}"))?;
        out.push((format!("{prefix}{name}"), shape, data));
    }
    for name in group.groups()? {
        datasets(&group.group(&name)?, &format!("{prefix}{name}/"), out)?;
    }
    Ok(())
}

/// The mapped layer of a dataset path and its part: by weight name
/// (`kernel:0`, `moving_mean:0`) or, in Keras 3 files, by position (`vars/<i>`).
fn locate(path: &str) -> Option<((Kind, u32), Result<Part, usize>)> {
    let parts: Vec<&str> = path.split('/').collect();
    let layer = parts.iter().find_map(|p| layer_of(p))?;
    let last = *parts.last()?;
    match (parts.len() >= 2).then(|| parts[parts.len() - 2]) {
        Some("vars") => Some((layer, Err(last.parse().ok()?))),
        _ => Some((layer, Ok(keras_part(last)?))),
    }
}

pub fn read(path: &Path) -> Result<SourceWeights> {
    let file = File::open(path).map_err(|e| {
        anyhow!(
            "{}: not a readable HDF5 file (truncated or damaged?): {e}",
            path.display()
        )
    })?;
    let mut all = Vec::new();
    datasets(&file.root(), "", &mut all).map_err(|e| {
        anyhow!(
            "{}: cannot read the HDF5 contents (truncated or damaged?): {e:#}",
            path.display()
        )
    })?;

    // Layers in creation order, and each batch norm's positional variables.
    let mut layers: BTreeMap<(Kind, u32), usize> = BTreeMap::new();
    let mut vars: BTreeMap<(Kind, u32), usize> = BTreeMap::new();
    for (p, _, _) in &all {
        if let Some((layer, part)) = locate(p) {
            layers.insert(layer, 0);
            if part.is_err() {
                *vars.entry(layer).or_default() += 1;
            }
        }
    }
    for kind in [Kind::Conv, Kind::BatchNorm] {
        for (i, (_, index)) in layers.iter_mut().filter(|(l, _)| l.0 == kind).enumerate() {
            *index = i + 1;
        }
    }
    let keras3 = layers.contains_key(&(Kind::Conv, 0));
    let mut names: BTreeMap<(u32, Part), String> = BTreeMap::new();
    let mut tensors = Vec::new();
    for (name, shape, data) in all {
        let role = match locate(&name) {
            Some((layer, part)) => {
                let index = layers[&layer] as u32;
                let part = match part {
                    Ok(p) => p,
                    Err(position) => positional(layer.0, position, vars[&layer])
                        .ok_or_else(|| anyhow!("{}: unexpected variable {name}", path.display()))?,
                };
                names.insert((index, part), name.clone());
                Some((index, part))
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
        bail!(
            "{}: no conv2d or batch_normalization layers in this HDF5 file: is it a Keras Inception V3?",
            path.display()
        );
    }
    let naming = if keras3 {
        "Keras 3 layer names (conv2d, conv2d_1, ...)"
    } else {
        "Keras 2 layer names (conv2d_1 ... conv2d_94)"
    };
    Ok(SourceWeights {
        format: format!("Keras HDF5 weights, {naming}"),
        layout: KernelLayout::Hwio,
        tensors,
        source: Source {
            description: format!("Keras HDF5 weights {}", path.display()),
            normalization: Normalization::signed(),
            average_pool_counts_padding: false,
        },
        name_of: Box::new(move |k, part| {
            names.get(&(k, part)).cloned().unwrap_or_else(|| {
                let layer = if part == Part::Kernel {
                    "conv2d"
                } else {
                    "batch_normalization"
                };
                format!(
                    "{layer} #{k} in creation order ({})",
                    keras_weight_name(part)
                )
            })
        }),
    })
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
    fn layers_and_parts_are_recognised_in_every_naming() {
        assert_eq!(layer_of("conv2d"), Some((Kind::Conv, 0)));
        assert_eq!(layer_of("conv2d_94"), Some((Kind::Conv, 94)));
        assert_eq!(
            layer_of("batch_normalization_3"),
            Some((Kind::BatchNorm, 3))
        );
        assert_eq!(layer_of("conv2d_transpose"), None);
        assert_eq!(layer_of("predictions"), None);
        assert_eq!(
            locate("model_weights/conv2d_5/conv2d_5/kernel:0"),
            Some(((Kind::Conv, 5), Ok(Part::Kernel)))
        );
        assert_eq!(
            locate("layers/batch_normalization/vars/2"),
            Some(((Kind::BatchNorm, 0), Err(2)))
        );
        assert_eq!(positional(Kind::BatchNorm, 0, 3), Some(Part::Beta));
        assert_eq!(positional(Kind::BatchNorm, 0, 4), Some(Part::Gamma));
    }
}
