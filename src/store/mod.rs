//! Content-addressed storage for renditions: an embedded UnixFS blockstore whose CIDs match
//! Kubo's `ipfs add`, a Kubo RPC backend with a persistent push queue, CAR v1 export, piece CID
//! (CommP) and Boost offline-deal batches.
//!
//! Layout under `<data_dir>/store/`: one sled database with the trees `blocks` (multihash →
//! block bytes), `pins` (CID → [`PinInfo`]), `push_queue` and `batches`; CAR files of deal
//! batches live in `<data_dir>/store/deals/`.

pub mod car;
pub mod cli;
pub mod commp;
pub mod deals;
pub mod free_space;
pub mod gateway;
pub mod importer;
pub mod kubo;
pub mod pb;
pub mod queue;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cid::Cid;
use sha2::{Digest, Sha256};

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
    #[error("embedded blockstore: {source}{}", sled_hint(.source))]
    Db {
        #[from]
        source: sled::Error,
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
}

fn enospc_hint(e: &io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == io::ErrorKind::StorageFull {
        " (the disk is full: free some space and retry; nothing already stored was lost)"
    } else {
        ""
    }
}

fn sled_hint(e: &sled::Error) -> &'static str {
    match e {
        sled::Error::Io(io) => enospc_hint(io),
        _ => "",
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

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The embedded blockstore with its pin set, push queue and deal batches.
#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    db: sled::Db,
    blocks: sled::Tree,
    pins: sled::Tree,
    pub(crate) queue: sled::Tree,
    pub(crate) batches: sled::Tree,
}

/// Blocks are written in batches of about this many bytes (fewer sled transactions).
const WRITE_BATCH_BYTES: usize = 8 << 20;

struct StoreSink<'a> {
    store: &'a Store,
    batch: sled::Batch,
    pending: usize,
    dirty: bool,
}

impl StoreSink<'_> {
    fn flush(&mut self) -> Result<(), StoreError> {
        if self.dirty {
            self.store
                .blocks
                .apply_batch(std::mem::take(&mut self.batch))?;
            self.pending = 0;
            self.dirty = false;
        }
        Ok(())
    }
}

impl importer::BlockSink for StoreSink<'_> {
    fn put(&mut self, cid: &Cid, block: &[u8]) -> Result<(), StoreError> {
        self.batch.insert(cid.hash().to_bytes(), block);
        self.pending += block.len();
        self.dirty = true;
        if self.pending >= WRITE_BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }
}

impl Store {
    /// Opens (or creates) the store under `<data_dir>/store/`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        let dir = data_dir.join("store");
        crate::paths::create_private_dir(&dir).map_err(|e| {
            StoreError::io(format!("creating the store directory {}", dir.display()), e)
        })?;
        let db = sled::Config::new().path(dir.join("db")).open().map_err(|e| match e {
            sled::Error::Io(io) if io.kind() == io::ErrorKind::WouldBlock || io.raw_os_error() == Some(libc::EAGAIN) => {
                StoreError::io(
                    format!("opening {}: another comine process holds the store; stop it or use --data-dir", dir.display()),
                    io,
                )
            }
            other => StoreError::Db { source: other },
        })?;
        Ok(Store {
            blocks: db.open_tree("blocks")?,
            pins: db.open_tree("pins")?,
            queue: db.open_tree("push_queue")?,
            batches: db.open_tree("batches")?,
            db,
            dir,
        })
    }

    /// `<data_dir>/store`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Imports a file, stores its blocks and pins the root.
    pub fn add_file(&self, path: &Path, opts: &AddOptions) -> Result<AddResult, StoreError> {
        let file = std::fs::File::open(path).map_err(|e| {
            StoreError::io(format!("opening {} (check the path)", path.display()), e)
        })?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        self.add_reader(io::BufReader::with_capacity(CHUNK_SIZE, file), opts, name)
    }

    /// Imports in-memory bytes, stores its blocks and pins the root.
    pub fn add_bytes(&self, data: &[u8], opts: &AddOptions) -> Result<AddResult, StoreError> {
        self.add_reader(data, opts, None)
    }

    /// Imports any reader, stores its blocks and pins the root.
    pub fn add_reader(
        &self,
        mut reader: impl Read,
        opts: &AddOptions,
        name: Option<String>,
    ) -> Result<AddResult, StoreError> {
        let mut sink = StoreSink {
            store: self,
            batch: sled::Batch::default(),
            pending: 0,
            dirty: false,
        };
        let imported = importer::import(&mut reader, opts, &mut sink)?;
        sink.flush()?;
        let info = PinInfo {
            size: imported.size,
            dag_size: imported.dag_size,
            options: *opts,
            pinned_at: now_secs(),
            name,
        };
        self.put_pin(&imported.cid, &info)?;
        // Durable before we report success: a crash after this loses nothing.
        self.db.flush()?;
        Ok(AddResult {
            cid: imported.cid,
            size: imported.size,
            dag_size: imported.dag_size,
            blocks: imported.blocks,
        })
    }

    fn put_pin(&self, cid: &Cid, info: &PinInfo) -> Result<(), StoreError> {
        let value =
            serde_json::to_vec(info).map_err(|e| StoreError::io("encoding pin", e.into()))?;
        self.pins.insert(cid.to_bytes(), value)?;
        Ok(())
    }

    /// Pins a root whose whole DAG is present (every block is read and verified).
    pub fn pin(&self, cid: &Cid) -> Result<PinInfo, StoreError> {
        if let Some(info) = self.pin_info(cid)? {
            return Ok(info);
        }
        let (size, dag_size) = self.walk(cid, &mut |_, _| Ok(()))?;
        let options = AddOptions {
            cid_version: cid.version() as u8,
            raw_leaves: None,
        };
        let info = PinInfo {
            size,
            dag_size,
            options,
            pinned_at: now_secs(),
            name: None,
        };
        self.put_pin(cid, &info)?;
        self.db.flush()?;
        Ok(info)
    }

    /// Removes a pin (blocks stay until a future GC).
    pub fn unpin(&self, cid: &Cid) -> Result<bool, StoreError> {
        Ok(self.pins.remove(cid.to_bytes())?.is_some())
    }

    pub fn pin_info(&self, cid: &Cid) -> Result<Option<PinInfo>, StoreError> {
        match self.pins.get(cid.to_bytes())? {
            Some(v) => Ok(serde_json::from_slice(&v).ok()),
            None => Ok(None),
        }
    }

    /// All pinned roots, oldest first.
    pub fn pins(&self) -> Result<Vec<(Cid, PinInfo)>, StoreError> {
        let mut out = Vec::new();
        for item in self.pins.iter() {
            let (k, v) = item?;
            if let (Ok(cid), Ok(info)) =
                (Cid::try_from(&k[..]), serde_json::from_slice::<PinInfo>(&v))
            {
                out.push((cid, info));
            }
        }
        out.sort_by_key(|(_, i)| i.pinned_at);
        Ok(out)
    }

    /// Whether the block is stored (not verified; `get_block` verifies).
    pub fn has(&self, cid: &Cid) -> Result<bool, StoreError> {
        Ok(self.blocks.contains_key(cid.hash().to_bytes())?)
    }

    /// Reads a block and verifies it against its hash; a corrupt block is an error, never data.
    pub fn get_block(&self, cid: &Cid) -> Result<sled::IVec, StoreError> {
        if cid.hash().code() != SHA2_256 {
            return Err(StoreError::Unsupported {
                cid: *cid,
                reason: "only sha2-256 multihashes are stored".into(),
            });
        }
        let block = self
            .blocks
            .get(cid.hash().to_bytes())?
            .ok_or(StoreError::NotFound { cid: *cid })?;
        if Sha256::digest(&block).as_slice() != cid.hash().digest() {
            tracing::error!(%cid, "corrupt block in the embedded store");
            return Err(StoreError::Corrupt { cid: *cid });
        }
        Ok(block)
    }

    /// Stores a block after checking it hashes to `cid` (for imports from CAR/Kubo).
    pub fn put_block(&self, cid: &Cid, block: &[u8]) -> Result<(), StoreError> {
        if cid.hash().code() != SHA2_256 || Sha256::digest(block).as_slice() != cid.hash().digest()
        {
            return Err(StoreError::Corrupt { cid: *cid });
        }
        self.blocks.insert(cid.hash().to_bytes(), block)?;
        Ok(())
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
    /// its CID. Deal batches use it to give one payload root to several renditions.
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
        self.blocks.insert(cid.hash().to_bytes(), bytes)?;
        Ok(cid)
    }

    /// Flushes everything to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Test hook: overwrite a block's stored bytes without verification (corruption tests).
    #[doc(hidden)]
    pub fn corrupt_block_for_tests(&self, cid: &Cid, bytes: &[u8]) -> Result<(), StoreError> {
        self.blocks.insert(cid.hash().to_bytes(), bytes)?;
        self.db.flush()?;
        Ok(())
    }
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
                    self.buf = block.to_vec();
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
        let e = StoreError::from(sled::Error::Io(io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(e.to_string().contains("disk is full"), "{e}");
        let e = StoreError::io("x", io::Error::from_raw_os_error(libc::ENOENT));
        assert!(!e.to_string().contains("disk is full"));
    }
}
