//! The co-mining scheduler: who gets the GPU, and when sealing steps aside.
//!
//! Priority: 1. proofs (never delayed: transcoding on their GPU drops to a floor), 2. live
//! transcoding (must beat its deadline), 3. sealing (takes the rest), 4. AI jobs (their
//! models' VRAM is a [`lease`] sealing and proofs take back) and batch transcoding.
//! [`Scheduler::tick`] is the pure decision core (no I/O): snapshot + demand in, a [`Decision`]
//! record out. [`service`] drives it: telemetry in, sealing actions out through a
//! [`crate::seal::Controller`], what comine disabled persisted so it is always restored.
//! [`Admitter`] is what intake calls to place a job on the least-loaded device, in pixels/s.

pub mod admission;
pub mod core;
pub mod lease;
pub mod service;
pub mod state;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use admission::{Admitter, JobClass, Permit, Placement, RejectReason, Rejected};
pub use core::Scheduler;
pub use lease::{LeaseAction, LeaseDecision, LeaseView, ModelLease};
pub use service::{start, ServiceError, ServiceHandle};

use crate::gpu::{Snapshot, Source};
use crate::post::{Phase, PostWindow};

/// Scheduler thresholds, embeddable in the daemon's TOML config as `[sched]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How often the driver decides even without a new snapshot, ms.
    pub tick_interval_ms: u64,
    /// Encoder utilisation above which a device takes no new job, and the share of rated
    /// throughput comine plans to use, percent.
    pub encoder_util_threshold_pct: f64,
    /// Free device memory below which a device takes no new job, bytes.
    pub memory_headroom_bytes: u64,
    /// GPU memory kept free for a proof on every GPU, bytes, on top of the headroom: a
    /// WindowPoSt needs about 8.5 GiB of VRAM (lotus docs, "PoSt workers": windowPoSt 8.5 GiB,
    /// winningPoSt 6 GiB), and a proof that cannot get it silently falls back to the CPU and
    /// misses its window. A GPU with less free holds; while a proof runs and memory runs short,
    /// running work on that GPU is shed. 0 on GPUs that never prove.
    pub proof_vram_reserve_bytes: u64,
    /// Power draw, as a percentage of the power limit, above which a device takes no new job.
    pub power_cap_pct: f64,
    /// Temperature at which a device takes no new job, °C (thermal throttling counts too).
    pub temperature_limit_c: f64,
    /// Temperature at which transcoding drops to the floor, °C.
    pub temperature_critical_c: f64,
    /// NVENC session limit per device, keyed by index ("0") or UUID, for mixed rigs.
    pub session_limits: BTreeMap<String, u32>,
    /// Session limit for devices not listed (the driver's own cap still applies).
    pub default_session_limit: Option<u32>,
    /// Rated encode throughput per device, pixels/s, keyed by index or UUID.
    pub device_pixels_per_sec: BTreeMap<String, f64>,
    /// Rated throughput of a real GPU with no entry above, pixels/s.
    pub default_gpu_pixels_per_sec: f64,
    /// libx264 throughput per core on CPU-only hosts, pixels/s.
    pub host_pixels_per_sec_per_core: f64,
    /// Share of rated throughput transcoding keeps on a GPU running a proof.
    pub proof_floor_fraction: f64,
    /// A prover process (configured by name or PID) counts as a running proof only when it
    /// is active: SM use at or above this, percent…
    pub proof_active_sm_pct: f64,
    /// …or device memory at or above this, bytes (an idle CUDA context holds a few hundred
    /// MiB; a PoSt holds gigabytes)…
    pub proof_active_memory_bytes: u64,
    /// …or memory risen by at least this since the last tick, bytes (a proof starting).
    /// Without any per-process figures (the host backend), presence is all there is to go by.
    pub proof_memory_rise_bytes: u64,
    /// Share of a device's budget batch jobs may never take (kept for live).
    pub live_reserve_fraction: f64,
    /// Share of budget batch jobs may use while sealing runs on the device.
    pub batch_fraction_while_sealing: f64,
    /// Live demand / capacity at or above which GPU sealing is paused.
    pub seal_high_watermark: f64,
    /// Live demand / capacity at or below which GPU sealing is resumed.
    pub seal_low_watermark: f64,
    /// How long demand must stay past a watermark before acting, ms.
    pub seal_sustain_ms: u64,
    /// Minimum time between two sealing changes, ms.
    pub min_dwell_ms: u64,
    /// Share of rated throughput used while the Filecoin node is unreachable.
    pub unreachable_safe_fraction: f64,
    /// Share of rated throughput used under the PoSt-safe profile: no proof source is
    /// configured (or no proving schedule is known), so a proof could start unannounced.
    pub post_safe_fraction: f64,
    /// Pixels/s of one Livepeer session (its whole ladder), for the suggested session count.
    pub session_pixels_per_sec: f64,
    /// NVENC sessions one Livepeer session uses (one per rendition).
    pub encodes_per_session: u32,
    /// The live class's deadline as a multiple of segment duration (go-livepeer's 4 ×).
    /// Sessions are offered at real time; a device that cannot keep one session real-time
    /// but still finishes one segment well within this deadline offers one session.
    pub live_deadline_factor: f64,
    /// Decisions kept in the ring buffer.
    pub decision_history: usize,
    /// What a rejected job is told to wait, ms.
    pub retry_after_ms: u64,
    /// Telemetry older than this makes every device hold, ms.
    pub stale_after_ms: u64,
    /// Free device memory kept for sealing and proofs where AI models are loaded, bytes:
    /// below it a model's VRAM lease is revoked (see [`lease`]).
    pub model_reserve_bytes: u64,
    /// Pressure must be gone this long before a revoked model lease is granted again, ms.
    pub model_return_after_ms: u64,
    /// A sealing process counts as a C2 (GPU sealing work that needs the models' memory)
    /// when its SM use on the device is at least this, percent…
    pub c2_active_sm_pct: f64,
    /// …or its device memory at least this, bytes (an idle lotus-worker's CUDA context
    /// holds a few hundred MiB; a C2 holds gigabytes).
    pub c2_active_memory_bytes: u64,
}

impl Config {
    /// Livepeer sessions a device with this live budget (pixels/s) offers: as many as fit
    /// at real time; when none does, one session whose segments still finish within half
    /// the live deadline (it earns, just not in real time).
    pub fn sessions_for(&self, budget_pps: f64) -> u32 {
        if self.session_pixels_per_sec <= 0.0 || !budget_pps.is_finite() || budget_pps <= 0.0 {
            return 0;
        }
        let realtime = (budget_pps / self.session_pixels_per_sec).floor() as u32;
        let within_deadline =
            budget_pps * self.live_deadline_factor / 2.0 >= self.session_pixels_per_sec;
        if realtime == 0 && within_deadline {
            1
        } else {
            realtime
        }
    }

    /// The live budget of a device rated at `rated_pps` with nothing else running.
    pub fn idle_budget(&self, rated_pps: f64) -> f64 {
        rated_pps * (self.encoder_util_threshold_pct / 100.0).clamp(0.0, 1.0)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tick_interval_ms: 500,
            encoder_util_threshold_pct: 90.0,
            memory_headroom_bytes: 1 << 30,
            // 8.5 GiB: lotus docs' WindowPoSt VRAM requirement.
            proof_vram_reserve_bytes: 17 << 29,
            power_cap_pct: 95.0,
            temperature_limit_c: 83.0,
            temperature_critical_c: 90.0,
            session_limits: BTreeMap::new(),
            default_session_limit: None,
            device_pixels_per_sec: BTreeMap::new(),
            default_gpu_pixels_per_sec: 1.0e9,
            host_pixels_per_sec_per_core: 20.0e6,
            proof_floor_fraction: 0.1,
            proof_active_sm_pct: 5.0,
            proof_active_memory_bytes: 2 << 30,
            proof_memory_rise_bytes: 256 << 20,
            live_reserve_fraction: 0.25,
            batch_fraction_while_sealing: 0.2,
            seal_high_watermark: 0.6,
            seal_low_watermark: 0.3,
            seal_sustain_ms: 5_000,
            min_dwell_ms: 60_000,
            unreachable_safe_fraction: 0.5,
            post_safe_fraction: 0.5,
            // 720p + 480p + 360p + 240p at 30 fps.
            session_pixels_per_sec: (1280.0 * 720.0
                + 854.0 * 480.0
                + 640.0 * 360.0
                + 426.0 * 240.0)
                * 30.0,
            encodes_per_session: 4,
            live_deadline_factor: 4.0,
            decision_history: 512,
            retry_after_ms: 2_000,
            stale_after_ms: 5_000,
            model_reserve_bytes: 2 << 30,
            model_return_after_ms: 60_000,
            c2_active_sm_pct: 50.0,
            c2_active_memory_bytes: 4 << 30,
        }
    }
}

/// Transcoding demand from intake, pixels/s (w × h × fps summed over renditions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Demand {
    pub live_pps: f64,
    pub batch_pps: f64,
}

/// What is admitted on one device now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceLoad {
    pub index: u32,
    pub live_pps: f64,
    pub batch_pps: f64,
    pub sessions: u32,
}

impl DeviceLoad {
    pub fn total_pps(&self) -> f64 {
        self.live_pps + self.batch_pps
    }
}

/// A proof signal from outside telemetry: configured detection, the Filecoin node, tests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProofSignal {
    pub running: bool,
    /// Devices the proof runs on; `None` means all of them.
    pub devices: Option<Vec<u32>>,
    /// Who said so (e.g. "lotus-miner", "config").
    pub source: String,
}

impl ProofSignal {
    pub fn applies_to(&self, index: u32) -> bool {
        self.running && self.devices.as_ref().is_none_or(|d| d.contains(&index))
    }
}

/// What the driver knows about the sealing controller.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ControllerStatus {
    pub reachable: bool,
    /// Disabling also blocks proofs (Curio cordon, SIGSTOP): undo it when a proof shows up.
    pub coarse: bool,
    /// comine has sealing disabled right now.
    pub sealing_disabled: bool,
}

impl Default for ControllerStatus {
    fn default() -> Self {
        ControllerStatus {
            reachable: true,
            coarse: false,
            sealing_disabled: false,
        }
    }
}

/// Everything one tick decides from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TickInput {
    /// Monotonic milliseconds (any origin), for sustain and dwell times.
    pub now_ms: u64,
    pub snapshot: Snapshot,
    pub demand: Demand,
    pub load: Vec<DeviceLoad>,
    pub proof: ProofSignal,
    pub controller: ControllerStatus,
    /// The WindowPoSt plan at this instant (`post::evaluate`): drain, step down, PoSt-safe.
    #[serde(default)]
    pub post: PostWindow,
    /// Why the PoSt-safe profile applies (no proof source configured, no proving schedule),
    /// or `None` for the normal profile.
    #[serde(default)]
    pub safe_profile: Option<String>,
    /// AI models that want a VRAM lease (the warm models intake would load).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelLease>,
}

/// One device's capacity as decided this tick.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceCapacity {
    pub index: u32,
    pub uuid: String,
    pub source: Source,
    pub healthy: bool,
    /// Whether new jobs may go to this device.
    pub admit: bool,
    /// Rated encode throughput, pixels/s.
    pub rated_pps: f64,
    /// What transcoding may use in total now, pixels/s.
    pub budget_pps: f64,
    /// What batch jobs may bring the total to, pixels/s.
    pub batch_budget_pps: f64,
    pub admitted_pps: f64,
    pub headroom_pps: f64,
    pub session_limit: Option<u32>,
    pub sessions_used: u32,
    pub proof_running: bool,
    /// What the WindowPoSt plan does to this device now.
    #[serde(default)]
    pub post_phase: Phase,
    pub sealing_active: bool,
    /// Suggested Livepeer sessions for this device (0 while a proof runs on it).
    pub livepeer_sessions: u32,
    /// Admitted load to take off this device now, pixels/s: a proof runs and transcoding is
    /// above its floor, or the proof is short of GPU memory (then everything that can go).
    #[serde(default)]
    pub shed_pps: f64,
    /// Why the device is limited (empty when it is not).
    pub reasons: Vec<String>,
}

impl DeviceCapacity {
    /// How messages name the device: `gpu N`, or `host N` for the CPU standing in for one.
    pub fn name(&self) -> String {
        match self.source {
            Source::Host => format!("host {}", self.index),
            _ => format!("gpu {}", self.index),
        }
    }
}

/// Published capacity, for intake (Livepeer registration) to follow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    pub source: Option<Source>,
    pub total_pps: f64,
    pub devices: Vec<DeviceCapacitySummary>,
    /// Suggested `capacity` for Livepeer's RegisterTranscoder.
    pub livepeer_sessions: u32,
    /// VRAM leases granted to AI models now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<ModelLease>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceCapacitySummary {
    pub index: u32,
    pub uuid: String,
    pub healthy: bool,
    pub budget_pps: f64,
    pub livepeer_sessions: u32,
    /// See [`DeviceCapacity::shed_pps`].
    #[serde(default)]
    pub shed_pps: f64,
}

/// Whether GPU sealing should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SealMode {
    Enabled,
    Disabled,
}

/// What the driver must do to the sealing side this tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SealAction {
    None,
    Disable,
    Enable,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SealingDecision {
    pub desired: SealMode,
    pub action: SealAction,
    pub reason: String,
}

/// One tick's record: input, capacity per device, sealing action and reason.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub seq: u64,
    /// Wall-clock time of the snapshot, ms since the epoch.
    pub at_ms: u64,
    pub source: Source,
    pub input: TickInput,
    /// Live demand (requested or admitted, whichever is larger) over healthy rated capacity.
    pub demand_ratio: f64,
    pub devices: Vec<DeviceCapacity>,
    pub capacity: Capacity,
    pub sealing: SealingDecision,
    /// Model leases granted or revoked this tick, with their reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<LeaseDecision>,
}
