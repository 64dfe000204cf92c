//! The nsfwjs Inception V3 as a test fixture: its raw weights (fetched with
//! npm once per test binary) and their direct conversion, for the tests that
//! write the same weights in another format and convert them back.

use hdf5_pure::Group;
use retrain::convert::{self, default_weights, tfjs, Found, Overrides, Part, SourceWeights};
use retrain::engine::{Engine, Merging};
use retrain::gpu::Gpu;
use retrain::model::weights::{Normalization, WeightFile};
use retrain::model::Architecture;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// nsfwjs's raw weights and their direct conversion, once per test binary.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub source: SourceWeights,
    pub direct: PathBuf,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        default_weights::fetch_model(&model, Architecture::InceptionV3)
            .expect("npm pack nsfwjs@4.4.0");
        let source = tfjs::read_source(&model).unwrap();
        let direct = dir.path().join("direct.safetensors");
        convert::write_engine_file(&source, &direct, false).unwrap();
        Fixture {
            _dir: dir,
            source,
            direct,
        }
    })
}

/// Conv `k`'s parts (Keras order, HWIO kernel) from the nsfwjs source.
pub fn parts() -> BTreeMap<(u32, Part), &'static Found> {
    fixture()
        .source
        .tensors
        .iter()
        .filter_map(|f| f.role.map(|r| (r, f)))
        .collect()
}

pub const BN_PARTS: [(Part, &str); 3] = [
    (Part::Beta, "beta"),
    (Part::Mean, "moving_mean"),
    (Part::Variance, "moving_variance"),
];

/// Writes `f` as a float32 dataset `name` of `group`.
pub fn write_h5(group: &Group, name: &str, f: &Found) {
    let shape: Vec<u64> = f.shape.iter().map(|&d| d as u64).collect();
    group
        .create_dataset(name, |b| {
            b.with_f32_data(&f.data).with_shape(&shape);
        })
        .unwrap();
}

/// Converts `source` as the golden tensors were computed (nsfwjs's x/255,
/// Keras's average pools) and checks every tensor against the direct
/// conversion, within 1e-6 relative.
pub fn convert_and_compare(source: &Path, what: &str) -> PathBuf {
    let out = source.with_extension("engine.safetensors");
    let overrides = Overrides {
        normalization: Some(Normalization::unit()),
        pytorch_padding: Some(false),
        half_weights: false,
    };
    let info = convert::convert(source, &out, &overrides).unwrap();
    assert_eq!(info.normalization, Normalization::unit());
    let ours = WeightFile::open(&out).unwrap();
    let direct = WeightFile::open(&fixture().direct).unwrap();
    let graph = retrain::model::inception_v3::inception_v3(299, 299).unwrap();
    for conv in graph.convs() {
        for (name, shape) in [
            (conv.weight_name(), conv.weight_shape().to_vec()),
            (conv.bias_name(), vec![conv.output.channels as usize]),
        ] {
            let a: Vec<f32> =
                bytemuck::pod_collect_to_vec(ours.tensor_bytes(&name, &shape).unwrap());
            let b: Vec<f32> =
                bytemuck::pod_collect_to_vec(direct.tensor_bytes(&name, &shape).unwrap());
            let err = super::rel_l2(&a, &b);
            assert!(err <= 1e-6, "{what}: {name} differs by {err:e}");
        }
    }
    out
}

/// The small golden bottleneck with a converted weight file.
pub fn check_golden(weights: &Path, what: &str) {
    let err = golden_error(weights);
    assert!(err <= 1e-4, "{what}: golden bottleneck off by {err:e}");
}

/// Relative L2 error of the small golden bottleneck computed with `weights`.
pub fn golden_error(weights: &Path) -> f64 {
    golden_error_of(weights, "small_astronaut_139x139", 139, Merging::None)
}

/// Relative L2 error of golden bottleneck `name` (input `input_{name}.bin`, size `side`).
pub fn golden_error_of(weights: &Path, name: &str, side: u32, merging: Merging) -> f64 {
    let file = WeightFile::open(weights).unwrap();
    let mut engine = Engine::new(Gpu::new().unwrap(), &file, Some((side, side))).unwrap();
    engine.set_merging(merging).unwrap();
    let reference = |name: &str| {
        let bytes = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/reference")
                .join(name),
        )
        .unwrap();
        bytemuck::pod_collect_to_vec::<u8, f32>(&bytes)
    };
    let input = reference(&format!("input_{name}.bin"));
    let out = engine.run_tensors(&input, 1, &["bottleneck"]).unwrap();
    super::rel_l2(
        &out[0],
        &reference(&format!("bottleneck_{}.bin", name.trim_end_matches("_299"))),
    )
}

/// [kh, kw, in, out] -> [out, in, kh, kw].
pub fn hwio_to_oihw(hwio: &[f32], shape: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let (kh, kw, ic, oc) = (shape[0], shape[1], shape[2], shape[3]);
    let mut out = vec![0.0; hwio.len()];
    for y in 0..kh {
        for x in 0..kw {
            for i in 0..ic {
                for o in 0..oc {
                    out[((o * ic + i) * kh + y) * kw + x] = hwio[((y * kw + x) * ic + i) * oc + o];
                }
            }
        }
    }
    (out, vec![oc, ic, kh, kw])
}

/// (name, shape, f32 values) as a safetensors file, as timm writes its weights.
pub fn write_f32_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    use safetensors::tensor::{Dtype, TensorView};
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            let view = TensorView::new(Dtype::F32, s.clone(), bytemuck::cast_slice(d)).unwrap();
            (n.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}
