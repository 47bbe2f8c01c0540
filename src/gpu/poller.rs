//! Polls a telemetry backend at a fixed interval without blocking the async runtime.
//!
//! NVML and procfs calls block, so each poll runs on tokio's blocking pool; the latest snapshot
//! is published on a `watch` channel (readers only ever want the newest one).

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Snapshot, Telemetry};

pub struct Poller;

impl Poller {
    /// Starts polling `telemetry` every `interval` until `cancel` fires.
    ///
    /// The receiver starts with an empty snapshot of the right source; the first real one
    /// follows immediately.
    pub fn spawn(
        telemetry: Telemetry,
        interval: Duration,
        cancel: CancellationToken,
    ) -> (watch::Receiver<Snapshot>, JoinHandle<()>) {
        let empty = Snapshot::empty(telemetry.source());
        Self::spawn_from(telemetry, empty, interval, cancel)
    }

    /// As [`Poller::spawn`], with the receiver starting at `first` (a poll already taken),
    /// so readers never see an empty device list: start-up checks such as
    /// `--test-transcoder` read it at once, and an empty list looked like a CPU-only host.
    pub fn spawn_from(
        telemetry: Telemetry,
        first: Snapshot,
        interval: Duration,
        cancel: CancellationToken,
    ) -> (watch::Receiver<Snapshot>, JoinHandle<()>) {
        let (tx, rx) = watch::channel(first);
        let handle = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut telemetry = Some(telemetry);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let Some(mut t) = telemetry.take() else { break };
                match tokio::task::spawn_blocking(move || {
                    let s = t.poll();
                    (t, s)
                })
                .await
                {
                    Ok((t, snap)) => {
                        telemetry = Some(t);
                        if tx.send(snap).is_err() {
                            break; // nobody listens any more
                        }
                    }
                    Err(e) => {
                        tracing::error!("telemetry poll panicked ({e}); telemetry stopped");
                        break;
                    }
                }
            }
        });
        (rx, handle)
    }
}
