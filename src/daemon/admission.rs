//! The daemon's boundary with the scheduler: the [`Admission`] trait the dispatcher and the
//! Livepeer pipeline ask before every transcode, with sched's own types ([`Placement`],
//! [`Permit`], [`Rejected`], [`JobClass`]) passed through unchanged.
//! - [`SchedAdmission`]: the real scheduler (`sched::start` fed by `gpu` telemetry, sealing
//!   steered through a `seal::Controller`); what `comine run` uses;
//! - `SemaphoreAdmission` (feature `test-utils`): fixed concurrency on a tokio semaphore, no
//!   GPU telemetry, for tests that drive capacity by hand.

use std::collections::BTreeMap;
#[cfg(any(test, feature = "test-utils"))]
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::watch;
#[cfg(any(test, feature = "test-utils"))]
use tokio::sync::Semaphore;

use crate::metrics::GpuSample;
#[cfg(any(test, feature = "test-utils"))]
use crate::sched::RejectReason;
pub use crate::sched::{JobClass, Permit, Placement, Rejected};

/// What `/v1/status` and `/metrics` show of the scheduler.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SchedulerStatus {
    pub backend: String,
    pub devices: Vec<GpuSample>,
    /// The scheduler's recent decisions, newest last, as data.
    pub decisions: Vec<serde_json::Value>,
    /// Sealing task types by state (e.g. "enabled": 3, "disabled": 1).
    pub sealing: BTreeMap<String, i64>,
    /// The WindowPoSt schedule and the plan the scheduler follows (`None`: no scheduler).
    pub post: Option<crate::post::Report>,
    /// Whether comine has GPU sealing paused on the node now (what the controller last
    /// confirmed); `None` when no controller can confirm anything (`controller = "none"`).
    pub sealing_paused: Option<bool>,
    /// How comine learns that a proof runs, and whether the PoSt-safe profile applies.
    pub proofs: ProofStatus,
}

/// `/v1/status` `proofs`: the configured proof sources, and the PoSt-safe profile's reason
/// when it applies (`null` otherwise).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProofStatus {
    pub sources: Vec<String>,
    /// Configured sources that did not answer their last poll (they protect nothing now).
    pub unreachable: Vec<String>,
    pub safe_profile: Option<String>,
}

/// The line `comine run` logs, `/v1/status` shows and `comine_post_safe_profile` flags when
/// comine cannot learn about proofs at all.
pub const NO_PROOF_SOURCE: &str = "no proof source configured: comine cannot see a WindowPoSt coming or running, so it runs the PoSt-safe profile (half of each GPU's throughput, the VRAM reserve kept free). Set MINER_API_INFO (lotus-miner) or FULLNODE_API_INFO (the chain's proving schedule) in /etc/comine/comine.env, or name the prover processes in [gpu.attribution] proof_process_names";

/// Every way this configuration lets comine learn that a proof is due or running:
/// - `MINER_API_INFO` / `[post] miner_api_info`: lotus-miner's `WorkerStats` PoSt task counts,
///   polled by `post` (`[seal] api_info` is not one: it names a lotus-worker's or Curio's API,
///   which has no `WorkerStats`);
/// - `[post] curio_db`: Curio's running `WdPost`/`WinPost` tasks;
/// - `FULLNODE_API_INFO`: the chain's proving schedule;
/// - `[gpu.attribution] proof_process_names` / `proof_pids`: a prover process's GPU activity.
///
/// `env` reads an environment variable (a parameter so tests need not touch the process's).
pub fn proof_sources(
    config: &crate::config::Config,
    env: impl Fn(&str) -> Option<String>,
) -> Vec<String> {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    let mut out = Vec::new();
    if config
        .post
        .miner_api_info
        .as_deref()
        .is_some_and(|v| !v.trim().is_empty())
    {
        out.push(format!("{WORKER_STATS} ([post] miner_api_info)"));
    } else if set("MINER_API_INFO") {
        out.push(format!("{WORKER_STATS} (MINER_API_INFO)"));
    }
    if set("FULLNODE_API_INFO") {
        out.push("proving schedule (FULLNODE_API_INFO)".to_string());
    } else if config
        .post
        .fullnode_api_info
        .as_deref()
        .is_some_and(|v| !v.trim().is_empty())
    {
        out.push("proving schedule ([post] fullnode_api_info)".to_string());
    }
    if config.post.curio_db.is_some() {
        out.push(format!("{CURIO_TASKS} ([post] curio_db)"));
    }
    let a = &config.gpu.attribution;
    if !a.proof_process_names.is_empty() {
        out.push(format!(
            "prover processes ({})",
            a.proof_process_names.join(", ")
        ));
    }
    if !a.proof_pids.is_empty() {
        out.push(format!("prover PIDs ({} configured)", a.proof_pids.len()));
    }
    out
}

const WORKER_STATS: &str = "lotus-miner WorkerStats";
const CURIO_TASKS: &str = "curio harmony_task";

/// Whether `sources` protect only through what lotus-miner or Curio report running, which
/// protects nothing while they do not answer.
fn only_reported_activity(sources: &[String]) -> bool {
    !sources.is_empty()
        && sources
            .iter()
            .all(|s| s.starts_with(WORKER_STATS) || s.starts_with(CURIO_TASKS))
}

/// The PoSt-safe profile's reason for what the proof sources say now: none configured, or
/// every configured one (all of them reports of running proofs) not answering.
fn safe_reason(sources: &[String], running: &crate::post::RunningProofs) -> Option<String> {
    if sources.is_empty() {
        return Some("no proof source configured".into());
    }
    let lost = only_reported_activity(sources)
        && running.sources.is_empty()
        && !running.unreachable.is_empty();
    lost.then(|| {
        format!(
            "proof source unreachable: {} ({})",
            running.unreachable.join(", "),
            running.error.as_deref().unwrap_or("no answer")
        )
    })
}

/// Load to take off one device now (a proof needs its GPU back).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shed {
    pub device: u32,
    pub pixels_per_sec: f64,
}

/// Admission control (the real one: `sched::Admitter` behind [`SchedAdmission`]).
pub trait Admission: Send + Sync + 'static {
    /// Admit one job of `class` needing `pixels_per_sec` now (placed on a device, holding
    /// a [`Permit`]), or say when to retry.
    fn try_admit(&self, class: JobClass, pixels_per_sec: f64) -> Result<Placement, Rejected>;
    /// Concurrent jobs allowed now; changes as the scheduler steers capacity.
    fn capacity(&self) -> watch::Receiver<usize>;
    /// Livepeer sessions to offer an orchestrator now (`--capacity auto`); 0 means
    /// "none": the remote transcoder unregisters until the scheduler grants some.
    fn livepeer_sessions(&self) -> watch::Receiver<u32>;
    /// Where the scheduler's telemetry comes from; `None` when there is none (then a GPU may
    /// be present).
    fn telemetry_source(&self) -> Option<crate::gpu::Source> {
        None
    }
    fn status(&self) -> SchedulerStatus;
    /// Work waiting for admission, pixels/s per class. The scheduler already counts what
    /// it admitted; this is what it refused so far, so a backlog of live segments makes
    /// sealing step aside (the core's live demand is max(requested, admitted)).
    fn set_demand(&self, live_pps: f64, batch_pps: f64) {
        let _ = (live_pps, batch_pps);
    }
    /// Running load the scheduler wants taken off devices now (a proof started, or is short
    /// of GPU memory): the daemon stops and requeues batch jobs there. Never changes for
    /// admissions without a scheduler.
    fn shed(&self) -> watch::Receiver<Vec<Shed>> {
        watch::channel(Vec::new()).1
    }
    /// The AI models that want a VRAM lease (replaces the previous list); the scheduler
    /// grants and revokes them with reasons in [`Admission::leases`].
    fn set_models(&self, models: Vec<crate::sched::ModelLease>) {
        let _ = models;
    }
    /// The scheduler's VRAM leases: those granted now and the recent decisions with their
    /// reasons. `None` without a scheduler (a test double): nothing takes a lease back.
    fn leases(&self) -> Option<watch::Receiver<crate::sched::LeaseView>> {
        None
    }
    /// The simulated GPUs behind telemetry (`[gpu] backend = "sim:…"`), so that what comine
    /// itself loads on a device (an AI model) is part of the simulated device's memory.
    fn sim(&self) -> Option<crate::gpu::SimGpu> {
        None
    }
    /// On shutdown: re-enable anything the scheduler disabled (sealing tasks).
    fn restore(&self) -> BoxFuture<'_, ()>;
}

/// Fixed concurrency on a semaphore; no telemetry. A test double: every job is placed on
/// device 0.
#[cfg(any(test, feature = "test-utils"))]
pub struct SemaphoreAdmission {
    sem: Arc<Semaphore>,
    capacity: watch::Sender<usize>,
    sessions: watch::Sender<u32>,
    decisions: Mutex<VecDeque<serde_json::Value>>,
}

#[cfg(any(test, feature = "test-utils"))]
impl SemaphoreAdmission {
    pub fn new(n: usize) -> SemaphoreAdmission {
        SemaphoreAdmission {
            sem: Arc::new(Semaphore::new(n)),
            capacity: watch::channel(n).0,
            sessions: watch::channel(u32::try_from(n).unwrap_or(u32::MAX)).0,
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
        self.sessions
            .send_replace(u32::try_from(n).unwrap_or(u32::MAX));
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

#[cfg(any(test, feature = "test-utils"))]
impl Admission for SemaphoreAdmission {
    fn try_admit(&self, class: JobClass, pixels_per_sec: f64) -> Result<Placement, Rejected> {
        let at = crate::util::now_ms();
        match self.sem.clone().try_acquire_owned() {
            Ok(p) => {
                self.record(serde_json::json!({"at_ms": at, "class": class, "pixels_per_sec": pixels_per_sec, "decision": "admit"}));
                Ok(Placement {
                    device: 0,
                    uuid: String::new(),
                    class,
                    pixels_per_sec,
                    permit: Permit::from_guard(p),
                })
            }
            Err(_) => Err(Rejected {
                reason: RejectReason::OverCapacity,
                message: "all workers busy".into(),
                retry_after: Duration::from_millis(200),
            }),
        }
    }

    fn capacity(&self) -> watch::Receiver<usize> {
        self.capacity.subscribe()
    }

    fn livepeer_sessions(&self) -> watch::Receiver<u32> {
        self.sessions.subscribe()
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
            post: None,
            sealing_paused: None,
            proofs: ProofStatus::default(),
        }
    }

    fn restore(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchedSetupError {
    #[error("[gpu] backend: {0}")]
    Telemetry(#[from] crate::gpu::Error),
    #[error("[seal]: {0}")]
    Seal(#[from] crate::seal::SealError),
    #[error("scheduler: {0}")]
    Service(#[from] crate::sched::ServiceError),
    #[error("[post]: {0}")]
    Post(#[from] crate::post::PostError),
}

/// The scheduler service (`sched::start`) behind the daemon's [`Admission`] seam.
///
/// Telemetry (`[gpu]`, `auto` = NVML, else host CPU) feeds the driver; each job is placed
/// by `sched::Admitter` in pixels/s on a device, and its [`Placement`] goes to the worker.
pub struct SchedAdmission {
    handle: Mutex<Option<crate::sched::ServiceHandle>>,
    admitter: crate::sched::Admitter,
    snapshots: watch::Receiver<crate::gpu::Snapshot>,
    capacity: watch::Receiver<usize>,
    sessions: watch::Receiver<u32>,
    shed: watch::Receiver<Vec<Shed>>,
    task_types: usize,
    history: usize,
    /// The WindowPoSt poller (idle without a full node); joined at shutdown so the schedule
    /// is saved.
    post: Mutex<Option<crate::post::PostHandle>>,
    /// The controller can confirm what it changed (every kind but `none`).
    confirms: bool,
    proof_sources: Vec<String>,
    source: crate::gpu::Source,
    /// The simulated GPUs when telemetry is `sim` (clones share the devices).
    sim: Option<crate::gpu::SimGpu>,
    leases: watch::Receiver<crate::sched::LeaseView>,
    cancel: tokio_util::sync::CancellationToken,
}

impl SchedAdmission {
    /// Opens telemetry, builds the sealing controller and starts the scheduler driver
    /// (which first restores sealing an earlier crashed run left disabled).
    /// `max_concurrency` bounds the concurrency published to the daemon.
    pub async fn start(
        config: &crate::config::Config,
        data_dir: &Path,
        max_concurrency: usize,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<SchedAdmission, SchedSetupError> {
        let choice: crate::gpu::BackendChoice = config.gpu.backend.parse()?;
        let gpu_config = config.gpu.clone();
        // NVML loading blocks (dlopen, driver calls).
        let (telemetry, first) = tokio::task::spawn_blocking(move || {
            crate::gpu::open(&choice, &gpu_config).map(|mut t| {
                let first = t.poll();
                (t, first)
            })
        })
        .await
        .map_err(|e| crate::gpu::Error::Nvml(format!("telemetry open failed: {e}")))??;
        let source = telemetry.source();
        let sim = match &telemetry {
            crate::gpu::Telemetry::Sim(s) => Some(s.clone()),
            _ => None,
        };
        tracing::info!(%source, "scheduler telemetry");
        // Rate each device at what it was measured to do (cached; see `calibration`).
        let mut sched_config = config.scheduler.clone();
        if config.transcode.calibrate {
            let settings = super::calibration::ProbeSettings::from_config(&config.transcode)
                .unwrap_or(super::calibration::ProbeSettings {
                    encoder: crate::transcode::EncoderChoice::Auto,
                    x264_preset: config.transcode.x264_preset.clone(),
                });
            let dir = data_dir.to_path_buf();
            let snap = first.clone();
            let measured = tokio::task::spawn_blocking(move || {
                super::calibration::load_or_measure(&dir, &snap, &settings, false)
            })
            .await;
            match measured {
                Ok(Ok(c)) => super::calibration::apply(&c, &mut sched_config),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "calibration failed; devices keep their configured rates")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "calibration task failed; devices keep their configured rates")
                }
            }
        }
        let (snapshots, _poller) = crate::gpu::Poller::spawn_from(
            telemetry,
            first,
            config.gpu.poll_interval(),
            cancel.clone(),
        );
        let controller = crate::seal::build(&config.seal)?;
        // A Curio node that proves is refused here, before anything could cordon it.
        controller.preflight().await?;
        let task_types = config.seal.task_types.clone();
        // With no way to see a proof coming, the PoSt-safe profile holds from the first tick.
        let proof_sources = proof_sources(config, |k| std::env::var(k).ok());
        let handle = crate::sched::start(
            sched_config,
            task_types.clone(),
            snapshots.clone(),
            controller,
            data_dir.to_path_buf(),
            safe_reason(&proof_sources, &crate::post::RunningProofs::default()),
            cancel.clone(),
        )
        .await?;
        // Proofs first: the chain's WindowPoSt schedule is an input of every tick. Bad
        // settings stop the start here; a node that does not answer does not (the cached
        // schedule, or the PoSt-safe profile, applies).
        let post = crate::post::start(
            &config.post,
            Some(data_dir.to_path_buf()),
            Arc::new(crate::post::SystemClock),
            cancel.clone(),
        )?;
        handle.follow_post(post.subscribe());
        // With no way to see a proof coming, the PoSt-safe profile runs (set above); say so
        // loudly.
        if proof_sources.is_empty() {
            tracing::warn!("{NO_PROOF_SOURCE}");
        } else {
            tracing::info!(sources = ?proof_sources, "proof sources");
        }
        // A source that does not answer is reported, and when it was the only protection
        // the PoSt-safe profile applies until it answers again.
        if only_reported_activity(&proof_sources) {
            let safe = handle.safe_profile_sender();
            let mut rx = post.subscribe();
            let (sources, stop) = (proof_sources.clone(), cancel.clone());
            tokio::spawn(async move {
                loop {
                    let reason = safe_reason(&sources, &rx.borrow_and_update().running);
                    if safe.send_if_modified(|cur| std::mem::replace(cur, reason.clone()) != reason)
                    {
                        match &reason {
                            Some(r) => tracing::warn!("{r}: running the PoSt-safe profile"),
                            None => tracing::info!(
                                "proof sources answer again: PoSt-safe profile lifted"
                            ),
                        }
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        r = rx.changed() => if r.is_err() { break },
                    }
                }
            });
        }
        let max = max_concurrency.max(1);
        let mut sched_cap = handle.capacity();
        let (cap_tx, cap_rx) = watch::channel(concurrency_for(&sched_cap.borrow(), max));
        let (sessions_tx, sessions_rx) = watch::channel(sched_cap.borrow().livepeer_sessions);
        let (shed_tx, shed_rx) = watch::channel(Vec::new());
        let stop = cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    changed = sched_cap.changed() => if changed.is_err() { break },
                }
                let c = sched_cap.borrow_and_update().clone();
                let n = concurrency_for(&c, max);
                cap_tx.send_if_modified(|cur| std::mem::replace(cur, n) != n);
                // Unclamped: 0 sessions is a real answer (the GPU is needed elsewhere).
                let s = c.livepeer_sessions;
                sessions_tx.send_if_modified(|cur| std::mem::replace(cur, s) != s);
                let shed: Vec<Shed> = c
                    .devices
                    .iter()
                    .filter(|d| d.shed_pps > 0.0)
                    .map(|d| Shed {
                        device: d.index,
                        pixels_per_sec: d.shed_pps,
                    })
                    .collect();
                shed_tx.send_if_modified(|cur| {
                    if *cur != shed {
                        *cur = shed;
                        true
                    } else {
                        false
                    }
                });
            }
        });
        Ok(SchedAdmission {
            admitter: handle.admitter(),
            leases: handle.leases(),
            sim,
            handle: Mutex::new(Some(handle)),
            snapshots,
            capacity: cap_rx,
            sessions: sessions_rx,
            shed: shed_rx,
            task_types: task_types.len(),
            history: 32,
            post: Mutex::new(Some(post)),
            confirms: config.seal.controller != crate::seal::ControllerKind::None,
            proof_sources,
            source,
            cancel,
        })
    }
}

/// Daemon concurrency from sched's published capacity: its suggested session count (one
/// daemon job is one segment's ladder, about one Livepeer session), at least 1 so a
/// CPU-only host (whose budget is below one full session) still transcodes, at most `max`.
/// Each job is still admitted by pixels/s, so this is an upper bound, not a promise.
fn concurrency_for(c: &crate::sched::Capacity, max: usize) -> usize {
    (c.livepeer_sessions as usize).clamp(1, max)
}

impl Admission for SchedAdmission {
    fn try_admit(&self, class: JobClass, pixels_per_sec: f64) -> Result<Placement, Rejected> {
        // A job without a parsable ladder still costs something.
        let pps = if pixels_per_sec.is_finite() && pixels_per_sec > 0.0 {
            pixels_per_sec
        } else {
            1.0
        };
        // A job that would otherwise wait forever (larger than an idle device, or a busy
        // CPU-only host) is placed alone by sched's admitter itself.
        self.admitter.admit(class, pps).map_err(|mut r| {
            r.retry_after = r.retry_after.max(Duration::from_millis(50));
            r
        })
    }

    fn capacity(&self) -> watch::Receiver<usize> {
        self.capacity.clone()
    }

    fn livepeer_sessions(&self) -> watch::Receiver<u32> {
        self.sessions.clone()
    }

    fn shed(&self) -> watch::Receiver<Vec<Shed>> {
        self.shed.clone()
    }

    fn telemetry_source(&self) -> Option<crate::gpu::Source> {
        Some(self.source)
    }

    fn set_models(&self, models: Vec<crate::sched::ModelLease>) {
        if let Ok(g) = self.handle.lock() {
            if let Some(h) = g.as_ref() {
                h.set_models(models);
            }
        }
    }

    fn leases(&self) -> Option<watch::Receiver<crate::sched::LeaseView>> {
        Some(self.leases.clone())
    }

    fn sim(&self) -> Option<crate::gpu::SimGpu> {
        self.sim.clone()
    }

    fn set_demand(&self, live_pps: f64, batch_pps: f64) {
        if let Ok(g) = self.handle.lock() {
            if let Some(h) = g.as_ref() {
                h.set_demand(crate::sched::Demand {
                    live_pps: live_pps.max(0.0),
                    batch_pps: batch_pps.max(0.0),
                });
            }
        }
    }

    fn status(&self) -> SchedulerStatus {
        let snap = self.snapshots.borrow().clone();
        let pct = |v: Option<f64>| v.map(|v| v / 100.0);
        let mut devices: Vec<GpuSample> = snap
            .devices
            .iter()
            .map(|d| GpuSample {
                index: d.index,
                uuid: d.uuid.clone(),
                name: d.name.clone(),
                source: d.source.to_string(),
                utilization: pct(d.gpu_util_pct),
                encoder_utilization: pct(d.encoder_util_pct),
                decoder_utilization: pct(d.decoder_util_pct),
                power_watts: d.power_watts,
                temperature_celsius: d.temperature_c,
                encoder_sessions: d.nvenc_sessions.map(u64::from),
                // Set from the scheduler's view below: a listed prover process is not a
                // proof until it is active (lotus #7845).
                proof_active: false,
                memory_total_bytes: d.memory_total_bytes.unwrap_or(0),
                memory_used_bytes: d.memory_used_bytes.unwrap_or(0),
            })
            .collect();
        let (decisions, confirmed, last, post) = match self.handle.lock() {
            Ok(g) => match g.as_ref() {
                Some(h) => {
                    let all = h.decisions();
                    let skip = all.len().saturating_sub(self.history);
                    let plan = h.post_plan().borrow().clone();
                    (
                        all.into_iter().skip(skip).collect::<Vec<_>>(),
                        h.sealing_confirmed(),
                        h.last_decision(),
                        Some(crate::post::Report::new(&h.post_status(), plan)),
                    )
                }
                None => (Vec::new(), None, None, None),
            },
            Err(_) => (Vec::new(), None, None, None),
        };
        // What the controller last confirmed, never what the scheduler merely wants; with
        // nothing confirmed (`controller = "none"`, or no answer yet) the state is unknown.
        let sealing = confirmed
            .unwrap_or_else(|| BTreeMap::from([("unknown".to_string(), self.task_types as i64)]));
        let mut sealing_paused = None;
        let mut safe_profile = None;
        if let Some(d) = &last {
            // What the controller last confirmed, not what the scheduler wants.
            sealing_paused = self.confirms.then_some(d.input.controller.sealing_disabled);
            safe_profile = d.input.safe_profile.clone();
            // The scheduler's view of proofs (signals as well as telemetry).
            for g in &mut devices {
                if let Some(c) = d.devices.iter().find(|c| c.index == g.index) {
                    g.proof_active |= c.proof_running;
                }
            }
        }
        SchedulerStatus {
            backend: format!("sched/{}", snap.source),
            sealing_paused,
            proofs: ProofStatus {
                sources: self.proof_sources.clone(),
                unreachable: post
                    .as_ref()
                    .map(|p| p.running.unreachable.clone())
                    .unwrap_or_default(),
                safe_profile,
            },
            devices,
            decisions: decisions
                .iter()
                .filter_map(|d| serde_json::to_value(d).ok())
                .collect(),
            sealing,
            post,
        }
    }

    fn restore(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.cancel.cancel();
            let handle = self.handle.lock().ok().and_then(|mut g| g.take());
            if let Some(h) = handle {
                // join() re-enables whatever sealing comine disabled before it returns.
                h.join().await;
            }
            let post = self.post.lock().ok().and_then(|mut g| g.take());
            if let Some(p) = post {
                p.join().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sched_admission_places_jobs_and_reports_simulated_devices() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::default();
        config.gpu.backend = "sim:rtx3090".into();
        config.gpu.poll_interval_ms = 20;
        config.scheduler.tick_interval_ms = 20;
        let cancel = tokio_util::sync::CancellationToken::new();
        let a = SchedAdmission::start(&config, dir.path(), 4, cancel.clone())
            .await
            .unwrap();
        // Wait for the first decision (no timing assertion: just until it exists).
        let mut permit = None;
        for _ in 0..500 {
            if let Ok(p) = a.try_admit(JobClass::Live, 10e6) {
                permit = Some(p);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let permit = permit.expect("the simulated GPU admits a 10 Mpx/s live job");
        let cap = *a.capacity().borrow();
        assert!((1..=4).contains(&cap), "capacity {cap}");
        let st = a.status();
        assert_eq!(st.backend, "sched/simulated");
        assert_eq!(st.devices.len(), 1);
        assert_eq!(st.devices[0].source, "simulated");
        assert!(!st.decisions.is_empty());
        // `controller = "none"` confirms nothing: the task types' state is unknown, not "enabled".
        assert_eq!(st.sealing.get("unknown"), Some(&4), "{:?}", st.sealing);
        assert_eq!(st.sealing.get("enabled"), None);
        // Far beyond the device with one job running: refused, with a reason.
        let err = a.try_admit(JobClass::Live, 1e15).err().unwrap();
        assert!(!err.message.is_empty());
        drop(permit);
        a.restore().await;
        assert!(cancel.is_cancelled());
    }

    /// With a lotus-worker controller the gauges say what the worker confirmed: the task
    /// types it accepts are enabled, the ones it refuses (disabled by the operator) are not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sealing_status_is_what_the_controller_confirmed() {
        const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.admin.sig";
        let srv = crate::seal::testserver::TestServer::start(TOKEN)
            .await
            .unwrap();
        let worker =
            crate::seal::LotusWorker::from_api_info(&srv.api_info(TOKEN), Duration::from_secs(2))
                .unwrap();
        // The operator disabled C2 by hand before comine started.
        worker.task_disable(crate::seal::TT_C2).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::default();
        config.gpu.backend = "sim:rtx3090".into();
        config.gpu.poll_interval_ms = 20;
        config.scheduler.tick_interval_ms = 20;
        config.seal.controller = crate::seal::ControllerKind::LotusWorker;
        config.seal.api_info = Some(srv.api_info(TOKEN));
        let cancel = tokio_util::sync::CancellationToken::new();
        let a = SchedAdmission::start(&config, dir.path(), 4, cancel.clone())
            .await
            .unwrap();
        let mut sealing = BTreeMap::new();
        for _ in 0..500 {
            sealing = a.status().sealing;
            if !sealing.is_empty() && !sealing.contains_key("unknown") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(sealing.get("enabled"), Some(&3), "{sealing:?}");
        assert_eq!(sealing.get("disabled"), Some(&1), "{sealing:?}");
        a.restore().await;
    }

    #[tokio::test]
    async fn sched_admission_refuses_a_bad_backend() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::default();
        config.gpu.backend = "cuda".into();
        let err = SchedAdmission::start(&config, dir.path(), 1, Default::default())
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cuda") && err.contains("host"), "{err}");
    }

    #[test]
    fn proof_sources_come_from_the_miner_the_chain_or_prover_names() {
        let none = |_: &str| None;
        let mut c = crate::config::Config::default();
        assert!(
            proof_sources(&c, none).is_empty(),
            "the shipped defaults configure no proof source"
        );
        let miner =
            |k: &str| (k == "MINER_API_INFO").then(|| "t:/ip4/127.0.0.1/tcp/2345/http".to_string());
        assert_eq!(proof_sources(&c, miner).len(), 1);
        let blank = |k: &str| (k == "FULLNODE_API_INFO").then(|| "  ".to_string());
        assert!(
            proof_sources(&c, blank).is_empty(),
            "an empty variable is not a source"
        );
        // A lotus-worker's or Curio's API has no WorkerStats: it protects nothing.
        c.seal.api_info = Some("t:/ip4/127.0.0.1/tcp/3456/http".into());
        assert!(proof_sources(&c, none).is_empty(), "[seal] api_info");
        c.post.miner_api_info = Some("t:/ip4/127.0.0.1/tcp/2345/http".into());
        assert_eq!(
            proof_sources(&c, none),
            vec!["lotus-miner WorkerStats ([post] miner_api_info)".to_string()]
        );
        c.post.miner_api_info = None;
        c.gpu.attribution.proof_process_names = vec!["lotus-post".into()];
        assert!(proof_sources(&c, none)[0].contains("lotus-post"));
    }

    /// Starts the scheduler on a simulated GPU with `post` as the only proof source.
    async fn with_post(post: crate::post::Config) -> (SchedAdmission, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::default();
        config.gpu.backend = "sim:a5000".into();
        config.gpu.poll_interval_ms = 20;
        config.scheduler.tick_interval_ms = 20;
        config.post = post;
        let a = SchedAdmission::start(&config, dir.path(), 4, Default::default())
            .await
            .unwrap();
        (a, dir)
    }

    async fn until(a: &SchedAdmission, what: &str, f: impl Fn(&SchedulerStatus) -> bool) {
        for _ in 0..500 {
            if f(&a.status()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{what}: {}", serde_json::to_string(&a.status()).unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lotus_miner_worker_stats_mark_a_proof_on_the_gpu() {
        use crate::post::fake_node::{FakeNode, NodeState};
        let mut state = NodeState::fixture();
        let host = "prover-host";
        state.worker_stats = serde_json::json!({
            "u1": {"Info": {"Hostname": host}, "TaskCounts": {"8:post/v0/windowproof": 1}}
        });
        let node = FakeNode::start("admin", Arc::new(crate::post::SystemClock), state)
            .await
            .unwrap();
        let (a, _dir) = with_post(crate::post::Config {
            miner_api_info: Some(node.api_info("admin")),
            prover_hostnames: vec![host.into()],
            activity_interval_ms: 100,
            ..Default::default()
        })
        .await;
        assert_eq!(
            a.status().proofs.sources,
            vec!["lotus-miner WorkerStats ([post] miner_api_info)".to_string()]
        );
        // No full node: the running PoSt task alone puts the GPU at the proof floor.
        until(&a, "a decision with the proof running", |st| {
            st.decisions.last().is_some_and(|d| {
                d["devices"][0]["proof_running"] == true
                    && d["devices"][0]["reasons"]
                        .to_string()
                        .contains("proof running")
            })
        })
        .await;
        let st = a.status();
        assert!(st.proofs.safe_profile.is_none(), "{:?}", st.proofs);
        assert!(st.proofs.unreachable.is_empty(), "{:?}", st.proofs);
        assert!(st.devices[0].proof_active, "{:?}", st.devices[0]);
        // The task ends: no proof any more.
        node.state().worker_stats = serde_json::json!({
            "u1": {"Info": {"Hostname": host}, "TaskCounts": {}}
        });
        until(&a, "the proof over", |st| {
            st.decisions
                .last()
                .is_some_and(|d| d["devices"][0]["proof_running"] == false)
        })
        .await;
        a.restore().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_lotus_miner_is_reported_and_protects_nothing() {
        // Nothing listens on port 1: the configured source never answers.
        let (a, _dir) = with_post(crate::post::Config {
            miner_api_info: Some("admin:/ip4/127.0.0.1/tcp/1/http".into()),
            activity_interval_ms: 100,
            timeout_ms: 500,
            ..Default::default()
        })
        .await;
        until(&a, "the source reported unreachable", |st| {
            st.proofs.unreachable == ["lotus-miner WorkerStats"]
                && st.proofs.safe_profile.as_deref().is_some_and(|r| {
                    r.starts_with("proof source unreachable: lotus-miner WorkerStats")
                })
        })
        .await;
        // And every decision runs the PoSt-safe profile, saying why.
        until(&a, "a decision in the PoSt-safe profile", |st| {
            st.decisions.last().is_some_and(|d| {
                d["devices"][0]["reasons"]
                    .to_string()
                    .contains("PoSt-safe profile (proof source unreachable")
            })
        })
        .await;
        a.restore().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_proof_source_runs_the_post_safe_profile() {
        // The shipped config on a simulated RTX 3090, with no proof source in the
        // environment of this test: every decision runs the PoSt-safe profile.
        if std::env::var_os("MINER_API_INFO").is_some()
            || std::env::var_os("FULLNODE_API_INFO").is_some()
        {
            panic!("unset MINER_API_INFO and FULLNODE_API_INFO to run this test");
        }
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::default();
        config.gpu.backend = "sim:a5000".into();
        config.gpu.poll_interval_ms = 20;
        config.scheduler.tick_interval_ms = 20;
        let cancel = tokio_util::sync::CancellationToken::new();
        let a = SchedAdmission::start(&config, dir.path(), 4, cancel.clone())
            .await
            .unwrap();
        let mut st = a.status();
        for _ in 0..500 {
            if !st.decisions.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            st = a.status();
        }
        assert!(st.proofs.sources.is_empty());
        assert_eq!(
            st.proofs.safe_profile.as_deref(),
            Some("no proof source configured")
        );
        let last = st.decisions.last().unwrap();
        let dev = &last["devices"][0];
        let rated = dev["rated_pps"].as_f64().unwrap();
        assert!(
            dev["budget_pps"].as_f64().unwrap() <= rated * 0.5 + 1.0,
            "{dev}"
        );
        assert!(
            dev["reasons"].to_string().contains("PoSt-safe profile"),
            "{dev}"
        );
        // From the very first tick: the profile is an input of the service's start, not
        // something set after it already ticked.
        let first = &st.decisions[0]["devices"][0];
        assert!(
            first["reasons"].to_string().contains("PoSt-safe profile"),
            "the first decision ran without the PoSt-safe profile: {first}"
        );
        // controller none confirms nothing: sealing state unknown, not "not paused".
        assert_eq!(st.sealing_paused, None);
        a.restore().await;
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
