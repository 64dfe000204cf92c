//! A full disk and a read-only output folder: the run stops with an error
//! naming the file it could not write, and nothing already written is
//! damaged. The disk fills through a file-size limit (`ulimit -f`, with
//! SIGXFSZ ignored so that a write past it fails with EFBIG instead of
//! killing the process); the folder is made read-only with `chattr +i`,
//! which holds even for root (the tests may run as root).

mod common;

use common::{example_folder, small_run_args, stderr};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn args(seed: &str) -> Vec<String> {
    small_run_args("40", "0.01", seed)
}

/// `retrain ARGS` in `dir` with files limited to `limit_kib` KiB.
fn retrain_limited(dir: &Path, limit_kib: u64, args: &[String]) -> Output {
    let script = format!("trap '' XFSZ; ulimit -f {limit_kib}; exec \"$0\" \"$@\"",);
    Command::new("bash")
        .current_dir(dir)
        .args(["-c", &script, env!("CARGO_BIN_EXE_retrain")])
        .args(args)
        .output()
        .unwrap()
}

/// Files by name, with their size and a hash of their bytes.
type Files = BTreeMap<String, (usize, u64)>;

/// Every file of a folder (not below it).
fn files(dir: &Path) -> Files {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let bytes = std::fs::read(&p).unwrap();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::hash::Hash::hash(&bytes, &mut h);
            (name, (bytes.len(), std::hash::Hasher::finish(&h)))
        })
        .collect()
}

fn assert_clean_failure(o: &Output, names: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "the run should have failed:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(names), "the error should name {names}:\n{err}");
}

/// A folder with a finished run's outputs in `retrain-output`, and those outputs.
fn finished_run() -> (tempfile::TempDir, PathBuf, Files) {
    let dir = tempfile::tempdir().unwrap();
    example_folder(dir.path(), 6);
    let out = dir.path().join("retrain-output");
    let o = retrain_limited(dir.path(), 1 << 20, &args("1"));
    assert!(o.status.success(), "{}", stderr(&o));
    let before = files(&out);
    (dir, out, before)
}

#[test]
fn a_full_disk_stops_the_run_naming_the_file_and_keeps_earlier_outputs() {
    let (dir, out, before) = finished_run();
    // A limit the report (thumbnails inside) exceeds and every other output fits in.
    let limit = before["report.html"].0 - 1024;
    let others = before.iter().filter(|(n, _)| *n != "report.html");
    assert!(
        others.clone().all(|(_, (len, _))| *len < limit / 2),
        "{before:?}"
    );

    // Caching a first bottleneck (5 KiB) in a new folder fails under a 4 KiB limit.
    let mut fresh = args("1");
    fresh.extend(["--bottleneck-dir".into(), "fresh".into()]);
    let o = retrain_limited(dir.path(), 4, &fresh);
    assert_clean_failure(&o, ".bottleneck");
    assert!(stderr(&o).contains("File too large"), "{}", stderr(&o));

    // Another seed under that limit: the classifier and the metrics are
    // written whole, the report cannot be.
    let o = retrain_limited(dir.path(), limit as u64 / 1024, &args("2"));
    assert_clean_failure(
        &o,
        "cannot write retrain-output/report.html: File too large",
    );
    let after = files(&out);
    assert_eq!(
        after["report.html"], before["report.html"],
        "the old report is intact"
    );
    let names = |m: &Files| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&after), names(&before), "no temporary file is left");
    retrain::head::classifier::Classifier::read(&out.join("model.safetensors")).unwrap();
}

#[test]
fn a_read_only_output_folder_stops_the_run_and_keeps_what_is_there() {
    let (dir, out, before) = finished_run();

    let chattr = |flag: &str| {
        let s = Command::new("chattr")
            .args([flag, out.to_str().unwrap()])
            .status();
        assert!(s.unwrap().success(), "chattr {flag} failed");
    };
    chattr("+i");
    let o = retrain_limited(dir.path(), 1 << 20, &args("2"));
    chattr("-i");
    assert_clean_failure(
        &o,
        "cannot write retrain-output/train.log: Operation not permitted",
    );
    assert_eq!(files(&out), before);
}
