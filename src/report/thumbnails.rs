//! Small JPEG copies of images, embedded in the report as data: URIs so that
//! the page stays one self-contained file.

use crate::data::images;
use anyhow::{Context, Result};
use base64::Engine as _;
use image::codecs::jpeg::JpegEncoder;
use std::path::Path;

/// The longer side of a thumbnail, in pixels.
const SIZE: u32 = 240;
const QUALITY: u8 = 75;

/// `path` decoded, shrunk to fit SIZE×SIZE and encoded as a JPEG data: URI.
pub fn data_uri(path: &Path) -> Result<String> {
    let image = images::decode(path)?;
    let (width, height) = fitted(image.dimensions());
    let small = image::imageops::thumbnail(&image, width, height);
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, QUALITY)
        .encode_image(&small)
        .with_context(|| format!("cannot make a thumbnail of {}", path.display()))?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(jpeg);
    Ok(format!("data:image/jpeg;base64,{encoded}"))
}

/// The size of an image shrunk (never enlarged) to fit SIZE×SIZE.
fn fitted((width, height): (u32, u32)) -> (u32, u32) {
    let scale = (SIZE as f64 / width.max(height) as f64).min(1.0);
    let side = |s: u32| ((s as f64 * scale).round() as u32).max(1);
    (side(width), side(height))
}
