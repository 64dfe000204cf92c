//! kill -9 at random moments of a run — while bottlenecks are cached, while
//! the head trains, while outputs are written — then the same command again:
//! it finishes, no cache entry it serves is damaged, no output ever carries
//! its final name half-written, and the outputs equal an uninterrupted run's
//! with the same seed. Two runs and a `features` sharing one bottleneck
//! folder at once all finish, and no image's bottleneck is computed twice.

mod common;

use common::{example_folder, small_run_args, stderr};
use rand::{Rng, SeedableRng};
use retrain::data::bottleneck_cache::BottleneckCache;
use retrain::head::classifier::Classifier;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// A small MobileNet V2 run with a fixed seed, in `dir` (images in `images/`).
fn command(dir: &Path, bottlenecks: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_retrain"));
    c.current_dir(dir)
        .args(small_run_args("60", "0.001,0.1", "5"))
        .args(["--bottleneck-dir", bottlenecks]);
    c
}

fn run(dir: &Path) -> Output {
    let o = command(dir, "retrain-output/bottlenecks")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

/// What a finished run produced that must not depend on interruptions: the
/// classifier's tensors and labels, and the final test's numbers (image
/// paths taken relative to `dir`).
fn outcome(dir: &Path) -> (Vec<f32>, Vec<f32>, Vec<String>, String) {
    let out = dir.join("retrain-output");
    let c = Classifier::read(&out.join("model.safetensors")).unwrap();
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let test = metrics["final"].to_string();
    let test = test.replace(&format!("{}/", dir.display()), "");
    (c.weights, c.biases, c.labels, test)
}

/// Every bottleneck entry under `dir` is whole: what a run may read back.
fn check_entries(dir: &Path) {
    let cache = BottleneckCache::new(dir, "", (96, 96), [1.0; 3], [0.0; 3]);
    for class in std::fs::read_dir(dir).into_iter().flatten() {
        for entry in std::fs::read_dir(class.unwrap().path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with('.') || name.ends_with(".claim") {
                continue; // a temporary file or a claim: never read as an entry
            }
            assert!(name.ends_with(".bottleneck"), "unexpected file {name}");
            let loaded = cache.load(&path, 1280);
            assert!(
                matches!(loaded, Ok(Some(_))),
                "{name} is damaged: {loaded:?}"
            );
        }
    }
}

/// Every output carrying its final name is complete.
fn check_outputs(out: &Path) {
    let model = out.join("model.safetensors");
    if model.exists() {
        Classifier::read(&model).unwrap();
    }
    let metrics = out.join("metrics.json");
    if metrics.exists() {
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&metrics).unwrap()).unwrap();
    }
    let labels = out.join("labels.txt");
    if labels.exists() {
        assert_eq!(
            std::fs::read_to_string(&labels).unwrap(),
            "broken\nnormal\n"
        );
    }
    let report = out.join("report.html");
    if report.exists() {
        let html = std::fs::read_to_string(&report).unwrap();
        assert!(
            html.trim_end().ends_with("</html>"),
            "report.html is cut short"
        );
    }
}

#[test]
fn killed_runs_resume_to_the_same_outputs() {
    let reference = tempfile::tempdir().unwrap();
    example_folder(reference.path(), 8);
    let started = Instant::now();
    run(reference.path());
    let whole = started.elapsed();
    let expected = outcome(reference.path());

    let dir = tempfile::tempdir().unwrap();
    example_folder(dir.path(), 8);
    let seed: u64 = rand::rng().random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let kills = 6;
    for attempt in 0..kills {
        // One kill in each sixth of a whole run's time: early ones land in
        // start-up and the bottleneck phase, later ones in training and writing.
        let at = whole.mul_f64((attempt as f64 + rng.random::<f64>()) / kills as f64);
        let mut child = command(dir.path(), "retrain-output/bottlenecks")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        eprintln!("seed {seed}: run {attempt} killed after {at:?} of {whole:?}");
        let out = dir.path().join("retrain-output");
        check_entries(&out.join("bottlenecks"));
        check_outputs(&out);
    }
    run(dir.path());
    check_outputs(&dir.path().join("retrain-output"));
    let got = outcome(dir.path());
    assert_eq!(got.2, expected.2, "labels (seed {seed})");
    assert_eq!(got.0, expected.0, "classifier weights (seed {seed})");
    assert_eq!(got.1, expected.1, "classifier biases (seed {seed})");
    assert_eq!(got.3, expected.3, "final test (seed {seed})");
}

/// How many bottlenecks a run computed, from its summary line
/// "Bottlenecks: N from the cache, M computed…" (retrain and features).
fn computed(log: &str) -> usize {
    let line = log.lines().find(|l| l.contains("Bottlenecks: ")).unwrap();
    let before = line.split(" computed").next().unwrap();
    before.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn runs_and_features_share_one_bottleneck_folder() {
    let dir = tempfile::tempdir().unwrap();
    example_folder(dir.path(), 8);
    std::fs::create_dir(dir.path().join("a")).unwrap();
    std::fs::create_dir(dir.path().join("b")).unwrap();
    let shared = dir.path().join("shared-bottlenecks");
    let retrain_into = |name: &str| {
        let mut c = command(dir.path(), shared.to_str().unwrap());
        c.args([
            "--output-graph",
            &format!("{name}/model.safetensors"),
            "--output-labels",
            &format!("{name}/labels.txt"),
        ]);
        c
    };
    let mut features = Command::new(env!("CARGO_BIN_EXE_retrain"));
    let model = ["--architecture", "mobilenet_v2", "--input-size", "96"];
    features
        .current_dir(dir.path())
        .args(["features", "--image-dir", "images", "--output", "f.npy"])
        .args(model)
        .args(["--bottleneck-dir", shared.to_str().unwrap()]);
    let mut runs = [retrain_into("a"), retrain_into("b"), features];
    let children: Vec<_> = (runs.iter_mut())
        .map(|c| {
            let c = c.stdin(Stdio::null()).stdout(Stdio::piped());
            c.stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let outputs: Vec<Output> = (children.into_iter())
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let logs: Vec<String> = outputs.iter().map(stderr).collect();
    for (o, log) in outputs.iter().zip(&logs) {
        assert!(o.status.success(), "{log}");
    }
    check_entries(&shared);
    let total: usize = logs.iter().map(|l| computed(l)).sum();
    assert_eq!(
        total,
        16,
        "each bottleneck computed once between the three\n{}",
        logs.join("\n---\n")
    );
    let read = |name: &str| Classifier::read(&dir.path().join(name).join("model.safetensors"));
    assert_eq!(read("a").unwrap().weights, read("b").unwrap().weights);
}

#[test]
fn temporary_files_left_by_killed_runs_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    example_folder(dir.path(), 4);
    let out = dir.path().join("retrain-output");
    let entries = out.join("bottlenecks/broken");
    std::fs::create_dir_all(&entries).unwrap();
    let hours_ago =
        |h: u64| std::time::SystemTime::now() - std::time::Duration::from_secs(h * 3600);
    let left = |path: std::path::PathBuf, modified| {
        let f = std::fs::File::create(&path).unwrap();
        f.set_modified(modified).unwrap();
        path
    };
    let old = [
        left(out.join(".retrain-a1b2c3"), hours_ago(2)),
        left(entries.join(".retrain-d4e5f6"), hours_ago(5)),
    ];
    // Perhaps another process's file being written right now: kept.
    let fresh = left(out.join(".retrain-g7h8i9"), hours_ago(0));
    run(dir.path());
    for f in old {
        assert!(!f.exists(), "{} was left", f.display());
    }
    assert!(fresh.exists());
}

#[test]
fn a_fine_tuning_run_killed_between_epochs_leaves_its_cut_cache_and_no_model() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    example_folder(dir.path(), 6);
    let fine_tune = |epochs: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_retrain"));
        c.current_dir(dir.path()).args([
            "--image-dir",
            "images",
            "--input-size",
            "80",
            "--how-many-training-steps",
            "10",
            "--validation-percentage",
            "25",
            "--testing-percentage",
            "25",
            "--seed",
            "3",
            "--fine-tune",
            "--fine-tune-batch-size",
            "2",
            "--fine-tune-epochs",
            epochs,
        ]);
        c.stdin(Stdio::null()).stdout(Stdio::null());
        c
    };
    // Killed after its first epoch: the cut's activations are all cached.
    let mut child = KilledOnDrop(fine_tune("50").stderr(Stdio::piped()).spawn().unwrap());
    let mut log = BufReader::new(child.0.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok);
    let line = (log.by_ref())
        .find(|l| l.contains("Fine-tuning from mixed9 up"))
        .expect("the run reached fine-tuning");
    log.find(|l| l.contains("Fine-tuning epoch 1 "))
        .expect("the run finished an epoch");
    drop(child);
    let out = dir.path().join("retrain-output");
    assert!(
        !out.join("model.safetensors").exists(),
        "a model before the end"
    );
    check_outputs(&out);

    // Every cut entry is whole, one per training and validation image.
    let cached: usize = line
        .split("the mixed8 activations of ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in: {line}"));
    let cut = BottleneckCache::new(&out.join("bottlenecks"), "", (80, 80), [1.0; 3], [0.0; 3])
        .at_layer("mixed8");
    let mut entries = 0;
    for class in ["broken", "normal"] {
        for entry in std::fs::read_dir(out.join("bottlenecks").join(class)).unwrap() {
            let path = entry.unwrap().path();
            if path.to_string_lossy().ends_with(".mixed8.f16") {
                let loaded = cut.load(&path, 1280);
                assert!(
                    matches!(loaded, Ok(Some(_))),
                    "{}: {loaded:?}",
                    path.display()
                );
                entries += 1;
            }
        }
    }
    assert_eq!(entries, cached);

    // Run again, it reuses them all and finishes.
    let o = fine_tune("1").output().unwrap();
    let log = stderr(&o);
    assert!(o.status.success(), "{log}");
    assert_eq!(computed(&log), 0, "{log}");
    Classifier::read(&out.join("model.safetensors")).unwrap();
}

/// A child process killed (SIGKILL) and reaped when dropped, even when a test fails first.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
