//! The durable ledger: jobs, renditions, pixel accounting, earnings and deals, in the
//! daemon's database (`crate::db`, tables `ledger_*`).
//!
//! Tables:
//! - `ledger_jobs`: one row per job: the whole [`JobRecord`] as JSON plus the columns the
//!   queries need (state, manifest, finish time, pixels, device and its UUID); a state machine
//!   received → queued → transcoding → stored → done | failed;
//! - `ledger_idem`: `manifest_id \0 seq \0 profiles` → job id, so a resubmission is one job;
//! - `ledger_renditions`: CID → [`RenditionRecord`];
//! - `ledger_pixels_day` (`YYYY-MM-DD`) and `ledger_pixels_source` (manifest id) → [`Counters`];
//! - `ledger_deals`: batch id → [`DealBatch`].
//!
//! Crash safety comes from one rule: the transition to `done` and the pixel counters it adds
//! are written in one transaction, and only from `stored`. A job that is already `done` adds
//! nothing, so a replay after kill -9 cannot count a pixel twice, and a job that never reached
//! `done` is resumed (see `daemon::worker`). Every method returns once its change is durable.
//!
//! The methods block their thread (the CLI and blocking tasks call them directly); async code
//! runs them with [`Ledger::call`], which keeps them off the runtime's workers.

pub mod cli;
pub mod export;
mod sled_import;
pub mod time;

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::db::{self, Db, DbError, Migration};

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger: {0}")]
    Db(#[from] DbError),
    #[error("ledger record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("job {0} not found")]
    NotFound(String),
    #[error("job {id} cannot go from {from:?} to {to:?}")]
    BadTransition {
        id: String,
        from: JobState,
        to: JobState,
    },
    #[error("cannot migrate the sled ledger at {path}: {reason}; the sled copy is untouched, so fix the cause and start comine again")]
    Import { path: String, reason: String },
}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        LedgerError::Db(DbError::Sql(e))
    }
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Reserved in the ledger; its segment is being spooled. No 2xx has been sent.
    Received,
    /// Segment spooled (fsynced) and record flushed: the client got its 2xx.
    Queued,
    Transcoding,
    /// Renditions are in the store; pixels not yet counted.
    Stored,
    Done,
    Failed,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Received => "received",
            JobState::Queued => "queued",
            JobState::Transcoding => "transcoding",
            JobState::Stored => "stored",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "received" => JobState::Received,
            "queued" => JobState::Queued,
            "transcoding" => JobState::Transcoding,
            "stored" => JobState::Stored,
            "done" => JobState::Done,
            "failed" => JobState::Failed,
            _ => return None,
        })
    }
    /// The allowed edges of the state machine.
    fn can_go(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Received, Queued)
                | (Queued, Transcoding)
                // A resumed job restarts its transcode.
                | (Transcoding, Transcoding)
                | (Transcoding, Stored)
                | (Stored, Done)
                | (Received | Queued | Transcoding | Stored, Failed)
        )
    }
}

/// Scheduling class: live segments have a deadline, batch jobs yield to them. The
/// scheduler's type, recorded with each job.
pub use crate::sched::JobClass;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenditionRecord {
    pub profile: String,
    pub cid: String,
    pub pixels: u64,
    pub bytes: u64,
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub encoder: String,
    pub mime: String,
    #[serde(default)]
    pub job_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub job_id: String,
    pub state: JobState,
    pub class: JobClass,
    pub manifest_id: Option<String>,
    pub seq: Option<u64>,
    /// Profile specs as submitted (re-parsed on resume).
    pub profiles: Vec<String>,
    pub duration_ms: u64,
    pub segment_bytes: u64,
    pub received_at_ms: u64,
    pub updated_at_ms: u64,
    pub finished_at_ms: Option<u64>,
    /// Transcode attempts (> 1 after a resume).
    pub attempts: u32,
    pub decoded_pixels: u64,
    pub encoded_pixels: u64,
    /// Media seconds decoded.
    pub media_seconds: f64,
    /// Wall time of the last transcode attempt.
    pub transcode_ms: u64,
    pub renditions: Vec<RenditionRecord>,
    pub error: Option<JobError>,
    /// encoded_pixels × price, decimal wei (u128 does not fit JSON numbers).
    pub earnings_wei: Option<String>,
    /// The device the scheduler placed the (last) transcode on.
    #[serde(default)]
    pub device: Option<JobDevice>,
}

/// Which device transcoded a job: the scheduler's placement (`sched::Placement`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDevice {
    /// Device index (NVML's, or 0 for the host CPU).
    pub index: u32,
    /// NVML UUID (`GPU-…`), `host` for the CPU, or the simulated device's label.
    pub uuid: String,
}

/// Per-day or per-source totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub segments: u64,
    pub decoded_pixels: u64,
    pub encoded_pixels: u64,
    /// Decimal wei.
    pub earnings_wei: String,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            segments: 0,
            decoded_pixels: 0,
            encoded_pixels: 0,
            earnings_wei: "0".into(),
        }
    }
}

impl Counters {
    fn add(&mut self, job: &JobRecord, earnings: u128) {
        self.segments += 1;
        self.decoded_pixels += job.decoded_pixels;
        self.encoded_pixels += job.encoded_pixels;
        let prev: u128 = self.earnings_wei.parse().unwrap_or(0);
        self.earnings_wei = (prev + earnings).to_string();
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealBatch {
    pub batch_id: String,
    pub cids: Vec<String>,
    pub piece_cid: Option<String>,
    pub deal_id: Option<String>,
    pub state: String,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// What a new submission turned into.
#[derive(Debug)]
pub enum Admitted {
    /// A fresh job in state `received`.
    New(JobRecord),
    /// The same (manifest_id, seq, profiles) was submitted before.
    Duplicate(JobRecord),
}

/// What the submitter knows about a new job.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub class: JobClass,
    pub manifest_id: Option<String>,
    pub seq: Option<u64>,
    pub profiles: Vec<String>,
    pub duration_ms: u64,
    pub segment_bytes: u64,
}

/// Price in wei for `pixels_per_unit` pixels.
#[derive(Clone, Copy, Debug)]
pub struct Price {
    pub per_unit_wei: u64,
    pub pixels_per_unit: u64,
}

impl Price {
    pub fn earnings(&self, pixels: u64) -> u128 {
        pixels as u128 * self.per_unit_wei as u128 / self.pixels_per_unit.max(1) as u128
    }
}

/// The ledger's schema in the daemon's database. Append steps; never edit a released one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: "
CREATE TABLE ledger_jobs (
    n INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    class TEXT NOT NULL,
    manifest_id TEXT,
    seq INTEGER,
    received_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    finished_at_ms INTEGER,
    decoded_pixels INTEGER NOT NULL,
    encoded_pixels INTEGER NOT NULL,
    earnings_wei TEXT,
    record TEXT NOT NULL
);
CREATE INDEX ledger_jobs_state ON ledger_jobs (state);
CREATE INDEX ledger_jobs_done ON ledger_jobs (finished_at_ms) WHERE state = 'done';
CREATE TABLE ledger_idem (
    key BLOB PRIMARY KEY,
    job_id TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE ledger_renditions (
    cid TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    record TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE ledger_pixels_day (
    day TEXT PRIMARY KEY,
    segments INTEGER NOT NULL,
    decoded_pixels INTEGER NOT NULL,
    encoded_pixels INTEGER NOT NULL,
    earnings_wei TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE ledger_pixels_source (
    source TEXT PRIMARY KEY,
    segments INTEGER NOT NULL,
    decoded_pixels INTEGER NOT NULL,
    encoded_pixels INTEGER NOT NULL,
    earnings_wei TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE ledger_deals (
    batch_id TEXT PRIMARY KEY,
    record TEXT NOT NULL
) WITHOUT ROWID;
",
    },
    // 2: the device the scheduler placed the job on (issue 10), as columns for statements;
    // rows written before it take theirs from the record (absent there: NULL).
    Migration {
        version: 2,
        sql: "
ALTER TABLE ledger_jobs ADD COLUMN device INTEGER;
ALTER TABLE ledger_jobs ADD COLUMN device_uuid TEXT;
UPDATE ledger_jobs SET device = json_extract(record, '$.device.index'),
    device_uuid = json_extract(record, '$.device.uuid');
",
    },
];

/// Job ids are a counter XOR this constant, printed as 16 hex digits (as sled-era ids were).
const ID_MASK: u64 = 0x5a17_0000_0000_0000;

#[derive(Clone)]
pub struct Ledger {
    db: Db,
    price: Price,
}

fn enc<T: Serialize>(v: &T) -> String {
    // Serialising these plain structs cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

fn dec<T: for<'de> Deserialize<'de>>(key: &str, v: &str) -> Result<T> {
    serde_json::from_str(v).map_err(|e| LedgerError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// The idempotency key; `None` when the submission names no manifest.
pub fn idem_key(
    manifest_id: Option<&str>,
    seq: Option<u64>,
    profiles: &[String],
) -> Option<Vec<u8>> {
    let m = manifest_id?;
    let mut k = Vec::with_capacity(m.len() + 32);
    k.extend_from_slice(m.as_bytes());
    k.push(0);
    k.extend_from_slice(seq.map(|s| s.to_string()).unwrap_or_default().as_bytes());
    k.push(0);
    k.extend_from_slice(profiles.join(",").as_bytes());
    Some(k)
}

fn class_str(c: JobClass) -> &'static str {
    match c {
        JobClass::Live => "live",
        JobClass::Batch => "batch",
        JobClass::Ai => "ai",
    }
}

fn get_tx(c: &Connection, id: &str) -> Result<Option<JobRecord>> {
    let raw: Option<String> = c
        .prepare_cached("SELECT record FROM ledger_jobs WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    raw.map(|r| dec(id, &r)).transpose()
}

/// Inserts a job row (`n` is its numeric id).
fn insert_job(c: &Connection, n: u64, rec: &JobRecord) -> Result<()> {
    c.prepare_cached(
        "INSERT INTO ledger_jobs (n, id, state, class, manifest_id, seq, received_at_ms,
             updated_at_ms, finished_at_ms, decoded_pixels, encoded_pixels, earnings_wei, record,
             device, device_uuid)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        db::to_sql_u64(n),
        rec.job_id,
        rec.state.as_str(),
        class_str(rec.class),
        rec.manifest_id,
        rec.seq.map(db::to_sql_u64),
        db::to_sql_u64(rec.received_at_ms),
        db::to_sql_u64(rec.updated_at_ms),
        rec.finished_at_ms.map(db::to_sql_u64),
        db::to_sql_u64(rec.decoded_pixels),
        db::to_sql_u64(rec.encoded_pixels),
        rec.earnings_wei,
        enc(rec),
        rec.device.as_ref().map(|d| d.index),
        rec.device.as_ref().map(|d| d.uuid.as_str()),
    ])?;
    Ok(())
}

fn update_job(c: &Connection, rec: &JobRecord) -> Result<()> {
    c.prepare_cached(
        "UPDATE ledger_jobs SET state = ?2, updated_at_ms = ?3, finished_at_ms = ?4,
             decoded_pixels = ?5, encoded_pixels = ?6, earnings_wei = ?7, record = ?8,
             device = ?9, device_uuid = ?10
         WHERE id = ?1",
    )?
    .execute(params![
        rec.job_id,
        rec.state.as_str(),
        db::to_sql_u64(rec.updated_at_ms),
        rec.finished_at_ms.map(db::to_sql_u64),
        db::to_sql_u64(rec.decoded_pixels),
        db::to_sql_u64(rec.encoded_pixels),
        rec.earnings_wei,
        enc(rec),
        rec.device.as_ref().map(|d| d.index),
        rec.device.as_ref().map(|d| d.uuid.as_str()),
    ])?;
    Ok(())
}

fn read_counters(row: &rusqlite::Row<'_>) -> rusqlite::Result<Counters> {
    Ok(Counters {
        segments: db::from_sql_u64(row.get(1)?),
        decoded_pixels: db::from_sql_u64(row.get(2)?),
        encoded_pixels: db::from_sql_u64(row.get(3)?),
        earnings_wei: row.get(4)?,
    })
}

/// Adds one finished job to a day or source bucket.
fn add_to_bucket(
    c: &Connection,
    table: &str,
    key_col: &str,
    key: &str,
    rec: &JobRecord,
    earnings: u128,
) -> Result<()> {
    let mut counters: Counters = c
        .prepare_cached(&format!(
            "SELECT {key_col}, segments, decoded_pixels, encoded_pixels, earnings_wei FROM {table} WHERE {key_col} = ?1"
        ))?
        .query_row([key], read_counters)
        .optional()?
        .unwrap_or_default();
    counters.add(rec, earnings);
    c.prepare_cached(&format!(
        "INSERT INTO {table} ({key_col}, segments, decoded_pixels, encoded_pixels, earnings_wei)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT ({key_col}) DO UPDATE SET segments = excluded.segments,
             decoded_pixels = excluded.decoded_pixels, encoded_pixels = excluded.encoded_pixels,
             earnings_wei = excluded.earnings_wei"
    ))?
    .execute(params![
        key,
        db::to_sql_u64(counters.segments),
        db::to_sql_u64(counters.decoded_pixels),
        db::to_sql_u64(counters.encoded_pixels),
        counters.earnings_wei,
    ])?;
    Ok(())
}

/// Applies `f` to a job after checking the state edge `→ to`.
fn transition(
    c: &Connection,
    id: &str,
    to: JobState,
    f: impl FnOnce(&mut JobRecord),
) -> Result<JobRecord> {
    let mut rec = get_tx(c, id)?.ok_or_else(|| LedgerError::NotFound(id.to_string()))?;
    if !rec.state.can_go(to) {
        return Err(LedgerError::BadTransition {
            id: id.to_string(),
            from: rec.state,
            to,
        });
    }
    rec.state = to;
    rec.updated_at_ms = time::now_ms();
    f(&mut rec);
    update_job(c, &rec)?;
    Ok(rec)
}

impl Ledger {
    /// Opens the ledger of the data directory that contains `dir`, which must be
    /// `<data_dir>/ledger`: where releases before the SQLite database kept their sled ledger.
    /// The tables live in `<data_dir>/comine.db`; a sled ledger found at `dir` is migrated into
    /// them first (verified, then renamed to `ledger.sled-migrated`). `cache_bytes` is
    /// SQLite's page cache per connection. New code can use [`Ledger::with_db`].
    pub fn open(dir: &Path, cache_bytes: u64, price: Price) -> Result<Ledger> {
        let data_dir = match (dir.file_name(), dir.parent()) {
            (Some(name), Some(parent)) if name == "ledger" => parent,
            _ => {
                return Err(LedgerError::Db(DbError::Migration(format!(
                    "Ledger::open wants <data_dir>/ledger, got {}; use Ledger::with_db",
                    dir.display()
                ))))
            }
        };
        let db = Db::open(data_dir)?;
        let ledger = Ledger::with_db(db, price)?;
        let kib = (cache_bytes / 1024).max(64) as i64;
        // Best effort: a cache size is a hint, not a reason to refuse to start.
        let _ = ledger.db.write(move |c| {
            c.execute_batch(&format!("PRAGMA cache_size = -{kib}"))
                .map_err(DbError::from)
        });
        sled_import::import_if_present(&ledger, dir)?;
        Ok(ledger)
    }

    /// The ledger in `db` (its tables are created or upgraded here).
    pub fn with_db(db: Db, price: Price) -> Result<Ledger> {
        db.migrate("ledger", MIGRATIONS)?;
        Ok(Ledger { db, price })
    }

    /// The database the ledger lives in (for modules that add their own tables).
    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn price(&self) -> Price {
        self.price
    }

    /// Runs `f` (any of the blocking methods) from async code, off the runtime's workers.
    /// Bounded: at most `db::ASYNC_CALLS` calls hold a blocking thread at once.
    pub async fn call<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Ledger) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let me = self.clone();
        self.db.call(move || f(&me)).await?
    }

    /// Kept for callers written for sled: every method is durable when it returns, so there
    /// is nothing left to flush.
    pub async fn flush(&self) -> Result<()> {
        Ok(())
    }

    pub fn flush_blocking(&self) -> Result<()> {
        Ok(())
    }

    /// Reserves a job for a submission, or returns the existing one for a duplicate.
    pub fn admit(&self, new: NewJob) -> Result<Admitted> {
        let now = time::now_ms();
        self.db.write(move |c| {
            let key = idem_key(new.manifest_id.as_deref(), new.seq, &new.profiles);
            if let Some(k) = &key {
                let existing: Option<String> = c
                    .prepare_cached("SELECT job_id FROM ledger_idem WHERE key = ?1")?
                    .query_row([k], |r| r.get(0))
                    .optional()?;
                if let Some(id) = existing {
                    let rec = get_tx(c, &id)?.ok_or(LedgerError::NotFound(id))?;
                    return Ok(Admitted::Duplicate(rec));
                }
            }
            let last: i64 = c
                .prepare_cached("SELECT coalesce(max(n), 0) FROM ledger_jobs")?
                .query_row([], |r| r.get(0))?;
            let n = db::from_sql_u64(last) + 1;
            let record = JobRecord {
                job_id: format!("{:016x}", n ^ ID_MASK),
                state: JobState::Received,
                class: new.class,
                manifest_id: new.manifest_id,
                seq: new.seq,
                profiles: new.profiles,
                duration_ms: new.duration_ms,
                segment_bytes: new.segment_bytes,
                received_at_ms: now,
                updated_at_ms: now,
                finished_at_ms: None,
                attempts: 0,
                decoded_pixels: 0,
                encoded_pixels: 0,
                media_seconds: 0.0,
                transcode_ms: 0,
                renditions: Vec::new(),
                error: None,
                earnings_wei: None,
                device: None,
            };
            insert_job(c, n, &record)?;
            if let Some(k) = key {
                c.prepare_cached("INSERT INTO ledger_idem (key, job_id) VALUES (?1, ?2)")?
                    .execute(params![k, record.job_id])?;
            }
            Ok(Admitted::New(record))
        })
    }

    pub fn get(&self, id: &str) -> Result<Option<JobRecord>> {
        self.db.read(|c| get_tx(c, id))
    }

    fn update(
        &self,
        id: &str,
        to: JobState,
        f: impl FnOnce(&mut JobRecord) + Send + 'static,
    ) -> Result<JobRecord> {
        let id = id.to_string();
        self.db.write(move |c| transition(c, &id, to, f))
    }

    /// received → queued, once the segment is spooled.
    pub fn mark_queued(&self, id: &str) -> Result<JobRecord> {
        self.update(id, JobState::Queued, |_| {})
    }

    pub fn mark_transcoding(&self, id: &str) -> Result<JobRecord> {
        self.update(id, JobState::Transcoding, |r| r.attempts += 1)
    }

    /// queued → transcoding on the device the scheduler placed the job on.
    pub fn mark_transcoding_on(&self, id: &str, device: JobDevice) -> Result<JobRecord> {
        self.update(id, JobState::Transcoding, |r| {
            r.attempts += 1;
            r.device = Some(device);
        })
    }

    /// transcoding → stored: renditions and their pixel counts, not yet counted.
    pub fn mark_stored(
        &self,
        id: &str,
        decoded_pixels: u64,
        media_seconds: f64,
        transcode_ms: u64,
        renditions: Vec<RenditionRecord>,
    ) -> Result<JobRecord> {
        let job_id = id.to_string();
        self.update(id, JobState::Stored, move |r| {
            r.decoded_pixels = decoded_pixels;
            r.encoded_pixels = renditions.iter().map(|x| x.pixels).sum();
            r.media_seconds = media_seconds;
            r.transcode_ms = transcode_ms;
            r.renditions = renditions
                .into_iter()
                .map(|mut x| {
                    x.job_id = job_id.clone();
                    x
                })
                .collect();
        })
    }

    pub fn fail(&self, id: &str, code: &str, message: &str) -> Result<JobRecord> {
        let now = time::now_ms();
        let error = JobError {
            code: code.to_string(),
            message: message.to_string(),
        };
        self.update(id, JobState::Failed, move |r| {
            r.finished_at_ms = Some(now);
            r.error = Some(error);
        })
    }

    /// A job that never got its 2xx (crash while spooling): failed, and its idempotency
    /// key released so the client's retry becomes a fresh job.
    pub fn abandon_received(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.db.write(move |c| {
            let Some(mut rec) = get_tx(c, &id)? else {
                return Ok(());
            };
            if rec.state != JobState::Received {
                return Ok(());
            }
            if let Some(k) = idem_key(rec.manifest_id.as_deref(), rec.seq, &rec.profiles) {
                c.prepare_cached("DELETE FROM ledger_idem WHERE key = ?1 AND job_id = ?2")?
                    .execute(params![k, id])?;
            }
            rec.state = JobState::Failed;
            rec.finished_at_ms = Some(time::now_ms());
            rec.updated_at_ms = time::now_ms();
            rec.error = Some(JobError {
                code: "interrupted".into(),
                message: "the daemon stopped before the segment was accepted; submit it again"
                    .into(),
            });
            update_job(c, &rec)
        })
    }

    /// stored → done, adding the job's pixels and earnings to the day and source
    /// counters in the same transaction. Returns `None` when the job was already done
    /// (nothing is counted again).
    pub fn complete(&self, id: &str) -> Result<Option<JobRecord>> {
        let price = self.price;
        let id = id.to_string();
        self.db.write(move |c| {
            let mut rec = get_tx(c, &id)?.ok_or_else(|| LedgerError::NotFound(id.clone()))?;
            if rec.state == JobState::Done {
                return Ok(None);
            }
            if !rec.state.can_go(JobState::Done) {
                return Err(LedgerError::BadTransition {
                    id,
                    from: rec.state,
                    to: JobState::Done,
                });
            }
            let now = time::now_ms();
            let earnings = price.earnings(rec.encoded_pixels);
            rec.state = JobState::Done;
            rec.updated_at_ms = now;
            rec.finished_at_ms = Some(now);
            rec.earnings_wei = Some(earnings.to_string());
            for r in &rec.renditions {
                c.prepare_cached(
                    "INSERT INTO ledger_renditions (cid, job_id, record) VALUES (?1, ?2, ?3)
                     ON CONFLICT (cid) DO UPDATE SET job_id = excluded.job_id, record = excluded.record",
                )?
                .execute(params![r.cid, rec.job_id, enc(r)])?;
            }
            let day = time::day_of(now);
            let source = rec.manifest_id.clone().unwrap_or_else(|| "-".into());
            add_to_bucket(c, "ledger_pixels_day", "day", &day, &rec, earnings)?;
            add_to_bucket(c, "ledger_pixels_source", "source", &source, &rec, earnings)?;
            update_job(c, &rec)?;
            Ok(Some(rec))
        })
    }

    fn records(&self, sql: &'static str, arg: Option<i64>) -> Result<Vec<JobRecord>> {
        self.db.read(|c| {
            let mut stmt = c.prepare_cached(sql)?;
            let pair = |r: &rusqlite::Row<'_>| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?));
            let rows: Vec<(String, String)> = match arg {
                Some(a) => stmt
                    .query_map([a], pair)?
                    .collect::<rusqlite::Result<_>>()?,
                None => stmt.query_map([], pair)?.collect::<rusqlite::Result<_>>()?,
            };
            rows.iter().map(|(id, raw)| dec(id, raw)).collect()
        })
    }

    /// Every job not in a final state, oldest first (job ids grow with time).
    pub fn unfinished(&self) -> Result<Vec<JobRecord>> {
        self.records(
            "SELECT id, record FROM ledger_jobs
             WHERE state IN ('received', 'queued', 'transcoding', 'stored') ORDER BY n",
            None,
        )
    }

    /// Jobs per state.
    pub fn state_counts(&self) -> Result<std::collections::BTreeMap<&'static str, u64>> {
        self.db.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT state, count(*) FROM ledger_jobs GROUP BY state")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = std::collections::BTreeMap::new();
            for row in rows {
                let (state, n) = row?;
                let state = JobState::parse(&state).ok_or_else(|| LedgerError::Corrupt {
                    key: "ledger_jobs.state".into(),
                    reason: format!("unknown state {state:?}"),
                })?;
                out.insert(state.as_str(), db::from_sql_u64(n));
            }
            Ok(out)
        })
    }

    pub fn rendition(&self, cid: &str) -> Result<Option<RenditionRecord>> {
        self.db.read(|c| {
            let raw: Option<String> = c
                .prepare_cached("SELECT record FROM ledger_renditions WHERE cid = ?1")?
                .query_row([cid], |r| r.get(0))
                .optional()?;
            raw.map(|r| dec(cid, &r)).transpose()
        })
    }

    /// Jobs done at or after `since_ms`, in finishing order.
    pub fn done_since(&self, since_ms: u64) -> Result<Vec<JobRecord>> {
        self.records(
            "SELECT id, record FROM ledger_jobs
             WHERE state = 'done' AND finished_at_ms >= ?1 ORDER BY finished_at_ms, id",
            Some(db::to_sql_u64(since_ms)),
        )
    }

    fn buckets(&self, sql: &'static str, arg: &str) -> Result<Vec<(String, Counters)>> {
        self.db.read(|c| {
            let mut stmt = c.prepare_cached(sql)?;
            let rows =
                stmt.query_map([arg], |r| Ok((r.get::<_, String>(0)?, read_counters(r)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    /// Day buckets from `since_day` (`YYYY-MM-DD`) on.
    pub fn days_since(&self, since_day: &str) -> Result<Vec<(String, Counters)>> {
        self.buckets(
            "SELECT day, segments, decoded_pixels, encoded_pixels, earnings_wei
             FROM ledger_pixels_day WHERE day >= ?1 ORDER BY day",
            since_day,
        )
    }

    pub fn sources(&self) -> Result<Vec<(String, Counters)>> {
        self.buckets(
            "SELECT source, segments, decoded_pixels, encoded_pixels, earnings_wei
             FROM ledger_pixels_source WHERE source >= ?1 ORDER BY source",
            "",
        )
    }

    pub fn source(&self, manifest_id: &str) -> Result<Option<Counters>> {
        Ok(self
            .buckets(
                "SELECT source, segments, decoded_pixels, encoded_pixels, earnings_wei
                 FROM ledger_pixels_source WHERE source = ?1",
                manifest_id,
            )?
            .into_iter()
            .next()
            .map(|(_, c)| c))
    }

    /// Records or updates a deal batch (written by the store's deal stage).
    pub fn put_deal(&self, deal: &DealBatch) -> Result<()> {
        let (id, raw) = (deal.batch_id.clone(), enc(deal));
        self.db.write(move |c| {
            c.execute(
                "INSERT INTO ledger_deals (batch_id, record) VALUES (?1, ?2)
                 ON CONFLICT (batch_id) DO UPDATE SET record = excluded.record",
                params![id, raw],
            )?;
            Ok(())
        })
    }

    pub fn deals(&self) -> Result<Vec<DealBatch>> {
        self.db.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT batch_id, record FROM ledger_deals ORDER BY batch_id")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (id, raw) = row?;
                out.push(dec(&id, &raw)?);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger(dir: &Path) -> Ledger {
        Ledger::open(
            &dir.join("ledger"),
            1 << 20,
            Price {
                per_unit_wei: 3,
                pixels_per_unit: 2,
            },
        )
        .unwrap()
    }

    fn new_job(seq: u64) -> NewJob {
        NewJob {
            class: JobClass::Live,
            manifest_id: Some("m1".into()),
            seq: Some(seq),
            profiles: vec!["P240p30fps16x9".into()],
            duration_ms: 2000,
            segment_bytes: 10,
        }
    }

    fn rendition(cid: &str, pixels: u64) -> RenditionRecord {
        RenditionRecord {
            profile: "P240p30fps16x9".into(),
            cid: cid.into(),
            pixels,
            bytes: 5,
            width: 426,
            height: 240,
            frames: 1,
            encoder: "libx264".into(),
            mime: "video/mp2t".into(),
            job_id: String::new(),
        }
    }

    #[test]
    fn state_machine_counts_pixels_once() {
        let dir = tempfile::tempdir().unwrap();
        let l = ledger(dir.path());
        let Admitted::New(job) = l.admit(new_job(1)).unwrap() else {
            panic!("first submission is new");
        };
        let Admitted::Duplicate(dup) = l.admit(new_job(1)).unwrap() else {
            panic!("second submission is a duplicate");
        };
        assert_eq!(dup.job_id, job.job_id);
        // Skipping a state is refused.
        assert!(matches!(
            l.complete(&job.job_id),
            Err(LedgerError::BadTransition { .. })
        ));
        l.mark_queued(&job.job_id).unwrap();
        l.mark_transcoding(&job.job_id).unwrap();
        l.mark_stored(&job.job_id, 7, 1.0, 10, vec![rendition("bafy1", 1001)])
            .unwrap();
        let done = l.complete(&job.job_id).unwrap().unwrap();
        assert_eq!(done.state, JobState::Done);
        assert_eq!(done.earnings_wei.as_deref(), Some("1501"));
        // A replay adds nothing.
        assert!(l.complete(&job.job_id).unwrap().is_none());
        let c = l.source("m1").unwrap().unwrap();
        assert_eq!(
            (c.segments, c.encoded_pixels, c.decoded_pixels),
            (1, 1001, 7)
        );
        assert_eq!(
            l.days_since("1970-01-01").unwrap()[0].1.encoded_pixels,
            1001
        );
        assert_eq!(l.rendition("bafy1").unwrap().unwrap().job_id, job.job_id);
        assert_eq!(l.done_since(0).unwrap().len(), 1);
        assert!(l.unfinished().unwrap().is_empty());
    }

    #[test]
    fn survives_reopen_and_releases_abandoned_keys() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let l = ledger(dir.path());
            let Admitted::New(job) = l.admit(new_job(2)).unwrap() else {
                panic!()
            };
            l.flush_blocking().unwrap();
            job.job_id
        };
        let l = ledger(dir.path());
        let open = l.unfinished().unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].state, JobState::Received);
        l.abandon_received(&id).unwrap();
        assert_eq!(l.get(&id).unwrap().unwrap().state, JobState::Failed);
        // The key is free again: a retry is a new job.
        assert!(matches!(l.admit(new_job(2)).unwrap(), Admitted::New(_)));
    }

    #[test]
    fn the_device_and_the_ai_class_survive_reopen_and_reach_the_export() {
        let dir = tempfile::tempdir().unwrap();
        let (gpu_job, ai_job) = {
            let l = ledger(dir.path());
            let Admitted::New(job) = l.admit(new_job(3)).unwrap() else {
                panic!()
            };
            l.mark_queued(&job.job_id).unwrap();
            let device = JobDevice {
                index: 1,
                uuid: "GPU-sim-1".into(),
            };
            l.mark_transcoding_on(&job.job_id, device).unwrap();
            l.mark_stored(&job.job_id, 7, 1.0, 10, vec![rendition("bafy3", 11)])
                .unwrap();
            l.complete(&job.job_id).unwrap().unwrap();
            let Admitted::New(ai) = l
                .admit(NewJob {
                    class: JobClass::Ai,
                    manifest_id: Some("ai/upscale/m".into()),
                    ..new_job(4)
                })
                .unwrap()
            else {
                panic!()
            };
            (job.job_id, ai.job_id)
        };
        let l = ledger(dir.path());
        let job = l.get(&gpu_job).unwrap().unwrap();
        assert_eq!(
            job.device,
            Some(JobDevice {
                index: 1,
                uuid: "GPU-sim-1".into()
            })
        );
        assert_eq!(l.get(&ai_job).unwrap().unwrap().class, JobClass::Ai);
        let (index, uuid, class): (Option<u32>, Option<String>, String) =
            l.db.read(|c| {
                c.query_row(
                    "SELECT j.device, j.device_uuid, a.class FROM ledger_jobs j, ledger_jobs a
                     WHERE j.id = ?1 AND a.id = ?2",
                    [&gpu_job, &ai_job],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .map_err(LedgerError::from)
            })
            .unwrap();
        assert_eq!(
            (index, uuid.as_deref(), class.as_str()),
            (Some(1), Some("GPU-sim-1"), "ai")
        );
        let csv = export::to_csv(&export::statement(&l, 0).unwrap());
        assert!(
            csv.lines().next().unwrap().ends_with(",device,device_uuid"),
            "{csv}"
        );
        assert!(
            csv.lines().nth(1).unwrap().ends_with(",1,GPU-sim-1"),
            "{csv}"
        );
    }

    #[test]
    fn schema_2_fills_the_device_columns_of_rows_written_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let v1: &'static [Migration] = &MIGRATIONS[..1];
        assert_eq!(db.migrate("ledger", v1).unwrap(), 1);
        db.write(|c| {
            c.execute_batch(
                r#"INSERT INTO ledger_jobs (n, id, state, class, received_at_ms, updated_at_ms,
                       decoded_pixels, encoded_pixels, record)
                   VALUES (1, 'a', 'done', 'live', 0, 0, 0, 0, '{"device":{"index":2,"uuid":"GPU-x"}}'),
                          (2, 'b', 'done', 'batch', 0, 0, 0, 0, '{}');"#,
            )
            .map_err(DbError::from)
        })
        .unwrap();
        let l = Ledger::with_db(
            db,
            Price {
                per_unit_wei: 1,
                pixels_per_unit: 1,
            },
        )
        .unwrap();
        let rows: Vec<(Option<u32>, Option<String>)> =
            l.db.read(|c| {
                let mut st = c.prepare("SELECT device, device_uuid FROM ledger_jobs ORDER BY n")?;
                let rows = st
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok::<_, LedgerError>(rows)
            })
            .unwrap();
        assert_eq!(
            rows,
            vec![(Some(2), Some("GPU-x".to_string())), (None, None)]
        );
    }
}
