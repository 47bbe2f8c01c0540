//! What comine disabled on the sealing side, persisted so a crash never leaves it disabled.
//!
//! A small JSON file in the data directory, written atomically (temp file, fsync, rename).
//! `pending` is written *before* a disable call and `disabled` after it succeeds, so a crash
//! between the two still restores everything that may have changed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::seal::ControllerKind;

/// File name inside the data directory.
pub const STATE_FILE: &str = "sched-state.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SealingState {
    pub controller: ControllerKind,
    /// Task types (or controller marks such as `curio:cordon`, `pid:N`) comine disabled.
    pub disabled: Vec<String>,
    /// Task types comine was about to disable when the file was written.
    pub pending: Vec<String>,
    /// Wall-clock ms when sealing was disabled.
    pub since_ms: u64,
}

impl SealingState {
    /// Everything to re-enable on restore.
    pub fn to_restore(&self) -> Vec<String> {
        let mut all = self.disabled.clone();
        for p in &self.pending {
            if !all.contains(p) {
                all.push(p.clone());
            }
        }
        all
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read scheduler state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("scheduler state {path} is corrupt ({reason}); re-enable the sealing task types it lists by hand, then delete it")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write scheduler state {path}: {source}; check the data directory's permissions and free space")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads the state; `None` when there is none.
pub fn load(path: &Path) -> Result<Option<SealingState>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path: path.into(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateError::Read {
            path: path.into(),
            source: e,
        }),
    }
}

/// Writes atomically: readers see the old file or the new one, never half of one.
pub fn save(path: &Path, state: &SealingState) -> Result<(), StateError> {
    let werr = |source| StateError::Write {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| werr(std::io::Error::other(e)))?;
    crate::util::durable::write_durable(path, &bytes).map_err(werr)
}

/// Removes the state once everything is restored.
pub fn clear(path: &Path) -> Result<(), StateError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StateError::Write {
            path: path.into(),
            source: e,
        }),
    }
}
