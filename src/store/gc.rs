//! Garbage collection: frees the blocks no live root needs.
//!
//! A root (a DAG the store indexed) is **live** while any of these holds:
//! - it has a keep pin (`comine store add`, `store pin`: "pinned locally");
//! - it has a retention pin younger than `[store] retain_days`;
//! - it waits in the push queue for the Kubo node;
//! - it is the payload or an item of a deal batch that is not active yet (packing, ready,
//!   proposed, imported).
//!
//! A collection, in order: retention pins past the window whose root is not otherwise live are
//! removed ("unpinned"); roots that are not live are dropped with their references; blocks no
//! remaining root references are deleted. A block shared by several DAGs stays while any of
//! them is live, because it keeps a reference from each. Then block files without an index
//! row (left by a crash mid-add), temporary files, and the CARs of active or failed batches are
//! removed.
//!
//! The whole collection holds the store's GC lock exclusively, and every add holds it shared
//! from its first block write to the commit that references its blocks: a GC never sees the
//! half of an add, so it never deletes a block an add needs. With `dry_run` the same plan is
//! computed and rolled back.

use std::time::Instant;

use rusqlite::{params, Connection, OptionalExtension};

use super::deals::BatchState;
use super::{Store, StoreError};
use crate::db;

/// What to collect.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Report what would be freed; change nothing.
    pub dry_run: bool,
    /// How long a retention pin protects its root (`[store] retain_days`).
    pub retain_secs: u64,
    /// Unix seconds taken as "now" (the retention window ends at `pinned_at + retain_secs`).
    pub now: u64,
}

impl GcOptions {
    pub fn new(retain_days: u64, dry_run: bool) -> GcOptions {
        GcOptions {
            dry_run,
            retain_secs: retain_days.saturating_mul(86_400),
            now: super::now_secs(),
        }
    }
}

/// What a collection freed (or would free, with `dry_run`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Retention pins removed because their window ended.
    pub unpinned: u64,
    /// Roots (DAGs) dropped from the index.
    pub roots_dropped: u64,
    /// Blocks deleted and their bytes.
    pub blocks_freed: u64,
    pub block_bytes_freed: u64,
    /// Block files the index did not know (a crash mid-add) and temporary files.
    pub orphan_files: u64,
    pub orphan_bytes: u64,
    /// CAR files of active or failed deal batches.
    pub car_files: u64,
    pub car_bytes: u64,
    /// Everything above.
    pub bytes_freed: u64,
    /// Roots still live after the collection.
    pub live_roots: u64,
    pub millis: u64,
}

/// SQL: the CIDs protected whatever their pin (push queue, batches not active yet).
const PROTECTED: &str = "
    SELECT cid FROM store_push_queue
    UNION SELECT i.cid FROM store_batch_items i JOIN store_batches b ON b.id = i.batch
        WHERE b.state IN ('packing', 'ready', 'proposed', 'imported')
    UNION SELECT payload_cid FROM store_batches
        WHERE payload_cid IS NOT NULL AND state IN ('packing', 'ready', 'proposed', 'imported')";

/// Blocks a collection deletes, as (multihash, size).
type Doomed = Vec<(Vec<u8>, u64)>;

/// Index changes of one collection, in the caller's transaction. Returns the report and the
/// blocks to delete.
fn plan(c: &Connection, opts: &GcOptions) -> rusqlite::Result<(GcReport, Doomed)> {
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    let cutoff = db::to_sql_u64(opts.now.saturating_sub(opts.retain_secs));
    report.unpinned = c.execute(
        &format!(
            "DELETE FROM store_pins WHERE kind = 'retain' AND pinned_at <= ?1
             AND cid NOT IN ({PROTECTED})"
        ),
        params![cutoff],
    )? as u64;
    report.roots_dropped = c.execute(
        &format!(
            "DELETE FROM store_roots WHERE cid NOT IN (SELECT cid FROM store_pins)
             AND cid NOT IN ({PROTECTED})"
        ),
        [],
    )? as u64;
    let garbage: Vec<(i64, Vec<u8>, i64)> = {
        let mut stmt = c.prepare(
            "SELECT id, mh, size FROM store_blocks b
             WHERE NOT EXISTS (SELECT 1 FROM store_refs r WHERE r.block = b.id)",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    {
        let mut del = c.prepare_cached("DELETE FROM store_blocks WHERE id = ?1")?;
        for (id, _, _) in &garbage {
            del.execute([id])?;
        }
    }
    report.blocks_freed = garbage.len() as u64;
    report.block_bytes_freed = garbage.iter().map(|g| db::from_sql_u64(g.2)).sum();
    report.live_roots =
        db::from_sql_u64(c.query_row("SELECT count(*) FROM store_roots", [], |r| r.get(0))?);
    Ok((
        report,
        garbage
            .into_iter()
            .map(|(_, mh, size)| (mh, db::from_sql_u64(size)))
            .collect(),
    ))
}

/// A dry run's answer travels as an error so the writer rolls its changes back.
enum Outcome {
    Rollback(GcReport),
    Failed(StoreError),
}

impl From<db::DbError> for Outcome {
    fn from(e: db::DbError) -> Self {
        Outcome::Failed(e.into())
    }
}

impl From<rusqlite::Error> for Outcome {
    fn from(e: rusqlite::Error) -> Self {
        Outcome::Failed(e.into())
    }
}

impl Store {
    /// Runs one collection (see the module docs). Blocks every add for its duration.
    pub fn gc(&self, opts: GcOptions) -> Result<GcReport, StoreError> {
        let started = Instant::now();
        let _gc = self.lock_for_gc()?;
        let planned = self.db().write(move |c| {
            let (report, garbage) = plan(c, &opts)?;
            if opts.dry_run {
                return Err(Outcome::Rollback(report));
            }
            Ok((report, garbage))
        });
        let (mut report, garbage) = match planned {
            Ok(v) => v,
            Err(Outcome::Rollback(report)) => (report, Vec::new()),
            Err(Outcome::Failed(e)) => return Err(e),
        };
        let blocks = self.blockstore();
        for (mh, _) in &garbage {
            blocks.remove(mh).map_err(|e| {
                StoreError::io(format!("deleting {}", blocks.path(mh).display()), e)
            })?;
        }
        self.sweep_orphans(&opts, &mut report)?;
        self.remove_finished_cars(&opts, &mut report)?;
        report.bytes_freed = report.block_bytes_freed + report.orphan_bytes + report.car_bytes;
        report.millis = started.elapsed().as_millis() as u64;
        tracing::info!(
            dry_run = report.dry_run,
            unpinned = report.unpinned,
            roots = report.roots_dropped,
            blocks = report.blocks_freed,
            bytes_freed = report.bytes_freed,
            ms = report.millis,
            "store garbage collection"
        );
        Ok(report)
    }

    /// Block files the index does not know, and temporary files: both can only be left by a
    /// crash mid-add (the caller holds the GC lock, so no add is running).
    fn sweep_orphans(&self, opts: &GcOptions, report: &mut GcReport) -> Result<(), StoreError> {
        let blocks = self.blockstore();
        let files = blocks
            .list()
            .map_err(|e| StoreError::io(format!("listing {}", blocks.root().display()), e))?;
        let unknown: Vec<(Vec<u8>, u64)> = self.db().read(|c| {
            let mut stmt = c.prepare_cached("SELECT 1 FROM store_blocks WHERE mh = ?1")?;
            let mut out = Vec::new();
            for (mh, size) in files {
                if stmt.query_row([&mh], |_| Ok(())).optional()?.is_none() {
                    out.push((mh, size));
                }
            }
            Ok::<_, StoreError>(out)
        })?;
        report.orphan_files += unknown.len() as u64;
        report.orphan_bytes += unknown.iter().map(|u| u.1).sum::<u64>();
        if !opts.dry_run {
            for (mh, _) in &unknown {
                blocks
                    .remove(mh)
                    .map_err(|e| StoreError::io("deleting an orphan block file", e))?;
            }
            let temp = blocks
                .clear_temp()
                .map_err(|e| StoreError::io("clearing the store's temporary files", e))?;
            report.orphan_bytes += temp;
        }
        Ok(())
    }

    /// A batch's CAR is needed until the provider imported it: once the batch is active (or
    /// failed, and its renditions free to be packed again) the file is only a copy.
    fn remove_finished_cars(
        &self,
        opts: &GcOptions,
        report: &mut GcReport,
    ) -> Result<(), StoreError> {
        for batch in super::deals::list(self)? {
            if !matches!(batch.state, BatchState::Active | BatchState::Failed) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&batch.car_path) else {
                continue;
            };
            report.car_files += 1;
            report.car_bytes += meta.len();
            if !opts.dry_run {
                std::fs::remove_file(&batch.car_path).map_err(|e| {
                    StoreError::io(format!("deleting {}", batch.car_path.display()), e)
                })?;
            }
        }
        Ok(())
    }
}
