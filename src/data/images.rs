//! Finding and decoding images.

use anyhow::{anyhow, bail, Context, Result};
use image::{ImageFormat, ImageReader, Limits, RgbImage};
use std::collections::HashSet;
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// The most pixels an image may have (64 megapixels, e.g. 8192×8192): a
/// larger one is refused from its header, before anything is allocated, so
/// a decompression bomb costs nothing.
pub const MAX_PIXELS: u64 = 1 << 26;

/// File extensions treated as images, compared case-insensitively.
pub const EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "gif", "bmp", "webp"];

pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Whether a JPEG ends its last scan with an end-of-image marker. The JPEG
/// decoder fills a truncated file's missing rows with grey; TensorFlow's
/// decode_jpeg refuses such files, and so does this. Inside a scan a 0xFF
/// byte is always followed by 0x00 or a restart marker, so the last
/// start-of-scan marker (FF DA) must be followed by an FF D9 somewhere.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let marker = |m: u8| bytes.windows(2).rposition(|w| w == [0xFF, m]);
    match (marker(0xDA), marker(0xD9)) {
        (Some(scan), Some(end)) => end > scan,
        _ => false,
    }
}

/// An image refused for its size, from its header.
#[derive(Debug)]
pub struct TooLarge {
    pub width: u32,
    pub height: u32,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{}×{} pixels is more than the {} megapixels an image may have",
            self.width,
            self.height,
            MAX_PIXELS >> 20
        )
    }
}

impl std::error::Error for TooLarge {}

/// Every image file under `dir` (recursively; a folder reached twice, as
/// through a symlink loop, is read once), sorted by path.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut visited = HashSet::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let real = std::fs::canonicalize(&d).unwrap_or_else(|_| d.clone());
        if !visited.insert(real) {
            log::warn!(
                "{} leads back to a folder already searched; skipping it",
                d.display()
            );
            continue;
        }
        let entries =
            std::fs::read_dir(&d).with_context(|| format!("cannot read folder {}", d.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot read folder {}", d.display()))?
                .path();
            if path.is_dir() {
                pending.push(path);
            } else if is_image(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Decodes an image file to 8-bit RGB. Errors say why in the user's terms;
/// a decoder that panics on a malformed file is reported as a damaged file.
/// The format is told by the bytes, not the extension; alpha is dropped and
/// greyscale, palette and 16-bit images are converted (as TensorFlow's
/// decode_image with 3 channels does); an animated GIF gives its first frame.
pub fn decode(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| anyhow!("cannot read it: {e}"))?;
    decode_bytes(&bytes)
}

/// `decode` of a file's bytes already in memory.
pub fn decode_bytes(bytes: &[u8]) -> Result<RgbImage> {
    match std::panic::catch_unwind(|| decode_checked(bytes)) {
        Ok(decoded) => decoded,
        Err(_) => Err(anyhow!(
            "not a readable image: the decoder failed on damaged data"
        )),
    }
}

fn decode_checked(bytes: &[u8]) -> Result<RgbImage> {
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .expect("reading from memory cannot fail")
    };
    let (width, height) = reader()
        .into_dimensions()
        .map_err(|e| anyhow!("not a readable image: {e}"))?;
    if width as u64 * height as u64 > MAX_PIXELS {
        return Err(TooLarge { width, height }.into());
    }
    if reader().format() == Some(ImageFormat::Jpeg) && !jpeg_is_complete(bytes) {
        bail!("not a readable image: the JPEG data is truncated (it has no end-of-image marker)");
    }
    let mut limits = Limits::default();
    // The largest decoded form: 16-bit RGBA.
    limits.max_alloc = Some(MAX_PIXELS * 8);
    let mut reader = reader();
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| anyhow!("not a readable image: {e}"))?;
    Ok(image.to_rgb8())
}
