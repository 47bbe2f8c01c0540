//! The daemon's side of the Livepeer remote transcoder (`comine run --orch-addr …`).
//!
//! [`start`] runs [`crate::livepeer::run_transcoder`] inside the daemon with three things the
//! standalone `comine livepeer` ([`standalone`]) lacks:
//! - **admission** ([`AdmittedPipeline`]): each segment asks the scheduler like an HTTP job
//!   (class `live`, pixels/s), reports itself as demand while it waits, and runs on the
//!   device it was placed on;
//! - **capacity from the scheduler** (`--capacity auto`): the scheduler's suggested session
//!   count, which the client re-registers with once a change has lasted the dwell time;
//! - **a ledger sink** ([`LedgerSink`]): every segment the orchestrator accepted has its
//!   renditions added to the rendition store (and the Kubo push queue) and is accounted in
//!   the same ledger as HTTP jobs, as a `live` job whose manifest is the Livepeer manifest
//!   ID. A retried task for a `(manifest, seq, profiles)` already done is not counted twice.
//!
//! What the orchestrator did not accept (the upload failed) is recorded as failed, never
//! counted: the ledger's pixels are the ones somebody pays for.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub mod admitted;
pub mod pipeline;
pub mod profiles;
pub mod standalone;

pub use admitted::AdmittedPipeline;
pub use pipeline::EnginePipeline;

use super::Daemon;
use crate::earnings::receipts::RECEIPT_HEADER;
use crate::earnings::ReceiptDraft;
use crate::ledger::{Admitted, JobClass, JobDevice, NewJob, RenditionRecord};
use crate::livepeer::proto::VideoProfile;
use crate::livepeer::sink::{BoxFuture, SinkError};
use crate::livepeer::{
    CapacityArg, LinkStatus, LivepeerError, SegmentError, SegmentFailure, SegmentPipeline,
    SegmentRecord, SegmentSink, SegmentTask, Transcoded, TranscoderConfig,
};

/// Prefix of the ledger's manifest IDs for Livepeer segments, so per-source counters
/// (`comine ledger export`) keep them apart from HTTP submissions.
pub const MANIFEST_PREFIX: &str = "livepeer:";

/// Segment counters for `/v1/status`.
#[derive(Debug, Default)]
pub struct Counters {
    pub transcoded: AtomicU64,
    pub accounted: AtomicU64,
    pub duplicates: AtomicU64,
    pub failed: AtomicU64,
    pub not_accepted: AtomicU64,
    pub sessions_ended: AtomicU64,
    pub encoded_pixels: AtomicU64,
}

/// What `/v1/status` shows under `"livepeer"`.
pub struct LivepeerState {
    pub orch_addr: String,
    /// `auto` or the fixed number.
    pub capacity_mode: String,
    /// The capacity offered now (what the next registration would send).
    pub capacity: watch::Receiver<u32>,
    pub link: Arc<LinkStatus>,
    pub counters: Arc<Counters>,
}

#[derive(Serialize)]
struct StateView<'a> {
    orch_addr: &'a str,
    capacity_mode: &'a str,
    capacity: u32,
    link: crate::livepeer::LinkSnapshot,
    segments: serde_json::Value,
}

impl LivepeerState {
    pub fn to_json(&self) -> serde_json::Value {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let view = StateView {
            orch_addr: &self.orch_addr,
            capacity_mode: &self.capacity_mode,
            capacity: *self.capacity.borrow(),
            link: self.link.get(),
            segments: serde_json::json!({
                "transcoded": n(&c.transcoded),
                "accounted": n(&c.accounted),
                "duplicates": n(&c.duplicates),
                "failed": n(&c.failed),
                "not_accepted": n(&c.not_accepted),
                "sessions_ended": n(&c.sessions_ended),
                "encoded_pixels": n(&c.encoded_pixels),
            }),
        };
        serde_json::to_value(view).unwrap_or_default()
    }
}

/// Stores and accounts every finished Livepeer segment.
pub struct LedgerSink {
    daemon: Arc<Daemon>,
    counters: Arc<Counters>,
}

impl LedgerSink {
    pub fn new(daemon: Arc<Daemon>, counters: Arc<Counters>) -> Self {
        LedgerSink { daemon, counters }
    }

    async fn account(&self, r: &SegmentRecord) -> Result<(), SinkError> {
        let d = &self.daemon;
        let c = &self.counters;
        c.transcoded.fetch_add(1, Ordering::Relaxed);
        let new = NewJob {
            class: JobClass::Live,
            manifest_id: Some(format!("{MANIFEST_PREFIX}{}", r.manifest_id)),
            seq: u64::try_from(r.seq).ok(),
            profiles: r.renditions.iter().map(|x| x.profile.clone()).collect(),
            duration_ms: u64::from(r.duration_ms),
            segment_bytes: r.segment_bytes,
        };
        let job = match d.ledger.call(move |l| l.admit(new)).await? {
            Admitted::New(job) => job,
            Admitted::Duplicate(job) => {
                // The orchestrator retried a task we already finished (or recorded as
                // failed): the first outcome stands, nothing is counted twice.
                c.duplicates.fetch_add(1, Ordering::Relaxed);
                d.metrics.livepeer_segment("duplicate");
                tracing::info!(job = %job.job_id, state = job.state.as_str(), seq = r.seq, "Livepeer segment already in the ledger; not counted again");
                return Ok(());
            }
        };
        let id = job.job_id.clone();
        let key = id.clone();
        let device = r.device.as_ref().map(|dev| JobDevice {
            index: dev.index,
            uuid: dev.uuid.clone(),
        });
        d.ledger
            .call(move |l| {
                l.mark_queued(&key)?;
                match device {
                    Some(dev) => l.mark_transcoding_on(&key, dev),
                    None => l.mark_transcoding(&key),
                }
            })
            .await?;
        if !r.accepted {
            c.not_accepted.fetch_add(1, Ordering::Relaxed);
            let key = id.clone();
            d.ledger
                .call(move |l| {
                    l.fail(
                        &key,
                        "upload_refused",
                        "the orchestrator did not accept the results upload; nothing is owed for this segment",
                    )
                })
                .await?;
            d.metrics.segment("failed");
            d.metrics.livepeer_segment("not_accepted");
            return Ok(());
        }
        let mut renditions = Vec::with_capacity(r.renditions.len());
        for out in &r.renditions {
            // The working directory is removed after this call, so store now. A store
            // failure fails the job in the ledger: the renditions were delivered but not
            // kept, and the record says so.
            let stored = match d.store.put(&out.path).await {
                Ok(s) => s,
                Err(e) => {
                    d.metrics.store_errors.inc();
                    let (key, msg) = (id.clone(), e.to_string());
                    d.ledger
                        .call(move |l| l.fail(&key, "store_error", &msg))
                        .await?;
                    d.metrics.segment("store_error");
                    d.metrics.livepeer_segment("store_error");
                    return Err(Box::new(e));
                }
            };
            renditions.push(RenditionRecord {
                profile: out.profile.clone(),
                cid: stored.cid,
                pixels: out.pixels,
                bytes: stored.bytes,
                width: out.width,
                height: out.height,
                frames: out.frames,
                encoder: out.encoder.clone(),
                mime: out.mime.to_string(),
                job_id: id.clone(),
            });
        }
        let (key, decoded, media, ms) = (
            id.clone(),
            r.decoded_pixels,
            r.media_seconds,
            r.transcode_ms,
        );
        let done = d
            .ledger
            .call(move |l| {
                l.mark_stored(&key, decoded, media, ms, renditions)?;
                l.complete(&key)
            })
            .await?;
        if let Some(done) = done {
            c.accounted.fetch_add(1, Ordering::Relaxed);
            c.encoded_pixels
                .fetch_add(done.encoded_pixels, Ordering::Relaxed);
            d.metrics.job_done(&done, r.total_ms as f64 / 1000.0);
            d.metrics.livepeer_segment("ok");
            d.count_fallbacks(r.renditions.iter().map(|x| x.encoder.as_str()), None);
            d.account_earnings(&done, Some(receipt_id(&r.manifest_id, r.seq, r.task_id)))
                .await;
            tracing::info!(job = %id, seq = r.seq, encoded_pixels = done.encoded_pixels, "Livepeer segment stored and accounted");
        }
        Ok(())
    }
}

impl SegmentSink for LedgerSink {
    fn segment_transcoded<'a>(
        &'a self,
        record: &'a SegmentRecord,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.account(record))
    }

    fn segment_failed<'a>(&'a self, f: &'a SegmentFailure) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let d = &self.daemon;
            // No idempotency key: the orchestrator may retry the task, and a later success
            // for the same (manifest, seq) must still be counted.
            let new = NewJob {
                class: JobClass::Live,
                manifest_id: None,
                seq: u64::try_from(f.seq).ok(),
                profiles: Vec::new(),
                duration_ms: 0,
                segment_bytes: 0,
            };
            let job = match d.ledger.call(move |l| l.admit(new)).await? {
                Admitted::New(j) | Admitted::Duplicate(j) => j,
            };
            let (code, result) = if f.bad_input {
                ("bad_input", "bad_input")
            } else if f.reason.starts_with("deadline exceeded") {
                ("deadline_exceeded", "deadline")
            } else {
                ("transcode_failed", "failed")
            };
            let message = format!(
                "Livepeer task {} ({}{} seq {}): {}",
                f.task_id, MANIFEST_PREFIX, f.manifest_id, f.seq, f.reason
            );
            let id = job.job_id.clone();
            d.ledger.call(move |l| l.fail(&id, code, &message)).await?;
            // Counted once the ledger holds it, so status never shows one without the other.
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            d.metrics.segment(result);
            d.metrics.livepeer_segment(result);
            Ok(())
        })
    }

    fn session_ended<'a>(
        &'a self,
        session_id: &'a str,
        segments: u64,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            self.counters.sessions_ended.fetch_add(1, Ordering::Relaxed);
            tracing::info!(session = %session_id, segments, "Livepeer session ended");
            Ok(())
        })
    }
}

/// The work receipt's job ID for a Livepeer segment, found again by the sink from the
/// segment's record: manifest, seq and the orchestrator's task ID.
pub fn receipt_id(manifest_id: &str, seq: i64, task_id: i64) -> String {
    format!("{MANIFEST_PREFIX}{manifest_id}/{seq}/task-{task_id}")
}

/// The engine, plus a signed work receipt on every result when `[earnings] key_file` is set:
/// the renditions' CIDs are computed as the store will compute them (nothing is stored
/// before the orchestrator has the results), the receipt is signed and kept, and it travels
/// in the `Comine-Work-Receipt` header of `/transcodeResults`. A receipt that cannot be made
/// is logged and the results go without it (the ledger signs the job when it is done).
pub struct ReceiptPipeline {
    inner: EnginePipeline,
    daemon: Arc<Daemon>,
}

impl ReceiptPipeline {
    pub fn new(inner: EnginePipeline, daemon: Arc<Daemon>) -> Self {
        ReceiptPipeline { inner, daemon }
    }

    /// Transcodes on `gpu` (where the scheduler placed the segment) and signs the receipt.
    pub async fn run_on(&self, task: SegmentTask, gpu: u32) -> Result<Transcoded, SegmentError> {
        let (manifest, seq, task_id) = (task.manifest_id.clone(), task.seq, task.task_id);
        let mut t = self.inner.run(task, gpu).await?;
        if self.daemon.earnings.key_address().is_none() {
            return Ok(t);
        }
        match self.receipt_header(&t, &manifest, seq, task_id).await {
            Ok(Some(h)) => t.result_headers.push((RECEIPT_HEADER.to_string(), h)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(task_id, error = %e, "cannot sign the segment's work receipt; posting the results without it")
            }
        }
        Ok(t)
    }

    async fn receipt_header(
        &self,
        t: &Transcoded,
        manifest: &str,
        seq: i64,
        task_id: i64,
    ) -> anyhow::Result<Option<String>> {
        let mut cids = Vec::with_capacity(t.renditions.len());
        for r in &t.renditions {
            match self.daemon.store.cid_of(&r.path).await? {
                Some(cid) => cids.push(cid),
                None => return Ok(None),
            }
        }
        let draft = ReceiptDraft {
            job_id: receipt_id(manifest, seq, task_id),
            orchestrator: None,
            manifest_id: manifest.to_string(),
            seq: Some(seq),
            decoded_pixels: t.decoded_pixels,
            encoded_pixels: t.encoded_pixels,
            cids,
            completed_at_ms: crate::util::now_ms(),
        };
        let e = self.daemon.earnings.clone();
        let signed = tokio::task::spawn_blocking(move || e.sign_receipt(&draft)).await??;
        Ok(signed.map(|s| s.to_header()))
    }
}

impl SegmentPipeline for ReceiptPipeline {
    fn check(&self, profiles: &[VideoProfile]) -> Result<(), SegmentError> {
        self.inner.check(profiles)
    }

    fn transcode(&self, task: SegmentTask) -> BoxFuture<'_, Result<Transcoded, SegmentError>> {
        Box::pin(self.run_on(task, self.inner.gpu))
    }
}

/// Puts the orchestrator's `GetOrchestrator` price on the earnings price board, and takes
/// it off when the orchestrator stops answering (the configured price applies again).
#[derive(Debug)]
struct BoardQuotes {
    earnings: Arc<crate::earnings::Earnings>,
}

impl crate::livepeer::PriceQuotes for BoardQuotes {
    fn request(&self) -> crate::livepeer::proto::OrchestratorRequest {
        // Signed with the operator key when there is one; without, the payout address and
        // no signature, which only an off-chain orchestrator accepts.
        match self.earnings.orchestrator_request() {
            Some((address, sig)) => crate::livepeer::proto::OrchestratorRequest {
                address: address.to_vec(),
                sig,
            },
            None => crate::livepeer::proto::OrchestratorRequest {
                address: self
                    .earnings
                    .payout_address()
                    .map(|a| a.to_vec())
                    .unwrap_or_else(|| vec![0; 20]),
                sig: Vec::new(),
            },
        }
    }

    fn quoted(&self, _orch_addr: &str, quote: Option<crate::livepeer::PriceQuote>) {
        let board = self.earnings.board();
        match quote {
            Some(q) => board.set_orchestrator(
                alloy::primitives::U256::from(q.price_per_unit),
                alloy::primitives::U256::from(q.pixels_per_unit),
                q.orchestrator,
            ),
            None => board.clear_orchestrator(),
        }
    }
}

/// What `comine run` needs to attach: the validated client config, the capacity mode and
/// the engine settings segments are transcoded with.
pub struct Attach {
    pub config: TranscoderConfig,
    pub capacity: CapacityArg,
    pub pipeline: EnginePipeline,
}

/// Starts the remote transcoder inside the daemon. The returned task ends with the client:
/// `Ok` after `shutdown`, `Err` on a fatal refusal (bad secret, zero capacity).
pub fn start(
    daemon: &Arc<Daemon>,
    attach: Attach,
    sessions: watch::Receiver<u32>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), LivepeerError>> {
    let counters = Arc::new(Counters::default());
    let (capacity, mode) = match attach.capacity {
        CapacityArg::Fixed(n) => (watch::channel(n).1, n.to_string()),
        CapacityArg::Auto => (sessions, "auto".to_string()),
    };
    if attach.capacity == CapacityArg::Auto && *capacity.borrow() == 0 {
        tracing::warn!(
            "--capacity auto: the scheduler grants no Livepeer session yet (on a CPU-only host the budget is often below one session's ladder); comine registers once it does, or give --capacity N"
        );
    }
    let state = LivepeerState {
        orch_addr: attach.config.orch_addr.clone(),
        capacity_mode: mode,
        capacity: capacity.clone(),
        link: attach.config.link.clone(),
        counters: counters.clone(),
    };
    let _ = daemon.livepeer.set(state);
    let mut attach = attach;
    if attach.config.price_quotes.is_none() {
        attach.config.price_quotes = Some(Arc::new(BoardQuotes {
            earnings: daemon.earnings.clone(),
        }));
    }
    let sink = Arc::new(LedgerSink::new(daemon.clone(), counters));
    // Every segment goes through the scheduler's admission, as HTTP jobs do.
    let pipeline = Arc::new(AdmittedPipeline::new(
        daemon.clone(),
        ReceiptPipeline::new(attach.pipeline, daemon.clone()),
    ));
    tokio::spawn(crate::livepeer::run_transcoder(
        attach.config,
        capacity,
        pipeline,
        sink,
        shutdown,
    ))
}
