//! A Keras model's own description of itself — `config.json` in a `.keras`
//! archive, the `model_config` attribute of a full-model `.h5` — used to map
//! the stored weights onto the network by structure rather than by name.
//!
//! The backbone is the (possibly nested) functional model holding the convs;
//! anything around it (a `Sequential` wrapper, a classifier on top) is not
//! used. Its layer list is `model.layers`, Keras's walk, so its n-th Conv2D
//! is the network's `keras_walk_order()[n]`; each conv's filters, kernel
//! size, strides and padding are checked against that conv of the
//! definition, and each batch norm is paired with the conv that feeds it.

use super::keras_h5::Kind;
use crate::model::graph::{Graph, Padding};
use crate::model::inception_v3;
use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use std::collections::HashMap;

/// One conv or batch-norm layer of the backbone and where its variables are.
#[derive(Clone, Debug)]
pub struct MappedLayer {
    /// The layer's own name (`conv2d_7`), as legacy `.h5` files key it.
    pub name: String,
    /// The group Keras 3 stores its variables in (`layers/conv2d_9`), in a
    /// `.keras` archive or `.weights.h5` written from the same model.
    pub store_path: String,
    pub kind: Kind,
    /// The conv it belongs to: its 1-based place in Keras's creation order.
    pub unit: u32,
}

/// The backbone's convs and batch norms, mapped, and the batch norms' epsilon.
pub struct ConfigMapping {
    pub layers: Vec<MappedLayer>,
    pub epsilon: f64,
}

/// Keras's `naming.to_snake_case` of a class name: `BatchNormalization` →
/// `batch_normalization`, `Conv2D` → `conv2d`.
fn snake_case(class: &str) -> String {
    let chars: Vec<char> = class
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| chars[j]);
        let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
        let starts_word = c.is_uppercase()
            && prev.is_some()
            && (next_lower || prev.is_some_and(|p| p.is_lowercase()));
        if starts_word {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// A model's layer list: `config.layers` of a Functional or Sequential.
fn layers_of(model: &Value) -> Option<&Vec<Value>> {
    model.get("config")?.get("layers")?.as_array()
}

fn class_of(layer: &Value) -> &str {
    layer["class_name"].as_str().unwrap_or("")
}

/// The layers whose output `layer` reads, from either inbound-node format
/// (Keras 3's `keras_history`, Keras 2's nested lists).
fn inbound_names(layer: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => match map.get("keras_history").and_then(|h| h[0].as_str()) {
                Some(name) => out.push(name.to_string()),
                None => map.values().for_each(|v| walk(v, out)),
            },
            Value::Array(items) => match items.first().and_then(Value::as_str) {
                Some(name) if items.len() >= 3 && items[1].is_number() => {
                    out.push(name.to_string())
                }
                _ => items.iter().for_each(|v| walk(v, out)),
            },
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&layer["inbound_nodes"], &mut out);
    out
}

/// The backbone in `model`: the model whose layer list holds the most Conv2D
/// layers, searched through nested models, with the store path of its
/// layer list (`layers/` at the top, `layers/functional/layers/` inside a wrapper).
fn backbone<'a>(model: &'a Value, store: &str) -> Option<(&'a Vec<Value>, String)> {
    let layers = layers_of(model)?;
    let convs = |l: &Vec<Value>| l.iter().filter(|x| class_of(x) == "Conv2D").count();
    let mut best = (convs(layers) > 0).then(|| (layers, format!("{store}layers/")));
    let mut used: HashMap<String, usize> = HashMap::new();
    for layer in layers {
        let path = store_name(&mut used, class_of(layer));
        if let Some((inner, at)) = backbone(layer, &format!("{store}layers/{path}/")) {
            if best.as_ref().is_none_or(|(b, _)| convs(inner) > convs(b)) {
                best = Some((inner, at));
            }
        }
    }
    best
}

/// The name Keras 3 stores the next layer of `class` under in one layer
/// list: the class in snake case, numbered from the second on.
fn store_name(used: &mut HashMap<String, usize>, class: &str) -> String {
    let base = snake_case(class);
    let seen = used.entry(base.clone()).or_insert(0);
    *seen += 1;
    match *seen {
        1 => base,
        n => format!("{base}_{}", n - 1),
    }
}

/// Maps the backbone of the Keras model described by `model` onto the
/// network, checking every conv's configuration against the definition.
pub fn map(model: &Value, graph: &Graph) -> Result<ConfigMapping> {
    let (layers, store) = backbone(model, "").ok_or_else(|| {
        anyhow!("the model's config has no Conv2D layers: is it an Inception V3?")
    })?;
    let walk = inception_v3::keras_walk_order();
    let creation = inception_v3::keras_order();
    let mut used = HashMap::new();
    let mut unit_of: HashMap<String, u32> = HashMap::new();
    let mut mapped = Vec::new();
    let mut convs_seen = 0;
    for layer in layers {
        let store_path = format!("{store}{}", store_name(&mut used, class_of(layer)));
        let config = &layer["config"];
        let name = config["name"]
            .as_str()
            .or(layer["name"].as_str())
            .unwrap_or("")
            .to_string();
        let kind = match class_of(layer) {
            "Conv2D" => Kind::Conv,
            "BatchNormalization" => Kind::BatchNorm,
            _ => continue,
        };
        let unit = match kind {
            Kind::Conv => {
                let structural = walk.get(convs_seen).ok_or_else(|| {
                    anyhow!(
                        "the model has more than Inception V3's {} conv layers",
                        walk.len()
                    )
                })?;
                convs_seen += 1;
                check_conv(&name, config, graph, structural)?;
                let unit = creation
                    .iter()
                    .position(|c| c == structural)
                    .expect("walk names") as u32
                    + 1;
                unit_of.insert(name.clone(), unit);
                unit
            }
            Kind::BatchNorm => {
                let feeds = inbound_names(layer);
                let conv = feeds.iter().find_map(|f| unit_of.get(f)).ok_or_else(|| {
                    anyhow!("batch norm {name} does not follow a conv layer ({feeds:?}): is this an Inception V3?")
                })?;
                *conv
            }
        };
        mapped.push(MappedLayer {
            name,
            store_path,
            kind,
            unit,
        });
    }
    if convs_seen != walk.len() {
        bail!(
            "the model has {convs_seen} conv layers; Inception V3 has {}",
            walk.len()
        );
    }
    Ok(ConfigMapping {
        epsilon: batch_norm_epsilon(layers)?,
        layers: mapped,
    })
}

/// The batch norms' epsilon among Keras `layers` (Keras's default, 0.001,
/// where a layer gives none); one value for all, as both networks have.
pub(crate) fn batch_norm_epsilon<'a>(layers: impl IntoIterator<Item = &'a Value>) -> Result<f64> {
    let mut values = (layers.into_iter())
        .filter(|l| class_of(l) == "BatchNormalization")
        .map(|l| l["config"]["epsilon"].as_f64().unwrap_or(super::BN_EPSILON));
    let first = values.next().unwrap_or(super::BN_EPSILON);
    if values.any(|e| e != first) {
        bail!("the model's batch norms use different epsilons; retrain folds one");
    }
    Ok(first)
}

/// Checks a Conv2D layer's configuration against the definition's conv `structural`.
fn check_conv(name: &str, config: &Value, graph: &Graph, structural: &str) -> Result<()> {
    let conv = graph
        .convs()
        .find(|c| c.name == structural)
        .expect("every walk name is a conv of the definition");
    let ints = |key: &str| -> Vec<u64> {
        config[key]
            .as_array()
            .map_or(Vec::new(), |a| a.iter().filter_map(Value::as_u64).collect())
    };
    let padding = match conv.padding {
        Padding::Same | Padding::Symmetric => "same",
        Padding::Valid => "valid",
    };
    let expected = (
        conv.output.channels as u64,
        vec![conv.kernel.0 as u64, conv.kernel.1 as u64],
        vec![conv.stride as u64; 2],
        padding,
    );
    let found = (
        config["filters"].as_u64().unwrap_or(0),
        ints("kernel_size"),
        ints("strides"),
        config["padding"].as_str().unwrap_or(""),
    );
    if found != expected {
        bail!(
            "layer {name}, conv #{} in Keras's layer walk, should be {structural} ({} filters, kernel {:?}, strides {:?}, {} padding) but has {} filters, kernel {:?}, strides {:?}, {} padding: is this an Inception V3?",
            graph.convs().position(|c| c.name == structural).unwrap_or(0) + 1,
            expected.0, expected.1, expected.2, expected.3, found.0, found.1, found.2, found.3
        );
    }
    if config["use_bias"].as_bool() == Some(true) {
        bail!("layer {name} has a bias; Keras's Inception V3 convs have none (the batch norm follows)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_in_snake_case_as_keras_writes_them() {
        for (class, snake) in [
            ("Conv2D", "conv2d"),
            ("BatchNormalization", "batch_normalization"),
            ("MaxPooling2D", "max_pooling2d"),
            ("InputLayer", "input_layer"),
            ("Functional", "functional"),
            ("Dense", "dense"),
        ] {
            assert_eq!(snake_case(class), snake);
        }
    }

    #[test]
    fn store_names_are_numbered_per_class() {
        let mut used = HashMap::new();
        let names: Vec<String> = ["Conv2D", "Dense", "Conv2D", "Conv2D"]
            .iter()
            .map(|c| store_name(&mut used, c))
            .collect();
        assert_eq!(names, ["conv2d", "dense", "conv2d_1", "conv2d_2"]);
    }
}
