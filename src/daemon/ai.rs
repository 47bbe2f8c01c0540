//! The daemon's side of the Livepeer AI worker (`comine run --orch-addr …` with models in
//! `[ai]`).
//!
//! [`start`] builds the [`AiService`] (loading ONNX Runtime, so a bad library stops the
//! start with its reason), loads the warm models, and runs
//! `livepeer::ai_worker::run_ai_worker` with:
//! - **the offer**: every ready model (embedded and loaded, or a runner whose `/health` is
//!   `OK`/`IDLE`) with capacity 1 (a model serves one job at a time), and the GPUs from the
//!   scheduler's telemetry; refreshed every few seconds and whenever a VRAM lease changes;
//! - **the VRAM leases** ([`crate::ai::lease`]): a loaded model holds device memory; a PoSt
//!   window, a C2 or memory pressure takes it back — offer lowered (re-registration), jobs
//!   in flight drained within a bound and the rest answered with an error, model unloaded,
//!   decision recorded — and it comes back after the pressure has been gone for a while;
//! - **a ledger handler**: every job goes through the ledger's state machine as class `ai`
//!   under the manifest `ai:<pipeline>/<model>` with the task id as sequence (the
//!   idempotency key), its units per Livepeer's billing as its pixels: `received` when it
//!   arrives (before its input is fetched, so a crash leaves a record that the restart
//!   fails as `interrupted`), `queued` → `transcoding` when it runs, then `stored` →
//!   `done` or `failed` when it is answered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::ai::lease::{LeaseDecision, LeaseInput, Leases};
use crate::ai::service::ServedModel;
use crate::ai::{AiError, AiService};
use crate::ledger::{Admitted, JobClass, JobState, NewJob, RenditionRecord};
use crate::livepeer::ai_worker::{
    run_ai_worker, AiFailure, AiFile, AiJob, AiJobArrival, AiJobHandler, AiJobRecord, AiOffer,
    AiOutput, AiWorkerConfig, BoxFuture, GpuDescription, OfferedModel,
};
use crate::livepeer::{LinkStatus, LivepeerError, TranscoderConfig};

/// Prefix of the ledger's manifest IDs for AI jobs.
pub const MANIFEST_PREFIX: &str = "ai:";

/// AI job counters for `/v1/status`.
#[derive(Debug, Default)]
pub struct AiCounters {
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub duplicates: AtomicU64,
    pub not_accepted: AtomicU64,
    pub units: AtomicU64,
}

/// What `/v1/status` shows under `"ai"`.
pub struct AiState {
    pub service: Arc<AiService>,
    pub offer: watch::Receiver<AiOffer>,
    pub link: Arc<LinkStatus>,
    pub counters: Arc<AiCounters>,
    pub leases: Arc<Mutex<Leases>>,
}

impl AiState {
    pub fn to_json(&self) -> serde_json::Value {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let offer = self.offer.borrow().clone();
        let leases = self.leases.lock().map(|l| l.to_json()).unwrap_or_default();
        json!({
            "link": self.link.get(),
            "runtime": crate::ai::runtime::loaded(),
            "offered": offer.models.iter().map(|m| json!({
                "pipeline": m.pipeline, "model_id": m.model_id,
                "capacity": m.capacity, "warm": m.warm, "runner_version": m.runner_version,
            })).collect::<Vec<_>>(),
            "jobs": {
                "done": n(&c.done),
                "failed": n(&c.failed),
                "duplicates": n(&c.duplicates),
                "not_accepted": n(&c.not_accepted),
                "units": n(&c.units),
            },
            "leases": leases,
        })
    }
}

struct Handler {
    daemon: Arc<Daemon>,
    service: Arc<AiService>,
    counters: Arc<AiCounters>,
    leases: Arc<Mutex<Leases>>,
    /// Task id → ledger job id, for the jobs admitted on arrival and not yet recorded.
    admitted: Arc<Mutex<std::collections::HashMap<i64, String>>>,
}

impl Handler {
    fn admitted(&self, task_id: i64) -> Option<String> {
        self.admitted
            .lock()
            .ok()
            .and_then(|m| m.get(&task_id).cloned())
    }
}

impl AiJobHandler for Handler {
    fn received(&self, a: AiJobArrival) -> BoxFuture<'_, ()> {
        let (daemon, admitted) = (self.daemon.clone(), self.admitted.clone());
        Box::pin(async move {
            let task_id = a.task_id;
            let db = daemon.ledger.db().clone();
            let r = db
                .call(move || {
                    daemon
                        .ledger
                        .admit(new_job(&a.pipeline, &a.model_id, task_id))
                })
                .await;
            match r {
                Ok(Ok(Admitted::New(j))) => {
                    if let Ok(mut m) = admitted.lock() {
                        m.insert(task_id, j.job_id);
                    }
                }
                // Recorded before (a re-sent task): it runs and is answered, but counts once.
                Ok(Ok(Admitted::Duplicate(j))) => {
                    tracing::info!(task_id, job = %j.job_id, state = j.state.as_str(), "AI task already in the ledger; not counted again")
                }
                Ok(Err(e)) => tracing::error!(task_id, error = %e, "AI job arrival not recorded"),
                Err(e) => tracing::error!(task_id, error = %e, "AI job arrival not recorded"),
            }
        })
    }

    fn run(
        &self,
        job: AiJob,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<AiOutput, AiFailure>> {
        Box::pin(async move {
            if let Some(id) = self.admitted(job.task_id) {
                let d = self.daemon.clone();
                let db = d.ledger.db().clone();
                let r = db.call(move || to_transcoding(&d, &id)).await;
                if let Ok(Err(e)) | Err(e) = r.map_err(anyhow::Error::from) {
                    tracing::error!(task_id = job.task_id, error = %format!("{e:#}"), "AI job state not recorded");
                }
            }
            // A job on a model whose lease is being taken back is cancelled with it.
            let lease_cancel = self
                .leases
                .lock()
                .ok()
                .and_then(|l| l.job_token(&job.model_id));
            let _in_flight = self.leases.lock().ok().map(|l| l.enter(&job.model_id));
            let cancel = match lease_cancel {
                Some(t) => {
                    let both = cancel.child_token();
                    let (a, b) = (t, both.clone());
                    tokio::spawn(async move {
                        a.cancelled().await;
                        b.cancel();
                    });
                    both
                }
                None => cancel,
            };
            let prefix = job.task_id.to_string();
            self.service
                .run(
                    &job.pipeline,
                    &job.model_id,
                    &job.request,
                    job.input,
                    &prefix,
                    cancel,
                )
                .await
                .map(|r| AiOutput {
                    json: r.json,
                    units: r.units,
                    files: r
                        .files
                        .into_iter()
                        .map(|f| AiFile {
                            name: f.name,
                            content_type: f.content_type,
                            data: f.data,
                        })
                        .collect(),
                })
                .map_err(|e: AiError| AiFailure::new(e.reason(), e.to_string()))
        })
    }

    fn record(&self, rec: AiJobRecord) -> BoxFuture<'_, ()> {
        // Ledger writes block until durable: they run on the blocking pool, never on a
        // runtime worker (see `db`).
        let (daemon, counters) = (self.daemon.clone(), self.counters.clone());
        let id = self
            .admitted
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&rec.task_id));
        Box::pin(async move {
            let task_id = rec.task_id;
            let db = daemon.ledger.db().clone();
            let d = daemon.clone();
            let r = db.call(move || account(&d, &counters, &rec, id)).await;
            match r {
                Ok(Ok(Some(done))) => daemon.account_earnings(&done, None).await,
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::error!(task_id, error = %format!("{e:#}"), "AI job accounting failed")
                }
                Err(e) => tracing::error!(task_id, error = %e, "AI job accounting failed"),
            }
        })
    }
}

/// The ledger entry of an AI job: manifest `ai:<pipeline>/<model>`, the task id as
/// sequence (the idempotency key).
fn new_job(pipeline: &str, model_id: &str, task_id: i64) -> NewJob {
    let model = if model_id.is_empty() { "-" } else { model_id };
    NewJob {
        class: JobClass::Ai,
        manifest_id: Some(format!("{MANIFEST_PREFIX}{pipeline}/{model}")),
        seq: u64::try_from(task_id).ok(),
        profiles: vec![format!("ai:{pipeline}")],
        duration_ms: 0,
        segment_bytes: 0,
    }
}

/// Moves a received job to `transcoding` (it runs now), from wherever it is before that.
fn to_transcoding(d: &Daemon, id: &str) -> anyhow::Result<()> {
    let Some(job) = d.ledger.get(id)? else {
        anyhow::bail!("AI job {id} vanished from the ledger");
    };
    if job.state == JobState::Received {
        d.ledger.mark_queued(id)?;
    }
    if matches!(job.state, JobState::Received | JobState::Queued) {
        d.ledger.mark_transcoding(id)?;
    }
    Ok(())
}

/// Records one AI job's outcome in the ledger (blocking: call it off the runtime's
/// workers). `admitted` is its ledger id when it was admitted on arrival; without one it
/// is admitted now, and a task already in the ledger is not counted again. Returns the job
/// when it reached `done` now, for its earnings.
fn account(
    d: &Daemon,
    c: &AiCounters,
    rec: &AiJobRecord,
    admitted: Option<String>,
) -> anyhow::Result<Option<crate::ledger::JobRecord>> {
    {
        let model = if rec.model_id.is_empty() {
            "-"
        } else {
            rec.model_id.as_str()
        };
        let id = match admitted {
            Some(id) => id,
            None => match d
                .ledger
                .admit(new_job(&rec.pipeline, &rec.model_id, rec.task_id))?
            {
                Admitted::Duplicate(_) => {
                    c.duplicates.fetch_add(1, Ordering::Relaxed);
                    return Ok(None);
                }
                Admitted::New(j) => j.job_id,
            },
        };
        let result = match (&rec.outcome, rec.delivered) {
            (Err(f), _) => Err((f.reason.clone(), f.message.clone())),
            (Ok(()), false) => Err((
                "not_accepted".to_string(),
                "the orchestrator did not accept the result".to_string(),
            )),
            (Ok(()), true) => Ok(()),
        };
        match result {
            Err((code, message)) => {
                // A job already final (a crash's `interrupted`) keeps its state.
                if d.ledger.get(&id)?.is_some_and(|j| j.state.is_final()) {
                    return Ok(None);
                }
                d.ledger.fail(&id, &code, &message)?;
                if code == "not_accepted" {
                    c.not_accepted.fetch_add(1, Ordering::Relaxed);
                }
                c.failed.fetch_add(1, Ordering::Relaxed);
                d.metrics.ai_job(&rec.pipeline, model, &code, 0);
            }
            Ok(()) => {
                to_transcoding(d, &id)?;
                d.ledger.mark_stored(
                    &id,
                    rec.units,
                    0.0,
                    rec.elapsed.as_millis() as u64,
                    vec![RenditionRecord {
                        profile: format!("ai:{}", rec.pipeline),
                        cid: String::new(),
                        pixels: rec.units,
                        bytes: 0,
                        width: 0,
                        height: 0,
                        frames: 1,
                        encoder: model.to_string(),
                        mime: String::new(),
                        job_id: String::new(),
                    }],
                )?;
                if let Some(done) = d.ledger.complete(&id)? {
                    c.done.fetch_add(1, Ordering::Relaxed);
                    c.units.fetch_add(rec.units, Ordering::Relaxed);
                    d.metrics.ai_job(&rec.pipeline, model, "ok", rec.units);
                    return Ok(Some(done));
                }
            }
        }
        Ok(None)
    }
}

/// The offer from what is ready now.
fn offer_of(served: &[ServedModel], gpus: &[GpuDescription]) -> AiOffer {
    AiOffer {
        models: served
            .iter()
            .filter(|m| m.ready)
            .map(|m| OfferedModel {
                pipeline: m.pipeline.clone(),
                model_id: m.model_id.clone(),
                capacity: 1,
                warm: true,
                runner_version: m.runner_version.clone(),
            })
            .collect(),
        gpus: gpus.to_vec(),
    }
}

fn gpus_of(d: &Daemon) -> Vec<GpuDescription> {
    d.admission
        .status()
        .devices
        .iter()
        .map(|g| GpuDescription {
            id: format!("{}-{}", g.source, g.index),
            name: g.name.clone(),
            major: 0,
            minor: 0,
            memory_free: g.memory_total_bytes.saturating_sub(g.memory_used_bytes) as i64,
            memory_total: g.memory_total_bytes as i64,
        })
        .collect()
}

/// Starts the AI side: loads the runtime and warm models now (errors stop the start),
/// then runs the offer refresher and the lease keeper until `stop`, and, with an
/// orchestrator (`tcfg`), the AI-worker link (whose task is returned). Without one the
/// models still serve comine's own API (`/v1/ai/upscale`).
pub async fn start(
    d: &Arc<Daemon>,
    tcfg: Option<&TranscoderConfig>,
    stop: CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<Result<(), LivepeerError>>>> {
    let cfg = d.config.ai.clone();
    let gpu = d.config.transcode.gpu;
    let service = Arc::new(
        tokio::task::spawn_blocking(move || AiService::new(cfg, gpu))
            .await
            .map_err(|e| anyhow::anyhow!("AI service start: {e}"))?
            .map_err(|e| anyhow::anyhow!("[ai]: {e}"))?,
    );
    let leases = Arc::new(Mutex::new(Leases::new(
        service
            .embedded()
            .iter()
            .filter(|m| m.warm)
            .map(|m| (m.model_id.clone(), m.vram_mib << 20))
            .collect(),
        d.config.ai.lease_policy(),
    )));
    // Warm models load now, so a broken model file is a start-up error.
    for m in service.embedded().iter().filter(|m| m.warm) {
        let (svc, id) = (service.clone(), m.model_id.clone());
        tokio::task::spawn_blocking(move || svc.load(&id))
            .await
            .map_err(|e| anyhow::anyhow!("loading {}: {e}", m.model_id))?
            .map_err(|e| anyhow::anyhow!("[[ai.models]] {}: {e}", m.model_id))?;
        if let Ok(mut l) = leases.lock() {
            l.mark_held(&m.model_id, crate::ledger::time::now_ms());
        }
    }
    let wcfg = tcfg.map(|t| {
        let mut w = AiWorkerConfig::from_transcoder(t);
        w.input_timeout = Duration::from_secs(d.config.ai.input_timeout_secs.max(1));
        w.job_timeout = Duration::from_secs(d.config.ai.job_timeout_secs.max(1));
        w.shutdown_grace = Duration::from_secs(d.config.api.shutdown_grace_secs);
        w
    });
    let link = match &wcfg {
        Some(w) => w.link.clone(),
        None => {
            let l = Arc::new(LinkStatus::default());
            l.set_state("not_attached");
            l
        }
    };
    let served = service.served().await;
    let (offer_tx, offer_rx) = watch::channel(offer_of(&served, &gpus_of(d)));
    let counters = Arc::new(AiCounters::default());
    let _ = d.ai.set(AiState {
        service: service.clone(),
        offer: offer_rx.clone(),
        link,
        counters: counters.clone(),
        leases: leases.clone(),
    });
    // Offer refresher + lease keeper: every 2 s, telemetry in, leases ticked, offer out.
    {
        let (d, service, leases, stop) = (d.clone(), service.clone(), leases.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                keep_leases(&d, &service, &leases, &offer_tx).await;
            }
        });
    }
    let handler: Arc<dyn AiJobHandler> = Arc::new(Handler {
        daemon: d.clone(),
        service,
        counters,
        leases,
        admitted: Arc::default(),
    });
    Ok(wcfg.map(|w| tokio::spawn(run_ai_worker(w, offer_rx, handler, stop))))
}

/// One lease round: read the pressure, apply the take-back or return protocol, publish
/// the offer.
async fn keep_leases(
    d: &Arc<Daemon>,
    service: &Arc<AiService>,
    leases: &Arc<Mutex<Leases>>,
    offer_tx: &watch::Sender<AiOffer>,
) {
    let status = d.admission.status();
    let gpu = d.config.transcode.gpu;
    let dev = status.devices.iter().find(|g| g.index == gpu);
    let proof_running = status
        .decisions
        .last()
        .and_then(|dec| dec.pointer("/input/proof/running"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let c2 = status.decisions.last().and_then(|dec| c2_on(dec, gpu));
    if let Some(c2) = &c2 {
        tracing::debug!(gpu, %c2, "C2 seen on the AI device");
    }
    let input = LeaseInput {
        now_ms: crate::ledger::time::now_ms(),
        post_window: proof_running,
        c2_running: c2.is_some(),
        memory_total_bytes: dev.map(|g| g.memory_total_bytes).unwrap_or(0),
        memory_used_bytes: dev.map(|g| g.memory_used_bytes).unwrap_or(0),
    };
    let decisions = match leases.lock() {
        Ok(mut l) => l.tick(&input),
        Err(_) => return,
    };
    for dec in decisions {
        apply(service, leases, offer_tx, &dec, gpus_of(d)).await;
    }
    let served = service.served().await;
    let gpus = gpus_of(d);
    offer_tx.send_if_modified(|o| {
        let new = offer_of(&served, &gpus);
        // GPU free memory moves all the time; only model changes re-register.
        if new.models != o.models {
            *o = new;
            true
        } else {
            false
        }
    });
}

/// A sealing process counts as a C2 (the SNARK, which needs the models' memory) when NVML
/// shows it using this much of the device's SM, percent…
pub const C2_SM_PCT: u32 = 50;
/// …or this much of its memory (an idle lotus-worker's CUDA context holds a few hundred
/// MiB; a C2 holds gigabytes).
pub const C2_MEMORY_BYTES: u64 = 4 << 30;

/// The C2 on device `gpu` in a scheduler decision (its telemetry snapshot's process list,
/// NVML's or the simulated device's): who, and how much; `None` when there is none.
pub fn c2_on(decision: &serde_json::Value, gpu: u32) -> Option<String> {
    let devices = decision.pointer("/input/snapshot/devices")?.as_array()?;
    let dev = devices
        .iter()
        .find(|d| d.get("index").and_then(|i| i.as_u64()) == Some(u64::from(gpu)))?;
    dev.get("processes")?.as_array()?.iter().find_map(|p| {
        let p: crate::gpu::ProcessUse = serde_json::from_value(p.clone()).ok()?;
        let busy = p.sm_pct.is_some_and(|s| s >= C2_SM_PCT)
            || p.memory_bytes.is_some_and(|m| m >= C2_MEMORY_BYTES);
        (p.role == crate::gpu::Role::Sealing && busy).then(|| {
            format!(
                "sealing process {} (pid {}) uses {} MiB and {}% SM on GPU {gpu}",
                p.name,
                p.pid,
                p.memory_bytes.unwrap_or(0) >> 20,
                p.sm_pct.unwrap_or(0)
            )
        })
    })
}

/// Carries out one lease decision (see [`crate::ai::lease`] for the protocol).
pub async fn apply(
    service: &Arc<AiService>,
    leases: &Arc<Mutex<Leases>>,
    offer_tx: &watch::Sender<AiOffer>,
    dec: &LeaseDecision,
    gpus: Vec<GpuDescription>,
) {
    let model = dec.model_id.clone();
    if dec.release {
        // 1. Re-register without the model (the link does it at once on a lower offer).
        offer_tx.send_modify(|o| {
            o.models.retain(|m| m.model_id != model);
            o.gpus = gpus;
        });
        // 2. Drain: jobs in flight get the bound, then are cancelled (they answer an error).
        let drain = leases.lock().ok().map(|l| l.drain_bound());
        let bound = drain.unwrap_or(Duration::from_secs(5));
        let until = tokio::time::Instant::now() + bound;
        loop {
            let busy = leases.lock().map(|l| l.in_flight(&model)).unwrap_or(0);
            if busy == 0 || tokio::time::Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Ok(mut l) = leases.lock() {
            l.cancel_jobs(&model);
        }
        // 3. Unload.
        service.unload(&model);
        tracing::warn!(model = %model, reason = %dec.reason, "VRAM lease taken back: model unloaded");
    } else {
        let (svc, id) = (service.clone(), model.clone());
        match tokio::task::spawn_blocking(move || svc.load(&id)).await {
            Ok(Ok(())) => {
                tracing::info!(model = %model, reason = %dec.reason, "VRAM lease re-acquired: model loaded")
            }
            Ok(Err(e)) => {
                tracing::error!(model = %model, error = %e, "re-loading the model failed")
            }
            Err(e) => tracing::error!(model = %model, error = %e, "re-loading the model failed"),
        }
    }
    // 4. The decision itself is kept by `Leases` (shown in /v1/status with its reason).
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::sim::{JobLoad, SimGpu};

    fn decision(sim: &SimGpu) -> serde_json::Value {
        json!({"input": {"snapshot": serde_json::to_value(sim.poll()).unwrap()}})
    }

    #[test]
    fn a_sealing_process_at_work_on_the_device_is_a_c2() {
        let sim = SimGpu::from_presets(&["rtx3090", "rtx3090"], 2).unwrap();
        assert_eq!(c2_on(&decision(&sim), 0), None, "an idle device");
        let _transcode = sim
            .start_job(
                0,
                JobLoad::Model {
                    memory_bytes: 6 << 30,
                },
            )
            .unwrap();
        assert_eq!(c2_on(&decision(&sim), 0), None, "our own model is not a C2");
        let _c2 = sim.start_job(1, JobLoad::Sealing { sm_pct: 90.0 }).unwrap();
        assert_eq!(c2_on(&decision(&sim), 0), None, "a C2 on another GPU");
        let why = c2_on(&decision(&sim), 1).expect("the C2 on GPU 1");
        assert!(why.starts_with("sealing process lotus-worker"), "{why}");
        assert!(why.ends_with("on GPU 1"), "{why}");
    }
}
