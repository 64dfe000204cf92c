//! `retrain serve` on 127.0.0.1 (an ephemeral port) with a classifier
//! trained on the example screenshots (MobileNet V2 at 96×96): answers equal
//! `classify --json`, concurrent clients each get their own answers, bad
//! input gets a 4xx with a JSON error while the server goes on, a full queue
//! answers 503 at once, and SIGTERM finishes the requests in flight.

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

mod common;
use common::{examples, retrain, stderr};

/// The classifier every test serves, trained once per test binary.
fn model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-fixture");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let images = examples();
        let args = [
            "--image-dir",
            images.to_str().unwrap(),
            "--architecture",
            "mobilenet_v2",
            "--input-size",
            "96",
            "--how-many-training-steps",
            "100",
            "--seed",
            "3",
        ];
        let o = retrain(&dir, &args);
        assert!(o.status.success(), "{}", stderr(&o));
        dir.join("retrain-output/model.safetensors")
    })
}

/// Some example screenshots, both classes, sorted by name.
fn images(n: usize) -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = ["broken", "normal"]
        .iter()
        .flat_map(|c| std::fs::read_dir(examples().join(c)).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    all.sort_by_key(|p| p.file_name().unwrap().to_owned());
    all.truncate(n);
    all
}

/// `classify --json`'s predictions of each file, by file name.
fn classified(files: &[PathBuf]) -> HashMap<String, Value> {
    let mut args = vec!["classify", "--json", "--top-k", "2", "--graph"];
    args.push(model().to_str().unwrap());
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let o = retrain(Path::new("."), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| {
            let name = Path::new(v["path"].as_str().unwrap()).file_name().unwrap();
            (
                name.to_string_lossy().into_owned(),
                v["predictions"].clone(),
            )
        })
        .collect()
}

/// Labels equal, probabilities within 1e-5.
fn assert_same_predictions(served: &Value, expected: &Value) {
    let (s, e) = (served.as_array().unwrap(), expected.as_array().unwrap());
    assert_eq!(s.len(), e.len(), "{served} vs {expected}");
    for (s, e) in s.iter().zip(e) {
        assert_eq!(s["label"], e["label"], "{served} vs {expected}");
        let diff = (s["score"].as_f64().unwrap() - e["score"].as_f64().unwrap()).abs();
        assert!(diff <= 1e-5, "{served} vs {expected}");
    }
}

struct Server {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `retrain serve` and waits until /healthz says it is ready.
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_retrain"))
            .args(["serve", "--port", "0", "--graph", model().to_str().unwrap()])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let url = loop {
            let line = lines
                .next()
                .expect("the server stopped before listening")
                .unwrap();
            log.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(at) = line.find("http://") {
                break line[at..].split_whitespace().next().unwrap().to_string();
            }
        };
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let server = Server { child, url, log };
        let started = Instant::now();
        while get(&format!("{}/healthz", server.url)).0 != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "never ready: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn classify(&self, body: &[u8], content_type: &str) -> Answer {
        post(
            &format!("{}/v1/classify?top_k=2", self.url),
            body,
            content_type,
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status, JSON body (Null when not JSON) and Retry-After of an answer.
struct Answer {
    status: u16,
    json: Value,
    retry_after: Option<String>,
}

fn answer(r: ureq::Response) -> Answer {
    let status = r.status();
    let retry_after = r.header("Retry-After").map(String::from);
    let text = r.into_string().unwrap_or_default();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        json,
        retry_after,
    }
}

fn post(url: &str, body: &[u8], content_type: &str) -> Answer {
    match ureq::post(url)
        .set("Content-Type", content_type)
        .send_bytes(body)
    {
        Ok(r) | Err(ureq::Error::Status(_, r)) => answer(r),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

/// POSTs over a plain connection, reading the answer even when the server
/// answers before the whole body is sent and stops reading (as it does with
/// a 413): ureq writes everything first and then reports a broken pipe.
fn post_raw(url: &str, body: &[u8], content_type: &str) -> Answer {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let mut writer = stream.try_clone().unwrap();
    let request = [head.as_bytes(), body].concat();
    let sending = std::thread::spawn(move || {
        let _ = writer.write_all(&request); // may fail once the server stops reading
    });
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = stream.read(&mut chunk) {
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
    }
    let _ = sending.join();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = match chunked {
        true => unchunk(body),
        false => body.to_string(),
    };
    Answer {
        status,
        json: serde_json::from_str(&body).unwrap_or(Value::Null),
        retry_after: None,
    }
}

/// A chunked HTTP body's data.
fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

fn get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(r) | Err(ureq::Error::Status(_, r)) => (r.status(), r.into_string().unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

const BOUNDARY: &str = "retrain-test-boundary";

/// A multipart/form-data body with one file part per (name, bytes).
fn multipart(parts: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (name, bytes)) in parts.iter().enumerate() {
        body.extend(format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image{i}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes());
        body.extend(bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn answers_equal_classify() {
    let files = images(6);
    let expected = classified(&files);
    let server = Server::start(&[]);
    for f in &files {
        // A wrong Content-Type: the bytes say what the image is.
        let a = server.classify(&std::fs::read(f).unwrap(), "text/plain");
        assert_eq!(a.status, 200, "{}", a.json);
        assert_same_predictions(&a.json["images"][0]["predictions"], &expected[&name_of(f)]);
    }
    let parts: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|f| (name_of(f), std::fs::read(f).unwrap()))
        .collect();
    let a = server.classify(&multipart(&parts), &multipart_type());
    assert_eq!(a.status, 200, "{}", a.json);
    for (served, f) in a.json["images"].as_array().unwrap().iter().zip(&files) {
        assert_eq!(served["name"], name_of(f));
        assert_same_predictions(&served["predictions"], &expected[&name_of(f)]);
    }
    let (status, model) = get(&format!("{}/v1/model", server.url));
    assert_eq!(status, 200);
    let model: Value = serde_json::from_str(&model).unwrap();
    assert_eq!(model["labels"], serde_json::json!(["broken", "normal"]));
    assert_eq!(model["input_size"], serde_json::json!([96, 96]));
    let (_, metrics) = get(&format!("{}/metrics", server.url));
    assert!(
        metrics.contains("retrain_images_classified_total 12"),
        "{metrics}"
    );
    assert!(
        metrics.contains("retrain_requests_total{status=\"200\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("retrain_device_info{device="), "{metrics}");
    assert!(
        server.log().contains("POST /v1/classify 200 6 images"),
        "{}",
        server.log()
    );
}

#[test]
fn concurrent_clients_each_get_their_own_answers() {
    let files = images(32);
    let expected = Arc::new(classified(&files));
    let server = Arc::new(Server::start(&["--max-wait-ms", "20"]));
    let threads: Vec<_> = files
        .chunks(4)
        .map(|chunk| {
            let (chunk, server, expected) = (chunk.to_vec(), server.clone(), expected.clone());
            std::thread::spawn(move || {
                for f in chunk {
                    let a = server.classify(&std::fs::read(&f).unwrap(), "image/jpeg");
                    assert_eq!(a.status, 200, "{}", a.json);
                    assert_same_predictions(
                        &a.json["images"][0]["predictions"],
                        &expected[&name_of(&f)],
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// A 1×1 PNG whose header claims 100,000 × 100,000 pixels.
fn bomb() -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::new(1, 1)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32fast::hash(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

#[test]
fn bad_input_gets_a_4xx_and_the_server_goes_on() {
    let server = Server::start(&["--max-body-mb", "1"]);
    let good = std::fs::read(&images(1)[0]).unwrap();
    let cases: Vec<(&str, Vec<u8>, String, u16)> = vec![
        ("empty body", Vec::new(), "image/jpeg".into(), 400),
        ("not an image", b"hello".to_vec(), "image/png".into(), 400),
        (
            "truncated",
            good[..good.len() / 3].to_vec(),
            "image/jpeg".into(),
            400,
        ),
        ("bomb", bomb(), "image/png".into(), 413),
        ("too big", vec![7u8; 2 << 20], "image/jpeg".into(), 413),
        (
            "malformed multipart",
            b"garbage".to_vec(),
            multipart_type(),
            400,
        ),
        (
            "empty multipart",
            format!("--{BOUNDARY}--\r\n").into_bytes(),
            multipart_type(),
            400,
        ),
        (
            "multipart with a bad part",
            multipart(&[
                ("good.jpg".into(), good.clone()),
                ("bad.jpg".into(), b"x".to_vec()),
            ]),
            multipart_type(),
            400,
        ),
    ];
    for (what, body, content_type, status) in cases {
        let a = match what {
            "too big" => post_raw(
                &format!("{}/v1/classify?top_k=2", server.url),
                &body,
                &content_type,
            ),
            _ => server.classify(&body, &content_type),
        };
        assert_eq!(a.status, status, "{what}: {}", a.json);
        assert!(
            a.json["error"].is_string(),
            "{what}: no JSON error: {}",
            a.json
        );
        assert_eq!(get(&format!("{}/healthz", server.url)).0, 200, "{what}");
    }
    let a = server.classify(
        &multipart(&[("bad.jpg".into(), b"x".to_vec())]),
        &multipart_type(),
    );
    assert!(
        a.json["error"].as_str().unwrap().contains("bad.jpg"),
        "{}",
        a.json
    );
    assert_eq!(server.classify(&good, "image/jpeg").status, 200);
}

fn tiny_png() -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::from_pixel(1, 1, image::Rgb([9, 9, 9]))
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}

/// `n` clients sending `body` (of `content_type`) at the same moment; their answers.
fn all_at_once(server: &Arc<Server>, n: usize, body: Vec<u8>, content_type: &str) -> Vec<Answer> {
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let (server, barrier, body) = (server.clone(), barrier.clone(), body.clone());
            let content_type = content_type.to_string();
            std::thread::spawn(move || {
                barrier.wait();
                server.classify(&body, &content_type)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn a_full_queue_answers_503_at_once() {
    let server = Arc::new(Server::start(&["--max-queue", "1", "--max-batch", "1"]));
    let answers = all_at_once(&server, 16, tiny_png(), "image/png");
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    assert!(!refused.is_empty(), "no request found the queue full");
    for a in &answers {
        assert!(
            a.status == 200 || a.status == 503,
            "{}: {}",
            a.status,
            a.json
        );
    }
    for a in refused {
        assert_eq!(a.retry_after.as_deref(), Some("1"));
        assert!(a.json["error"].as_str().unwrap().contains("queue is full"));
    }
}

#[test]
fn sigterm_answers_the_requests_in_flight_and_exits_0() {
    let server = Arc::new(Server::start(&["--max-batch", "1", "--max-wait-ms", "0"]));
    let pid = server.child.id().to_string();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
    });
    // 12 requests of 4 images, run one image at a time: seconds of work.
    let image = std::fs::read(&images(1)[0]).unwrap();
    let body = multipart(&vec![("page.jpg".to_string(), image); 4]);
    let answers = all_at_once(&server, 12, body, &multipart_type());
    killer.join().unwrap();
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(a.json["images"].as_array().unwrap().len(), 4);
    }
    let mut server = Arc::try_unwrap(server).ok().expect("the clients are done");
    let status = server.child.wait().unwrap();
    let log = server.log();
    assert!(status.success(), "{status}: {log}");
    // Requests were answered after the signal: they were in flight.
    let stopping = log.find("Stopping").expect("the signal was seen");
    assert!(log[stopping..].contains("POST /v1/classify 200"), "{log}");
    assert!(log.ends_with("INFO: Stopped\n"), "{log}");
}
