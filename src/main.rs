use clap::Parser;
use retrain::cli::{Cli, Command};
use retrain::commands;

fn main() {
    // The Vulkan loader complains on every start without it; any writable folder will do.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Features(args)) => commands::features::run(args),
        Some(Command::Info(args)) => commands::info::run(args),
        Some(Command::Classify(args)) => commands::classify::run(args),
        None => retrain::train::run(&cli.train),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
