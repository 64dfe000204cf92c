//! The whole network against ../shared/reference: tensors computed by Keras
//! from the same nsfwjs weights. Uses the default weights (fetched with npm and
//! converted on first use, then cached).

mod common;

use common::{assert_rel_l2, gpu, rel_l2};
use retrain::convert::default_weights;
use retrain::data::distortion::Distortion;
use retrain::engine::{preprocess_params, Engine, Merging};
use retrain::gpu::kernels::submit;
use retrain::gpu::Gpu;
use retrain::model::weights::{Normalization, WeightFile};
use retrain::model::Architecture;
use std::path::{Path, PathBuf};

const TOLERANCE: f64 = 1e-4;

fn reference(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference")
        .join(name)
}

fn load(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(reference(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    bytemuck::pod_collect_to_vec(&bytes)
}

fn engine(input: (u32, u32)) -> Engine {
    let path = default_weights::resolve(None, Architecture::InceptionV3).expect("default weights");
    let file = WeightFile::open(&path).unwrap();
    Engine::new(Gpu::new().unwrap(), &file, Some(input)).unwrap()
}

fn check(what: &str, actual: &[f32], expected: &[f32]) {
    assert_rel_l2(what, actual, expected, TOLERANCE);
}

const IMAGES: [&str; 4] = ["0_astronaut", "1_chelsea", "2_coffee", "3_rocket"];

#[test]
fn full_size_batch_matches_keras() {
    let mut engine = engine((299, 299));
    let input: Vec<f32> = IMAGES
        .iter()
        .flat_map(|n| load(&format!("input_{n}_299.bin")))
        .collect();
    let outputs = ["stem", "mixed0", "mixed5", "mixed10", "bottleneck"];
    let out = engine.run_tensors(&input, 4, &outputs).unwrap();
    let first = |t: &Vec<f32>| t[..t.len() / 4].to_vec();
    check(
        "stem",
        &first(&out[0]),
        &load("act_0_astronaut_stem_35x35x192.bin"),
    );
    check(
        "mixed0",
        &first(&out[1]),
        &load("act_0_astronaut_mixed0_35x35x256.bin"),
    );
    check(
        "mixed5",
        &first(&out[2]),
        &load("act_0_astronaut_mixed5_17x17x768.bin"),
    );
    check(
        "mixed10",
        &first(&out[3]),
        &load("act_0_astronaut_mixed10_8x8x2048.bin"),
    );
    for (i, name) in IMAGES.iter().enumerate() {
        let row = &out[4][i * 2048..(i + 1) * 2048];
        check(
            &format!("bottleneck {name}"),
            row,
            &load(&format!("bottleneck_{name}.bin")),
        );
    }
}

#[test]
fn small_inputs_match_keras() {
    for (name, h, w) in [("astronaut", 139, 139), ("chelsea", 147, 195)] {
        let mut engine = engine((h, w));
        let input = load(&format!("input_small_{name}_{h}x{w}.bin"));
        let expected = load(&format!("bottleneck_small_{name}_{h}x{w}.bin"));
        let mut bottlenecks = vec![];
        // Each conv on its own, then every group of sibling 1×1 convs merged.
        for (merging, groups) in [(Merging::None, 0), (Merging::All, 10)] {
            engine.set_merging(merging).unwrap();
            assert_eq!(engine.merged_groups(), groups);
            let out = engine.run_tensors(&input, 1, &["bottleneck"]).unwrap();
            let what = format!("bottleneck {name} {h}x{w}, {merging:?} merged");
            check(&what, &out[0], &expected);
            bottlenecks.push(out.into_iter().next().unwrap());
        }
        let err = rel_l2(&bottlenecks[1], &bottlenecks[0]);
        assert!(err < 1e-6, "merging changed the bottleneck by {err:e}");
    }
}

fn decode(name: &str) -> image::RgbImage {
    image::open(reference(&format!("images/{name}.png")))
        .unwrap()
        .to_rgb8()
}

/// Decode + GPU resize + normalise, as `features` does it.
fn preprocess(img: &image::RgbImage, out: (u32, u32)) -> Vec<f32> {
    let (gpu, kernels) = gpu();
    let n = Normalization::signed();
    let src = (img.height(), img.width());
    let p = preprocess_params(&Distortion::none(out), src, 0, 0, out, &n);
    let len = (out.0 * out.1 * 3) as usize;
    let output = common::poisoned(gpu, len);
    let pixels = gpu.storage_buffer_with("pixels", img.as_raw());
    submit(gpu, &[&kernels.preprocess(gpu, &p, &pixels, &output)]);
    common::download(gpu, &output, len)
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn decode_and_resize_reproduce_the_inputs() {
    for name in IMAGES {
        let img = decode(&name[2..]);
        let err = max_abs(
            &preprocess(&img, (299, 299)),
            &load(&format!("input_{name}_299.bin")),
        );
        eprintln!("{name}: max abs {err:.2e}");
        assert!(err <= 1e-3, "{name}: max abs error {err}");
    }
    for (name, h, w) in [("astronaut", 139, 139), ("chelsea", 147, 195)] {
        let err = max_abs(
            &preprocess(&decode(name), (h, w)),
            &load(&format!("input_small_{name}_{h}x{w}.bin")),
        );
        assert!(err <= 1e-3, "{name} {h}x{w}: max abs error {err}");
    }
}

#[test]
fn images_to_bottlenecks_end_to_end() {
    // Decoded PNG -> GPU resize -> network, with Keras's [-1, 1] convention as in the reference.
    let mut engine = engine((147, 195));
    engine.info.normalization = Normalization::signed();
    let out = engine.bottlenecks(&[decode("chelsea")]).unwrap();
    check(
        "chelsea 147x195 from PNG",
        &out,
        &load("bottleneck_small_chelsea_147x195.bin"),
    );
}
