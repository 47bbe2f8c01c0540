//! The async driver: feeds [`Scheduler::tick`] with snapshots, demand and proof signals, applies
//! sealing actions through a controller, persists what it disabled, restores it on shutdown
//! and after a crash, publishes capacity and keeps a ring buffer of decisions.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::state::{self, SealingState, StateError};
use super::{
    Admitter, Capacity, Config, ControllerStatus, Decision, Demand, LeaseView, ModelLease,
    ProofSignal, Scheduler, SealAction, SealMode, TickInput,
};
use crate::gpu::Snapshot;
use crate::post::{self, Phase};
use crate::seal::{Controller, DisableSet};
use crate::util::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("the recovered state was written by the {found:?} controller but {configured:?} is configured; re-enable {types:?} by hand or configure that controller, then restart")]
    ControllerMismatch {
        found: crate::seal::ControllerKind,
        configured: crate::seal::ControllerKind,
        types: Vec<String>,
    },
}

/// What the daemon, intake and reports hold on to.
pub struct ServiceHandle {
    admitter: Admitter,
    capacity: watch::Receiver<Capacity>,
    decisions: Arc<Mutex<VecDeque<Decision>>>,
    demand: watch::Sender<Demand>,
    proof: watch::Sender<ProofSignal>,
    post: watch::Sender<post::Status>,
    plan: watch::Receiver<post::Plan>,
    confirmed: Confirmed,
    safe_profile: watch::Sender<Option<String>>,
    models: watch::Sender<Vec<ModelLease>>,
    leases: watch::Receiver<LeaseView>,
    task: JoinHandle<()>,
}

/// Sealing task types by state, as the controller last confirmed them.
type Confirmed = Arc<Mutex<Option<BTreeMap<String, i64>>>>;

impl ServiceHandle {
    /// Admission for intake: `admitter().admit(JobClass::Live, pps)`.
    pub fn admitter(&self) -> Admitter {
        self.admitter.clone()
    }
    /// Capacity changes (only published when they change).
    pub fn capacity(&self) -> watch::Receiver<Capacity> {
        self.capacity.clone()
    }
    /// Recent decisions, oldest first.
    pub fn decisions(&self) -> Vec<Decision> {
        lock(&self.decisions).iter().cloned().collect()
    }
    pub fn last_decision(&self) -> Option<Decision> {
        lock(&self.decisions).back().cloned()
    }
    /// Demand requested by intake (live + batch pixels/s).
    pub fn set_demand(&self, demand: Demand) {
        self.demand.send_replace(demand);
    }
    /// Sealing task types by state ("enabled", "disabled") as the controller last confirmed
    /// them; `None` when nothing was ever confirmed (e.g. `controller = "none"`).
    pub fn sealing_confirmed(&self) -> Option<BTreeMap<String, i64>> {
        lock(&self.confirmed).clone()
    }
    /// The AI models that want a VRAM lease (replaces the previous list). Every tick
    /// grants or revokes their leases with a reason, in the decision record
    /// ([`super::Decision::leases`]) and the capacity ([`super::Capacity::leases`]).
    pub fn set_models(&self, models: Vec<ModelLease>) {
        self.models.send_replace(models);
    }
    /// The leases granted now and the recent lease decisions with their reasons (published
    /// when a tick decides something): what the daemon's lease keeper carries out.
    pub fn leases(&self) -> watch::Receiver<LeaseView> {
        self.leases.clone()
    }

    /// A proof signal from the Filecoin node or configuration.
    pub fn set_proof(&self, proof: ProofSignal) {
        self.proof.send_replace(proof);
    }
    /// The WindowPoSt poller's status; each tick evaluates `post::evaluate` on it.
    pub fn set_post(&self, status: post::Status) {
        self.post.send_replace(status);
    }
    /// Follows a poller's status until that poller stops.
    pub fn follow_post(&self, mut rx: watch::Receiver<post::Status>) {
        let tx = self.post.clone();
        tx.send_replace(rx.borrow_and_update().clone());
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let s = rx.borrow_and_update().clone();
                tx.send_replace(s);
            }
        });
    }
    /// The WindowPoSt plan the last tick followed (for `/v1/status` and the metrics).
    pub fn post_plan(&self) -> watch::Receiver<post::Plan> {
        self.plan.clone()
    }
    /// The poller status the last tick saw.
    pub fn post_status(&self) -> post::Status {
        self.post.borrow().clone()
    }
    /// The PoSt-safe profile's switch (a reason, or `None` for the normal profile; every
    /// decision records it), for a task that follows the proof sources. The profile at
    /// start is an argument of [`start`].
    pub fn safe_profile_sender(&self) -> watch::Sender<Option<String>> {
        self.safe_profile.clone()
    }
    /// Why the PoSt-safe profile applies now, if it does.
    pub fn safe_profile(&self) -> Option<String> {
        self.safe_profile.borrow().clone()
    }
    /// Waits for the driver to finish (after cancellation it restores sealing first).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Driver {
    sched: Scheduler,
    controller: Arc<dyn Controller>,
    task_types: Vec<String>,
    store: state::StateStore,
    /// What comine has disabled (None: nothing).
    applied: Option<SealingState>,
    reachable: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Wall-clock ms when a proof was last seen on a device (telemetry, signal, WorkerStats,
    /// Curio): the plan steps up once it has been quiet after a window's challenge.
    last_proof_ms: Option<u64>,
    post_phase: Phase,
    /// Whether the last tick saw a prover active on any device.
    prover_active: bool,
    plan_tx: watch::Sender<post::Plan>,
    confirmed: Confirmed,
    models: watch::Receiver<Vec<ModelLease>>,
    leases: watch::Sender<LeaseView>,
}

/// Starts the driver. Recovers and restores state left by a crash before the first tick.
/// `safe_profile`: the PoSt-safe profile's reason from the first tick on (`None`: not in
/// force), so a rig with no proof source is never scheduled without it, not even for the
/// moment before its caller could say so.
pub async fn start(
    config: Config,
    seal_task_types: Vec<String>,
    snapshots: watch::Receiver<Snapshot>,
    controller: Arc<dyn Controller>,
    data_dir: PathBuf,
    safe_profile: Option<String>,
    cancel: CancellationToken,
) -> Result<ServiceHandle, ServiceError> {
    // Opening the database and importing an earlier release's state file block.
    let dir = data_dir.clone();
    let store = tokio::task::spawn_blocking(move || state::StateStore::open(&dir))
        .await
        .map_err(|e| StateError::Db(crate::db::DbError::Task(e.to_string())))??;
    let recovered = store.load().await?;
    if let Some(s) = &recovered {
        if s.controller != controller.kind() {
            return Err(ServiceError::ControllerMismatch {
                found: s.controller,
                configured: controller.kind(),
                types: s.to_restore(),
            });
        }
        tracing::warn!(types = ?s.to_restore(), "found sealing disabled by an earlier comine run; restoring it");
    }
    let admitter = Admitter::new(Duration::from_millis(config.retry_after_ms));
    let (cap_tx, cap_rx) = watch::channel(Capacity::default());
    let (demand_tx, demand_rx) = watch::channel(Demand::default());
    let (proof_tx, proof_rx) = watch::channel(ProofSignal::default());
    let (post_tx, post_rx) = watch::channel(post::Status::default());
    let (plan_tx, plan_rx) = watch::channel(post::Plan::default());
    let (safe_tx, safe_rx) = watch::channel(safe_profile);
    let (models_tx, models_rx) = watch::channel(Vec::new());
    let (leases_tx, leases_rx) = watch::channel(LeaseView::default());
    let decisions = Arc::new(Mutex::new(VecDeque::new()));
    let confirmed: Confirmed = Arc::default();
    let mut driver = Driver {
        sched: Scheduler::new(config.clone()),
        controller,
        task_types: seal_task_types,
        store,
        applied: recovered,
        reachable: true,
        retry_at: None,
        backoff: Duration::from_millis(500),
        last_proof_ms: None,
        post_phase: Phase::None,
        prover_active: false,
        plan_tx,
        confirmed: confirmed.clone(),
        models: models_rx,
        leases: leases_tx,
    };
    if driver.applied.is_some() {
        driver.sched.assume_sealing(SealMode::Enabled, 0);
        driver.restore().await;
    } else {
        driver.confirm(SealMode::Enabled, false).await;
    }
    let ring = decisions.clone();
    let adm = admitter.clone();
    let task = tokio::spawn(async move {
        driver
            .run(
                config, snapshots, demand_rx, proof_rx, post_rx, safe_rx, adm, cap_tx, ring, cancel,
            )
            .await
    });
    Ok(ServiceHandle {
        admitter,
        capacity: cap_rx,
        decisions,
        demand: demand_tx,
        proof: proof_tx,
        post: post_tx,
        plan: plan_rx,
        confirmed,
        safe_profile: safe_tx,
        models: models_tx,
        leases: leases_rx,
        task,
    })
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    async fn run(
        mut self,
        config: Config,
        mut snapshots: watch::Receiver<Snapshot>,
        demand: watch::Receiver<Demand>,
        proof: watch::Receiver<ProofSignal>,
        post_rx: watch::Receiver<post::Status>,
        safe_profile: watch::Receiver<Option<String>>,
        admitter: Admitter,
        cap_tx: watch::Sender<Capacity>,
        ring: Arc<Mutex<VecDeque<Decision>>>,
        cancel: CancellationToken,
    ) {
        let origin = Instant::now();
        let mut ticker =
            tokio::time::interval(Duration::from_millis(config.tick_interval_ms.max(10)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut telemetry_open = true;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = snapshots.changed(), if telemetry_open => {
                    if r.is_err() {
                        // At shutdown the poller stops first: that is not an outage.
                        if !cancel.is_cancelled() {
                            tracing::error!("telemetry stopped; devices hold until it returns");
                        }
                        telemetry_open = false;
                    }
                }
                _ = ticker.tick() => {}
            }
            let mut snapshot = snapshots.borrow_and_update().clone();
            let age = now_ms().saturating_sub(snapshot.taken_at_ms);
            if !telemetry_open || age > config.stale_after_ms {
                for d in &mut snapshot.devices {
                    d.healthy = false;
                    d.error = Some(format!("telemetry stale ({age} ms old)"));
                }
            }
            let (proof, post) = self.post_inputs(proof.borrow().clone(), &post_rx);
            let input = TickInput {
                now_ms: origin.elapsed().as_millis() as u64,
                snapshot,
                demand: *demand.borrow(),
                load: admitter.loads(),
                proof,
                post,
                controller: ControllerStatus {
                    reachable: self.reachable,
                    coarse: self.controller.coarse(),
                    sealing_disabled: self.applied.is_some(),
                },
                safe_profile: safe_profile.borrow().clone(),
                models: self.models.borrow().clone(),
            };
            let decision = self.sched.tick(&input);
            for l in &decision.leases {
                tracing::info!(seq = decision.seq, device = l.device, model = %l.model_id, action = ?l.action, reason = %l.reason, "VRAM lease decision");
            }
            self.leases.send_if_modified(|v| {
                let granted_changed = v.granted != decision.capacity.leases;
                if granted_changed {
                    v.granted = decision.capacity.leases.clone();
                }
                v.decisions.extend(decision.leases.iter().cloned());
                let over = v.decisions.len().saturating_sub(LeaseView::KEEP);
                v.decisions.drain(..over);
                granted_changed || !decision.leases.is_empty()
            });
            self.prover_active = decision.devices.iter().any(|d| d.proof_running);
            admitter.update(&decision.devices);
            cap_tx.send_if_modified(|c| {
                if *c != decision.capacity {
                    *c = decision.capacity.clone();
                    true
                } else {
                    false
                }
            });
            if decision.sealing.action != SealAction::None {
                tracing::info!(
                    seq = decision.seq,
                    action = ?decision.sealing.action,
                    reason = %decision.sealing.reason,
                    "sealing decision"
                );
            }
            tracing::trace!(decision = %serde_json::to_string(&decision).unwrap_or_default(), "tick");
            let action = decision.sealing.action;
            // Recorded before it is applied: a controller call can take seconds, and the
            // reason for what an operator sees happening must already be readable.
            {
                let mut r = lock(&ring);
                r.push_back(decision);
                while r.len() > config.decision_history.max(1) {
                    r.pop_front();
                }
            }
            self.apply(action).await;
        }
        // What comine changed, it restores.
        for attempt in 1..=3 {
            if self.applied.is_none() {
                break;
            }
            self.retry_at = None;
            self.restore().await;
            if self.applied.is_some() && attempt < 3 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        if let Some(s) = &self.applied {
            tracing::error!(
                types = ?s.to_restore(),
                "could not re-enable sealing on shutdown; it stays recorded in the database (sched_state) and is restored at the next start"
            );
        }
    }

    /// The proof signal (with PoSt that lotus-miner or Curio report running) and the
    /// WindowPoSt plan for this instant.
    fn post_inputs(
        &mut self,
        mut proof: ProofSignal,
        post_rx: &watch::Receiver<post::Status>,
    ) -> (ProofSignal, post::PostWindow) {
        let status = post_rx.borrow().clone();
        let wall = now_ms();
        if !proof.running && status.running.any() {
            proof = ProofSignal {
                running: true,
                devices: (!status.plan.devices.is_empty()).then(|| status.plan.devices.clone()),
                source: status.running.sources.join(" + "),
            };
        }
        // A prover counts by its activity (the last tick's view, lotus #7845), or a signal.
        if proof.running || self.prover_active {
            self.last_proof_ms = Some(wall);
        }
        let plan = post::evaluate(&status, wall, self.last_proof_ms);
        if plan.window.phase != self.post_phase {
            match plan.window.phase {
                Phase::None => tracing::info!(
                    source = ?plan.source,
                    "WindowPoSt: transcoding back to its full budget"
                ),
                Phase::Safe => {
                    tracing::warn!(reason = %plan.window.reason, "WindowPoSt: PoSt-safe profile")
                }
                phase => tracing::info!(?phase, reason = %plan.window.reason, "WindowPoSt"),
            }
            self.post_phase = plan.window.phase;
        }
        let window = plan.window.clone();
        self.plan_tx.send_replace(plan);
        (proof, window)
    }

    /// Records what the controller confirms about the sealing task types. A controller that
    /// reports them (lotus-worker's `TaskTypes`) is asked; for the others a successful
    /// action (`acted`) is the confirmation; `none` confirms nothing.
    async fn confirm(&mut self, mode: SealMode, acted: bool) {
        if self.controller.kind() == crate::seal::ControllerKind::None {
            return;
        }
        let total = self.task_types.len() as i64;
        let counts = match self.controller.state().await {
            Ok(st) if st.enabled.is_some() => {
                let enabled = if st.enabled == Some(false) {
                    0
                } else {
                    self.task_types
                        .iter()
                        .filter(|t| st.task_types.contains(t))
                        .count() as i64
                };
                Some((enabled, total - enabled))
            }
            _ if acted => {
                let disabled = match (mode, &self.applied) {
                    (SealMode::Disabled, Some(st)) => st.disabled.len() as i64,
                    _ => 0,
                };
                Some((total - disabled, disabled))
            }
            _ => None,
        };
        if let Some((enabled, disabled)) = counts {
            let mut m = BTreeMap::new();
            m.insert("enabled".to_string(), enabled);
            m.insert("disabled".to_string(), disabled);
            *lock(&self.confirmed) = Some(m);
        }
    }

    fn backing_off(&self) -> bool {
        self.retry_at.is_some_and(|t| Instant::now() < t)
    }

    fn failed(&mut self, what: &str, e: &crate::seal::SealError) {
        if e.is_unreachable() {
            self.reachable = false;
        }
        self.retry_at = Some(Instant::now() + self.backoff);
        tracing::warn!(
            "sealing controller: {what} failed: {e}; retrying in {:?}",
            self.backoff
        );
        self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
    }

    fn succeeded(&mut self) {
        self.reachable = true;
        self.retry_at = None;
        self.backoff = Duration::from_millis(500);
    }

    async fn apply(&mut self, action: SealAction) {
        if self.backing_off() {
            return;
        }
        match action {
            SealAction::Disable => self.disable().await,
            SealAction::Enable => self.restore().await,
            SealAction::None if !self.reachable => {
                // Probe so that a node that came back is noticed.
                match self.controller.state().await {
                    Ok(_) => self.succeeded(),
                    Err(e) => self.failed("probe", &e),
                }
            }
            SealAction::None => {}
        }
    }

    async fn disable(&mut self) {
        let set = DisableSet::new(&self.task_types);
        let mut st = SealingState {
            controller: self.controller.kind(),
            disabled: Vec::new(),
            pending: set.as_slice().to_vec(),
            since_ms: now_ms(),
        };
        // Record the intent first: a crash during the call must still restore.
        if let Err(e) = self.store.save(&st).await {
            tracing::error!("{e}; not disabling sealing without a record to restore from");
            return;
        }
        match self.controller.disable(&set).await {
            Ok(changed) => {
                self.succeeded();
                st.disabled = changed;
                st.pending.clear();
                if let Err(e) = self.store.save(&st).await {
                    tracing::error!("{e}");
                }
                tracing::info!(types = ?st.disabled, "GPU sealing paused");
                self.applied = Some(st);
                self.confirm(SealMode::Disabled, true).await;
            }
            Err(e) => {
                self.failed("disable", &e);
                // Keep `pending` on disk only if the call may have gone through.
                if !e.is_unreachable() {
                    let _ = self.store.clear().await;
                } else {
                    self.applied = Some(st);
                }
            }
        }
    }

    async fn restore(&mut self) {
        let Some(st) = self.applied.clone() else {
            return;
        };
        let types = st.to_restore();
        match self.controller.enable(&types).await {
            Ok(()) => {
                self.succeeded();
                if let Err(e) = self.store.clear().await {
                    tracing::error!("{e}");
                }
                tracing::info!(types = ?types, "GPU sealing resumed");
                self.applied = None;
                self.confirm(SealMode::Enabled, true).await;
            }
            Err(e) => self.failed("re-enable", &e),
        }
    }
}
