//! Lowering the capacity registered with the orchestrator without cutting a stream.
//!
//! go-livepeer binds each stream to one transcoder and counts its load in streams. A lower
//! capacity is a re-registration, which orphans the old registration's streams: each finds a
//! transcoder again at its next segment, and one that finds none is refused mid-stream. So
//! while the scheduler's grant is below what is registered (a WindowPoSt step-down coming,
//! a proof), the capacity goes down in steps, never below the streams still running here,
//! and a new stream is accepted only while the running ones leave room under the grant; the
//! rest finish where they are, and the capacity follows them down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
struct State {
    /// The scheduler's grant (sessions).
    target: u32,
    /// The capacity of the current registration (0: none).
    registered: u32,
    /// The registered capacity when the grant fell below it; `None` when not draining.
    ceiling: Option<u32>,
}

/// The drain's state, shared by the connection loop and every task.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    state: Mutex<State>,
    refused: AtomicU64,
}

impl Drain {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut s);
        // A grant below the registration starts a drain; one back up to where it started,
        // or above the registration, ends it.
        match s.ceiling {
            None if s.target < s.registered => s.ceiling = Some(s.registered),
            Some(c) if s.target >= c || s.target > s.registered && s.registered > 0 => {
                s.ceiling = None
            }
            _ => {}
        }
        out
    }

    /// The scheduler's grant changed.
    pub fn set_target(&self, target: u32) {
        self.with(|s| s.target = target);
    }

    /// A registration with `capacity` is being made (0: none any more).
    pub fn set_registered(&self, capacity: u32) {
        self.with(|s| s.registered = capacity);
    }

    /// The capacity to register now, given the streams running here: the grant, or while
    /// draining and above it the running streams and one more (never above what is
    /// registered, nor where the drain began).
    ///
    /// The one more is for the moment after a handover: the orchestrator counts a new stream
    /// against the new registration until comine's refusal reaches it, and the orphaned
    /// streams rebind to that registration at their next segment; sized exactly to them, a
    /// refusal in flight would leave one finding no room and being cut mid-stream.
    pub fn effective(&self, streaming: usize) -> u32 {
        self.with(|s| match s.ceiling {
            Some(c) => {
                // Never up while draining: at most what is registered now.
                let top = match s.registered {
                    0 => c,
                    r => c.min(r),
                };
                let streaming = u32::try_from(streaming).unwrap_or(u32::MAX);
                if streaming > s.target {
                    streaming.saturating_add(1).min(top)
                } else {
                    s.target.min(top)
                }
            }
            None => s.target,
        })
    }

    /// While draining: the most streams that may run here, so a new one is refused when that
    /// many already do. `None`: no limit beyond the orchestrator's own.
    pub fn stream_limit(&self) -> Option<u32> {
        self.with(|s| s.ceiling.map(|_| s.target))
    }

    pub fn draining(&self) -> bool {
        self.with(|s| s.ceiling.is_some())
    }

    /// Counts a new stream refused while draining.
    pub fn refused(&self) -> u64 {
        self.refused.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn refused_total(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_steps_down_with_the_streams_and_back_up_at_once() {
        let d = Drain::default();
        d.set_target(13);
        d.set_registered(13);
        assert_eq!(d.effective(3), 13);
        assert!(!d.draining());
        assert_eq!(d.stream_limit(), None);
        // The step-down's grant: 1 stream; 3 still run, so 3 (and one for a refusal in
        // flight) is registered, not 1.
        d.set_target(1);
        assert!(d.draining());
        assert_eq!(d.effective(3), 4);
        assert_eq!(d.stream_limit(), Some(1));
        d.set_registered(4);
        assert_eq!(d.effective(2), 3, "one stream ended: one step down");
        assert_eq!(d.effective(1), 1, "at the grant: the grant, no more");
        assert_eq!(d.effective(0), 1, "never below the grant");
        assert_eq!(d.effective(20), 4, "never above what is registered");
        d.set_registered(1);
        // Still draining at the floor: an orphaned stream keeps its place.
        assert_eq!(d.stream_limit(), Some(1));
        assert_eq!(d.effective(1), 1);
        // A proof: the grant goes to 0 and the last stream still finishes.
        d.set_target(0);
        assert_eq!(d.effective(1), 1);
        assert_eq!(d.effective(0), 0);
        d.set_registered(0);
        // Back to the full grant: no limit, the full capacity at once.
        d.set_target(13);
        assert!(!d.draining());
        assert_eq!(d.effective(0), 13);
        assert_eq!(d.stream_limit(), None);
    }

    #[test]
    fn a_grant_above_the_registration_ends_the_drain() {
        let d = Drain::default();
        d.set_target(10);
        d.set_registered(10);
        d.set_target(2);
        d.set_registered(4);
        assert!(d.draining());
        d.set_target(6);
        assert!(!d.draining(), "capacity going up is no drain");
        assert_eq!(d.effective(5), 6);
        assert_eq!(d.refused(), 1);
        assert_eq!(d.refused_total(), 1);
    }
}
