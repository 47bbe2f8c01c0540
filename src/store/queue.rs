//! Persistent push queue: renditions waiting to reach the Kubo node.
//!
//! A rendition is always stored and pinned locally first, then queued, then pushed. The queue is
//! a sled tree, so a crash or restart at any point loses nothing: the next `push_pending` (the
//! daemon calls it periodically; `comine store push` calls it once) retries with backoff.

use std::time::Duration;

use cid::Cid;
use tokio_util::sync::CancellationToken;

use super::kubo::{KuboClient, KuboError};
use super::{now_secs, AddOptions, Store, StoreError};

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
        let key = cid.to_bytes();
        if self.queue.contains_key(&key)? {
            return Ok(());
        }
        let entry = QueueEntry {
            options: *options,
            attempts: 0,
            last_error: None,
            next_attempt_at: 0,
            enqueued_at: now_secs(),
        };
        self.queue.insert(key, encode(&entry)?)?;
        self.flush()
    }

    /// Everything queued, oldest first.
    pub fn queued(&self) -> Result<Vec<(Cid, QueueEntry)>, StoreError> {
        let mut out = Vec::new();
        for item in self.queue.iter() {
            let (k, v) = item?;
            if let (Ok(cid), Ok(entry)) = (
                Cid::try_from(&k[..]),
                serde_json::from_slice::<QueueEntry>(&v),
            ) {
                out.push((cid, entry));
            }
        }
        out.sort_by_key(|(_, e)| e.enqueued_at);
        Ok(out)
    }

    /// Removes a pushed entry.
    pub fn dequeue_push(&self, cid: &Cid) -> Result<(), StoreError> {
        self.queue.remove(cid.to_bytes())?;
        self.flush()
    }

    /// Records a failed push attempt (backoff grows with the attempts).
    pub fn record_push_failure(&self, cid: &Cid, error: &str) -> Result<(), StoreError> {
        let Some(v) = self.queue.get(cid.to_bytes())? else {
            return Ok(());
        };
        match serde_json::from_slice::<QueueEntry>(&v) {
            Ok(entry) => self.record_failure(cid, entry, error),
            Err(_) => Ok(()),
        }
    }

    fn record_failure(
        &self,
        cid: &Cid,
        mut entry: QueueEntry,
        error: &str,
    ) -> Result<(), StoreError> {
        entry.attempts = entry.attempts.saturating_add(1);
        entry.last_error = Some(error.to_string());
        entry.next_attempt_at = now_secs() + backoff_secs(entry.attempts);
        self.queue.insert(cid.to_bytes(), encode(&entry)?)?;
        self.flush()
    }
}

fn encode(entry: &QueueEntry) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(entry).map_err(|e| StoreError::io("encoding a queue entry", e.into()))
}

/// Pushes one locally stored root to the node, verifying the node's CID and pin.
pub async fn push_one(
    store: &Store,
    client: &KuboClient,
    cid: &Cid,
    opts: &AddOptions,
) -> Result<(), PushError> {
    let reader = store.cat(cid)?;
    let name = cid.to_string();
    // A node that accepts the connection but stops reading would block the upload forever:
    // bound it by the read timeout plus the size at MIN_UPLOAD_RATE.
    let size = store.pin_info(cid)?.map_or(0, |p| p.dag_size);
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
    for (cid, entry) in store.queued()? {
        if !force && entry.next_attempt_at > now {
            report.remaining += 1;
            continue;
        }
        match push_one(store, client, &cid, &entry.options).await {
            Ok(()) => {
                tracing::info!(%cid, "pushed to the IPFS node");
                store.dequeue_push(&cid)?;
                report.pushed.push(cid.to_string());
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::warn!(%cid, error = %msg, "push to the IPFS node failed; will retry");
                store.record_failure(&cid, entry, &msg)?;
                report.failed.push((cid.to_string(), msg));
                report.remaining += 1;
                // A down node fails every entry the same way: stop hammering it this pass.
                if matches!(e, PushError::Node(KuboError::Unreachable { .. })) {
                    report.remaining = store.queued()?.len();
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
