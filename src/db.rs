//! The daemon's one embedded database: SQLite in WAL mode at `<data_dir>/comine.db`.
//!
//! Every module keeps its tables here, named after it (`ledger_*`, `store_*`, `earnings_*`, …),
//! and owns their schema as a list of [`Migration`]s it applies with [`Db::migrate`] when it
//! opens. Block bytes never live here (the store keeps them as files).
//!
//! How calls run, and why:
//! - **Writes** go to one writer thread. It takes every write queued while the previous commit
//!   was running and commits them together: one fsync for many jobs under load (group commit).
//!   Each write runs in its own savepoint, so a failing write rolls back alone. A caller is
//!   answered only after the commit that holds its write is on disk (`synchronous = FULL`), so
//!   "a 2xx means durable" holds however many requests are in flight.
//! - **Reads** run on the calling thread with a pooled read connection; in WAL mode readers
//!   never wait for the writer.
//! - **Async code** never blocks a runtime worker: [`Db::write_async`] hands the write to the
//!   writer thread and awaits its answer; [`Db::call`] runs any blocking database work on
//!   tokio's blocking pool, at most [`ASYNC_CALLS`] at once. A stalled disk then stalls those
//!   threads, not the workers serving `/healthz`, the API and shutdown. [`guard_runtime`] turns
//!   a blocking call on a worker thread into a loud bug (a panic in debug builds).
//!
//! Several processes may open the same database (the daemon and a `comine store …` command):
//! SQLite's file locks serialise their writers, each waiting up to [`BUSY_TIMEOUT`].

use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension};

/// File name inside the data directory.
pub const FILE: &str = "comine.db";
/// Blocking database calls from async code in flight at once ([`Db::call`]).
pub const ASYNC_CALLS: usize = 16;
/// Most writes one commit takes (group commit).
pub const DEFAULT_GROUP: usize = 256;
/// How long a writer waits for another process's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const READERS_KEPT: usize = 8;

/// Everything that can go wrong with the database. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open the database {path}: {source}{}", hint(.source))]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the database {path} is damaged ({detail}); comine will not use it. Restore it from a backup (`sqlite3 {path} .recover` saves what it can), or move it aside to start an empty one")]
    Corrupt { path: PathBuf, detail: String },
    #[error("the database {path} was written by a newer comine ({module} schema version {found}, this build knows up to {known}); run that release or restore a backup")]
    TooNew {
        path: PathBuf,
        module: &'static str,
        found: u32,
        known: u32,
    },
    #[error("database error: {}{}", .0, hint(.0))]
    Sql(#[from] rusqlite::Error),
    #[error(
        "cannot prepare {path}: {source}; check the data directory's permissions and free space"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the database writer has stopped (see the log for why); restart comine")]
    Closed,
    #[error("a database call was made from inside a database write (a bug in comine)")]
    Reentrant,
    #[error("a database task failed: {0}")]
    Task(String),
    #[error("the database did not answer within {0:?} (the disk is stalled or overloaded)")]
    Timeout(Duration),
    #[error("{0}")]
    Migration(String),
}

fn hint(e: &rusqlite::Error) -> &'static str {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => {
            " (the disk holding the data directory is full: free some space and retry; nothing already acknowledged was lost)"
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            " (another comine process kept the database's write lock too long; retry)"
        }
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
            " (check the data directory's permissions)"
        }
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            " (the database file is damaged: restore it from a backup)"
        }
        Some(ErrorCode::SystemIoFailure) => " (an I/O error: check the disk)",
        _ => "",
    }
}

impl DbError {
    /// The disk is full (SQLite's `SQLITE_FULL` or the OS's `ENOSPC`).
    pub fn is_disk_full(&self) -> bool {
        match self {
            DbError::Sql(e) | DbError::Open { source: e, .. } => {
                e.sqlite_error_code() == Some(ErrorCode::DiskFull)
            }
            DbError::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            _ => false,
        }
    }
}

/// One step of a module's schema. Versions start at 1 and grow by one.
pub struct Migration {
    pub version: u32,
    /// Run in the migration's transaction.
    pub sql: &'static str,
}

/// Counters of the writer, for `/v1/status` and the benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DbStats {
    /// Transactions committed.
    pub commits: u64,
    /// Writes those commits held (`writes / commits` is the grouping factor).
    pub writes: u64,
    /// Most writes in one commit.
    pub largest_group: u64,
}

thread_local! {
    static ASYNC_WORKER: Cell<bool> = const { Cell::new(false) };
    static IN_WRITER: Cell<bool> = const { Cell::new(false) };
}

/// Marks the runtime's worker threads so a blocking database call on one of them is caught
/// (a panic in debug builds, an error log once in release builds). Only worker threads park
/// and unpark; blocking-pool threads never run these hooks.
pub fn guard_runtime(builder: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    builder
        .on_thread_park(|| ASYNC_WORKER.with(|w| w.set(true)))
        .on_thread_unpark(|| ASYNC_WORKER.with(|w| w.set(true)))
}

static WARNED_ASYNC: AtomicBool = AtomicBool::new(false);

fn check_blocking_allowed() -> Result<(), DbError> {
    if IN_WRITER.with(Cell::get) {
        return Err(DbError::Reentrant);
    }
    assert_off_runtime();
    Ok(())
}

/// The runtime guard ([`guard_runtime`]) for blocking SQLite work outside [`Db`] (the
/// earnings tables' connection): a panic in debug builds, one error log in release builds.
pub fn assert_off_runtime() {
    if ASYNC_WORKER.with(Cell::get) {
        let msg = "blocking database call on an async worker thread: use Db::call, Db::write_async, Ledger::call or Records::call";
        if cfg!(debug_assertions) {
            panic!("{msg}");
        }
        if !WARNED_ASYNC.swap(true, Ordering::Relaxed) {
            tracing::error!("{msg}");
        }
    }
}

/// Where a write's answer goes.
enum Reply<T> {
    Blocking(mpsc::SyncSender<T>),
    Async(tokio::sync::oneshot::Sender<T>),
}

impl<T> Reply<T> {
    fn send(self, v: T) {
        // The caller may have given up waiting (a timeout); nothing to do then.
        match self {
            Reply::Blocking(tx) => {
                let _ = tx.send(v);
            }
            Reply::Async(tx) => {
                let _ = tx.send(v);
            }
        }
    }
}

/// A unit of work for the writer thread.
trait Job: Send {
    /// `false` for a ping (answered without a transaction).
    fn writes(&self) -> bool {
        true
    }
    /// Runs inside the batch's transaction; `false` rolls this job's savepoint back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the batch's fate is known.
    fn finish(self: Box<Self>, commit: Result<(), rusqlite::Error>);
}

struct WriteJob<F, T, E> {
    f: Option<F>,
    out: Option<Result<T, E>>,
    reply: Option<Reply<Result<T, E>>>,
}

impl<F, T, E> Job for WriteJob<F, T, E>
where
    F: FnOnce(&Connection) -> Result<T, E> + Send,
    T: Send,
    E: From<DbError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)))
            .unwrap_or_else(|_| Err(E::from(DbError::Task("a database write panicked".into()))));
        let ok = out.is_ok();
        self.out = Some(out);
        ok
    }

    fn finish(mut self: Box<Self>, commit: Result<(), rusqlite::Error>) {
        let out = match (self.out.take(), commit) {
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (_, Err(e)) => Err(E::from(DbError::Sql(e))),
            (None, Ok(())) => Err(E::from(DbError::Closed)),
        };
        if let Some(reply) = self.reply.take() {
            reply.send(out);
        }
    }
}

struct Ping(Reply<Result<(), DbError>>);

impl Job for Ping {
    fn writes(&self) -> bool {
        false
    }
    fn run(&mut self, _: &Connection) -> bool {
        true
    }
    fn finish(self: Box<Self>, result: Result<(), rusqlite::Error>) {
        self.0.send(result.map_err(DbError::Sql));
    }
}

struct Shared {
    max_group: AtomicUsize,
    commits: AtomicU64,
    writes: AtomicU64,
    largest_group: AtomicU64,
}

struct Inner {
    path: PathBuf,
    dir: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Box<dyn Job>>>>,
    shared: Arc<Shared>,
    readers: Mutex<Vec<Connection>>,
    permits: tokio::sync::Semaphore,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer after the writes already queued.
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

/// A handle on the data directory's database; cheap to clone. Every handle on the same
/// directory in one process shares one writer thread.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Inner>>> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<Inner>>>> = OnceLock::new();
    OPEN.get_or_init(|| Mutex::new(HashMap::new()))
}

fn classify(path: &Path, e: rusqlite::Error) -> DbError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => DbError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        },
        _ => DbError::Open {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

fn open_conn(path: &Path, reader: bool) -> Result<Connection, DbError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| classify(path, e))?;
    let setup = || -> rusqlite::Result<()> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // The first statement that reads the file: a file that is not a database fails here.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!(
                    "the file system refused WAL mode (journal mode is {mode})"
                )),
            ));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
        if reader {
            conn.execute_batch("PRAGMA query_only = ON;")?;
        }
        Ok(())
    };
    setup().map_err(|e| classify(path, e))?;
    Ok(conn)
}

fn clone_err(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, msg) => {
            rusqlite::Error::SqliteFailure(*code, msg.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

fn run_batch(conn: &Connection, jobs: &mut [Box<dyn Job>]) -> Result<(), rusqlite::Error> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let body = (|| {
        for job in jobs.iter_mut() {
            conn.execute_batch("SAVEPOINT job")?;
            if job.run(conn) {
                conn.execute_batch("RELEASE job")?;
            } else {
                conn.execute_batch("ROLLBACK TO job; RELEASE job")?;
            }
        }
        conn.execute_batch("COMMIT")
    })();
    if body.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    body
}

fn writer_loop(conn: Connection, rx: mpsc::Receiver<Box<dyn Job>>, shared: Arc<Shared>) {
    IN_WRITER.with(|w| w.set(true));
    while let Ok(first) = rx.recv() {
        let max = shared.max_group.load(Ordering::Relaxed).max(1);
        let mut batch = vec![first];
        while batch.len() < max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (mut writes, pings): (Vec<_>, Vec<_>) = batch.into_iter().partition(|j| j.writes());
        if writes.is_empty() {
            // A health check: prove the write lock can be taken now (an empty transaction
            // writes nothing), so a writer stuck behind another process shows up.
            let r = conn
                .execute_batch("BEGIN IMMEDIATE; COMMIT;")
                .inspect_err(|_| {
                    let _ = conn.execute_batch("ROLLBACK");
                });
            for p in pings {
                p.finish(r.as_ref().map(|_| ()).map_err(clone_err));
            }
            continue;
        }
        let result = run_batch(&conn, &mut writes);
        if let Err(e) = &result {
            tracing::error!(error = %e, writes = writes.len(), "database commit failed; its writes were not acknowledged");
        } else {
            shared.commits.fetch_add(1, Ordering::Relaxed);
            shared
                .writes
                .fetch_add(writes.len() as u64, Ordering::Relaxed);
            shared
                .largest_group
                .fetch_max(writes.len() as u64, Ordering::Relaxed);
        }
        for job in writes.into_iter().chain(pings) {
            job.finish(result.as_ref().map(|_| ()).map_err(clone_err));
        }
    }
}

/// Bootstrap tables owned by this module: schema versions and one-off data migrations.
const BOOTSTRAP: &str = "
CREATE TABLE IF NOT EXISTS db_schema (
    module TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS db_imports (
    name TEXT PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    detail TEXT NOT NULL
);
";

impl Db {
    /// Opens (or creates) `<data_dir>/comine.db`, checking its integrity first. Handles on the
    /// same directory in one process share one database.
    pub fn open(data_dir: &Path) -> Result<Db, DbError> {
        std::fs::create_dir_all(data_dir).map_err(|source| DbError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let dir = data_dir.canonicalize().map_err(|source| DbError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE);
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(inner) = reg.get(&path).and_then(Weak::upgrade) {
            return Ok(Db { inner });
        }
        let db = Db::open_new(dir, path.clone())?;
        reg.retain(|_, w| w.strong_count() > 0);
        reg.insert(path, Arc::downgrade(&db.inner));
        Ok(db)
    }

    fn open_new(dir: PathBuf, path: PathBuf) -> Result<Db, DbError> {
        let conn = open_conn(&path, false)?;
        // A damaged page is found now, with a clear error, rather than mid-job.
        let check: String = conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(|e| classify(&path, e))?;
        if check != "ok" {
            return Err(DbError::Corrupt {
                path,
                detail: check,
            });
        }
        conn.execute_batch(BOOTSTRAP)
            .map_err(|e| classify(&path, e))?;
        let shared = Arc::new(Shared {
            max_group: AtomicUsize::new(DEFAULT_GROUP),
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            largest_group: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name("comine-db-writer".into())
            .spawn(move || writer_loop(conn, rx, s))
            .map_err(|source| DbError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Db {
            inner: Arc::new(Inner {
                path,
                dir,
                tx: Mutex::new(Some(tx)),
                shared,
                readers: Mutex::new(Vec::new()),
                permits: tokio::sync::Semaphore::new(ASYNC_CALLS),
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    /// `<data_dir>/comine.db`.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The data directory (canonical).
    pub fn data_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Most writes one commit may take; 1 turns group commit off (for measurements).
    pub fn set_max_group(&self, n: usize) {
        self.inner
            .shared
            .max_group
            .store(n.max(1), Ordering::Relaxed);
    }

    pub fn stats(&self) -> DbStats {
        let s = &self.inner.shared;
        DbStats {
            commits: s.commits.load(Ordering::Relaxed),
            writes: s.writes.load(Ordering::Relaxed),
            largest_group: s.largest_group.load(Ordering::Relaxed),
        }
    }

    fn send(&self, job: Box<dyn Job>) -> Result<(), DbError> {
        let tx = self.inner.tx.lock().unwrap_or_else(|e| e.into_inner());
        match tx.as_ref() {
            Some(tx) => tx.send(job).map_err(|_| DbError::Closed),
            None => Err(DbError::Closed),
        }
    }

    /// Runs `f` in a transaction on the writer thread and returns once it is durable (or
    /// failed). Blocks the calling thread: from async code use [`Db::write_async`].
    /// `f` runs inside a transaction already: use the connection directly.
    pub fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        check_blocking_allowed()?;
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Box::new(WriteJob {
            f: Some(f),
            out: None,
            reply: Some(Reply::Blocking(tx)),
        }))?;
        rx.recv().unwrap_or_else(|_| Err(E::from(DbError::Closed)))
    }

    /// [`Db::write`] for async code: no thread waits, the writer answers through a channel.
    pub async fn write_async<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Box::new(WriteJob {
            f: Some(f),
            out: None,
            reply: Some(Reply::Async(tx)),
        }))?;
        rx.await.unwrap_or_else(|_| Err(E::from(DbError::Closed)))
    }

    /// Runs `f` with a read connection on the calling thread (sees every committed write).
    pub fn read<T, E>(&self, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E>
    where
        E: From<DbError>,
    {
        check_blocking_allowed()?;
        let pooled = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_conn(&self.inner.path, true)?,
        };
        let out = f(&conn);
        let mut pool = self.inner.readers.lock().unwrap_or_else(|e| e.into_inner());
        if pool.len() < READERS_KEPT {
            pool.push(conn);
        }
        out
    }

    /// Runs blocking database work from async code on tokio's blocking pool, at most
    /// [`ASYNC_CALLS`] at once (the rest wait without holding a thread).
    pub async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| DbError::Closed)?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| DbError::Task(e.to_string()))
    }

    /// [`Db::read`] for async code.
    pub async fn read_async<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let db = self.clone();
        self.call(move || db.read(f)).await?
    }

    /// Checks within `bound` that the writer can take the write lock (after the writes queued
    /// before it) and that a reader answers; returns how long that took. `/healthz` uses it.
    pub async fn ping(&self, bound: Duration) -> Result<Duration, DbError> {
        let started = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Box::new(Ping(Reply::Async(tx))))?;
        let read = self.read_async(|c| {
            c.query_row("SELECT count(*) FROM db_schema", [], |r| r.get::<_, i64>(0))
                .map_err(DbError::from)
        });
        let both = async {
            rx.await.map_err(|_| DbError::Closed)??;
            read.await?;
            Ok::<_, DbError>(())
        };
        tokio::time::timeout(bound, both)
            .await
            .map_err(|_| DbError::Timeout(bound))??;
        Ok(started.elapsed())
    }

    /// Applies `module`'s schema steps newer than the database's, in one transaction.
    /// Refuses a database whose schema is newer than this build knows. Returns the version.
    pub fn migrate(
        &self,
        module: &'static str,
        steps: &'static [Migration],
    ) -> Result<u32, DbError> {
        let known = steps.iter().map(|s| s.version).max().unwrap_or(0);
        if steps.windows(2).any(|w| w[1].version != w[0].version + 1)
            || steps.first().is_some_and(|s| s.version != 1)
        {
            return Err(DbError::Migration(format!(
                "{module}'s migrations must be numbered 1, 2, 3, … (a bug in comine)"
            )));
        }
        let path = self.inner.path.clone();
        self.write(move |c| {
            let found: u32 = c
                .query_row(
                    "SELECT version FROM db_schema WHERE module = ?1",
                    [module],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            if found > known {
                return Err(DbError::TooNew {
                    path,
                    module,
                    found,
                    known,
                });
            }
            for step in steps.iter().filter(|s| s.version > found) {
                c.execute_batch(step.sql).map_err(|e| {
                    DbError::Migration(format!("{module} schema step {} failed: {e}", step.version))
                })?;
            }
            c.execute(
                "INSERT INTO db_schema (module, version) VALUES (?1, ?2)
                 ON CONFLICT (module) DO UPDATE SET version = excluded.version",
                rusqlite::params![module, known],
            )?;
            Ok(known)
        })
    }
}

/// Whether a one-off data import (`name`, e.g. `sled-ledger`) already committed.
pub fn imported(conn: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT detail FROM db_imports WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
    .optional()
}

/// Records a one-off data import in the transaction that performed it, so it never runs twice.
pub fn mark_imported(conn: &Connection, name: &str, detail: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO db_imports (name, at_ms, detail) VALUES (?1, ?2, ?3)",
        rusqlite::params![name, now_ms(), detail],
    )?;
    Ok(())
}

/// Whether `dir` holds a sled database (its `conf` and `db` files): a ledger or store written
/// by a release before this database, to be imported by its module.
pub fn is_sled_dir(dir: &Path) -> bool {
    dir.join("conf").is_file() && dir.join("db").is_file()
}

/// Renames an imported and verified sled directory to `<dir>.sled-migrated` (or a dated name if
/// that is taken) and makes the rename durable. Returns the new path.
pub fn retire_sled_dir(dir: &Path) -> std::io::Result<PathBuf> {
    let mut name = dir
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".sled-migrated");
    let mut to = dir.with_file_name(&name);
    if to.exists() {
        name.push(format!("-{}", now_ms()));
        to = dir.with_file_name(name);
    }
    std::fs::rename(dir, &to)?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(to)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `u64` counters are stored as SQLite's signed 64-bit integers.
pub fn to_sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Reads back a counter written by [`to_sql_u64`].
pub fn from_sql_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: &[Migration] = &[
        Migration {
            version: 1,
            sql: "CREATE TABLE t_items (k TEXT PRIMARY KEY, v INTEGER NOT NULL);",
        },
        Migration {
            version: 2,
            sql: "ALTER TABLE t_items ADD COLUMN note TEXT;",
        },
    ];

    #[test]
    fn migrations_apply_once_and_newer_schemas_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.migrate("t", STEPS).unwrap(), 2);
        assert_eq!(db.migrate("t", STEPS).unwrap(), 2);
        db.write(|c| {
            c.execute("INSERT INTO t_items (k, v, note) VALUES ('a', 1, 'x')", [])?;
            Ok::<_, DbError>(())
        })
        .unwrap();
        // An older build that knows only step 1 must not touch a version-2 schema.
        let err = db.migrate("t", &STEPS[..1]).unwrap_err();
        assert!(
            matches!(
                err,
                DbError::TooNew {
                    found: 2,
                    known: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("newer comine"), "{err}");
    }

    #[test]
    fn a_failed_write_rolls_back_alone_and_others_commit() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        db.migrate("t", STEPS).unwrap();
        let handles: Vec<_> = (0..32)
            .map(|i| {
                let db = db.clone();
                std::thread::spawn(move || {
                    db.write(move |c| {
                        c.execute(
                            "INSERT INTO t_items (k, v) VALUES (?1, ?2)",
                            (i.to_string(), i),
                        )?;
                        if i % 4 == 0 {
                            return Err(DbError::Task("refused".into()));
                        }
                        Ok(())
                    })
                })
            })
            .collect();
        let ok = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(Result::is_ok)
            .count();
        assert_eq!(ok, 24);
        let n: i64 = db
            .read(|c| {
                c.query_row("SELECT count(*) FROM t_items", [], |r| r.get(0))
                    .map_err(DbError::from)
            })
            .unwrap();
        assert_eq!(n, 24, "the refused writes left nothing behind");
        let s = db.stats();
        assert!(s.writes >= 32 && s.commits >= 1, "{s:?}");
    }

    #[test]
    fn handles_on_one_directory_share_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let a = Db::open(dir.path()).unwrap();
        let b = Db::open(&dir.path().join(".")).unwrap();
        assert!(Arc::ptr_eq(&a.inner, &b.inner));
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), vec![0x5au8; 8192]).unwrap();
        let err = Db::open(dir.path()).unwrap_err();
        assert!(matches!(err, DbError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("from a backup"), "{err}");
        // Nothing was written over it.
        assert_eq!(
            std::fs::read(dir.path().join(FILE)).unwrap(),
            vec![0x5au8; 8192]
        );
    }

    #[test]
    fn reentrant_calls_are_refused_not_deadlocked() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        let inner = db.clone();
        let err = db
            .write(move |_| inner.write(|_| Ok::<_, DbError>(())))
            .unwrap_err();
        assert!(matches!(err, DbError::Reentrant), "{err}");
    }

    #[tokio::test]
    async fn ping_answers_and_async_writes_do_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).unwrap();
        db.ping(Duration::from_secs(5)).await.unwrap();
        let v = db
            .write_async(|c| {
                c.query_row("SELECT 41 + 1", [], |r| r.get::<_, i64>(0))
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(v, 42);
    }
}
