//! Reading a TF.js layers model: the topology + weights manifest (`model.json`,
//! or `model.min.js` wrapping a JavaScript object literal) and the weight
//! shards (raw binaries, or `*.min.js` files each wrapping one base64 string).

use super::js_literal;
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
        bytes
            .get(..count * width)
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
                let (data, used) = decode(entry, shape.iter().product(), &buffer[at..])
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
