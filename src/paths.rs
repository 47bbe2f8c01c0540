//! Where comine keeps its state when nobody says otherwise.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Environment variable that overrides the data directory for every subcommand.
pub const DATA_DIR_ENV: &str = "COMINE_DATA_DIR";

/// The systemd unit's data directory (`StateDirectory=comine`).
pub const SERVICE_DATA_DIR: &str = "/var/lib/comine";

/// `$COMINE_DATA_DIR`, else the platform data dir (`~/.local/share/comine` on Linux),
/// else `./comine-data` when no home directory is known (e.g. a bare systemd unit).
/// This is where `comine run` keeps its state.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(DATA_DIR_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    user_data_dir().unwrap_or_else(|| PathBuf::from("comine-data"))
}

fn user_data_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("comine"))
}

/// The data directory of the daemon a client command (`comine status`, `comine ledger
/// export`) talks to: `$COMINE_DATA_DIR`; else the user's own data directory when a daemon
/// ran there; else the systemd service's `/var/lib/comine` when it exists (an operator typing
/// `comine status` on a host where comine runs as a service); else the user's directory.
pub fn client_data_dir() -> PathBuf {
    choose_client_data_dir(
        std::env::var_os(DATA_DIR_ENV),
        user_data_dir(),
        Path::new(SERVICE_DATA_DIR),
    )
}

/// [`client_data_dir`]'s choice, with its inputs given (testable without touching `/var`).
pub fn choose_client_data_dir(
    env: Option<OsString>,
    user: Option<PathBuf>,
    service: &Path,
) -> PathBuf {
    if let Some(dir) = env.filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(u) = user.as_deref().filter(|u| holds_state(u)) {
        return u.to_path_buf();
    }
    // The service's directory is mode 0700 (comine only): its contents may be unreadable
    // to this user, but its existence says where the daemon is, and the error that follows
    // names that path.
    if service.is_dir() {
        return service.to_path_buf();
    }
    user.unwrap_or_else(|| PathBuf::from("comine-data"))
}

/// True when a daemon has run with `dir` as its data directory.
pub fn holds_state(dir: &Path) -> bool {
    ["api.addr", "api-token", "ledger"]
        .iter()
        .any(|f| dir.join(f).exists())
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

    #[test]
    fn client_commands_find_the_service_data_dir() {
        let root = tempfile::tempdir().unwrap();
        let user = root.path().join("home/.local/share/comine");
        let service = root.path().join("var/lib/comine");
        // Nothing anywhere: the user's own directory (the error will name it).
        assert_eq!(
            choose_client_data_dir(None, Some(user.clone()), &service),
            user
        );
        // The service ran: an operator's `comine status` finds it.
        std::fs::create_dir_all(&service).unwrap();
        std::fs::write(service.join("api.addr"), "127.0.0.1:9470").unwrap();
        assert_eq!(
            choose_client_data_dir(None, Some(user.clone()), &service),
            service
        );
        // A daemon of the user's own wins over the service's.
        std::fs::create_dir_all(&user).unwrap();
        std::fs::write(user.join("api-token"), "t").unwrap();
        assert_eq!(
            choose_client_data_dir(None, Some(user.clone()), &service),
            user
        );
        // $COMINE_DATA_DIR wins over both; an empty value is ignored.
        assert_eq!(
            choose_client_data_dir(Some("/x".into()), Some(user.clone()), &service),
            PathBuf::from("/x")
        );
        assert_eq!(
            choose_client_data_dir(Some("".into()), Some(user.clone()), &service),
            user
        );
    }

    #[test]
    fn private_dirs_are_0700_parents_included() {
        use std::os::unix::fs::PermissionsExt;
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
