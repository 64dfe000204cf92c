//! Where retrain keeps what it computes once per machine: converted default
//! weights and the kernel tuning.

use std::path::PathBuf;

/// `$RETRAIN_CACHE_DIR`, else the user's cache directory (e.g. ~/.cache/retrain).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("RETRAIN_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("retrain")))
        .unwrap_or_else(|| PathBuf::from(".retrain-cache"))
}
