//! The on-disk bottleneck cache, and the same for the activations at a
//! fine-tuning cut (stored as f16: half the disk, well inside the blocks'
//! own rounding). One file per image, named by a key that covers the image's
//! bytes, the weights' fingerprint, the input size, the normalisation and the
//! layer, so a changed image or other preprocessing never reuses a stale
//! entry. Each entry carries its length and a checksum: a truncated or
//! damaged entry is reported and recomputed, never trusted.

use crate::hex::hex;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// How entries store their values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    F32,
    F16,
}

impl Storage {
    fn magic(self) -> &'static [u8; 8] {
        match self {
            Storage::F32 => b"RTBNECK1",
            Storage::F16 => b"RTACTF16",
        }
    }
    fn bytes_per_value(self) -> usize {
        match self {
            Storage::F32 => 4,
            Storage::F16 => 2,
        }
    }
}

pub struct BottleneckCache {
    dir: PathBuf,
    /// Hash of everything about the model and preprocessing that shapes a bottleneck.
    model_key: Vec<u8>,
    storage: Storage,
    /// The entries' file-name extension: "bottleneck", or "LAYER.f16".
    extension: String,
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
            storage: Storage::F32,
            extension: "bottleneck".into(),
        }
    }

    /// The cache of the activations at `layer` of the same network and
    /// preprocessing, stored as f16.
    pub fn at_layer(&self, layer: &str) -> Self {
        let mut key = self.model_key.clone();
        key.extend_from_slice(layer.as_bytes());
        BottleneckCache {
            dir: self.dir.clone(),
            model_key: Sha256::digest(&key).to_vec(),
            storage: Storage::F16,
            extension: format!("{}.f16", layer.replace('/', "_")),
        }
    }

    /// Bytes of one entry of `len` values on disk.
    pub fn entry_bytes(&self, len: usize) -> u64 {
        (12 + len * self.storage.bytes_per_value() + 32) as u64
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
            .join(format!("{name}.{key}.{}", self.extension)))
    }

    /// The cached vector, `Ok(None)` when there is no entry, or an error saying
    /// why the entry cannot be trusted.
    pub fn load(&self, entry: &Path, len: usize) -> Result<Option<Vec<f32>>> {
        let bytes = match std::fs::read(entry) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => bail!("cannot read it: {e}"),
        };
        let body_len = 12 + len * self.storage.bytes_per_value();
        if bytes.len() != body_len + 32 || &bytes[..8] != self.storage.magic() {
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
        let body = &bytes[12..body_len];
        Ok(Some(match self.storage {
            Storage::F32 => bytemuck::pod_collect_to_vec(body),
            Storage::F16 => bytemuck::pod_collect_to_vec::<u8, half::f16>(body)
                .into_iter()
                .map(f32::from)
                .collect(),
        }))
    }

    /// Writes an entry atomically.
    pub fn store(&self, entry: &Path, values: &[f32]) -> Result<()> {
        let mut bytes = Vec::with_capacity(self.entry_bytes(values.len()) as usize);
        bytes.extend_from_slice(self.storage.magic());
        bytes.extend_from_slice(&(values.len() as u32).to_le_bytes());
        match self.storage {
            Storage::F32 => bytes.extend_from_slice(bytemuck::cast_slice(values)),
            Storage::F16 => {
                for &v in values {
                    bytes.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
                }
            }
        }
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

        // A layer's activations: another entry, f16 values, checked the same way.
        let cut = cache.at_layer("mixed8");
        let entry = cut.entry_path("cls", &image).unwrap();
        assert_ne!(entry, cache.entry_path("cls", &image).unwrap());
        assert_ne!(
            entry,
            cache.at_layer("mixed7").entry_path("cls", &image).unwrap()
        );
        cut.store(&entry, &[1.0, -2.5, 0.1]).unwrap();
        let back = cut.load(&entry, 3).unwrap().unwrap();
        assert_eq!(&back[..2], &[1.0, -2.5]);
        assert!((back[2] - 0.1).abs() < 1e-4);
        assert_eq!(std::fs::metadata(&entry).unwrap().len(), cut.entry_bytes(3));
        assert!(
            cache.load(&entry, 3).is_err(),
            "an f16 entry is not a bottleneck"
        );
    }
}
