//! `retrain features` and `retrain info` as a user runs them, bad input included.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn retrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_retrain"))
        .args(args)
        .output()
        .expect("run retrain")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn dataset(class: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/datasets/webstyle-dev")
        .join(class)
}

/// Rows and columns from an .npy header, and its float32 data.
fn read_npy(path: &Path) -> (usize, usize, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"));
    let shape = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let dims: Vec<usize> = shape
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    (
        dims[0],
        dims[1],
        bytemuck::pod_collect_to_vec(&bytes[10 + len..]),
    )
}

#[test]
fn features_of_a_folder_skip_bad_files_and_list_rows() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    std::fs::copy(
        dataset("normal").join("ws_03ef0dbdf2.jpg"),
        images.join("b.jpg"),
    )
    .unwrap();
    std::fs::copy(
        dataset("broken").join("ws_037b3653eb.jpg"),
        images.join("sub/a.JPG"),
    )
    .unwrap();
    let jpeg = std::fs::read(dataset("broken").join("ws_1067e3a242.jpg")).unwrap();
    std::fs::write(images.join("c_truncated.jpg"), &jpeg[..jpeg.len() / 3]).unwrap();
    std::fs::write(images.join("d_not_an_image.png"), b"hello").unwrap();
    std::fs::write(images.join("notes.txt"), b"not an image extension").unwrap();
    let out = dir.path().join("features.npy");

    let o = retrain(&[
        "features",
        "--image-dir",
        images.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--input-size",
        "96x120",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("d_not_an_image.png"),
        "no warning for the non-image: {err}"
    );
    // The truncated JPEG either decodes partially (kept) or is reported by name.
    let truncated_kept = !err.contains("c_truncated.jpg");

    let (rows, cols, data) = read_npy(&out);
    let listed: Vec<String> = std::fs::read_to_string(dir.path().join("features.npy.paths"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let mut expected = vec![images.join("b.jpg")];
    if truncated_kept {
        expected.push(images.join("c_truncated.jpg"));
    }
    expected.push(images.join("sub/a.JPG"));
    let expected: Vec<String> = expected.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(listed, expected, "rows follow the sorted paths");
    assert_eq!((rows, cols), (expected.len(), 2048));
    // Post-ReLU averages: finite, non-negative, not all zero, and different per image.
    assert!(data.iter().all(|v| v.is_finite() && *v >= 0.0));
    assert!(data[..2048].iter().any(|v| *v > 0.0));
    assert_ne!(&data[..2048], &data[(rows - 1) * 2048..]);
}

#[test]
fn features_fail_when_nothing_is_readable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x.png"), b"no").unwrap();
    let out = dir.path().join("f.npy");
    let o = retrain(&[
        "features",
        "--image-dir",
        dir.path().to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--input-size",
        "80",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("x.png"));
    assert!(!out.exists(), "no output may be written");
}

#[test]
fn too_small_input_size_is_rejected() {
    let o = retrain(&[
        "features",
        "--image-dir",
        ".",
        "--output",
        "/nonexistent/x.npy",
        "--input-size",
        "60x200",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("at least 75"), "{}", stderr(&o));
}

#[test]
fn info_reports_adapter_and_model() {
    let o = retrain(&["info", "--input-size", "139x139"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    for needle in [
        "adapter:",
        "backend:",
        "max storage binding",
        "fingerprint:",
        "normalisation: unit",
    ] {
        assert!(text.contains(needle), "missing {needle} in {text}");
    }
}

#[test]
fn missing_npm_gives_manual_instructions() {
    let cache = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_retrain"))
        .args(["info"])
        .env("RETRAIN_CACHE_DIR", cache.path())
        .env("PATH", "")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("npm") && err.contains("convert-weights --from"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn mobilenet_v2_features_are_1280_wide() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.npy");
    let o = retrain(&[
        "features",
        "--architecture",
        "mobilenet_v2",
        "--output",
        out.to_str().unwrap(),
        dataset("broken")
            .join("ws_1067e3a242.jpg")
            .to_str()
            .unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (rows, cols, data) = read_npy(&out);
    assert_eq!((rows, cols), (1, 1280));
    assert!(data.iter().all(|v| v.is_finite() && *v >= 0.0) && data.iter().any(|v| *v > 0.0));
}
