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

/// Creates `dir` and any missing parents with mode 0700: spooled segments, the ledger,
/// the store and the API token are the operator's data, not the host's. A directory
/// that already exists keeps its mode (the operator may have chosen it); when that mode
/// lets other users in, it is returned so the caller can say so.
pub fn create_private_dir(dir: &std::path::Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let existed = dir.is_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if !existed {
        return Ok(None);
    }
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    Ok((mode & 0o077 != 0).then_some(mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_dirs_are_0700_parents_included() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/data");
        assert_eq!(create_private_dir(&dir).unwrap(), None);
        for d in [root.path().join("a"), dir.clone()] {
            let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        // An existing directory keeps the mode its operator gave it.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        assert_eq!(create_private_dir(&dir).unwrap(), Some(0o750));
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o750);
    }
}
