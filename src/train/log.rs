//! What training tells the user: retrain.py-style log lines, TensorBoard
//! scalars and a progress bar with steps/s, ETA and images/s.

use super::summaries::SummaryWriter;
use super::sweep::EvalPoint;
use crate::progress::progress_bar;
use anyhow::Result;
use indicatif::ProgressBar;
use std::path::Path;

/// Log lines at or above the chosen verbosity go to stderr, retrain.py style.
pub struct Logger {
    level: u8,
}

impl Logger {
    pub fn new(verbosity: &str) -> Self {
        let level = ["DEBUG", "INFO", "WARN", "ERROR", "FATAL"]
            .iter()
            .position(|l| *l == verbosity)
            .unwrap_or(1);
        Logger { level: level as u8 }
    }
    pub fn info(&self, msg: impl AsRef<str>) {
        if self.level <= 1 {
            eprintln!("INFO: {}", msg.as_ref());
        }
    }
    pub fn warn(&self, msg: impl AsRef<str>) {
        if self.level <= 2 {
            eprintln!("WARNING: {}", msg.as_ref());
        }
    }
}

/// Each evaluation's log lines (train accuracy and cross-entropy, validation
/// accuracy) and TensorBoard scalars (train/ and validation/).
pub struct TrainingLog<'a> {
    log: &'a Logger,
    writers: Option<(SummaryWriter, SummaryWriter)>,
    heads: usize,
    pub bar: ProgressBar,
}

impl<'a> TrainingLog<'a> {
    pub fn new(
        log: &'a Logger,
        summaries: Option<&Path>,
        heads: usize,
        steps: u32,
    ) -> Result<Self> {
        let writers = match summaries {
            Some(dir) => Some((
                SummaryWriter::create(&dir.join("train"))?,
                SummaryWriter::create(&dir.join("validation"))?,
            )),
            None => None,
        };
        Ok(TrainingLog {
            log,
            writers,
            heads,
            bar: progress_bar(steps as usize, "steps"),
        })
    }

    pub fn evaluated(&mut self, p: &EvalPoint) -> Result<()> {
        let step = p.step;
        let who = if self.heads > 1 {
            format!(
                " (best head: {}, {} of {} still training)",
                p.leader, p.active, self.heads
            )
        } else {
            String::new()
        };
        let mut lines = vec![
            format!(
                "Step {step}: Train accuracy = {:.1}%{who}",
                p.train.accuracy * 100.0
            ),
            format!("Step {step}: Cross entropy = {:.6}", p.train.cross_entropy),
        ];
        if let Some((train, _)) = self.writers.as_mut() {
            train.scalar("accuracy", p.train.accuracy, step)?;
            train.scalar("cross_entropy", p.train.cross_entropy, step)?;
        }
        if let Some((v, n)) = p.validation {
            lines.push(format!(
                "Step {step}: Validation accuracy = {:.1}% (N={n})",
                v.accuracy * 100.0
            ));
            if let Some((_, validation)) = self.writers.as_mut() {
                validation.scalar("accuracy", v.accuracy, step)?;
                validation.scalar("cross_entropy", v.cross_entropy, step)?;
            }
        }
        self.bar
            .suspend(|| lines.iter().for_each(|l| self.log.info(l)));
        Ok(())
    }
}
