//! Command-line definitions.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "retrain",
    version,
    about = "Transfer learning on a folder of labelled images with a pretrained Inception V3, on any Vulkan, Metal or DX12 GPU",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Compute each image's 2048-d Inception V3 bottleneck vector and save them as .npy
    Features(FeaturesArgs),
    /// Show the GPU adapter, its limits and features, and the model's metadata
    Info(ModelArgs),
}

/// Which weights to load and at what input size.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Weight file made by convert-weights. Default: nsfwjs@4.4.0's Inception V3,
    /// fetched with npm and converted on first use, then cached in the user's
    /// cache folder (override it with RETRAIN_CACHE_DIR).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// Network input size, H or HxW (at least 75). Default: the weights' own (299).
    #[arg(long, value_name = "HxW", value_parser = parse_size)]
    pub input_size: Option<(u32, u32)>,
}

#[derive(Args)]
pub struct FeaturesArgs {
    /// Folder of images (searched recursively; jpg, jpeg, png, gif, bmp, webp).
    #[arg(long, value_name = "DIR", required_unless_present = "files")]
    pub image_dir: Option<PathBuf>,
    /// Image files, processed in the order given (after those of --image-dir).
    #[arg(value_name = "IMAGE")]
    pub files: Vec<PathBuf>,
    /// Where to write the float32 [N, 2048] array; FILE.paths lists the image of each row.
    #[arg(long, value_name = "FILE.npy")]
    pub output: PathBuf,
    /// Images per GPU submission. Default: as many as the device holds (at most 64).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: Option<u32>,
    #[command(flatten)]
    pub model: ModelArgs,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (h, w) = crate::model::weights::parse_size(s).map_err(|e| e.to_string())?;
    let min = crate::model::inception_v3::MIN_INPUT;
    if h < min || w < min {
        return Err(format!(
            "{h}x{w} is too small: Inception V3 needs at least {min}x{min}"
        ));
    }
    Ok((h, w))
}
