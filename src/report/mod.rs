//! report.html: one self-contained page (no scripts, nothing fetched; charts
//! as inline SVG, thumbnails as data: URIs) that shows how a run went — the
//! run at a glance, the training curves, the sweep, fine-tuning's epochs,
//! the confusion matrix,
//! the precision–recall trade-off and every misclassified test image.
//! Drawn from metrics.json alone, so `retrain report` can redraw it.

mod charts;
pub mod run_metrics;
mod sections;
pub mod statistics;
mod thumbnails;

use anyhow::Result;
use run_metrics::RunMetrics;
use std::path::Path;

/// The file's name, beside metrics.json.
pub const REPORT_FILE: &str = "report.html";

/// Forbids every request: the page must work from disk, alone.
const CONTENT_POLICY: &str = "default-src 'none'; img-src data:; style-src 'unsafe-inline'";

const STYLE: &str = include_str!("report.css");

/// Writes the report of `metrics` to `path` (atomically).
pub fn write(metrics: &RunMetrics, path: &Path) -> Result<()> {
    crate::atomic_file::write_bytes(path, render(metrics)?.as_bytes())
}

/// The whole page.
pub fn render(m: &RunMetrics) -> Result<String> {
    let body = [
        sections::at_a_glance(m),
        sections::curves(m)?,
        sections::sweep(m),
        sections::fine_tuning(m),
        sections::confusion(m),
        sections::thresholds(m)?,
        sections::misclassified(m),
    ]
    .concat();
    let title = sections::escape(&format!("retrain report: {}", m.image_dir));
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CONTENT_POLICY}\">\n\
         <title>{title}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    ))
}
