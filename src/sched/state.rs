//! What comine disabled on the sealing side, persisted so a crash never leaves it disabled.
//!
//! One row in the daemon's database (`sched_state` in `<data>/comine.db`, committed with
//! `synchronous = FULL` before the call returns). `pending` is written *before* a disable
//! call and `disabled` after it succeeds, so a crash between the two still restores
//! everything that may have changed. Releases before the database kept it in a JSON file,
//! `sched-state.json`: [`StateStore::open`] imports that file once and removes it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::seal::ControllerKind;

/// The file earlier releases kept the state in, inside the data directory (imported once).
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
    #[error("scheduler state in the database: {0}")]
    Db(#[from] crate::db::DbError),
    #[error("scheduler state in the database is corrupt ({0}); re-enable the sealing task types it lists by hand (`sqlite3 comine.db 'select json from sched_state'`), then delete that row")]
    CorruptRow(String),
}

impl From<rusqlite::Error> for StateError {
    fn from(e: rusqlite::Error) -> Self {
        StateError::Db(crate::db::DbError::Sql(e))
    }
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS sched_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    json TEXT NOT NULL
)";

/// The sealing state in the daemon's one database.
#[derive(Clone)]
pub struct StateStore {
    db: crate::db::Db,
}

impl StateStore {
    /// Opens the data directory's database (shared with the ledger in one process), and
    /// imports a `sched-state.json` an earlier release left: its row is committed before the
    /// file is removed, so a crash in between imports it again rather than losing it. A
    /// corrupt file is refused and kept. Blocking: call it off the async workers.
    pub fn open(data_dir: &Path) -> Result<StateStore, StateError> {
        let db = crate::db::Db::open(data_dir)?;
        let legacy = data_dir.join(STATE_FILE);
        let imported = load(&legacy)?;
        db.write(move |c| -> Result<(), StateError> {
            c.execute(SCHEMA, [])?;
            if let Some(st) = imported {
                let json = serde_json::to_string(&st)
                    .map_err(|e| StateError::CorruptRow(e.to_string()))?;
                c.execute(
                    "INSERT OR REPLACE INTO sched_state (id, json) VALUES (1, ?1)",
                    [json],
                )?;
            }
            Ok(())
        })?;
        clear(&legacy)?;
        Ok(StateStore { db })
    }

    /// The recorded state; `None` when sealing was left as comine found it.
    pub async fn load(&self) -> Result<Option<SealingState>, StateError> {
        let json: Option<String> = self
            .db
            .read_async(|c| -> Result<Option<String>, StateError> {
                use rusqlite::OptionalExtension;
                Ok(
                    c.query_row("SELECT json FROM sched_state WHERE id = 1", [], |r| {
                        r.get(0)
                    })
                    .optional()?,
                )
            })
            .await?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| StateError::CorruptRow(e.to_string())))
            .transpose()
    }

    /// Records `state`; durable when this returns.
    pub async fn save(&self, state: &SealingState) -> Result<(), StateError> {
        let json =
            serde_json::to_string(state).map_err(|e| StateError::CorruptRow(e.to_string()))?;
        self.db
            .write_async(move |c| -> Result<(), StateError> {
                c.execute(
                    "INSERT OR REPLACE INTO sched_state (id, json) VALUES (1, ?1)",
                    [json],
                )?;
                Ok(())
            })
            .await
    }

    /// Forgets the state once everything is restored.
    pub async fn clear(&self) -> Result<(), StateError> {
        self.db
            .write_async(|c| -> Result<(), StateError> {
                c.execute("DELETE FROM sched_state WHERE id = 1", [])?;
                Ok(())
            })
            .await
    }
}

/// Reads a state file (an earlier release's); `None` when there is none.
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

/// Writes a state file atomically, as an earlier release did (tests of the import use it).
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

/// Removes a state file.
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
