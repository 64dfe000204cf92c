//! What the fuzzers feed: one entry per parser of outside input, taking
//! arbitrary bytes the way a user's file would reach that parser (through a
//! scratch file where the parser reads a path). An entry may accept or refuse
//! its input; it must not panic, hang or allocate beyond what the input
//! justifies. cargo-fuzz's targets (fuzz/) and the corpus replay on stable
//! (tests/fuzz_corpus.rs) call the same entries, so whatever a fuzzer found
//! stays checked by `cargo test`.

use crate::convert::{js_literal, keras_archive, keras_h5, pickle, tfjs, torch};
use crate::data::bottleneck_cache::BottleneckCache;
use crate::gpu::conv_variant::ConvVariant;
use crate::gpu::tuning::Tuning;
use crate::head::classifier::Classifier;
use crate::model::architecture::Architecture;
use crate::model::weights::WeightFile;
use std::path::{Path, PathBuf};

/// A fuzz entry: takes any bytes.
pub type Entry = fn(&[u8]);

/// Every target by name (its corpus folder under fuzz/corpus/).
pub const TARGETS: &[(&str, Entry)] = &[
    ("image", image),
    ("js_literal", js_literal),
    ("tfjs_folder", tfjs_folder),
    ("pickle", pickle),
    ("pth", pth),
    ("keras_h5", keras_h5),
    ("keras_archive", keras_archive),
    ("safetensors_source", safetensors_source),
    ("engine_weights", engine_weights),
    ("classifier", classifier),
    ("bottleneck_entry", bottleneck_entry),
    ("tuning_cache", tuning_cache),
];

/// The entry called `name`.
pub fn target(name: &str) -> Option<Entry> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|&(_, f)| f)
}

/// Image intake: format sniffing, size checks, conversion to RGB.
pub fn image(data: &[u8]) {
    if let Ok(rgb) = crate::data::images::decode_bytes(data) {
        assert!(rgb.width() > 0 && rgb.height() > 0);
    }
}

/// The JS object literal parser TF.js bundles go through.
pub fn js_literal(data: &[u8]) {
    let _ = js_literal::parse(&String::from_utf8_lossy(data), 0);
}

/// A TF.js model folder: byte 0 chooses `model.json` (even) or
/// `model.min.js` (odd), bytes 1–2 (little-endian) give the model text's
/// length, what follows is that text, and the rest is the weight shard
/// `group1-shard1of1.bin`.
pub fn tfjs_folder(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Some((len, rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let (model, shard) = rest.split_at((u16::from_le_bytes(*len) as usize).min(rest.len()));
    let dir = scratch("tfjs");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    let name = ["model.json", "model.min.js"][kind as usize % 2];
    std::fs::write(dir.join(name), model).expect("scratch file");
    std::fs::write(dir.join("group1-shard1of1.bin"), shard).expect("scratch file");
    let _ = tfjs::read_source(&dir);
}

/// The pickle reader (a `.pth` archive's data.pkl).
pub fn pickle(data: &[u8]) {
    let _ = pickle::load(data);
}

/// A PyTorch `.pth` zip archive.
pub fn pth(data: &[u8]) {
    let _ = torch::read_pth(&scratch_file("weights.pth", data));
}

/// A Keras HDF5 file (weights only or a full model with its config).
pub fn keras_h5(data: &[u8]) {
    let _ = keras_h5::read(&scratch_file("weights.h5", data));
}

/// A Keras 3 `.keras` archive (zip of config.json and model.weights.h5).
pub fn keras_archive(data: &[u8]) {
    let _ = keras_archive::read(&scratch_file("model.keras", data));
}

/// A safetensors file from elsewhere (timm's) as convert-weights reads it.
pub fn safetensors_source(data: &[u8]) {
    let _ = torch::read_safetensors(&scratch_file("source.safetensors", data));
}

/// An engine weight file (converted weights), opened and checked against
/// the network its metadata names, as every command does before a run.
pub fn engine_weights(data: &[u8]) {
    let Ok(file) = WeightFile::open(&scratch_file("engine.safetensors", data)) else {
        return;
    };
    let info = &file.info;
    let Ok(architecture) = Architecture::from_name(&info.architecture) else {
        return;
    };
    if let Ok(graph) = architecture.build(info.input_height, info.input_width) {
        let _ = file.check(&graph);
    }
}

/// A classifier file (the head, labels and fine-tuned layers).
pub fn classifier(data: &[u8]) {
    let _ = Classifier::read(&scratch_file("classifier.safetensors", data));
}

/// Bottleneck-cache entries, f32 bottlenecks and f16 activations alike, of
/// the length the entry's header claims and of a fixed length.
pub fn bottleneck_entry(data: &[u8]) {
    let entry = scratch_file("entry.bottleneck", data);
    let cache = BottleneckCache::new(&scratch("cache"), "fuzz", (299, 299), [1.0; 3], [0.0; 3]);
    let claimed = data.get(8..12).map_or(0, |b| {
        u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize
    });
    for cache in [cache.at_layer("mixed8"), cache] {
        for len in [claimed, 2048] {
            if let Ok(Some(values)) = cache.load(&entry, len) {
                assert_eq!(values.len(), len);
            }
        }
    }
}

/// The kernel tuning cache: whatever it holds, only real candidates come out.
pub fn tuning_cache(data: &[u8]) {
    let device = "fuzz device";
    let Some(tuning) = Tuning::parse(data, device).or_else(|| {
        // Also reach the filtering with the device a mutated file names.
        let v: serde_json::Value = serde_json::from_slice(data).ok()?;
        Tuning::parse(data, v.get("device")?.as_str()?)
    }) else {
        return;
    };
    assert!(tuning
        .choices
        .values()
        .all(|v| ConvVariant::CANDIDATES.contains(v)));
    assert!(tuning
        .depthwise
        .values()
        .all(|g| crate::gpu::kernels::DEPTHWISE_GROUPS.contains(g)));
}

/// A folder of this thread's own under the system's temporary folder.
fn scratch(name: &str) -> PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = tempfile::tempdir().expect("a scratch folder");
    }
    DIR.with(|d| d.path().join(name))
}

/// `data` written to the scratch file `name`.
fn scratch_file(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch(name);
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).expect("scratch folder");
    std::fs::write(&path, data).expect("scratch file");
    path
}
