//! Replays the fuzzers' corpus and every input they found a fault with
//! (fuzz/corpus/TARGET/, fuzz/artifacts/TARGET/) through the entries in
//! retrain::fuzz_targets, on stable: no input may panic, run for more than
//! a few seconds, or make one allocation far larger than itself (a header
//! that declares 10^12 elements is refused before anything is allocated).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Counts the largest allocation each thread makes; refuses absurd ones
/// (which then abort the run instead of exhausting the machine).
struct Watched;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The largest single allocation `target` may make for `input_len` bytes:
/// larger than any honest use of the small inputs here, much smaller than
/// what a forged size field asks for. Images are allowed their designed
/// bound: a header may declare up to 64 megapixels, decoded at most as
/// 16-bit RGBA.
fn largest_allowed(target: &str, input_len: usize) -> usize {
    match target {
        "image" => retrain::data::images::MAX_PIXELS as usize * 8,
        _ => (64 << 20).max(64 * input_len),
    }
}
/// Refused outright.
const ABSURD: usize = 4 << 30;

unsafe impl GlobalAlloc for Watched {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        match layout.size() > ABSURD {
            true => std::ptr::null_mut(),
            false => unsafe { System.alloc(layout) },
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        match size > ABSURD {
            true => std::ptr::null_mut(),
            false => unsafe { System.realloc(ptr, layout, size) },
        }
    }
}

#[global_allocator]
static ALLOCATOR: Watched = Watched;

/// Longer than any input here takes; a hang or a quadratic blow-up does not finish.
const SLOWEST_ALLOWED: Duration = Duration::from_secs(10);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The corpus and artifact files of `target`.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["corpus", "artifacts"] {
        if let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) {
            files.extend(entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
        }
    }
    files.sort();
    files
}

/// Runs every input of `target`; returns a line per fault.
fn replay(target: &str) -> Vec<String> {
    let entry = retrain::fuzz_targets::target(target).unwrap();
    let mut faults = Vec::new();
    for path in inputs(target) {
        let data = std::fs::read(&path).unwrap();
        LARGEST.with(|l| l.set(0));
        let start = Instant::now();
        let outcome = std::panic::catch_unwind(|| entry(&data));
        let (took, largest) = (start.elapsed(), LARGEST.with(Cell::get));
        let name = path.strip_prefix(fuzz_dir()).unwrap().display();
        if outcome.is_err() {
            faults.push(format!("{name}: panicked"));
        }
        if took > SLOWEST_ALLOWED {
            faults.push(format!("{name}: took {took:?}"));
        }
        if largest > largest_allowed(target, data.len()) {
            faults.push(format!("{name}: allocated {largest} bytes at once"));
        }
    }
    faults
}

#[test]
fn every_target_has_a_corpus_and_replays_without_a_fault() {
    // Panics are caught and reported per input; keep their messages short.
    std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
    let mut faults = Vec::new();
    for (target, _) in retrain::fuzz_targets::TARGETS {
        let n = inputs(target).len();
        assert!(n >= 1, "fuzz/corpus/{target} is empty");
        eprintln!("{target}: {n} inputs");
        faults.extend(replay(target));
    }
    assert!(faults.is_empty(), "{}", faults.join("\n"));
}

#[test]
fn the_seeds_are_accepted_where_they_are_complete() {
    // A corpus the parsers refuse at the first byte would fuzz nothing.
    let seed = |target: &str, name: &str| {
        std::fs::read(fuzz_dir().join("corpus").join(target).join(name)).unwrap()
    };
    let pickled = retrain::convert::pickle::load(&seed("pickle", "seed-state_dict.pkl"));
    assert!(pickled.is_ok(), "{pickled:?}");
    let literal = seed("js_literal", "seed-model.min.js");
    let parsed = retrain::convert::js_literal::parse(std::str::from_utf8(&literal).unwrap(), 0);
    assert!(parsed.unwrap().0["weightsManifest"].is_array());
    let image = retrain::data::images::decode_bytes(&seed("image", "seed-cmyk.jpg")).unwrap();
    assert_eq!((image.width(), image.height()), (9, 6));
}

#[test]
fn forged_sizes_are_refused_without_allocating_them() {
    // Each declares far more data than it holds.
    let mut bottleneck = b"RTBNECK1".to_vec();
    bottleneck.extend(u32::MAX.to_le_bytes());
    let mut pickled = b"\x80\x02X".to_vec();
    pickled.extend(u32::MAX.to_le_bytes());
    let mut safetensors = 1_000_000u64.to_le_bytes().to_vec();
    safetensors.extend(br#"{"a":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4]}}"#);
    let tfjs_manifest = br#"{"modelTopology":{},"weightsManifest":[{"paths":["group1-shard1of1.bin"],"weights":[{"name":"a","shape":[1000000000,1000000000,1000000000],"dtype":"float32"}]}]}"#;
    let mut tfjs = vec![0u8];
    tfjs.extend((tfjs_manifest.len() as u16).to_le_bytes());
    tfjs.extend(tfjs_manifest);
    let cases: [(&str, Vec<u8>); 5] = [
        ("bottleneck_entry", bottleneck),
        ("pickle", pickled),
        ("safetensors_source", safetensors.clone()),
        ("classifier", safetensors),
        ("tfjs_folder", tfjs),
    ];
    for (target, data) in cases {
        let entry = retrain::fuzz_targets::target(target).unwrap();
        LARGEST.with(|l| l.set(0));
        entry(&data);
        let largest = LARGEST.with(Cell::get);
        assert!(largest < 1 << 20, "{target}: allocated {largest} bytes");
    }
}
