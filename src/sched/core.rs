//! The pure decision core: one [`TickInput`] in, one [`Decision`] out, no I/O and no clock.

use std::collections::HashMap;

use crate::gpu::{DeviceSnapshot, ProcessUse, Role, Source};

use crate::post::Phase;

use super::lease::{DevicePressure, LeaseBook, LeasePolicy};
use super::{
    Capacity, Config, Decision, DeviceCapacity, DeviceCapacitySummary, DeviceLoad, SealAction,
    SealMode, SealingDecision, TickInput,
};

pub struct Scheduler {
    config: Config,
    seq: u64,
    desired: SealMode,
    last_change_ms: Option<u64>,
    high_since_ms: Option<u64>,
    low_since_ms: Option<u64>,
    /// Memory of each prover process (device, pid) at the last tick, to see it rise.
    prover_memory: HashMap<(u32, u32), u64>,
    leases: LeaseBook,
}

impl Scheduler {
    pub fn new(config: Config) -> Self {
        Scheduler {
            config,
            seq: 0,
            desired: SealMode::Enabled,
            last_change_ms: None,
            high_since_ms: None,
            low_since_ms: None,
            prover_memory: HashMap::new(),
            leases: LeaseBook::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts from a sealing mode recovered after a restart (dwell counts from `now_ms`).
    pub fn assume_sealing(&mut self, mode: SealMode, now_ms: u64) {
        self.desired = mode;
        self.last_change_ms = Some(now_ms);
    }

    /// Decides capacity per device and the sealing action for this instant.
    pub fn tick(&mut self, input: &TickInput) -> Decision {
        self.seq += 1;
        let proving = self.active_provers(&input.snapshot.devices);
        let devices: Vec<DeviceCapacity> = input
            .snapshot
            .devices
            .iter()
            .map(|d| self.device_capacity(d, input, proving.contains(&d.index)))
            .collect();
        let rated: f64 = devices
            .iter()
            .filter(|d| d.healthy)
            .map(|d| d.rated_pps)
            .sum();
        let admitted_live: f64 = input.load.iter().map(|l| l.live_pps).sum();
        let live = input.demand.live_pps.max(admitted_live);
        let demand_ratio = if rated > 0.0 { live / rated } else { 0.0 };
        let sealing = self.sealing(input, demand_ratio, devices.iter().any(|d| d.proof_running));
        let pressures: Vec<DevicePressure> = input
            .snapshot
            .devices
            .iter()
            .zip(&devices)
            .map(|(d, cap)| self.pressure(d, cap, &input.post))
            .collect();
        let policy = LeasePolicy {
            reserve_bytes: self.config.model_reserve_bytes,
            return_after_ms: self.config.model_return_after_ms,
        };
        let leases = self.leases.tick(
            &policy,
            input.now_ms,
            input.snapshot.taken_at_ms,
            &input.models,
            &pressures,
        );
        let capacity = Capacity {
            source: Some(input.snapshot.source),
            total_pps: devices.iter().map(|d| d.budget_pps).sum(),
            livepeer_sessions: devices.iter().map(|d| d.livepeer_sessions).sum(),
            devices: devices
                .iter()
                .map(|d| DeviceCapacitySummary {
                    index: d.index,
                    uuid: d.uuid.clone(),
                    healthy: d.healthy,
                    budget_pps: d.budget_pps,
                    livepeer_sessions: d.livepeer_sessions,
                    shed_pps: d.shed_pps,
                })
                .collect(),
            leases: self.leases.granted(),
        };
        Decision {
            seq: self.seq,
            at_ms: input.snapshot.taken_at_ms,
            source: input.snapshot.source,
            input: input.clone(),
            demand_ratio,
            devices,
            capacity,
            sealing,
            leases,
        }
    }

    /// What a device says about the memory AI models may hold: a proof on it, a sealing
    /// process doing GPU work (C2: SM or memory above the `c2_*` thresholds, from NVML's
    /// process list), its health, and the memory everything but comine uses.
    fn pressure(
        &self,
        d: &DeviceSnapshot,
        cap: &DeviceCapacity,
        post: &crate::post::PostWindow,
    ) -> DevicePressure {
        let c = &self.config;
        let c2 = d
            .processes
            .iter()
            .filter(|p| p.role == Role::Sealing)
            .find(|p| {
                p.sm_pct.is_some_and(|s| f64::from(s) >= c.c2_active_sm_pct)
                    || p.memory_bytes
                        .is_some_and(|m| m >= c.c2_active_memory_bytes)
            })
            .map(|p| {
                format!(
                    "sealing process {} (pid {}) uses {} MiB and {}% SM on GPU {}",
                    p.name,
                    p.pid,
                    p.memory_bytes.unwrap_or(0) >> 20,
                    p.sm_pct.unwrap_or(0),
                    d.index
                )
            });
        let ours: u64 = d
            .processes
            .iter()
            .filter(|p| p.role == Role::Comine)
            .filter_map(|p| p.memory_bytes)
            .sum();
        DevicePressure {
            device: d.index,
            proof: cap.proof_running,
            // The chain's schedule: the window is about to open and its VRAM reserve is kept.
            post_window: (cap.post_phase == Phase::StepDown).then(|| post.reason.clone()),
            c2,
            unhealthy: (!d.healthy)
                .then(|| d.error.clone().unwrap_or_else(|| "device error".into())),
            memory_total_bytes: d.memory_total_bytes.unwrap_or(0),
            memory_others_bytes: d.memory_used_bytes.unwrap_or(0).saturating_sub(ours),
        }
    }

    fn lookup<T: Copy>(
        map: &std::collections::BTreeMap<String, T>,
        d: &DeviceSnapshot,
    ) -> Option<T> {
        map.get(&d.uuid)
            .or_else(|| map.get(&d.index.to_string()))
            .copied()
    }

    /// Devices where a prover process is *active* (lotus #7845: idle lotus-miner and
    /// lotus-worker processes keep a CUDA context open, so presence alone is not a proof).
    fn active_provers(&mut self, devices: &[DeviceSnapshot]) -> Vec<u32> {
        let c = &self.config;
        let mut seen = HashMap::new();
        let mut active = Vec::new();
        for d in devices {
            for p in d.processes.iter().filter(|p| p.role == Role::Proof) {
                let before = self.prover_memory.get(&(d.index, p.pid)).copied();
                if let Some(m) = p.memory_bytes {
                    seen.insert((d.index, p.pid), m);
                }
                if prover_active(p, before, c) && !active.contains(&d.index) {
                    active.push(d.index);
                }
            }
        }
        self.prover_memory = seen;
        active
    }

    fn device_capacity(
        &self,
        d: &DeviceSnapshot,
        input: &TickInput,
        prover_active: bool,
    ) -> DeviceCapacity {
        let c = &self.config;
        let load = input
            .load
            .iter()
            .find(|l| l.index == d.index)
            .copied()
            .unwrap_or(DeviceLoad {
                index: d.index,
                ..DeviceLoad::default()
            });
        let rated = Self::lookup(&c.device_pixels_per_sec, d)
            .or(d.encode_pixels_per_sec)
            .unwrap_or(match d.source {
                Source::Host => {
                    c.host_pixels_per_sec_per_core * d.cpu_cores.unwrap_or(1).max(1) as f64
                }
                _ => c.default_gpu_pixels_per_sec,
            });
        let session_limit = [
            d.session_cap,
            Self::lookup(&c.session_limits, d),
            c.default_session_limit,
        ]
        .into_iter()
        .flatten()
        .min();
        // NVML counts our sessions too; trust whichever is larger (others may encode as well).
        let sessions_used = load.sessions.max(d.nvenc_sessions.unwrap_or(0));
        let proof = prover_active || input.proof.applies_to(d.index);
        let post_phase = if input.post.applies_to(d.index) {
            input.post.phase
        } else {
            Phase::None
        };
        let mut post_reserve = 0u64;
        let sealing_active = d.processes.iter().any(|p| p.role == Role::Sealing);
        let mut reasons = Vec::new();
        let mut admit = true;
        let floor = rated * c.proof_floor_fraction;
        let mut budget = rated * (c.encoder_util_threshold_pct / 100.0).clamp(0.0, 1.0);
        if !input.controller.reachable {
            budget = budget.min(rated * c.unreachable_safe_fraction);
            reasons.push("filecoin node unreachable: safe transcoding limit".into());
        }
        if let Some(why) = &input.safe_profile {
            if !proof {
                budget = budget.min(rated * c.post_safe_fraction);
                reasons.push(format!("PoSt-safe profile ({why})"));
            }
        }
        if proof {
            budget = budget.min(floor);
            reasons.push("proof running: transcoding at the proof floor".into());
        }
        // The chain's WindowPoSt schedule: proofs first, before they start.
        match post_phase {
            Phase::None => {}
            Phase::Drain => reasons.push(input.post.reason.clone()),
            Phase::StepDown => {
                budget = budget.min(floor);
                post_reserve = input.post.vram_reserve_bytes;
                reasons.push(format!(
                    "{}: transcoding at the proof floor",
                    input.post.reason
                ));
            }
            Phase::Safe => {
                budget = budget.min(rated * c.post_safe_fraction);
                post_reserve = input.post.vram_reserve_bytes;
                reasons.push(input.post.reason.clone());
            }
        }
        if let Some(t) = d.temperature_c {
            if t >= c.temperature_critical_c {
                budget = budget.min(floor);
                reasons.push(format!(
                    "temperature {t:.0}C critical: transcoding at the floor"
                ));
            } else if t >= c.temperature_limit_c {
                admit = false;
                reasons.push(format!("temperature {t:.0}C at limit: holding"));
            }
        }
        if d.thermal_throttled() && admit {
            admit = false;
            reasons.push("thermal throttling: holding".into());
        }
        if let (Some(p), Some(l)) = (d.power_watts, d.power_limit_watts) {
            if l > 0.0 && p >= l * c.power_cap_pct / 100.0 {
                admit = false;
                reasons.push(format!(
                    "power {p:.0}W at cap ({:.0}% of {l:.0}W): holding",
                    c.power_cap_pct
                ));
            }
        }
        // GPU memory: a headroom for everything, and on GPUs a reserve a proof can start in.
        let mut memory_short_for_proof = false;
        if let (Some(u), Some(t)) = (d.memory_used_bytes, d.memory_total_bytes) {
            let free = t.saturating_sub(u);
            // The chain's schedule may ask for more while a window is near or unknown
            // ([post] vram_reserve_mib); proof_vram_reserve_bytes is the standing reserve.
            let reserve = if d.source == Source::Host {
                0
            } else {
                c.proof_vram_reserve_bytes.max(post_reserve)
            };
            if free < c.memory_headroom_bytes {
                admit = false;
                memory_short_for_proof = proof;
                reasons.push(format!("memory headroom {} MiB left: holding", free >> 20));
            } else if !proof && free < c.memory_headroom_bytes.saturating_add(reserve) {
                admit = false;
                reasons.push(if post_reserve > c.proof_vram_reserve_bytes {
                    format!(
                        "{} MiB free, below the {} MiB VRAM reserve for WindowPoSt ([post] vram_reserve_mib): holding",
                        free >> 20,
                        reserve >> 20
                    )
                } else {
                    format!(
                        "{} MiB free, {} MiB kept for a WindowPoSt (proof_vram_reserve_bytes): holding",
                        free >> 20,
                        reserve >> 20
                    )
                });
            }
        }
        if let Some(e) = d.encoder_util_pct {
            if e >= c.encoder_util_threshold_pct {
                admit = false;
                reasons.push(format!("encoder {e:.0}% at threshold: holding"));
            }
        }
        if let Some(limit) = session_limit {
            if sessions_used >= limit {
                admit = false;
                reasons.push(format!("NVENC sessions {sessions_used}/{limit}: holding"));
            }
        }
        if !d.healthy {
            admit = false;
            budget = 0.0;
            reasons.push(format!(
                "unhealthy: {}",
                d.error.as_deref().unwrap_or("device error")
            ));
        }
        let mut batch_budget = if proof || post_phase == Phase::StepDown {
            0.0
        } else {
            budget * (1.0 - c.live_reserve_fraction)
        };
        if sealing_active && !input.controller.sealing_disabled {
            batch_budget = batch_budget.min(budget * c.batch_fraction_while_sealing);
        }
        let admitted = load.total_pps();
        // While draining, the orchestrator is already told the floor's capacity, so the
        // sessions it moves away have finished their segments by the step-down.
        let session_budget = if post_phase == Phase::Drain {
            budget.min(floor)
        } else {
            budget
        };
        let by_pixels = c.sessions_for(session_budget);
        let by_sessions = session_limit.map(|l| l / c.encodes_per_session.max(1));
        // A GPU that proves offers no new Livepeer session: its floor is for the segments
        // already streaming, which drain, not for new streams.
        let livepeer_sessions = if proof {
            0
        } else {
            by_sessions.map_or(by_pixels, |s| s.min(by_pixels))
        };
        // While a proof runs, transcoding above the floor is taken back, not only refused;
        // a proof short of memory gets everything that can go.
        let shed_pps = if memory_short_for_proof {
            admitted
        } else if proof {
            (admitted - budget).max(0.0)
        } else {
            0.0
        };
        if shed_pps > 0.0 {
            reasons.push(format!(
                "proof needs the GPU: shedding {:.0} Mpx/s of running work",
                shed_pps / 1e6
            ));
        }
        DeviceCapacity {
            index: d.index,
            uuid: d.uuid.clone(),
            source: d.source,
            healthy: d.healthy,
            admit,
            rated_pps: rated,
            budget_pps: budget,
            batch_budget_pps: batch_budget,
            admitted_pps: admitted,
            headroom_pps: (budget - admitted).max(0.0),
            session_limit,
            sessions_used,
            proof_running: proof,
            post_phase,
            sealing_active,
            livepeer_sessions,
            shed_pps,
            reasons,
        }
    }

    fn sealing(&mut self, input: &TickInput, ratio: f64, proof: bool) -> SealingDecision {
        let c = &self.config;
        let now = input.now_ms;
        let ctl = input.controller;
        let dwell_ok = self
            .last_change_ms
            .is_none_or(|t| now.saturating_sub(t) >= c.min_dwell_ms);
        let mut reason;
        if proof && ctl.coarse {
            // Cordon/SIGSTOP would block the proof itself: undo at once, whatever the dwell.
            self.set(SealMode::Enabled, now);
            self.high_since_ms = None;
            reason = "proof running and the controller is coarse: sealing side stays enabled"
                .to_string();
        } else if !ctl.reachable {
            // Never leave sealing disabled because comine lost contact.
            self.set(SealMode::Enabled, now);
            self.high_since_ms = None;
            self.low_since_ms = None;
            reason =
                "filecoin node unreachable: sealing must not stay disabled; retrying".to_string();
        } else {
            if ratio >= c.seal_high_watermark {
                self.high_since_ms.get_or_insert(now);
                self.low_since_ms = None;
            } else if ratio <= c.seal_low_watermark {
                self.low_since_ms.get_or_insert(now);
                self.high_since_ms = None;
            } else {
                self.high_since_ms = None;
                self.low_since_ms = None;
            }
            let held = |since: Option<u64>| {
                since.is_some_and(|s| now.saturating_sub(s) >= c.seal_sustain_ms)
            };
            let pct = ratio * 100.0;
            reason = format!(
                "live demand {pct:.0}% of capacity, sealing {:?}",
                self.desired
            );
            match self.desired {
                SealMode::Enabled if held(self.high_since_ms) => {
                    if dwell_ok {
                        reason = format!(
                            "live demand {pct:.0}% >= high watermark {:.0}% for {} ms: pausing GPU sealing",
                            c.seal_high_watermark * 100.0,
                            c.seal_sustain_ms
                        );
                        self.set(SealMode::Disabled, now);
                    } else {
                        reason += "; high demand, waiting for the minimum dwell";
                    }
                }
                SealMode::Disabled if held(self.low_since_ms) => {
                    if dwell_ok {
                        reason = format!(
                            "live demand {pct:.0}% <= low watermark {:.0}% for {} ms: resuming GPU sealing",
                            c.seal_low_watermark * 100.0,
                            c.seal_sustain_ms
                        );
                        self.set(SealMode::Enabled, now);
                    } else {
                        reason += "; low demand, waiting for the minimum dwell";
                    }
                }
                _ => {}
            }
        }
        let action = match (self.desired, ctl.sealing_disabled) {
            (SealMode::Disabled, false) => SealAction::Disable,
            (SealMode::Enabled, true) => SealAction::Enable,
            _ => SealAction::None,
        };
        SealingDecision {
            desired: self.desired,
            action,
            reason,
        }
    }

    fn set(&mut self, mode: SealMode, now: u64) {
        if self.desired != mode {
            self.desired = mode;
            self.last_change_ms = Some(now);
        }
    }
}

/// Whether a prover process is doing proof work: SM or memory use above the thresholds, or
/// memory rising. A process with no figures at all (host backend) counts by its presence.
fn prover_active(p: &ProcessUse, memory_before: Option<u64>, c: &Config) -> bool {
    if p.sm_pct.is_none() && p.memory_bytes.is_none() {
        return true;
    }
    let sm = p
        .sm_pct
        .is_some_and(|s| f64::from(s) >= c.proof_active_sm_pct);
    let memory = p
        .memory_bytes
        .is_some_and(|m| m >= c.proof_active_memory_bytes);
    let rising = match (memory_before, p.memory_bytes) {
        (Some(before), Some(now)) => now.saturating_sub(before) >= c.proof_memory_rise_bytes,
        _ => false,
    };
    sm || memory || rising
}
