//! Content-addressed storage for renditions: an embedded UnixFS blockstore whose CIDs match
//! Kubo's `ipfs add`, a Kubo RPC backend with a persistent push queue, CAR v1 export, piece CID
//! (CommP), Boost offline-deal batches and garbage collection.
//!
//! Layout: block bytes are files under `<data_dir>/store/blocks/` in Kubo's flatfs layout
//! ([`blocks`]); what the store knows about them lives in the daemon's database (`crate::db`,
//! tables `store_*`): which blocks exist, which roots (DAGs) use which blocks, the pins, the push
//! queue and the deal batches. CAR files of deal batches live in `<data_dir>/store/deals/`.
//!
//! An add writes its blocks, makes them durable ([`blocks::BatchWriter::commit`]), then records
//! blocks, root, references and pin in one transaction: a block the database knows is always on
//! disk. Every read re-hashes the block: a corrupt block is an error, never data.

pub mod blocks;
pub mod car;
pub mod cli;
pub mod commp;
pub mod deals;
pub mod free_space;
pub mod gateway;
pub mod gc;
pub mod importer;
pub mod kubo;
pub mod pb;
pub mod queue;
mod sled_import;

use std::collections::{HashMap, HashSet};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use cid::Cid;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::db::{self, Db, DbError, Migration};
pub use importer::{
    compute_cid, AddOptions, Imported, CHUNK_SIZE, DAG_PB, MAX_LINKS, RAW, SHA2_256,
};
pub use kubo::{KuboClient, KuboError};

use pb::{UNIXFS_DIRECTORY, UNIXFS_FILE, UNIXFS_RAW};

/// Everything that can go wrong in the embedded store. Messages say what to do next.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}{}", enospc_hint(.source))]
    Io { context: String, source: io::Error },
    #[error("store index: {source}")]
    Db {
        #[from]
        source: DbError,
    },
    #[error("block {cid} is not in the local store (add the file first, or fetch it from IPFS)")]
    NotFound { cid: Cid },
    #[error("block {cid} is corrupt: its bytes do not hash to its CID; refusing to serve it (re-add the file to repair it)")]
    Corrupt { cid: Cid },
    #[error("'{input}' is not a valid CID: {reason}")]
    BadCid { input: String, reason: String },
    #[error("CID {cid} is not supported here: {reason}")]
    Unsupported { cid: Cid, reason: String },
    #[error("block {cid} is not valid UnixFS: {source}")]
    BadBlock { cid: Cid, source: pb::PbError },
    #[error("{cid} is a UnixFS directory, not a file; cat one of its entries instead")]
    NotAFile { cid: Cid },
    #[error("{0}")]
    BadOption(String),
    #[error("store index record {key} is corrupt: {reason}")]
    BadRecord { key: String, reason: String },
    #[error("cannot migrate the sled store at {path}: {reason}; the sled copy is untouched, so fix the cause and open the store again")]
    Import { path: String, reason: String },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db {
            source: DbError::Sql(e),
        }
    }
}

fn enospc_hint(e: &io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == io::ErrorKind::StorageFull {
        " (the disk is full: free some space and retry; nothing already stored was lost)"
    } else {
        ""
    }
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: io::Error) -> StoreError {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Parses a CID in any multibase (CIDv0 base58 or CIDv1 base32/base36/...).
pub fn parse_cid(input: &str) -> Result<Cid, StoreError> {
    let trimmed = input.trim().trim_start_matches("/ipfs/");
    Cid::try_from(trimmed).map_err(|e| StoreError::BadCid {
        input: input.to_string(),
        reason: e.to_string(),
    })
}

/// Callback of [`Store::walk`]: sees each verified block once.
pub type BlockVisitor<'a> = dyn FnMut(&Cid, &[u8]) -> Result<(), StoreError> + 'a;

/// Result of adding a file to the embedded store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AddResult {
    #[serde(serialize_with = "ser_cid")]
    pub cid: Cid,
    /// File bytes.
    pub size: u64,
    /// Cumulative DAG size (what Kubo reports as the root's `Size`/`Tsize`).
    pub dag_size: u64,
    pub blocks: u64,
}

pub(crate) fn ser_cid<S: serde::Serializer>(cid: &Cid, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&cid.to_string())
}

/// What we remember about a pinned root.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinInfo {
    pub size: u64,
    pub dag_size: u64,
    pub options: AddOptions,
    /// Unix seconds.
    pub pinned_at: u64,
    /// File name it was added from, if any (for deal manifests).
    #[serde(default)]
    pub name: Option<String>,
}

/// Why a root is pinned, which decides when garbage collection may take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinKind {
    /// Pinned locally: kept until someone unpins it (`comine store add`, `store pin`).
    Keep,
    /// A rendition the daemon stored: kept for `[store] retain_days` after it was pinned, and
    /// for as long as it waits for the Kubo node or sits in a deal that is not active yet.
    Retain,
}

impl PinKind {
    fn as_str(self) -> &'static str {
        match self {
            PinKind::Keep => "keep",
            PinKind::Retain => "retain",
        }
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The store's schema in the daemon's database. Append steps; never edit a released one.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sql: "
CREATE TABLE store_blocks (
    id INTEGER PRIMARY KEY,
    mh BLOB NOT NULL UNIQUE,
    size INTEGER NOT NULL
);
CREATE TABLE store_roots (
    id INTEGER PRIMARY KEY,
    cid BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);
CREATE TABLE store_refs (
    root INTEGER NOT NULL REFERENCES store_roots (id) ON DELETE CASCADE,
    block INTEGER NOT NULL REFERENCES store_blocks (id),
    PRIMARY KEY (root, block)
) WITHOUT ROWID;
CREATE INDEX store_refs_block ON store_refs (block);
CREATE TABLE store_pins (
    cid BLOB PRIMARY KEY,
    kind TEXT NOT NULL,
    pinned_at INTEGER NOT NULL,
    info TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE store_push_queue (
    cid BLOB PRIMARY KEY,
    enqueued_at INTEGER NOT NULL,
    entry TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE store_batches (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    payload_cid BLOB,
    record TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE store_batch_items (
    batch TEXT NOT NULL REFERENCES store_batches (id) ON DELETE CASCADE,
    cid BLOB NOT NULL,
    PRIMARY KEY (batch, cid)
) WITHOUT ROWID;
CREATE INDEX store_batch_items_cid ON store_batch_items (cid);
",
}];

/// Excludes adds (shared) from garbage collection (exclusive), within this process
/// (writer-preferring, so a GC is not starved by a stream of adds) and across processes (an
/// `flock` on `<store>/gc.lock`).
struct GcLock {
    rw: RwLock<()>,
    path: PathBuf,
}

fn gc_lock_for(dir: &Path) -> Arc<GcLock> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Weak<GcLock>>>> = OnceLock::new();
    let mut map = LOCKS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(l) = map.get(dir).and_then(Weak::upgrade) {
        return l;
    }
    let lock = Arc::new(GcLock {
        rw: RwLock::new(()),
        path: dir.join("gc.lock"),
    });
    map.retain(|_, w| w.strong_count() > 0);
    map.insert(dir.to_path_buf(), Arc::downgrade(&lock));
    lock
}

/// Holds an `flock` until dropped.
pub(crate) struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    fn take(path: &Path, exclusive: bool) -> Result<FileLock, StoreError> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        loop {
            // SAFETY: flock only reads the descriptor, which `f` keeps open.
            if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
                return Ok(FileLock { _file: f });
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(StoreError::io(format!("locking {}", path.display()), e));
            }
        }
    }
}

/// The embedded blockstore with its pin set, push queue and deal batches.
#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    db: Db,
    blocks: Arc<blocks::Blockstore>,
    gc_lock: Arc<GcLock>,
}

/// Collects an add's blocks: written as files now, indexed when the add commits.
struct StoreSink<'a> {
    writer: blocks::BatchWriter<'a>,
    seen: HashSet<Vec<u8>>,
    index: Vec<(Vec<u8>, u64)>,
}

impl importer::BlockSink for StoreSink<'_> {
    fn put(&mut self, cid: &Cid, block: &[u8]) -> Result<(), StoreError> {
        let mh = cid.hash().to_bytes();
        if self.seen.insert(mh.clone()) {
            self.writer
                .put(&mh, block)
                .map_err(|e| StoreError::io("writing a block to the store", e))?;
            self.index.push((mh, block.len() as u64));
        }
        Ok(())
    }
}

/// Records `blocks` and, with a root, the root and its references. Returns the root's id.
pub(crate) fn index_blocks(
    c: &Connection,
    root: Option<&Cid>,
    blocks: &[(Vec<u8>, u64)],
) -> rusqlite::Result<Option<i64>> {
    let root_id: Option<i64> = match root {
        Some(cid) => Some(
            c.prepare_cached(
                "INSERT INTO store_roots (cid, created_at) VALUES (?1, ?2)
             ON CONFLICT (cid) DO UPDATE SET cid = excluded.cid RETURNING id",
            )?
            .query_row(params![cid.to_bytes(), db::to_sql_u64(now_secs())], |r| {
                r.get(0)
            })?,
        ),
        None => None,
    };
    let mut block_stmt = c.prepare_cached(
        "INSERT INTO store_blocks (mh, size) VALUES (?1, ?2)
         ON CONFLICT (mh) DO UPDATE SET size = excluded.size RETURNING id",
    )?;
    let mut ref_stmt =
        c.prepare_cached("INSERT OR IGNORE INTO store_refs (root, block) VALUES (?1, ?2)")?;
    for (mh, size) in blocks {
        let id: i64 = block_stmt.query_row(params![mh, db::to_sql_u64(*size)], |r| r.get(0))?;
        if let Some(root) = root_id {
            ref_stmt.execute(params![root, id])?;
        }
    }
    Ok(root_id)
}

/// Pins `cid`: a keep pin is never turned into a retention pin; re-pinning refreshes the time.
pub(crate) fn upsert_pin(
    c: &Connection,
    cid: &Cid,
    kind: PinKind,
    info: &PinInfo,
) -> Result<(), StoreError> {
    let json =
        serde_json::to_string(info).map_err(|e| StoreError::io("encoding a pin", e.into()))?;
    c.prepare_cached(
        "INSERT INTO store_pins (cid, kind, pinned_at, info) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (cid) DO UPDATE SET
             kind = CASE WHEN store_pins.kind = 'keep' THEN 'keep' ELSE excluded.kind END,
             pinned_at = excluded.pinned_at, info = excluded.info",
    )?
    .execute(params![
        cid.to_bytes(),
        kind.as_str(),
        db::to_sql_u64(info.pinned_at),
        json
    ])?;
    Ok(())
}

fn verify(cid: &Cid, block: &[u8]) -> Result<(), StoreError> {
    if cid.hash().code() != SHA2_256 {
        return Err(StoreError::Unsupported {
            cid: *cid,
            reason: "only sha2-256 multihashes are stored".into(),
        });
    }
    if Sha256::digest(block).as_slice() != cid.hash().digest() {
        return Err(StoreError::Corrupt { cid: *cid });
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the store under `<data_dir>/store/`, its index in
    /// `<data_dir>/comine.db`. A sled store left by an earlier release (`<data_dir>/store/db`)
    /// is migrated first: blocks re-hashed into files, index copied, verified, and the sled
    /// copy renamed to `db.sled-migrated`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let dir = data_dir.join("store");
        crate::paths::create_private_dir(&dir).map_err(|e| {
            StoreError::io(format!("creating the store directory {}", dir.display()), e)
        })?;
        let db = Db::open(data_dir)?;
        db.migrate("store", MIGRATIONS)?;
        let blocks = blocks::Blockstore::open(&dir.join("blocks")).map_err(|e| {
            StoreError::io(
                format!(
                    "opening the block directory {}",
                    dir.join("blocks").display()
                ),
                e,
            )
        })?;
        let store = Store {
            gc_lock: gc_lock_for(&dir),
            dir,
            db,
            blocks: Arc::new(blocks),
        };
        sled_import::import_if_present(&store)?;
        Ok(store)
    }

    /// `<data_dir>/store`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database the store indexes its blocks in.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The flatfs directory holding the block files.
    pub fn blocks_dir(&self) -> &Path {
        self.blocks.root()
    }

    /// Shared side of the GC lock: blocks being written or linked cannot be collected.
    pub(crate) fn hold_off_gc(
        &self,
    ) -> Result<(std::sync::RwLockReadGuard<'_, ()>, FileLock), StoreError> {
        let r = self.gc_lock.rw.read().unwrap_or_else(|e| e.into_inner());
        let f = FileLock::take(&self.gc_lock.path, false)?;
        Ok((r, f))
    }

    pub(crate) fn lock_for_gc(
        &self,
    ) -> Result<(std::sync::RwLockWriteGuard<'_, ()>, FileLock), StoreError> {
        let w = self.gc_lock.rw.write().unwrap_or_else(|e| e.into_inner());
        let f = FileLock::take(&self.gc_lock.path, true)?;
        Ok((w, f))
    }

    pub(crate) fn blockstore(&self) -> &blocks::Blockstore {
        &self.blocks
    }

    /// Imports a file, stores its blocks and pins the root (a keep pin).
    pub fn add_file(&self, path: &Path, opts: &AddOptions) -> Result<AddResult, StoreError> {
        self.add_file_with(path, opts, PinKind::Keep)
    }

    /// [`Store::add_file`] with the kind of pin to take (the daemon's renditions: `Retain`).
    pub fn add_file_with(
        &self,
        path: &Path,
        opts: &AddOptions,
        kind: PinKind,
    ) -> Result<AddResult, StoreError> {
        let file = std::fs::File::open(path).map_err(|e| {
            StoreError::io(format!("opening {} (check the path)", path.display()), e)
        })?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        self.add_reader_with(
            io::BufReader::with_capacity(CHUNK_SIZE, file),
            opts,
            name,
            kind,
        )
    }

    /// Imports in-memory bytes, stores its blocks and pins the root.
    pub fn add_bytes(&self, data: &[u8], opts: &AddOptions) -> Result<AddResult, StoreError> {
        self.add_reader(data, opts, None)
    }

    /// Imports any reader, stores its blocks and pins the root.
    pub fn add_reader(
        &self,
        reader: impl Read,
        opts: &AddOptions,
        name: Option<String>,
    ) -> Result<AddResult, StoreError> {
        self.add_reader_with(reader, opts, name, PinKind::Keep)
    }

    /// Imports any reader with the given pin kind. Durable when it returns: the blocks are
    /// synced to disk before the transaction that indexes and pins them commits.
    pub fn add_reader_with(
        &self,
        mut reader: impl Read,
        opts: &AddOptions,
        name: Option<String>,
        kind: PinKind,
    ) -> Result<AddResult, StoreError> {
        opts.validate()?;
        let _gc = self.hold_off_gc()?;
        let mut sink = StoreSink {
            writer: self.blocks.writer(),
            seen: HashSet::new(),
            index: Vec::new(),
        };
        let imported = importer::import(&mut reader, opts, &mut sink)?;
        let StoreSink { writer, index, .. } = sink;
        writer
            .commit()
            .map_err(|e| StoreError::io("syncing the new blocks to disk", e))?;
        let info = PinInfo {
            size: imported.size,
            dag_size: imported.dag_size,
            options: *opts,
            pinned_at: now_secs(),
            name,
        };
        let root = imported.cid;
        self.db.write(move |c| {
            index_blocks(c, Some(&root), &index)?;
            upsert_pin(c, &root, kind, &info)
        })?;
        Ok(AddResult {
            cid: imported.cid,
            size: imported.size,
            dag_size: imported.dag_size,
            blocks: imported.blocks,
        })
    }

    /// Pins a root whose whole DAG is present (every block is read and verified). An existing
    /// retention pin becomes a keep pin.
    pub fn pin(&self, cid: &Cid) -> Result<PinInfo, StoreError> {
        let _gc = self.hold_off_gc()?;
        let mut index = Vec::new();
        let (size, dag_size) = self.walk(cid, &mut |c, b| {
            index.push((c.hash().to_bytes(), b.len() as u64));
            Ok(())
        })?;
        let info = match self.pin_info(cid)? {
            Some(info) => info,
            None => PinInfo {
                size,
                dag_size,
                options: AddOptions {
                    cid_version: cid.version() as u8,
                    raw_leaves: None,
                },
                pinned_at: now_secs(),
                name: None,
            },
        };
        let (root, out) = (*cid, info.clone());
        self.db.write(move |c| {
            index_blocks(c, Some(&root), &index)?;
            upsert_pin(c, &root, PinKind::Keep, &info)
        })?;
        Ok(out)
    }

    /// Removes a pin; the blocks stay until garbage collection finds nothing else needs them.
    pub fn unpin(&self, cid: &Cid) -> Result<bool, StoreError> {
        let key = cid.to_bytes();
        self.db.write(move |c| {
            Ok::<_, StoreError>(c.execute("DELETE FROM store_pins WHERE cid = ?1", [key])? > 0)
        })
    }

    pub fn pin_info(&self, cid: &Cid) -> Result<Option<PinInfo>, StoreError> {
        Ok(self.pin_with_kind(cid)?.map(|(_, i)| i))
    }

    /// The pin's kind and info, if pinned.
    pub fn pin_with_kind(&self, cid: &Cid) -> Result<Option<(PinKind, PinInfo)>, StoreError> {
        let key = cid.to_bytes();
        self.db.read(|c| {
            let row: Option<(String, String)> = c
                .prepare_cached("SELECT kind, info FROM store_pins WHERE cid = ?1")?
                .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            row.map(|(k, i)| parse_pin(cid, &k, &i)).transpose()
        })
    }

    /// All pinned roots, oldest first.
    pub fn pins(&self) -> Result<Vec<(Cid, PinInfo)>, StoreError> {
        Ok(self
            .pins_with_kind()?
            .into_iter()
            .map(|(c, _, i)| (c, i))
            .collect())
    }

    /// All pinned roots with their kind, oldest first.
    pub fn pins_with_kind(&self) -> Result<Vec<(Cid, PinKind, PinInfo)>, StoreError> {
        self.db.read(|c| {
            let mut stmt =
                c.prepare_cached("SELECT cid, kind, info FROM store_pins ORDER BY pinned_at, cid")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (k, kind, info) = row?;
                let cid = Cid::try_from(&k[..]).map_err(|e| StoreError::BadRecord {
                    key: hex::encode(&k),
                    reason: e.to_string(),
                })?;
                let (kind, info) = parse_pin(&cid, &kind, &info)?;
                out.push((cid, kind, info));
            }
            Ok(out)
        })
    }

    /// Whether the block is stored (not verified; `get_block` verifies).
    pub fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        Ok(self.blocks.contains(&cid.hash().to_bytes()))
    }

    /// Reads a block and verifies it against its hash; a corrupt block is an error, never data.
    pub fn get_block(&self, cid: &Cid) -> Result<Vec<u8>, StoreError> {
        if cid.hash().code() != SHA2_256 {
            return Err(StoreError::Unsupported {
                cid: *cid,
                reason: "only sha2-256 multihashes are stored".into(),
            });
        }
        let block = self
            .blocks
            .read(&cid.hash().to_bytes())
            .map_err(|e| StoreError::io(format!("reading block {cid}"), e))?
            .ok_or(StoreError::NotFound { cid: *cid })?;
        if let Err(e) = verify(cid, &block) {
            tracing::error!(%cid, path = %self.blocks.path(&cid.hash().to_bytes()).display(), "corrupt block in the embedded store");
            return Err(e);
        }
        Ok(block)
    }

    /// Stores a block after checking it hashes to `cid` (for imports from CAR/Kubo). It is
    /// not pinned: pin its root once the DAG is complete, or garbage collection takes it.
    pub fn put_block(&self, cid: &Cid, block: &[u8]) -> Result<(), StoreError> {
        verify(cid, block)?;
        let _gc = self.hold_off_gc()?;
        let mh = cid.hash().to_bytes();
        let mut w = self.blocks.writer();
        w.put(&mh, block)
            .map_err(|e| StoreError::io("writing a block to the store", e))?;
        w.commit()
            .map_err(|e| StoreError::io("syncing a block to disk", e))?;
        let index = vec![(mh, block.len() as u64)];
        self.db
            .write(move |c| Ok::<_, StoreError>(index_blocks(c, None, &index).map(|_| ())?))
    }

    /// Streams the file behind `cid` (blocks verified as they are read).
    pub fn cat(&self, cid: &Cid) -> Result<CatReader, StoreError> {
        // Fail early on a missing or corrupt root rather than on the first read.
        self.get_block(cid)?;
        Ok(CatReader {
            store: self.clone(),
            stack: vec![*cid],
            buf: Vec::new(),
            pos: 0,
        })
    }

    /// Depth-first pre-order walk of the DAG under `root`, calling `visit` once per distinct
    /// block. Returns (file bytes, cumulative DAG bytes).
    pub fn walk(&self, root: &Cid, visit: &mut BlockVisitor<'_>) -> Result<(u64, u64), StoreError> {
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![*root];
        let (mut size, mut dag_size) = (0u64, 0u64);
        while let Some(cid) = stack.pop() {
            if !seen.insert(cid) {
                continue;
            }
            let block = self.get_block(&cid)?;
            visit(&cid, &block)?;
            dag_size += block.len() as u64;
            match cid.codec() {
                RAW => size += block.len() as u64,
                DAG_PB => {
                    let node = pb::decode_node(&block)
                        .map_err(|source| StoreError::BadBlock { cid, source })?;
                    if let Some(data) = &node.data {
                        if let Ok(fs) = pb::decode_unixfs(data) {
                            size += fs.data.map_or(0, |d| d.len() as u64);
                        }
                    }
                    stack.extend(node.links.iter().rev().map(|l| l.cid));
                }
                other => {
                    return Err(StoreError::Unsupported {
                        cid,
                        reason: format!("codec 0x{other:x} is not dag-pb or raw"),
                    })
                }
            }
        }
        Ok((size, dag_size))
    }

    /// Writes a CAR v1 of the whole DAG under `root` to `out`.
    pub fn car_export(&self, root: &Cid, out: &mut impl io::Write) -> Result<u64, StoreError> {
        car::write_car(self, &[*root], out)
    }

    /// Builds a UnixFS directory node linking `entries` (name, root), stores it, and returns
    /// its CID. Deal batches use it to give one payload root to several renditions; the
    /// directory's root references every block of every entry, so garbage collection keeps
    /// them all while the directory is live.
    pub fn put_directory(&self, entries: &[(String, Cid, u64)]) -> Result<Cid, StoreError> {
        let mut links: Vec<pb::PbLink> = entries
            .iter()
            .map(|(n, c, t)| pb::PbLink {
                cid: *c,
                name: n.clone(),
                tsize: *t,
            })
            .collect();
        links.sort_by(|a, b| a.name.cmp(&b.name));
        let data = pb::encode_unixfs(UNIXFS_DIRECTORY, None, None, &[]);
        let bytes = pb::encode_node(&links, Some(&data));
        let cid = importer::block_cid(1, DAG_PB, &bytes);
        let _gc = self.hold_off_gc()?;
        let mh = cid.hash().to_bytes();
        let mut w = self.blocks.writer();
        w.put(&mh, &bytes)
            .map_err(|e| StoreError::io("writing a block to the store", e))?;
        w.commit()
            .map_err(|e| StoreError::io("syncing a block to disk", e))?;
        // Entries the index knows share their references; others are walked (and verified).
        let mut walked = Vec::new();
        let mut known = Vec::new();
        for (_, child, _) in entries {
            let present: Option<i64> = {
                let key = child.to_bytes();
                self.db.read(|c| {
                    c.prepare_cached("SELECT id FROM store_roots WHERE cid = ?1")?
                        .query_row([key], |r| r.get(0))
                        .optional()
                        .map_err(StoreError::from)
                })?
            };
            match present {
                Some(id) => known.push(id),
                None => {
                    self.walk(child, &mut |c, b| {
                        walked.push((c.hash().to_bytes(), b.len() as u64));
                        Ok(())
                    })?;
                }
            }
        }
        walked.push((mh, bytes.len() as u64));
        self.db.write(move |c| {
            let Some(root) = index_blocks(c, Some(&cid), &walked)? else {
                return Ok::<_, StoreError>(());
            };
            for child in known {
                c.execute(
                    "INSERT OR IGNORE INTO store_refs (root, block)
                     SELECT ?1, block FROM store_refs WHERE root = ?2",
                    params![root, child],
                )?;
            }
            Ok(())
        })?;
        Ok(cid)
    }

    /// Kept for callers written for sled: every write is durable when it returns.
    pub fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Test hook: overwrite a block's stored bytes without verification (corruption tests).
    #[doc(hidden)]
    pub fn corrupt_block_for_tests(&self, cid: &Cid, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.blocks.path(&cid.hash().to_bytes());
        std::fs::write(&path, bytes)
            .map_err(|e| StoreError::io(format!("overwriting {}", path.display()), e))
    }
}

fn parse_pin(cid: &Cid, kind: &str, info: &str) -> Result<(PinKind, PinInfo), StoreError> {
    let bad = |reason: String| StoreError::BadRecord {
        key: format!("pin {cid}"),
        reason,
    };
    let kind = match kind {
        "keep" => PinKind::Keep,
        "retain" => PinKind::Retain,
        other => return Err(bad(format!("unknown pin kind {other:?}"))),
    };
    let info = serde_json::from_str(info).map_err(|e| bad(e.to_string()))?;
    Ok((kind, info))
}

/// Streaming reader over a UnixFS file DAG; each block is verified when it is loaded.
pub struct CatReader {
    store: Store,
    stack: Vec<Cid>,
    buf: Vec<u8>,
    pos: usize,
}

impl CatReader {
    fn load_next(&mut self) -> Result<bool, StoreError> {
        while let Some(cid) = self.stack.pop() {
            let block = self.store.get_block(&cid)?;
            self.pos = 0;
            match cid.codec() {
                RAW => {
                    self.buf = block;
                    return Ok(true);
                }
                DAG_PB => {
                    let node = pb::decode_node(&block)
                        .map_err(|source| StoreError::BadBlock { cid, source })?;
                    let fs = match &node.data {
                        Some(d) => pb::decode_unixfs(d)
                            .map_err(|source| StoreError::BadBlock { cid, source })?,
                        None => {
                            return Err(StoreError::BadBlock {
                                cid,
                                source: pb::PbError("dag-pb node without UnixFS data"),
                            })
                        }
                    };
                    if fs.kind != UNIXFS_FILE && fs.kind != UNIXFS_RAW {
                        return Err(StoreError::NotAFile { cid });
                    }
                    self.stack.extend(node.links.iter().rev().map(|l| l.cid));
                    if let Some(d) = fs.data.filter(|d| !d.is_empty()) {
                        self.buf = d;
                        return Ok(true);
                    }
                }
                other => {
                    return Err(StoreError::Unsupported {
                        cid,
                        reason: format!("codec 0x{other:x} is not dag-pb or raw"),
                    })
                }
            }
        }
        Ok(false)
    }
}

impl Read for CatReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.buf.len() {
            match self.load_next() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_errors_say_so() {
        let e = StoreError::io(
            "writing the CAR",
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(e.to_string().contains("disk is full"), "{e}");
        let e = StoreError::from(DbError::Sql(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            None,
        )));
        assert!(
            e.to_string()
                .contains("disk holding the data directory is full"),
            "{e}"
        );
        let e = StoreError::io("x", io::Error::from_raw_os_error(libc::ENOENT));
        assert!(!e.to_string().contains("disk is full"));
    }
}
