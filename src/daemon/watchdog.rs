//! systemd's watchdog, fed only while the daemon makes progress: under `WatchdogSec=`,
//! systemd restarts a daemon that stops sending `WATCHDOG=1`. A timer that pinged
//! regardless would hide exactly the hang it is there for (a ledger stuck in its database,
//! a dispatcher that stopped looking at queued work), so each ping first checks:
//! - the async runtime runs this task at all (it would not, were every worker blocked);
//! - the ledger answers a read within a bound, on a blocking thread;
//! - with jobs queued, the dispatcher went round its loop recently.
//!
//! A failed check skips the ping and logs why; systemd then restarts the unit once the
//! watchdog interval passes, and the spool resumes what was accepted.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Daemon;
use crate::util::sd_notify::Notifier;

/// How long the ledger may take to answer before the daemon counts as stuck.
pub const LEDGER_BOUND: Duration = Duration::from_secs(10);
/// How long queued work may go unlooked-at by the dispatcher.
pub const DISPATCH_BOUND: Duration = Duration::from_secs(60);

/// Checks that the daemon makes progress; `Err` says what is stuck.
pub async fn check(d: &Arc<Daemon>) -> Result<(), String> {
    let ledger = d.ledger.clone();
    let read = tokio::task::spawn_blocking(move || ledger.state_counts().map(|_| ()));
    match tokio::time::timeout(LEDGER_BOUND, read).await {
        Err(_) => {
            return Err(format!(
                "the ledger did not answer within {} s",
                LEDGER_BOUND.as_secs()
            ))
        }
        Ok(Err(e)) => return Err(format!("the ledger check did not run: {e}")),
        Ok(Ok(Err(e))) => return Err(format!("the ledger failed: {e}")),
        Ok(Ok(Ok(()))) => {}
    }
    if d.queue_len() > 0 {
        let beat = d.dispatch_beat_ms.load(Ordering::Relaxed);
        let idle = crate::util::now_ms().saturating_sub(beat);
        if idle > DISPATCH_BOUND.as_millis() as u64 {
            return Err(format!(
                "{} jobs queued and the dispatcher has not looked at them for {} s",
                d.queue_len(),
                idle / 1000
            ));
        }
    }
    Ok(())
}

/// Pings systemd every `interval / 2` while [`check`] passes, until `stop`.
pub async fn run(d: Arc<Daemon>, notifier: Notifier, interval: Duration, stop: CancellationToken) {
    let every = (interval / 2).max(Duration::from_millis(100));
    tracing::info!(
        interval_secs = interval.as_secs_f64(),
        "systemd watchdog: pinging while the daemon makes progress"
    );
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        match check(&d).await {
            Ok(()) => {
                if let Err(e) = notifier.notify("WATCHDOG=1") {
                    tracing::warn!("cannot notify systemd: {e}");
                }
            }
            Err(why) => {
                tracing::error!("not pinging the systemd watchdog: {why}; systemd restarts comine if this lasts");
                let _ = notifier.notify(&format!("STATUS=stuck: {why}"));
            }
        }
    }
}
