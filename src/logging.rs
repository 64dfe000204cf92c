//! One logging path for every command: the `log` facade, printed on stderr
//! retrain.py-style ("INFO: …", "WARNING: …") at and above the level chosen
//! with --logging-verbosity, each line drawn through the progress bars
//! (progress.rs) so that lines and bars never tear each other. A run of
//! `retrain` also keeps every line of its own, DEBUG included, in train.log.

use anyhow::Result;
use log::{Level, LevelFilter, Log, Metadata, Record};
use std::fs::File;
use std::io::{LineWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The verbosities retrain.py's --logging_verbosity takes, lowest first.
pub const LEVELS: [&str; 5] = ["DEBUG", "INFO", "WARN", "ERROR", "FATAL"];

/// The log file a run writes beside its outputs.
pub const LOG_FILE: &str = "train.log";

/// The most verbose level printed on stderr (a LevelFilter as usize).
static STDERR_LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Info as usize);
static FILE: Mutex<Option<LineWriter<File>>> = Mutex::new(None);

struct StderrLog;

fn prefix(level: Level) -> &'static str {
    match level {
        Level::Error => "ERROR",
        Level::Warn => "WARNING",
        Level::Info => "INFO",
        Level::Debug | Level::Trace => "DEBUG",
    }
}

fn on_stderr(level: Level) -> bool {
    level as usize <= STDERR_LEVEL.load(Ordering::Relaxed)
}

impl Log for StderrLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        let level = record.level();
        let ours = record.target().starts_with(env!("CARGO_CRATE_NAME"));
        let to_stderr = on_stderr(level);
        let to_file = to_stderr || (ours && level <= Level::Debug);
        if !to_file {
            return;
        }
        let line = format!("{}: {}", prefix(level), record.args());
        {
            let mut file = FILE.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = file.as_mut() {
                // A log line that cannot be written must not stop the run.
                let _ = writeln!(f, "{line}");
            }
        }
        if to_stderr {
            crate::progress::suspend(|| eprintln!("{line}"));
        }
    }

    fn flush(&self) {}
}

/// Installs the logger at `verbosity` (one of LEVELS; FATAL keeps errors
/// only). A second call only changes the level.
pub fn init(verbosity: &str) {
    let level = match verbosity {
        "DEBUG" => LevelFilter::Debug,
        "WARN" => LevelFilter::Warn,
        "ERROR" | "FATAL" => LevelFilter::Error,
        _ => LevelFilter::Info,
    };
    STDERR_LEVEL.store(level as usize, Ordering::Relaxed);
    // Fails only when already installed, and then the level below still applies.
    let _ = log::set_logger(&StderrLog);
    log::set_max_level(level);
}

/// From now on, also writes every line (DEBUG included) to `path`, replacing
/// it: a new file takes the name (the old log is never cut short in place),
/// so a folder that cannot be written fails here, before any work.
pub fn also_to_file(path: &Path) -> Result<()> {
    let file = crate::atomic_file::fresh_file(path)?;
    *FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(LineWriter::new(file));
    log::set_max_level(LevelFilter::Debug);
    Ok(())
}
