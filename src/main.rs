use clap::Parser;
use retrain::cli::{Cli, Command};
use retrain::commands;

fn main() {
    // The Vulkan loader complains on every start without it; any writable folder will do.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    let cli = Cli::parse();
    retrain::logging::init(&cli.logging_verbosity);
    let result = match &cli.command {
        Some(Command::Features(args)) => commands::features::run(args),
        Some(Command::Info(args)) => commands::info::run(args),
        Some(Command::Classify(args)) => commands::classify::run(args),
        Some(Command::Report(args)) => commands::report::run(args),
        Some(Command::Serve(args)) => commands::serve::run(args),
        Some(Command::Export(args)) => commands::export::run(args),
        None => commands::retrain::run(&cli.train),
    };
    if let Err(e) = result {
        log::error!("{e:#}");
        std::process::exit(1);
    }
}
