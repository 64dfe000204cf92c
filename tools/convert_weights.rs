//! convert-weights: turns published Inception V3 weights into retrain's weight
//! file (safetensors, batch norm folded, kernel layout), once.

use anyhow::Result;
use clap::Parser;
use retrain::convert::{convert, inspect, Overrides};
use retrain::model::weights::Normalization;
use std::path::PathBuf;

/// Convert Inception V3 weights into retrain's own weight file.
///
/// Reads, recognising the format from the content:
///   - a Keras Inception V3 in TF.js layers format: a folder holding model.json
///     or model.min.js and its weight shards (nsfwjs@4.4.0's
///     dist/models/inception_v3);
///   - Keras weights: HDF5 (inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5,
///     full-model .h5, Keras 3 .weights.h5) and Keras 3 .keras archives, mapped
///     by the model's config where the file has one (--inspect says how);
///   - PyTorch weights with torchvision's names: timm's safetensors
///     (inception_v3.tv_in1k) or torchvision's .pth checkpoint.
#[derive(Parser)]
#[command(name = "convert-weights", version)]
struct Args {
    /// The source: a TF.js model folder, or a .h5, .safetensors or .pth file.
    #[arg(long, value_name = "FILE_OR_DIR", required_unless_present = "inspect")]
    from: Option<PathBuf>,
    /// Weight file to write (safetensors); use it with `--weights FILE`.
    #[arg(long, value_name = "FILE", required_unless_present = "inspect")]
    output: Option<PathBuf>,
    /// Precision of the stored conv weights: f32, or f16 (half the file and
    /// GPU memory; the kernels widen them to f32 and accumulate in f32).
    #[arg(long, value_name = "f32|f16", default_value = "f32", value_parser = ["f32", "f16"])]
    dtype: String,
    /// Input normalisation the weights were trained with: unit (x/255),
    /// signed (x/127.5 - 1) or imagenet (ImageNet mean/std). Default: the
    /// source's own (x/255 for nsfwjs, x/127.5 - 1 for Keras and torchvision
    /// ImageNet weights).
    #[arg(long, value_name = "NAME")]
    normalize: Option<String>,
    /// How windows are padded: tensorflow (left out of average pools' means,
    /// SAME convs pad after) or pytorch (counted in the means, convs pad
    /// symmetrically). Default: the source framework's.
    #[arg(long, visible_alias = "average-pool", value_name = "RULE", value_parser = ["tensorflow", "pytorch"])]
    padding: Option<String>,
    /// List the tensors FILE holds and how they would be mapped, without writing anything.
    #[arg(long, value_name = "FILE_OR_DIR", conflicts_with_all = ["from", "output"])]
    inspect: Option<PathBuf>,
}

fn run(args: Args) -> Result<()> {
    if let Some(path) = &args.inspect {
        println!("{}", inspect(path)?);
        return Ok(());
    }
    let (from, output) = (args.from.expect("clap"), args.output.expect("clap"));
    let overrides = Overrides {
        normalization: args
            .normalize
            .as_deref()
            .map(Normalization::from_name)
            .transpose()?,
        pytorch_padding: args.padding.map(|rule| rule == "pytorch"),
        half_weights: args.dtype == "f16",
    };
    let info = convert(&from, &output, &overrides)?;
    println!("wrote {}", output.display());
    println!("  source:        {}", info.source);
    println!("  normalisation: {}", info.normalization.describe());
    let padding = if info.pytorch_padding {
        "pytorch"
    } else {
        "tensorflow"
    };
    println!("  padding:       {padding}");
    println!("  weights dtype: {}", info.dtype);
    println!("  fingerprint:   {}", info.fingerprint);
    Ok(())
}

fn main() {
    retrain::logging::init("INFO");
    if let Err(e) = run(Args::parse()) {
        log::error!("{e:#}");
        std::process::exit(1);
    }
}
