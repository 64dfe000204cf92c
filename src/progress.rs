//! Progress bars for long work: count, rate and ETA. Every bar belongs to one
//! MultiProgress, which the logger (logging.rs) suspends to print a line.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::OnceLock;

fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
}

/// A bar for the phase `phase` over `total` items of `unit`, with the rate,
/// ETA and a free message.
pub fn progress_bar(phase: &str, total: usize, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    let template =
        format!("{phase:<12} {{bar:30}} {{pos}}/{{len}} {unit}  {{per_sec}}  ETA {{eta}}  {{msg}}");
    bar.set_style(ProgressStyle::with_template(&template).expect("progress template"));
    bars().add(bar)
}

/// Whether a person is watching: bars are drawn and the per-step lines left to train.log.
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Runs `print` with the bars cleared from the terminal, then redraws them.
pub fn suspend<R>(print: impl FnOnce() -> R) -> R {
    bars().suspend(print)
}
