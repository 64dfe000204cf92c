//! Command-line definitions.

use crate::data::distortion::DistortionFlags;
use crate::model::Architecture;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "retrain",
    version,
    about = "Transfer learning on a folder of labelled images with a pretrained Inception V3 or MobileNet V2, on any Vulkan, Metal or DX12 GPU",
    long_about = "Transfer learning on a folder of labelled images with a pretrained Inception V3 or MobileNet V2, on any Vulkan, \
Metal or DX12 GPU.\n\nWithout a subcommand, retrains a new classifier on IMAGE_DIR (one sub-folder per \
class), as TensorFlow Hub's retrain.py does; its underscore flag spellings (--image_dir, ...) are accepted too.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub train: TrainArgs,
    /// Which log lines to print: DEBUG, INFO, WARN, ERROR or FATAL (errors only).
    #[arg(long, global = true, alias = "logging_verbosity", value_name = "LEVEL", default_value = "INFO", value_parser = crate::logging::LEVELS)]
    pub logging_verbosity: String,
}

/// The main job: retrain.py's flags, kebab-case with the underscore spelling as alias.
#[derive(Args)]
pub struct TrainArgs {
    /// Folder of labelled images: one sub-folder of images per class.
    #[arg(long, alias = "image_dir", value_name = "DIR", required = true)]
    pub image_dir: Option<PathBuf>,
    /// Weight file made by convert-weights (default: nsfwjs@4.4.0's weights of
    /// --architecture, fetched on first use). Its own architecture is used.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// The network whose default weights to use: inception_v3 (5.7 GMAC per
    /// 299×299 image) or mobilenet_v2 (0.3 GMAC at 224×224). retrain.py's
    /// --tfhub_module with the TF Hub handle of either feature-vector module works too.
    #[arg(long, alias = "tfhub_module", visible_alias = "tfhub-module", value_name = "NAME", default_value = "inception_v3", value_parser = parse_architecture)]
    pub architecture: Architecture,
    /// Network input size, H or HxW (at least 75 for Inception V3, 32 for
    /// MobileNet V2). Default: the weights' own (299, 224).
    #[arg(long, alias = "input_size", value_name = "HxW", value_parser = parse_size)]
    pub input_size: Option<(u32, u32)>,
    /// Where cached bottleneck vectors are kept.
    #[arg(
        long,
        alias = "bottleneck_dir",
        value_name = "DIR",
        default_value = "retrain-output/bottlenecks"
    )]
    pub bottleneck_dir: PathBuf,
    /// The trained classifier (safetensors); metrics.json is written beside it.
    #[arg(
        long,
        alias = "output_graph",
        value_name = "FILE",
        default_value = "retrain-output/model.safetensors"
    )]
    pub output_graph: PathBuf,
    /// The labels file, one label per line in class order.
    #[arg(
        long,
        alias = "output_labels",
        value_name = "FILE",
        default_value = "retrain-output/labels.txt"
    )]
    pub output_labels: PathBuf,
    /// Write TensorBoard event files (train/ and validation/) here.
    #[arg(long, alias = "summaries_dir", value_name = "DIR")]
    pub summaries_dir: Option<PathBuf>,
    /// Training steps.
    #[arg(
        long,
        alias = "how_many_training_steps",
        value_name = "N",
        default_value_t = 4000
    )]
    pub how_many_training_steps: u32,
    /// Learning rate. With --retrain-py-head: the SGD rate (default 0.01). Otherwise
    /// it replaces the sweep's learning rates with this one value.
    #[arg(long, alias = "learning_rate", value_name = "RATE")]
    pub learning_rate: Option<f32>,
    /// Train the head exactly as retrain.py does, to compare results with it: one
    /// head, plain SGD at a constant --learning-rate on raw bottlenecks, no
    /// standardisation, regularisation, early stopping or sweep.
    #[arg(long)]
    pub retrain_py_head: bool,
    /// Learning rates of the sweep: heads are trained side by side for every
    /// learning rate × L2 pair, and the best on the validation images is kept.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "0.001,0.01",
        conflicts_with = "retrain_py_head"
    )]
    pub sweep_learning_rates: Vec<f32>,
    /// L2 penalties λ (loss + λ/2·‖W‖²) of the sweep.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "0.0003,0.001,0.003,0.01,0.03,0.1,0.3,1",
        conflicts_with = "retrain_py_head"
    )]
    pub sweep_l2: Vec<f32>,
    /// adam, momentum or sgd; the learning rate decays to zero on a cosine over the steps.
    #[arg(long, value_name = "NAME", default_value = "adam", value_parser = ["adam", "momentum", "sgd"], conflicts_with = "retrain_py_head")]
    pub optimizer: String,
    /// Momentum coefficient for --optimizer momentum.
    #[arg(
        long,
        value_name = "F",
        default_value_t = 0.9,
        conflicts_with = "retrain_py_head"
    )]
    pub momentum: f32,
    /// Label smoothing ε: train against (1 − ε)·one-hot + ε/classes.
    #[arg(
        long,
        value_name = "F",
        default_value_t = 0.0,
        conflicts_with = "retrain_py_head"
    )]
    pub label_smoothing: f32,
    /// Dropout on the bottleneck during training: the probability of zeroing each value.
    #[arg(
        long,
        value_name = "F",
        default_value_t = 0.0,
        conflicts_with = "retrain_py_head"
    )]
    pub dropout: f32,
    /// Stop a head once its validation cross-entropy has not improved for N
    /// evaluations (its best parameters are kept); 0: never stop early.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 50,
        conflicts_with = "retrain_py_head"
    )]
    pub early_stopping_patience: u32,
    /// Percentage of images used for the final test.
    #[arg(
        long,
        alias = "testing_percentage",
        value_name = "PCT",
        default_value_t = 10.0
    )]
    pub testing_percentage: f64,
    /// Percentage of images used for validation during training.
    #[arg(
        long,
        alias = "validation_percentage",
        value_name = "PCT",
        default_value_t = 10.0
    )]
    pub validation_percentage: f64,
    /// Log training and validation results every N steps (and at the last step).
    #[arg(
        long,
        alias = "eval_step_interval",
        value_name = "N",
        default_value_t = 10
    )]
    pub eval_step_interval: u32,
    /// Images per training step.
    #[arg(
        long,
        alias = "train_batch_size",
        value_name = "N",
        default_value_t = 100
    )]
    pub train_batch_size: i64,
    /// Test images evaluated at the end; -1 means the whole test set.
    #[arg(long, alias = "test_batch_size", value_name = "N", default_value_t = -1, allow_negative_numbers = true)]
    pub test_batch_size: i64,
    /// With --retrain-py-head: validation images per logged evaluation, -1 for all.
    /// The sweep always evaluates every validation image.
    #[arg(
        long,
        alias = "validation_batch_size",
        value_name = "N",
        default_value_t = 100,
        allow_negative_numbers = true
    )]
    pub validation_batch_size: i64,
    /// List every misclassified test image with its true and predicted label.
    #[arg(long, alias = "print_misclassified_test_images")]
    pub print_misclassified_test_images: bool,
    /// Save the classifier every N steps (0: never).
    #[arg(
        long,
        alias = "intermediate_store_frequency",
        value_name = "N",
        default_value_t = 0
    )]
    pub intermediate_store_frequency: u32,
    /// Where intermediate classifiers go.
    #[arg(
        long,
        alias = "intermediate_output_graphs_dir",
        value_name = "DIR",
        default_value = "retrain-output/intermediate"
    )]
    pub intermediate_output_graphs_dir: PathBuf,
    /// Name of the classifier's output, recorded in the model's metadata.
    #[arg(
        long,
        alias = "final_tensor_name",
        value_name = "NAME",
        default_value = "final_result"
    )]
    pub final_tensor_name: String,
    /// Also write one self-contained folder (base weights, classifier, labels) that `classify` accepts.
    #[arg(long, alias = "saved_model_dir", value_name = "DIR")]
    pub saved_model_dir: Option<PathBuf>,
    /// Distort training images: mirror half of them left-right. Distorted
    /// training runs every step's images through the network on the GPU;
    /// validation and test use the undistorted cached bottlenecks.
    #[arg(long, alias = "flip_left_right")]
    pub flip_left_right: bool,
    /// Distort training images: crop a random input-sized window from the
    /// image enlarged by this percentage (0-100).
    #[arg(long, alias = "random_crop", value_name = "PCT", default_value_t = 0, value_parser = percentage)]
    pub random_crop: u32,
    /// Distort training images: enlarge them by a random 0 to PCT percent
    /// (0-100) before cropping.
    #[arg(long, alias = "random_scale", value_name = "PCT", default_value_t = 0, value_parser = percentage)]
    pub random_scale: u32,
    /// Distort training images: multiply pixel values by a random factor
    /// within ±PCT percent (0-100).
    #[arg(long, alias = "random_brightness", value_name = "PCT", default_value_t = 0, value_parser = percentage)]
    pub random_brightness: u32,
    /// Memory for decoded training images kept between steps of distorted
    /// training, in MiB; images beyond it are decoded again when drawn.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub image_cache_mb: u64,
    /// Seed for the weight initialisation and batch sampling (default: random, and logged).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// After training the head, fine-tune it together with the network's top
    /// blocks (Inception V3's mixed9 and mixed10): higher accuracy, longer runs.
    #[arg(long, help_heading = "Fine-tuning")]
    pub fine_tune: bool,
    /// Fine-tune from this block up (mixed0 .. mixed10; implies --fine-tune).
    /// Lower blocks learn more and cost more time and disk.
    #[arg(long, value_name = "BLOCK", help_heading = "Fine-tuning")]
    pub fine_tune_from: Option<String>,
    /// Passes over the training images while fine-tuning.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 3,
        help_heading = "Fine-tuning"
    )]
    pub fine_tune_epochs: u32,
    /// Peak learning rate of fine-tuning (after a warm-up over the first
    /// tenth of the steps, it decays to zero along a cosine).
    #[arg(
        long,
        value_name = "RATE",
        default_value_t = 2e-4,
        help_heading = "Fine-tuning"
    )]
    pub fine_tune_learning_rate: f32,
    /// Fine-tuning's optimiser: adam or sgd (with --fine-tune-momentum).
    #[arg(long, value_name = "NAME", default_value = "adam", value_parser = ["adam", "sgd"], help_heading = "Fine-tuning")]
    pub fine_tune_optimizer: String,
    /// SGD's momentum when fine-tuning with --fine-tune-optimizer sgd.
    #[arg(
        long,
        value_name = "M",
        default_value_t = 0.9,
        help_heading = "Fine-tuning"
    )]
    pub fine_tune_momentum: f32,
    /// Weight decay of the fine-tuned conv and head weights (decoupled, as AdamW's).
    #[arg(
        long,
        value_name = "W",
        default_value_t = 1e-4,
        help_heading = "Fine-tuning"
    )]
    pub fine_tune_weight_decay: f32,
    /// Images per fine-tuning step (split into smaller passes when the device
    /// cannot hold them at once).
    #[arg(
        long,
        value_name = "N",
        default_value_t = crate::fine_tune::settings::DEFAULT_BATCH,
        help_heading = "Fine-tuning"
    )]
    pub fine_tune_batch_size: u32,
    /// Dropout on the classifier's input while fine-tuning: the probability
    /// that each of its features is zeroed in a training step (0: none).
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.5,
        help_heading = "Fine-tuning"
    )]
    pub fine_tune_dropout: f32,
    /// Epochs without a better validation result before fine-tuning stops
    /// (0, the default: never, as the learning rate decays to zero over the
    /// epochs asked; never in the first half of the epochs either, where the
    /// peak learning rate makes validation dip before it climbs).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Fine-tuning"
    )]
    pub fine_tune_patience: u32,
}

impl TrainArgs {
    /// The block fine-tuning starts from, when asked for.
    pub fn fine_tune_block(&self) -> Option<&str> {
        match (&self.fine_tune_from, self.fine_tune) {
            (Some(from), _) => Some(from),
            (None, true) => Some(crate::fine_tune::blocks::DEFAULT_FROM),
            (None, false) => None,
        }
    }

    /// The distortions asked for (none by default).
    pub fn distortions(&self) -> DistortionFlags {
        DistortionFlags {
            flip_left_right: self.flip_left_right,
            random_crop: self.random_crop,
            random_scale: self.random_scale,
            random_brightness: self.random_brightness,
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Compute each image's bottleneck vector (2048-d Inception V3, 1280-d MobileNet V2) and save them as .npy
    Features(FeaturesArgs),
    /// Show the GPU adapter, its limits and features, and the model's metadata
    Info(ModelArgs),
    /// Label images with a classifier trained by retrain (label_image.py's job)
    Classify(ClassifyArgs),
    /// Redraw report.html of a retrain run from its metrics.json
    Report(ReportArgs),
    /// Serve a trained classifier over HTTP (POST /v1/classify), batching requests on the GPU
    Serve(ServeArgs),
    /// Export a trained classifier, base network included, for other runtimes (ONNX)
    Export(ExportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub classifier: ClassifierArgs,
    /// The format to write.
    #[arg(long, value_name = "FORMAT", default_value = "onnx", value_parser = ["onnx"])]
    pub format: String,
    /// The file to write.
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
}

/// Which trained classifier to load.
#[derive(Args, Clone)]
pub struct ClassifierArgs {
    /// The trained classifier (--output-graph of a retrain run), or a --saved-model-dir folder.
    #[arg(long, value_name = "MODEL")]
    pub graph: PathBuf,
    /// Labels file (default: the labels recorded in the classifier).
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,
    /// Base weight file (default: the one recorded in the classifier, else the default weights).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub classifier: ClassifierArgs,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free one, printed at start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Images per GPU batch at most. Default: as many as the device holds.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch: Option<u32>,
    /// How long to wait for more requests to fill a batch, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5)]
    pub max_wait_ms: u64,
    /// Largest request body accepted, in MiB.
    #[arg(long, value_name = "MB", default_value_t = 32)]
    pub max_body_mb: usize,
    /// Requests waiting for the GPU at most; beyond it requests are answered 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queue: u64,
    /// Seconds a request may wait for its answer before a 504.
    #[arg(long, value_name = "S", default_value_t = 30)]
    pub timeout_s: u64,
    /// Labels per image in answers (a request's ?top_k= overrides it).
    #[arg(long, value_name = "K", default_value_t = 5)]
    pub top_k: usize,
}

#[derive(Args)]
pub struct ReportArgs {
    /// The run's output folder: the one holding its metrics.json (where report.html is written).
    #[arg(long, value_name = "DIR", default_value = "retrain-output")]
    pub output_dir: PathBuf,
}

#[derive(Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub classifier: ClassifierArgs,
    /// How many labels to show per image.
    #[arg(long, value_name = "K", default_value_t = 5)]
    pub top_k: usize,
    /// Print one JSON object per image instead of text.
    #[arg(long)]
    pub json: bool,
    /// Call LABEL whenever its probability is at least P (e.g. broken=0.2, a
    /// cut-off from the report's table) instead of only when it is the most
    /// probable label; the decision is printed with the probabilities.
    #[arg(long, value_name = "LABEL=P", value_parser = parse_threshold)]
    pub threshold: Option<(String, f32)>,
    /// Images, or folders of images.
    #[arg(value_name = "IMAGE_OR_DIR", required = true)]
    pub inputs: Vec<PathBuf>,
}

/// Which weights to load and at what input size.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Weight file made by convert-weights. Default: nsfwjs@4.4.0's weights of
    /// --architecture, fetched with npm and converted on first use, then cached
    /// in the user's cache folder (override it with RETRAIN_CACHE_DIR).
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// The network whose default weights to use: inception_v3 or mobilenet_v2
    /// (a --weights file brings its own).
    #[arg(long, value_name = "NAME", default_value = "inception_v3", value_parser = parse_architecture)]
    pub architecture: Architecture,
    /// Network input size, H or HxW (at least 75 for Inception V3, 32 for
    /// MobileNet V2). Default: the weights' own (299, 224).
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
    /// Where to write the float32 [N, bottleneck] array; FILE.paths lists the image of each row.
    #[arg(long, value_name = "FILE.npy")]
    pub output: PathBuf,
    /// Images per GPU submission. Default: as many as the device holds (at most 64).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: Option<u32>,
    /// Read and write bottlenecks in this cache folder, the one `retrain
    /// --bottleneck-dir` uses: several processes, even on several machines,
    /// may share it (each bottleneck is computed once).
    #[arg(long, value_name = "DIR", conflicts_with = "batch_size")]
    pub bottleneck_dir: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

fn parse_threshold(s: &str) -> Result<(String, f32), String> {
    let (label, p) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("expected LABEL=P, such as broken=0.2, not {s:?}"))?;
    match p.trim().parse::<f32>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok((label.to_string(), p)),
        _ => Err(format!(
            "the probability in {s:?} must be a number from 0 to 1"
        )),
    }
}

fn percentage(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(format!("{s} is not a whole percentage from 0 to 100")),
    }
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (h, w) = crate::model::weights::parse_size(s).map_err(|e| e.to_string())?;
    let min = Architecture::ALL
        .iter()
        .map(|a| a.min_input())
        .min()
        .unwrap_or(1);
    if h < min || w < min {
        return Err(format!(
            "{h}x{w} is too small: no network runs below {min}x{min}"
        ));
    }
    Ok((h, w))
}

/// The TF Hub feature-vector modules retrain.py's --tfhub_module named, by
/// the part of their handle that identifies them.
const TFHUB_MODULES: [(&str, Architecture); 2] = [
    (
        "imagenet/inception_v3/feature_vector",
        Architecture::InceptionV3,
    ),
    (
        "imagenet/mobilenet_v2_100_224/feature_vector",
        Architecture::MobileNetV2,
    ),
];

/// An architecture by name, or by the TF Hub module handle retrain.py took.
fn parse_architecture(s: &str) -> Result<Architecture, String> {
    if let Ok(a) = Architecture::from_name(s) {
        return Ok(a);
    }
    match TFHUB_MODULES.iter().find(|(handle, _)| s.contains(handle)) {
        Some((_, a)) => Ok(*a),
        None => Err(format!(
            "{s} is not a network retrain runs: use inception_v3 or mobilenet_v2 (or the TF Hub handles \
             .../google/imagenet/inception_v3/feature_vector/... and .../google/imagenet/mobilenet_v2_100_224/feature_vector/...)"
        )),
    }
}
