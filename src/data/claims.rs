//! Claims on cache entries, so that processes sharing a cache folder (on one
//! machine, or on several over a shared file system) never compute the same
//! entry twice: before computing an entry a process creates `ENTRY.claim`
//! (create-new: exactly one process wins it) and removes it once the entry is
//! written; the others wait for the entry instead of computing it. A claim
//! whose holder is gone — a process of this machine that no longer runs, or
//! a claim older than STALE_AFTER — is taken over.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A claim this old is abandoned whoever holds it: computing one batch of
/// entries takes far less, even on a CPU adapter.
const STALE_AFTER: Duration = Duration::from_secs(15 * 60);
/// A claim file still empty after this long was left by a process killed
/// between creating and writing it.
const UNWRITTEN_AFTER: Duration = Duration::from_secs(10);

/// The outcome of claiming an entry.
pub enum Claim {
    /// This process computes the entry; the claim is released on drop.
    Mine(Held),
    /// Another live process is computing it.
    Theirs,
}

/// A claim this process holds.
pub struct Held {
    path: PathBuf,
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Claims `entry` for this process, unless another live process holds it.
pub fn claim(entry: &Path) -> Result<Claim> {
    let path = claim_path(entry);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create folder {}", dir.display()))?;
    }
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                // Best effort: a holder that cannot say who it is still holds the claim.
                let _ = writeln!(file, "{} {}", host(), std::process::id());
                return Ok(Claim::Mine(Held { path }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if !abandoned(&path) {
                    return Ok(Claim::Theirs);
                }
                let _ = std::fs::remove_file(&path); // then try once more
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create {}", path.display()));
            }
        }
    }
    Ok(Claim::Theirs) // another process took the abandoned claim first
}

fn claim_path(entry: &Path) -> PathBuf {
    let mut name = entry.as_os_str().to_owned();
    name.push(".claim");
    PathBuf::from(name)
}

/// Whether the claim at `path` has no live holder.
fn abandoned(path: &Path) -> bool {
    let age = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let holder = text.trim().rsplit_once(' ');
    match holder.and_then(|(h, pid)| Some((h, pid.parse::<i32>().ok()?))) {
        Some((h, pid)) if h == host() => !running(pid) || age > STALE_AFTER,
        Some(_) => age > STALE_AFTER,
        None => age > UNWRITTEN_AFTER,
    }
}

/// Whether process `pid` of this machine is running.
fn running(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// This machine's name.
fn host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match ok {
        true => String::from_utf8_lossy(&buf[..end]).replace(' ', "_"),
        false => "unknown-host".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claim_wins_and_a_dead_holders_claim_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let entry = dir.path().join("a.bottleneck");
        let Claim::Mine(held) = claim(&entry).unwrap() else {
            panic!("the first claim must win")
        };
        assert!(matches!(claim(&entry).unwrap(), Claim::Theirs));
        drop(held);
        assert!(!claim_path(&entry).exists());
        // A claim left by a process of this machine that no longer runs.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(claim_path(&entry), format!("{} {dead}\n", host())).unwrap();
        assert!(matches!(claim(&entry).unwrap(), Claim::Mine(_)));
        // A claim of another machine, fresh: respected.
        std::fs::write(claim_path(&entry), "elsewhere 1\n").unwrap();
        assert!(matches!(claim(&entry).unwrap(), Claim::Theirs));
    }
}
