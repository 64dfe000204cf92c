//! What the machine has left: free disk space under a folder and available
//! memory, for saying before a long phase starts that its output will not fit.

use std::path::Path;

/// Bytes free to this user on the file system holding `dir` (or its nearest
/// existing parent); None where it cannot be told.
pub fn available_disk(dir: &Path) -> Option<u64> {
    let existing = dir.ancestors().find(|d| d.exists())?;
    let path = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stats` is written by statvfs before it is read.
    let ok = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) } == 0;
    ok.then(|| {
        // SAFETY: statvfs succeeded, so it filled `stats`.
        let stats = unsafe { stats.assume_init() };
        // The fields are narrower than u64 on some platforms.
        #[allow(clippy::unnecessary_cast)]
        let bytes = stats.f_bavail as u64 * stats.f_frsize as u64;
        bytes
    })
}

/// Bytes of memory available to new allocations (Linux's MemAvailable);
/// None elsewhere.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_has_some_disk_and_memory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_disk(&dir.path().join("not/yet/made")).unwrap() > 0);
        if cfg!(target_os = "linux") {
            assert!(available_memory().unwrap() > 0);
        }
    }
}
