//! Finding and decoding images.

use anyhow::{anyhow, Context, Result};
use image::RgbImage;
use std::path::{Path, PathBuf};

/// File extensions treated as images, compared case-insensitively.
pub const EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "gif", "bmp", "webp"];

pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Every image file under `dir` (recursively), sorted by path.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
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
pub fn decode(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| anyhow!("cannot read it: {e}"))?;
    let decoded = std::panic::catch_unwind(|| image::load_from_memory(&bytes));
    match decoded {
        Ok(Ok(img)) => Ok(img.to_rgb8()),
        Ok(Err(e)) => Err(anyhow!("not a readable image: {e}")),
        Err(_) => Err(anyhow!(
            "not a readable image: the decoder failed on damaged data"
        )),
    }
}
