//! Keras 3's `.keras` archive (`model.save("x.keras")`): a zip holding
//! `config.json` (the model: its layers, their classes, configuration and
//! connections), `metadata.json` and `model.weights.h5` (the variables in
//! Keras 3's layout). The weights are mapped by the config (keras_config.rs).

use super::{keras_h5, zip_member, SourceWeights};
use anyhow::{anyhow, Context, Result};
use std::path::Path;

const CONFIG: &str = "config.json";
const WEIGHTS: &str = "model.weights.h5";

/// Whether the zip at `path` is a Keras archive (it holds config.json and
/// model.weights.h5) rather than a PyTorch checkpoint.
pub fn is_archive(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    zip::ZipArchive::new(file)
        .is_ok_and(|z| z.index_for_name(CONFIG).is_some() && z.index_for_name(WEIGHTS).is_some())
}

pub fn read(path: &Path) -> Result<SourceWeights> {
    let damaged = |e: String| {
        anyhow!(
            "{}: not a readable Keras archive (truncated or damaged zip?): {e}",
            path.display()
        )
    };
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| damaged(e.to_string()))?;
    let mut member = |name: &str| zip_member(&mut zip, name, damaged);
    let config: serde_json::Value = serde_json::from_slice(&member(CONFIG)?)
        .map_err(|e| anyhow!("{}: {CONFIG} is not valid JSON: {e}", path.display()))?;
    let weights = member(WEIGHTS)?;
    let stored = weights.len() as u64;
    let weights = hdf5_pure::File::from_bytes(weights).map_err(|e| {
        anyhow!(
            "{}: {WEIGHTS} is not a readable HDF5 file: {e}",
            path.display()
        )
    })?;
    let what = format!("{} ({WEIGHTS})", path.display());
    keras_h5::read_file(
        &weights,
        stored,
        Some(&config),
        &what,
        "Keras 3 .keras archive",
    )
}
