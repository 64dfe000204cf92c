//! The crate's layers, checked from its source: every module imports only
//! from layers below its own (so no cycle between folders either), and the
//! parts of the crate that must not know about clap or the converter do not.
//! ARCHITECTURE.md describes the same layers.

use std::collections::BTreeSet;
use std::path::Path;

/// Top-level modules from the bottom up; a module may use only those before it.
const LAYERS: &[&str] = &[
    "hex",
    "atomic_file",
    "cache_dir",
    "resources",
    "progress",
    "logging",
    "model",
    "data",
    "gpu",
    "convert",
    "engine",
    "head",
    "train",
    "fine_tune",
    "report",
    "serve",
    "export",
    "cli",
    "commands",
    "fuzz_targets",
    "cpu_reference",
];

fn layer(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|m| *m == module)
        .unwrap_or_else(|| panic!("src/{module} is not in the layer list of tests/architecture.rs"))
}

/// Every `.rs` file under `dir` with the top-level module it belongs to.
fn sources(dir: &Path, top: Option<&str>, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let module = top.map_or(stem.clone(), String::from);
        if path.is_dir() {
            sources(&path, Some(&module), out);
        } else if path.extension().is_some_and(|e| e == "rs")
            && !["lib", "main"].contains(&stem.as_str())
        {
            out.push((module, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// The top-level modules a source file's code (not its comments) refers to
/// through `crate::`.
fn uses(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| format!("{l}\n"))
        .collect();
    let source = code.as_str();
    source
        .match_indices("crate::")
        .map(|(i, m)| {
            let rest = &source[i + m.len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            rest[..end].to_string()
        })
        .filter(|m| !m.is_empty() && m.chars().next().unwrap().is_lowercase())
        .collect()
}

#[test]
fn modules_import_only_from_layers_below_their_own() {
    let mut files = Vec::new();
    sources(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        None,
        &mut files,
    );
    assert!(files.len() > 40, "found only {} source files", files.len());
    let mut wrong = Vec::new();
    for (module, source) in &files {
        for used in uses(source) {
            if used != *module && layer(&used) > layer(module) {
                wrong.push(format!("{module} uses {used}"));
            }
        }
    }
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), "imports against the layers: {wrong:?}");
}

#[test]
fn clap_stays_in_the_command_layer() {
    let mut files = Vec::new();
    sources(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        None,
        &mut files,
    );
    for (module, source) in files {
        if !["cli", "commands"].contains(&module.as_str()) {
            assert!(!source.contains("clap"), "{module} uses clap");
            assert!(
                !source.contains("TrainArgs"),
                "{module} uses the command line's types"
            );
        }
    }
}

#[test]
fn the_checker_sees_a_layer_violation() {
    let source =
        "use crate::train::rows;\n/// crate::gpu\nfn f() { crate::commands::open_engine(); }";
    let found = uses(source);
    assert_eq!(
        found,
        BTreeSet::from(["train".to_string(), "commands".to_string()])
    );
    assert!(layer("commands") > layer("engine"));
}
