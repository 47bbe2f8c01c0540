//! VRAM leases: an AI model loaded on a device holds memory that sealing (PC2, C2) and
//! proofs (WindowPoSt, WinningPoSt) also need, so the scheduler holds it as a lease.
//!
//! Intake asks for leases ([`ModelLease`]: a warm model, its device and its size, in
//! [`super::TickInput::models`]); every tick [`LeaseBook::tick`] grants or revokes them and
//! says why ([`LeaseDecision`], kept in the [`super::Decision`] record; the granted set is
//! published in [`super::Capacity::leases`]). Whoever loaded the model carries a revocation
//! out as a protocol (the daemon: re-register without the model, drain within a bound,
//! answer the rest, unload).
//!
//! A lease is revoked at once on its device when a proof runs there, when a sealing process
//! is doing GPU work (C2, seen from NVML process activity: see [`super::Config`]'s `c2_*`
//! thresholds), or when free memory for models falls below the reserve. It is granted when
//! the model fits above the reserve — at once the first time, and after the pressure has
//! been gone for `model_return_after_ms` once it was revoked (hysteresis: a flapping signal
//! does not load and unload a model every tick). Model memory is counted by the book itself
//! (telemetry's own figure for comine's process is set aside), so a simulated device, which
//! does not know about our models, behaves like a real one.

use serde::{Deserialize, Serialize};

/// A model that wants device memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelLease {
    pub device: u32,
    pub model_id: String,
    /// VRAM the loaded model holds, bytes.
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseAction {
    Grant,
    Revoke,
    /// A new request not granted on its first tick (no headroom, pressure, or its device is
    /// not in telemetry): whoever loaded the model to validate it unloads it.
    Deny,
}

/// One lease granted or revoked, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseDecision {
    /// Wall-clock time, ms since the epoch.
    pub at_ms: u64,
    pub device: u32,
    pub model_id: String,
    pub action: LeaseAction,
    pub reason: String,
}

/// What the scheduler driver publishes: the leases granted now and the recent decisions
/// (newest last), so whoever carries them out can say why.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    pub granted: Vec<ModelLease>,
    pub decisions: Vec<LeaseDecision>,
}

impl LeaseView {
    /// Decisions kept.
    pub const KEEP: usize = 64;

    /// The newest decision about `model_id`.
    pub fn last_for(&self, model_id: &str) -> Option<&LeaseDecision> {
        self.decisions.iter().rev().find(|d| d.model_id == model_id)
    }
}

/// What one device says this tick about the memory models may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DevicePressure {
    pub device: u32,
    /// A WindowPoSt/WinningPoSt runs (or is due) on the device.
    pub proof: bool,
    /// The WindowPoSt plan steps this device down for a window about to open: why.
    pub post_window: Option<String>,
    /// A sealing process does GPU work (C2) on the device: who, and how much.
    pub c2: Option<String>,
    /// The device is unhealthy (lost, or its telemetry is stale): why.
    pub unhealthy: Option<String>,
    /// 0 when the device reports no memory (host CPU).
    pub memory_total_bytes: u64,
    /// Memory used by everything but comine's own process (whose models the book counts).
    pub memory_others_bytes: u64,
}

/// When leases are revoked and granted (from [`super::Config`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeasePolicy {
    /// Free device memory kept for sealing and proofs, bytes.
    pub reserve_bytes: u64,
    /// Pressure must be gone this long before a revoked lease is granted again, ms.
    pub return_after_ms: u64,
}

#[derive(Clone, Debug)]
struct Slot {
    lease: ModelLease,
    held: bool,
    ever_revoked: bool,
    /// Some decision (grant or deny) was made about it.
    decided: bool,
    /// Monotonic ms since which the device has been calm (while not held).
    calm_since_ms: Option<u64>,
}

/// The leases of every device.
#[derive(Clone, Debug, Default)]
pub struct LeaseBook {
    slots: Vec<Slot>,
}

fn mib(b: u64) -> u64 {
    b >> 20
}

impl LeaseBook {
    /// Leases granted now.
    pub fn granted(&self) -> Vec<ModelLease> {
        self.slots
            .iter()
            .filter(|s| s.held)
            .map(|s| s.lease.clone())
            .collect()
    }

    fn held_bytes(&self, device: u32) -> u64 {
        self.slots
            .iter()
            .filter(|s| s.held && s.lease.device == device)
            .map(|s| s.lease.bytes)
            .sum()
    }

    /// Follows the requests (new ones start revoked-never, dropped ones are forgotten) and
    /// decides. `now_ms` is monotonic (hysteresis), `at_ms` wall-clock (the record).
    pub fn tick(
        &mut self,
        policy: &LeasePolicy,
        now_ms: u64,
        at_ms: u64,
        requests: &[ModelLease],
        devices: &[DevicePressure],
    ) -> Vec<LeaseDecision> {
        self.slots.retain(|s| requests.contains(&s.lease));
        for r in requests {
            if !self.slots.iter().any(|s| &s.lease == r) {
                self.slots.push(Slot {
                    lease: r.clone(),
                    held: false,
                    ever_revoked: false,
                    decided: false,
                    calm_since_ms: None,
                });
            }
        }
        let mut out = Vec::new();
        let decide = |s: &Slot, action, reason: String| LeaseDecision {
            at_ms,
            device: s.lease.device,
            model_id: s.lease.model_id.clone(),
            action,
            reason,
        };
        for dev in devices {
            let free = |book: &LeaseBook| {
                dev.memory_total_bytes
                    .saturating_sub(dev.memory_others_bytes)
                    .saturating_sub(book.held_bytes(dev.device))
            };
            let known = dev.memory_total_bytes > 0;
            let signal = if dev.proof {
                Some(format!(
                    "PoSt window open: a proof needs GPU {}",
                    dev.device
                ))
            } else if let Some(w) = &dev.post_window {
                Some(format!("PoSt window: {w}"))
            } else if let Some(c) = &dev.c2 {
                Some(format!("C2 starting: {c}"))
            } else {
                dev.unhealthy
                    .as_ref()
                    .map(|u| format!("GPU {} unhealthy: {u}", dev.device))
            };
            let on_device: Vec<usize> = (0..self.slots.len())
                .filter(|&i| self.slots[i].lease.device == dev.device)
                .collect();
            // Revocations: every lease on a signal; on memory pressure, largest first until
            // the reserve is free again.
            let mut by_size = on_device.clone();
            by_size.sort_by_key(|&i| std::cmp::Reverse(self.slots[i].lease.bytes));
            let mut pressured = signal.is_some();
            for &i in &by_size {
                if !self.slots[i].held {
                    continue;
                }
                let reason = match &signal {
                    Some(s) => s.clone(),
                    None if known && free(self) < policy.reserve_bytes => {
                        pressured = true;
                        format!(
                            "memory pressure: {} MiB free on GPU {} with the models loaded, below the {} MiB reserve",
                            mib(free(self)),
                            dev.device,
                            mib(policy.reserve_bytes)
                        )
                    }
                    None => continue,
                };
                let s = &mut self.slots[i];
                s.held = false;
                s.ever_revoked = true;
                s.calm_since_ms = None;
                out.push(decide(s, LeaseAction::Revoke, reason));
            }
            if pressured {
                let why = signal.clone().unwrap_or_else(|| {
                    format!(
                        "memory pressure: {} MiB free on GPU {}, below the {} MiB reserve",
                        mib(free(self)),
                        dev.device,
                        mib(policy.reserve_bytes)
                    )
                });
                for &i in &on_device {
                    let s = &mut self.slots[i];
                    s.calm_since_ms = None;
                    if !s.held && !s.decided {
                        s.decided = true;
                        out.push(decide(s, LeaseAction::Deny, why.clone()));
                    }
                }
                continue;
            }
            // Grants, in request order, each only if it fits above the reserve.
            for &i in &on_device {
                if self.slots[i].held {
                    continue;
                }
                let bytes = self.slots[i].lease.bytes;
                let free_now = free(self);
                if known && free_now < bytes.saturating_add(policy.reserve_bytes) {
                    let s = &mut self.slots[i];
                    s.calm_since_ms = None;
                    if !s.decided {
                        s.decided = true;
                        let why = format!(
                            "no headroom: {} MiB free on GPU {}; the model ({} MiB) does not fit above the {} MiB reserve",
                            mib(free_now),
                            dev.device,
                            mib(bytes),
                            mib(policy.reserve_bytes)
                        );
                        out.push(decide(s, LeaseAction::Deny, why));
                    }
                    continue;
                }
                let s = &mut self.slots[i];
                let since = *s.calm_since_ms.get_or_insert(now_ms);
                let calm = now_ms.saturating_sub(since);
                if s.ever_revoked && calm < policy.return_after_ms {
                    continue;
                }
                s.held = true;
                s.decided = true;
                s.calm_since_ms = None;
                let room = if known {
                    format!(
                        "{} MiB free on GPU {}: the model ({} MiB) fits above the {} MiB reserve",
                        mib(free_now),
                        dev.device,
                        mib(bytes),
                        mib(policy.reserve_bytes)
                    )
                } else {
                    format!("GPU {} reports no memory figures", dev.device)
                };
                let reason = if s.ever_revoked {
                    format!("no pressure for {} s; {room}", calm / 1000)
                } else {
                    format!("headroom: {room}")
                };
                out.push(decide(s, LeaseAction::Grant, reason));
            }
        }
        // A request for a device telemetry does not show can never be granted: say so once.
        for s in &mut self.slots {
            if !s.decided && !devices.iter().any(|d| d.device == s.lease.device) {
                s.decided = true;
                let why = format!(
                    "GPU {} is not in telemetry: no lease can be granted on it",
                    s.lease.device
                );
                out.push(decide(s, LeaseAction::Deny, why));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn policy() -> LeasePolicy {
        LeasePolicy {
            reserve_bytes: 2 * GIB,
            return_after_ms: 30_000,
        }
    }

    fn dev(proof: bool, c2: bool, others: u64) -> DevicePressure {
        DevicePressure {
            device: 0,
            proof,
            c2: c2.then(|| "lotus-worker (pid 7) uses 11 GiB".into()),
            post_window: None,
            unhealthy: None,
            memory_total_bytes: 24 * GIB,
            memory_others_bytes: others,
        }
    }

    fn model(bytes: u64) -> Vec<ModelLease> {
        vec![ModelLease {
            device: 0,
            model_id: "m".into(),
            bytes,
        }]
    }

    #[test]
    fn first_grant_is_immediate_a_return_waits_for_calm() {
        let mut b = LeaseBook::default();
        let m = model(3 * GIB);
        let d = b.tick(&policy(), 0, 0, &m, &[dev(false, false, GIB)]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].action, LeaseAction::Grant);
        assert!(d[0].reason.starts_with("headroom"), "{}", d[0].reason);
        let d = b.tick(&policy(), 1_000, 0, &m, &[dev(false, true, GIB)]);
        assert_eq!(d[0].action, LeaseAction::Revoke);
        assert!(d[0].reason.starts_with("C2 starting"), "{}", d[0].reason);
        assert!(b.granted().is_empty());
        assert!(b
            .tick(&policy(), 2_000, 0, &m, &[dev(false, false, GIB)])
            .is_empty());
        assert!(b
            .tick(&policy(), 31_000, 0, &m, &[dev(false, false, GIB)])
            .is_empty());
        let d = b.tick(&policy(), 32_000, 0, &m, &[dev(false, false, GIB)]);
        assert_eq!(d[0].action, LeaseAction::Grant);
        assert!(
            d[0].reason.starts_with("no pressure for 30 s"),
            "{}",
            d[0].reason
        );
        assert_eq!(b.granted(), m);
    }

    #[test]
    fn a_model_that_does_not_fit_is_never_granted_and_a_dropped_request_is_forgotten() {
        let mut b = LeaseBook::default();
        // 24 GiB - 20 used by others = 4 free; 3 + 2 reserve does not fit.
        let m = model(3 * GIB);
        let d = b.tick(&policy(), 0, 0, &m, &[dev(false, false, 20 * GIB)]);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].action, LeaseAction::Deny);
        assert!(d[0].reason.starts_with("no headroom"), "{}", d[0].reason);
        // Said once, not every tick.
        assert!(b
            .tick(&policy(), 0, 0, &m, &[dev(false, false, 20 * GIB)])
            .is_empty());
        let d = b.tick(&policy(), 0, 0, &m, &[dev(false, false, GIB)]);
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].action,
            LeaseAction::Grant,
            "room again: granted at once"
        );
        assert!(b
            .tick(&policy(), 0, 0, &[], &[dev(false, false, GIB)])
            .is_empty());
        assert!(b.granted().is_empty());
    }

    #[test]
    fn a_request_under_pressure_or_on_an_unseen_gpu_is_denied_once_with_the_reason() {
        let mut b = LeaseBook::default();
        let m = model(GIB);
        let d = b.tick(&policy(), 0, 0, &m, &[dev(false, true, GIB)]);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].action, LeaseAction::Deny);
        assert!(d[0].reason.starts_with("C2 starting"), "{}", d[0].reason);
        assert!(b
            .tick(&policy(), 1, 0, &m, &[dev(false, true, GIB)])
            .is_empty());
        let elsewhere = vec![ModelLease {
            device: 3,
            model_id: "far".into(),
            bytes: GIB,
        }];
        let d = b.tick(&policy(), 2, 0, &elsewhere, &[dev(false, false, GIB)]);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].action, LeaseAction::Deny);
        assert!(
            d[0].reason.contains("GPU 3 is not in telemetry"),
            "{}",
            d[0].reason
        );
        assert!(b.granted().is_empty());
    }

    #[test]
    fn memory_pressure_revokes_the_largest_model_first() {
        let mut b = LeaseBook::default();
        let both = vec![
            ModelLease {
                device: 0,
                model_id: "small".into(),
                bytes: GIB,
            },
            ModelLease {
                device: 0,
                model_id: "big".into(),
                bytes: 4 * GIB,
            },
        ];
        assert_eq!(
            b.tick(&policy(), 0, 0, &both, &[dev(false, false, GIB)])
                .len(),
            2
        );
        // Others now use 18 GiB: 24 - 18 - 5 = 1 free < 2 reserve; dropping the 4 GiB model
        // leaves 5 free, enough.
        let d = b.tick(&policy(), 1, 0, &both, &[dev(false, false, 18 * GIB)]);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].model_id, "big");
        assert!(
            d[0].reason.starts_with("memory pressure"),
            "{}",
            d[0].reason
        );
        assert_eq!(b.granted().len(), 1);
    }

    /// The scheduler itself, fed by the simulated GPU (whose memory knows nothing of our
    /// models: the book counts them), as `comine run` drives it.
    mod scheduler {
        use super::*;
        use crate::gpu::sim::{JobLoad, SimGpu};
        use crate::sched::{
            Config, ControllerStatus, Decision, Demand, ProofSignal, Scheduler, TickInput,
        };

        struct Rig {
            sim: SimGpu,
            sched: Scheduler,
            now: u64,
            proof: bool,
            post: crate::post::PostWindow,
        }

        impl Rig {
            fn new(preset: &str, config: Config) -> Rig {
                Rig {
                    sim: SimGpu::from_presets(&[preset], 3).unwrap(),
                    sched: Scheduler::new(config),
                    now: 0,
                    proof: false,
                    post: Default::default(),
                }
            }
            fn tick(&mut self, ms: u64) -> Decision {
                self.now += ms;
                self.sched.tick(&TickInput {
                    now_ms: self.now,
                    snapshot: self.sim.poll(),
                    demand: Demand::default(),
                    load: Vec::new(),
                    proof: ProofSignal {
                        running: self.proof,
                        devices: None,
                        source: "test".into(),
                    },
                    controller: ControllerStatus::default(),
                    post: self.post.clone(),
                    safe_profile: None,
                    models: model(3 * GIB),
                })
            }
        }

        fn config() -> Config {
            Config {
                model_return_after_ms: 30_000,
                ..Config::default()
            }
        }

        #[test]
        fn a_scripted_c2_start_and_a_post_window_each_take_the_lease_back_and_it_returns() {
            let mut r = Rig::new("rtx3090", config());
            let d = r.tick(500);
            assert_eq!(d.leases.len(), 1, "granted at start: {:?}", d.leases);
            assert_eq!(d.leases[0].action, LeaseAction::Grant);
            assert_eq!(d.capacity.leases, model(3 * GIB));
            for pressure in ["c2", "post"] {
                // The pressure starts: the lease is revoked at once, with the reason.
                let c2 = (pressure == "c2").then(|| {
                    r.sim
                        .start_job(0, JobLoad::Sealing { sm_pct: 90.0 })
                        .unwrap()
                });
                r.proof = pressure == "post";
                let d = r.tick(500);
                assert_eq!(d.leases.len(), 1, "{pressure}: {:?}", d.leases);
                assert_eq!(d.leases[0].action, LeaseAction::Revoke);
                let want = if pressure == "c2" {
                    "C2 starting: sealing process lotus-worker"
                } else {
                    "PoSt window open"
                };
                assert!(
                    d.leases[0].reason.starts_with(want),
                    "{}",
                    d.leases[0].reason
                );
                assert!(d.capacity.leases.is_empty());
                // While it lasts, nothing comes back, however long.
                for _ in 0..100 {
                    assert!(r.tick(500).leases.is_empty());
                }
                // It ends: the lease returns only after 30 s of calm.
                drop(c2);
                r.proof = false;
                let mut waited = 0;
                let back = loop {
                    let d = r.tick(500);
                    if !d.leases.is_empty() {
                        break d;
                    }
                    waited += 500;
                    assert!(waited < 60_000, "the lease never returned");
                };
                assert!(waited >= 29_500, "returned after {waited} ms of calm");
                assert_eq!(back.leases[0].action, LeaseAction::Grant);
                assert!(
                    back.leases[0].reason.starts_with("no pressure for 30 s"),
                    "{}",
                    back.leases[0].reason
                );
                assert_eq!(back.capacity.leases, model(3 * GIB));
            }
        }

        #[test]
        fn the_chains_schedule_stepping_down_for_a_window_takes_the_lease_back() {
            let mut r = Rig::new("rtx3090", config());
            assert_eq!(r.tick(500).leases[0].action, LeaseAction::Grant);
            r.post = crate::post::PostWindow {
                phase: crate::post::Phase::StepDown,
                reason: "WindowPoSt deadline 12 opens in 4m0s".into(),
                ..Default::default()
            };
            let d = r.tick(500);
            assert_eq!(d.leases.len(), 1, "{:?}", d.leases);
            assert_eq!(d.leases[0].action, LeaseAction::Revoke);
            assert_eq!(
                d.leases[0].reason,
                "PoSt window: WindowPoSt deadline 12 opens in 4m0s"
            );
            // Draining only (the window is further away) leaves models alone.
            r.post.phase = crate::post::Phase::Drain;
            let mut back = false;
            for _ in 0..70 {
                back |= r
                    .tick(500)
                    .leases
                    .iter()
                    .any(|l| l.action == LeaseAction::Grant);
            }
            assert!(back, "the lease returns once the step-down is over");
        }

        #[test]
        fn memory_pressure_takes_it_back_and_a_blip_of_calm_does_not_return_it() {
            // rtx3060: 12 GiB. The model (3 GiB, counted by the book) and a sealing task
            // (8 GiB, not a C2 here: thresholds out of reach) leave less than 2 GiB free.
            let mut r = Rig::new(
                "rtx3060",
                Config {
                    c2_active_sm_pct: 101.0,
                    c2_active_memory_bytes: u64::MAX,
                    ..config()
                },
            );
            assert_eq!(r.tick(500).leases[0].action, LeaseAction::Grant);
            let sealing = r
                .sim
                .start_job(0, JobLoad::Sealing { sm_pct: 20.0 })
                .unwrap();
            let d = r.tick(500);
            assert_eq!(d.leases[0].action, LeaseAction::Revoke);
            assert!(
                d.leases[0].reason.starts_with("memory pressure"),
                "{}",
                d.leases[0].reason
            );
            // Sealing alone leaves 3.7 GiB: the model plus the reserve do not fit.
            for _ in 0..100 {
                assert!(r.tick(500).leases.is_empty());
            }
            drop(sealing);
            for _ in 0..20 {
                assert!(r.tick(500).leases.is_empty());
            }
            // A PoSt blip restarts the calm period.
            r.proof = true;
            assert!(r.tick(500).leases.is_empty());
            r.proof = false;
            for _ in 0..59 {
                assert!(
                    r.tick(500).leases.is_empty(),
                    "30 s from the blip, not before"
                );
            }
            // Back within one more tick (the core sees the proof's end one tick late).
            let d = r.tick(500);
            let d = if d.leases.is_empty() { r.tick(500) } else { d };
            assert_eq!(d.leases[0].action, LeaseAction::Grant, "{:?}", d.leases);
        }
    }
}
