//! convert-weights on MobileNet V2 files: nsfwjs's TF.js MobileNet (fetched
//! with npm) and the same weights written as Keras's legacy `.h5` names them
//! (`mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5`:
//! `<layer>/<layer>/<weight>`, depthwise kernels [3, 3, C, 1], batch norms
//! with gamma) convert to identical tensors; a mis-shaped file is refused
//! naming the tensor.

mod common;

use hdf5_pure::File as H5File;
use retrain::convert::{self, default_weights, tfjs, Found};
use retrain::model::graph::Graph;
use retrain::model::weights::WeightFile;
use retrain::model::{mobilenet_v2, Architecture};
use std::path::Path;

/// nsfwjs's MobileNet V2 read from its TF.js files.
fn nsfwjs_mobilenet(dir: &Path) -> convert::SourceWeights {
    let model = dir.join("model");
    default_weights::fetch_model(&model, Architecture::MobileNetV2).expect("npm pack nsfwjs@4.4.0");
    tfjs::read_source(&model).unwrap()
}

/// The source's tensors as a Keras legacy `.h5` (Keras 2 `save_weights`
/// layout, `:0` suffixes), with `shape_of` deciding each dataset's shape.
fn write_keras_h5(path: &Path, tensors: &[Found], shape_of: impl Fn(&Found) -> Vec<usize>) {
    let file = H5File::create(path).unwrap();
    for f in tensors {
        let (layer, weight) = f.name.split_once('/').unwrap();
        let group = file
            .root()
            .group(layer)
            .unwrap_or_else(|_| file.root().create_group(layer).unwrap());
        let inner = group
            .group(layer)
            .unwrap_or_else(|_| group.create_group(layer).unwrap());
        let shape: Vec<u64> = shape_of(f).iter().map(|&d| d as u64).collect();
        inner
            .create_dataset(&format!("{weight}:0"), |b| {
                b.with_f32_data(&f.data).with_shape(&shape);
            })
            .unwrap();
    }
    file.commit().unwrap();
}

fn graph() -> Graph {
    mobilenet_v2::mobilenet_v2(224, 224).unwrap()
}

#[test]
fn tfjs_and_keras_h5_mobilenets_convert_to_the_same_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let source = nsfwjs_mobilenet(dir.path());
    assert_eq!(source.architecture, Architecture::MobileNetV2);
    let direct = dir.path().join("direct.safetensors");
    let info = convert::write_engine_file(&source, &direct, false).unwrap();
    assert_eq!(
        (
            info.architecture.as_str(),
            info.input_height,
            info.bottleneck_size
        ),
        ("mobilenet_v2", 224, 1280)
    );

    // Only the base network's layers, as the _no_top file holds them.
    let base: Vec<Found> = source
        .tensors
        .iter()
        .filter(|f| f.role.is_some())
        .map(|f| Found {
            name: f.name.clone(),
            shape: f.shape.clone(),
            data: f.data.clone(),
            role: None,
        })
        .collect();
    assert_eq!(base.len(), 35 + 17 + 52 * 4);
    let h5 = dir
        .path()
        .join("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5");
    write_keras_h5(&h5, &base, |f| f.shape.clone());
    let text = convert::inspect(&h5).unwrap();
    assert!(
        text.contains("mobilenet_v2, Keras HDF5, legacy layout") && text.contains("mapped by name"),
        "{text}"
    );
    assert!(text.contains("complete: 104 engine tensors"), "{text}");
    let converted = dir.path().join("keras.safetensors");
    convert::convert(&h5, &converted, &Default::default()).unwrap();

    let (a, b) = (
        WeightFile::open(&direct).unwrap(),
        WeightFile::open(&converted).unwrap(),
    );
    let graph = graph();
    a.check(&graph).unwrap();
    for layer in graph.weighted_layers() {
        for (name, shape) in [
            (layer.weight_name(), layer.weight_shape.clone()),
            (layer.bias_name(), vec![layer.outputs]),
        ] {
            assert_eq!(
                a.tensor_bytes(&name, &shape).unwrap(),
                b.tensor_bytes(&name, &shape).unwrap(),
                "{name}"
            );
        }
    }
}

#[test]
fn a_misshaped_mobilenet_file_is_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let source = nsfwjs_mobilenet(dir.path());
    let base: Vec<Found> = source
        .tensors
        .iter()
        .filter(|f| f.role.is_some())
        .map(|f| Found {
            name: f.name.clone(),
            shape: f.shape.clone(),
            data: f.data.clone(),
            role: None,
        })
        .collect();
    let h5 = dir.path().join("misshaped.h5");
    // block_3's depthwise kernel stored as a 3×3 conv from 1 to 144 channels' transpose.
    write_keras_h5(&h5, &base, |f| match f.name.as_str() {
        "block_3_depthwise/depthwise_kernel" => vec![3, 3, 1, 144],
        _ => f.shape.clone(),
    });
    let out = dir.path().join("out.safetensors");
    let err = format!(
        "{:#}",
        convert::convert(&h5, &out, &Default::default()).unwrap_err()
    );
    assert!(
        err.contains("block_3_depthwise/block_3_depthwise/depthwise_kernel:0 has shape [3, 3, 1, 144], expected [3, 3, 144, 1]"),
        "{err}"
    );
    assert!(!out.exists());
}
