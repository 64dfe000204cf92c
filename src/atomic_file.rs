//! Writing outputs without ever leaving a half-written file where the user
//! expects a good one: write a temporary file beside the target, flush it to
//! disk, rename it, then flush the folder (so the rename survives a crash).

use anyhow::{Context, Result};
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tempfile::NamedTempFile;

/// Temporary files start with this.
const PREFIX: &str = ".retrain-";
/// A temporary file this old was left by a process killed while writing
/// (a live writer renames its file within seconds).
const ABANDONED_AFTER: Duration = Duration::from_secs(60 * 60);

/// Calls `write` with the path of a fresh temporary file in `path`'s folder,
/// then renames it over `path`. On error the temporary file is removed and
/// `path` is untouched.
pub fn replace_file(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let (dir, temp) = temporary_beside(path)?;
    write(temp.path()).with_context(|| format!("cannot write {}", path.display()))?;
    sync(temp.path())?;
    temp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    sync_folder(dir)
}

/// A new, empty file that takes `path`'s name at once, for a file written as
/// it goes (a log): the old one is replaced whole, never cut short in place.
pub fn fresh_file(path: &Path) -> Result<File> {
    let (_, temp) = temporary_beside(path)?;
    temp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `path`'s folder (created if needed) and a temporary file in it, readable
/// by all once renamed (as a file the user writes would be).
fn temporary_beside(path: &Path) -> Result<(&Path, NamedTempFile)> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create folder {}", dir.display()))?;
    sweep_once(dir);
    let temp = tempfile::Builder::new()
        .prefix(PREFIX)
        .tempfile_in(dir)
        .with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o644))?;
    }
    Ok((dir, temp))
}

/// Removes the temporary files that killed processes left in `dir`, the
/// first time this process writes there.
fn sweep_once(dir: &Path) {
    static SWEPT: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);
    let mut swept = SWEPT.lock().unwrap_or_else(|e| e.into_inner());
    if !swept
        .get_or_insert_with(HashSet::new)
        .insert(dir.to_path_buf())
    {
        return;
    }
    let now = SystemTime::now();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let abandoned = (entry.metadata().ok())
            .and_then(|m| m.modified().ok())
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > ABANDONED_AFTER);
        if abandoned && entry.file_name().to_string_lossy().starts_with(PREFIX) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Flushes a written file's data to disk.
fn sync(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot flush {} to disk", path.display()))
}

/// Flushes a folder's entries (a rename in it) to disk; a no-op where folders cannot be opened.
fn sync_folder(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot flush folder {} to disk", dir.display()))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_file(path, |temp| Ok(std::fs::write(temp, bytes)?))
}
