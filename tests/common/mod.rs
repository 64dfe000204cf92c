//! Shared helpers for the integration tests: one GPU per test binary,
//! random data, buffer round trips and error measures.
#![allow(dead_code)]

pub mod nsfwjs;

use rand::{rngs::StdRng, Rng, SeedableRng};
use retrain::gpu::{kernels::Kernels, Gpu};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// A NaN with a recognisable payload: any element a kernel forgot to write keeps it.
pub const POISON: f32 = f32::from_bits(0x7fc0_dead);

pub fn gpu() -> &'static (Gpu, Kernels) {
    static GPU: OnceLock<(Gpu, Kernels)> = OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = Gpu::new().expect("a Vulkan adapter (install mesa-vulkan-drivers)");
        let kernels = Kernels::new(&gpu, false);
        (gpu, kernels)
    })
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Uniform values in [-1, 1), never all zero.
pub fn random_vec(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

pub fn upload(gpu: &Gpu, data: &[f32]) -> wgpu::Buffer {
    gpu.storage_buffer_with("test input", bytemuck::cast_slice(data))
}

pub fn poisoned(gpu: &Gpu, len: usize) -> wgpu::Buffer {
    upload(gpu, &vec![POISON; len])
}

pub fn download(gpu: &Gpu, buffer: &wgpu::Buffer, len: usize) -> Vec<f32> {
    let bytes = gpu.read_buffer(buffer, (len * 4) as u64).unwrap();
    bytemuck::pod_collect_to_vec(&bytes)
}

/// Asserts `actual` is within relative L2 `tolerance` of `expected`, printing the error.
pub fn assert_rel_l2(what: &str, actual: &[f32], expected: &[f32], tolerance: f64) {
    let err = rel_l2(actual, expected);
    eprintln!("{what}: relative L2 error {err:.2e}");
    assert!(
        err <= tolerance,
        "{what}: relative L2 error {err:.2e} > {tolerance:e}"
    );
}

/// ||a - b|| / ||reference||.
pub fn rel_l2(actual: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(actual.len(), reference.len());
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&a, &r) in actual.iter().zip(reference) {
        diff += (a as f64 - r as f64).powi(2);
        norm += (r as f64).powi(2);
    }
    (diff / norm).sqrt()
}

/// Every element matches: poison where the reference left poison, otherwise
/// within `tol` of it (relative to the reference's largest magnitude).
pub fn assert_close(actual: &[f32], reference: &[f32], tol: f32, what: &str) {
    assert_eq!(actual.len(), reference.len(), "{what}: length");
    let scale = reference
        .iter()
        .filter(|v| v.is_finite())
        .fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (&a, &r)) in actual.iter().zip(reference).enumerate() {
        if r.to_bits() == POISON.to_bits() {
            assert_eq!(
                a.to_bits(),
                POISON.to_bits(),
                "{what}: element {i} written outside its slice"
            );
        } else {
            assert!(
                (a - r).abs() <= tol * scale,
                "{what}: element {i} is {a}, expected {r} (tolerance {})",
                tol * scale
            );
        }
    }
}

/// The `retrain` binary run in `dir` with `args`.
pub fn retrain(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_retrain"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

/// A finished command's stderr, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The example screenshots shipped with the repository (examples/webstyle).
pub fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/webstyle")
}

/// A folder `root/images/{broken,normal}` with the first `per_class` example
/// screenshots of each class.
pub fn example_folder(root: &Path, per_class: usize) {
    image_folder_from(&examples(), root, per_class);
}

/// A folder `root/images/{broken,normal}` with the first `per_class` images
/// (by name) of each class folder of `source`.
pub fn image_folder_from(source: &Path, root: &Path, per_class: usize) {
    for class in ["broken", "normal"] {
        let dest = root.join("images").join(class);
        std::fs::create_dir_all(&dest).unwrap();
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(source.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.iter().take(per_class) {
            std::fs::copy(f, dest.join(f.file_name().unwrap())).unwrap();
        }
    }
}

/// Flags of a small MobileNet V2 run on `images/` (96×96, a quarter of the
/// images for testing, one learning rate): the kind of run a test repeats.
pub fn small_run_args(steps: &str, l2: &str, seed: &str) -> Vec<String> {
    let model = ["--architecture", "mobilenet_v2", "--input-size", "96"];
    let mut args: Vec<&str> = vec!["--image-dir", "images"];
    args.extend(model);
    args.extend([
        "--testing-percentage",
        "25",
        "--how-many-training-steps",
        steps,
    ]);
    args.extend([
        "--sweep-learning-rates",
        "0.01",
        "--sweep-l2",
        l2,
        "--seed",
        seed,
    ]);
    args.into_iter().map(String::from).collect()
}
