//! Free-space guard for the data directory: below `[store] min_free_bytes` new work is refused
//! up front (the API answers 507), so a full disk never leaves a half-written store behind.
//! Free space is what an unprivileged process may use (`statvfs` `f_bavail`), as `df` shows.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Not enough free space for new work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("only {free} bytes are free on the filesystem of {} (below [store] min_free_bytes = {min}); new jobs are refused until space is freed: remove old deal CARs or renditions no longer needed, or lower min_free_bytes", path.display())]
pub struct LowSpace {
    pub path: PathBuf,
    pub free: u64,
    pub min: u64,
}

/// Bytes available to unprivileged writers on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `st` points to writable statvfs storage;
    // statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    let (avail, frsize) = (u64::from(st.f_bavail), u64::from(st.f_frsize));
    Ok(avail.saturating_mul(frsize))
}

/// `Err(LowSpace)` when fewer than `min` bytes are free under `path` (which must exist).
/// `min = 0` disables the check. An unreadable filesystem is reported as an I/O error.
pub fn check(path: &Path, min: u64) -> Result<Result<(), LowSpace>, io::Error> {
    if min == 0 {
        return Ok(Ok(()));
    }
    let free = free_bytes(path)?;
    Ok(if free < min {
        Err(LowSpace {
            path: path.to_path_buf(),
            free,
            min,
        })
    } else {
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_free_space_and_refuses_below_the_floor() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        assert_eq!(check(dir.path(), 0).unwrap(), Ok(()));
        assert_eq!(check(dir.path(), 1).unwrap(), Ok(()));
        let low = check(dir.path(), free.saturating_add(1 << 40))
            .unwrap()
            .unwrap_err();
        assert!(low.free < low.min);
        let msg = low.to_string();
        assert!(
            msg.contains("min_free_bytes") && msg.contains("refused"),
            "{msg}"
        );
        assert!(free_bytes(Path::new("/definitely/not/here")).is_err());
    }
}
