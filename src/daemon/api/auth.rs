//! The API bearer token: generated at first start, kept mode 0600 in the data dir,
//! compared in constant time.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the API token file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot create the API token file {path}: {source}; check the data directory's permissions"
    )]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "API token file {0} is empty or malformed; delete it and restart to generate a new one"
    )]
    Malformed(String),
    #[error("no system randomness for the API token: {0}")]
    Random(String),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the token at `path`, or creates one (32 random bytes, hex) with mode 0600.
/// Returns the token and whether it was created now.
pub fn load_or_create(path: &Path) -> Result<(String, bool), TokenError> {
    let shown = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(TokenError::Malformed(shown));
            }
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %shown, "API token file is readable by others; tightening it to 0600");
                    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
                }
            }
            Ok((token, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut raw = [0u8; 32];
            getrandom::fill(&mut raw).map_err(|e| TokenError::Random(e.to_string()))?;
            let token = hex(&raw);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|source| TokenError::Write {
                    path: shown.clone(),
                    source,
                })?;
            }
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| TokenError::Write {
                    path: shown.clone(),
                    source,
                })?;
            f.write_all(format!("{token}\n").as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|source| TokenError::Write {
                    path: shown,
                    source,
                })?;
            Ok((token, true))
        }
        Err(source) => Err(TokenError::Read {
            path: shown,
            source,
        }),
    }
}

/// Constant-time check of an `Authorization` header value against the token.
pub fn check(header: Option<&[u8]>, token: &str) -> bool {
    let Some(value) = header else {
        return false;
    };
    let Some(given) = value.strip_prefix(b"Bearer ") else {
        return false;
    };
    // ct_eq on slices of different lengths returns false without early exit on content.
    given.ct_eq(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-token");
        let (t1, created) = load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(t1.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (t2, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(t1, t2);
        assert!(check(Some(format!("Bearer {t1}").as_bytes()), &t1));
        assert!(!check(Some(b"Bearer nope"), &t1));
        assert!(!check(Some(t1.as_bytes()), &t1));
        assert!(!check(None, &t1));
    }
}
