//! `retrain serve` under load (cargo bench --bench serve): a classifier is
//! trained on the example screenshots, the server started on the loopback
//! interface, and clients at concurrency 1, 4, 16 and 64 send one screenshot
//! per request; reported: images/s and p50/p95/p99 latency per level, next
//! to the engine's offline `features` rate on the same images and device in
//! the same run. Bounded: BENCH_REQUESTS requests per level (default 64) and
//! two minutes per level. BENCH_ARCH (default mobilenet_v2) and BENCH_INPUT
//! (default the network's own size) choose the model; results also go to
//! target/bench-serve.json.

use retrain::data::images;
use retrain::engine::Engine;
use retrain::gpu::Gpu;
use retrain::model::weights::WeightFile;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LEVELS: [usize; 4] = [1, 4, 16, 64];
const LEVEL_TIME: Duration = Duration::from_secs(120);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let architecture = std::env::var("BENCH_ARCH").unwrap_or_else(|_| "mobilenet_v2".into());
    let requests: usize = env_or("BENCH_REQUESTS", 64);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/webstyle");
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-serve");
    let model = train(&work, &examples, &architecture);
    let paths = images::list_images(&examples).expect("example images");
    let bodies: Arc<Vec<Vec<u8>>> =
        Arc::new(paths.iter().map(|p| std::fs::read(p).unwrap()).collect());

    let (device, offline) = offline_rate(&model, &paths);
    println!("[{device}] {architecture}: offline features {offline:.2} images/s");
    let server = Server::start(&model);
    let mut rows = Vec::new();
    for concurrency in LEVELS {
        let (rate, latencies) = load(&server.url, concurrency, requests.max(concurrency), &bodies);
        let [p50, p95, p99] = [0.50, 0.95, 0.99].map(|q| percentile(&latencies, q));
        println!(
            "concurrency {concurrency:>3}: {rate:8.2} images/s ({:5.1}% of offline)  p50 {p50:7.1} ms  p95 {p95:7.1} ms  p99 {p99:7.1} ms",
            100.0 * rate / offline
        );
        rows.push(serde_json::json!({
            "concurrency": concurrency, "images_per_s": rate, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
        }));
    }
    let report = serde_json::json!({
        "device": device, "architecture": architecture, "offline_images_per_s": offline, "levels": rows,
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-serve.json");
    std::fs::write(out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
}

/// A classifier on the examples (head training is short; the bench is about serving).
fn train(work: &Path, examples: &Path, architecture: &str) -> PathBuf {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).unwrap();
    let mut args = vec![
        "--image-dir",
        examples.to_str().unwrap(),
        "--architecture",
        architecture,
    ];
    let input = std::env::var("BENCH_INPUT").ok();
    if let Some(size) = input.as_deref() {
        args.extend(["--input-size", size]);
    }
    args.extend(["--how-many-training-steps", "50", "--seed", "1"]);
    let status = Command::new(env!("CARGO_BIN_EXE_retrain"))
        .current_dir(work)
        .args(&args)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "training the bench's classifier failed");
    work.join("retrain-output/model.safetensors")
}

/// The engine's images/s on the same images, decoded ahead, as `features` runs them.
fn offline_rate(model: &Path, paths: &[PathBuf]) -> (String, f64) {
    let classifier = retrain::head::Classifier::read(model).unwrap();
    let file = WeightFile::open(&classifier.base_weights).unwrap();
    let mut engine = Engine::new(Gpu::new().unwrap(), &file, Some(classifier.input_size)).unwrap();
    engine.tune_on_first_use().unwrap();
    let decoded: Vec<_> = paths.iter().map(|p| images::decode(p).unwrap()).collect();
    engine.bottlenecks(&decoded[..1]).unwrap();
    let batch = engine.max_batch() as usize;
    let t = Instant::now();
    for chunk in decoded.chunks(batch) {
        engine.bottlenecks(chunk).unwrap();
    }
    (
        engine.gpu.info.name.clone(),
        paths.len() as f64 / t.elapsed().as_secs_f64(),
    )
}

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(model: &Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_retrain"))
            .args([
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--max-queue",
                "1024",
                "--timeout-s",
                "600",
            ])
            .args(["--graph", model.to_str().unwrap()])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = loop {
            let line = lines.next().expect("the server stopped").unwrap();
            if let Some(at) = line.find("http://") {
                break line[at..].split_whitespace().next().unwrap().to_string();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        while ureq::get(&format!("{url}/healthz")).call().is_err() {
            std::thread::sleep(Duration::from_millis(100));
        }
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `total` requests from `concurrency` clients (or what fits in LEVEL_TIME):
/// images/s and every latency in ms.
fn load(
    url: &str,
    concurrency: usize,
    total: usize,
    bodies: &Arc<Vec<Vec<u8>>>,
) -> (f64, Vec<f64>) {
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let clients: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, latencies, bodies) = (next.clone(), latencies.clone(), bodies.clone());
            let endpoint = format!("{url}/v1/classify");
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || started.elapsed() > LEVEL_TIME {
                    return;
                }
                let t = Instant::now();
                let answer = ureq::post(&endpoint).send_bytes(&bodies[i % bodies.len()]);
                assert!(answer.is_ok(), "request {i} failed: {answer:?}");
                latencies
                    .lock()
                    .unwrap()
                    .push(t.elapsed().as_secs_f64() * 1000.0);
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let latencies = Arc::try_unwrap(latencies).unwrap().into_inner().unwrap();
    (latencies.len() as f64 / elapsed, latencies)
}

fn percentile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
