//! A trained classifier as one ONNX model (opset 17) that other runtimes
//! load: uint8 NHWC pixels at the model's input size → normalisation → the
//! base network → global pool → the head → softmax, with the labels and the
//! preprocessing in its metadata. Encoded with prost (onnx_proto.rs).

mod network;
mod onnx_proto;

use crate::head::classifier::Classifier;
use crate::model::graph::OUTPUT;
use crate::model::weights::WeightFile;
use crate::model::Architecture;
use anyhow::Result;
use network::{ints, Nodes};
use onnx_proto::*;
use prost::Message;

/// The graph's input: uint8 pixels, NHWC, already at the model's input size.
pub const INPUT_NAME: &str = "image";
const OPSET: i64 = 17;
const IR_VERSION: i64 = 8;

/// The ONNX model of `classifier` on the base network of `file`; the
/// probabilities are output under `final_tensor_name`, the bottleneck under "bottleneck".
pub fn onnx_model(
    classifier: &Classifier,
    file: &WeightFile,
    final_tensor_name: &str,
) -> Result<Vec<u8>> {
    let (h, w) = classifier.input_size;
    let mut graph = Architecture::from_name(&file.info.architecture)?.build(h, w)?;
    if file.info.pytorch_padding {
        graph.pad_as_pytorch();
    }
    let mut nodes = Nodes::default();
    let normalized = preprocess(&mut nodes, classifier);
    let pooled = network::write_network(&mut nodes, &graph, file, &normalized)?;
    nodes.add_named("Flatten", &[&pooled], vec![network::int("axis", 1)], OUTPUT);
    let (dim, classes) = (classifier.dim(), classifier.labels.len());
    let weights = nodes.floats("final_weights", &[dim, classes], &classifier.weights);
    let biases = nodes.floats("final_biases", &[classes], &classifier.biases);
    let logits = nodes.add("Gemm", &[OUTPUT, &weights, &biases], vec![]);
    nodes.add_named(
        "Softmax",
        &[&logits],
        vec![network::int("axis", 1)],
        final_tensor_name,
    );
    let graph = GraphProto {
        node: nodes.nodes,
        name: format!("retrain {}", classifier.architecture.name()),
        initializer: nodes.initializers,
        input: vec![value_info(
            INPUT_NAME,
            UINT8,
            &[None, Some(h), Some(w), Some(3)],
        )],
        output: vec![
            value_info(final_tensor_name, FLOAT, &[None, Some(classes as u32)]),
            value_info(OUTPUT, FLOAT, &[None, Some(dim as u32)]),
        ],
    };
    let model = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "retrain".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!(
            "{} classifier retrained by retrain",
            classifier.architecture.name()
        ),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        metadata_props: metadata(classifier, final_tensor_name),
    };
    Ok(model.encode_to_vec())
}

/// uint8 NHWC → x·scale + offset per channel → float NCHW; returns its name.
fn preprocess(nodes: &mut Nodes, classifier: &Classifier) -> String {
    let n = &classifier.normalization;
    let cast = nodes.add(
        "Cast",
        &[INPUT_NAME],
        vec![network::int("to", FLOAT as i64)],
    );
    let scale = nodes.floats("input_scale", &[3], &n.scale);
    let offset = nodes.floats("input_offset", &[3], &n.offset);
    let scaled = nodes.add("Mul", &[&cast, &scale], vec![]);
    let shifted = nodes.add("Add", &[&scaled, &offset], vec![]);
    nodes.add("Transpose", &[&shifted], vec![ints("perm", &[0, 3, 1, 2])])
}

/// A tensor's name, element type and shape (None: the batch, named N).
fn value_info(name: &str, elem_type: i32, shape: &[Option<u32>]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|d| match d {
            Some(size) => Dimension {
                dim_value: Some(*size as i64),
                dim_param: None,
            },
            None => Dimension {
                dim_value: None,
                dim_param: Some("N".into()),
            },
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            }),
        }),
    }
}

fn metadata(classifier: &Classifier, final_tensor_name: &str) -> Vec<StringStringEntryProto> {
    let (h, w) = classifier.input_size;
    let n = &classifier.normalization;
    let entries = [
        ("labels", serde_json::to_string(&classifier.labels).expect("strings serialise")),
        ("architecture", classifier.architecture.name().into()),
        ("input", format!("{INPUT_NAME}: uint8 [N, {h}, {w}, 3], RGB, NHWC")),
        (
            "resize",
            format!("resize every image to {h}x{w} before feeding it: bilinear, half-pixel centres, no antialiasing (tf.image.resize), as retrain does"),
        ),
        ("normalization", format!("{} ({}): x*{:?} + {:?}, inside the model", n.name, n.describe(), n.scale, n.offset)),
        ("outputs", format!("{final_tensor_name}: probabilities [N, classes] in the order of labels; {OUTPUT}: [N, {}]", classifier.dim())),
        ("base_fingerprint", classifier.base_fingerprint.clone()),
    ];
    entries
        .into_iter()
        .map(|(key, value)| StringStringEntryProto {
            key: key.into(),
            value,
        })
        .collect()
}
