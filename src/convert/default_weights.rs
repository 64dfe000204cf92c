//! The default weights: the Keras Inception V3 and MobileNet V2 shipped in the
//! npm package nsfwjs@4.4.0 (MIT), fetched with the ordinary `npm pack`
//! client on first use, checked against pinned hashes, converted once and cached.

use super::{sha256_file, tfjs, write_engine_file, Source};
use crate::cache_dir::cache_dir;
use crate::model::weights::Normalization;
use crate::model::Architecture;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const PACKAGE: &str = "nsfwjs@4.4.0";
const TARBALL: &str = "nsfwjs-4.4.0.tgz";
const TARBALL_SHA256: &str = "585cd178f3b994337c4d10a87b080d342fc52f8b9bf0085c4d1f345a3a1c5382";

/// One network's TF.js folder in the package, with the sha256 of each file.
struct PackagedModel {
    dir: &'static str,
    files: &'static [(&'static str, &'static str)],
    description: &'static str,
}

const INCEPTION_V3: PackagedModel = PackagedModel {
    dir: "package/dist/models/inception_v3",
    files: &[
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
    ],
    description: "dist/models/inception_v3 (TF.js layers, uint8-quantised; lower half ImageNet, upper half fine-tuned by nsfwjs)",
};

const MOBILENET_V2: PackagedModel = PackagedModel {
    dir: "package/dist/models/mobilenet_v2",
    files: &[
        (
            "model.min.js",
            "c32f104fd562b08cdff5ed69dfe1209643afa47e792fb12751d2949aa61a397a",
        ),
        (
            "group1-shard1of1.min.js",
            "ef2e0a63f7d2c4960b37b024b669313f65d3c45cd59e9042636c55b39de53517",
        ),
    ],
    description: "dist/models/mobilenet_v2 (TF.js layers, Keras MobileNetV2 alpha 1.0, uint8-quantised, trained by nsfwjs)",
};

fn packaged(arch: Architecture) -> &'static PackagedModel {
    match arch {
        Architecture::InceptionV3 => &INCEPTION_V3,
        Architecture::MobileNetV2 => &MOBILENET_V2,
    }
}

pub fn default_weights_path(arch: Architecture) -> PathBuf {
    cache_dir().join(format!("{}-nsfwjs-4.4.0-f32.safetensors", arch.name()))
}

/// How to do by hand what the automatic fetch could not.
fn by_hand(arch: Architecture) -> String {
    let (dir, name) = (packaged(arch).dir, arch.name());
    format!(
        "To convert a local copy by hand: get the package (`npm pack {PACKAGE}` on a machine with \
         network access, then `tar xzf {TARBALL}`), run\n  convert-weights --from {dir} --output {name}.safetensors\n\
         and pass --weights {name}.safetensors to any retrain command."
    )
}

/// The weight file to use: the one given, else the cached default of `arch`
/// (fetched and converted first if it is not cached yet).
pub fn resolve(weights: Option<&Path>, arch: Architecture) -> Result<PathBuf> {
    if let Some(path) = weights {
        return Ok(path.to_path_buf());
    }
    let path = default_weights_path(arch);
    if !path.is_file() {
        fetch_and_convert(&path, arch)?;
    }
    Ok(path)
}

/// Whether `dir` holds exactly nsfwjs@4.4.0's files of `arch`.
pub fn is_pinned_nsfwjs(dir: &Path, arch: Architecture) -> bool {
    packaged(arch)
        .files
        .iter()
        .all(|(name, hash)| sha256_file(&dir.join(name)).is_ok_and(|h| h == *hash))
}

/// Source metadata for a TF.js folder of `arch`: the pinned nsfwjs model or something else.
pub fn source_of(dir: &Path, arch: Architecture) -> Source {
    let description = if is_pinned_nsfwjs(dir, arch) {
        format!("{PACKAGE} {}", packaged(arch).description)
    } else {
        format!("TF.js layers model from {}", dir.display())
    };
    Source {
        description,
        normalization: Normalization::unit(),
        pytorch_padding: false,
    }
}

fn fetch_and_convert(dest: &Path, arch: Architecture) -> Result<()> {
    log::info!("Default {} weights are not cached yet: fetching {PACKAGE} with npm and converting them once to {}", arch.name(), dest.display());
    let temp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let model_dir = temp.path().join("model");
    fetch_model(&model_dir, arch)?;
    write_engine_file(&tfjs::read_source(&model_dir)?, dest, false)?;
    log::info!("Default weights cached at {}", dest.display());
    Ok(())
}

/// Fetches nsfwjs's `arch` (TF.js files) with npm into `model_dir`,
/// checking the tarball and every file against their pinned hashes.
pub fn fetch_model(model_dir: &Path, arch: Architecture) -> Result<()> {
    let temp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let output = Command::new("npm")
        .args(["pack", PACKAGE, "--silent"])
        .current_dir(temp.path())
        .output()
        .map_err(|e| {
            anyhow!(
                "could not run npm to fetch the default weights ({e}).\n{}",
                by_hand(arch)
            )
        })?;
    if !output.status.success() {
        bail!(
            "`npm pack {PACKAGE}` failed (no network or no registry access?):\n{}\n{}",
            String::from_utf8_lossy(&output.stderr).trim(),
            by_hand(arch)
        );
    }
    let tarball = temp.path().join(TARBALL);
    let hash = sha256_file(&tarball)?;
    if hash != TARBALL_SHA256 {
        bail!(
            "{TARBALL} has sha256 {hash}, expected {TARBALL_SHA256}: refusing to use it.\n{}",
            by_hand(arch)
        );
    }
    let model = packaged(arch);
    extract_model(&tarball, model.dir, model_dir)?;
    for (name, want) in model.files {
        let got = sha256_file(&model_dir.join(name))?;
        if got != *want {
            bail!(
                "{name} in {PACKAGE} has sha256 {got}, expected {want}: refusing to use it.\n{}",
                by_hand(arch)
            );
        }
    }
    Ok(())
}

/// Extracts the files of the package's folder `dir` from its tarball into `dest`.
fn extract_model(tarball: &Path, dir: &str, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest)?;
    let file = std::fs::File::open(tarball)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in archive.entries().context("damaged package tarball")? {
        let mut entry = entry.context("damaged package tarball")?;
        let path = entry.path()?.into_owned();
        if let (Ok(rest), Some(name)) = (path.strip_prefix(dir), path.file_name()) {
            if rest.components().count() == 1 {
                entry
                    .unpack(dest.join(name))
                    .context("cannot extract the package")?;
            }
        }
    }
    Ok(())
}
