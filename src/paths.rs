//! Where comine keeps its state when nobody says otherwise.

use std::path::PathBuf;

/// Environment variable that overrides the data directory for every subcommand.
pub const DATA_DIR_ENV: &str = "COMINE_DATA_DIR";

/// `$COMINE_DATA_DIR`, else the platform data dir (`~/.local/share/comine` on Linux),
/// else `./comine-data` when no home directory is known (e.g. a bare systemd unit).
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(DATA_DIR_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    dirs::data_dir()
        .map(|d| d.join("comine"))
        .unwrap_or_else(|| PathBuf::from("comine-data"))
}
