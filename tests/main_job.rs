//! The README's main job, exactly as written there, run as a new user would:
//! from a folder holding the example data, with an empty output folder, on a
//! terminal (a pseudo-terminal from util-linux's `script`). It must print a
//! screenful, not thousands of lines, and end with a test split of at least
//! 20 images, the report's path and the command to try next.

use std::path::Path;
use std::process::Command;

/// The arguments after `cargo run --release --` of the README's main job.
fn main_job_args() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("cargo run --release -- --image-dir"))
        .expect("README.md has no main job line");
    let args = line.trim_start_matches("cargo run --release --");
    args.split_whitespace().map(String::from).collect()
}

#[test]
fn readme_main_job_prints_a_screenful_and_tests_on_twenty_images() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    std::os::unix::fs::symlink(examples, root.join("examples")).unwrap();
    let command = format!(
        "stty cols 200 rows 50; exec {} {}",
        env!("CARGO_BIN_EXE_retrain"),
        main_job_args().join(" ")
    );
    let o = Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .current_dir(root)
        .output()
        .expect("this test needs util-linux's script");
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{shown}");
    let lines = shown.matches('\n').count();
    assert!(lines <= 60, "{lines} lines on the terminal:\n{shown}");
    assert!(
        !shown.contains("Step 10:"),
        "per-step lines on a terminal:\n{shown}"
    );

    let out = root.join("retrain-output");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let n = metrics["final"]["test"]["n"].as_u64().unwrap();
    assert!(n >= 20, "the test split has {n} images");
    let last: Vec<&str> = shown.trim_end().lines().rev().take(4).collect();
    let ending = last.join("\n");
    assert!(
        ending.contains("Report: retrain-output/report.html"),
        "{ending}"
    );
    assert!(
        ending.contains("retrain classify --graph retrain-output/model.safetensors"),
        "{ending}"
    );
    assert!(ending.contains(&format!("(N={n};")), "{ending}");
    assert!(out.join("report.html").is_file());
    // The per-step lines a terminal does not show are all in train.log.
    let log = std::fs::read_to_string(out.join("train.log")).unwrap();
    assert!(log.contains("Step 10: Validation accuracy"), "{log}");
    assert!(log.contains("Report: retrain-output/report.html"));
}
