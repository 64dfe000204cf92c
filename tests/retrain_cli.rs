//! The main job end to end on a few images of ../shared/datasets/webstyle-dev
//! at a small input size: outputs, cache reuse, damaged cache entries, bad
//! input, and `classify` on the result; and with `--fine-tune` on a few
//! example screenshots: the training loss falls, the classifier carries the
//! fine-tuned blocks, `classify` reproduces the final test's predictions, and
//! bad fine-tuning flags are refused before any work.

use retrain::data::dataset::{assign_set, Set};
use retrain::head::Classifier;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{example_folder, image_folder_from, retrain, stderr};

/// ../shared/datasets/webstyle-dev.
fn dev_screenshots() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/datasets/webstyle-dev")
}

/// A folder `images/{broken,normal}` with `per_class` dev screenshots each.
fn image_folder(root: &Path, per_class: usize) {
    image_folder_from(&dev_screenshots(), root, per_class);
}

const TRAIN: &[&str] = &[
    "--image_dir",
    "images",
    "--input-size",
    "80",
    "--how_many_training_steps",
    "25",
    "--eval_step_interval",
    "10",
    "--validation_percentage",
    "20",
    "--testing_percentage",
    "20",
    "--train_batch_size",
    "16",
    "--seed",
    "5",
];

#[test]
fn retrain_writes_every_output_and_reuses_its_cache() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    image_folder(root, 9);
    std::fs::write(root.join("images/normal/zz_corrupt.jpg"), b"not a jpeg").unwrap();
    std::fs::create_dir_all(root.join("images/empty")).unwrap();

    let mut args = TRAIN.to_vec();
    args.extend([
        "--intermediate_store_frequency",
        "10",
        "--saved_model_dir",
        "saved",
        "--print_misclassified_test_images",
        "--summaries_dir",
        "logs",
    ]);
    let o = retrain(root, &args);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    for needle in [
        "Step 0: Train accuracy",
        "Step 0: Cross entropy",
        "Validation accuracy",
        "Step 24: Train accuracy",
        "Final test accuracy",
        "zz_corrupt.jpg",
        "no images in",
        "Training 16 heads side by side",
        "Sweep results",
        "--fine-tune may raise accuracy",
    ] {
        assert!(err.contains(needle), "missing \"{needle}\" in:\n{err}");
    }

    let out = root.join("retrain-output");
    let c = Classifier::read(&out.join("model.safetensors")).unwrap();
    assert_eq!(c.labels, ["broken", "normal"]);
    assert_eq!((c.weights.len(), c.biases.len()), (2048 * 2, 2));
    assert_eq!(c.input_size, (80, 80));
    assert_eq!(c.extra["steps"], "25");
    assert_eq!(c.extra["final_tensor_name"], "final_result");
    assert!(c.weights.iter().all(|w| w.is_finite()) && c.biases.iter().any(|b| *b != 0.0));
    assert_eq!(
        std::fs::read_to_string(out.join("labels.txt")).unwrap(),
        "broken\nnormal\n"
    );
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["steps"], 25);
    assert_eq!(metrics["images"]["skipped"], 1);
    assert_eq!(metrics["bottlenecks"]["computed"], 18);
    assert!(metrics["final"]["test"]["accuracy"].is_number());
    assert!(metrics["timings_seconds"]["bottlenecks"].as_f64().unwrap() > 0.0);
    assert_eq!(metrics["head_training"], "sweep");
    assert_eq!(metrics["sweep"]["heads"].as_array().unwrap().len(), 16);
    for step in [10, 20] {
        assert!(out
            .join(format!("intermediate/intermediate_{step}.safetensors"))
            .is_file());
    }
    for f in [
        "base_weights.safetensors",
        "classifier.safetensors",
        "labels.txt",
    ] {
        assert!(
            root.join("saved").join(f).is_file(),
            "saved model lacks {f}"
        );
    }

    for sub in ["train", "validation"] {
        let files: Vec<_> = std::fs::read_dir(root.join("logs").join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            files
                .iter()
                .any(|f| f.to_string_lossy().contains("tfevents")),
            "{sub}: {files:?}"
        );
        let size: u64 = std::fs::read_dir(root.join("logs").join(sub))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(size > 100, "{sub} has no scalars");
    }

    // A second run computes nothing; a damaged entry is reported and recomputed.
    let mut args = TRAIN.to_vec();
    args.push("--retrain-py-head");
    let o = retrain(root, &args);
    let err = stderr(&o);
    assert!(
        err.contains("0 computed") && !err.contains("Sweep"),
        "{err}"
    );
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["head_training"], "retrain.py");
    assert_eq!(metrics["sweep"]["heads"].as_array().unwrap().len(), 1);
    let entry = std::fs::read_dir(out.join("bottlenecks/broken"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &bytes[..bytes.len() / 2]).unwrap();
    let o = retrain(root, TRAIN);
    let err = stderr(&o);
    assert!(
        o.status.success() && err.contains("cannot be trusted") && err.contains("1 computed"),
        "{err}"
    );

    // classify the saved model, as JSON.
    let image = root
        .join("images/broken")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let o = Command::new(env!("CARGO_BIN_EXE_retrain"))
        .args([
            "classify",
            "--graph",
            root.join("saved").to_str().unwrap(),
            "--json",
            image.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let line: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let predictions = line["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 2);
    let total: f64 = predictions
        .iter()
        .map(|p| p["score"].as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-4);
}

#[test]
fn distorted_training_runs_every_step_through_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    image_folder(root, 6);
    let args = [
        "--image_dir",
        "images",
        "--input-size",
        "80",
        "--validation_percentage",
        "20",
        "--testing_percentage",
        "20",
        "--seed",
        "5",
        "--how_many_training_steps",
        "6",
        "--eval_step_interval",
        "5",
        "--train_batch_size",
        "5",
        "--flip_left_right",
        "--random_crop",
        "10",
        "--random_scale",
        "20",
        "--random_brightness",
        "30",
        "--image-cache-mb",
        "1",
    ];
    let o = retrain(root, &args);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    for needle in [
        "Distorting training images",
        "Step 5: Train accuracy",
        "Final test accuracy",
    ] {
        assert!(err.contains(needle), "missing \"{needle}\" in:\n{err}");
    }
    let out = root.join("retrain-output");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let d = &metrics["distortions"];
    assert_eq!(
        (d["random_crop"].as_u64(), d["random_scale"].as_u64()),
        (Some(10), Some(20))
    );
    assert_eq!(d["distorted_images"], 6 * 5);
    let c = Classifier::read(&out.join("model.safetensors")).unwrap();
    assert!(c.weights.iter().all(|w| w.is_finite()));
}

#[test]
fn bad_flags_are_rejected_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(dir.path(), 1);
    for (flags, flag) in [
        (
            &[
                "--testing_percentage",
                "60",
                "--validation_percentage",
                "40",
            ][..],
            "--testing-percentage",
        ),
        (&["--train_batch_size", "0"][..], "--train-batch-size"),
        (
            &["--validation_batch_size", "0"][..],
            "--validation-batch-size",
        ),
        (
            &["--how_many_training_steps=-5"][..],
            "how-many-training-steps",
        ),
        (&["--dropout", "1.5"][..], "--dropout"),
        (&["--random_crop", "101"][..], "--random-crop"),
        (&["--random_brightness=-5"][..], "--random-brightness"),
        (&["--random_scale", "12.5"][..], "--random-scale"),
        (&["--sweep-l2", "0.1,-1"][..], "--sweep-l2"),
        (&["--learning_rate", "0"][..], "--learning-rate"),
        (
            &["--retrain-py-head", "--optimizer", "sgd"][..],
            "--optimizer",
        ),
    ] {
        let mut args = vec!["--image_dir", "images"];
        args.extend(flags);
        let o = retrain(dir.path(), &args);
        assert!(!o.status.success());
        assert!(stderr(&o).contains(flag), "{flags:?}: {}", stderr(&o));
        assert!(
            !dir.path().join("retrain-output").exists(),
            "{flags:?} did work"
        );
    }
}

#[test]
fn one_class_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("images/only")).unwrap();
    std::fs::copy(
        dev_screenshots().join("normal/ws_03ef0dbdf2.jpg"),
        dir.path().join("images/only/a.jpg"),
    )
    .unwrap();
    let o = retrain(dir.path(), &["--image_dir", "images"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("only one class"), "{}", stderr(&o));
}

#[test]
fn mobilenet_v2_retrains_and_classifies_as_trained() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    image_folder(root, 6);
    // MobileNet V2's smallest input is 32; 64 keeps the run short.
    let mut args: Vec<&str> = TRAIN
        .iter()
        .map(|&a| if a == "80" { "64" } else { a })
        .collect();
    args.extend([
        "--tfhub_module",
        "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/4",
    ]);
    let o = retrain(root, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let model = root.join("retrain-output/model.safetensors");
    let c = Classifier::read(&model).unwrap();
    assert_eq!(c.architecture.name(), "mobilenet_v2");
    assert_eq!(c.weights.len(), 1280 * 2);
    assert_eq!(c.input_size, (64, 64));
    let o = retrain(
        root,
        &[
            "classify",
            "--json",
            "--graph",
            model.to_str().unwrap(),
            "images/broken",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(out.lines().count(), 6, "{out}");

    // Any other TF Hub module is refused, naming the two that exist.
    let o = retrain(
        root,
        &[
            "--image_dir",
            "images",
            "--tfhub_module",
            "https://tfhub.dev/google/imagenet/resnet_v2_50/feature_vector/5",
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("inception_v3 or mobilenet_v2"),
        "{}",
        stderr(&o)
    );
}

const FINE_TUNE: &[&str] = &[
    "--image-dir",
    "images",
    "--input-size",
    "80",
    "--how-many-training-steps",
    "30",
    "--validation-percentage",
    "25",
    "--testing-percentage",
    "25",
    "--seed",
    "7",
    "--fine-tune",
    "--fine-tune-epochs",
    "4",
    "--fine-tune-learning-rate",
    "1e-3",
    "--fine-tune-batch-size",
    "8",
    "--fine-tune-patience",
    "0",
    // Epoch 0's loss is the frozen head's without dropout; the later epochs'
    // are measured as they train, so they compare only without it.
    "--fine-tune-dropout",
    "0",
];

/// FINE_TUNE with the values of some of its flags replaced.
fn fine_tune_with(changes: &[(&str, &'static str)]) -> Vec<&'static str> {
    let mut args = FINE_TUNE.to_vec();
    for (flag, value) in changes {
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = value;
    }
    args
}

/// A file name that a split with these percentages puts among the test
/// images of class `class`.
fn test_image_name(class: &str, validation_pct: f64, testing_pct: f64) -> String {
    (0..)
        .map(|i| format!("zz_corrupt_{i}.jpg"))
        .find(|name| {
            let path = format!("images/{class}/{name}");
            assign_set(&path, validation_pct, testing_pct) == Set::Testing
        })
        .unwrap()
}

#[test]
fn fine_tuning_trains_exports_and_classifies_as_tested() {
    let dir = tempfile::tempdir().unwrap();
    example_folder(dir.path(), 16);
    // Test images run only at the end when fine-tuning: an unreadable one is skipped then.
    let corrupt = test_image_name("normal", 25.0, 25.0);
    std::fs::write(
        dir.path().join("images/normal").join(&corrupt),
        b"not a jpeg",
    )
    .unwrap();
    let mut args = FINE_TUNE.to_vec();
    args.extend(["--summaries-dir", "logs", "--saved-model-dir", "saved"]);
    let o = retrain(dir.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stderr(&o);
    assert!(log.contains("Fine-tuning from mixed9 up"), "{log}");
    assert!(!log.contains("--fine-tune may raise accuracy"), "{log}");
    assert!(log.contains("test images run at the end"), "{log}");
    assert!(log.contains(&format!("{corrupt}: ")), "{log}");

    let out = dir.path().join("retrain-output");
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["images"]["skipped"], 1, "{}", metrics["images"]);
    let at_test = metrics["bottlenecks"]["at_final_test"].as_u64().unwrap();
    assert_eq!(at_test, metrics["images"]["testing"].as_u64().unwrap() + 1);
    let f = &metrics["fine_tuning"];
    assert_eq!(f["from"], "mixed9");
    assert_eq!(f["cut"], "mixed8");
    assert_eq!(f["dropout"], 0.0);
    assert_eq!(f["optimizer"], "adam");
    assert_eq!(f["learning_rate"].as_f64(), Some(1e-3));
    assert!(f["weight_decay"].as_f64().unwrap() > 0.0, "{f}");
    // The log names the cut and the cache's size, as metrics.json records it.
    let images = &metrics["images"];
    let cached = images["training"].as_u64().unwrap() + images["validation"].as_u64().unwrap();
    let mib = f["cut_cache_bytes"].as_u64().unwrap() >> 20;
    let line = format!("the mixed8 activations of {cached} images cached ({mib} MiB on disk, f16)");
    assert!(log.contains(&line), "no \"{line}\" in:\n{log}");
    let epochs = f["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 5, "epoch 0 and four epochs: {f}");
    let number = |e: &Value, key: &str| e[key].as_f64().unwrap_or(f64::NAN);
    for e in epochs {
        let accuracy = number(e, "validation_accuracy");
        assert!((0.0..=1.0).contains(&accuracy), "{e}");
        assert!(number(e, "validation_cross_entropy") >= 0.0, "{e}");
    }
    let loss = |e: &Value| number(e, "train_cross_entropy");
    assert!(
        loss(&epochs[4]) < loss(&epochs[0]),
        "the training loss did not fall: {f}"
    );
    // TensorBoard gets every epoch's numbers.
    let events: Vec<u8> = std::fs::read_dir(dir.path().join("logs/fine_tune"))
        .unwrap()
        .flat_map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    for tag in [
        "fine_tune/train_cross_entropy",
        "fine_tune/validation_accuracy",
    ] {
        let found = events
            .windows(tag.len())
            .filter(|w| *w == tag.as_bytes())
            .count();
        assert_eq!(found, epochs.len(), "{tag}");
    }
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("id=\"fine-tuning-epochs\""));

    // The classifier carries the blocks of the kept epoch.
    let model = out.join("model.safetensors");
    let c = Classifier::read(&model).unwrap();
    // The kept epoch is the fine-tuned one that validates best (epoch 0 does
    // not compete).
    let best = f["best_epoch"].as_u64().unwrap() as usize;
    let top = (1..epochs.len())
        .map(|e| number(&epochs[e], "validation_accuracy"))
        .fold(f64::MIN, f64::max);
    assert!(
        best >= 1 && number(&epochs[best], "validation_accuracy") == top,
        "{f}"
    );
    assert_eq!(
        c.fine_tuned.len(),
        2 * f["trained_layers"].as_u64().unwrap() as usize
    );
    assert!(c
        .fine_tuned
        .iter()
        .all(|t| t.name.starts_with("mixed9") || t.name.starts_with("mixed10")));

    // classify on the saved model, and on the saved-model folder, gives the
    // final test's probabilities.
    let predictions = metrics["final"]["test"]["predictions"].as_array().unwrap();
    assert_eq!(
        Some(predictions.len() as u64),
        metrics["images"]["testing"].as_u64()
    );
    assert!(predictions
        .iter()
        .all(|p| !p["path"].as_str().unwrap().contains(&corrupt)));
    let mut expected = HashMap::new();
    for p in predictions {
        let path = p["path"].as_str().unwrap().to_string();
        expected.insert(path, p["probabilities"].clone());
    }
    let labels = metrics["labels"].as_array().unwrap();
    for graph in [model, dir.path().join("saved")] {
        let mut args = vec!["classify".to_string(), "--json".into(), "--graph".into()];
        args.push(graph.to_string_lossy().into());
        args.extend(expected.keys().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = retrain(dir.path(), &args);
        assert!(o.status.success(), "{}", stderr(&o));
        let lines = String::from_utf8_lossy(&o.stdout).to_string();
        assert_eq!(lines.lines().count(), predictions.len());
        for line in lines.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let want = &expected[v["path"].as_str().unwrap()];
            for p in v["predictions"].as_array().unwrap() {
                let class = labels.iter().position(|l| *l == p["label"]).unwrap();
                let (got, want) = (p["score"].as_f64().unwrap(), want[class].as_f64().unwrap());
                assert!(
                    (got - want).abs() < 1e-5,
                    "{}: {line}: {got} against the final test's {want}",
                    graph.display()
                );
            }
        }
    }
}

#[test]
fn bad_fine_tuning_flags_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    example_folder(dir.path(), 3);
    let run = |extra: &[&str]| {
        let mut args = vec!["--image-dir", "images", "--input-size", "80"];
        args.extend(extra);
        retrain(dir.path(), &args)
    };
    // A block that does not exist, and a layer inside a block.
    for name in ["mixed11", "mixed9/branch1x1"] {
        let o = run(&["--fine-tune-from", name]);
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(
            err.contains(&format!("cannot fine-tune from \"{name}\""))
                && err.contains("mixed0, mixed1"),
            "{err}"
        );
        assert!(
            !err.contains("Computing"),
            "work began before the check: {err}"
        );
    }
    let o = run(&["--fine-tune", "--architecture", "mobilenet_v2"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("fine-tuning needs Inception V3"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--fine-tune", "--fine-tune-epochs", "0"]);
    assert!(
        stderr(&o).contains("--fine-tune-epochs must be at least 1"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--fine-tune", "--fine-tune-dropout", "1"]);
    assert!(
        stderr(&o).contains("--fine-tune-dropout must be at least 0 and below 1"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_fine_tuned_epoch_is_kept_even_below_the_frozen_heads_validation() {
    let dir = tempfile::tempdir().unwrap();
    example_folder(dir.path(), 16);
    // A learning rate that wrecks the blocks: epoch 1 validates below the
    // frozen head, whose figure the sweep chose on the same images.
    let args = fine_tune_with(&[
        ("--fine-tune-learning-rate", "1"),
        ("--fine-tune-epochs", "1"),
    ]);
    let o = retrain(dir.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stderr(&o);
    assert!(log.contains("Keeping epoch 1's parameters"), "{log}");
    assert!(log.contains("below the frozen head's"), "{log}");
    let out = dir.path().join("retrain-output");
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let f = &metrics["fine_tuning"];
    assert_eq!(f["best_epoch"], 1);
    let loss = f["epochs"][1]["validation_cross_entropy"].as_f64();
    assert!(loss.is_some_and(f64::is_finite), "{f}");
    let c = Classifier::read(&out.join("model.safetensors")).unwrap();
    assert!(!c.fine_tuned.is_empty());
}

#[test]
fn fine_tuning_with_distortions_runs_the_frozen_part_on_each_batch_and_tests_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    example_folder(dir.path(), 6);
    let corrupt = test_image_name("broken", 10.0, 30.0);
    std::fs::write(
        dir.path().join("images/broken").join(&corrupt),
        b"not a jpeg",
    )
    .unwrap();
    let args = [
        "--image-dir",
        "images",
        "--input-size",
        "80",
        "--how-many-training-steps",
        "5",
        "--train-batch-size",
        "4",
        "--flip-left-right",
        "--random-brightness",
        "20",
        "--fine-tune",
        "--fine-tune-epochs",
        "1",
        "--fine-tune-batch-size",
        "4",
        "--seed",
        "2",
        "--testing-percentage",
        "30",
        // A sample drawn with replacement: rows repeat.
        "--test-batch-size",
        "9",
    ];
    let o = retrain(dir.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stderr(&o);
    assert!(
        log.contains("every step runs its images through the frozen part up to mixed8"),
        "{log}"
    );
    assert!(log.contains(&format!("{corrupt}: ")), "{log}");
    assert!(!log.contains("another process"), "{log}");
    let metrics: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("retrain-output/metrics.json")).unwrap(),
    )
    .unwrap();
    // Only the validation images' cut activations are cached: the training
    // images run through the frozen part at every step, distorted.
    let mut cut_entries = 0;
    for class in ["broken", "normal"] {
        let folder = dir.path().join("retrain-output/bottlenecks").join(class);
        for entry in std::fs::read_dir(folder).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().to_string();
            cut_entries += name.ends_with(".mixed8.f16") as u64;
        }
    }
    assert_eq!(Some(cut_entries), metrics["images"]["validation"].as_u64());
    assert_eq!(
        metrics["fine_tuning"]["epochs"].as_array().unwrap().len(),
        2
    );
    // The unreadable test image is skipped once and left out of the test
    // set; the sample of 9 is drawn from the readable ones.
    let images = &metrics["images"];
    assert_eq!(images["skipped"], 1, "{images}");
    let testing = images["testing"].as_u64().unwrap();
    assert_eq!(
        metrics["bottlenecks"]["at_final_test"].as_u64(),
        Some(testing + 1)
    );
    let test = &metrics["final"]["test"];
    assert_eq!(test["n"], 9, "{test}");
    let predictions = test["predictions"].as_array().unwrap();
    assert!(predictions
        .iter()
        .all(|p| !p["path"].as_str().unwrap().contains(&corrupt)));
}
