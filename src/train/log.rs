//! What training tells the user at each evaluation: retrain.py-style log
//! lines (on a terminal only in train.log and at DEBUG, since the bar shows
//! the same), TensorBoard scalars, and a progress bar with steps/s, ETA and
//! the latest validation accuracy.

use super::summaries::SummaryWriter;
use super::training_loop::{EvalPoint, Trained};
use crate::progress::progress_bar;
use anyhow::Result;
use indicatif::ProgressBar;
use std::path::Path;

/// Each evaluation's log lines (train accuracy and cross-entropy, validation
/// accuracy) and TensorBoard scalars (train/ and validation/).
pub struct TrainingLog {
    writers: Option<(SummaryWriter, SummaryWriter)>,
    heads: usize,
    pub bar: ProgressBar,
}

impl TrainingLog {
    pub fn new(summaries: Option<&Path>, heads: usize, steps: u32) -> Result<Self> {
        let writers = match summaries {
            Some(dir) => Some((
                SummaryWriter::create(&dir.join("train"))?,
                SummaryWriter::create(&dir.join("validation"))?,
            )),
            None => None,
        };
        Ok(TrainingLog {
            writers,
            heads,
            bar: progress_bar("training", steps as usize, "steps"),
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
            self.bar
                .set_message(format!("validation accuracy {:.1}%", v.accuracy * 100.0));
            lines.push(format!(
                "Step {step}: Validation accuracy = {:.1}% (N={n})",
                v.accuracy * 100.0
            ));
            if let Some((_, validation)) = self.writers.as_mut() {
                validation.scalar("accuracy", v.accuracy, step)?;
                validation.scalar("cross_entropy", v.cross_entropy, step)?;
            }
        }
        let level = match crate::progress::on_terminal() {
            true => log::Level::Debug,
            false => log::Level::Info,
        };
        lines.iter().for_each(|l| log::log!(level, "{l}"));
        Ok(())
    }
}

/// The heads trained side by side, one line each, the kept one marked.
pub fn heads_table(t: &Trained) -> String {
    let mut lines = vec![format!(
        "  {:>4}  {:>13}  {:>9}  {:>10}  {:>13}  {:>9}  {}",
        "head", "learning rate", "L2", "val. acc.", "val. x-entropy", "kept step", "stopped"
    )];
    for (i, o) in t.outcomes.iter().enumerate() {
        lines.push(format!(
            "{} {:>4}  {:>13}  {:>9}  {:>9.1}%  {:>14.4}  {:>9}  {}",
            if i as u32 == t.chosen { "*" } else { " " },
            i,
            o.settings.learning_rate,
            o.settings.l2,
            o.selection.accuracy * 100.0,
            o.selection.cross_entropy,
            o.step,
            o.stopped_at
                .map_or("-".to_string(), |s| format!("at step {s}"))
        ));
    }
    lines.join("\n")
}
