//! The daemon's boundary with the store and the scheduler, as two small traits.
//!
//! The real store (`src/store`) and scheduler (`src/sched` + `src/gpu`) are built on
//! other branches; the lead plugs them in behind [`RenditionStore`] and [`Admission`].
//! The implementations here are the minimal ones the daemon needs to run and be tested
//! alone, and are named so nobody mistakes them for the real thing:
//! - [`FileStore`]: PLACEHOLDER content store, one file per CIDv1 (raw, sha2-256) —
//!   not UnixFS, so its CIDs differ from Kubo's for the same bytes;
//! - [`SemaphoreAdmission`]: fixed concurrency on a tokio semaphore, no GPU telemetry.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Semaphore};

use crate::ledger::JobClass;
use crate::metrics::GpuSample;

// ---------------------------------------------------------------------------------
// Store seam
// ---------------------------------------------------------------------------------

/// Where a rendition landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredRef {
    pub cid: String,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not a CID this store knows")]
    BadCid(String),
    #[error("store error: {0}")]
    Other(String),
}

pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

/// A readable stored object.
pub struct Content {
    pub len: Option<u64>,
    pub stream: ByteStream,
}

/// Content-addressed storage of renditions (the real one: `store::Store` + Kubo).
pub trait RenditionStore: Send + Sync + 'static {
    /// Adds the file at `path` (the caller deletes it afterwards) and returns its CID.
    /// Must be durable when it returns: the ledger then records the job as stored.
    fn put<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<StoredRef, StoreError>>;
    /// Streams stored content; `Ok(None)` when the CID is unknown.
    fn open<'a>(&'a self, cid: &'a str) -> BoxFuture<'a, Result<Option<Content>, StoreError>>;
    /// Backend name and state for `/v1/status` (push queue, errors, …).
    fn describe(&self) -> serde_json::Value;
}

/// PLACEHOLDER store: `<dir>/<cid>` files, CIDv1 raw + sha2-256. The lead replaces it
/// with the real UnixFS store at merge.
pub struct FileStore {
    dir: PathBuf,
}

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn base32_lower(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 8 / 5 + 1);
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | b as u32;
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// CIDv1, codec raw (0x55), multihash sha2-256, multibase base32 (`b…`).
pub fn raw_cid(digest: &[u8; 32]) -> String {
    let mut bytes = vec![0x01, 0x55, 0x12, 0x20];
    bytes.extend_from_slice(digest);
    format!("b{}", base32_lower(&bytes))
}

fn valid_cid(cid: &str) -> bool {
    cid.len() == 59 && cid.starts_with("bafkrei") && cid.bytes().all(|c| BASE32.contains(&c))
}

impl FileStore {
    pub fn open(dir: &Path) -> std::io::Result<FileStore> {
        std::fs::create_dir_all(dir)?;
        Ok(FileStore {
            dir: dir.to_path_buf(),
        })
    }

    fn put_blocking(&self, path: &Path) -> Result<StoredRef, StoreError> {
        let io = |p: &Path| {
            let path = p.display().to_string();
            move |source| StoreError::Io { path, source }
        };
        let mut file = std::fs::File::open(path).map_err(io(path))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let mut len = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(io(path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        let cid = raw_cid(&hasher.finalize().into());
        let target = self.dir.join(&cid);
        if !target.exists() {
            // Hard link when on the same file system (no copy), else copy; then fsync so
            // the object is durable before the ledger says "stored".
            let tmp = self.dir.join(format!(".{cid}.tmp"));
            let _ = std::fs::remove_file(&tmp);
            if std::fs::hard_link(path, &tmp).is_err() {
                std::fs::copy(path, &tmp).map_err(io(&tmp))?;
            }
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io(&tmp))?;
            std::fs::rename(&tmp, &target).map_err(io(&target))?;
            sync_dir(&self.dir).map_err(io(&self.dir))?;
        }
        Ok(StoredRef { cid, bytes: len })
    }
}

/// fsync a directory so a rename or create in it survives a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `data` to `path` durably (temp file, fsync, rename, fsync dir).
pub fn write_durable(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

impl RenditionStore for FileStore {
    fn put<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<StoredRef, StoreError>> {
        Box::pin(async move {
            let me = FileStore {
                dir: self.dir.clone(),
            };
            let path = path.to_path_buf();
            tokio::task::spawn_blocking(move || me.put_blocking(&path))
                .await
                .map_err(|e| StoreError::Other(format!("store task failed: {e}")))?
        })
    }

    fn open<'a>(&'a self, cid: &'a str) -> BoxFuture<'a, Result<Option<Content>, StoreError>> {
        Box::pin(async move {
            if !valid_cid(cid) {
                return Err(StoreError::BadCid(cid.to_string()));
            }
            let path = self.dir.join(cid);
            let file = match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(source) => {
                    return Err(StoreError::Io {
                        path: path.display().to_string(),
                        source,
                    })
                }
            };
            let len = file.metadata().await.ok().map(|m| m.len());
            let stream = tokio_util::io::ReaderStream::new(file).boxed();
            Ok(Some(Content { len, stream }))
        })
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "backend": "filestore-placeholder",
            "dir": self.dir.display().to_string(),
        })
    }
}

// ---------------------------------------------------------------------------------
// Scheduler seam
// ---------------------------------------------------------------------------------

/// Held for as long as a job runs; dropping it gives the capacity back.
pub struct Permit(#[allow(dead_code)] Box<dyn Send + Sync>);

impl Permit {
    pub fn new(guard: impl Send + Sync + 'static) -> Permit {
        Permit(Box::new(guard))
    }
}

/// The scheduler said "not now".
#[derive(Clone, Debug)]
pub struct Rejected {
    pub retry_after: Duration,
    pub reason: String,
}

/// What `/v1/status` and `/metrics` show of the scheduler.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SchedulerStatus {
    pub backend: String,
    pub devices: Vec<GpuSample>,
    /// The scheduler's recent decisions, newest last, as data.
    pub decisions: Vec<serde_json::Value>,
    /// Sealing task types by state (e.g. "enabled": 3, "disabled": 1).
    pub sealing: BTreeMap<String, i64>,
}

/// Admission control (the real one: `sched::Scheduler::admit`).
pub trait Admission: Send + Sync + 'static {
    /// Admit one job of `class` needing `pixels_per_sec` now, or say when to retry.
    fn try_admit(&self, class: JobClass, pixels_per_sec: f64) -> Result<Permit, Rejected>;
    /// Concurrent jobs allowed now; changes as the scheduler steers capacity.
    fn capacity(&self) -> watch::Receiver<usize>;
    fn status(&self) -> SchedulerStatus;
    /// On shutdown: re-enable anything the scheduler disabled (sealing tasks).
    fn restore(&self) -> BoxFuture<'_, ()>;
}

/// Fixed concurrency on a semaphore; no telemetry. Used when no scheduler is wired.
pub struct SemaphoreAdmission {
    sem: Arc<Semaphore>,
    capacity: watch::Sender<usize>,
    decisions: Mutex<VecDeque<serde_json::Value>>,
}

impl SemaphoreAdmission {
    pub fn new(n: usize) -> SemaphoreAdmission {
        SemaphoreAdmission {
            sem: Arc::new(Semaphore::new(n)),
            capacity: watch::channel(n).0,
            decisions: Mutex::new(VecDeque::new()),
        }
    }

    /// Grows or shrinks capacity (shrinking takes effect as running jobs finish).
    pub fn set_capacity(&self, n: usize) {
        let cur = *self.capacity.borrow();
        if n > cur {
            self.sem.add_permits(n - cur);
        } else {
            self.sem.forget_permits(cur - n);
        }
        self.capacity.send_replace(n);
    }

    fn record(&self, v: serde_json::Value) {
        if let Ok(mut d) = self.decisions.lock() {
            if d.len() >= 32 {
                d.pop_front();
            }
            d.push_back(v);
        }
    }
}

impl Admission for SemaphoreAdmission {
    fn try_admit(&self, class: JobClass, pixels_per_sec: f64) -> Result<Permit, Rejected> {
        let at = crate::ledger::time::now_ms();
        match self.sem.clone().try_acquire_owned() {
            Ok(p) => {
                self.record(serde_json::json!({"at_ms": at, "class": class, "pixels_per_sec": pixels_per_sec, "decision": "admit"}));
                Ok(Permit::new(p))
            }
            Err(_) => Err(Rejected {
                retry_after: Duration::from_millis(200),
                reason: "all workers busy".into(),
            }),
        }
    }

    fn capacity(&self) -> watch::Receiver<usize> {
        self.capacity.subscribe()
    }

    fn status(&self) -> SchedulerStatus {
        SchedulerStatus {
            backend: "fixed-concurrency".into(),
            devices: Vec::new(),
            decisions: self
                .decisions
                .lock()
                .map(|d| d.iter().cloned().collect())
                .unwrap_or_default(),
            sealing: BTreeMap::new(),
        }
    }

    fn restore(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_cid_matches_ipfs() {
        // `ipfs add --raw-leaves --cid-version 1` of the empty file.
        let d: [u8; 32] = Sha256::digest(b"").into();
        assert_eq!(
            raw_cid(&d),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
        assert!(valid_cid(&raw_cid(&d)));
        assert!(!valid_cid("../../etc/passwd"));
    }

    #[tokio::test]
    async fn filestore_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(&dir.path().join("s")).unwrap();
        let src = dir.path().join("x.ts");
        std::fs::write(&src, b"hello").unwrap();
        let r = store.put(&src).await.unwrap();
        assert_eq!(r.bytes, 5);
        let mut c = store.open(&r.cid).await.unwrap().unwrap();
        let mut got = Vec::new();
        while let Some(chunk) = c.stream.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, b"hello");
    }

    #[test]
    fn semaphore_admission_follows_capacity() {
        let a = SemaphoreAdmission::new(1);
        let p = a.try_admit(JobClass::Batch, 1.0).ok().unwrap();
        assert!(a.try_admit(JobClass::Batch, 1.0).is_err());
        a.set_capacity(2);
        assert_eq!(*a.capacity().borrow(), 2);
        assert!(a.try_admit(JobClass::Batch, 1.0).is_ok());
        drop(p);
    }
}
