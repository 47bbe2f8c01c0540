//! One-off import of a sled-era store (`<data_dir>/store/db`, written by releases before the
//! SQLite database): blocks become flatfs files, pins, push queue and deal batches become rows.
//!
//! 1. Every block is re-hashed and written as a file (idempotent, synced once at the end). A
//!    block whose bytes do not match its hash is not copied; it is reported, and the sled copy
//!    is then kept.
//! 2. Pins (as keep pins: the old store never collected anything), queue entries, batches,
//!    and every root's references (found by walking its DAG over the new files, which
//!    re-reads and re-hashes them) are written in ONE transaction that also records the import
//!    in `db_imports`: an interrupted import leaves no rows behind, a finished one never runs
//!    again.
//! 3. Verification: as many pins, queue entries and batches as sled holds, and every sled
//!    block present as a file whose bytes hash to its name.
//! 4. Only then is `store/db` renamed to `store/db.sled-migrated` (kept for the operator).

use std::collections::HashSet;
use std::path::Path;

use cid::Cid;
use multihash::Multihash;
use rusqlite::params;
use sha2::{Digest, Sha256};

use super::queue::QueueEntry;
use super::{index_blocks, upsert_pin, PinInfo, PinKind, Store, StoreError, DAG_PB, SHA2_256};
use crate::db;

/// The `db_imports` name of this import.
pub const IMPORT: &str = "sled-store";

fn err(dir: &Path, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Import {
        path: dir.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Whether a multihash's bytes are a sha2-256 digest of `block`.
fn hash_matches(mh: &[u8], block: &[u8]) -> bool {
    match Multihash::<64>::from_bytes(mh) {
        Ok(h) => h.code() == SHA2_256 && Sha256::digest(block).as_slice() == h.digest(),
        Err(_) => false,
    }
}

pub(super) fn import_if_present(store: &Store) -> Result<(), StoreError> {
    let dir = store.dir().join("db");
    if !db::is_sled_dir(&dir) {
        return Ok(());
    }
    let sdb = sled::Config::new().path(&dir).open().map_err(|e| {
        err(
            &dir,
            format!("{e} (is a comine of an earlier release still running on this data directory? stop it first)"),
        )
    })?;
    let tree = |name: &str| sdb.open_tree(name).map_err(|e| err(&dir, e));
    let (blocks, pins, queue, batches) = (
        tree("blocks")?,
        tree("pins")?,
        tree("push_queue")?,
        tree("batches")?,
    );

    // 1. Blocks to files.
    let _gc = store.hold_off_gc()?;
    let mut writer = store.blockstore().writer();
    let mut index = Vec::new();
    let mut corrupt = Vec::new();
    for kv in blocks.iter() {
        let (mh, block) = kv.map_err(|e| err(&dir, e))?;
        if !hash_matches(&mh, &block) {
            corrupt.push(hex::encode(&mh));
            continue;
        }
        writer
            .put(&mh, &block)
            .map_err(|e| err(&dir, format!("writing a block file: {e}")))?;
        index.push((mh.to_vec(), block.len() as u64));
    }
    writer
        .commit()
        .map_err(|e| err(&dir, format!("syncing the block files: {e}")))?;

    // 2. Index rows in one transaction (unless an earlier run committed them).
    let already = store
        .db()
        .read(|c| db::imported(c, IMPORT).map_err(StoreError::from))?
        .is_some();
    if !already {
        let mut rows_pins = Vec::new();
        for kv in pins.iter() {
            let (k, v) = kv.map_err(|e| err(&dir, e))?;
            let cid = Cid::try_from(&k[..])
                .map_err(|e| err(&dir, format!("a pinned CID is unreadable: {e}")))?;
            let info: PinInfo = serde_json::from_slice(&v)
                .map_err(|e| err(&dir, format!("pin {cid} is unreadable: {e}")))?;
            rows_pins.push((cid, info, reachable(store, &cid)));
        }
        let mut rows_queue = Vec::new();
        for kv in queue.iter() {
            let (k, v) = kv.map_err(|e| err(&dir, e))?;
            let entry: QueueEntry = serde_json::from_slice(&v)
                .map_err(|e| err(&dir, format!("a queue entry is unreadable: {e}")))?;
            rows_queue.push((
                k.to_vec(),
                entry.enqueued_at,
                String::from_utf8_lossy(&v).into_owned(),
            ));
        }
        let mut rows_batches = Vec::new();
        for kv in batches.iter() {
            let (_, v) = kv.map_err(|e| err(&dir, e))?;
            let batch: super::deals::Batch = serde_json::from_slice(&v)
                .map_err(|e| err(&dir, format!("a deal batch is unreadable: {e}")))?;
            let payload = super::parse_cid(&batch.payload_cid).ok();
            let refs = payload.map(|p| (p, reachable(store, &p)));
            rows_batches.push((batch, refs));
        }
        let counts = format!(
            "{{\"blocks\":{},\"corrupt_blocks\":{},\"pins\":{},\"push_queue\":{},\"batches\":{}}}",
            index.len(),
            corrupt.len(),
            rows_pins.len(),
            rows_queue.len(),
            rows_batches.len()
        );
        let blocks_index = std::mem::take(&mut index);
        let n_blocks = blocks_index.len();
        store.db().write(move |c| {
            if db::imported(c, IMPORT)?.is_some() {
                return Ok::<_, StoreError>(());
            }
            index_blocks(c, None, &blocks_index)?;
            for (cid, info, refs) in &rows_pins {
                index_blocks(c, Some(cid), refs)?;
                upsert_pin(c, cid, PinKind::Keep, info)?;
            }
            for (key, at, entry) in &rows_queue {
                c.execute(
                    "INSERT INTO store_push_queue (cid, enqueued_at, entry) VALUES (?1, ?2, ?3)",
                    params![key, db::to_sql_u64(*at), entry],
                )?;
            }
            for (batch, refs) in &rows_batches {
                if let Some((payload, refs)) = refs {
                    index_blocks(c, Some(payload), refs)?;
                }
                let record = serde_json::to_string(batch)
                    .map_err(|e| StoreError::io("encoding a batch", e.into()))?;
                c.execute(
                    "INSERT INTO store_batches (id, state, created_at, payload_cid, record)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        batch.id,
                        batch.state.to_string(),
                        db::to_sql_u64(batch.created_at),
                        refs.as_ref().map(|(p, _)| p.to_bytes()),
                        record
                    ],
                )?;
                for item in &batch.items {
                    if let Ok(cid) = super::parse_cid(&item.cid) {
                        c.execute(
                            "INSERT OR IGNORE INTO store_batch_items (batch, cid) VALUES (?1, ?2)",
                            params![batch.id, cid.to_bytes()],
                        )?;
                    }
                }
            }
            db::mark_imported(c, IMPORT, &counts)?;
            Ok(())
        })?;
        tracing::info!(
            blocks = n_blocks,
            "copied the sled store into block files and the database"
        );
    }

    // 3. Verify.
    let mismatch = |what: String| err(&dir, format!("verification failed: {what}"));
    let count = |table: &'static str| -> Result<u64, StoreError> {
        store.db().read(|c| {
            let n: i64 = c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?;
            Ok(db::from_sql_u64(n))
        })
    };
    for (table, want) in [
        ("store_pins", pins.len()),
        ("store_push_queue", queue.len()),
        ("store_batches", batches.len()),
    ] {
        let got = count(table)?;
        if got < want as u64 {
            return Err(mismatch(format!(
                "sled holds {want} entries for {table}, the database {got}"
            )));
        }
    }
    let mut verified = 0u64;
    for kv in blocks.iter() {
        let (mh, block) = kv.map_err(|e| err(&dir, e))?;
        if !hash_matches(&mh, &block) {
            continue;
        }
        let file = store
            .blockstore()
            .read(&mh)
            .map_err(|e| err(&dir, format!("reading back a block file: {e}")))?;
        match file {
            Some(bytes) if hash_matches(&mh, &bytes) => verified += 1,
            _ => {
                return Err(mismatch(format!(
                    "block {} is missing or damaged as a file",
                    hex::encode(&mh)
                )))
            }
        }
    }
    if !corrupt.is_empty() {
        tracing::error!(
            sled = %dir.display(),
            corrupt = corrupt.len(),
            first = %corrupt[0],
            "the sled store held blocks whose bytes do not match their hash; they were not migrated (re-add those files to repair them). The sled copy is kept until then"
        );
        return Ok(());
    }
    drop((blocks, pins, queue, batches));
    drop(sdb);
    let to = db::retire_sled_dir(&dir)
        .map_err(|e| err(&dir, format!("verified, but renaming it aside failed: {e}")))?;
    tracing::warn!(
        from = %dir.display(),
        kept_at = %to.display(),
        blocks = verified,
        "migrated the sled store into block files and the database and verified it; the sled copy is kept (delete it once you are satisfied)"
    );
    Ok(())
}

/// Every block of `root`'s DAG that is present (re-hashed as it is read); a missing or damaged
/// block is skipped, so the blocks that are there stay referenced and are never collected.
fn reachable(store: &Store, root: &Cid) -> Vec<(Vec<u8>, u64)> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![*root];
    while let Some(cid) = stack.pop() {
        if !seen.insert(cid) {
            continue;
        }
        let Ok(block) = store.get_block(&cid) else {
            tracing::warn!(%root, block = %cid, "a block of a pinned DAG is missing in the sled store");
            continue;
        };
        if cid.codec() == DAG_PB {
            if let Ok(node) = super::pb::decode_node(&block) {
                stack.extend(node.links.iter().map(|l| l.cid));
            }
        }
        out.push((cid.hash().to_bytes(), block.len() as u64));
    }
    out
}
