//! The earnings tables (SQLite, `earnings_*`): price snapshots per job, pool statements and
//! payouts, the chain scan's cursor and events, balance snapshots, receipts and daily roots.
//!
//! The tables live in the daemon's one database ([`crate::db::Db`], `<data_dir>/comine.db`)
//! next to other modules' tables: writes go through its writer thread, reads through its reader
//! pool ([`Records::with_db`]). They are created by this module's own versioned migrations
//! ([`MIGRATIONS`], recorded in `earnings_schema`). Amounts are decimal strings (`U256` does not fit an SQLite integer).
//! Writes that must not double count are keyed: a job by its id, a pool line by its source
//! and external id, a chain event by (tx hash, log index), so replays and overlapping polls
//! are no-ops. WAL mode lets `comine earnings` read while the daemon writes.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use alloy::primitives::{Address, B256, U256};
use rusqlite::{params, Connection, OptionalExtension};

use super::price::{PriceSnapshot, PriceSource};
use crate::db::Db;

#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error(
        "earnings database {path}: {source}; check the data directory's disk space and permissions"
    )]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("earnings database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("earnings database row {what} is corrupt: {value:?}")]
    Corrupt { what: &'static str, value: String },
    #[error("an earnings database task failed: {0}")]
    Task(String),
    #[error("earnings: {0}")]
    Db(#[from] crate::db::DbError),
}

pub type Result<T, E = RecordsError> = std::result::Result<T, E>;

/// This module's schema, one entry per version; applied in order, each in a transaction.
pub const MIGRATIONS: &[&str] = &[
    // 1
    "CREATE TABLE earnings_jobs (
        job_id          TEXT PRIMARY KEY,
        finished_ms     INTEGER NOT NULL,
        manifest_id     TEXT,
        seq             INTEGER,
        decoded_pixels  INTEGER NOT NULL,
        encoded_pixels  INTEGER NOT NULL,
        price_per_unit  TEXT NOT NULL,
        pixels_per_unit TEXT NOT NULL,
        price_source    TEXT NOT NULL,
        price_at_ms     INTEGER NOT NULL,
        orchestrator    TEXT,
        round           INTEGER
    );
    CREATE INDEX earnings_jobs_finished ON earnings_jobs(finished_ms);
    CREATE TABLE earnings_pool_jobs (
        source      TEXT NOT NULL,
        ext_id      TEXT NOT NULL,
        at_ms       INTEGER NOT NULL,
        pixels      INTEGER NOT NULL,
        credited    TEXT NOT NULL,
        price_per_pixel TEXT,
        raw         TEXT NOT NULL,
        PRIMARY KEY (source, ext_id)
    );
    CREATE INDEX earnings_pool_jobs_at ON earnings_pool_jobs(at_ms);
    CREATE TABLE earnings_pool_payouts (
        source      TEXT NOT NULL,
        ext_id      TEXT NOT NULL,
        at_ms       INTEGER NOT NULL,
        amount      TEXT NOT NULL,
        tx_hash     TEXT,
        check_state TEXT NOT NULL DEFAULT 'unchecked',
        check_detail TEXT,
        onchain_value TEXT,
        onchain_block INTEGER,
        gas_fee     TEXT,
        PRIMARY KEY (source, ext_id)
    );
    CREATE TABLE earnings_pool_cursor (
        source       TEXT PRIMARY KEY,
        last_ms      INTEGER NOT NULL,
        polled_ms    INTEGER NOT NULL,
        last_error   TEXT
    );
    CREATE TABLE earnings_chain_cursor (
        stream      TEXT PRIMARY KEY,
        block       INTEGER NOT NULL,
        hash        TEXT NOT NULL,
        updated_ms  INTEGER NOT NULL
    );
    CREATE TABLE earnings_chain_checkpoints (
        stream  TEXT NOT NULL,
        block   INTEGER NOT NULL,
        hash    TEXT NOT NULL,
        PRIMARY KEY (stream, block)
    );
    CREATE TABLE earnings_chain_events (
        tx_hash     TEXT NOT NULL,
        log_index   INTEGER NOT NULL,
        stream      TEXT NOT NULL,
        block       INTEGER NOT NULL,
        block_hash  TEXT NOT NULL,
        at_ms       INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        counterparty TEXT,
        amount      TEXT NOT NULL,
        detail      TEXT NOT NULL,
        PRIMARY KEY (tx_hash, log_index)
    );
    CREATE INDEX earnings_chain_events_block ON earnings_chain_events(stream, block);
    CREATE TABLE earnings_balance_snapshots (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        address     TEXT NOT NULL,
        block       INTEGER NOT NULL,
        block_hash  TEXT NOT NULL,
        balance     TEXT NOT NULL,
        nonce       INTEGER NOT NULL,
        at_ms       INTEGER NOT NULL
    );
    CREATE TABLE earnings_receipts (
        job_id        TEXT PRIMARY KEY,
        ledger_job_id TEXT,
        day           TEXT NOT NULL,
        completed_ms  INTEGER NOT NULL,
        digest        TEXT NOT NULL,
        signer        TEXT NOT NULL,
        body          TEXT NOT NULL
    );
    CREATE INDEX earnings_receipts_day ON earnings_receipts(day, completed_ms);
    CREATE TABLE earnings_daily_roots (
        day        TEXT PRIMARY KEY,
        root       TEXT NOT NULL,
        count      INTEGER NOT NULL,
        signer     TEXT NOT NULL,
        message    TEXT NOT NULL,
        signature  TEXT NOT NULL,
        made_ms    INTEGER NOT NULL
    );
    CREATE TABLE earnings_rounds (
        round         INTEGER PRIMARY KEY,
        first_seen_ms INTEGER NOT NULL,
        block         INTEGER NOT NULL
    );",
    // 2: AI jobs are valued too, in Livepeer's AI billing units (`encoded_pixels` holds them).
    "ALTER TABLE earnings_jobs ADD COLUMN class TEXT NOT NULL DEFAULT 'transcode';",
];

/// `JobEarning::class` of a transcoding job (Livepeer segments and HTTP API jobs).
pub const CLASS_TRANSCODE: &str = "transcode";
/// `JobEarning::class` of an AI job (`/v1/ai/upscale`, Livepeer AI worker jobs).
pub const CLASS_AI: &str = "ai";

/// One completed job as valued: its pixels and the price snapshot taken at completion.
#[derive(Clone, Debug, PartialEq)]
pub struct JobEarning {
    pub job_id: String,
    pub finished_ms: u64,
    pub manifest_id: Option<String>,
    pub seq: Option<i64>,
    pub decoded_pixels: u64,
    /// Encoded pixels (what the orchestrator bills); for an AI job, its billing units.
    pub encoded_pixels: u64,
    pub price: PriceSnapshot,
    pub round: Option<u64>,
    /// [`CLASS_TRANSCODE`] or [`CLASS_AI`].
    pub class: String,
}

/// One line of a pool's statement: a job it credited.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolJob {
    pub source: String,
    pub ext_id: String,
    pub at_ms: u64,
    pub pixels: u64,
    pub credited: U256,
    pub price_per_pixel: Option<U256>,
    pub raw: String,
}

/// What the chain said about a payout transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct PayoutCheck {
    /// `verified`, `mismatch`, `wrong_recipient`, `failed`, `not_found`, `pending`.
    pub state: String,
    pub detail: String,
    pub value: Option<U256>,
    pub block: Option<u64>,
    pub gas_fee: Option<U256>,
}

/// A payout the pool reports.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolPayout {
    pub source: String,
    pub ext_id: String,
    pub at_ms: u64,
    pub amount: U256,
    pub tx_hash: Option<B256>,
    pub check: Option<PayoutCheck>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChainEvent {
    pub tx_hash: B256,
    pub log_index: u64,
    pub stream: String,
    pub block: u64,
    pub block_hash: B256,
    pub at_ms: u64,
    /// `ticket_transfer`, `ticket_redeemed`, `withdraw_fees`, `earnings_claimed`.
    pub kind: String,
    pub counterparty: Option<Address>,
    pub amount: U256,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct BalanceSnapshot {
    pub address: Address,
    pub block: u64,
    pub block_hash: B256,
    pub balance: U256,
    pub nonce: u64,
    pub at_ms: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct StoredReceipt {
    pub job_id: String,
    pub ledger_job_id: Option<String>,
    pub day: String,
    pub completed_ms: u64,
    pub digest: B256,
    pub signer: Address,
    /// The signed receipt as JSON ([`super::receipts::SignedReceipt`]).
    pub body: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DailyRoot {
    pub day: String,
    pub root: B256,
    pub count: u64,
    pub signer: Address,
    pub message: String,
    pub signature: String,
    pub made_ms: u64,
}

/// The earnings tables over one SQLite connection.
///
/// The methods block their thread; async code runs them with [`Records::call`], which keeps
/// them off the runtime's workers (issue 17: a stalled disk must never stop `/healthz`).
pub struct Records {
    backend: Backend,
    /// Bounds [`Records::call`]s in flight, as [`crate::db::Db::call`] does.
    permits: tokio::sync::Semaphore,
}

/// Where the tables live.
enum Backend {
    /// The daemon's one database ([`Db`]): writes on its writer thread (group commit), reads
    /// on its reader pool.
    Shared(Db),
    /// A connection of its own (an in-memory database for tests and benchmarks, or a file).
    Own(Mutex<Connection>),
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Records")
    }
}

fn u256(what: &'static str, s: String) -> Result<U256> {
    U256::from_str(&s).map_err(|_| RecordsError::Corrupt { what, value: s })
}
fn b256(what: &'static str, s: String) -> Result<B256> {
    B256::from_str(&s).map_err(|_| RecordsError::Corrupt { what, value: s })
}
fn addr(what: &'static str, s: String) -> Result<Address> {
    Address::from_str(&s).map_err(|_| RecordsError::Corrupt { what, value: s })
}
fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Records {
    /// The earnings tables in the daemon's database (created or upgraded here).
    pub fn with_db(db: Db) -> Result<Records> {
        let r = Records::new(Backend::Shared(db));
        r.write(migrate)?;
        Ok(r)
    }

    /// Opens (or creates) a database file of its own and brings the earnings tables up to
    /// date. The daemon and `comine earnings` use [`Records::with_db`].
    pub fn open(path: &Path) -> Result<Records> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(|source| RecordsError::Open {
            path: path.display().to_string(),
            source,
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|source| RecordsError::Open {
                path: path.display().to_string(),
                source,
            })?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Records::from_connection(conn)
    }

    /// An in-memory database (tests, benchmarks).
    pub fn in_memory() -> Result<Records> {
        Records::from_connection(Connection::open_in_memory()?)
    }

    /// Takes an open connection and migrates the earnings tables.
    pub fn from_connection(conn: Connection) -> Result<Records> {
        let r = Records::new(Backend::Own(Mutex::new(conn)));
        r.write(migrate)?;
        Ok(r)
    }

    fn new(backend: Backend) -> Records {
        Records {
            backend,
            permits: tokio::sync::Semaphore::new(crate::db::ASYNC_CALLS),
        }
    }

    /// Runs `f` (any of the blocking methods) from async code on tokio's blocking pool, at
    /// most [`crate::db::ASYNC_CALLS`] at once.
    pub async fn call<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        F: FnOnce(&Records) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| RecordsError::Task(e.to_string()))?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| RecordsError::Task(e.to_string()))?
    }

    fn own(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
        // In the daemon, a call on an async worker is a bug (a panic in debug builds).
        crate::db::assert_off_runtime();
        // A panic while holding the lock leaves SQLite consistent (statements are atomic).
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with a connection that sees every committed write (blocking).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        match &self.backend {
            Backend::Shared(db) => db.read(f),
            Backend::Own(m) => f(&Self::own(m)),
        }
    }

    /// Runs `f` in one transaction and returns once it is durable (blocking). On the shared
    /// database it is the writer thread's, grouped with the ledger's writes.
    fn write<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        match &self.backend {
            Backend::Shared(db) => db.write(f),
            Backend::Own(m) => {
                let c = Self::own(m);
                let tx = c.unchecked_transaction()?;
                let out = f(&tx)?;
                tx.commit()?;
                Ok(out)
            }
        }
    }

    /// Folds the write-ahead log into the database file (for size measurements and backups).
    pub fn checkpoint(&self) -> Result<()> {
        let truncate =
            |c: &Connection| c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        match &self.backend {
            // The shared database's readers are query-only: a connection for this alone.
            Backend::Shared(db) => {
                crate::db::assert_off_runtime();
                truncate(&Connection::open(db.path())?)?
            }
            Backend::Own(m) => truncate(&Self::own(m))?,
        }
        Ok(())
    }

    /// The earnings schema version.
    pub fn schema_version(&self) -> Result<u32> {
        self.read(|c| {
            Ok(
                c.query_row("SELECT MAX(version) FROM earnings_schema", [], |r| {
                    r.get::<_, Option<u32>>(0)
                })?
                .unwrap_or(0),
            )
        })
    }

    // ---- jobs -------------------------------------------------------------------------

    /// Records a completed job's price snapshot; a second call for the same job is ignored
    /// (the first snapshot stands). Returns whether it was new.
    pub fn record_job(&self, j: &JobEarning) -> Result<bool> {
        let j = j.clone();
        self.write(move |c| {
        let n = c.execute(
            "INSERT OR IGNORE INTO earnings_jobs (job_id, finished_ms, manifest_id, seq, decoded_pixels,
               encoded_pixels, price_per_unit, pixels_per_unit, price_source, price_at_ms, orchestrator, round,
               class)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                j.job_id,
                i(j.finished_ms),
                j.manifest_id,
                j.seq,
                i(j.decoded_pixels),
                i(j.encoded_pixels),
                j.price.price_per_unit.to_string(),
                j.price.pixels_per_unit.to_string(),
                j.price.source.as_str(),
                i(j.price.at_ms),
                j.price.orchestrator.map(|a| a.to_checksum(None)),
                j.round.map(i),
                j.class,
            ],
        )?;
        Ok(n == 1)
        })
    }

    /// Jobs finished in `[from_ms, to_ms)`, oldest first.
    pub fn jobs_between(&self, from_ms: u64, to_ms: u64) -> Result<Vec<JobEarning>> {
        self.read(|c| {
        let mut st = c.prepare_cached(
            "SELECT job_id, finished_ms, manifest_id, seq, decoded_pixels, encoded_pixels, price_per_unit,
                    pixels_per_unit, price_source, price_at_ms, orchestrator, round, class
             FROM earnings_jobs WHERE finished_ms >= ?1 AND finished_ms < ?2 ORDER BY finished_ms, job_id",
        )?;
        let rows = st.query_map(params![i(from_ms), i(to_ms)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, i64>(9)?,
                r.get::<_, Option<String>>(10)?,
                r.get::<_, Option<i64>>(11)?,
                r.get::<_, String>(12)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (job_id, fin, manifest_id, seq, dec, enc, ppu, pxu, src, at, orch, round, class) =
                row?;
            let source = PriceSource::parse(&src).ok_or(RecordsError::Corrupt {
                what: "earnings_jobs.price_source",
                value: src.clone(),
            })?;
            out.push(JobEarning {
                job_id,
                finished_ms: u(fin),
                manifest_id,
                seq,
                decoded_pixels: u(dec),
                encoded_pixels: u(enc),
                price: PriceSnapshot {
                    price_per_unit: u256("earnings_jobs.price_per_unit", ppu)?,
                    pixels_per_unit: u256("earnings_jobs.pixels_per_unit", pxu)?,
                    source,
                    at_ms: u(at),
                    orchestrator: orch
                        .map(|a| addr("earnings_jobs.orchestrator", a))
                        .transpose()?,
                },
                round: round.map(u),
                class,
            });
        }
        Ok(out)
        })
    }

    pub fn job_count(&self) -> Result<u64> {
        self.read(|c| {
            Ok(u(c.query_row(
                "SELECT COUNT(*) FROM earnings_jobs",
                [],
                |r| r.get(0),
            )?))
        })
    }

    // ---- pool statements ----------------------------------------------------------------

    /// Stores statement lines; lines already stored (same source and id) are skipped.
    /// Returns how many were new.
    pub fn insert_pool_jobs(&self, jobs: &[PoolJob]) -> Result<usize> {
        let jobs = jobs.to_vec();
        self.write(move |tx| {
        let mut n = 0;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO earnings_pool_jobs (source, ext_id, at_ms, pixels, credited, price_per_pixel, raw)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for j in jobs {
                n += st.execute(params![
                    j.source,
                    j.ext_id,
                    i(j.at_ms),
                    i(j.pixels),
                    j.credited.to_string(),
                    j.price_per_pixel.map(|p| p.to_string()),
                    j.raw
                ])?;
            }
        }
        Ok(n)
        })
    }

    pub fn pool_jobs_between(&self, from_ms: u64, to_ms: u64) -> Result<Vec<PoolJob>> {
        self.read(|c| {
        let mut st = c.prepare_cached(
            "SELECT source, ext_id, at_ms, pixels, credited, price_per_pixel, raw FROM earnings_pool_jobs
             WHERE at_ms >= ?1 AND at_ms < ?2 ORDER BY at_ms, ext_id",
        )?;
        let rows = st.query_map(params![i(from_ms), i(to_ms)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, String>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (source, ext_id, at, px, cr, ppp, raw) = row?;
            out.push(PoolJob {
                source,
                ext_id,
                at_ms: u(at),
                pixels: u(px),
                credited: u256("earnings_pool_jobs.credited", cr)?,
                price_per_pixel: ppp
                    .map(|p| u256("earnings_pool_jobs.price_per_pixel", p))
                    .transpose()?,
                raw,
            });
        }
        Ok(out)
        })
    }

    pub fn insert_pool_payouts(&self, payouts: &[PoolPayout]) -> Result<usize> {
        let payouts = payouts.to_vec();
        self.write(move |tx| {
        let mut n = 0;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO earnings_pool_payouts (source, ext_id, at_ms, amount, tx_hash)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for p in payouts {
                n += st.execute(params![
                    p.source,
                    p.ext_id,
                    i(p.at_ms),
                    p.amount.to_string(),
                    p.tx_hash.map(|h| h.to_string())
                ])?;
            }
        }
        Ok(n)
        })
    }

    pub fn set_payout_check(&self, source: &str, ext_id: &str, check: &PayoutCheck) -> Result<()> {
        let (source, ext_id, check) = (source.to_string(), ext_id.to_string(), check.clone());
        self.write(move |c| {
        c.execute(
            "UPDATE earnings_pool_payouts SET check_state = ?3, check_detail = ?4, onchain_value = ?5,
               onchain_block = ?6, gas_fee = ?7 WHERE source = ?1 AND ext_id = ?2",
            params![
                source,
                ext_id,
                check.state,
                check.detail,
                check.value.map(|v| v.to_string()),
                check.block.map(i),
                check.gas_fee.map(|v| v.to_string())
            ],
        )?;
        Ok(())
        })
    }

    /// Every reported payout, oldest first.
    pub fn pool_payouts(&self) -> Result<Vec<PoolPayout>> {
        self.read(|c| {
        let mut st = c.prepare_cached(
            "SELECT source, ext_id, at_ms, amount, tx_hash, check_state, check_detail, onchain_value,
                    onchain_block, gas_fee FROM earnings_pool_payouts ORDER BY at_ms, ext_id",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, Option<i64>>(8)?,
                r.get::<_, Option<String>>(9)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (source, ext_id, at, amount, tx, state, detail, value, block, gas) = row?;
            let check = (state != "unchecked")
                .then(|| -> Result<PayoutCheck> {
                    Ok(PayoutCheck {
                        state,
                        detail: detail.unwrap_or_default(),
                        value: value
                            .map(|v| u256("earnings_pool_payouts.onchain_value", v))
                            .transpose()?,
                        block: block.map(u),
                        gas_fee: gas
                            .map(|v| u256("earnings_pool_payouts.gas_fee", v))
                            .transpose()?,
                    })
                })
                .transpose()?;
            out.push(PoolPayout {
                source,
                ext_id,
                at_ms: u(at),
                amount: u256("earnings_pool_payouts.amount", amount)?,
                tx_hash: tx
                    .map(|t| b256("earnings_pool_payouts.tx_hash", t))
                    .transpose()?,
                check,
            });
        }
        Ok(out)
        })
    }

    /// (last statement time seen, last poll) of a source.
    pub fn pool_cursor(&self, source: &str) -> Result<Option<(u64, u64)>> {
        self.read(|c| {
            Ok(c.query_row(
                "SELECT last_ms, polled_ms FROM earnings_pool_cursor WHERE source = ?1",
                params![source],
                |r| Ok((u(r.get(0)?), u(r.get(1)?))),
            )
            .optional()?)
        })
    }

    pub fn set_pool_cursor(
        &self,
        source: &str,
        last_ms: u64,
        polled_ms: u64,
        error: Option<&str>,
    ) -> Result<()> {
        let (source, error) = (source.to_string(), error.map(str::to_string));
        self.write(move |c| {
        c.execute(
            "INSERT INTO earnings_pool_cursor (source, last_ms, polled_ms, last_error) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(source) DO UPDATE SET last_ms = MAX(last_ms, excluded.last_ms),
               polled_ms = excluded.polled_ms, last_error = excluded.last_error",
            params![source, i(last_ms), i(polled_ms), error],
        )?;
        Ok(())
        })
    }

    // ---- chain scan -----------------------------------------------------------------------

    /// The last block scanned on `stream`, with its hash.
    pub fn chain_cursor(&self, stream: &str) -> Result<Option<(u64, B256)>> {
        let row: Option<(i64, String)> = self.read(|c| {
            Ok(c.query_row(
                "SELECT block, hash FROM earnings_chain_cursor WHERE stream = ?1",
                params![stream],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })?;
        row.map(|(b, h)| Ok((u(b), b256("earnings_chain_cursor.hash", h)?)))
            .transpose()
    }

    /// Commits one scanned chunk: its events and the new cursor, atomically, and keeps the
    /// chunk end as a checkpoint for finding a fork point after a reorg.
    pub fn commit_chunk(
        &self,
        stream: &str,
        events: &[ChainEvent],
        block: u64,
        hash: B256,
        keep_checkpoints: u64,
    ) -> Result<usize> {
        let (stream, events) = (stream.to_string(), events.to_vec());
        self.write(move |tx| {
        let mut n = 0;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR IGNORE INTO earnings_chain_events (tx_hash, log_index, stream, block, block_hash, at_ms,
                   kind, counterparty, amount, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for e in events {
                n += st.execute(params![
                    e.tx_hash.to_string(),
                    i(e.log_index),
                    e.stream,
                    i(e.block),
                    e.block_hash.to_string(),
                    i(e.at_ms),
                    e.kind,
                    e.counterparty.map(|a| a.to_checksum(None)),
                    e.amount.to_string(),
                    e.detail
                ])?;
            }
        }
        let now = i(crate::util::now_ms());
        tx.execute(
            "INSERT INTO earnings_chain_cursor (stream, block, hash, updated_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(stream) DO UPDATE SET block = excluded.block, hash = excluded.hash, updated_ms = excluded.updated_ms",
            params![stream, i(block), hash.to_string(), now],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO earnings_chain_checkpoints (stream, block, hash) VALUES (?1, ?2, ?3)",
            params![stream, i(block), hash.to_string()],
        )?;
        tx.execute(
            "DELETE FROM earnings_chain_checkpoints WHERE stream = ?1 AND block NOT IN
               (SELECT block FROM earnings_chain_checkpoints WHERE stream = ?1 ORDER BY block DESC LIMIT ?2)",
            params![stream, i(keep_checkpoints.max(1))],
        )?;
        Ok(n)
        })
    }

    /// Checkpoints of `stream`, newest first.
    pub fn checkpoints(&self, stream: &str) -> Result<Vec<(u64, B256)>> {
        self.read(|c| {
        let mut st = c.prepare_cached(
            "SELECT block, hash FROM earnings_chain_checkpoints WHERE stream = ?1 ORDER BY block DESC",
        )?;
        let rows = st.query_map(params![stream], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (b, h) = row?;
            out.push((u(b), b256("earnings_chain_checkpoints.hash", h)?));
        }
        Ok(out)
        })
    }

    /// Undoes everything scanned after `block` (a reorg's fork point), atomically: events,
    /// checkpoints, and the cursor moves back to (`block`, `hash`). Returns the events removed.
    pub fn rewind(&self, stream: &str, block: u64, hash: B256) -> Result<usize> {
        let stream = stream.to_string();
        self.write(move |tx| {
        let n = tx.execute(
            "DELETE FROM earnings_chain_events WHERE stream = ?1 AND block > ?2",
            params![stream, i(block)],
        )?;
        tx.execute(
            "DELETE FROM earnings_chain_checkpoints WHERE stream = ?1 AND block > ?2",
            params![stream, i(block)],
        )?;
        tx.execute(
            "INSERT INTO earnings_chain_cursor (stream, block, hash, updated_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(stream) DO UPDATE SET block = excluded.block, hash = excluded.hash, updated_ms = excluded.updated_ms",
            params![stream, i(block), hash.to_string(), i(crate::util::now_ms())],
        )?;
        Ok(n)
        })
    }

    /// Events of `stream` (all kinds) with `at_ms` in `[from_ms, to_ms)`.
    pub fn chain_events(&self, stream: &str, from_ms: u64, to_ms: u64) -> Result<Vec<ChainEvent>> {
        self.read(|c| {
        let mut st = c.prepare_cached(
            "SELECT tx_hash, log_index, stream, block, block_hash, at_ms, kind, counterparty, amount, detail
             FROM earnings_chain_events WHERE stream = ?1 AND at_ms >= ?2 AND at_ms < ?3 ORDER BY block, log_index",
        )?;
        let rows = st.query_map(params![stream, i(from_ms), i(to_ms)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, String>(8)?,
                r.get::<_, String>(9)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (tx, li, stream, block, bh, at, kind, cp, amount, detail) = row?;
            out.push(ChainEvent {
                tx_hash: b256("earnings_chain_events.tx_hash", tx)?,
                log_index: u(li),
                stream,
                block: u(block),
                block_hash: b256("earnings_chain_events.block_hash", bh)?,
                at_ms: u(at),
                kind,
                counterparty: cp
                    .map(|a| addr("earnings_chain_events.counterparty", a))
                    .transpose()?,
                amount: u256("earnings_chain_events.amount", amount)?,
                detail,
            });
        }
        Ok(out)
        })
    }

    // ---- balances -----------------------------------------------------------------------

    pub fn add_snapshot(&self, s: &BalanceSnapshot) -> Result<()> {
        let s = s.clone();
        self.write(move |c| {
        c.execute(
            "INSERT INTO earnings_balance_snapshots (address, block, block_hash, balance, nonce, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                s.address.to_checksum(None),
                i(s.block),
                s.block_hash.to_string(),
                s.balance.to_string(),
                i(s.nonce),
                i(s.at_ms)
            ],
        )?;
        Ok(())
        })
    }

    /// Snapshots of `address`, oldest first.
    pub fn snapshots(&self, address: Address) -> Result<Vec<BalanceSnapshot>> {
        self.read(|c| {
        let mut st = c.prepare_cached(
            "SELECT address, block, block_hash, balance, nonce, at_ms FROM earnings_balance_snapshots
             WHERE address = ?1 ORDER BY block, id",
        )?;
        let rows = st.query_map(params![address.to_checksum(None)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (a, b, h, bal, nonce, at) = row?;
            out.push(BalanceSnapshot {
                address: addr("earnings_balance_snapshots.address", a)?,
                block: u(b),
                block_hash: b256("earnings_balance_snapshots.block_hash", h)?,
                balance: u256("earnings_balance_snapshots.balance", bal)?,
                nonce: u(nonce),
                at_ms: u(at),
            });
        }
        Ok(out)
        })
    }

    // ---- rounds -------------------------------------------------------------------------

    /// Records the first time a round was seen; later sightings keep the first.
    pub fn saw_round(&self, round: u64, at_ms: u64, block: u64) -> Result<()> {
        self.write(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO earnings_rounds (round, first_seen_ms, block) VALUES (?1, ?2, ?3)",
                params![i(round), i(at_ms), i(block)],
            )?;
            Ok(())
        })
    }

    /// (round, first seen ms), oldest first.
    pub fn rounds(&self) -> Result<Vec<(u64, u64)>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT round, first_seen_ms FROM earnings_rounds ORDER BY round",
            )?;
            let rows = st.query_map([], |r| Ok((u(r.get(0)?), u(r.get(1)?))))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    // ---- receipts -----------------------------------------------------------------------

    /// Keeps a signed receipt; the first one for a job stands.
    pub fn insert_receipt(&self, r: &StoredReceipt) -> Result<bool> {
        let r = r.clone();
        self.write(move |c| {
        let n = c.execute(
            "INSERT OR IGNORE INTO earnings_receipts (job_id, ledger_job_id, day, completed_ms, digest, signer, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                r.job_id,
                r.ledger_job_id,
                r.day,
                i(r.completed_ms),
                r.digest.to_string(),
                r.signer.to_checksum(None),
                r.body
            ],
        )?;
        Ok(n == 1)
        })
    }

    /// Links a receipt signed before the ledger knew the job (Livepeer) to the ledger's id.
    /// Names the ledger job of a receipt signed earlier; `false` when there is no such receipt.
    pub fn link_receipt(&self, job_id: &str, ledger_job_id: &str) -> Result<bool> {
        let (job_id, ledger_job_id) = (job_id.to_string(), ledger_job_id.to_string());
        self.write(move |c| {
            let n = c.execute(
                "UPDATE earnings_receipts SET ledger_job_id = ?2 WHERE job_id = ?1",
                params![job_id, ledger_job_id],
            )?;
            Ok(n > 0)
        })
    }

    pub fn receipts_of_day(&self, day: &str) -> Result<Vec<StoredReceipt>> {
        self.read(|c| {
        let mut st = c.prepare_cached(
            "SELECT job_id, ledger_job_id, day, completed_ms, digest, signer, body FROM earnings_receipts
             WHERE day = ?1 ORDER BY completed_ms, job_id",
        )?;
        let rows = st.query_map(params![day], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (job_id, ledger_job_id, day, at, digest, signer, body) = row?;
            out.push(StoredReceipt {
                job_id,
                ledger_job_id,
                day,
                completed_ms: u(at),
                digest: b256("earnings_receipts.digest", digest)?,
                signer: addr("earnings_receipts.signer", signer)?,
                body,
            });
        }
        Ok(out)
        })
    }

    /// Days that have receipts but no signed root, before `before_day`.
    pub fn days_without_root(&self, before_day: &str) -> Result<Vec<String>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT DISTINCT day FROM earnings_receipts WHERE day < ?1
               AND day NOT IN (SELECT day FROM earnings_daily_roots) ORDER BY day",
            )?;
            let rows = st.query_map(params![before_day], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
    }

    pub fn put_root(&self, r: &DailyRoot) -> Result<()> {
        let r = r.clone();
        self.write(move |c| {
        c.execute(
            "INSERT OR REPLACE INTO earnings_daily_roots (day, root, count, signer, message, signature, made_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                r.day,
                r.root.to_string(),
                i(r.count),
                r.signer.to_checksum(None),
                r.message,
                r.signature,
                i(r.made_ms)
            ],
        )?;
        Ok(())
        })
    }

    pub fn root(&self, day: &str) -> Result<Option<DailyRoot>> {
        let row: Option<(String, String, i64, String, String, String, i64)> = self.read(|c| {
            Ok(c.query_row(
                "SELECT day, root, count, signer, message, signature, made_ms FROM earnings_daily_roots WHERE day = ?1",
                params![day],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
            )
            .optional()?)
        })?;
        row.map(|(day, root, count, signer, message, signature, made)| {
            Ok(DailyRoot {
                day,
                root: b256("earnings_daily_roots.root", root)?,
                count: u(count),
                signer: addr("earnings_daily_roots.signer", signer)?,
                message,
                signature,
                made_ms: u(made),
            })
        })
        .transpose()
    }
}

/// Brings the tables up to date; runs inside one transaction ([`Records::write`]).
fn migrate(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS earnings_schema (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL)",
    )?;
    let have: u32 = conn
        .query_row("SELECT MAX(version) FROM earnings_schema", [], |r| {
            r.get::<_, Option<u32>>(0)
        })?
        .unwrap_or(0);
    for (n, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        conn.execute_batch(sql)?;
        conn.execute(
            "INSERT INTO earnings_schema (version, applied_ms) VALUES (?1, ?2)",
            params![n as i64 + 1, i(crate::util::now_ms())],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, at: u64, px: u64) -> JobEarning {
        JobEarning {
            job_id: id.into(),
            finished_ms: at,
            manifest_id: Some("m".into()),
            seq: Some(1),
            decoded_pixels: 10,
            encoded_pixels: px,
            price: PriceSnapshot {
                price_per_unit: U256::from(1200),
                pixels_per_unit: U256::from(1000),
                source: PriceSource::Orchestrator,
                at_ms: at,
                orchestrator: Some(Address::repeat_byte(7)),
            },
            round: Some(3),
            class: CLASS_TRANSCODE.into(),
        }
    }

    #[test]
    fn jobs_are_recorded_once_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("comine.db");
        {
            let r = Records::open(&path).unwrap();
            assert_eq!(r.schema_version().unwrap(), MIGRATIONS.len() as u32);
            assert!(r.record_job(&job("a", 5, 100)).unwrap());
            // A replay keeps the first snapshot.
            assert!(!r.record_job(&job("a", 6, 999)).unwrap());
            let ai = JobEarning {
                class: CLASS_AI.into(),
                ..job("b", 7, 4096)
            };
            assert!(r.record_job(&ai).unwrap());
        }
        let r = Records::open(&path).unwrap();
        let jobs = r.jobs_between(0, 10).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0], job("a", 5, 100));
        assert_eq!(jobs[1].class, CLASS_AI);
        assert_eq!(r.jobs_between(6, 10).unwrap().len(), 1);
    }

    /// A database made before AI jobs were valued (schema 1) gains the class column; its
    /// jobs read back as transcoding.
    #[test]
    fn a_schema_1_database_upgrades_and_keeps_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("comine.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(
                "CREATE TABLE earnings_schema (version INTEGER PRIMARY KEY, applied_ms INTEGER NOT NULL);
                 INSERT INTO earnings_schema VALUES (1, 0);
                 INSERT INTO earnings_jobs (job_id, finished_ms, decoded_pixels, encoded_pixels,
                   price_per_unit, pixels_per_unit, price_source, price_at_ms)
                 VALUES ('old', 5, 1, 100, '1200', '1000', 'config', 5);",
            )
            .unwrap();
        }
        let r = Records::open(&path).unwrap();
        assert_eq!(r.schema_version().unwrap(), 2);
        let jobs = r.jobs_between(0, 10).unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(
            (jobs[0].job_id.as_str(), jobs[0].class.as_str()),
            ("old", CLASS_TRANSCODE)
        );
    }

    /// Issue 17: one database for the daemon. The earnings tables written through the shared
    /// [`Db`] go through its writer (its commit count moves) and are in the same file as the
    /// tables written before by a connection of their own.
    #[test]
    fn shared_tables_go_through_the_daemons_writer_and_keep_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        {
            let own = Records::open(&dir.path().join(crate::db::FILE)).unwrap();
            assert!(own.record_job(&job("before", 5, 100)).unwrap());
        }
        let db = Db::open(dir.path()).unwrap();
        let r = Records::with_db(db.clone()).unwrap();
        assert_eq!(r.schema_version().unwrap(), MIGRATIONS.len() as u32);
        let before = db.stats().writes;
        assert!(r.record_job(&job("after", 6, 200)).unwrap());
        assert!(!r.record_job(&job("after", 7, 999)).unwrap());
        assert_eq!(
            db.stats().writes,
            before + 2,
            "both writes went through the writer"
        );
        let ids: Vec<String> = r
            .jobs_between(0, 10)
            .unwrap()
            .into_iter()
            .map(|j| j.job_id)
            .collect();
        assert_eq!(ids, ["before", "after"]);
        r.set_pool_cursor("csv", 10, 11, Some("boom")).unwrap();
        assert_eq!(r.pool_cursor("csv").unwrap(), Some((10, 11)));
        r.checkpoint().unwrap();
    }

    #[test]
    fn rewind_removes_only_events_after_the_fork() {
        let r = Records::in_memory().unwrap();
        let ev = |block: u64, tx: u8| ChainEvent {
            tx_hash: B256::repeat_byte(tx),
            log_index: 0,
            stream: "s".into(),
            block,
            block_hash: B256::repeat_byte(block as u8),
            at_ms: block * 1000,
            kind: "ticket_transfer".into(),
            counterparty: None,
            amount: U256::from(block),
            detail: String::new(),
        };
        assert_eq!(
            r.commit_chunk("s", &[ev(1, 1), ev(2, 2)], 2, B256::repeat_byte(2), 8)
                .unwrap(),
            2
        );
        // The same chunk again (a crash between scan and commit) adds nothing.
        assert_eq!(
            r.commit_chunk("s", &[ev(1, 1), ev(2, 2)], 2, B256::repeat_byte(2), 8)
                .unwrap(),
            0
        );
        r.commit_chunk("s", &[ev(3, 3)], 4, B256::repeat_byte(4), 8)
            .unwrap();
        assert_eq!(r.rewind("s", 2, B256::repeat_byte(2)).unwrap(), 1);
        assert_eq!(
            r.chain_cursor("s").unwrap(),
            Some((2, B256::repeat_byte(2)))
        );
        assert_eq!(r.chain_events("s", 0, u64::MAX).unwrap().len(), 2);
        assert_eq!(r.checkpoints("s").unwrap(), vec![(2, B256::repeat_byte(2))]);
    }
}
