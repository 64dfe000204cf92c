//! `retrain export --format onnx`: the classifier with its base network as
//! one ONNX model (see export/).

use super::classify::load_classifier;
use crate::cli::ExportArgs;
use crate::export;
use anyhow::Result;

pub fn run(args: &ExportArgs) -> Result<()> {
    let (classifier, file) = load_classifier(&args.classifier)?;
    let final_tensor_name = classifier
        .extra
        .get("final_tensor_name")
        .map_or("final_result", String::as_str);
    let bytes = export::onnx_model(&classifier, &file, final_tensor_name)?;
    crate::atomic_file::write_bytes(&args.output, &bytes)?;
    let (h, w) = classifier.input_size;
    log::info!(
        "Wrote {} ({:.1} MB): input \"{}\" uint8 [N, {h}, {w}, 3] (resize images to {h}×{w} first), outputs \"{final_tensor_name}\" and \"bottleneck\"",
        args.output.display(),
        bytes.len() as f64 / 1e6,
        export::INPUT_NAME
    );
    Ok(())
}
