//! convert-weights: turns published Inception V3 weights into retrain's weight
//! file (safetensors, batch norm folded, kernel layout), once.

use anyhow::Result;
use clap::Parser;
use retrain::convert::{convert_tfjs, default_weights};
use retrain::model::weights::Normalization;
use std::path::PathBuf;

/// Convert Inception V3 weights into retrain's own weight file.
///
/// Reads a Keras Inception V3 in TF.js layers format: a folder holding
/// model.json or model.min.js and its weight shards, such as the nsfwjs@4.4.0
/// package's dist/models/inception_v3 folder (`npm pack nsfwjs@4.4.0`, then
/// `tar xzf nsfwjs-4.4.0.tgz`).
#[derive(Parser)]
#[command(name = "convert-weights", version)]
struct Args {
    /// Folder holding the TF.js model (model.json or model.min.js plus shards).
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// Weight file to write (safetensors); use it with `--weights FILE`.
    #[arg(long, value_name = "FILE")]
    output: PathBuf,
    /// Input normalisation the weights were trained with: unit (x/255),
    /// signed (x/127.5 - 1) or imagenet (ImageNet mean/std). Default: the
    /// source's own (x/255 for nsfwjs).
    #[arg(long, value_name = "NAME")]
    normalize: Option<String>,
}

fn run(args: Args) -> Result<()> {
    let mut source = default_weights::source_of(&args.from);
    if let Some(name) = &args.normalize {
        source.normalization = Normalization::from_name(name)?;
    }
    let info = convert_tfjs(&args.from, &args.output, source)?;
    println!("wrote {}", args.output.display());
    println!("  source:        {}", info.source);
    println!("  normalisation: {}", info.normalization.describe());
    println!("  fingerprint:   {}", info.fingerprint);
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
