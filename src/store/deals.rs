//! Deal stage: packs stored renditions into CAR batches for Boost offline deals.
//!
//! `pack` groups pinned roots not yet in a live batch into batches up to a size, links each
//! batch's renditions under one UnixFS directory (one payload CID per deal), writes the CAR to
//! `<data_dir>/store/deals/<id>.car` and computes its piece CID and padded size. Each batch moves
//! packing → ready → proposed → imported → active, or failed; the record lives in the database
//! table `store_batches` (its renditions in `store_batch_items`, which garbage collection reads:
//! a rendition in a batch that is not active yet is never collected). comine prints the exact `boost offline-deal` / `boostd import-data` commands, or
//! runs them when a provider and binaries are configured.

use std::path::{Path, PathBuf};
use std::process::Command;

use cid::Cid;

use rusqlite::{params, OptionalExtension};

use super::{commp, now_secs, parse_cid, Store, StoreError};
use crate::db;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum BatchState {
    Packing,
    Ready,
    Proposed,
    Imported,
    Active,
    Failed,
}

impl std::fmt::Display for BatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

impl BatchState {
    /// Allowed forward moves; anything may fail.
    pub fn can_move_to(self, next: BatchState) -> bool {
        use BatchState::*;
        matches!(
            (self, next),
            (Packing, Ready)
                | (Ready, Proposed)
                | (Proposed, Imported)
                | (Imported, Active)
                | (Packing | Ready | Proposed | Imported, Failed)
        )
    }
}

/// One rendition inside a batch.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchItem {
    pub cid: String,
    pub name: String,
    pub size: u64,
}

/// A deal batch and its state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Batch {
    pub id: String,
    pub state: BatchState,
    /// Payload CID (UnixFS directory over the items), the CAR's single root.
    pub payload_cid: String,
    pub car_path: PathBuf,
    pub car_size: u64,
    pub piece_cid: String,
    pub padded_size: u64,
    pub items: Vec<BatchItem>,
    pub created_at: u64,
    pub updated_at: u64,
    pub deal_uuid: Option<String>,
    pub error: Option<String>,
}

/// Deal parameters; unset ones appear as placeholders in the printed commands.
#[derive(Debug, Clone, Default)]
pub struct DealConfig {
    pub provider: Option<String>,
    pub wallet: Option<String>,
    /// Epochs (default 518400, about 180 days).
    pub duration: Option<u64>,
    /// attoFIL per epoch per GiB (default 0).
    pub storage_price: Option<String>,
    pub verified: bool,
    pub boost_bin: Option<String>,
    pub boostd_bin: Option<String>,
}

/// What `deal commands` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DealCommands {
    pub manifest: Batch,
    /// Client side: propose the offline deal.
    pub boost: Vec<String>,
    /// Provider side, after the CAR has been shipped: import it for the deal.
    pub boostd: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DealError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no deal batch '{0}' (see `comine store deal list`)")]
    NoBatch(String),
    #[error("batch {id} is {from}; it cannot become {to}")]
    BadTransition {
        id: String,
        from: BatchState,
        to: BatchState,
    },
    #[error("{0}")]
    NotConfigured(String),
    #[error("{cmd} failed: {detail}")]
    Command { cmd: String, detail: String },
}

/// Default `--max-size`: fits a 32 GiB sector's unpadded capacity with room for CAR framing.
pub const DEFAULT_MAX_SIZE: u64 = 32 * (1 << 30) / 128 * 127 - (1 << 20);

fn save(store: &Store, batch: &Batch) -> Result<(), StoreError> {
    let record =
        serde_json::to_string(batch).map_err(|e| StoreError::io("encoding a batch", e.into()))?;
    let payload = parse_cid(&batch.payload_cid).ok().map(|c| c.to_bytes());
    let items: Vec<Vec<u8>> = batch
        .items
        .iter()
        .filter_map(|i| parse_cid(&i.cid).ok().map(|c| c.to_bytes()))
        .collect();
    let (id, state, created) = (batch.id.clone(), batch.state.to_string(), batch.created_at);
    store.db().write(move |c| {
        c.execute(
            "INSERT INTO store_batches (id, state, created_at, payload_cid, record)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO UPDATE SET state = excluded.state,
                 payload_cid = excluded.payload_cid, record = excluded.record",
            params![id, state, db::to_sql_u64(created), payload, record],
        )?;
        for cid in items {
            c.execute(
                "INSERT OR IGNORE INTO store_batch_items (batch, cid) VALUES (?1, ?2)",
                params![id, cid],
            )?;
        }
        Ok(())
    })
}

fn decode(id: &str, raw: &str) -> Result<Batch, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::BadRecord {
        key: format!("deal batch {id}"),
        reason: e.to_string(),
    })
}

/// All batches, oldest first.
pub fn list(store: &Store) -> Result<Vec<Batch>, StoreError> {
    store.db().read(|c| {
        let mut stmt =
            c.prepare_cached("SELECT id, record FROM store_batches ORDER BY created_at, id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, raw) = row?;
            out.push(decode(&id, &raw)?);
        }
        Ok(out)
    })
}

pub fn get(store: &Store, id: &str) -> Result<Batch, DealError> {
    let raw: Option<String> = store.db().read(|c| {
        c.query_row(
            "SELECT record FROM store_batches WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()
        .map_err(StoreError::from)
    })?;
    match raw {
        Some(raw) => Ok(decode(id, &raw)?),
        None => Err(DealError::NoBatch(id.into())),
    }
}

/// Packs every pinned rendition not in a live (non-failed) batch. Renditions are taken oldest
/// first; a rendition larger than `max_size` gets a batch of its own.
pub fn pack(store: &Store, max_size: u64) -> Result<Vec<Batch>, StoreError> {
    let taken: std::collections::HashSet<String> = list(store)?
        .into_iter()
        .filter(|b| b.state != BatchState::Failed)
        .flat_map(|b| b.items.into_iter().map(|i| i.cid))
        .collect();
    let candidates: Vec<(Cid, super::PinInfo)> = store
        .pins()?
        .into_iter()
        .filter(|(c, _)| !taken.contains(&c.to_string()))
        .collect();
    // Per-block CAR framing is under 50 bytes; estimate it from the chunk count.
    let estimate = |dag: u64| dag + (dag / super::CHUNK_SIZE as u64 + 2) * 50;
    let mut groups: Vec<Vec<(Cid, super::PinInfo)>> = Vec::new();
    let mut current: Vec<(Cid, super::PinInfo)> = Vec::new();
    let mut current_size = 0u64;
    for (cid, info) in candidates {
        let est = estimate(info.dag_size);
        if !current.is_empty() && current_size + est > max_size {
            groups.push(std::mem::take(&mut current));
            current_size = 0;
        }
        current_size += est;
        current.push((cid, info));
    }
    if !current.is_empty() {
        groups.push(current);
    }
    let deals_dir = store.dir().join("deals");
    std::fs::create_dir_all(&deals_dir)
        .map_err(|e| StoreError::io(format!("creating {}", deals_dir.display()), e))?;
    let mut out = Vec::new();
    for (n, group) in groups.into_iter().enumerate() {
        let created_at = now_secs();
        let id = format!("batch-{created_at}-{n}");
        let items: Vec<BatchItem> = group
            .iter()
            .map(|(c, i)| BatchItem {
                cid: c.to_string(),
                name: i.name.clone().unwrap_or_else(|| c.to_string()),
                size: i.size,
            })
            .collect();
        // Directory entry names must be unique: prefix the CID so equal file names never clash.
        let entries: Vec<(String, Cid, u64)> = group
            .iter()
            .map(|(c, i)| {
                (
                    format!("{c}-{}", i.name.as_deref().unwrap_or("data")),
                    *c,
                    i.dag_size,
                )
            })
            .collect();
        let root = store.put_directory(&entries)?;
        let car_path = deals_dir.join(format!("{id}.car"));
        let mut batch = Batch {
            id: id.clone(),
            state: BatchState::Packing,
            payload_cid: root.to_string(),
            car_path: car_path.clone(),
            car_size: 0,
            piece_cid: String::new(),
            padded_size: 0,
            items,
            created_at,
            updated_at: created_at,
            deal_uuid: None,
            error: None,
        };
        save(store, &batch)?;
        match write_batch_car(store, &root, &car_path) {
            Ok((car_size, piece, padded)) => {
                batch.car_size = car_size;
                batch.piece_cid = piece.to_string();
                batch.padded_size = padded;
                batch.state = BatchState::Ready;
            }
            Err(e) => {
                batch.state = BatchState::Failed;
                batch.error = Some(e.to_string());
            }
        }
        batch.updated_at = now_secs();
        save(store, &batch)?;
        out.push(batch);
    }
    Ok(out)
}

/// Writes the CAR atomically (temp file + rename), then computes its piece CID.
fn write_batch_car(store: &Store, root: &Cid, path: &Path) -> Result<(u64, Cid, u64), StoreError> {
    let tmp = path.with_extension("car.partial");
    let result = (|| {
        let f = std::fs::File::create(&tmp)
            .map_err(|e| StoreError::io(format!("creating {}", tmp.display()), e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let size = store.car_export(root, &mut w)?;
        let f = w
            .into_inner()
            .map_err(|e| StoreError::io("writing the CAR", e.into_error()))?;
        f.sync_all()
            .map_err(|e| StoreError::io("syncing the CAR", e))?;
        Ok(size)
    })();
    let size = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, path)
        .map_err(|e| StoreError::io(format!("renaming to {}", path.display()), e))?;
    let f = std::fs::File::open(path)
        .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
    let (piece, padded, payload) = commp::piece_cid(std::io::BufReader::with_capacity(1 << 20, f))
        .map_err(|e| StoreError::io("reading the CAR", e))?;
    debug_assert_eq!(payload, size);
    Ok((size, piece, padded))
}

/// The exact Boost commands for a batch.
pub fn commands(batch: &Batch, cfg: &DealConfig) -> DealCommands {
    let boost = cfg.boost_bin.clone().unwrap_or_else(|| "boost".into());
    let boostd = cfg.boostd_bin.clone().unwrap_or_else(|| "boostd".into());
    let mut propose = vec![
        boost,
        "offline-deal".into(),
        format!(
            "--provider={}",
            cfg.provider
                .clone()
                .unwrap_or_else(|| "<PROVIDER_ID>".into())
        ),
        format!("--commp={}", batch.piece_cid),
        format!("--car-size={}", batch.car_size),
        format!("--piece-size={}", batch.padded_size),
        format!("--payload-cid={}", batch.payload_cid),
        format!(
            "--storage-price={}",
            cfg.storage_price.clone().unwrap_or_else(|| "0".into())
        ),
        format!("--duration={}", cfg.duration.unwrap_or(518_400)),
        format!("--verified={}", cfg.verified),
    ];
    if let Some(w) = &cfg.wallet {
        propose.push(format!("--wallet={w}"));
    }
    let import = vec![
        boostd,
        "import-data".into(),
        batch
            .deal_uuid
            .clone()
            .unwrap_or_else(|| "<DEAL_UUID>".into()),
        batch.car_path.display().to_string(),
    ];
    DealCommands {
        manifest: batch.clone(),
        boost: propose,
        boostd: import,
    }
}

/// Moves a batch to `state` (recording the deal UUID or error when given).
pub fn set_state(
    store: &Store,
    id: &str,
    state: BatchState,
    deal_uuid: Option<String>,
    error: Option<String>,
) -> Result<Batch, DealError> {
    let mut batch = get(store, id)?;
    if batch.state != state && !batch.state.can_move_to(state) {
        return Err(DealError::BadTransition {
            id: id.into(),
            from: batch.state,
            to: state,
        });
    }
    batch.state = state;
    if deal_uuid.is_some() {
        batch.deal_uuid = deal_uuid;
    }
    if error.is_some() {
        batch.error = error;
    }
    batch.updated_at = now_secs();
    save(store, &batch)?;
    Ok(batch)
}

/// Finds a deal UUID (8-4-4-4-12 hex) in command output.
pub fn find_uuid(text: &str) -> Option<String> {
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .find_map(|tok| {
            let parts: Vec<&str> = tok.split('-').collect();
            let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
            (lens == [8, 4, 4, 4, 12]).then(|| tok.to_ascii_lowercase())
        })
}

fn run_cmd(argv: &[String]) -> Result<String, DealError> {
    let cmd = argv.join(" ");
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|e| DealError::Command {
            cmd: cmd.clone(),
            detail: e.to_string(),
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(DealError::Command {
            cmd,
            detail: text.trim().to_string(),
        });
    }
    Ok(text)
}

/// Runs the deal for a ready batch: `boost offline-deal` (→ proposed, with the deal UUID), then
/// `boostd import-data` (→ imported) when a boostd binary is configured. Failures mark the batch
/// failed with the command's output.
pub fn run(store: &Store, id: &str, cfg: &DealConfig) -> Result<Batch, DealError> {
    if cfg.provider.is_none() {
        return Err(DealError::NotConfigured(
            "no storage provider configured: pass --provider f0… (or print the commands with `deal commands`)".into(),
        ));
    }
    let mut batch = get(store, id)?;
    if batch.state == BatchState::Ready {
        let cmds = commands(&batch, cfg);
        match run_cmd(&cmds.boost).and_then(|out| {
            find_uuid(&out).ok_or_else(|| DealError::Command {
                cmd: cmds.boost.join(" "),
                detail: format!("no deal UUID in its output: {}", out.trim()),
            })
        }) {
            Ok(uuid) => batch = set_state(store, id, BatchState::Proposed, Some(uuid), None)?,
            Err(e) => {
                set_state(store, id, BatchState::Failed, None, Some(e.to_string()))?;
                return Err(e);
            }
        }
    }
    if batch.state == BatchState::Proposed && cfg.boostd_bin.is_some() {
        let cmds = commands(&batch, cfg);
        if let Err(e) = run_cmd(&cmds.boostd) {
            set_state(store, id, BatchState::Failed, None, Some(e.to_string()))?;
            return Err(e);
        }
        batch = set_state(store, id, BatchState::Imported, None, None)?;
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_found() {
        let out = "sent deal proposal\n  deal uuid: 9e68fb16-ff9a-488e-ad0a-1289b512d176\n  storage provider: f01000";
        assert_eq!(
            find_uuid(out).as_deref(),
            Some("9e68fb16-ff9a-488e-ad0a-1289b512d176")
        );
        assert_eq!(find_uuid("nothing here"), None);
    }

    #[test]
    fn transitions() {
        use BatchState::*;
        assert!(Ready.can_move_to(Proposed));
        assert!(Proposed.can_move_to(Failed));
        assert!(!Active.can_move_to(Failed));
        assert!(!Ready.can_move_to(Active));
    }
}
