//! Damaged, incomplete or foreign weight files are refused with an error that
//! names the file or tensor; the converter refuses what is not Inception V3.

mod common;

use retrain::convert::default_weights;
use retrain::gpu::scheduler::{GpuWeights, Plan};
use retrain::gpu::tuning::Tuning;
use retrain::model::graph::{Graph, Padding};
use retrain::model::inception_v3::inception_v3;
use retrain::model::inception_v3::keras_order;
use retrain::model::weights::{self, ModelInfo, Normalization, Tensor, WeightFile};
use retrain::model::Architecture;
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

fn info(architecture: &str) -> ModelInfo {
    ModelInfo {
        architecture: architecture.into(),
        source: "test".into(),
        input_height: 299,
        input_width: 299,
        bottleneck_size: 2048,
        bottleneck_layer: "test".into(),
        normalization: Normalization::unit(),
        pytorch_padding: false,
        dtype: "f32".into(),
        fingerprint: String::new(),
    }
}

/// A weight file with the first conv right and `second` as the second conv's weight.
fn partial_file(path: &Path, second: Option<Vec<usize>>) {
    let mut tensors = vec![
        Tensor {
            name: "stem/conv2d_1a_3x3.weight".into(),
            shape: vec![3, 3, 3, 32],
            data: vec![0.5; 864],
        },
        Tensor {
            name: "stem/conv2d_1a_3x3.bias".into(),
            shape: vec![32],
            data: vec![0.1; 32],
        },
    ];
    if let Some(shape) = second {
        let n = shape.iter().product();
        tensors.push(Tensor {
            name: "stem/conv2d_2a_3x3.weight".into(),
            shape,
            data: vec![0.25; n],
        });
    }
    weights::write(path, info("inception_v3"), &tensors).unwrap();
}

fn check_error(path: &Path) -> String {
    let file = WeightFile::open(path).and_then(|f| f.check(&inception_v3(299, 299)?));
    format!("{:#}", file.expect_err("must be refused"))
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    partial_file(&path, None);
    let err = check_error(&path);
    assert!(
        err.contains("stem/conv2d_2a_3x3.weight") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn misshaped_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    partial_file(&path, Some(vec![3, 3, 32, 31]));
    let err = check_error(&path);
    assert!(
        err.contains("stem/conv2d_2a_3x3.weight") && err.contains("[3, 3, 32, 32]"),
        "{err}"
    );
}

#[test]
fn other_architecture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    weights::write(
        &path,
        info("resnet50"),
        &[Tensor {
            name: "x".into(),
            shape: vec![1],
            data: vec![1.0],
        }],
    )
    .unwrap();
    let err = check_error(&path);
    assert!(err.contains("resnet50"), "{err}");
}

#[test]
fn truncated_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    partial_file(&path, Some(vec![3, 3, 32, 32]));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let err = check_error(&path);
    assert!(
        err.contains("w.safetensors") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn cli_reports_bad_weights_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    partial_file(&path, None);
    let o = Command::new(env!("CARGO_BIN_EXE_retrain"))
        .args(["info", "--weights", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("stem/conv2d_2a_3x3.weight") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn converter_refuses_a_folder_without_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let o = Command::new(env!("CARGO_BIN_EXE_convert-weights"))
        .args([
            "--from",
            dir.path().to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no TF.js model"));
    assert!(!out.exists());
}

#[test]
fn default_weights_carry_the_expected_metadata() {
    let file =
        WeightFile::open(&default_weights::resolve(None, Architecture::InceptionV3).unwrap())
            .unwrap();
    assert_eq!(file.info.architecture, "inception_v3");
    assert_eq!(file.info.normalization, Normalization::unit());
    assert_eq!(
        (
            file.info.input_height,
            file.info.input_width,
            file.info.bottleneck_size
        ),
        (299, 299, 2048)
    );
    assert!(file.info.source.starts_with("nsfwjs@4.4.0"));
    assert_eq!(file.info.fingerprint.len(), 32);
    file.check(&inception_v3(299, 299).unwrap()).unwrap();
}

/// A tiny network with two same-shaped 1×1 convs, "a" and "b", writing the
/// two halves of one tensor; `b_first` builds them in the other order.
fn two_convs(b_first: bool) -> Graph {
    let mut g = Graph::default();
    let x = g.tensor(5, 6, 4);
    g.name("input", x);
    let out = g.tensor(5, 6, 16);
    let [a, b] = out.split([8, 8]);
    let mut build = |name: &str, slice| g.conv_into(name, x, slice, (1, 1), 1, Padding::Same);
    if b_first {
        build("b", b).unwrap();
        build("a", a).unwrap();
    } else {
        build("a", a).unwrap();
        build("b", b).unwrap();
    }
    g.name("out", out);
    g
}

/// The output of `graph` on `input` with the weights of `path`.
fn run_graph(graph: &Graph, path: &Path, input: &[f32]) -> Vec<f32> {
    let (gpu, kernels) = common::gpu();
    let file = WeightFile::open(path).unwrap();
    let weights = GpuWeights::upload(gpu, &file, graph).unwrap();
    let plan = Plan::new(
        gpu,
        kernels,
        graph,
        &weights,
        &Tuning::load(gpu),
        1,
        &["out"],
    )
    .unwrap();
    gpu.queue
        .write_buffer(plan.input(), 0, bytemuck::cast_slice(input));
    plan.run(gpu, &[]).unwrap().remove(0)
}

#[test]
fn weights_are_bound_by_name_not_by_the_order_layers_are_built_in() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let mut rng = common::rng(31);
    let tensor = |name: &str, shape: Vec<usize>, rng: &mut _| Tensor {
        data: common::random_vec(rng, shape.iter().product()),
        name: name.into(),
        shape,
    };
    let tensors: Vec<Tensor> = ["a", "b"]
        .iter()
        .flat_map(|c| {
            [
                tensor(&format!("{c}.weight"), vec![1, 1, 4, 8], &mut rng),
                tensor(&format!("{c}.bias"), vec![8], &mut rng),
            ]
        })
        .collect();
    weights::write(&path, info("inception_v3"), &tensors).unwrap();
    let input = common::random_vec(&mut rng, 5 * 6 * 4);

    // Each half of the output is its own conv's: x·W + b, then ReLU.
    let built_in_order = run_graph(&two_convs(false), &path, &input);
    for (pixel, out) in built_in_order.chunks(16).enumerate() {
        for (half, t) in [(0, &tensors[0..2]), (1, &tensors[2..4])] {
            for o in 0..8 {
                let x = &input[pixel * 4..pixel * 4 + 4];
                let sum: f32 =
                    (0..4).map(|i| x[i] * t[0].data[i * 8 + o]).sum::<f32>() + t[1].data[o];
                let got = out[half * 8 + o];
                assert!(
                    (got - sum.max(0.0)).abs() < 1e-5,
                    "pixel {pixel} channel {o}: {got} vs {sum}"
                );
            }
        }
    }
    // Built in the other order, each layer still gets its own weights.
    assert_eq!(run_graph(&two_convs(true), &path, &input), built_in_order);
}

/// 1×1 convs from 4 to 8 channels named `convs`, constant weights.
fn conv_tensors(convs: &[&str]) -> Vec<Tensor> {
    convs
        .iter()
        .flat_map(|c| {
            [
                Tensor {
                    name: format!("{c}.weight"),
                    shape: vec![1, 1, 4, 8],
                    data: vec![0.5; 32],
                },
                Tensor {
                    name: format!("{c}.bias"),
                    shape: vec![8],
                    data: vec![0.5; 8],
                },
            ]
        })
        .collect()
}

#[test]
fn a_file_for_another_definition_of_the_network_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let check = |convs: &[&str]| {
        weights::write(&path, info("inception_v3"), &conv_tensors(convs)).unwrap();
        let file = WeightFile::open(&path).unwrap();
        format!("{:#}", file.check(&two_convs(false)).unwrap_err())
    };
    let err = check(&["a", "c"]);
    assert!(err.contains("\"b.weight\" is missing"), "{err}");
    // Every tensor the network reads, and one more, is refused too.
    let err = check(&["a", "b", "c"]);
    assert!(
        err.contains("no layer of the network reads") && err.contains("\"c."),
        "{err}"
    );
}

#[test]
fn files_of_the_first_layout_are_read_through_keras_order() {
    let dir = tempfile::tempdir().unwrap();
    let v2 = default_weights::resolve(None, Architecture::InceptionV3).unwrap();
    let bytes = std::fs::read(&v2).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta: HashMap<String, String> = header.metadata().clone().unwrap();
    let graph = inception_v3(299, 299).unwrap();
    let file = WeightFile::open(&v2).unwrap();
    // Rewrite the file as the first layout named it: conv2d_N in Keras's creation order.
    let old_name: HashMap<String, String> = keras_order()
        .into_iter()
        .zip(1..)
        .map(|(name, k)| (name, format!("conv2d_{k}")))
        .collect();
    let mut tensors = Vec::new();
    for conv in graph.convs() {
        let old = &old_name[&conv.name];
        for (what, shape) in [
            ("weight", conv.weight_shape().to_vec()),
            ("bias", vec![conv.output.channels as usize]),
        ] {
            let data = bytemuck::pod_collect_to_vec(
                file.tensor_bytes(&format!("{}.{what}", conv.name), &shape)
                    .unwrap(),
            );
            tensors.push(Tensor {
                name: format!("{old}.{what}"),
                shape,
                data,
            });
        }
    }
    assert_eq!(st.len(), tensors.len());
    meta.insert("layout".into(), "retrain-v1: conv2d_N.weight [kh,kw,in,out] f32 with batch norm folded, conv2d_N.bias [out]".into());
    let v1 = dir.path().join("v1.safetensors");
    weights::write_tensors(&v1, &tensors, meta).unwrap();
    let old = WeightFile::open(&v1).unwrap();
    old.check(&graph).unwrap();
    for conv in graph.convs() {
        let shape = conv.weight_shape();
        assert_eq!(
            old.tensor_bytes(&conv.weight_name(), &shape).unwrap(),
            file.tensor_bytes(&conv.weight_name(), &shape).unwrap(),
            "{}",
            conv.name
        );
    }
}
