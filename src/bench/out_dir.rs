//! The output directory of a run: refused when it is a file, already holds a report or lacks
//! the scratch space the suite's sealing and segments need.

use std::path::Path;

use super::run::BenchError;
use super::suite::Suite;
use super::workload::SealMode;

/// Scratch space a suite needs in `--out`.
pub fn needed_bytes(suite: &Suite, seal: &SealMode) -> u64 {
    let seg = 64 << 20;
    match seal {
        // PC1 layers (2 at ≤ 512 MiB, 11 at 32 GiB) + staged + sealed + trees.
        SealMode::Builtin => {
            suite
                .sector_bytes()
                .saturating_mul(if suite.sector_bytes() > (1 << 30) {
                    16
                } else {
                    8
                })
                + seg
        }
        _ => seg,
    }
}

/// Refuse an output directory that is a file, already holds a report or lacks space.
pub fn check_out_dir(out: &Path, need: u64) -> Result<(), BenchError> {
    let path = out.display().to_string();
    if out.exists() && !out.is_dir() {
        return Err(BenchError::OutDir {
            path,
            why: "it exists and is not a directory".into(),
        });
    }
    std::fs::create_dir_all(out).map_err(|e| BenchError::OutDir {
        path: path.clone(),
        why: e.to_string(),
    })?;
    if out.join("report.json").exists() {
        return Err(BenchError::OutDirTaken { path });
    }
    let free = free_bytes(out).unwrap_or(u64::MAX);
    if free < need {
        return Err(BenchError::OutDirFull {
            path,
            free_mib: free >> 20,
            need_mib: need.div_ceil(1 << 20),
            sector: String::new(),
        });
    }
    Ok(())
}

fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into a zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
}
