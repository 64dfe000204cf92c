//! The default weights: the Keras Inception V3 shipped in the npm package
//! nsfwjs@4.4.0 (MIT), fetched with the ordinary `npm pack` client on first
//! use, checked against pinned hashes, converted once and cached.

use super::{sha256_file, tfjs, write_engine_file, Source};
use crate::cache_dir::cache_dir;
use crate::model::weights::Normalization;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const PACKAGE: &str = "nsfwjs@4.4.0";
const TARBALL: &str = "nsfwjs-4.4.0.tgz";
const TARBALL_SHA256: &str = "585cd178f3b994337c4d10a87b080d342fc52f8b9bf0085c4d1f345a3a1c5382";
const MODEL_DIR: &str = "package/dist/models/inception_v3";
/// sha256 of every file of the model folder.
const MODEL_FILES: [(&str, &str); 7] = [
    (
        "model.min.js",
        "8c2b793b9d277840fc757725bf3b135c96d5a54ec020e2b4ab569fc3df6b3848",
    ),
    (
        "group1-shard1of6.min.js",
        "e9316ac20ff634f990e483062050afe9a4826885c3a212d676ce2cfda93a4884",
    ),
    (
        "group1-shard2of6.min.js",
        "467b33d62b4c470edf8acd3da554e331f2d49f3f93ddd718f944f595c516cd82",
    ),
    (
        "group1-shard3of6.min.js",
        "075300e057ca7e9fd2e282afbc3a6596a0404288c94bf781e9b20658cbeee664",
    ),
    (
        "group1-shard4of6.min.js",
        "b51ee46e062e752e81c28761a56369432671bfb3d59f4f062f5bd4dd58ff5303",
    ),
    (
        "group1-shard5of6.min.js",
        "d4149969b3c61e0d4dde1d4f555f5b00f4fc87f6bab1a4cd4967b24f62725de6",
    ),
    (
        "group1-shard6of6.min.js",
        "b684762a7d7c39b80183d260bdab6f072321349300f9f2ff144a085a382acfc4",
    ),
];

pub fn default_weights_path() -> PathBuf {
    cache_dir().join("inception_v3-nsfwjs-4.4.0-f32.safetensors")
}

/// How to do by hand what the automatic fetch could not.
fn by_hand() -> String {
    format!(
        "To convert a local copy by hand: get the package (`npm pack {PACKAGE}` on a machine with \
         network access, then `tar xzf {TARBALL}`), run\n  convert-weights --from {MODEL_DIR} --output inception_v3.safetensors\n\
         and pass --weights inception_v3.safetensors to any retrain command."
    )
}

/// The weight file to use: the one given, else the cached default (fetched and
/// converted first if it is not cached yet).
pub fn resolve(weights: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = weights {
        return Ok(path.to_path_buf());
    }
    let path = default_weights_path();
    if !path.is_file() {
        fetch_and_convert(&path)?;
    }
    Ok(path)
}

/// Whether `dir` holds exactly nsfwjs@4.4.0's Inception V3 files.
pub fn is_pinned_nsfwjs(dir: &Path) -> bool {
    MODEL_FILES
        .iter()
        .all(|(name, hash)| sha256_file(&dir.join(name)).is_ok_and(|h| h == *hash))
}

/// Source metadata for a TF.js folder: the pinned nsfwjs model or something else.
pub fn source_of(dir: &Path) -> Source {
    let description = if is_pinned_nsfwjs(dir) {
        format!("{PACKAGE} dist/models/inception_v3 (TF.js layers, uint8-quantised; lower half ImageNet, upper half fine-tuned by nsfwjs)")
    } else {
        format!("TF.js layers model from {}", dir.display())
    };
    Source {
        description,
        normalization: Normalization::unit(),
        average_pool_counts_padding: false,
    }
}

fn fetch_and_convert(dest: &Path) -> Result<()> {
    log::info!("Default weights are not cached yet: fetching {PACKAGE} with npm and converting them once to {}", dest.display());
    let temp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let model_dir = temp.path().join("model");
    fetch_model(&model_dir)?;
    write_engine_file(&tfjs::read_source(&model_dir)?, dest, false)?;
    log::info!("Default weights cached at {}", dest.display());
    Ok(())
}

/// Fetches nsfwjs's Inception V3 (TF.js files) with npm into `model_dir`,
/// checking the tarball and every file against their pinned hashes.
pub fn fetch_model(model_dir: &Path) -> Result<()> {
    let temp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let output = Command::new("npm")
        .args(["pack", PACKAGE, "--silent"])
        .current_dir(temp.path())
        .output()
        .map_err(|e| {
            anyhow!(
                "could not run npm to fetch the default weights ({e}).\n{}",
                by_hand()
            )
        })?;
    if !output.status.success() {
        bail!(
            "`npm pack {PACKAGE}` failed (no network or no registry access?):\n{}\n{}",
            String::from_utf8_lossy(&output.stderr).trim(),
            by_hand()
        );
    }
    let tarball = temp.path().join(TARBALL);
    let hash = sha256_file(&tarball)?;
    if hash != TARBALL_SHA256 {
        bail!(
            "{TARBALL} has sha256 {hash}, expected {TARBALL_SHA256}: refusing to use it.\n{}",
            by_hand()
        );
    }
    extract_model(&tarball, model_dir)?;
    for (name, want) in MODEL_FILES {
        let got = sha256_file(&model_dir.join(name))?;
        if got != want {
            bail!(
                "{name} in {PACKAGE} has sha256 {got}, expected {want}: refusing to use it.\n{}",
                by_hand()
            );
        }
    }
    Ok(())
}

/// Extracts the files of MODEL_DIR from the package tarball into `dest`.
fn extract_model(tarball: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest)?;
    let file = std::fs::File::open(tarball)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in archive.entries().context("damaged package tarball")? {
        let mut entry = entry.context("damaged package tarball")?;
        let path = entry.path()?.into_owned();
        if let (Ok(rest), Some(name)) = (path.strip_prefix(MODEL_DIR), path.file_name()) {
            if rest.components().count() == 1 {
                entry
                    .unpack(dest.join(name))
                    .context("cannot extract the package")?;
            }
        }
    }
    Ok(())
}
