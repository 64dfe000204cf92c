//! MobileNet V2 against ../shared/reference/mobilenet_v2: tensors computed by
//! Keras's MobileNetV2 from the same nsfwjs weights (the default MobileNet
//! weights, fetched with npm and converted on first use, then cached):
//! the four 224×224 inputs in one batch with intermediates, a 96×96 input
//! and a non-square 160×200 one whose odd sizes exercise TF's padding rule.

mod common;

use common::assert_rel_l2;
use retrain::convert::default_weights;
use retrain::engine::Engine;
use retrain::gpu::Gpu;
use retrain::model::weights::WeightFile;
use retrain::model::Architecture;
use std::path::Path;

const TOLERANCE: f64 = 1e-4;

fn load(name: &str) -> Vec<f32> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference/mobilenet_v2")
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytemuck::pod_collect_to_vec(&bytes)
}

fn engine(input: (u32, u32)) -> Engine {
    let path = default_weights::resolve(None, Architecture::MobileNetV2)
        .expect("default MobileNet V2 weights");
    let file = WeightFile::open(&path).unwrap();
    assert_eq!(file.info.architecture, "mobilenet_v2");
    Engine::new(Gpu::new().unwrap(), &file, Some(input)).unwrap()
}

fn check(what: &str, actual: &[f32], expected: &[f32]) {
    assert_rel_l2(what, actual, expected, TOLERANCE);
}

const IMAGES: [&str; 4] = ["0_astronaut", "1_chelsea", "2_coffee", "3_rocket"];

#[test]
fn batch_of_four_at_224_matches_keras_with_intermediates() {
    let mut engine = engine((224, 224));
    assert_eq!(engine.bottleneck_size(), 1280);
    let input: Vec<f32> = IMAGES
        .iter()
        .flat_map(|n| load(&format!("input_{n}_224.bin")))
        .collect();
    let taps = [
        ("Conv1_relu", "act_0_astronaut_Conv1_relu_112x112x32.bin"),
        ("block_2_add", "act_0_astronaut_block_2_add_56x56x24.bin"),
        (
            "block_6_project_BN",
            "act_0_astronaut_block_6_project_BN_14x14x64.bin",
        ),
        (
            "block_13_expand_relu",
            "act_0_astronaut_block_13_expand_relu_14x14x576.bin",
        ),
        (
            "block_13_depthwise_relu",
            "act_0_astronaut_block_13_depthwise_relu_7x7x576.bin",
        ),
        ("out_relu", "act_0_astronaut_out_relu_7x7x1280.bin"),
    ];
    let mut outputs: Vec<&str> = taps.iter().map(|t| t.0).collect();
    outputs.push("bottleneck");
    let out = engine.run_tensors(&input, 4, &outputs).unwrap();
    for (i, (tap, file)) in taps.iter().enumerate() {
        check(tap, &out[i][..out[i].len() / 4], &load(file));
    }
    for (i, name) in IMAGES.iter().enumerate() {
        let row = &out[taps.len()][i * 1280..(i + 1) * 1280];
        check(
            &format!("bottleneck {name}"),
            row,
            &load(&format!("bottleneck_{name}.bin")),
        );
    }
}

#[test]
fn small_and_non_square_inputs_match_keras() {
    let mut square = engine((96, 96));
    let out = square
        .run_tensors(&load("input_small_astronaut_96x96.bin"), 1, &["bottleneck"])
        .unwrap();
    check(
        "96×96 bottleneck",
        &out[0],
        &load("bottleneck_small_astronaut_96x96.bin"),
    );

    let mut wide = self::engine((160, 200));
    let out = wide
        .run_tensors(
            &load("input_small_chelsea_160x200.bin"),
            1,
            &["out_relu", "bottleneck"],
        )
        .unwrap();
    check(
        "160×200 out_relu",
        &out[0],
        &load("act_small_chelsea_160x200_out_relu_5x7x1280.bin"),
    );
    check(
        "160×200 bottleneck",
        &out[1],
        &load("bottleneck_small_chelsea_160x200.bin"),
    );
}
