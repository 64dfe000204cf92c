//! Keras files as Keras 3.15 really writes them. The fixtures are built from
//! the manifests of real files in ../shared/reference/formats/ — every
//! entry's path, shape and layout, the archive's config.json verbatim — and
//! filled with the nsfwjs weights; each must convert to the same tensors as
//! the direct conversion. A bare `.weights.h5` numbered in creation order
//! (what the converter once assumed Keras writes) must be refused, naming
//! its first misfit, rather than converted into wrong weights.

mod common;

use common::nsfwjs::*;
use hdf5_pure::{AttrValue, File as H5File, Group};
use retrain::convert::{self, Found, Part};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

fn manifest(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference/formats")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// A Keras 3 layer name's conv (1-based creation number): `conv2d` → 1,
/// `batch_normalization_7` → 8; None for other layers.
fn creation_number(layer: &str) -> Option<u32> {
    let rest = ["conv2d", "batch_normalization"]
        .iter()
        .find_map(|p| layer.strip_prefix(p))?;
    match rest {
        "" => Some(1),
        _ => Some(rest.strip_prefix('_')?.parse::<u32>().ok()? + 1),
    }
}

/// The nsfwjs tensor for variable `var` of Keras layer `layer`: a position
/// (`vars/<i>`) or a weight name (`kernel`, `moving_mean`, …).
fn nsfwjs_variable(layer: &str, var: &str) -> &'static Found {
    let k = creation_number(layer).unwrap_or_else(|| panic!("{layer} is not a conv or batch norm"));
    let part = match (layer.starts_with("conv2d"), var) {
        (true, "0" | "kernel") => Part::Kernel,
        (false, "beta") => Part::Beta,
        (false, "moving_mean") => Part::Mean,
        (false, "moving_variance") => Part::Variance,
        (false, i) => BN_PARTS[i.parse::<usize>().unwrap()].0,
        _ => panic!("unexpected variable {layer}/{var}"),
    };
    parts()[&(k, part)]
}

/// The group at `path` under `root`, created as needed.
fn group_at(root: &Group, path: &str) -> Group {
    path.split('/')
        .filter(|p| !p.is_empty())
        .fold(root.clone(), |g, name| {
            g.group(name)
                .unwrap_or_else(|_| g.create_group(name).unwrap())
        })
}

/// Writes every dataset of `datasets` (a manifest's list: path, shape) under
/// `prefix`, filled by `fill` from its path; checks the shape on the way.
fn write_datasets(
    root: &Group,
    prefix: &str,
    datasets: &[Value],
    fill: impl Fn(&str) -> &'static Found,
) {
    for d in datasets {
        let path = d["path"].as_str().unwrap();
        let shape: Vec<usize> = serde_json::from_value(d["shape"].clone()).unwrap();
        let found = fill(path);
        assert_eq!(
            found.shape, shape,
            "{path}: the nsfwjs tensor has another shape"
        );
        let (parent, name) = path.rsplit_once('/').unwrap();
        write_h5(&group_at(root, &format!("{prefix}{parent}")), name, found);
    }
}

/// Keras 3's store: `layers/<file name>/vars/<i>`, each entry's layer
/// found through the manifest's walk (file name → layer name).
fn write_keras3_store(root: &Group, prefix: &str, datasets: &[Value]) {
    let walk = manifest("keras3_weights_h5.json")["model_layers_walk"].clone();
    let layer_of: HashMap<String, String> = walk
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["file_name"].as_str().unwrap().into(),
                l["layer_name"].as_str().unwrap().into(),
            )
        })
        .collect();
    for l in walk.as_array().unwrap() {
        // Weightless layers have an (empty) group too.
        group_at(
            root,
            &format!("{prefix}layers/{}", l["file_name"].as_str().unwrap()),
        );
    }
    write_datasets(root, prefix, datasets, |path| {
        let parts: Vec<&str> = path.split('/').collect();
        nsfwjs_variable(&layer_of[parts[1]], parts[3])
    });
}

fn keras3_weights_h5(path: &Path) {
    let file = H5File::create(path).unwrap();
    let datasets = manifest("keras3_weights_h5.json")["datasets"]
        .as_array()
        .unwrap()
        .clone();
    write_keras3_store(&file.root(), "", &datasets);
    file.commit().unwrap();
}

/// A `.keras` archive: the manifest's members, config.json as Keras wrote
/// it (or `config`), model.weights.h5 built from the manifest under `prefix`.
fn keras_archive(path: &Path, config: &Value, prefix: &str, extra: impl Fn(&Group)) {
    let m = manifest("keras3_archive.json");
    let h5 = path.with_extension("weights.h5");
    let file = H5File::create(&h5).unwrap();
    let datasets = m["model.weights.h5"]["datasets"]
        .as_array()
        .unwrap()
        .clone();
    write_keras3_store(&file.root(), prefix, &datasets);
    extra(&file.root());
    file.commit().unwrap();
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for member in m["zip_members"].as_array().unwrap() {
        let name = member["name"].as_str().unwrap();
        zip.start_file(name, stored).unwrap();
        let bytes = match name {
            "metadata.json" => serde_json::to_vec(&m["metadata.json"]).unwrap(),
            "config.json" => serde_json::to_vec(config).unwrap(),
            "model.weights.h5" => std::fs::read(&h5).unwrap(),
            other => panic!("unexpected member {other}"),
        };
        zip.write_all(&bytes).unwrap();
    }
    zip.finish().unwrap();
}

/// Keras 3's legacy full-model `.h5`: `model_weights/<layer>/<layer>/<var>`
/// by the layers' real names, the config in the root attribute `model_config`.
fn legacy_full_h5(path: &Path, model_config: &str) {
    let m = manifest("keras3_legacy_full_h5.json");
    let file = H5File::create(path).unwrap();
    for (key, value) in m["root_attributes"].as_object().unwrap() {
        let text = if key == "model_config" {
            model_config
        } else {
            value.as_str().unwrap()
        };
        file.root()
            .set_attr(key, AttrValue::String(text.into()))
            .unwrap();
    }
    let datasets = m["datasets"].as_array().unwrap().clone();
    write_datasets(&file.root(), "", &datasets, |path| {
        let parts: Vec<&str> = path.split('/').collect();
        nsfwjs_variable(parts[2], parts[3])
    });
    file.commit().unwrap();
}

fn real_config() -> Value {
    manifest("keras3_archive_config.json")
}

fn legacy_config() -> String {
    manifest("keras3_legacy_full_h5.json")["root_attributes"]["model_config"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `convert-weights --inspect` names the format and the mapping, and finds every tensor.
fn inspect_says(path: &Path, mapping: &str) {
    let text = convert::inspect(path).unwrap();
    assert!(text.contains(mapping), "{text}");
    assert!(text.contains("complete: 188 engine tensors"), "{text}");
}

fn temp(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    (dir, path)
}

#[test]
fn a_keras3_weights_h5_file_converts_by_the_walk_order() {
    let (_dir, path) = temp("inception_v3.weights.h5");
    keras3_weights_h5(&path);
    inspect_says(&path, "mapped by Keras's layer walk order");
    convert_and_compare(&path, "Keras 3 .weights.h5");
}

#[test]
fn a_keras3_weights_h5_numbered_in_creation_order_is_refused() {
    let (_dir, path) = temp("creation_order.weights.h5");
    let file = H5File::create(&path).unwrap();
    let mut datasets = Vec::new();
    for k in 1..=94u32 {
        let name = |base: &str| {
            if k == 1 {
                base.to_string()
            } else {
                format!("{base}_{}", k - 1)
            }
        };
        let conv = name("conv2d");
        datasets.push((format!("layers/{conv}/vars/0"), parts()[&(k, Part::Kernel)]));
        for (i, (part, _)) in BN_PARTS.iter().enumerate() {
            datasets.push((
                format!("layers/{}/vars/{i}", name("batch_normalization")),
                parts()[&(k, *part)],
            ));
        }
    }
    for (path, found) in datasets {
        let (parent, name) = path.rsplit_once('/').unwrap();
        write_h5(&group_at(&file.root(), parent), name, found);
    }
    file.commit().unwrap();
    let out = path.with_extension("out.safetensors");
    let err = format!(
        "{:#}",
        convert::convert(&path, &out, &Default::default()).unwrap_err()
    );
    // mixed0's 5×5 (creation #8) is looked for at the walk's 10th conv entry,
    // which this file filled with creation #10, mixed0's 3×3.
    assert!(
        err.contains("layers/conv2d_9/vars/0 has shape [3, 3, 64, 96], expected [5, 5, 48, 64]"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn a_keras_archive_converts_by_its_config() {
    let (_dir, path) = temp("inception_v3.keras");
    keras_archive(&path, &real_config(), "", |_| {});
    inspect_says(&path, "Keras 3 .keras archive, Keras 3 layout layers/<class>_<n>/vars/<i>, mapped by the model's config");
    let out = convert_and_compare(&path, "Keras 3 .keras archive");
    check_golden(&out, "Keras 3 .keras archive");
}

#[test]
fn a_keras_archive_wrapping_inception_in_a_sequential_model_converts() {
    let (_dir, path) = temp("classifier.keras");
    let dense = serde_json::json!({
        "module": "keras.layers", "class_name": "Dense", "registered_name": null,
        "config": {"name": "dense", "units": 2, "activation": "softmax", "use_bias": true},
        "build_config": {"input_shape": [null, 2048]}
    });
    let pool = serde_json::json!({
        "module": "keras.layers", "class_name": "GlobalAveragePooling2D", "registered_name": null,
        "config": {"name": "global_average_pooling2d", "data_format": "channels_last", "keepdims": false}
    });
    let config = serde_json::json!({
        "module": "keras", "class_name": "Sequential", "registered_name": null,
        "config": {"name": "sequential", "trainable": true, "layers": [real_config(), pool, dense]}
    });
    keras_archive(&path, &config, "layers/functional/", |root| {
        let dense = group_at(root, "layers/dense/vars");
        for (i, shape) in [vec![2048u64, 2], vec![2]].iter().enumerate() {
            let n = shape.iter().product::<u64>() as usize;
            dense
                .create_dataset(&i.to_string(), |b| {
                    b.with_f32_data(&vec![0.5; n]).with_shape(shape);
                })
                .unwrap();
        }
    });
    inspect_says(&path, "mapped by the model's config");
    convert_and_compare(&path, "Sequential wrapping InceptionV3");
}

#[test]
fn a_legacy_full_model_h5_converts_by_its_config() {
    let (_dir, path) = temp("inception_v3.h5");
    legacy_full_h5(&path, &legacy_config());
    inspect_says(
        &path,
        "legacy layout <layer>/<layer>/<weight>, mapped by the model's config",
    );
    convert_and_compare(&path, "Keras 3 legacy .h5");
}

#[test]
fn a_config_that_does_not_describe_inception_is_refused_naming_the_layer() {
    let (_dir, path) = temp("altered.h5");
    let mut config: Value = serde_json::from_str(&legacy_config()).unwrap();
    let layer = config["config"]["layers"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|l| l["config"]["name"] == "conv2d_7")
        .unwrap();
    layer["config"]["kernel_size"] = serde_json::json!([3, 3]);
    legacy_full_h5(&path, &config.to_string());
    let out = path.with_extension("out.safetensors");
    let err = format!(
        "{:#}",
        convert::convert(&path, &out, &Default::default()).unwrap_err()
    );
    assert!(
        err.contains("layer conv2d_7") && err.contains("mixed0/branch5x5_2"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn keras_2_lists_the_layers_in_the_same_walk_as_keras_3() {
    // The nsfwjs model was saved by Keras 2 (TF.js's topology keeps
    // model.layers in order, layers named in creation order): its convs come
    // in the walk the definition records from a Keras 3 file, so mapping a
    // Keras 2 full-model config by that walk is sound too.
    let dir = tempfile::tempdir().unwrap();
    retrain::convert::default_weights::fetch_model(
        dir.path(),
        retrain::model::Architecture::InceptionV3,
    )
    .unwrap();
    let model = retrain::convert::tfjs::TfjsModel::read(dir.path()).unwrap();
    let convs: Vec<u32> = model
        .layers()
        .iter()
        .filter(|l| l["class_name"] == "Conv2D")
        .map(|l| creation_number(l["config"]["name"].as_str().unwrap()).unwrap() - 1)
        .collect();
    let creation = retrain::model::inception_v3::keras_order();
    let walk: Vec<String> = convs
        .iter()
        .map(|&k| creation[k as usize - 1].clone())
        .collect();
    assert_eq!(walk, retrain::model::inception_v3::keras_walk_order());
}
