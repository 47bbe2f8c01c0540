//! What is proving right now, from the Filecoin side: lotus-miner's PoSt workers
//! (`WorkerStats` `TaskCounts`, admin token) and Curio's running `WdPost`/`WinPost` tasks
//! (`harmony_task`). Polled every `activity_interval_ms` into [`Status::running`]; the scheduler
//! treats a running proof like one seen in telemetry, and its end as the prover going quiet.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::curio_db::CurioDb;
use super::node::Miner;
use super::{PostError, RunningProofs, Status, WallClock};

/// The configured sources.
pub struct Sources {
    pub miner: Option<Arc<Miner>>,
    pub curio: Option<CurioDb>,
    /// `WorkerStats` hostnames that count (empty: every worker).
    pub hosts: Vec<String>,
}

/// Polls the sources until `cancel`; a source refused for its token (WorkerStats needs admin)
/// is dropped with one error log instead of being asked again every few seconds. A source
/// that fails is listed in [`RunningProofs::unreachable`]: it protects nothing then.
pub async fn run(
    mut src: Sources,
    interval: Duration,
    tx: Arc<watch::Sender<Status>>,
    clock: Arc<dyn WallClock>,
    cancel: CancellationToken,
) {
    let mut logged: Option<String> = None;
    let mut refused_miner: Option<String> = None;
    loop {
        let mut r = RunningProofs::default();
        let mut errors = Vec::new();
        if let Some(m) = &src.miner {
            tokio::select! {
                _ = cancel.cancelled() => break,
                res = m.worker_post(&src.hosts) => match res {
                    Ok(w) => {
                        r.window += w.window;
                        r.winning += w.winning;
                        r.sources.push("lotus-miner WorkerStats".into());
                    }
                    Err(e @ PostError::Unauthorized { .. }) => {
                        tracing::error!("{e}; PoSt workers are not watched (the chain schedule still is)");
                        src.miner = None;
                        refused_miner = Some(e.to_string());
                    }
                    Err(e) => {
                        r.unreachable.push("lotus-miner WorkerStats".into());
                        errors.push(e.to_string());
                    }
                }
            }
        }
        if let Some(c) = &src.curio {
            tokio::select! {
                _ = cancel.cancelled() => break,
                res = c.running() => match res {
                    Ok(p) => {
                        r.window += p.window;
                        r.winning += p.winning;
                        r.sources.push("curio harmony_task".into());
                    }
                    Err(e) => {
                        r.unreachable.push("curio harmony_task".into());
                        errors.push(e.to_string());
                    }
                }
            }
        }
        // A miner that refused our token is asked no more, and stays reported.
        if let Some(e) = &refused_miner {
            r.unreachable.push("lotus-miner WorkerStats".into());
            errors.push(e.clone());
        }
        r.checked_at_ms = Some(clock.now_ms());
        r.error = (!errors.is_empty()).then(|| errors.join("; "));
        if r.error != logged {
            if let Some(e) = &r.error {
                tracing::warn!("proof activity: {e}");
            }
            logged = r.error.clone();
        }
        if r.any() {
            tracing::debug!(window = r.window, winning = r.winning, "PoSt running");
        }
        tx.send_modify(|s| s.running = r);
        if src.miner.is_none() && src.curio.is_none() {
            // Nothing left to ask; what was refused stays reported until shutdown.
            cancel.cancelled().await;
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
