//! One logging path for every command: the `log` facade, printed on stderr
//! retrain.py-style ("INFO: …", "WARNING: …") at and above the level chosen
//! with --logging-verbosity, each line drawn through the progress bars
//! (progress.rs) so that lines and bars never tear each other.

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The verbosities retrain.py's --logging_verbosity takes, lowest first.
pub const LEVELS: [&str; 5] = ["DEBUG", "INFO", "WARN", "ERROR", "FATAL"];

struct StderrLog;

impl Log for StderrLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let prefix = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARNING",
            Level::Info => "INFO",
            Level::Debug | Level::Trace => "DEBUG",
        };
        crate::progress::suspend(|| eprintln!("{prefix}: {}", record.args()));
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
    // Fails only when already installed, and then the level below still applies.
    let _ = log::set_logger(&StderrLog);
    log::set_max_level(level);
}
