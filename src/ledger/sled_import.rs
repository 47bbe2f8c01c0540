//! One-off import of a sled-era ledger (`<data_dir>/ledger`, written by releases before the
//! SQLite database) into the `ledger_*` tables.
//!
//! 1. Every job, idempotency key, rendition, day and source counter and deal is copied
//!    verbatim in ONE transaction that also records the import in `db_imports`: an interrupted
//!    import leaves nothing behind, and a finished one never runs again (nothing is counted
//!    twice: counters are copied, never re-added).
//! 2. The copy is verified against sled: the same number of entries in every tree, every
//!    record equal, every entry of sled's `done` index a `done` job.
//! 3. Only then is the sled directory renamed to `ledger.sled-migrated` (kept for the operator
//!    to delete). A crash between 1 and 3 re-runs 2 and 3 at the next start.

use std::path::Path;

use rusqlite::{params, OptionalExtension};

use super::{
    dec, get_tx, insert_job, read_counters, Counters, JobRecord, JobState, Ledger, LedgerError,
    Result, ID_MASK,
};
use crate::db;

/// The `db_imports` name of this import.
pub const IMPORT: &str = "sled-ledger";
const TREES: [&str; 7] = [
    "jobs",
    "idem",
    "renditions",
    "pixels_day",
    "pixels_source",
    "done",
    "deals",
];

fn err(dir: &Path, reason: impl std::fmt::Display) -> LedgerError {
    LedgerError::Import {
        path: dir.display().to_string(),
        reason: reason.to_string(),
    }
}

fn text(dir: &Path, tree: &str, bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| err(dir, format!("a key in sled tree {tree} is not UTF-8")))
}

/// Imports, verifies and retires `dir` if it is a sled ledger; nothing to do otherwise.
pub(super) fn import_if_present(ledger: &Ledger, dir: &Path) -> Result<()> {
    if !db::is_sled_dir(dir) {
        return Ok(());
    }
    let sled_db = sled::Config::new().path(dir).open().map_err(|e| {
        err(
            dir,
            format!("{e} (is a comine of an earlier release still running on this data directory? stop it first)"),
        )
    })?;
    let imported = {
        let (sdb, d) = (sled_db.clone(), dir.to_path_buf());
        ledger.db.write(move |c| {
            if db::imported(c, IMPORT)?.is_some() {
                return Ok::<_, LedgerError>(false);
            }
            copy(c, &sdb, &d)?;
            Ok(true)
        })?
    };
    let counts = verify(ledger, &sled_db, dir)?;
    drop(sled_db);
    let to = db::retire_sled_dir(dir)
        .map_err(|e| err(dir, format!("verified, but renaming it aside failed: {e}")))?;
    tracing::warn!(
        from = %dir.display(),
        kept_at = %to.display(),
        jobs = counts[0],
        idempotency_keys = counts[1],
        renditions = counts[2],
        deals = counts[6],
        newly_imported = imported,
        "migrated the sled ledger into the database and verified it; the sled copy is kept (delete it once you are satisfied)"
    );
    Ok(())
}

fn copy(c: &rusqlite::Connection, sdb: &sled::Db, dir: &Path) -> Result<()> {
    let tree = |name: &str| sdb.open_tree(name).map_err(|e| err(dir, e));
    let mut n_jobs = 0u64;
    for kv in tree("jobs")?.iter() {
        let (k, v) = kv.map_err(|e| err(dir, e))?;
        let id = text(dir, "jobs", &k)?;
        let rec: JobRecord = dec(&id, &String::from_utf8_lossy(&v))?;
        let n = u64::from_str_radix(&id, 16).map_err(|_| {
            err(
                dir,
                format!("job id {id:?} is not the hex id comine writes"),
            )
        })? ^ ID_MASK;
        insert_job(c, n, &rec)?;
        n_jobs += 1;
    }
    for kv in tree("idem")?.iter() {
        let (k, v) = kv.map_err(|e| err(dir, e))?;
        let job = text(dir, "idem", &v)?;
        c.execute(
            "INSERT INTO ledger_idem (key, job_id) VALUES (?1, ?2)",
            params![k.to_vec(), job],
        )?;
    }
    for kv in tree("renditions")?.iter() {
        let (k, v) = kv.map_err(|e| err(dir, e))?;
        let cid = text(dir, "renditions", &k)?;
        let raw = String::from_utf8_lossy(&v).into_owned();
        let rec: super::RenditionRecord = dec(&cid, &raw)?;
        c.execute(
            "INSERT INTO ledger_renditions (cid, job_id, record) VALUES (?1, ?2, ?3)",
            params![cid, rec.job_id, raw],
        )?;
    }
    for (name, table, col) in [
        ("pixels_day", "ledger_pixels_day", "day"),
        ("pixels_source", "ledger_pixels_source", "source"),
    ] {
        for kv in tree(name)?.iter() {
            let (k, v) = kv.map_err(|e| err(dir, e))?;
            let key = text(dir, name, &k)?;
            let ctr: Counters = dec(&key, &String::from_utf8_lossy(&v))?;
            c.execute(
                &format!("INSERT INTO {table} ({col}, segments, decoded_pixels, encoded_pixels, earnings_wei) VALUES (?1, ?2, ?3, ?4, ?5)"),
                params![
                    key,
                    db::to_sql_u64(ctr.segments),
                    db::to_sql_u64(ctr.decoded_pixels),
                    db::to_sql_u64(ctr.encoded_pixels),
                    ctr.earnings_wei
                ],
            )?;
        }
    }
    for kv in tree("deals")?.iter() {
        let (k, v) = kv.map_err(|e| err(dir, e))?;
        let id = text(dir, "deals", &k)?;
        let raw = String::from_utf8_lossy(&v).into_owned();
        let _: super::DealBatch = dec(&id, &raw)?;
        c.execute(
            "INSERT INTO ledger_deals (batch_id, record) VALUES (?1, ?2)",
            params![id, raw],
        )?;
    }
    let counts: Vec<String> = TREES
        .iter()
        .map(|t| format!("\"{t}\":{}", sdb.open_tree(t).map(|x| x.len()).unwrap_or(0)))
        .collect();
    db::mark_imported(c, IMPORT, &format!("{{{}}}", counts.join(",")))?;
    tracing::info!(jobs = n_jobs, "copied the sled ledger into the database");
    Ok(())
}

/// Compares the database with sled; returns the entry count of each of [`TREES`].
fn verify(ledger: &Ledger, sdb: &sled::Db, dir: &Path) -> Result<[u64; 7]> {
    let mismatch = |what: String| err(dir, format!("verification failed: {what}"));
    let mut counts = [0u64; 7];
    for (i, t) in TREES.iter().enumerate() {
        counts[i] = sdb.open_tree(t).map_err(|e| err(dir, e))?.len() as u64;
    }
    let tables = [
        "ledger_jobs",
        "ledger_idem",
        "ledger_renditions",
        "ledger_pixels_day",
        "ledger_pixels_source",
    ];
    for (i, table) in tables.iter().enumerate() {
        let n: i64 = ledger.db.read(|c| {
            c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .map_err(LedgerError::from)
        })?;
        if db::from_sql_u64(n) != counts[i] {
            return Err(mismatch(format!(
                "sled tree {} has {} entries, {table} has {n}",
                TREES[i], counts[i]
            )));
        }
    }
    let deals: i64 = ledger.db.read(|c| {
        c.query_row("SELECT count(*) FROM ledger_deals", [], |r| r.get(0))
            .map_err(LedgerError::from)
    })?;
    if db::from_sql_u64(deals) != counts[6] {
        return Err(mismatch(format!("{} sled deals, {deals} rows", counts[6])));
    }
    let tree = |name: &str| sdb.open_tree(name).map_err(|e| err(dir, e));
    ledger.db.read(|c| {
        for kv in tree("jobs")?.iter() {
            let (k, v) = kv.map_err(|e| err(dir, e))?;
            let id = text(dir, "jobs", &k)?;
            let want: JobRecord = dec(&id, &String::from_utf8_lossy(&v))?;
            if get_tx(c, &id)?.as_ref() != Some(&want) {
                return Err(mismatch(format!("job {id} differs")));
            }
        }
        for kv in tree("idem")?.iter() {
            let (k, v) = kv.map_err(|e| err(dir, e))?;
            let got: Option<String> = c
                .query_row("SELECT job_id FROM ledger_idem WHERE key = ?1", [k.to_vec()], |r| r.get(0))
                .optional()?;
            if got.as_deref().map(str::as_bytes) != Some(&v[..]) {
                return Err(mismatch("an idempotency key differs".into()));
            }
        }
        for kv in tree("renditions")?.iter() {
            let (k, v) = kv.map_err(|e| err(dir, e))?;
            let cid = text(dir, "renditions", &k)?;
            let want: super::RenditionRecord = dec(&cid, &String::from_utf8_lossy(&v))?;
            let got: Option<String> = c
                .query_row("SELECT record FROM ledger_renditions WHERE cid = ?1", [&cid], |r| r.get(0))
                .optional()?;
            if got.map(|g| dec::<super::RenditionRecord>(&cid, &g)).transpose()? != Some(want) {
                return Err(mismatch(format!("rendition {cid} differs")));
            }
        }
        for (name, table, col) in [
            ("pixels_day", "ledger_pixels_day", "day"),
            ("pixels_source", "ledger_pixels_source", "source"),
        ] {
            for kv in tree(name)?.iter() {
                let (k, v) = kv.map_err(|e| err(dir, e))?;
                let key = text(dir, name, &k)?;
                let want: Counters = dec(&key, &String::from_utf8_lossy(&v))?;
                let got = c
                    .query_row(
                        &format!("SELECT {col}, segments, decoded_pixels, encoded_pixels, earnings_wei FROM {table} WHERE {col} = ?1"),
                        [&key],
                        read_counters,
                    )
                    .optional()?;
                if got != Some(want) {
                    return Err(mismatch(format!("{name} counters for {key} differ")));
                }
            }
        }
        for kv in tree("done")?.iter() {
            let (_, v) = kv.map_err(|e| err(dir, e))?;
            let id = text(dir, "done", &v)?;
            if get_tx(c, &id)?.map(|j| j.state) != Some(JobState::Done) {
                return Err(mismatch(format!("job {id} is in sled's done index but not done")));
            }
        }
        Ok(())
    })?;
    Ok(counts)
}
