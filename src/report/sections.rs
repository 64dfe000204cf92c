//! The report's sections, each a piece of HTML built from metrics.json.

use super::charts::{self, CurveMetric};
use super::run_metrics::RunMetrics;
use super::statistics::{cutoff_for_recall, cutoff_text, pr_curve, wilson_interval};
use super::thumbnails;
use crate::train::evaluation::{TestPrediction, TestReport};
use anyhow::Result;
use std::path::Path;

/// Misclassified images shown as thumbnails; the rest are counted.
const MAX_THUMBNAILS: usize = 60;
/// The recalls the threshold table gives an operating point for.
const TARGET_RECALLS: [f64; 3] = [0.90, 0.95, 0.99];

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn optional_pct(v: Option<f64>) -> String {
    v.map_or("–".into(), pct)
}

/// A test image's path relative to the image folder when it is inside it.
fn shown_path(m: &RunMetrics, path: &str) -> String {
    let p = Path::new(path);
    p.strip_prefix(&m.image_dir)
        .unwrap_or(p)
        .display()
        .to_string()
}

/// Title, the final accuracy with its interval, what each class lost, the
/// data per class and split, the run's facts and the time per phase.
pub fn at_a_glance(m: &RunMetrics) -> String {
    let mut html = format!(
        "<h1>retrain: {}</h1>\n<section id=\"summary\">\n",
        escape(&m.labels.join(" / "))
    );
    html += &headline(m);
    html += &data_table(m);
    html += &facts_table(m);
    html + "</section>\n"
}

fn headline(m: &RunMetrics) -> String {
    let Some(test) = &m.final_.test else {
        return "<p class=\"headline\">No test images: the run has no final test.</p>\n".into();
    };
    let correct = test.correct();
    let (lo, hi) = wilson_interval(correct, test.n);
    let mut html = format!(
        "<p class=\"headline\" id=\"test-accuracy\">Test accuracy <b>{}</b> ({correct} of N={} test images; 95% interval {}–{})</p>\n",
        pct(test.accuracy), test.n, pct(lo), pct(hi)
    );
    for (c, label) in m.labels.iter().enumerate() {
        let total: u32 = test.confusion[c].iter().sum();
        let missed = total - test.confusion[c][c];
        let called: u32 = (0..m.labels.len()).map(|t| test.confusion[t][c]).sum();
        let wrongly = called - test.confusion[c][c];
        let class = if missed > 0 { " class=\"bad\"" } else { "" };
        html += &format!(
            "<p class=\"missed-line\" id=\"missed-{c}\"><b>{}</b>: <span{class}>{missed} of {total} missed</span> (recall {}); {wrongly} other images called {} (precision {})</p>\n",
            escape(label), optional_pct(test.recall[c]), escape(label), optional_pct(test.precision[c])
        );
    }
    html
}

fn data_table(m: &RunMetrics) -> String {
    let mut html = String::from(
        "<table id=\"data\"><tr><th class=\"label\">class</th><th>training</th><th>validation</th><th>test</th></tr>\n",
    );
    for c in &m.images.per_class {
        html += &format!(
            "<tr><td class=\"label\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(&c.label),
            c.training,
            c.validation,
            c.testing
        );
    }
    let i = &m.images;
    html += &format!(
        "<tr><th class=\"label\">all</th><th>{}</th><th>{}</th><th>{}</th></tr></table>\n",
        i.training, i.validation, i.testing
    );
    if i.skipped > 0 {
        html += &format!(
            "<p class=\"note\">{} unreadable images skipped.</p>\n",
            i.skipped
        );
    }
    html
}

fn facts_table(m: &RunMetrics) -> String {
    let t = &m.timings_seconds;
    let other = (t.total - t.bottlenecks - t.training - t.fine_tuning - t.evaluation).max(0.0);
    let facts = [
        ("images", escape(&m.image_dir)),
        ("device", escape(&m.device)),
        (
            "base network",
            format!(
                "{} ({}, fingerprint {})",
                escape(&m.base.architecture),
                escape(&m.base.path),
                escape(&m.base.fingerprint)
            ),
        ),
        ("input size", format!("{}×{}", m.input_size[0], m.input_size[1])),
        (
            "head",
            format!(
                "{} ({} heads; {} of {} steps run; {}; seed {})",
                escape(&m.head_training),
                m.sweep.heads.len(),
                m.steps_run,
                m.steps,
                escape(&m.optimizer),
                m.seed
            ),
        ),
        ("classifier", escape(&m.output_graph)),
        (
            "time",
            format!(
                "{:.1} s in all: bottlenecks {:.1} s ({} computed, {} cached{}), training {:.1} s, fine-tuning {:.1} s, test {:.1} s, the rest {:.1} s",
                t.total, t.bottlenecks, m.bottlenecks.computed, m.bottlenecks.from_cache,
                match m.bottlenecks.at_final_test {
                    0 => String::new(),
                    n => format!("; the {n} test images' counted in the test's time"),
                },
                t.training, t.fine_tuning, t.evaluation, other
            ),
        ),
    ];
    let rows: String = facts
        .iter()
        .map(|(k, v)| format!("<tr><th class=\"label\">{k}</th><td>{v}</td></tr>\n"))
        .collect();
    format!("<table class=\"facts\" id=\"facts\">\n{rows}</table>\n")
}

/// Accuracy and cross-entropy over the steps, for every head.
pub fn curves(m: &RunMetrics) -> Result<String> {
    let heads = &m.sweep.heads;
    let kept = m.sweep.chosen as usize;
    if heads.get(kept).is_none_or(|h| h.curve.steps.is_empty()) {
        return Ok(String::new());
    }
    let selection = match m.sweep.compared_on.as_str() {
        "validation" => "validation",
        _ => "training images (no validation images)",
    };
    let mut html = format!(
        "<section id=\"curves\">\n<h2>Training curves</h2>\n<p class=\"note\">Bold: the kept head (kept step {}); faint: the other {} heads of the sweep. Training numbers are on each step's batch, {selection} numbers on all of them.</p>\n<div class=\"charts\">\n",
        heads[kept].kept_step,
        heads.len() - 1
    );
    for metric in [CurveMetric::Accuracy, CurveMetric::CrossEntropy] {
        let id = match metric {
            CurveMetric::Accuracy => "curve-accuracy",
            CurveMetric::CrossEntropy => "curve-cross-entropy",
        };
        let svg = charts::training_curves(heads, kept, metric, selection)?;
        html += &format!("<figure id=\"{id}\">{svg}</figure>\n");
    }
    Ok(html + "</div>\n</section>\n")
}

/// The sweep as a grid: learning rates down, L2 penalties across.
pub fn sweep(m: &RunMetrics) -> String {
    let heads = &m.sweep.heads;
    let mut rates: Vec<f32> = heads.iter().map(|h| h.learning_rate).collect();
    let mut l2s: Vec<f32> = heads.iter().map(|h| h.l2).collect();
    for v in [&mut rates, &mut l2s] {
        v.sort_by(f32::total_cmp);
        v.dedup();
    }
    let mut html = format!(
        "<section id=\"sweep\">\n<h2>The sweep</h2>\n<p class=\"note\">Accuracy on the {} images of each head at its kept step; the kept head is outlined.</p>\n<table id=\"sweep-grid\"><tr><th>learning rate \\ L2</th>",
        escape(&m.sweep.compared_on)
    );
    html += &l2s
        .iter()
        .map(|l| format!("<th>{l}</th>"))
        .collect::<String>();
    html += "</tr>\n";
    for rate in &rates {
        html += &format!("<tr><th>{rate}</th>");
        for l2 in &l2s {
            let cell = heads
                .iter()
                .position(|h| h.learning_rate == *rate && h.l2 == *l2);
            html += &match cell {
                Some(i) => sweep_cell(m, i),
                None => "<td>–</td>".into(),
            };
        }
        html += "</tr>\n";
    }
    html + "</table>\n</section>\n"
}

fn sweep_cell(m: &RunMetrics, i: usize) -> String {
    let h = &m.sweep.heads[i];
    let winner = i == m.sweep.chosen as usize;
    let class = if winner { " class=\"winner\"" } else { "" };
    let shade = 255 - (h.validation_accuracy.clamp(0.0, 1.0) * 120.0) as u8;
    format!(
        "<td id=\"head-{i}\"{class} style=\"background: rgb({shade}, 255, {shade})\">{}{}</td>",
        pct(h.validation_accuracy as f64),
        if winner { " ★" } else { "" }
    )
}

/// The fine-tuning phase: what trained and how, and every epoch's numbers,
/// the kept epoch outlined (none when the run did not fine-tune).
pub fn fine_tuning(m: &RunMetrics) -> String {
    let Some(f) = &m.fine_tuning else {
        return String::new();
    };
    let mut html = format!(
        "<section id=\"fine-tuning\">\n<h2>Fine-tuning</h2>\n<p class=\"note\">From {} up ({} conv layers and the head, {} parameters) with the {} activations cached ({:.1} MiB, {}); {}, peak learning rate {}, weight decay {}, dropout {}, {} images per step ({} per pass); epoch 0 is the frozen head, shown for comparison{}. Kept: {}.</p>\n",
        escape(&f.from),
        f.trained_layers,
        f.parameters,
        escape(&f.cut),
        f.cut_cache_bytes as f64 / (1 << 20) as f64,
        escape(&f.cut_storage),
        escape(&f.optimizer),
        f.learning_rate,
        f.weight_decay,
        f.dropout,
        f.batch_size,
        f.micro_batch,
        match m.head_training.as_str() {
            "sweep" => " (the head sweep chose it on the same validation images, so its figure there reads high)",
            _ => "",
        },
        match f.best_epoch {
            0 => "the frozen head (epoch 0)".to_string(),
            e => format!("epoch {e}, the best fine-tuned one"),
        }
    );
    html += "<table id=\"fine-tuning-epochs\"><tr><th>epoch</th><th>learning rate</th><th>train accuracy</th><th>train cross-entropy</th><th>validation accuracy</th><th>validation cross-entropy</th><th>seconds</th></tr>\n";
    for e in &f.epochs {
        let class = if e.epoch == f.best_epoch {
            " class=\"winner\""
        } else {
            ""
        };
        html += &format!(
            "<tr id=\"epoch-{}\"{class}><td>{}</td><td>{:.2e}</td><td>{}</td><td>{:.4}</td><td>{}</td><td>{}</td><td>{:.1}</td></tr>\n",
            e.epoch,
            e.epoch,
            e.learning_rate,
            pct(e.train_accuracy as f64),
            e.train_cross_entropy,
            optional_pct(e.validation_accuracy.map(f64::from)),
            e.validation_cross_entropy.map_or("–".into(), |c| format!("{c:.4}")),
            e.seconds
        );
    }
    html + "</table>\n</section>\n"
}

/// The confusion matrix (counts and row percentages) and per-class
/// precision, recall and F1.
pub fn confusion(m: &RunMetrics) -> String {
    let Some(test) = &m.final_.test else {
        return String::new();
    };
    let labels = &m.labels;
    let mut html = String::from(
        "<section id=\"confusion\">\n<h2>Confusion matrix (test split)</h2>\n<p class=\"note\">Rows: true label; columns: predicted. Each cell: images, and their share of the row.</p>\n<table id=\"confusion-matrix\"><tr><th class=\"label\">true \\ predicted</th>",
    );
    html += &labels
        .iter()
        .map(|l| format!("<th>{}</th>", escape(l)))
        .collect::<String>();
    html += "</tr>\n";
    for (t, label) in labels.iter().enumerate() {
        html += &format!("<tr><th class=\"label\">{}</th>", escape(label));
        let total: u32 = test.confusion[t].iter().sum();
        for (p, &count) in test.confusion[t].iter().enumerate() {
            html += &confusion_cell(t, p, count, total);
        }
        html += "</tr>\n";
    }
    html += "</table>\n";
    html += &class_scores(labels, test);
    html + "</section>\n"
}

fn confusion_cell(t: usize, p: usize, count: u32, row_total: u32) -> String {
    let share = if row_total > 0 {
        count as f64 / row_total as f64
    } else {
        0.0
    };
    let strength = (255.0 - share * 150.0) as u8;
    let colour = if t == p {
        format!("rgb({strength}, 255, {strength})")
    } else {
        format!("rgb(255, {strength}, {strength})")
    };
    format!(
        "<td id=\"confusion-{t}-{p}\" style=\"background: {colour}\"><b>{count}</b><br>{}</td>",
        pct(share)
    )
}

fn class_scores(labels: &[String], test: &TestReport) -> String {
    let mut html = String::from(
        "<table id=\"class-scores\"><tr><th class=\"label\">class</th><th>precision</th><th>recall</th><th>F1</th><th>test images</th></tr>\n",
    );
    for (c, label) in labels.iter().enumerate() {
        let f1 = match (test.precision[c], test.recall[c]) {
            (Some(p), Some(r)) if p + r > 0.0 => Some(2.0 * p * r / (p + r)),
            _ => None,
        };
        html += &format!(
            "<tr><td class=\"label\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            escape(label),
            optional_pct(test.precision[c]),
            optional_pct(test.recall[c]),
            optional_pct(f1),
            test.confusion[c].iter().sum::<u32>()
        );
    }
    html + "</table>\n"
}

/// For two classes: each class's precision–recall curve on the test split
/// and the cut-offs that reach 90/95/99% of its recall.
pub fn thresholds(m: &RunMetrics) -> Result<String> {
    let Some(test) = m.final_.test.as_ref().filter(|_| m.labels.len() == 2) else {
        return Ok(String::new());
    };
    let curves: Vec<(String, _)> = (0..2)
        .map(|c| {
            let scores: Vec<f32> = test
                .predictions
                .iter()
                .map(|p| p.probabilities[c])
                .collect();
            let positive: Vec<bool> = test.predictions.iter().map(|p| p.truth == c).collect();
            (m.labels[c].clone(), pr_curve(&scores, &positive))
        })
        .collect();
    let mut html = format!(
        "<section id=\"thresholds\">\n<h2>Choosing a cut-off</h2>\n<p class=\"note\">A class can be called whenever its probability reaches a cut-off rather than only when it is the more probable one: a lower cut-off misses fewer of its images and flags more of the others. Apply one with <code>retrain classify --threshold LABEL=P</code>. Measured on the {} test images, so a guide rather than a promise.</p>\n<figure id=\"pr-curves\">{}</figure>\n",
        test.n,
        charts::precision_recall(&curves)?
    );
    html += "<table id=\"threshold-table\"><tr><th class=\"label\">class</th><th>target recall</th><th>cut-off P ≥</th><th>recall there</th><th>precision there</th><th>images flagged</th></tr>\n";
    for (label, curve) in &curves {
        for target in TARGET_RECALLS {
            let Some(point) = cutoff_for_recall(curve, target) else {
                continue;
            };
            html += &format!(
                "<tr><td class=\"label\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} of {}</td></tr>\n",
                escape(label),
                pct(target),
                cutoff_text(point.threshold),
                pct(point.recall),
                pct(point.precision),
                point.flagged,
                test.n
            );
        }
    }
    Ok(html + "</table>\n</section>\n")
}

/// Every misclassified test image, most confidently wrong first.
pub fn misclassified(m: &RunMetrics) -> String {
    let Some(test) = &m.final_.test else {
        return String::new();
    };
    let mut wrong: Vec<&TestPrediction> = test
        .predictions
        .iter()
        .filter(|p| p.predicted() != p.truth)
        .collect();
    wrong.sort_by(|a, b| b.probabilities[b.predicted()].total_cmp(&a.probabilities[a.predicted()]));
    let mut html = format!(
        "<section id=\"misclassified\">\n<h2>Misclassified test images ({} of {})</h2>\n<div class=\"thumbs\">\n",
        wrong.len(),
        test.n
    );
    for p in wrong.iter().take(MAX_THUMBNAILS) {
        html += &thumbnail(m, p);
    }
    html += "</div>\n";
    if wrong.len() > MAX_THUMBNAILS {
        html += &format!(
            "<p class=\"note\">… and {} more (all are listed in metrics.json).</p>\n",
            wrong.len() - MAX_THUMBNAILS
        );
    }
    html + "</section>\n"
}

fn thumbnail(m: &RunMetrics, p: &TestPrediction) -> String {
    let predicted = p.predicted();
    let image = match thumbnails::data_uri(Path::new(&p.path)) {
        Ok(uri) => format!("<img src=\"{uri}\" alt=\"{}\">", escape(&p.path)),
        Err(e) => format!(
            "<p class=\"note\">(no thumbnail: {})</p>",
            escape(&format!("{e:#}"))
        ),
    };
    format!(
        "<figure class=\"missed\">{image}<figcaption><b>{}</b><br>true: {} · predicted: <span class=\"bad\">{}</span> ({})</figcaption></figure>\n",
        escape(&shown_path(m, &p.path)),
        escape(&m.labels[p.truth]),
        escape(&m.labels[predicted]),
        pct(p.probabilities[predicted] as f64)
    )
}
