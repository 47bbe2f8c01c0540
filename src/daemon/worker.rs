//! Dispatcher and workers: admitted jobs run the transcode on a blocking thread, store
//! their renditions and close the job in the ledger.
//!
//! Every job, new or resumed from the spool after a restart, goes through the same two
//! gates: the scheduler's concurrency (its published capacity) and its admission in
//! pixels/s on a device. A backlog of thousands of spooled jobs therefore drains at the
//! host's capacity instead of starting all at once. [`reclaim`] stops batch jobs on a GPU a
//! proof needs back; they are requeued, not failed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::demand::DemandSource;
use super::{remove_quiet, Daemon, Queued, Running};
use crate::ledger::{JobClass, JobDevice, JobRecord, JobState, RenditionRecord};
use crate::sched::Rejected;
use crate::transcode::{self, Input, Options, Profile, TranscodeError};

/// Pulls queued jobs and starts each one when the scheduler admits it, on the device it
/// placed it on. Each lane (live, batch) has a head waiting for admission; the live head is
/// tried first, and the batch head only while no live work waits anywhere (this queue or a
/// Livepeer segment), so a refused batch job never holds back live work behind it. Each
/// class's waiting work is reported as that class's demand.
pub(super) async fn dispatch(d: Arc<Daemon>, rx: [mpsc::UnboundedReceiver<Queued>; 2]) {
    let [mut live_rx, mut batch_rx] = rx;
    let mut capacity = d.admission.capacity();
    let beat = |d: &Daemon| {
        d.dispatch_beat_ms
            .store(crate::util::now_ms(), Ordering::Relaxed)
    };
    let mut live: Option<Queued> = None;
    let mut batch: Option<Queued> = None;
    loop {
        beat(&d);
        if d.intake_stop.is_cancelled() {
            break;
        }
        if live.is_none() {
            live = live_rx.try_recv().ok();
        }
        if batch.is_none() {
            batch = batch_rx.try_recv().ok();
        }
        if live.is_none() && batch.is_none() {
            tokio::select! {
                biased;
                _ = d.intake_stop.cancelled() => break,
                Some(q) = live_rx.recv() => live = Some(q),
                Some(q) = batch_rx.recv() => batch = Some(q),
                // The watchdog's beat while idle.
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        }
        // Registered before trying, so a permit released in between still wakes us.
        let freed = d.slot_freed.notified();
        tokio::pin!(freed);
        freed.as_mut().enable();
        let mut retry = Duration::from_millis(500);
        let mut progress = false;
        // Gate 1: no more jobs at once than the scheduler's capacity, resumed ones included.
        let cap = (*capacity.borrow_and_update()).max(1);
        if d.running_jobs() < cap {
            // Gate 2: admission in pixels/s on a device; live first.
            match try_start(&d, &mut live) {
                Some(Ok(())) => progress = true,
                Some(Err(rejected)) => retry = retry.min(rejected.retry_after),
                None => {}
            }
            let live_elsewhere = d.demand.live_waiting() > 0;
            if live.is_none() && !live_elsewhere && d.running_jobs() < cap {
                match try_start(&d, &mut batch) {
                    Some(Ok(())) => progress = true,
                    Some(Err(rejected)) => retry = retry.min(rejected.retry_after),
                    None => {}
                }
            }
        }
        // What still waits is this queue's demand: the head and, as an estimate, as many
        // more like it as are queued behind it.
        for (head, class) in [(&live, JobClass::Live), (&batch, JobClass::Batch)] {
            let pps = head
                .as_ref()
                .map(|q| pixels_per_sec(&q.job) * d.queued_of(class).max(1) as f64)
                .unwrap_or(0.0);
            d.report_demand(DemandSource::Queue, class, pps);
        }
        if progress {
            continue;
        }
        tokio::select! {
            _ = d.intake_stop.cancelled() => break,
            _ = &mut freed => {}
            r = capacity.changed() => {
                if r.is_err() {
                    break;
                }
                d.metrics.capacity.set(*capacity.borrow_and_update() as i64);
            }
            Some(q) = live_rx.recv(), if live.is_none() => live = Some(q),
            Some(q) = batch_rx.recv(), if batch.is_none() => batch = Some(q),
            _ = tokio::time::sleep(retry.clamp(Duration::from_millis(20), Duration::from_millis(500))) => {}
        }
    }
    tracing::debug!("dispatcher stopped");
}

/// Asks the scheduler to admit the lane's head; when it does, takes it out of `head` and
/// starts it on the placed device. `None` when the lane is empty; a refused job stays.
fn try_start(d: &Arc<Daemon>, head: &mut Option<Queued>) -> Option<Result<(), Rejected>> {
    let job = &head.as_ref()?.job;
    let placement = match d.admission.try_admit(job.class, pixels_per_sec(job)) {
        Ok(p) => p,
        Err(rejected) => return Some(Err(rejected)),
    };
    let q = head.take()?;
    d.dequeued(q.job.class);
    drop(q.slot);
    let preempt = d.hard_stop.child_token();
    let id = q.job.job_id.clone();
    d.running.lock().unwrap_or_else(|e| e.into_inner()).insert(
        id.clone(),
        Running {
            device: placement.device,
            class: q.job.class,
            pixels_per_sec: placement.pixels_per_sec,
            started: Instant::now(),
            preempt: preempt.clone(),
        },
    );
    let me = d.clone();
    d.metrics.jobs_running.inc();
    d.tracker.spawn(async move {
        let job = q.job.clone();
        let started = Instant::now();
        let device = JobDevice {
            index: placement.device,
            uuid: placement.uuid.clone(),
        };
        let outcome = run(&me, q.job, q.received, device, &preempt).await;
        drop(placement);
        me.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        me.metrics.jobs_running.dec();
        match outcome {
            Ok(Outcome::Preempted) => {
                // Back in the queue: it runs again once the GPU is free.
                me.metrics.jobs_preempted.inc();
                me.enqueue(Queued {
                    job,
                    slot: None,
                    received: Instant::now(),
                });
            }
            Ok(Outcome::Done) => me.record_run_time(started.elapsed().as_millis() as u64),
            Ok(_) => {}
            Err(err) => {
                tracing::error!(job = %id, error = %format!("{err:#}"), "job could not be recorded; it resumes at next start");
            }
        }
        // Every admission waiter (the dispatcher, Livepeer segments) retries.
        me.slot_freed.notify_waiters();
        me.notify_final(&id);
    });
    Some(Ok(()))
}

/// Follows the scheduler's shed requests: when a proof needs a GPU back (its floor, or its
/// memory), batch jobs running there are stopped and requeued.
pub(super) async fn reclaim(d: Arc<Daemon>) {
    let mut shed = d.admission.shed();
    loop {
        tokio::select! {
            _ = d.intake_stop.cancelled() => break,
            r = shed.changed() => if r.is_err() { break },
        }
        let wanted = shed.borrow_and_update().clone();
        for s in wanted {
            let stopped = d.preempt(s.device, s.pixels_per_sec);
            if !stopped.is_empty() {
                tracing::info!(gpu = s.device, shed_mpx_per_sec = s.pixels_per_sec / 1e6, jobs = ?stopped, "a proof needs this GPU: stopping batch jobs (they are requeued)");
            }
        }
    }
}

/// Σ w × h × fps over the job's ladder (see [`transcode::ladder_pixels_per_sec`]).
fn pixels_per_sec(job: &JobRecord) -> f64 {
    let ladder: Vec<Profile> = job
        .profiles
        .iter()
        .filter_map(|p| Profile::parse(p).ok())
        .collect();
    transcode::ladder_pixels_per_sec(&ladder)
}

enum Outcome {
    Done,
    Failed(&'static str),
    /// Stopped by shutdown; stays in the ledger to resume.
    Checkpointed,
    /// Stopped because a proof needs the GPU; the caller requeues it.
    Preempted,
    /// The disk is full: the job keeps its state and spool file and is tried again later.
    Deferred,
}

/// How long a job waits after a full disk before it is tried again.
const DISK_FULL_RETRY: Duration = Duration::from_secs(30);

/// Whether an error comes from a full disk (the database's `SQLITE_FULL` or the OS's
/// `ENOSPC`, as it surfaces through the store, FFmpeg or the ledger).
pub(super) fn is_disk_full(e: &anyhow::Error) -> bool {
    if let Some(crate::ledger::LedgerError::Db(db)) = e.downcast_ref::<crate::ledger::LedgerError>()
    {
        if db.is_disk_full() {
            return true;
        }
    }
    let text = format!("{e:#}");
    text.contains("No space left on device")
        || text.contains("disk is full")
        || text.contains("database or disk is full")
}

async fn run(
    d: &Arc<Daemon>,
    job: JobRecord,
    received: Instant,
    device: JobDevice,
    preempt: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Outcome> {
    let id = job.job_id.clone();
    let outcome = match execute(d, job.clone(), received, device, preempt).await {
        Ok(o) => o,
        Err(e) if is_disk_full(&e) => {
            tracing::error!(job = %id, error = %format!("{e:#}"), "disk full while recording the job");
            Outcome::Deferred
        }
        Err(e) => return Err(e),
    };
    match &outcome {
        Outcome::Done => {
            let ms = received.elapsed().as_millis() as u64;
            d.record_latency(ms);
            remove_quiet(&d.spool_path(&id));
        }
        Outcome::Failed(result) => {
            d.metrics.segment(result);
            remove_quiet(&d.spool_path(&id));
        }
        Outcome::Checkpointed => {
            tracing::info!(job = %id, "transcode interrupted by shutdown; resumes at next start");
        }
        Outcome::Deferred => {
            d.metrics.store_errors.inc();
            tracing::error!(job = %id, retry_secs = DISK_FULL_RETRY.as_secs(), "the disk holding the data directory is full: the job keeps its place and is tried again (free some space)");
            let me = d.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = me.intake_stop.cancelled() => {}
                    _ = tokio::time::sleep(DISK_FULL_RETRY) => me.enqueue(Queued {
                        job,
                        slot: None,
                        received: Instant::now(),
                    }),
                }
            });
        }
        Outcome::Preempted => {
            tracing::info!(job = %id, "transcode stopped for a proof; requeued");
        }
    }
    remove_quiet(&d.work_dir(&id));
    Ok(outcome)
}

async fn execute(
    d: &Arc<Daemon>,
    job: JobRecord,
    received: Instant,
    device: JobDevice,
    preempt: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Outcome> {
    let id = job.job_id.clone();
    let key = id.clone();
    let current = d.ledger.call(move |l| l.get(&key)).await?.unwrap_or(job);
    if current.state.is_final() {
        return Ok(Outcome::Done);
    }
    if current.state != JobState::Stored {
        let key = id.clone();
        let job = d
            .ledger
            .call(move |l| l.mark_transcoding_on(&key, device))
            .await?;
        match transcode_and_store(d, &job, received, preempt).await? {
            Ok(()) => {}
            Err(outcome) => return Ok(outcome),
        }
    }
    let key = id.clone();
    if let Some(done) = d.ledger.call(move |l| l.complete(&key)).await? {
        d.metrics.job_done(&done, received.elapsed().as_secs_f64());
        d.account_earnings(&done, None).await;
        tracing::info!(job = %id, encoded_pixels = done.encoded_pixels, renditions = done.renditions.len(), "job done");
    }
    Ok(Outcome::Done)
}

/// Transcodes the spooled segment and stores every rendition; `Err(outcome)` when the
/// job ends otherwise (failed or checkpointed), already recorded.
async fn transcode_and_store(
    d: &Arc<Daemon>,
    job: &JobRecord,
    received: Instant,
    preempt: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Result<(), Outcome>> {
    let id = &job.job_id;
    let cfg = &d.config.transcode;
    let profiles = match Profile::parse_list(&job.profiles.join(",")) {
        Ok(p) => p,
        Err(e) => {
            fail(d, id, "bad_profiles", e.to_string()).await?;
            return Ok(Err(Outcome::Failed("bad_input")));
        }
    };
    let out_dir = d.work_dir(id);
    remove_quiet(&out_dir);
    std::fs::create_dir_all(&out_dir)?;
    let deadline = match job.class {
        JobClass::Live => Some(received + Duration::from_millis(4 * job.duration_ms.max(1))),
        JobClass::Batch if cfg.batch_deadline_secs > 0 => {
            Some(Instant::now() + Duration::from_secs(cfg.batch_deadline_secs))
        }
        // AI jobs never reach the transcode queue (see `daemon::ai`).
        JobClass::Batch | JobClass::Ai => None,
    };
    let request = transcode::Request {
        input: Input::File(d.spool_path(id)),
        profiles,
        out_dir: out_dir.clone(),
        options: Options {
            encoder: cfg.encoder_choice()?,
            decoder: cfg.decoder_choice()?,
            // The device the scheduler placed the job on (recorded in the ledger with it).
            gpu: job.device.as_ref().map_or(cfg.gpu, |dev| dev.index),
            max_input_pixels: cfg.max_input_pixels,
            x264_preset: cfg.x264_preset.clone(),
            deadline,
            // A child of hard_stop: shutdown and a proof's preemption both stop it.
            cancel: preempt.clone(),
            media_duration: Some(Duration::from_millis(job.duration_ms)),
            wall_bound: cfg.wall_bound(),
            ..Options::default()
        },
    };
    let result = tokio::task::spawn_blocking(move || transcode::transcode(&request)).await?;
    let report = match result {
        Ok(r) => r,
        Err(TranscodeError::Cancelled) if d.hard_stop.is_cancelled() => {
            return Ok(Err(Outcome::Checkpointed));
        }
        Err(e) if e.to_string().contains("No space left on device") => {
            tracing::warn!(job = %id, error = %e, "transcode output hit a full disk");
            return Ok(Err(Outcome::Deferred));
        }
        Err(TranscodeError::Cancelled) if preempt.is_cancelled() => {
            return Ok(Err(Outcome::Preempted));
        }
        Err(e) => {
            // The engine's deadline can cut demuxing short, which then reads as bad
            // media; past the deadline, the deadline is the reason.
            let past_deadline = deadline.is_some_and(|dl| Instant::now() >= dl);
            let (code, result) = if matches!(
                e,
                TranscodeError::DeadlineExceeded { .. } | TranscodeError::WallBound { .. }
            ) || past_deadline
            {
                ("deadline_exceeded", "deadline")
            } else if e.is_bad_input() {
                ("bad_input", "bad_input")
            } else {
                ("transcode_failed", "failed")
            };
            tracing::warn!(job = %id, code, error = %e, "transcode failed");
            fail(d, id, code, e.to_string()).await?;
            return Ok(Err(Outcome::Failed(result)));
        }
    };
    if let Some(reason) = &report.fallback_reason {
        tracing::debug!(job = %id, %reason, "hardware path not used");
    }
    d.count_fallbacks(
        report.renditions.iter().map(|r| r.encoder.as_str()),
        report.fallback_reason.as_deref(),
    );
    let mut renditions = Vec::with_capacity(report.renditions.len());
    for r in &report.renditions {
        let mut attempt = 0;
        let stored = loop {
            attempt += 1;
            match d.store.put(&r.path).await {
                Ok(s) => break s,
                Err(e @ crate::daemon::rendition_store::RenditionStoreError::DiskFull(_)) => {
                    tracing::warn!(job = %id, error = %e, "storing rendition hit a full disk");
                    return Ok(Err(Outcome::Deferred));
                }
                Err(e) => {
                    d.metrics.store_errors.inc();
                    tracing::warn!(job = %id, attempt, error = %e, "storing rendition failed");
                    if attempt >= cfg.store_attempts.max(1) {
                        fail(d, id, "store_error", e.to_string()).await?;
                        return Ok(Err(Outcome::Failed("store_error")));
                    }
                    tokio::time::sleep(Duration::from_millis(200 * attempt as u64)).await;
                }
            }
        };
        renditions.push(RenditionRecord {
            profile: r.profile.clone(),
            cid: stored.cid,
            pixels: r.pixels,
            bytes: stored.bytes,
            width: r.width,
            height: r.height,
            frames: r.frames,
            encoder: r.encoder.clone(),
            mime: r.mime.to_string(),
            job_id: id.clone(),
        });
    }
    let (key, decoded, media, wall) = (
        id.clone(),
        report.decoded_pixels,
        report.media_seconds,
        report.wall_ms,
    );
    d.ledger
        .call(move |l| l.mark_stored(&key, decoded, media, wall, renditions))
        .await?;
    Ok(Ok(()))
}

async fn fail(d: &Daemon, id: &str, code: &'static str, message: String) -> anyhow::Result<()> {
    let id = id.to_string();
    d.ledger.call(move |l| l.fail(&id, code, &message)).await?;
    Ok(())
}
