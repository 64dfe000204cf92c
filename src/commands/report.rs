//! `retrain report`: redraws report.html from a run's metrics.json (and its
//! test images, for the thumbnails).

use crate::cli::ReportArgs;
use crate::report::run_metrics::{RunMetrics, METRICS_FILE};
use crate::report::{self, REPORT_FILE};
use anyhow::Result;

pub fn run(args: &ReportArgs) -> Result<()> {
    let metrics = RunMetrics::read(&args.output_dir.join(METRICS_FILE))?;
    let path = args.output_dir.join(REPORT_FILE);
    report::write(&metrics, &path)?;
    log::info!("Wrote {}", path.display());
    Ok(())
}
