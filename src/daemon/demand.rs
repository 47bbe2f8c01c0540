//! What waits for the scheduler, from every source (the HTTP queue, Livepeer segments),
//! summed per class before it reaches [`Admission::set_demand`](super::admission::Admission).
//! Each source reports only its own figure, so live and batch demand never overwrite each
//! other, and HTTP and Livepeer demand add up. It also counts live work waiting for
//! admission anywhere: batch work is not admitted while some waits.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::sched::JobClass;

/// Who reports demand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DemandSource {
    /// Jobs in the daemon's queue (`POST /v1/transcode`).
    Queue,
    /// Segments from the Livepeer orchestrator waiting for admission.
    Livepeer,
}

/// Per source and class, pixels/s waiting for admission.
#[derive(Default)]
pub struct DemandBook {
    waiting: Mutex<BTreeMap<(DemandSource, bool), f64>>,
    live_waiting: AtomicUsize,
}

impl DemandBook {
    /// Sets one source's demand for one class; returns the new totals (live, batch) when
    /// they changed.
    pub fn set(&self, source: DemandSource, class: JobClass, pps: f64) -> Option<(f64, f64)> {
        let pps = if pps.is_finite() { pps.max(0.0) } else { 0.0 };
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let before = totals(&w);
        w.insert((source, class == JobClass::Live), pps);
        let after = totals(&w);
        (after != before).then_some(after)
    }

    /// (live, batch) pixels/s waiting, all sources.
    pub fn totals(&self) -> (f64, f64) {
        totals(&self.waiting.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Live work (Livepeer segments) waiting for admission outside the queue.
    pub fn live_waiting(&self) -> usize {
        self.live_waiting.load(Ordering::SeqCst)
    }

    /// Counts one live item as waiting until the guard drops.
    pub fn wait_live(&self) -> LiveWaiting<'_> {
        self.live_waiting.fetch_add(1, Ordering::SeqCst);
        LiveWaiting(self)
    }
}

fn totals(w: &BTreeMap<(DemandSource, bool), f64>) -> (f64, f64) {
    w.iter().fold(
        (0.0, 0.0),
        |(l, b), ((_, live), v)| {
            if *live {
                (l + v, b)
            } else {
                (l, b + v)
            }
        },
    )
}

/// A live item waiting for admission; dropping it stops counting it.
pub struct LiveWaiting<'a>(&'a DemandBook);

impl Drop for LiveWaiting<'_> {
    fn drop(&mut self) {
        self.0.live_waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_sources_add_up_and_never_overwrite_each_other() {
        let b = DemandBook::default();
        assert_eq!(
            b.set(DemandSource::Queue, JobClass::Batch, 10.0),
            Some((0.0, 10.0))
        );
        assert_eq!(
            b.set(DemandSource::Queue, JobClass::Live, 3.0),
            Some((3.0, 10.0))
        );
        assert_eq!(
            b.set(DemandSource::Livepeer, JobClass::Live, 4.0),
            Some((7.0, 10.0))
        );
        assert_eq!(
            b.set(DemandSource::Livepeer, JobClass::Live, 4.0),
            None,
            "unchanged"
        );
        assert_eq!(
            b.set(DemandSource::Queue, JobClass::Live, 0.0),
            Some((4.0, 10.0))
        );
        {
            let _w = b.wait_live();
            assert_eq!(b.live_waiting(), 1);
        }
        assert_eq!(b.live_waiting(), 0);
    }
}
