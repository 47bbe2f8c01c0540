//! Steering seam for the combined phase: decide from the live realtime ratio whether
//! sealing should pause so transcoding keeps real time.
//!
//! [`Hysteresis`] is a stand-in; the `sched` module's policy replaces it by implementing
//! [`Steering`] (see `docs/architecture.md (bench)`).

use serde::Serialize;

/// What the policy wants done to the sealing workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    None,
    PauseSealing,
    ResumeSealing,
}

/// A steering policy, ticked after every finished segment with the recent realtime
/// ratio (transcode wall time / media time, lower is better).
pub trait Steering: Send {
    fn name(&self) -> &str;
    fn on_tick(&mut self, realtime_ratio: f64) -> Action;
}

/// Pause above one threshold, resume below a lower one, so sealing does not flap.
pub struct Hysteresis {
    pub pause_above: f64,
    pub resume_below: f64,
    paused: bool,
}

impl Hysteresis {
    pub fn new(pause_above: f64, resume_below: f64) -> Self {
        Hysteresis {
            pause_above,
            resume_below,
            paused: false,
        }
    }
}

impl Steering for Hysteresis {
    fn name(&self) -> &str {
        "hysteresis (built-in stand-in for sched)"
    }

    fn on_tick(&mut self, ratio: f64) -> Action {
        if !self.paused && ratio > self.pause_above {
            self.paused = true;
            Action::PauseSealing
        } else if self.paused && ratio < self.resume_below {
            self.paused = false;
            Action::ResumeSealing
        } else {
            Action::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis_does_not_flap() {
        let mut h = Hysteresis::new(0.8, 0.6);
        assert_eq!(h.on_tick(0.5), Action::None);
        assert_eq!(h.on_tick(0.9), Action::PauseSealing);
        assert_eq!(h.on_tick(0.95), Action::None);
        assert_eq!(h.on_tick(0.7), Action::None);
        assert_eq!(h.on_tick(0.55), Action::ResumeSealing);
        assert_eq!(h.on_tick(0.7), Action::None);
    }
}
