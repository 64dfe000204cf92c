//! The labelled image folder: one class per sub-folder, and retrain.py's
//! hash-based split of each class into training, validation and testing.

use super::images::is_image;
use anyhow::{bail, Context, Result};
use sha1::{Digest, Sha1};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Set {
    Training,
    Validation,
    Testing,
}

impl Set {
    pub fn name(self) -> &'static str {
        match self {
            Set::Training => "training",
            Set::Validation => "validation",
            Set::Testing => "testing",
        }
    }
}

/// retrain.py's MAX_NUM_IMAGES_PER_CLASS.
const MAX_PER_CLASS: u64 = (1 << 27) - 1;

/// The set retrain.py assigns an image: SHA-1 of its path with any
/// `_nohash_…` suffix removed, modulo 2^27, scaled to a percentage.
pub fn assign_set(path: &str, validation_pct: f64, testing_pct: f64) -> Set {
    let hash_name = path.find("_nohash_").map_or(path, |i| &path[..i]);
    let digest = Sha1::digest(hash_name.as_bytes());
    let low = u32::from_be_bytes(digest[16..20].try_into().expect("4 bytes")) as u64;
    let percentage = (low % (MAX_PER_CLASS + 1)) as f64 * (100.0 / MAX_PER_CLASS as f64);
    if percentage < validation_pct {
        Set::Validation
    } else if percentage < validation_pct + testing_pct {
        Set::Testing
    } else {
        Set::Training
    }
}

/// Python's os.path.join for the two components retrain.py adds.
fn join(dir: &str, class: &str, file: &str) -> String {
    let mut s = dir.to_string();
    for part in [class, file] {
        if !s.is_empty() && !s.ends_with('/') {
            s.push('/');
        }
        s.push_str(part);
    }
    s
}

/// retrain.py's label rule: lower-case, every run of characters outside
/// [a-z0-9] replaced by one space.
pub fn label_of(folder: &str) -> String {
    let mut label = String::new();
    let mut in_gap = false;
    for ch in folder.to_lowercase().chars() {
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            label.push(ch);
            in_gap = false;
        } else if !in_gap {
            label.push(' ');
            in_gap = true;
        }
    }
    label
}

#[derive(Clone, Debug)]
pub struct Image {
    pub path: PathBuf,
    pub set: Set,
}

#[derive(Clone, Debug)]
pub struct Class {
    pub label: String,
    pub folder: String,
    pub images: Vec<Image>,
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub classes: Vec<Class>,
}

impl Dataset {
    /// Scans `dir`: each sub-folder holding images is a class (sorted by name).
    /// Warns for empty folders and classes under 20 images; fewer than two
    /// classes is an error.
    pub fn scan(dir: &Path, validation_pct: f64, testing_pct: f64) -> Result<Self> {
        let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read the image folder {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        folders.sort();
        let dir_text = dir.to_string_lossy();
        let mut classes: Vec<Class> = Vec::new();
        for folder in folders {
            let name = folder
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
                .with_context(|| format!("cannot read folder {}", folder.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_image(p))
                .collect();
            files.sort();
            if files.is_empty() {
                log::warn!("no images in {}; ignoring it", folder.display());
                continue;
            }
            if files.len() < 20 {
                log::warn!(
                    "only {} images in {} (20 or more are recommended)",
                    files.len(),
                    folder.display()
                );
            }
            let label = label_of(&name);
            if let Some(other) = classes.iter().find(|c| c.label == label) {
                bail!(
                    "folders \"{}\" and \"{name}\" both give the label \"{label}\"; rename one",
                    other.folder
                );
            }
            let images = files
                .into_iter()
                .map(|path| {
                    let file = path
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let set =
                        assign_set(&join(&dir_text, &name, &file), validation_pct, testing_pct);
                    Image { path, set }
                })
                .collect();
            classes.push(Class {
                label,
                folder: name,
                images,
            });
        }
        match classes.len() {
            0 => bail!("no classes found in {}: put each class's images in a sub-folder of it", dir.display()),
            1 => bail!(
                "only one class (\"{}\") found in {}: retraining needs at least two sub-folders of images",
                classes[0].folder,
                dir.display()
            ),
            _ => Ok(Dataset { classes }),
        }
    }

    /// (class index, image) of every image in `set`.
    pub fn in_set(&self, set: Set) -> Vec<(usize, &Image)> {
        self.classes
            .iter()
            .enumerate()
            .flat_map(|(c, class)| {
                class
                    .images
                    .iter()
                    .filter(move |i| i.set == set)
                    .map(move |i| (c, i))
            })
            .collect()
    }

    pub fn labels(&self) -> Vec<String> {
        self.classes.iter().map(|c| c.label.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_retrain_py() {
        assert_eq!(label_of("Über Café"), " ber caf ");
        assert_eq!(label_of("layout_Broken--2"), "layout broken 2");
        assert_eq!(label_of("normal"), "normal");
    }

    #[test]
    fn join_like_os_path_join() {
        assert_eq!(join("img", "a", "b.jpg"), "img/a/b.jpg");
        assert_eq!(join("img/", "a", "b.jpg"), "img/a/b.jpg");
    }
}
