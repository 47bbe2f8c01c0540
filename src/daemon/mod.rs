//! `comine run`: the service that joins intake, scheduler, transcode, store and ledger.
//!
//! A segment's life in the daemon:
//! 1. the API (`daemon::api`) parses profiles and headers, takes a queue slot (503 with
//!    Retry-After when none is free) and reads the body under the size limit;
//! 2. [`Daemon::accept`] reserves the job in the ledger (`received`; a duplicate
//!    `(manifest_id, seq, profiles)` returns the existing job), writes the segment to
//!    `<data>/spool/<job>.seg` with fsync and marks it `queued` (durable when the call
//!    returns: the ledger's writes are group-committed) — only then does the client get
//!    its 2xx;
//! 3. the dispatcher (`worker`) hands it to a worker when the scheduler admits it;
//! 4. the worker transcodes, stores the renditions, and moves the job to `done` with
//!    its pixel counters in one transaction, then deletes the spool file.
//!
//! On start every job not `done`/`failed` is resumed from its spool file; on SIGTERM
//! intake stops, running jobs get a grace period and are otherwise left to resume.
//!
//! Every ledger call from async code goes through [`Ledger::call`] (or the database's async
//! API), so a stalled disk never blocks the runtime's workers: `/healthz`, the API and
//! shutdown keep answering.

pub mod admission;
pub mod ai;
pub mod ai_video;
pub mod api;
pub mod calibration;
pub mod cli;
pub mod client;
pub mod demand;
pub mod livepeer;
pub mod rendition_store;
pub mod watchdog;
mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::earnings::Earnings;
use crate::ledger::{self, Admitted, JobRecord, JobState, Ledger, NewJob, Price};
use crate::metrics::Metrics;
use admission::Admission;
use rendition_store::RenditionStore;

/// `[earnings]` over `<data_dir>/comine.db`. Without its own price, `[earnings]` values jobs
/// at `[ledger] price_per_unit_wei`, so one configured price means one answer everywhere.
/// A bad key file (mode, content) or address stops the start with the reason.
fn open_earnings(config: &Config, data_dir: &Path) -> anyhow::Result<Earnings> {
    let mut cfg = config.earnings.clone();
    if cfg.price_per_unit.0.is_zero() && config.ledger.price_per_unit_wei > 0 {
        cfg.price_per_unit.0 = alloy::primitives::U256::from(config.ledger.price_per_unit_wei);
        cfg.pixels_per_unit.0 = alloy::primitives::U256::from(config.ledger.pixels_per_unit.max(1));
    }
    let fallback = match config.livepeer.eth_address.as_deref() {
        Some(a) => Some(crate::earnings::config::parse_address(
            "livepeer.eth_address",
            a,
        )?),
        None => None,
    };
    Earnings::open(&cfg, data_dir, fallback).map_err(|e| {
        anyhow::anyhow!(
            "{} (earnings tables in {})",
            crate::earnings::error_chain(&e),
            data_dir.join(crate::earnings::DB_FILE).display()
        )
    })
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error(
        "cannot spool the segment to {path}: {source}; check free space in the data directory"
    )]
    Spool {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon is shutting down; retry against the restarted daemon")]
    ShuttingDown,
    /// The key's first submission is still being stored: it is not durable yet, so its id
    /// must not be handed out (a crash now fails it and releases the key).
    #[error("job {0} with the same idempotency key is still being stored; retry in a moment")]
    InProgress(String),
}

/// A job a worker runs now: where, what it costs, and how to stop it for a proof.
pub(crate) struct Running {
    pub device: u32,
    pub class: ledger::JobClass,
    pub pixels_per_sec: f64,
    pub started: Instant,
    /// Cancelled to give a proof its GPU back: the job stops and is requeued.
    pub preempt: CancellationToken,
}

/// A job on its way to a worker.
pub(crate) struct Queued {
    pub job: JobRecord,
    /// The intake queue slot; `None` for jobs resumed at start.
    pub slot: Option<OwnedSemaphorePermit>,
    pub received: Instant,
}

/// What [`Daemon::accept`] made of a submission.
pub enum Accepted {
    New(JobRecord),
    Duplicate(JobRecord),
}

/// Shared state of a running daemon.
pub struct Daemon {
    pub config: Config,
    pub data_dir: PathBuf,
    pub ledger: Ledger,
    pub store: Arc<dyn RenditionStore>,
    pub admission: Arc<dyn Admission>,
    pub metrics: Metrics,
    pub token: String,
    /// Free intake slots (jobs accepted and waiting for a worker).
    pub queue_slots: Arc<Semaphore>,
    /// Two lanes so live segments overtake batch jobs waiting for a worker.
    queue_tx: [mpsc::UnboundedSender<Queued>; 2],
    queue_rx: Mutex<Option<[mpsc::UnboundedReceiver<Queued>; 2]>>,
    queued: AtomicUsize,
    /// Queued jobs per lane (live, batch), for each class's demand.
    queued_by_class: [AtomicUsize; 2],
    /// What waits for admission, per source and class, and live work waiting anywhere.
    pub demand: demand::DemandBook,
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// SIGTERM: stop intake and dispatch.
    pub intake_stop: CancellationToken,
    /// Grace period over: cancel running transcodes (they resume on restart).
    pub hard_stop: CancellationToken,
    /// Capacity came back (a job or segment finished): every admission waiter retries.
    pub(crate) slot_freed: Notify,
    tracker: TaskTracker,
    started: Instant,
    /// EWMA of segment latency, ms (for Retry-After).
    latency_ewma_ms: AtomicU64,
    /// EWMA of one job's run time (admitted to done), ms: the backlog's drain estimate.
    run_ewma_ms: AtomicU64,
    /// Jobs resumed from the spool at start.
    pub resumed: AtomicUsize,
    /// Jobs running now, by job id.
    running: Mutex<HashMap<String, Running>>,
    /// When the dispatcher last went round its loop (ms since the epoch): the watchdog's
    /// proof that queued work is being looked at.
    pub(crate) dispatch_beat_ms: AtomicU64,
    /// Telemetry has a GPU (or may have one): only then is libx264 under `auto` a fallback.
    gpu_present: bool,
    pub listen_addr: OnceLock<SocketAddr>,
    /// Set when `comine run` attached to a Livepeer orchestrator.
    pub livepeer: OnceLock<livepeer::LivepeerState>,
    /// Set when `comine run` also registered as a Livepeer AI worker.
    pub ai: OnceLock<ai::AiState>,
    /// Every done job's price snapshot and signed receipt (`[earnings]`).
    pub earnings: Arc<Earnings>,
}

impl Daemon {
    /// Opens the ledger and prepares the data directory. Call [`Daemon::resume`] and
    /// start the dispatcher ([`Daemon::spawn_dispatcher`]) before serving.
    pub fn open(
        config: Config,
        data_dir: PathBuf,
        store: Arc<dyn RenditionStore>,
        admission: Arc<dyn Admission>,
        token: String,
    ) -> anyhow::Result<Arc<Daemon>> {
        for sub in ["spool", "work"] {
            crate::paths::create_private_dir(&data_dir.join(sub))?;
        }
        let price = Price {
            per_unit_wei: config.ledger.price_per_unit_wei,
            pixels_per_unit: config.ledger.pixels_per_unit,
        };
        let ledger = Ledger::open(
            &data_dir.join("ledger"),
            config.ledger.cache_mib << 20,
            price,
        )
        .map_err(|e| anyhow::anyhow!("cannot open the ledger in {}: {e}", data_dir.display()))?;
        ledger.db().set_max_group(config.ledger.max_group_commit);
        let earnings = Arc::new(open_earnings(&config, &data_dir)?);
        let (live_tx, live_rx) = mpsc::unbounded_channel();
        let (batch_tx, batch_rx) = mpsc::unbounded_channel();
        let metrics = Metrics::new();
        metrics.capacity.set(*admission.capacity().borrow() as i64);
        let gpu_present = admission.telemetry_source() != Some(crate::gpu::Source::Host);
        Ok(Arc::new(Daemon {
            queue_slots: Arc::new(Semaphore::new(config.api.queue_depth)),
            config,
            data_dir,
            ledger,
            store,
            admission,
            metrics,
            token,
            queue_tx: [live_tx, batch_tx],
            queue_rx: Mutex::new(Some([live_rx, batch_rx])),
            queued: AtomicUsize::new(0),
            queued_by_class: Default::default(),
            demand: demand::DemandBook::default(),
            waiters: Mutex::new(HashMap::new()),
            intake_stop: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            slot_freed: Notify::new(),
            tracker: TaskTracker::new(),
            started: Instant::now(),
            latency_ewma_ms: AtomicU64::new(0),
            run_ewma_ms: AtomicU64::new(0),
            resumed: AtomicUsize::new(0),
            running: Mutex::new(HashMap::new()),
            dispatch_beat_ms: AtomicU64::new(crate::util::now_ms()),
            gpu_present,
            listen_addr: OnceLock::new(),
            livepeer: OnceLock::new(),
            ai: OnceLock::new(),
            earnings,
        }))
    }

    /// Values a job that reached `done` and signs its receipt (off the async workers: SQLite
    /// and secp256k1). A failure is logged, never fails the job: the pixels are in the ledger,
    /// and `comine earnings` recounts from there.
    /// `receipt_id` names a receipt already signed for this job (a Livepeer segment's, sent
    /// with its results), which is linked instead of signing another.
    pub async fn account_earnings(&self, job: &JobRecord, receipt_id: Option<String>) {
        let e = self.earnings.clone();
        let job = job.clone();
        let id = job.job_id.clone();
        let r = tokio::task::spawn_blocking(move || e.job_done(&job, receipt_id.as_deref(), None))
            .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(job = %id, error = %crate::earnings::error_chain(&e), "cannot record the job's earnings or receipt")
            }
            Err(e) => tracing::warn!(job = %id, error = %e, "the earnings task failed"),
        }
    }

    pub fn spool_path(&self, id: &str) -> PathBuf {
        self.data_dir.join("spool").join(format!("{id}.seg"))
    }

    pub fn work_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("work").join(id)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn queue_len(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Seconds until the queued jobs are done at the current capacity, from the measured run
    /// time of a job; `None` until one has finished.
    pub fn drain_secs(&self) -> Option<f64> {
        let run_ms = self.run_ewma_ms.load(Ordering::Relaxed);
        if run_ms == 0 {
            return (self.queue_len() == 0).then_some(0.0);
        }
        let cap = (*self.admission.capacity().borrow()).max(1);
        let rounds = self.queue_len().div_ceil(cap);
        Some(rounds as f64 * run_ms as f64 / 1000.0)
    }

    /// Jobs running now.
    pub fn running_jobs(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// Stops batch jobs on `device` (newest first) until `pixels_per_sec` of running load
    /// is taken off: a proof needs the GPU. Each stops at once and is requeued. Returns the
    /// jobs stopped. Live jobs finish (they last a segment), while the scheduler offers no
    /// new session on that GPU.
    pub fn preempt(&self, device: u32, pixels_per_sec: f64) -> Vec<String> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut victims: Vec<(&String, &Running)> = running
            .iter()
            .filter(|(_, r)| {
                r.device == device
                    && r.class == ledger::JobClass::Batch
                    && !r.preempt.is_cancelled()
            })
            .collect();
        victims.sort_by_key(|b| std::cmp::Reverse(b.1.started));
        let mut shed = 0.0;
        let mut out = Vec::new();
        for (id, r) in victims {
            if shed >= pixels_per_sec {
                break;
            }
            r.preempt.cancel();
            shed += r.pixels_per_sec;
            out.push(id.clone());
        }
        out
    }

    /// Seconds a refused client should wait: the queue ahead divided by capacity, ≥ 1 s.
    pub fn retry_after_secs(&self) -> u64 {
        let cap = (*self.admission.capacity().borrow()).max(1) as u64;
        let ewma = self.latency_ewma_ms.load(Ordering::Relaxed).max(500);
        (self.queue_len() as u64 * ewma / cap / 1000).clamp(1, 300)
    }

    pub(crate) fn enqueue(&self, q: Queued) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        let lane = lane(q.job.class);
        self.queued_by_class[lane].fetch_add(1, Ordering::Relaxed);
        self.metrics.queue_depth.set(self.queue_len() as i64);
        // The receiver lives as long as the daemon; a send error only happens after the
        // dispatcher stopped, and the job stays queued in the ledger for the next start.
        let _ = self.queue_tx[lane].send(q);
    }

    /// A queued job left the queue for a worker.
    fn dequeued(&self, class: ledger::JobClass) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        self.queued_by_class[lane(class)].fetch_sub(1, Ordering::Relaxed);
        self.metrics.queue_depth.set(self.queue_len() as i64);
    }

    /// Jobs of `class` waiting in the queue.
    fn queued_of(&self, class: ledger::JobClass) -> usize {
        self.queued_by_class[lane(class)].load(Ordering::Relaxed)
    }

    /// Reports one source's waiting work of one class; the scheduler hears the totals.
    pub fn report_demand(&self, source: demand::DemandSource, class: ledger::JobClass, pps: f64) {
        if let Some((live, batch)) = self.demand.set(source, class, pps) {
            self.admission.set_demand(live, batch);
        }
    }

    /// Persists a submission (ledger + fsynced spool) and queues it. When this returns
    /// `Ok(Accepted::New)`, the job survives a crash.
    pub async fn accept(
        &self,
        new: NewJob,
        body: Bytes,
        slot: OwnedSemaphorePermit,
        received: Instant,
    ) -> Result<Accepted, DaemonError> {
        if self.intake_stop.is_cancelled() {
            return Err(DaemonError::ShuttingDown);
        }
        let job = match self.ledger.call(move |l| l.admit(new)).await? {
            Admitted::Duplicate(rec) if rec.state == ledger::JobState::Received => {
                return Err(DaemonError::InProgress(rec.job_id))
            }
            Admitted::Duplicate(rec) => return Ok(Accepted::Duplicate(rec)),
            Admitted::New(rec) => rec,
        };
        let path = self.spool_path(&job.job_id);
        let spool = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || crate::util::durable::write_durable(&path, &body))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
        };
        if let Err(source) = spool {
            let id = job.job_id.clone();
            let _ = self.ledger.call(move |l| l.abandon_received(&id)).await;
            let _ = std::fs::remove_file(&path);
            return Err(DaemonError::Spool {
                path: path.display().to_string(),
                source,
            });
        }
        let id = job.job_id.clone();
        let job = match self.ledger.call(move |l| l.mark_queued(&id)).await {
            Ok(job) => job,
            Err(e) => {
                // Not acknowledged: release the key so the client's retry is a fresh job.
                let id = job.job_id.clone();
                let _ = self.ledger.call(move |l| l.abandon_received(&id)).await;
                let _ = std::fs::remove_file(&path);
                return Err(e.into());
            }
        };
        self.enqueue(Queued {
            job: job.clone(),
            slot: Some(slot),
            received,
        });
        Ok(Accepted::New(job))
    }

    /// Waits until the job is done or failed. `None` when the daemon stops first (the
    /// job then resumes on restart).
    pub async fn wait_final(&self, id: &str) -> Result<Option<JobRecord>, DaemonError> {
        loop {
            let notify = {
                let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
                w.entry(id.to_string()).or_default().clone()
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let key = id.to_string();
            if let Some(rec) = self.ledger.call(move |l| l.get(&key)).await? {
                if rec.state.is_final() {
                    return Ok(Some(rec));
                }
            } else {
                return Ok(None);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = self.hard_stop.cancelled() => return Ok(None),
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    fn notify_final(&self, id: &str) {
        let n = self
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(n) = n {
            n.notify_waiters();
        }
    }

    /// Re-queues every job that got its 2xx but did not finish; fails jobs that never
    /// got one; removes spool and work files nobody owns. Returns how many resume.
    pub async fn resume(&self) -> anyhow::Result<usize> {
        let mut resumed = 0;
        let mut keep = std::collections::HashSet::new();
        for job in self.ledger.call(|l| l.unfinished()).await? {
            match job.state {
                // An AI job is in the ledger from its arrival. One that was answered and
                // stored is counted now; one caught before that was never answered (the
                // orchestrator's timeout retries it elsewhere): failed, not counted, and its
                // task id stays taken so the same task never counts twice.
                _ if job
                    .manifest_id
                    .as_deref()
                    .is_some_and(|m| m.starts_with(ai::MANIFEST_PREFIX)) =>
                {
                    let id = job.job_id.clone();
                    if job.state == JobState::Stored {
                        self.ledger.call(move |l| l.complete(&id)).await?;
                    } else {
                        tracing::warn!(job = %job.job_id, state = job.state.as_str(), "AI job interrupted by the last stop; marking failed (not counted)");
                        self.ledger
                            .call(move |l| {
                                l.fail(
                                    &id,
                                    "interrupted",
                                    "the daemon stopped while this AI job ran; it was not answered and is not counted",
                                )
                            })
                            .await?;
                    }
                }
                JobState::Received => {
                    tracing::warn!(job = %job.job_id, "segment was not fully accepted before the last stop; marking failed");
                    let id = job.job_id.clone();
                    self.ledger.call(move |l| l.abandon_received(&id)).await?;
                }
                JobState::Stored => {
                    keep.insert(job.job_id.clone());
                    self.enqueue(Queued {
                        job,
                        slot: None,
                        received: Instant::now(),
                    });
                    resumed += 1;
                }
                // A Livepeer segment has no spool: its download lived in the client, and the
                // orchestrator has long retried it elsewhere. Nothing was counted.
                _ if job
                    .manifest_id
                    .as_deref()
                    .is_some_and(|m| m.starts_with(livepeer::MANIFEST_PREFIX)) =>
                {
                    tracing::warn!(job = %job.job_id, "Livepeer segment interrupted by the last stop before it was stored; marking failed (not counted)");
                    let id = job.job_id.clone();
                    self.ledger
                        .call(move |l| {
                            l.fail(
                                &id,
                                "interrupted",
                                "the daemon stopped before this Livepeer segment's renditions were stored",
                            )
                        })
                        .await?;
                }
                _ if !self.spool_path(&job.job_id).exists() => {
                    tracing::error!(job = %job.job_id, "spooled segment is missing; failing the job");
                    let id = job.job_id.clone();
                    self.ledger
                        .call(move |l| {
                            l.fail(
                                &id,
                                "spool_lost",
                                "the spooled segment disappeared from the data directory",
                            )
                        })
                        .await?;
                }
                _ => {
                    keep.insert(job.job_id.clone());
                    tracing::info!(job = %job.job_id, state = job.state.as_str(), "resuming job");
                    self.enqueue(Queued {
                        job,
                        slot: None,
                        received: Instant::now(),
                    });
                    resumed += 1;
                }
            }
        }
        // Orphans: spool files whose job is final, and stale work dirs.
        for (sub, strip) in [("spool", ".seg"), ("work", "")] {
            if let Ok(entries) = std::fs::read_dir(self.data_dir.join(sub)) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let id = name.strip_suffix(strip).unwrap_or(&name);
                    if sub == "work" || !keep.contains(id) {
                        let p = e.path();
                        let _ = if p.is_dir() {
                            std::fs::remove_dir_all(&p)
                        } else {
                            std::fs::remove_file(&p)
                        };
                    }
                }
            }
        }
        self.resumed.store(resumed, Ordering::Relaxed);
        Ok(resumed)
    }

    /// Starts the dispatcher that feeds admitted jobs to workers, and the task that stops
    /// batch jobs when a proof needs their GPU.
    pub fn spawn_dispatcher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let rx = self
            .queue_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        tokio::spawn(worker::reclaim(self.clone()));
        let me = self.clone();
        tokio::spawn(async move {
            if let Some(rx) = rx {
                worker::dispatch(me, rx).await;
            }
        })
    }

    /// Graceful stop: intake closed, running jobs get `grace`, then are cancelled (they
    /// stay `transcoding` and resume on restart); scheduler restored. The ledger needs no
    /// flush: every write was durable when it returned.
    pub async fn shutdown(&self, grace: Duration) {
        self.intake_stop.cancel();
        self.tracker.close();
        let running = self.metrics.jobs_running.get();
        tracing::info!(
            running,
            grace_secs = grace.as_secs(),
            "shutting down: intake stopped, waiting for running jobs"
        );
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "grace period over: checkpointing running jobs, they resume at next start"
            );
            self.hard_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(15), self.tracker.wait()).await;
        }
        self.hard_stop.cancel();
        self.admission.restore().await;
        tracing::info!(
            queued = self.queue_len(),
            "stopped; queued jobs resume at next start"
        );
    }

    fn record_latency(&self, ms: u64) {
        ewma(&self.latency_ewma_ms, ms);
    }

    fn record_run_time(&self, ms: u64) {
        ewma(&self.run_ewma_ms, ms.max(1));
    }
}

fn ewma(cell: &AtomicU64, ms: u64) {
    let old = cell.load(Ordering::Relaxed);
    let new = if old == 0 { ms } else { (old * 7 + ms) / 8 };
    cell.store(new, Ordering::Relaxed);
}

impl Daemon {
    /// Renditions encoded with libx264 although `encoder = "auto"` wanted NVENC on a host
    /// with a GPU: the CPU they take is sealing's (PC1). Counted so an alert can say so.
    pub(crate) fn count_fallbacks<'a>(
        &self,
        encoders: impl Iterator<Item = &'a str>,
        reason: Option<&str>,
    ) {
        if !self.gpu_present
            || !matches!(
                self.config.transcode.encoder_choice(),
                Ok(crate::transcode::EncoderChoice::Auto)
            )
        {
            return;
        }
        let n = encoders.filter(|e| *e == "libx264").count() as u64;
        let why = match reason {
            Some(r) if r.contains("session limit") => "session_cap",
            _ => "nvenc_unavailable",
        };
        self.metrics.encoder_fallback(why, n);
    }
}

/// The queue lane of a class: live jobs are dispatched before batch jobs.
fn lane(class: ledger::JobClass) -> usize {
    match class {
        ledger::JobClass::Live => 0,
        ledger::JobClass::Batch | ledger::JobClass::Ai => 1,
    }
}

/// Removes a file or directory, ignoring "not found".
fn remove_quiet(p: &Path) {
    let _ = if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    };
}
