//! Persistent push queue: renditions waiting to reach the Kubo node.
//!
//! A rendition is always stored and pinned locally first, then queued, then pushed. The queue is
//! the database table `store_push_queue` (a queued rendition is never garbage collected), so a
//! crash or restart at any point loses nothing: the next `push_pending` (the daemon calls it
//! periodically; `comine store push` calls it once) retries with backoff. `push_pending` runs
//! every database call and block read on tokio's blocking pool.

use std::time::Duration;

use cid::Cid;
use tokio_util::sync::CancellationToken;

use rusqlite::{params, OptionalExtension};

use super::kubo::{KuboClient, KuboError};
use super::{now_secs, AddOptions, Store, StoreError};
use crate::db;

/// Slowest upload we wait for (bytes/s) before queueing the rendition for later.
pub const MIN_UPLOAD_RATE: u64 = 1 << 20;

/// One queued rendition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueEntry {
    pub options: AddOptions,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Unix seconds; the entry is not retried before.
    pub next_attempt_at: u64,
    pub enqueued_at: u64,
}

/// Outcome of one `push_pending` pass.
#[derive(Debug, Default, serde::Serialize)]
pub struct PushReport {
    pub pushed: Vec<String>,
    pub failed: Vec<(String, String)>,
    /// Entries still queued after the pass (failed ones and those not due yet).
    pub remaining: usize,
}

/// Backoff after `attempts` failures: 5 s doubling, capped at one hour.
fn backoff_secs(attempts: u32) -> u64 {
    (5u64 << attempts.min(10)).min(3600)
}

impl Store {
    /// Queues `cid` for pushing (idempotent; keeps an existing entry's history).
    pub fn enqueue_push(&self, cid: &Cid, options: &AddOptions) -> Result<(), StoreError> {
        let entry = QueueEntry {
            options: *options,
            attempts: 0,
            last_error: None,
            next_attempt_at: 0,
            enqueued_at: now_secs(),
        };
        let (key, json) = (cid.to_bytes(), encode(&entry)?);
        self.db().write(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO store_push_queue (cid, enqueued_at, entry) VALUES (?1, ?2, ?3)",
                params![key, db::to_sql_u64(entry.enqueued_at), json],
            )?;
            Ok(())
        })
    }

    /// Everything queued, oldest first.
    pub fn queued(&self) -> Result<Vec<(Cid, QueueEntry)>, StoreError> {
        self.db().read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT cid, entry FROM store_push_queue ORDER BY enqueued_at, cid",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (k, v) = row?;
                // An unreadable entry is skipped here and reported, never fatal for the others.
                match (Cid::try_from(&k[..]), serde_json::from_str::<QueueEntry>(&v)) {
                    (Ok(cid), Ok(entry)) => out.push((cid, entry)),
                    (cid, entry) => tracing::error!(key = %hex::encode(&k), cid_ok = cid.is_ok(), entry_ok = entry.is_ok(), "unreadable push-queue entry skipped"),
                }
            }
            Ok(out)
        })
    }

    /// Number of queued renditions.
    pub fn queue_len(&self) -> Result<u64, StoreError> {
        self.db().read(|c| {
            let n: i64 = c.query_row("SELECT count(*) FROM store_push_queue", [], |r| r.get(0))?;
            Ok(db::from_sql_u64(n))
        })
    }

    /// Removes a pushed entry.
    pub fn dequeue_push(&self, cid: &Cid) -> Result<(), StoreError> {
        let key = cid.to_bytes();
        self.db().write(move |c| {
            c.execute("DELETE FROM store_push_queue WHERE cid = ?1", [key])?;
            Ok(())
        })
    }

    /// Records a failed push attempt (backoff grows with the attempts).
    pub fn record_push_failure(&self, cid: &Cid, error: &str) -> Result<(), StoreError> {
        let (key, error) = (cid.to_bytes(), error.to_string());
        self.db().write(move |c| {
            let raw: Option<String> = c
                .query_row(
                    "SELECT entry FROM store_push_queue WHERE cid = ?1",
                    [&key],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(mut entry) = raw.and_then(|r| serde_json::from_str::<QueueEntry>(&r).ok())
            else {
                return Ok(());
            };
            entry.attempts = entry.attempts.saturating_add(1);
            entry.last_error = Some(error);
            entry.next_attempt_at = now_secs() + backoff_secs(entry.attempts);
            c.execute(
                "UPDATE store_push_queue SET entry = ?2 WHERE cid = ?1",
                params![key, encode(&entry)?],
            )?;
            Ok(())
        })
    }
}

fn encode(entry: &QueueEntry) -> Result<String, StoreError> {
    serde_json::to_string(entry).map_err(|e| StoreError::io("encoding a queue entry", e.into()))
}

/// Runs blocking store work from async code, off the runtime's workers.
async fn blocking<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let s = store.clone();
    store.db().call(move || f(&s)).await?
}

/// Pushes one locally stored root to the node, verifying the node's CID and pin.
pub async fn push_one(
    store: &Store,
    client: &KuboClient,
    cid: &Cid,
    opts: &AddOptions,
) -> Result<(), PushError> {
    let c = *cid;
    let (reader, size) = blocking(store, move |s| {
        let reader = s.cat(&c)?;
        Ok((reader, s.pin_info(&c)?.map_or(0, |p| p.dag_size)))
    })
    .await?;
    let name = cid.to_string();
    // A node that accepts the connection but stops reading would block the upload forever:
    // bound it by the read timeout plus the size at MIN_UPLOAD_RATE.
    let deadline = client.timeout() + Duration::from_secs(size / MIN_UPLOAD_RATE);
    match tokio::time::timeout(
        deadline,
        client.add_verified(Box::new(reader), &name, opts, cid),
    )
    .await
    {
        Ok(result) => result?,
        Err(_) => {
            return Err(PushError::Node(KuboError::Timeout {
                url: client.base_url().to_string(),
                endpoint: "add".into(),
                timeout: deadline,
            }))
        }
    };
    if !client.pin_ls(cid).await? {
        client.pin_add(cid).await?;
    }
    Ok(())
}

/// A push failure: either side can fail.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Local(#[from] StoreError),
    #[error(transparent)]
    Node(#[from] KuboError),
}

/// One pass over the queue: pushes every entry that is due (all of them with `force`).
/// Successful entries leave the queue; failures stay with backoff and their last error.
pub async fn push_pending(
    store: &Store,
    client: &KuboClient,
    force: bool,
) -> Result<PushReport, StoreError> {
    let mut report = PushReport::default();
    let now = now_secs();
    for (cid, entry) in blocking(store, |s| s.queued()).await? {
        if !force && entry.next_attempt_at > now {
            report.remaining += 1;
            continue;
        }
        match push_one(store, client, &cid, &entry.options).await {
            Ok(()) => {
                tracing::info!(%cid, "pushed to the IPFS node");
                blocking(store, move |s| s.dequeue_push(&cid)).await?;
                report.pushed.push(cid.to_string());
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(%cid, error = %msg, "push to the IPFS node failed; will retry");
                let m = msg.clone();
                blocking(store, move |s| s.record_push_failure(&cid, &m)).await?;
                report.failed.push((cid.to_string(), msg));
                report.remaining += 1;
                // A down node fails every entry the same way: stop hammering it this pass.
                if matches!(e, PushError::Node(KuboError::Unreachable { .. })) {
                    report.remaining = blocking(store, |s| s.queue_len()).await? as usize;
                    break;
                }
            }
        }
    }
    Ok(report)
}

/// Background pusher for the daemon: a `push_pending` pass every `interval` until `cancel`.
pub async fn run_pusher(
    store: Store,
    client: KuboClient,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = push_pending(&store, &client, false).await {
            tracing::warn!(error = %e, "push queue pass failed");
        }
    }
}
