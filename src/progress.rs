//! Progress bars for long work: count, rate and ETA.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `total` items of `unit`, with the rate, ETA and a free message.
pub fn progress_bar(total: usize, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    let template = format!("{{bar:30}} {{pos}}/{{len}} {unit}  {{per_sec}}  ETA {{eta}}  {{msg}}");
    bar.set_style(ProgressStyle::with_template(&template).expect("progress template"));
    bar
}
