//! The daemon's side of the Livepeer AI worker (`comine run --orch-addr …` with models in
//! `[ai]`).
//!
//! [`start`] builds the [`AiService`] (loading ONNX Runtime, so a bad library stops the
//! start with its reason), loads the warm models, and runs
//! `livepeer::ai_worker::run_ai_worker` with:
//! - **the offer**: every ready model (an embedded model whose VRAM lease the scheduler
//!   granted and that is loaded, or a runner whose `/health` is `OK`/`IDLE`) with capacity 1
//!   (a model serves one job at a time), and the GPUs from the scheduler's telemetry;
//!   refreshed every few seconds and whenever a VRAM lease changes;
//! - **the VRAM leases**, decided by the scheduler alone (`sched::lease`: a PoSt window, a
//!   C2, an unhealthy GPU or memory pressure takes a lease back, calm gives it back with
//!   hysteresis). The warm models are requested from it at start ([`Admission::set_models`]
//!   on the AI GPU, `[transcode] gpu`, with their `vram_mib`) and the [`LeaseKeeper`] carries
//!   its decisions out: a grant loads the model and offers it; a revocation is the take-back
//!   protocol ([`take_back`]): offer lowered (re-registration), jobs in flight drained within
//!   `[ai] lease_drain_secs` and the rest answered with an error, model unloaded, and the
//!   scheduler's decision and reason shown in `/v1/status` `ai.leases`.
//!   Warm models are loaded at start *before* any grant, so a broken model file is a
//!   start-up error; the model is offered only once granted, and a first decision that does
//!   not grant it (no headroom, pressure) unloads it with the scheduler's reason;
//! - **a ledger handler**: every job goes through the ledger's state machine as class `ai`
//!   under the manifest `ai:<pipeline>/<model>` with the task id as sequence (the
//!   idempotency key), its units per Livepeer's billing as its pixels: `received` when it
//!   arrives (before its input is fetched, so a crash leaves a record that the restart
//!   fails as `interrupted`), `queued` → `transcoding` when it runs, then `stored` →
//!   `done` or `failed` when it is answered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::admission::Admission;
use super::Daemon;
use crate::ai::in_flight::InFlightJobs;
use crate::ai::service::ServedModel;
use crate::ai::{AiError, AiService};
use crate::gpu::{JobLoad, SimGpu, SimJob};
use crate::ledger::{Admitted, JobClass, JobState, NewJob, RenditionRecord};
use crate::livepeer::ai_worker::{
    run_ai_worker, AiFailure, AiFile, AiJob, AiJobArrival, AiJobHandler, AiJobRecord, AiOffer,
    AiOutput, AiWorkerConfig, BoxFuture, GpuDescription, OfferedModel,
};
use crate::livepeer::{LinkStatus, LivepeerError, TranscoderConfig};
use crate::sched::{LeaseAction, LeaseDecision, LeaseView, ModelLease};

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
    pub leases: Arc<LeaseKeeper>,
}

impl AiState {
    pub fn to_json(&self) -> serde_json::Value {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let offer = self.offer.borrow().clone();
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
            "leases": self.leases.to_json(),
        })
    }
}

/// One warm model as the daemon holds it.
struct Held {
    model_id: String,
    bytes: u64,
    /// In memory (loaded at start to validate it, or after a grant).
    loaded: bool,
    /// The scheduler grants its lease now.
    granted: bool,
    /// Its memory on a simulated GPU, while loaded.
    sim_job: Option<SimJob>,
    /// Loads that failed in a row after a grant, and when the next may be tried: a model
    /// that will not load is retried at 2 s, 4 s, … up to 5 min, not every round.
    load_failures: u32,
    retry_at: Option<std::time::Instant>,
}

/// The wait before the next load attempt after `failures` failed ones.
fn load_backoff(failures: u32) -> Duration {
    Duration::from_secs(2u64.saturating_pow(failures.min(9))).min(Duration::from_secs(300))
}

/// What the daemon did about one lease decision, for `/v1/status`.
#[derive(Clone, Debug, Serialize)]
pub struct CarriedOut {
    pub at_ms: u64,
    pub model_id: String,
    /// `loaded` or `unloaded`.
    pub action: &'static str,
    /// The scheduler's reason.
    pub reason: String,
    /// Jobs that finished within the drain bound / were cancelled and answered with an
    /// error (take-backs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drained: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<usize>,
    /// Why loading failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

const KEEP_CARRIED_OUT: usize = 32;

/// Carries out the scheduler's VRAM lease decisions for the warm models on the AI GPU; no
/// policy of its own.
pub struct LeaseKeeper {
    device: u32,
    models: Mutex<Vec<Held>>,
    view: watch::Receiver<LeaseView>,
    /// Without a scheduler: the standing view that grants every model.
    fixed: Option<watch::Sender<LeaseView>>,
    /// The jobs in flight on each model (drained and cancelled on a take-back).
    pub jobs: InFlightJobs,
    drain_bound: Duration,
    sim: Option<SimGpu>,
    carried_out: Mutex<VecDeque<CarriedOut>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LeaseKeeper {
    /// Asks `admission`'s scheduler for a lease on `device` for each `(model id, bytes)`
    /// (loaded already: see the module doc) and follows its decisions. Without a scheduler
    /// every lease is granted for good.
    pub fn new(
        admission: &dyn Admission,
        device: u32,
        loaded: Vec<(String, u64)>,
        drain_bound: Duration,
    ) -> LeaseKeeper {
        let requests: Vec<ModelLease> = loaded
            .iter()
            .map(|(model_id, bytes)| ModelLease {
                device,
                model_id: model_id.clone(),
                bytes: *bytes,
            })
            .collect();
        let (view, fixed) = match admission.leases() {
            Some(v) => (v, None),
            None => {
                let at_ms = crate::util::now_ms();
                let (tx, rx) = watch::channel(LeaseView {
                    granted: requests.clone(),
                    decisions: requests
                        .iter()
                        .map(|r| LeaseDecision {
                            at_ms,
                            device,
                            model_id: r.model_id.clone(),
                            action: LeaseAction::Grant,
                            reason: "no scheduler steers this daemon: nothing takes the lease back"
                                .into(),
                        })
                        .collect(),
                });
                (rx, Some(tx))
            }
        };
        let sim = admission.sim();
        let models = loaded
            .into_iter()
            .map(|(model_id, bytes)| Held {
                sim_job: sim_load(sim.as_ref(), device, &model_id, bytes),
                model_id,
                bytes,
                loaded: true,
                granted: false,
                load_failures: 0,
                retry_at: None,
            })
            .collect();
        admission.set_models(requests);
        LeaseKeeper {
            device,
            models: Mutex::new(models),
            view,
            fixed,
            jobs: InFlightJobs::default(),
            drain_bound,
            sim,
            carried_out: Mutex::new(VecDeque::new()),
        }
    }

    /// Waits until the scheduler has decided about every model, at most `bound`.
    async fn settle(&self, bound: Duration) {
        let ids: Vec<String> = lock(&self.models)
            .iter()
            .map(|m| m.model_id.clone())
            .collect();
        let mut view = self.view.clone();
        let decided = |v: &LeaseView| ids.iter().all(|id| v.last_for(id).is_some());
        let _ = tokio::time::timeout(bound, view.wait_for(decided)).await;
    }

    /// Whether `model_id` is a leased (warm, embedded) model that may not be offered now:
    /// not granted, or not loaded.
    fn withheld(&self, model_id: &str) -> bool {
        lock(&self.models)
            .iter()
            .any(|m| m.model_id == model_id && !(m.granted && m.loaded))
    }

    fn record(&self, c: CarriedOut) {
        let mut r = lock(&self.carried_out);
        r.push_back(c);
        while r.len() > KEEP_CARRIED_OUT {
            r.pop_front();
        }
    }

    /// `/v1/status` `ai.leases`: every warm model (`held`: granted and loaded), the
    /// scheduler's lease decisions with their reasons (newest last), and what the daemon
    /// carried out.
    pub fn to_json(&self) -> serde_json::Value {
        let view = self.view.borrow().clone();
        let models: Vec<serde_json::Value> = lock(&self.models)
            .iter()
            .map(|m| {
                json!({
                    "model_id": m.model_id,
                    "device": self.device,
                    "vram_bytes": m.bytes,
                    "held": m.granted && m.loaded,
                    "granted": m.granted,
                    "loaded": m.loaded,
                    "in_flight": self.jobs.count(&m.model_id),
                    "reason": view.last_for(&m.model_id).map(|d| d.reason.clone()),
                })
            })
            .collect();
        let decisions: Vec<serde_json::Value> = view
            .decisions
            .iter()
            .map(|d| {
                json!({
                    "at_ms": d.at_ms,
                    "device": d.device,
                    "model_id": d.model_id,
                    "action": d.action,
                    "release": d.action != LeaseAction::Grant,
                    "reason": d.reason,
                })
            })
            .collect();
        json!({
            "policy": if self.fixed.is_some() { "none: no scheduler" } else { "scheduler" },
            "drain_bound_ms": self.drain_bound.as_millis() as u64,
            "models": models,
            "decisions": decisions,
            "carried_out": lock(&self.carried_out).iter().cloned().collect::<Vec<_>>(),
        })
    }

    /// Carries out what the scheduler decided since the last call: loads and offers the
    /// models granted now, takes back the ones no longer granted.
    async fn follow(
        &self,
        service: &Arc<AiService>,
        offer_tx: &watch::Sender<AiOffer>,
        gpus: impl Fn() -> Vec<GpuDescription>,
    ) {
        let view = self.view.borrow().clone();
        let ids: Vec<String> = lock(&self.models)
            .iter()
            .map(|m| m.model_id.clone())
            .collect();
        for id in ids {
            let granted = view
                .granted
                .iter()
                .any(|l| l.device == self.device && l.model_id == id);
            let last = view.last_for(&id).cloned();
            let (loaded, bytes, retry_at) =
                match lock(&self.models).iter().find(|m| m.model_id == id) {
                    Some(m) => (m.loaded, m.bytes, m.retry_at),
                    None => continue,
                };
            let reason = last.as_ref().map(|d| d.reason.clone()).unwrap_or_default();
            let backing_off = retry_at.is_some_and(|t| std::time::Instant::now() < t);
            if granted && !loaded && backing_off {
                continue;
            }
            if granted && !loaded {
                let (svc, m) = (service.clone(), id.clone());
                let r = tokio::task::spawn_blocking(move || svc.load(&m))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                let error = r.err();
                match &error {
                    None => {
                        tracing::info!(model = %id, reason = %reason, "VRAM lease granted: model loaded and offered")
                    }
                    Some(e) => {
                        tracing::error!(model = %id, error = %e, "VRAM lease granted but loading the model failed; it is not offered")
                    }
                }
                if let Some(m) = lock(&self.models).iter_mut().find(|m| m.model_id == id) {
                    m.granted = true;
                    if error.is_none() {
                        m.loaded = true;
                        m.sim_job = sim_load(self.sim.as_ref(), self.device, &id, bytes);
                        m.load_failures = 0;
                        m.retry_at = None;
                    } else {
                        m.load_failures += 1;
                        m.retry_at =
                            Some(std::time::Instant::now() + load_backoff(m.load_failures));
                    }
                }
                self.record(CarriedOut {
                    at_ms: crate::util::now_ms(),
                    model_id: id.clone(),
                    action: "loaded",
                    reason,
                    drained: None,
                    cancelled: None,
                    error,
                });
            } else if granted {
                if let Some(m) = lock(&self.models).iter_mut().find(|m| m.model_id == id) {
                    m.granted = true;
                }
            } else if loaded && last.is_some() {
                // Revoked (or denied at start): no longer offered from here on.
                if let Some(m) = lock(&self.models).iter_mut().find(|m| m.model_id == id) {
                    m.granted = false;
                }
                let t = take_back(
                    service,
                    &self.jobs,
                    offer_tx,
                    &id,
                    &reason,
                    self.drain_bound,
                    gpus(),
                )
                .await;
                if let Some(m) = lock(&self.models).iter_mut().find(|m| m.model_id == id) {
                    m.loaded = false;
                    m.sim_job = None; // the simulated device frees its memory
                }
                self.record(CarriedOut {
                    at_ms: crate::util::now_ms(),
                    model_id: id.clone(),
                    action: "unloaded",
                    reason,
                    drained: Some(t.drained),
                    cancelled: Some(t.cancelled),
                    error: None,
                });
            } else if let Some(m) = lock(&self.models).iter_mut().find(|m| m.model_id == id) {
                m.granted = false;
            }
        }
    }
}

/// A model's memory on the simulated GPU while it is loaded (none on real devices, whose
/// telemetry sees the real allocation).
fn sim_load(sim: Option<&SimGpu>, device: u32, model_id: &str, bytes: u64) -> Option<SimJob> {
    let sim = sim?;
    match sim.start_job(
        device,
        JobLoad::Model {
            memory_bytes: bytes,
        },
    ) {
        Ok(j) => Some(j),
        Err(e) => {
            tracing::warn!(model = %model_id, device, error = %e, "the simulated GPU cannot hold the model's memory");
            None
        }
    }
}

struct Handler {
    daemon: Arc<Daemon>,
    service: Arc<AiService>,
    counters: Arc<AiCounters>,
    leases: Arc<LeaseKeeper>,
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
            let (_in_flight, lease_cancel) = self.leases.jobs.enter(&job.model_id);
            let cancel = {
                let both = cancel.child_token();
                let b = both.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = lease_cancel.cancelled() => b.cancel(),
                        _ = b.cancelled() => {}
                    }
                });
                both
            };
            // Ends the watcher above when the job ends.
            let _end = cancel.clone().drop_guard();
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

/// The offer from what is ready now, less the leased models that may not be offered.
fn offer_of(
    served: &[ServedModel],
    gpus: &[GpuDescription],
    withheld: impl Fn(&str) -> bool,
) -> AiOffer {
    AiOffer {
        models: served
            .iter()
            .filter(|m| m.ready && !withheld(&m.model_id))
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
/// asks the scheduler for their VRAM leases, then runs the offer refresher and the lease
/// keeper until `stop`, and, with an orchestrator (`tcfg`), the AI-worker link (whose task
/// is returned). Without one the models still serve comine's own API (`/v1/ai/upscale`).
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
    // Warm models load now, so a broken model file is a start-up error; they are offered
    // once the scheduler grants their leases.
    let mut warm = Vec::new();
    for m in service.embedded().iter().filter(|m| m.warm) {
        let (svc, id) = (service.clone(), m.model_id.clone());
        tokio::task::spawn_blocking(move || svc.load(&id))
            .await
            .map_err(|e| anyhow::anyhow!("loading {}: {e}", m.model_id))?
            .map_err(|e| anyhow::anyhow!("[[ai.models]] {}: {e}", m.model_id))?;
        warm.push((m.model_id.clone(), m.vram_mib << 20));
    }
    let leases = Arc::new(LeaseKeeper::new(
        d.admission.as_ref(),
        gpu,
        warm,
        d.config.ai.drain_bound(),
    ));
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
    // The scheduler's first decision comes within a tick or two: wait for it (bounded),
    // so the first registration already offers what it granted.
    leases.settle(Duration::from_secs(5)).await;
    let (offer_tx, offer_rx) = watch::channel(AiOffer::default());
    leases.follow(&service, &offer_tx, || gpus_of(d)).await;
    let served = service.served().await;
    offer_tx.send_replace(offer_of(&served, &gpus_of(d), |m| leases.withheld(m)));
    let counters = Arc::new(AiCounters::default());
    let _ = d.ai.set(AiState {
        service: service.clone(),
        offer: offer_rx.clone(),
        link,
        counters: counters.clone(),
        leases: leases.clone(),
    });
    // Lease keeper + offer refresher: at every lease change, and every 2 s for the runners'
    // health and the GPUs.
    {
        let (d, service, leases, stop) = (d.clone(), service.clone(), leases.clone(), stop.clone());
        tokio::spawn(async move {
            let mut view = leases.view.clone();
            let mut view_open = true;
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    r = view.changed(), if view_open => view_open = r.is_ok(),
                    _ = stop.cancelled() => return,
                }
                view.borrow_and_update();
                leases.follow(&service, &offer_tx, || gpus_of(&d)).await;
                let served = service.served().await;
                let gpus = gpus_of(&d);
                offer_tx.send_if_modified(|o| {
                    let new = offer_of(&served, &gpus, |m| leases.withheld(m));
                    // GPU free memory moves all the time; only model changes re-register.
                    if new.models != o.models {
                        *o = new;
                        true
                    } else {
                        false
                    }
                });
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

/// What a take-back did to the jobs in flight.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TakeBack {
    /// Jobs that finished within the drain bound.
    pub drained: usize,
    /// Jobs still running at the bound: cancelled, so they answer with an error.
    pub cancelled: usize,
}

/// Takes a model's VRAM lease back, as a protocol (the scheduler decided it, for `reason`):
/// 1. re-register without the model (the link does it at once on a lower offer);
/// 2. drain: jobs in flight (counted in `jobs`) get `drain_bound`, then are cancelled and
///    answer with an error (`livepeer/ai-worker-error`), never dropped;
/// 3. unload.
///
/// The decision itself (4.) is the scheduler's record, shown with its reason.
pub async fn take_back(
    service: &AiService,
    jobs: &InFlightJobs,
    offer_tx: &watch::Sender<AiOffer>,
    model: &str,
    reason: &str,
    drain_bound: Duration,
    gpus: Vec<GpuDescription>,
) -> TakeBack {
    offer_tx.send_modify(|o| {
        o.models.retain(|m| m.model_id != model);
        o.gpus = gpus;
    });
    let at_start = jobs.count(model);
    let until = tokio::time::Instant::now() + drain_bound;
    while jobs.count(model) > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled = jobs.count(model);
    jobs.cancel(model);
    service.unload(model);
    tracing::warn!(model = %model, reason = %reason, drained = at_start.saturating_sub(cancelled), cancelled, "VRAM lease taken back: model unloaded");
    TakeBack {
        drained: at_start.saturating_sub(cancelled),
        cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_that_will_not_load_is_retried_ever_less_often() {
        let waits: Vec<u64> = (1..=12).map(|f| load_backoff(f).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300]);
    }
}
