//! convert-weights on MobileNet V2 files: nsfwjs's TF.js MobileNet (fetched
//! with npm) and the same weights written as Keras's legacy `.h5` names them
//! (`mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5`:
//! `<layer>/<layer>/<weight>`, depthwise kernels [3, 3, C, 1], batch norms
//! with gamma) convert to identical tensors; a mis-shaped file is refused
//! naming the tensor.

mod common;

use common::nsfwjs::{hwio_to_oihw, write_f32_safetensors};

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

/// The tensors of the base network's layers (the _no_top file's content), unmapped.
fn base_tensors(source: &convert::SourceWeights) -> Vec<Found> {
    (source.tensors.iter())
        .filter(|f| f.role.is_some())
        .map(|f| Found {
            name: f.name.clone(),
            shape: f.shape.clone(),
            data: f.data.clone(),
            role: None,
        })
        .collect()
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
    let base = base_tensors(&source);
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
    let base = base_tensors(&source);
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

#[test]
fn a_torchvision_mobilenet_converts_with_its_names_epsilon_and_padding() {
    let dir = tempfile::tempdir().unwrap();
    let source = nsfwjs_mobilenet(dir.path());
    let order = mobilenet_v2::keras_order();
    let by_role: std::collections::BTreeMap<(u32, convert::Part), &Found> = source
        .tensors
        .iter()
        .filter_map(|f| Some((f.role?, f)))
        .collect();
    // torchvision's names: features.0.0 (stem), features.1.conv.{0.0, 1}, features.N.conv.{0.0, 1.0, 2}, features.18.0.
    let mut modules = vec![("features.0.0".to_string(), "features.0.1".to_string())];
    modules.push(("features.1.conv.0.0".into(), "features.1.conv.0.1".into()));
    modules.push(("features.1.conv.1".into(), "features.1.conv.2".into()));
    for f in 2..=17 {
        for (c, b) in [
            ("conv.0.0", "conv.0.1"),
            ("conv.1.0", "conv.1.1"),
            ("conv.2", "conv.3"),
        ] {
            modules.push((format!("features.{f}.{c}"), format!("features.{f}.{b}")));
        }
    }
    modules.push(("features.18.0".into(), "features.18.1".into()));
    assert_eq!(modules.len(), order.len());
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for (k, (conv, bn)) in (1u32..).zip(&modules) {
        let kernel = by_role[&(k, convert::Part::Kernel)];
        // Keras [kh, kw, in, out], or [kh, kw, C, 1] for a depthwise kernel (= [kh, kw, 1, C]).
        let s = &kernel.shape;
        let hwio = if order[k as usize - 1].ends_with("depthwise") {
            [s[0], s[1], 1, s[2]]
        } else {
            [s[0], s[1], s[2], s[3]]
        };
        let (oihw, shape) = hwio_to_oihw(&kernel.data, &hwio);
        tensors.push((format!("{conv}.weight"), shape, oihw));
        for (part, name) in [
            (convert::Part::Gamma, "weight"),
            (convert::Part::Beta, "bias"),
            (convert::Part::Mean, "running_mean"),
            (convert::Part::Variance, "running_var"),
        ] {
            let f = by_role[&(k, part)];
            tensors.push((format!("{bn}.{name}"), f.shape.clone(), f.data.clone()));
        }
    }
    tensors.push((
        "classifier.1.weight".into(),
        vec![1000, 1280],
        vec![0.5; 1_280_000],
    ));
    let path = dir.path().join("mobilenet_v2.safetensors");
    write_f32_safetensors(&path, &tensors);

    let out = dir.path().join("torch.safetensors");
    let info = convert::convert(&path, &out, &Default::default()).unwrap();
    assert_eq!(info.architecture, "mobilenet_v2");
    assert!(info.pytorch_padding);
    assert_eq!(
        info.normalization,
        retrain::model::weights::Normalization::imagenet()
    );
    // Every layer folded with torchvision's batch-norm epsilon, 1e-5.
    let file = WeightFile::open(&out).unwrap();
    let graph = graph();
    for (k, layer) in (1u32..).zip(graph.weighted_layers()) {
        assert_eq!(layer.name, order[k as usize - 1]);
        let f = |p| &by_role[&(k, p)].data;
        let bn = convert::BatchNorm {
            gamma: Some(f(convert::Part::Gamma)),
            beta: f(convert::Part::Beta),
            mean: f(convert::Part::Mean),
            variance: f(convert::Part::Variance),
            epsilon: 1e-5,
        };
        let (w, b) = convert::fold_batch_norm(f(convert::Part::Kernel), &bn);
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(
            file.tensor_bytes(&layer.weight_name(), &layer.weight_shape)
                .unwrap(),
        );
        let bias: Vec<f32> = bytemuck::pod_collect_to_vec(
            file.tensor_bytes(&layer.bias_name(), &[layer.outputs])
                .unwrap(),
        );
        assert!(
            common::rel_l2(&got, &w) < 1e-6 && common::rel_l2(&bias, &b) < 1e-6,
            "{}",
            layer.name
        );
    }
}
