//! `retrain --fine-tune` end to end on a few example screenshots at a small
//! input size: the run finishes, its training loss falls, the classifier
//! carries the fine-tuned blocks, and `classify` on it reproduces the final
//! test's predictions; and the bad flags are refused before any work.

mod common;

use common::{example_folder, retrain, stderr};
use retrain::head::Classifier;
use serde_json::Value;
use std::collections::HashMap;

const RUN: &[&str] = &[
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
    "5",
    "--fine-tune",
    "--fine-tune-epochs",
    "4",
    "--fine-tune-learning-rate",
    "1e-3",
    "--fine-tune-batch-size",
    "8",
    "--fine-tune-patience",
    "0",
];

#[test]
fn fine_tuning_trains_exports_and_classifies_as_tested() {
    let dir = tempfile::tempdir().unwrap();
    example_folder(dir.path(), 16);
    let o = retrain(dir.path(), RUN);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stderr(&o);
    assert!(log.contains("Fine-tuning from mixed9 up"), "{log}");
    assert!(!log.contains("--fine-tune may raise accuracy"), "{log}");

    let out = dir.path().join("retrain-output");
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let f = &metrics["fine_tuning"];
    assert_eq!(f["from"], "mixed9");
    assert_eq!(f["cut"], "mixed8");
    let epochs = f["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 5, "epoch 0 and four epochs: {f}");
    let loss = |e: &Value| e["train_cross_entropy"].as_f64().unwrap();
    assert!(
        loss(&epochs[4]) < loss(&epochs[0]),
        "the training loss did not fall: {f}"
    );
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("id=\"fine-tuning-epochs\""));

    // The classifier carries the blocks of the kept epoch.
    let model = out.join("model.safetensors");
    let c = Classifier::read(&model).unwrap();
    let best = f["best_epoch"].as_u64().unwrap();
    assert_eq!(c.fine_tuned.is_empty(), best == 0, "{f}");
    if best > 0 {
        assert_eq!(
            c.fine_tuned.len(),
            2 * f["trained_layers"].as_u64().unwrap() as usize
        );
        assert!(c
            .fine_tuned
            .iter()
            .all(|t| t.name.starts_with("mixed9") || t.name.starts_with("mixed10")));
    }

    // classify on the saved model gives the final test's probabilities.
    let predictions = metrics["final"]["test"]["predictions"].as_array().unwrap();
    let mut args = vec!["classify".to_string(), "--json".into(), "--graph".into()];
    args.push(model.to_string_lossy().into());
    let mut expected = HashMap::new();
    for p in predictions {
        let path = p["path"].as_str().unwrap().to_string();
        expected.insert(path.clone(), p["probabilities"].clone());
        args.push(path);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = retrain(dir.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let labels = metrics["labels"].as_array().unwrap();
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
                "{line}: {got} against the final test's {want}"
            );
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
    let o = run(&["--fine-tune-from", "mixed11"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("cannot fine-tune from \"mixed11\"") && err.contains("mixed0, mixed1"),
        "{err}"
    );
    assert!(
        !err.contains("Computing"),
        "work began before the check: {err}"
    );
    let o = run(&["--fine-tune", "--architecture", "mobilenet_v2"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("fine-tuning needs Inception V3"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--fine-tune", "--flip-left-right"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not supported yet"), "{}", stderr(&o));
    let o = run(&["--fine-tune", "--fine-tune-epochs", "0"]);
    assert!(
        stderr(&o).contains("--fine-tune-epochs must be at least 1"),
        "{}",
        stderr(&o)
    );
}
