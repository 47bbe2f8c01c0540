//! Rendition files: each worker writes to a temporary name beside its destination, and the
//! file is renamed into place only when the whole job succeeded; otherwise it is removed.

use std::path::{Path, PathBuf};

use super::super::{RenditionReport, TranscodeError};

/// A temporary output that is deleted unless committed.
pub(super) struct TempOutput {
    pub(super) tmp: PathBuf,
    pub(super) dst: PathBuf,
    pub(super) keep: bool,
}

impl Drop for TempOutput {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// A rendition that encoded completely, waiting for its siblings before it is committed.
pub(super) struct Finished {
    pub(super) report: RenditionReport,
    pub(super) output: TempOutput,
    /// The encoder, reset for the stream's next segment, where it can be.
    pub(super) warm: Option<super::session::WarmEncoder>,
}

impl Finished {
    pub(super) fn commit(mut self) -> Result<RenditionReport, TranscodeError> {
        std::fs::rename(&self.output.tmp, &self.output.dst).map_err(|e| {
            TranscodeError::Output {
                path: self.output.dst.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        self.output.keep = true;
        Ok(self.report)
    }
}

/// A temporary name beside `dst`, unique per process *and* per call, so two
/// transcodes of one process writing into the same directory never share a file.
pub(super) fn temp_name(dst: &Path) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = dst
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".{}.{seq}.tmp", std::process::id()));
    dst.with_file_name(name)
}
