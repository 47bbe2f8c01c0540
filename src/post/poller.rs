//! The deadline poller: keeps a [`Status`] current from the full node and persists the schedule.
//!
//! - `ChainHead` every `poll_interval_ms`; `StateMinerProvingDeadline` when the height changes
//!   (the period offset and the deadline open now);
//! - the live-deadline map (`StateMinerDeadlines` + 48 × `StateMinerPartitions`) every
//!   `refresh_secs`, and `StateMinerDeadlines` at every new height while a live window is open
//!   and not yet fully proven, so comine steps up as soon as the proof lands;
//! - the schedule is saved to `<data>/post-schedule.json` when it changes and every few minutes
//!   (the time of last contact decides how long the cache is trusted), and once more at shutdown.
//!
//! One request at a time, each bounded by `timeout_ms`; cancelling the token stops the loop
//! between or during requests. [`super::activity`] runs beside it for what is proving now.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::chain::{ChainClock, PERIOD_DEADLINES};
use super::node::{FullNode, Miner};
use super::schedule::{self, DeadlineLive, Schedule, SCHEDULE_FILE};
use super::{activity, Config, PostError, Proven, Status, WallClock};

/// How often the schedule is saved while nothing changes (the contact time moves on).
const SAVE_EVERY_MS: u64 = 5 * 60 * 1000;

/// A running poller (or an idle one when no full node is configured).
pub struct PostHandle {
    status: watch::Receiver<Status>,
    requests: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl PostHandle {
    /// The latest status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Status updates, for the scheduler's driver.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Requests sent to the full node and lotus-miner so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Waits for the poller to stop (after its token was cancelled); the schedule is saved.
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts the poller. Bad settings (API info, miner address) are errors here, before anything
/// runs; a node that does not answer is not: the cached schedule or the PoSt-safe profile
/// applies and the status says so.
pub fn start(
    cfg: &Config,
    data_dir: Option<PathBuf>,
    clock: Arc<dyn WallClock>,
    cancel: CancellationToken,
) -> Result<PostHandle, PostError> {
    cfg.validate()?;
    let requests = Arc::new(AtomicU64::new(0));
    let base = Status {
        plan: cfg.plan(),
        ..Status::default()
    };
    let timeout = Duration::from_millis(cfg.timeout_ms.max(100));
    let miner_api = match cfg.miner_api() {
        Some(s) => Some(Arc::new(Miner::new(&s, timeout, requests.clone())?)),
        None => None,
    };
    let Some(full) = cfg.fullnode() else {
        // No schedule to follow; what lotus-miner or Curio report running is still a proof.
        let (tx, rx) = watch::channel(base);
        let mut tasks = Vec::new();
        if let Some(sources) = activity_sources(cfg, miner_api, timeout)? {
            tasks.push(tokio::spawn(activity::run(
                sources,
                Duration::from_millis(cfg.activity_interval_ms),
                Arc::new(tx),
                clock,
                cancel,
            )));
        }
        return Ok(PostHandle {
            status: rx,
            requests,
            tasks,
        });
    };
    let node = FullNode::new(&full, timeout, requests.clone())?;
    let miner = match &cfg.miner {
        Some(m) => Some(super::check_miner(m, "[post] miner")?),
        None if miner_api.is_some() => None,
        None => return Err(PostError::NoMiner),
    };
    let cache_path = data_dir.map(|d| d.join(SCHEDULE_FILE));
    let cached = match cache_path.as_deref().map(schedule::load) {
        Some(Ok(Some(s))) if miner.as_deref().is_none_or(|m| m == s.miner) => Some(s),
        Some(Ok(Some(s))) => {
            tracing::warn!(cached = %s.miner, configured = ?miner, "the cached proof schedule is for another miner; ignoring it");
            None
        }
        Some(Err(e)) => {
            tracing::error!("{e}");
            None
        }
        _ => None,
    };
    let status = Status {
        configured: true,
        miner: miner
            .clone()
            .or_else(|| cached.as_ref().map(|s| s.miner.clone())),
        node_url: Some(node.url().to_string()),
        schedule: cached,
        ..base
    };
    match &status.schedule {
        Some(s) => tracing::info!(
            miner = %s.miner,
            period_offset = s.period_offset,
            contact_age_s = clock.now_ms().saturating_sub(s.contact_at_ms) / 1000,
            "following the cached WindowPoSt schedule until the full node answers"
        ),
        None => tracing::warn!(
            url = node.url(),
            "NO WindowPoSt SCHEDULE YET: running the PoSt-safe profile until the full node answers"
        ),
    }
    let (tx, rx) = watch::channel(status);
    let tx = Arc::new(tx);
    let mut tasks = Vec::new();
    if let Some(sources) = activity_sources(cfg, miner_api.clone(), timeout)? {
        tasks.push(tokio::spawn(activity::run(
            sources,
            Duration::from_millis(cfg.activity_interval_ms),
            tx.clone(),
            clock.clone(),
            cancel.clone(),
        )));
    }
    let poller = Poller {
        node,
        miner_api,
        miner,
        interval: Duration::from_millis(cfg.poll_interval_ms),
        refresh_ms: cfg.refresh_secs.saturating_mul(1000),
        clock,
        tx,
        cache_path,
        last_height: None,
        saved_at_ms: 0,
        saved: None,
        logged_error: None,
        requests: requests.clone(),
    };
    tasks.push(tokio::spawn(poller.run(cancel)));
    Ok(PostHandle {
        status: rx,
        requests,
        tasks,
    })
}

/// lotus-miner's `WorkerStats` and Curio's `harmony_task`, when either is configured.
fn activity_sources(
    cfg: &Config,
    miner: Option<Arc<Miner>>,
    timeout: Duration,
) -> Result<Option<activity::Sources>, PostError> {
    let curio = match &cfg.curio_db {
        Some(conn) => Some(super::curio_db::CurioDb::new(
            conn,
            &cfg.curio_schema,
            cfg.curio_machine.clone(),
            timeout,
        )?),
        None => None,
    };
    if miner.is_none() && curio.is_none() {
        return Ok(None);
    }
    let hosts = if cfg.prover_hostnames.is_empty() {
        local_hostname().into_iter().collect()
    } else {
        cfg.prover_hostnames.clone()
    };
    Ok(Some(activity::Sources {
        miner,
        curio,
        hosts,
    }))
}

fn local_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

struct Poller {
    node: FullNode,
    miner_api: Option<Arc<Miner>>,
    miner: Option<String>,
    interval: Duration,
    refresh_ms: u64,
    clock: Arc<dyn WallClock>,
    tx: Arc<watch::Sender<Status>>,
    cache_path: Option<PathBuf>,
    last_height: Option<i64>,
    saved_at_ms: u64,
    /// The schedule last written, to save only changes (and the periodic contact time).
    saved: Option<Schedule>,
    logged_error: Option<String>,
    requests: Arc<AtomicU64>,
}

impl Poller {
    async fn run(mut self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.poll_once() => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
        self.save(true);
        tracing::debug!("proof schedule poller stopped");
    }

    fn publish(&self, f: impl FnOnce(&mut Status)) {
        let requests = self.requests.load(Ordering::Relaxed);
        self.tx.send_modify(|s| {
            f(s);
            s.requests = requests;
        });
    }

    fn fail(&mut self, e: PostError) {
        let msg = e.to_string();
        if self.logged_error.as_deref() != Some(msg.as_str()) {
            match e {
                PostError::Unreachable { .. } => tracing::warn!("proof schedule: {msg}"),
                _ => tracing::error!("proof schedule: {msg}"),
            }
            self.logged_error = Some(msg.clone());
        }
        self.publish(|s| {
            s.reachable = false;
            s.last_error = Some(msg);
        });
    }

    async fn poll_once(&mut self) {
        let miner = match &self.miner {
            Some(m) => m.clone(),
            None => {
                let Some(api) = &self.miner_api else {
                    return;
                };
                match api.actor_address().await {
                    Ok(m) => {
                        tracing::info!(miner = %m, "miner address from lotus-miner");
                        self.miner = Some(m.clone());
                        self.publish(|s| s.miner = Some(m.clone()));
                        m
                    }
                    Err(e) => return self.fail(e),
                }
            }
        };
        let head = match self.node.chain_head().await {
            Ok(h) => h,
            Err(e) => return self.fail(e),
        };
        let mut st = self.tx.borrow().clone();
        let now = self.clock.now_ms();
        let height_changed = self.last_height != Some(head.height);
        let stale_schedule = st.schedule.as_ref().is_none_or(|s| s.miner != miner);
        if height_changed || stale_schedule || st.current.is_none() {
            let dl = match self.node.proving_deadline(&miner).await {
                Ok(d) => d,
                Err(e) => return self.fail(e),
            };
            if !dl.is_consistent() {
                tracing::warn!(reply = ?dl, "the node's proving deadline does not match the WindowPoSt formulas; using its PeriodStart");
            }
            let genesis = ChainClock::from_head(head.height, head.timestamp).genesis_ts;
            let offset = dl.period_offset();
            match st.schedule.as_mut() {
                Some(s) if s.miner == miner => {
                    if s.period_offset != offset || s.genesis_ts != genesis {
                        tracing::info!(
                            period_offset = offset,
                            genesis_ts = genesis,
                            "proof schedule updated from the node"
                        );
                        s.period_offset = offset;
                        s.genesis_ts = genesis;
                    }
                }
                _ => {
                    tracing::info!(miner = %miner, period_offset = offset, "proof schedule read from the node");
                    st.schedule = Some(Schedule::new(&miner, offset, genesis, now));
                }
            }
            st.current = Some(dl);
            self.last_height = Some(head.height);
        }
        let Some(mut sched) = st.schedule.take() else {
            return;
        };
        sched.contact_at_ms = now;
        if self.logged_error.take().is_some() {
            tracing::info!(height = head.height, "full node answering again");
        }
        // The live map, hourly (and at once when there is none).
        let due = sched
            .live_refreshed_at_ms
            .is_none_or(|t| now.saturating_sub(t) >= self.refresh_ms)
            || !sched.has_live_map();
        let mut submissions = None;
        if due {
            match self.refresh_live(&miner).await {
                Ok((map, subs)) => {
                    let live = map.iter().filter(|d| d.is_live()).count();
                    tracing::info!(
                        live_deadlines = live,
                        "live-deadline map refreshed from the node"
                    );
                    sched.deadlines = map;
                    sched.live_refreshed_at_ms = Some(self.clock.now_ms());
                    submissions = Some(subs);
                }
                Err(e) => {
                    st.schedule = Some(sched);
                    self.publish(|s| *s = st);
                    return self.fail(e);
                }
            }
        }
        // Proofs landing in the window open now: poll at each new height until all are in.
        if let Some(dl) = st
            .current
            .filter(|d| head.height >= d.open && head.height < d.close)
        {
            let live = sched.deadline(dl.index).map(|d| d.live_partitions.clone());
            let done = st.proven.as_ref().is_some_and(|p| {
                p.index == dl.index
                    && p.open == dl.open
                    && live.as_ref().is_some_and(|l| {
                        l.positions(usize::MAX)
                            .iter()
                            .all(|i| p.partitions.contains(*i))
                    })
            });
            let wanted = live.as_ref().is_none_or(|l| !l.is_empty()) && !done;
            if submissions.is_none() && wanted && (height_changed || st.proven.is_none()) {
                match self.node.deadlines(&miner).await {
                    Ok(subs) => submissions = Some(subs),
                    Err(e) => tracing::debug!("StateMinerDeadlines: {e}"),
                }
            }
            if let Some(entry) = submissions.as_ref().and_then(|s| s.get(dl.index as usize)) {
                st.proven = Some(Proven {
                    index: dl.index,
                    open: dl.open,
                    partitions: entry.post_submissions.clone(),
                    seen_at_ms: self.clock.now_ms(),
                });
            }
        }
        st.schedule = Some(sched);
        st.head = Some(head);
        st.head_seen_at_ms = Some(now);
        st.reachable = true;
        st.last_error = None;
        st.miner = Some(miner);
        self.publish(|s| {
            // Keep what the activity task wrote meanwhile.
            let running = std::mem::take(&mut s.running);
            *s = st;
            s.running = running;
        });
        self.save(false);
    }

    /// `StateMinerDeadlines` + `StateMinerPartitions` for each of the 48 deadlines.
    async fn refresh_live(
        &self,
        miner: &str,
    ) -> Result<(Vec<DeadlineLive>, Vec<super::node::DeadlineSubmissions>), PostError> {
        let subs = self.node.deadlines(miner).await?;
        let mut map = Vec::with_capacity(PERIOD_DEADLINES as usize);
        for index in 0..PERIOD_DEADLINES {
            let parts = self.node.partitions(miner, index).await?;
            map.push(DeadlineLive::from_partitions(&parts));
        }
        Ok((map, subs))
    }

    /// Saves the schedule when it changed, every few minutes (contact time), or when `force`d.
    fn save(&mut self, force: bool) {
        let Some(path) = &self.cache_path else {
            return;
        };
        let Some(s) = self.tx.borrow().schedule.clone() else {
            return;
        };
        let now = self.clock.now_ms();
        let changed = self.saved.as_ref().is_none_or(|old| {
            old.period_offset != s.period_offset
                || old.genesis_ts != s.genesis_ts
                || old.deadlines != s.deadlines
                || old.miner != s.miner
        });
        if !(force || changed || now.saturating_sub(self.saved_at_ms) >= SAVE_EVERY_MS) {
            return;
        }
        match schedule::save(path, &s) {
            Ok(()) => {
                self.saved_at_ms = now;
                self.saved = Some(s);
            }
            Err(e) => tracing::error!("{e}"),
        }
    }
}
