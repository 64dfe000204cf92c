//! The on-disk bottleneck cache. One file per image, named by a key that covers
//! the image's bytes, the weights' fingerprint, the input size and the
//! normalisation, so a changed image or other preprocessing never reuses a
//! stale entry. Each entry carries its length and a checksum: a truncated or
//! damaged entry is reported and recomputed, never trusted.

use crate::hex::hex;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"RTBNECK1";

pub struct BottleneckCache {
    dir: PathBuf,
    /// Hash of everything about the model and preprocessing that shapes a bottleneck.
    model_key: Vec<u8>,
}

impl BottleneckCache {
    pub fn new(
        dir: &Path,
        fingerprint: &str,
        input: (u32, u32),
        scale: [f32; 3],
        offset: [f32; 3],
    ) -> Self {
        let recipe = format!("{fingerprint}|{}x{}|{scale:?}|{offset:?}", input.0, input.1);
        BottleneckCache {
            dir: dir.to_path_buf(),
            model_key: Sha256::digest(recipe.as_bytes()).to_vec(),
        }
    }

    /// Where the entry for `image` (of class folder `class`) lives; reads the image to hash it.
    pub fn entry_path(&self, class: &str, image: &Path) -> Result<PathBuf> {
        let bytes =
            std::fs::read(image).with_context(|| format!("cannot read {}", image.display()))?;
        let mut h = Sha256::new();
        h.update(&self.model_key);
        h.update(&bytes);
        let key = hex(&h.finalize()[..12]);
        let name = image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(self
            .dir
            .join(class)
            .join(format!("{name}.{key}.bottleneck")))
    }

    /// The cached vector, `Ok(None)` when there is no entry, or an error saying
    /// why the entry cannot be trusted.
    pub fn load(&self, entry: &Path, len: usize) -> Result<Option<Vec<f32>>> {
        let bytes = match std::fs::read(entry) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => bail!("cannot read it: {e}"),
        };
        let body_len = MAGIC.len() + 4 + len * 4;
        if bytes.len() != body_len + 32 || &bytes[..8] != MAGIC {
            bail!(
                "truncated or not a bottleneck file ({} bytes, expected {})",
                bytes.len(),
                body_len + 32
            );
        }
        if u32::from_le_bytes(bytes[8..12].try_into()?) as usize != len {
            bail!("holds a vector of another length");
        }
        if Sha256::digest(&bytes[..body_len])[..] != bytes[body_len..] {
            bail!("checksum mismatch (damaged)");
        }
        Ok(Some(bytemuck::pod_collect_to_vec(&bytes[12..body_len])))
    }

    /// Writes an entry atomically.
    pub fn store(&self, entry: &Path, values: &[f32]) -> Result<()> {
        let mut bytes = Vec::with_capacity(12 + values.len() * 4 + 32);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(values.len() as u32).to_le_bytes());
        bytes.extend_from_slice(bytemuck::cast_slice(values));
        let sum = Sha256::digest(&bytes);
        bytes.extend_from_slice(&sum);
        crate::atomic_file::write_bytes(entry, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("a.png");
        std::fs::write(&image, b"pixels").unwrap();
        let cache = BottleneckCache::new(
            &dir.path().join("cache"),
            "fp",
            (299, 299),
            [1.0; 3],
            [0.0; 3],
        );
        let entry = cache.entry_path("cls", &image).unwrap();
        assert!(cache.load(&entry, 3).unwrap().is_none());
        cache.store(&entry, &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(cache.load(&entry, 3).unwrap().unwrap(), vec![1.0, 2.0, 3.0]);

        let mut bytes = std::fs::read(&entry).unwrap();
        bytes[14] ^= 1;
        std::fs::write(&entry, &bytes).unwrap();
        assert!(cache.load(&entry, 3).is_err(), "flipped bit");
        std::fs::write(&entry, &bytes[..20]).unwrap();
        assert!(cache.load(&entry, 3).is_err(), "truncated");

        // Another image content or another model gives another entry.
        std::fs::write(&image, b"other pixels").unwrap();
        assert_ne!(cache.entry_path("cls", &image).unwrap(), entry);
        let other = BottleneckCache::new(
            &dir.path().join("cache"),
            "fp2",
            (299, 299),
            [1.0; 3],
            [0.0; 3],
        );
        assert_ne!(
            other.entry_path("cls", &image).unwrap(),
            cache.entry_path("cls", &image).unwrap()
        );
    }
}
