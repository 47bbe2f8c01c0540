//! The daemon's Livepeer pipeline: every segment asks the scheduler for admission like any
//! HTTP job (class `live`, the pixels/s of its ladder), waits for it within the segment's
//! deadline while reporting itself as live demand, and runs on the device it was placed on.
//! While a segment waits, the dispatcher admits no batch job, so live work overtakes it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::profiles;
use crate::daemon::demand::DemandSource;
use crate::daemon::Daemon;
use crate::livepeer::proto::VideoProfile;
use crate::livepeer::sink::BoxFuture;
use crate::livepeer::{Device, SegmentError, SegmentPipeline, SegmentTask, Transcoded};
use crate::sched::{JobClass, Placement};

/// Admission, then the engine on the granted device.
pub struct AdmittedPipeline {
    daemon: Arc<Daemon>,
    engine: super::ReceiptPipeline,
    /// Pixels/s of the segments refused so far and still waiting: this source's demand.
    waiting_pps: Mutex<f64>,
}

impl AdmittedPipeline {
    pub fn new(daemon: Arc<Daemon>, engine: super::ReceiptPipeline) -> Self {
        AdmittedPipeline {
            daemon,
            engine,
            waiting_pps: Mutex::new(0.0),
        }
    }

    fn add_waiting(&self, pps: f64) {
        let total = {
            let mut w = self.waiting_pps.lock().unwrap_or_else(|e| e.into_inner());
            *w = (*w + pps).max(0.0);
            *w
        };
        self.daemon
            .report_demand(DemandSource::Livepeer, JobClass::Live, total);
    }

    /// Waits for a placement until the deadline (or shutdown).
    async fn admit(
        &self,
        pps: f64,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<Placement, SegmentError> {
        let d = &self.daemon;
        // Counted as live work waiting: the dispatcher holds batch jobs back meanwhile.
        let _waiting = d.demand.wait_live();
        let mut demanded = false;
        let result = loop {
            let freed = d.slot_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let rejected = match d.admission.try_admit(JobClass::Live, pps) {
                Ok(p) => break Ok(p),
                Err(r) => r,
            };
            if !demanded {
                self.add_waiting(pps);
                demanded = true;
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(SegmentError::ours(format!(
                    "deadline exceeded waiting for the scheduler to admit the segment: {}",
                    rejected.message
                )));
            }
            let wait = rejected
                .retry_after
                .clamp(Duration::from_millis(20), Duration::from_millis(500))
                .min(deadline - now);
            tokio::select! {
                _ = &mut freed => {}
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => break Err(SegmentError::ours("shutting down: segment not admitted")),
            }
        };
        if demanded {
            self.add_waiting(-pps);
        }
        result
    }
}

impl SegmentPipeline for AdmittedPipeline {
    fn check(&self, profiles: &[VideoProfile]) -> Result<(), SegmentError> {
        self.engine.check(profiles)
    }

    fn transcode(&self, task: SegmentTask) -> BoxFuture<'_, Result<Transcoded, SegmentError>> {
        Box::pin(async move {
            let ladder = profiles::to_engine(&task.profiles).map_err(SegmentError::input)?;
            let pps = crate::transcode::ladder_pixels_per_sec(&ladder).max(1.0);
            let placement = self.admit(pps, task.deadline, &task.cancel).await?;
            let device = Device {
                index: placement.device,
                uuid: placement.uuid.clone(),
            };
            let out = self.engine.run_on(task, device.index).await;
            // The pixels go back to the scheduler; whoever waits for them retries.
            drop(placement);
            self.daemon.slot_freed.notify_waiters();
            out.map(|mut t| {
                t.device = Some(device);
                t
            })
        })
    }
}
