//! Writing outputs without ever leaving a half-written file where the user
//! expects a good one: write a temporary file beside the target, flush it to
//! disk, rename it, then flush the folder (so the rename survives a crash).

use anyhow::{Context, Result};
use std::path::Path;

/// Calls `write` with the path of a fresh temporary file in `path`'s folder,
/// then renames it over `path`. On error the temporary file is removed and
/// `path` is untouched.
pub fn replace_file(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create folder {}", dir.display()))?;
    let temp = tempfile::Builder::new()
        .prefix(".retrain-")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    write(temp.path()).with_context(|| format!("cannot write {}", path.display()))?;
    sync(temp.path())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o644))?;
    }
    temp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    sync_folder(dir)
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
