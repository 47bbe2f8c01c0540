//! The daemon's boundary with the store: [`RenditionStore`] (put a rendition, stream it back,
//! describe the backend), implemented by [`EmbeddedStore`] over `store::Store` (Kubo-identical
//! UnixFS CIDs) with an optional push queue to a Kubo node. Tests substitute their own.

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use serde::Serialize;

/// Where a rendition landed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredRef {
    pub cid: String,
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RenditionStoreError {
    #[error("store I/O error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not a CID this store knows")]
    BadCid(String),
    #[error("the disk holding the store is full: {0}")]
    DiskFull(String),
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
    fn put<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<StoredRef, RenditionStoreError>>;
    /// The CID [`RenditionStore::put`] would return for the file at `path`, storing nothing
    /// (a work receipt names the CIDs before the renditions are stored). `None` when the
    /// backend cannot tell in advance.
    fn cid_of<'a>(
        &'a self,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<Option<String>, RenditionStoreError>> {
        let _ = path;
        Box::pin(async { Ok(None) })
    }
    /// Streams stored content; `Ok(None)` when the CID is unknown.
    fn open<'a>(
        &'a self,
        cid: &'a str,
    ) -> BoxFuture<'a, Result<Option<Content>, RenditionStoreError>>;
    /// Backend name and state for `/v1/status` (push queue, errors, …).
    fn describe(&self) -> serde_json::Value;
}

/// The real rendition store: the embedded UnixFS blockstore (`store::Store`, Kubo-identical
/// CIDv0 with Kubo's default `ipfs add` options), every rendition retention-pinned (garbage
/// collection frees it after `[store] retain_days`, see [`EmbeddedStore::run_gc`]). With
/// `push`, each rendition is also queued for the Kubo node; `store::queue::run_pusher` drains
/// the queue with retries, so a node outage never fails a job. Every store call runs on the
/// blocking pool through the database's bounded `call`.
pub struct EmbeddedStore {
    store: crate::store::Store,
    opts: crate::store::AddOptions,
    push: Option<String>,
    /// The last garbage collection's report, for `/v1/status`.
    last_gc: Mutex<Option<crate::store::gc::GcReport>>,
}

impl EmbeddedStore {
    /// Opens `<data_dir>/store`. `push_to` is the Kubo API URL renditions are queued for.
    pub fn open(
        data_dir: &Path,
        push_to: Option<String>,
    ) -> Result<EmbeddedStore, RenditionStoreError> {
        let store = crate::store::Store::open(data_dir).map_err(other)?;
        Ok(EmbeddedStore {
            store,
            opts: crate::store::AddOptions::default(),
            push: push_to,
            last_gc: Mutex::new(None),
        })
    }

    /// Collects garbage every `every` (the first time after `first`) until `cancel`:
    /// renditions past `retain_days` that wait for nothing are unpinned and their blocks freed.
    /// Runs on the blocking pool; adds wait for it (see `store::gc`).
    pub async fn run_gc(
        self: Arc<Self>,
        retain_days: u64,
        first: Duration,
        every: Duration,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let mut wait = first;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = every;
            let store = self.store.clone();
            let opts = crate::store::gc::GcOptions::new(retain_days, false);
            match self.store.db().call(move || store.gc(opts)).await {
                Ok(Ok(report)) => {
                    tracing::info!(
                        bytes_freed = report.bytes_freed,
                        unpinned = report.unpinned,
                        blocks = report.blocks_freed,
                        "store garbage collection done"
                    );
                    *self.last_gc.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "store garbage collection failed; it runs again at the next interval")
                }
                Err(e) => tracing::error!(error = %e, "store garbage collection did not run"),
            }
        }
    }

    /// The underlying store (for the push queue task).
    pub fn inner(&self) -> &crate::store::Store {
        &self.store
    }
}

fn other(e: crate::store::StoreError) -> RenditionStoreError {
    let full = match &e {
        crate::store::StoreError::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
        crate::store::StoreError::Db { source } => source.is_disk_full(),
        _ => false,
    };
    if full {
        RenditionStoreError::DiskFull(e.to_string())
    } else {
        RenditionStoreError::Other(e.to_string())
    }
}

fn join_err(e: crate::db::DbError) -> RenditionStoreError {
    RenditionStoreError::Other(format!("store task failed: {e}"))
}

impl RenditionStore for EmbeddedStore {
    fn put<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<StoredRef, RenditionStoreError>> {
        Box::pin(async move {
            let (store, opts, push) = (self.store.clone(), self.opts, self.push.is_some());
            let path = path.to_path_buf();
            self.store
                .db()
                .call(move || {
                    // add_file_with syncs the blocks and commits the pin before it returns:
                    // durable. A retention pin: garbage collection frees it after retain_days.
                    let added = store
                        .add_file_with(&path, &opts, crate::store::PinKind::Retain)
                        .map_err(other)?;
                    if push {
                        store.enqueue_push(&added.cid, &opts).map_err(other)?;
                    }
                    Ok(StoredRef {
                        cid: added.cid.to_string(),
                        bytes: added.size,
                    })
                })
                .await
                .map_err(join_err)?
        })
    }

    fn cid_of<'a>(
        &'a self,
        path: &'a Path,
    ) -> BoxFuture<'a, Result<Option<String>, RenditionStoreError>> {
        Box::pin(async move {
            let (opts, path) = (self.opts, path.to_path_buf());
            tokio::task::spawn_blocking(move || {
                let f = std::fs::File::open(&path).map_err(|e| {
                    RenditionStoreError::Other(format!("cannot read {}: {e}", path.display()))
                })?;
                let imported = crate::store::compute_cid(&mut std::io::BufReader::new(f), &opts)
                    .map_err(other)?;
                Ok(Some(imported.cid.to_string()))
            })
            .await
            .map_err(|e| RenditionStoreError::Other(format!("the CID task failed: {e}")))?
        })
    }

    fn open<'a>(
        &'a self,
        cid: &'a str,
    ) -> BoxFuture<'a, Result<Option<Content>, RenditionStoreError>> {
        Box::pin(async move {
            let cid = crate::store::parse_cid(cid)
                .map_err(|_| RenditionStoreError::BadCid(cid.into()))?;
            let store = self.store.clone();
            let opened = self
                .store
                .db()
                .call(move || {
                    let len = store.pin_info(&cid).map_err(other)?.map(|p| p.size);
                    match store.cat(&cid) {
                        Ok(r) => Ok(Some((len, r))),
                        Err(crate::store::StoreError::NotFound { .. }) => Ok(None),
                        Err(e) => Err(other(e)),
                    }
                })
                .await
                .map_err(join_err)??;
            let Some((len, reader)) = opened else {
                return Ok(None);
            };
            // CatReader is blocking (file reads, hash checks): pump it on a blocking
            // thread into a small bounded channel.
            let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
            tokio::task::spawn_blocking(move || {
                let mut reader = reader;
                loop {
                    let mut buf = vec![0u8; 256 << 10];
                    let item = match reader.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            buf.truncate(n);
                            Ok(Bytes::from(buf))
                        }
                        Err(e) => Err(e),
                    };
                    let stop = item.is_err();
                    if tx.blocking_send(item).is_err() || stop {
                        break;
                    }
                }
            });
            let stream = tokio_stream_from(rx);
            Ok(Some(Content { len, stream }))
        })
    }

    fn describe(&self) -> serde_json::Value {
        // A database read: the status handler calls this on the blocking pool.
        let queued = self.store.queue_len().ok();
        serde_json::json!({
            "backend": if self.push.is_some() { "kubo" } else { "embedded" },
            "dir": self.store.dir().display().to_string(),
            "kubo_api": self.push,
            "push_queue": queued,
            "last_gc": *self.last_gc.lock().unwrap_or_else(|e| e.into_inner()),
        })
    }
}

fn tokio_stream_from(rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>) -> ByteStream {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_store_round_trip_matches_kubo() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("d"), None).unwrap();
        let src = dir.path().join("x.ts");
        std::fs::write(&src, b"hello").unwrap();
        let r = store.put(&src).await.unwrap();
        assert_eq!(r.bytes, 5);
        // `echo -n hello | ipfs add` (Kubo defaults: CIDv0, dag-pb leaves).
        assert_eq!(r.cid, "QmWfVY9y3xjsixTgbd9AorQxH7VtMpzfx2HaWtsoUYecaX");
        let mut c = store.open(&r.cid).await.unwrap().unwrap();
        assert_eq!(c.len, Some(5));
        let mut got = Vec::new();
        while let Some(chunk) = c.stream.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, b"hello");
        assert!(matches!(
            store.open("../../etc/passwd").await,
            Err(RenditionStoreError::BadCid(_))
        ));
        let unknown = "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n";
        assert!(store.open(unknown).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn kubo_backend_queues_every_rendition_for_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), Some("http://127.0.0.1:9".into())).unwrap();
        let src = dir.path().join("x.ts");
        std::fs::write(&src, b"hello").unwrap();
        let r = store.put(&src).await.unwrap();
        let queued = store.inner().queued().unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].0.to_string(), r.cid);
        assert_eq!(store.describe()["push_queue"], 1);
    }
}
