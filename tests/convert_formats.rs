//! convert-weights on every source format. These files cannot be downloaded
//! here, so the tests build them: nsfwjs's Inception V3 (fetched with npm, the
//! raw TF.js weights with their batch norms) written out as each format
//! writes it — its naming, kernel layout and batch-norm parameterisation —
//! then converted back and compared with the direct conversion, tensor by
//! tensor; then the golden bottleneck is checked with each converted file.

mod common;

use common::nsfwjs::*;

use hdf5_pure::File as H5File;
use retrain::convert::{self, torch, Overrides, Part};
use retrain::engine::Merging;
use retrain::model::weights::Normalization;
use std::io::Write;
use std::path::Path;
use std::process::Command;

/// Keras 2 `save_weights` layout: /<layer>/<layer>/<weight>:0, BN without gamma,
/// plus the classifier on top (not used), optionally under model_weights/.
fn write_keras2_h5(path: &Path, under: &str) {
    let file = H5File::create(path).unwrap();
    let root = if under.is_empty() {
        file.root()
    } else {
        file.root().create_group(under).unwrap()
    };
    let p = parts();
    for k in 1..=94u32 {
        let conv = root.create_group(&format!("conv2d_{k}")).unwrap();
        let inner = conv.create_group(&format!("conv2d_{k}")).unwrap();
        let kernel = p[&(k, Part::Kernel)];
        write_h5(&inner, "kernel:0", kernel);
        let layer = format!("batch_normalization_{k}");
        let bn = root
            .create_group(&layer)
            .unwrap()
            .create_group(&layer)
            .unwrap();
        for (part, name) in BN_PARTS {
            write_h5(&bn, &format!("{name}:0"), p[&(k, part)]);
        }
    }
    let top = root
        .create_group("predictions")
        .unwrap()
        .create_group("predictions")
        .unwrap();
    top.create_dataset("kernel:0", |b| {
        b.with_f32_data(&[0.5; 2048 * 3]).with_shape(&[2048, 3]);
    })
    .unwrap();
    file.commit().unwrap();
}

/// (name, shape, values) in torchvision's naming: OIHW kernels, BN with
/// gamma = 1, plus the tensors a real checkpoint has that are not used.
fn torchvision_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let units = torch::unit_names();
    let p = parts();
    let mut out = Vec::new();
    for k in 1..=94u32 {
        let kernel = p[&(k, Part::Kernel)];
        let (oihw, shape) = hwio_to_oihw(&kernel.data, &kernel.shape);
        out.push((torch::tensor_name(&units, k, Part::Kernel), shape, oihw));
        let out_c = kernel.shape[3];
        out.push((
            torch::tensor_name(&units, k, Part::Gamma),
            vec![out_c],
            vec![1.0; out_c],
        ));
        for (part, _) in BN_PARTS {
            let f = p[&(k, part)];
            out.push((
                torch::tensor_name(&units, k, part),
                f.shape.clone(),
                f.data.clone(),
            ));
        }
    }
    out.push((
        "fc.weight".into(),
        vec![1000, 2048],
        vec![0.25; 2048 * 1000],
    ));
    out.push(("fc.bias".into(), vec![1000], vec![0.0; 1000]));
    out.push((
        "AuxLogits.conv0.conv.weight".into(),
        vec![128, 768, 1, 1],
        vec![0.5; 128 * 768],
    ));
    out
}

/// timm's safetensors (with the num_batches_tracked counters as I64 scalars).
fn write_safetensors(path: &Path) {
    use safetensors::tensor::{Dtype, TensorView};
    let tensors = torchvision_tensors();
    let bytes: Vec<(String, Vec<usize>, Vec<u8>, Dtype)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                s.clone(),
                bytemuck::cast_slice(d).to_vec(),
                Dtype::F32,
            )
        })
        .chain((1..=94).map(|k| {
            let name = torch::tensor_name(&torch::unit_names(), k, Part::Mean)
                .replace("running_mean", "num_batches_tracked");
            (name, vec![], 7i64.to_le_bytes().to_vec(), Dtype::I64)
        }))
        .collect();
    let views: Vec<(String, TensorView)> = bytes
        .iter()
        .map(|(n, s, b, t)| (n.clone(), TensorView::new(*t, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A pickle writer for what torch.save emits (protocol 2).
struct Pickle(Vec<u8>);

impl Pickle {
    fn op(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    fn string(&mut self, s: &str) -> &mut Self {
        self.op(b"X")
            .op(&(s.len() as u32).to_le_bytes())
            .op(s.as_bytes())
    }
    fn int(&mut self, v: usize) -> &mut Self {
        self.op(b"J").op(&(v as u32).to_le_bytes())
    }
    fn ints(&mut self, v: &[usize]) -> &mut Self {
        self.op(b"(");
        for &x in v {
            self.int(x);
        }
        self.op(b"t")
    }
}

/// One state-dict entry's values: float32, or an int64 scalar (the
/// batch norms' num_batches_tracked).
enum Values {
    F32(Vec<f32>),
    I64(i64),
}

/// The state dict torch.save wrote for torchvision's Inception V3, key by key
/// in the order of ../shared/reference/formats/torchvision_pth.json, with
/// nsfwjs's weights where the network reads them (OIHW kernels, gamma 1) and
/// filler for the rest (AuxLogits, fc).
fn torchvision_state_dict() -> Vec<(String, Vec<usize>, Values)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference/formats/torchvision_pth.json");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let ours: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> = torchvision_tensors()
        .into_iter()
        .map(|(n, s, d)| (n, (s, d)))
        .collect();
    m["state_dict"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let key = e["key"].as_str().unwrap().to_string();
            let shape: Vec<usize> = serde_json::from_value(e["shape"].clone()).unwrap();
            let values = match (e["dtype"].as_str().unwrap(), ours.get(&key)) {
                ("int64", _) => Values::I64(7),
                (_, Some((s, d))) if key.starts_with("Conv2d") || key.starts_with("Mixed") => {
                    assert_eq!(*s, shape, "{key}");
                    Values::F32(d.clone())
                }
                _ => Values::F32(vec![0.25; shape.iter().product()]),
            };
            (key, shape, values)
        })
        .collect()
}

/// torchvision's .pth as torch.save writes it: `<name>/data.pkl` (an
/// OrderedDict of _rebuild_tensor_v2 calls on persistent storages), the
/// storages as `<name>/data/<key>`, and its small bookkeeping members.
fn write_pth(path: &Path) {
    let tensors = torchvision_state_dict();
    let mut p = Pickle(Vec::new());
    p.op(b"\x80\x02")
        .global("collections", "OrderedDict")
        .op(b"q\x00)Rq\x01(");
    for (key, (name, shape, values)) in tensors.iter().enumerate() {
        let strides: Vec<usize> = (0..shape.len())
            .map(|i| shape[i + 1..].iter().product())
            .collect();
        let (storage, numel) = match values {
            Values::F32(d) => ("FloatStorage", d.len()),
            Values::I64(_) => ("LongStorage", 1),
        };
        p.string(name)
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b"(")
            .op(b"(")
            .string("storage")
            .global("torch", storage)
            .string(&key.to_string())
            .string("cpu")
            .int(numel)
            .op(b"tQ")
            .int(0)
            .ints(shape)
            .ints(&strides)
            .op(b"\x89")
            .global("collections", "OrderedDict")
            .op(b")R")
            .op(b"tR");
    }
    p.op(b"u}b."); // items, then the OrderedDict's (empty) state
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let archive = "torchvision_inception_v3";
    let mut member = |name: &str, bytes: &[u8]| {
        zip.start_file(format!("{archive}/{name}"), stored).unwrap();
        zip.write_all(bytes).unwrap();
    };
    member("data.pkl", &p.0);
    member(".format_version", b"1");
    member(".storage_alignment", b"64");
    member("byteorder", b"little");
    for (key, (_, _, values)) in tensors.iter().enumerate() {
        let bytes = match values {
            Values::F32(d) => bytemuck::cast_slice(d).to_vec(),
            Values::I64(v) => v.to_le_bytes().to_vec(),
        };
        member(&format!("data/{key}"), &bytes);
    }
    member("version", b"3\n");
    zip.finish().unwrap();
}

/// A PyTorch source converted with its own defaults: x/127.5 − 1 and average
/// pools that count padding, which changes the bottleneck.
fn check_pytorch_defaults(source: &Path) {
    let out = source.with_extension("defaults.safetensors");
    let info = convert::convert(source, &out, &Overrides::default()).unwrap();
    assert_eq!(info.normalization, Normalization::signed());
    assert!(info.pytorch_padding);
    let unit = source.with_extension("unit.safetensors");
    let overrides = Overrides {
        normalization: Some(Normalization::unit()),
        ..Overrides::default()
    };
    convert::convert(source, &unit, &overrides).unwrap();
    let err = golden_error(&unit);
    assert!(
        err > 1e-4,
        "PyTorch's average pooling must change the bottleneck (at 139×139 most pooled cells are on a border): {err:e}"
    );
}

fn inspect_says(path: &Path, format: &str) {
    let text = convert::inspect(path).unwrap();
    assert!(text.contains(format), "{text}");
    assert!(text.contains("complete: 188 engine tensors"), "{text}");
}

#[test]
fn keras2_h5_notop_and_full_model_convert_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let notop = dir
        .path()
        .join("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5");
    write_keras2_h5(&notop, "");
    let out = convert_and_compare(&notop, "Keras 2 notop");
    inspect_says(&notop, "Keras 2 layer names");
    check_golden(&out, "Keras 2 notop");
    let full = dir.path().join("full_model.h5");
    write_keras2_h5(&full, "model_weights");
    convert_and_compare(&full, "Keras 2 full model");
    // Keras ImageNet weights default to x/127.5 - 1 and Keras's pooling.
    let plain = dir.path().join("plain.safetensors");
    let info = convert::convert(&notop, &plain, &Overrides::default()).unwrap();
    assert_eq!(info.normalization, Normalization::signed());
    assert!(!info.pytorch_padding);
}

#[test]
fn timm_safetensors_converts_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_safetensors(&path);
    inspect_says(&path, "PyTorch safetensors");
    let out = convert_and_compare(&path, "timm safetensors");
    check_golden(&out, "timm safetensors");
    check_pytorch_defaults(&path);
}

#[test]
fn torchvision_pth_converts_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inception_v3_google-0cc3c7bd.pth");
    write_pth(&path);
    inspect_says(&path, "PyTorch checkpoint");
    let out = convert_and_compare(&path, "torchvision .pth");
    check_golden(&out, "torchvision .pth");
    check_pytorch_defaults(&path);
}

fn convert_weights(args: &[&str]) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_convert-weights"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    (o.status.success(), text)
}

#[test]
fn bad_sources_are_named_and_leave_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let full_h5 = d.join("good.h5");
    write_keras2_h5(&full_h5, "");
    let full_pth = d.join("good.pth");
    write_pth(&full_pth);
    let truncate = |from: &Path, to: &str| {
        let bytes = std::fs::read(from).unwrap();
        let path = d.join(to);
        std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
        path
    };
    // A mis-shaped tensor in a timm file.
    let misshaped = d.join("misshaped.safetensors");
    {
        let mut tensors = torchvision_tensors();
        let t = tensors
            .iter_mut()
            .find(|t| t.0 == "Mixed_6b.branch7x7_2.conv.weight")
            .unwrap();
        t.1 = vec![128, 128, 7, 1];
        write_f32_safetensors(&misshaped, &tensors);
    }
    // Another architecture's names.
    let other = d.join("resnet.safetensors");
    {
        use safetensors::tensor::{Dtype, TensorView};
        let data = [0u8; 16];
        let view = TensorView::new(Dtype::F32, vec![4], &data).unwrap();
        safetensors::serialize_to_file([("layer1.0.conv1.weight".to_string(), view)], None, &other)
            .unwrap();
    }
    let cases = [
        (truncate(&full_h5, "truncated.h5"), "truncated"),
        (truncate(&full_pth, "truncated.pth"), "truncated"),
        (truncate(&misshaped, "truncated.safetensors"), "truncated"),
        (misshaped.clone(), "Mixed_6b.branch7x7_2.conv.weight has shape [128, 128, 7, 1], expected [128, 128, 1, 7]"),
        (other.clone(), "torchvision's Inception V3 or MobileNet V2 names"),
    ];
    for (source, expected) in cases {
        let out = d.join("out.safetensors");
        let (ok, text) = convert_weights(&[
            "--from",
            source.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(!ok, "{source:?} converted");
        assert!(text.contains(expected), "{source:?}: {text}");
        assert!(!out.exists(), "{source:?} left an output");
    }
    let (ok, text) = convert_weights(&["--inspect", misshaped.to_str().unwrap()]);
    assert!(
        ok && text.contains("cannot convert") && text.contains("not used"),
        "{text}"
    );
}

#[test]
fn f16_weights_halve_the_file_and_stay_within_1e_2_of_the_golden_bottleneck() {
    let dir = tempfile::tempdir().unwrap();
    let half = dir.path().join("half.safetensors");
    let info = convert::write_engine_file(&fixture().source, &half, true).unwrap();
    assert_eq!(info.dtype, "f16");
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64;
    let ratio = size(&half) / size(&fixture().direct);
    assert!(
        (0.49..0.52).contains(&ratio),
        "f16 file is {ratio} of the f32 one"
    );
    // Merged sibling convs assemble their f16 weights two bytes per value.
    for (name, side, merging) in [
        ("small_astronaut_139x139", 139, Merging::None),
        ("small_astronaut_139x139", 139, Merging::All),
        ("0_astronaut_299", 299, Merging::None),
    ] {
        let err = golden_error_of(&half, name, side, merging);
        assert!(
            err <= 1e-2 && err > 0.0,
            "{name}, {merging:?} merged: f16 bottleneck off by {err:e}"
        );
        eprintln!("f16 weights, {name}, {merging:?} merged: golden bottleneck relative L2 {err:e}");
    }
}
