//! report.html of a small real run (MobileNet V2 at 96×96 on the example
//! screenshots), rendered in headless Chromium (Debian's `chromium`): it
//! loads with no console error and no request leaving the file, and shows
//! the run's own numbers; `retrain report` redraws the same page; `classify
//! --threshold` applies a cut-off.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{examples, retrain, stderr};

/// A short run whose head is still unsure, so that some test images are
/// misclassified and the report has thumbnails to show.
fn small_run(root: &Path) -> PathBuf {
    let images = examples();
    let o = retrain(
        root,
        &[
            "--image-dir",
            images.to_str().unwrap(),
            "--architecture",
            "mobilenet_v2",
            "--input-size",
            "96",
            "--testing-percentage",
            "25",
            "--how-many-training-steps",
            "100",
            "--seed",
            "3",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    root.join("retrain-output")
}

/// What Chromium made of a page: the DOM after load, its stderr (console
/// lines among it) and its network log, one event per line.
struct Rendered {
    dom: String,
    stderr: String,
    net_log: String,
}

fn chromium() -> PathBuf {
    let candidates = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("this test needs Debian's chromium package: apt-get install chromium")
}

/// Loads `page` in headless Chromium (its own profile and HOME, nothing
/// reachable by name) and takes a screenshot.
fn render(page: &Path) -> Rendered {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (shot, net) = (d.join("shot.png"), d.join("net.json"));
    let o = Command::new("timeout")
        .args(["-k", "5", "120"])
        .arg(chromium())
        .env("HOME", d)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-breakpad",
            "--timeout=20000",
            "--window-size=1300,2400",
            "--enable-logging=stderr",
            "--net-log-capture-mode=Default",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", d.join("profile").display()))
        .arg(format!("--log-net-log={}", net.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    let stderr = stderr(&o);
    assert!(o.status.success(), "chromium failed: {stderr}");
    assert!(!stderr.contains("Page load failed"), "{stderr}");
    let png = std::fs::read(&shot).unwrap_or_default();
    assert!(png.starts_with(b"\x89PNG"), "no screenshot: {stderr}");
    Rendered {
        dom: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr,
        net_log: std::fs::read_to_string(&net).unwrap_or_default(),
    }
}

impl Rendered {
    /// Console messages (errors included: Chromium logs them all as CONSOLE).
    fn console(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.contains(":CONSOLE"))
            .collect()
    }

    /// Network events the page itself caused (the browser's own background
    /// requests have no origin). The first line holds the constants and the
    /// command line, page URL included, so it is skipped.
    fn page_requests(&self) -> Vec<&str> {
        const PAGE_ORIGIN: [&str; 4] = [
            "\"initiator\":\"null\"",
            "\"initiator\":\"file://",
            "\"network_isolation_key\":\"file://",
            "\"network_anonymization_key\":\"file://",
        ];
        self.net_log
            .lines()
            .skip(1)
            .filter(|l| PAGE_ORIGIN.iter().any(|o| l.contains(o)))
            .collect()
    }

    /// The element with `id` and what follows it, up to `len` bytes.
    fn element(&self, id: &str, len: usize) -> &str {
        let at = self
            .dom
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no element #{id} in the rendered page"));
        &self.dom[at..(at + len).min(self.dom.len())]
    }
}

#[test]
fn the_request_and_console_checks_can_fail() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("leaky.html");
    std::fs::write(
        &page,
        "<!DOCTYPE html><html><body><img src=\"http://example.invalid/x.png\">\
         <script>console.error('boom')</script></body></html>",
    )
    .unwrap();
    let r = render(&page);
    assert!(
        !r.page_requests().is_empty(),
        "the external image went unseen"
    );
    assert!(
        r.console().iter().any(|l| l.contains("boom")),
        "{}",
        r.stderr
    );
}

#[test]
fn report_renders_alone_with_the_runs_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let out = small_run(dir.path());
    let page = out.join("report.html");
    let metrics: Value =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let r = render(&page);
    assert!(r.net_log.lines().count() > 1, "no network log was written");
    assert_eq!(r.console(), Vec::<&str>::new(), "console messages");
    assert_eq!(
        r.page_requests(),
        Vec::<&str>::new(),
        "requests left the file"
    );

    let test = &metrics["final"]["test"];
    let accuracy = format!("{:.1}%", test["accuracy"].as_f64().unwrap() * 100.0);
    let n = test["n"].as_u64().unwrap();
    let headline = r.element("test-accuracy", 300);
    assert!(
        headline.contains(&accuracy) && headline.contains(&format!("N={n}")),
        "{headline}"
    );

    // The confusion matrix: every cell's count.
    let confusion = test["confusion"].as_array().unwrap();
    for (t, row) in confusion.iter().enumerate() {
        for (p, count) in row.as_array().unwrap().iter().enumerate() {
            let cell = r.element(&format!("confusion-{t}-{p}"), 200);
            assert!(cell.contains(&format!("<b>{count}</b>")), "{cell}");
        }
    }

    // The curves, with the kept step; the sweep's winner.
    let chosen = metrics["sweep"]["chosen"].as_u64().unwrap();
    let kept_step = metrics["sweep"]["heads"][chosen as usize]["kept_step"]
        .as_u64()
        .unwrap();
    for id in ["curve-accuracy", "curve-cross-entropy", "pr-curves"] {
        assert!(r.element(id, 100).contains("<svg"), "#{id} has no chart");
    }
    assert!(r.dom.contains(&format!("kept step {kept_step}")));
    assert!(r.element(&format!("head-{chosen}"), 100).contains("winner"));
    r.element("threshold-table", 10);

    // One thumbnail per misclassified test image.
    let wrong = test["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            let probs: Vec<f64> = p["probabilities"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let predicted = if probs[1] > probs[0] { 1 } else { 0 };
            p["truth"].as_u64().unwrap() != predicted
        })
        .count();
    assert!(
        wrong > 0,
        "the run misclassified nothing: no thumbnails to check"
    );
    assert_eq!(r.dom.matches("class=\"missed\"").count(), wrong.min(60));
    assert_eq!(
        r.dom.matches("src=\"data:image/jpeg;base64,").count(),
        wrong.min(60)
    );

    // `retrain report` draws the same page from metrics.json.
    let first = std::fs::read(&page).unwrap();
    std::fs::remove_file(&page).unwrap();
    let o = retrain(
        dir.path(),
        &["report", "--output-dir", out.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        std::fs::read(&page).unwrap() == first,
        "the redrawn report differs"
    );
}

#[test]
fn classify_applies_a_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let out = small_run(dir.path());
    let model = out.join("model.safetensors");
    let images = examples().join("broken");
    let classify = |extra: &[&str]| {
        let mut args = vec!["classify", "--json", "--graph", model.to_str().unwrap()];
        args.extend(extra);
        args.push(images.to_str().unwrap());
        retrain(dir.path(), &args)
    };
    let broken_score = |line: &Value| {
        line["predictions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["label"] == "broken")
            .unwrap()["score"]
            .as_f64()
            .unwrap()
    };
    let json_lines = |o: &std::process::Output| -> Vec<Value> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // A cut-off halfway between the two middle scores, so both calls occur
    // whatever the small run learned on this machine's driver.
    let o = classify(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut scores: Vec<f64> = json_lines(&o).iter().map(broken_score).collect();
    scores.sort_by(f64::total_cmp);
    let cutoff = (scores[29] + scores[30]) / 2.0;
    assert!(
        scores[29] < cutoff && cutoff < scores[30],
        "the middle scores are equal: {scores:?}"
    );
    let o = classify(&["--threshold", &format!("broken={cutoff}")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 60);
    let mut called = [0, 0];
    for line in &lines {
        let broken = broken_score(line);
        let expected = if broken >= cutoff { "broken" } else { "normal" };
        assert_eq!(line["decision"], expected, "{line}");
        called[(expected == "broken") as usize] += 1;
    }
    assert_eq!(called, [30, 30]);

    let o = classify(&["--threshold", "borken=0.3"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("broken, normal"), "{}", stderr(&o));
    let o = classify(&["--threshold", "broken=1.5"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("from 0 to 1"), "{}", stderr(&o));
}
