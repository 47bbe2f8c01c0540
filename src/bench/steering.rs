//! Steering for the combined phase: decide whether sealing should pause so transcoding
//! keeps real time.
//!
//! [`SchedSteering`] is what the suite uses: the daemon's own decision core
//! (`sched::Scheduler`), fed with this machine's telemetry and the live streams' demand,
//! so the combined phase measures the policy the daemon runs. [`Hysteresis`] is a plain
//! two-threshold rule kept as a reference policy for comparison runs.

use std::time::Instant;

use serde::Serialize;

use crate::gpu::host::HostBackend;
use crate::sched::{self, ControllerStatus, Demand, ProofSignal, SealAction, TickInput};

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
    /// Why the last tick decided what it did, when the policy can say.
    fn last_reason(&self) -> Option<String> {
        None
    }
}

/// The daemon's scheduler core steering the suite's sealing workload.
///
/// Demand is measured, not assumed: the live streams need `realtime_ratio` of this
/// machine's transcoding capacity (a ratio of 0.7 means the ladder takes 70 % of real
/// time), so the core sees a device rated `RATED_PPS` and a live demand of
/// `RATED_PPS × ratio`, i.e. a demand ratio equal to the measured realtime ratio. Its
/// watermarks, sustain and dwell times then act exactly as in `comine run`. Telemetry is
/// the host's (`gpu::host`: CPU utilisation, memory, load), since the suite's transcoding
/// and sealing share the CPU; the controller is coarse (SIGSTOP of the worker group).
pub struct SchedSteering {
    core: sched::Scheduler,
    host: HostBackend,
    started: Instant,
    paused: bool,
    reason: Option<String>,
}

impl SchedSteering {
    /// Nominal rating of the one device; only the ratio of demand to it matters.
    pub const RATED_PPS: f64 = 1.0e9;

    /// `pause_above` / `resume_below` become the core's seal high/low watermarks.
    pub fn new(pause_above: f64, resume_below: f64, sustain_ms: u64, min_dwell_ms: u64) -> Self {
        let mut config = sched::Config {
            seal_high_watermark: pause_above,
            seal_low_watermark: resume_below,
            seal_sustain_ms: sustain_ms,
            min_dwell_ms,
            ..sched::Config::default()
        };
        config
            .device_pixels_per_sec
            .insert("0".into(), Self::RATED_PPS);
        SchedSteering {
            core: sched::Scheduler::new(config),
            host: HostBackend::new(crate::gpu::Attribution::default()),
            started: Instant::now(),
            paused: false,
            reason: None,
        }
    }

    /// One decision at `now_ms` (monotonic, any origin) for a measured ratio.
    pub fn decide(&mut self, now_ms: u64, realtime_ratio: f64) -> Action {
        let snapshot = self.host.poll();
        let ratio = if realtime_ratio.is_finite() {
            realtime_ratio.max(0.0)
        } else {
            0.0
        };
        let input = TickInput {
            now_ms,
            snapshot,
            demand: Demand {
                live_pps: Self::RATED_PPS * ratio,
                batch_pps: 0.0,
            },
            load: Vec::new(),
            proof: ProofSignal::default(),
            post: Default::default(),
            controller: ControllerStatus {
                reachable: true,
                coarse: true,
                sealing_disabled: self.paused,
            },
            safe_profile: None,
            models: Vec::new(),
        };
        let decision = self.core.tick(&input);
        self.reason = Some(decision.sealing.reason.clone());
        match decision.sealing.action {
            SealAction::Disable => {
                self.paused = true;
                Action::PauseSealing
            }
            SealAction::Enable => {
                self.paused = false;
                Action::ResumeSealing
            }
            SealAction::None => Action::None,
        }
    }
}

/// What the scheduler core grants the bench's one device while a WindowPoSt plan `post`
/// holds (a scripted deadline): the streams of `streams` that may go on, and the core's
/// reason. The same pure `tick` as `comine run`, rated like [`SchedSteering`].
pub fn streams_under_post(
    streams: u32,
    post: crate::post::PostWindow,
    now_ms: u64,
) -> (u32, String) {
    let mut config = sched::Config::default();
    config
        .device_pixels_per_sec
        .insert("0".into(), SchedSteering::RATED_PPS);
    let mut core = sched::Scheduler::new(config);
    let input = TickInput {
        now_ms,
        snapshot: HostBackend::new(crate::gpu::Attribution::default()).poll(),
        demand: Demand {
            live_pps: SchedSteering::RATED_PPS,
            batch_pps: 0.0,
        },
        load: Vec::new(),
        proof: ProofSignal::default(),
        post,
        models: Vec::new(),
        controller: ControllerStatus {
            reachable: true,
            coarse: true,
            sealing_disabled: false,
        },
        safe_profile: None,
    };
    let decision = core.tick(&input);
    match decision.devices.first() {
        Some(d) if d.rated_pps > 0.0 => {
            let share = (d.budget_pps / d.rated_pps).clamp(0.0, 1.0);
            let allowed = (streams as f64 * share + 1e-9).floor() as u32;
            (allowed.min(streams), d.reasons.join("; "))
        }
        _ => (0, "no device in the scheduler's decision".into()),
    }
}

impl Steering for SchedSteering {
    fn name(&self) -> &str {
        "sched (the daemon's scheduler core)"
    }

    fn on_tick(&mut self, realtime_ratio: f64) -> Action {
        let now = self.started.elapsed().as_millis() as u64;
        self.decide(now, realtime_ratio)
    }

    fn last_reason(&self) -> Option<String> {
        self.reason.clone()
    }
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
        "hysteresis (reference rule)"
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

    #[test]
    fn sched_core_pauses_after_sustain_and_resumes_after_dwell() {
        // High watermark 0.8, low 0.5, 1 s sustain, 5 s minimum dwell.
        let mut s = SchedSteering::new(0.8, 0.5, 1_000, 5_000);
        assert_eq!(s.decide(0, 0.9), Action::None, "not sustained yet");
        assert_eq!(s.decide(500, 0.95), Action::None);
        assert_eq!(s.decide(1_000, 0.9), Action::PauseSealing);
        assert!(
            s.last_reason().unwrap().contains("pausing"),
            "{:?}",
            s.last_reason()
        );
        assert_eq!(s.decide(1_500, 0.9), Action::None, "already paused");
        // Demand falls below the low watermark; resume waits for the sustain time, and
        // the 5 s minimum dwell since the pause.
        assert_eq!(s.decide(2_000, 0.3), Action::None);
        assert_eq!(s.decide(3_500, 0.3), Action::None, "dwell not over");
        assert_eq!(s.decide(6_000, 0.3), Action::ResumeSealing);
        // Between the watermarks nothing changes.
        assert_eq!(s.decide(20_000, 0.6), Action::None);
        assert_eq!(s.decide(30_000, 0.6), Action::None);
        // Garbage ratios count as no demand, never as a pause.
        assert_eq!(s.decide(40_000, f64::NAN), Action::None);
    }
}
