//! VRAM leases: a loaded model holds device memory that sealing (PC2, C2) and proofs
//! (WindowPoSt, WinningPoSt) also need. This is the decision side, pure and clocked by
//! its caller: [`Leases::tick`] says which leases to take back and which to return.
//!
//! A lease is taken back at once when a PoSt window is open, a C2 is starting, or free
//! device memory falls below the reserve. The caller then runs the protocol (see
//! `daemon::ai::apply`): re-register with the model removed, drain jobs in flight within
//! [`Leases::drain_bound`] and cancel the rest ([`Leases::cancel_jobs`]; they answer with
//! an error), unload. A lease returns only after the pressure has been gone for
//! `return_after` and the model fits above the reserve (hysteresis: a flapping signal
//! does not load and unload a model every tick). Every decision is kept with its reason.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// When leases are taken back and returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeasePolicy {
    /// Free device memory to keep for sealing and proofs, bytes.
    pub reserve_bytes: u64,
    /// Pressure must be gone this long before a lease returns.
    pub return_after: Duration,
    /// Jobs in flight get this long to finish when a lease is taken back.
    pub drain_bound: Duration,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        LeasePolicy {
            reserve_bytes: 2 << 30,
            return_after: Duration::from_secs(60),
            drain_bound: Duration::from_secs(10),
        }
    }
}

/// What one tick decides from (one device).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseInput {
    pub now_ms: u64,
    /// A WindowPoSt/WinningPoSt is due or running on the device.
    pub post_window: bool,
    /// A C2 (SNARK) is starting or running on the device.
    pub c2_running: bool,
    /// Device memory from telemetry (NVML, or the `sim` model, which counts loaded models);
    /// 0 when unknown.
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
}

/// One decision: a lease taken back (`release`) or returned, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaseDecision {
    pub at_ms: u64,
    pub model_id: String,
    pub release: bool,
    pub reason: String,
}

struct Lease {
    model_id: String,
    bytes: u64,
    held: bool,
    /// Since when the pressure has been gone (while released).
    calm_since_ms: Option<u64>,
    in_flight: Arc<AtomicUsize>,
    cancel: CancellationToken,
}

/// The leases of one device.
pub struct Leases {
    leases: Vec<Lease>,
    policy: LeasePolicy,
    decisions: VecDeque<LeaseDecision>,
}

/// Counts a job on a model while it lives.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

const KEEP_DECISIONS: usize = 64;

impl Leases {
    /// `models`: (model id, VRAM bytes) of the warm models; all start released.
    pub fn new(models: Vec<(String, u64)>, policy: LeasePolicy) -> Leases {
        Leases {
            leases: models
                .into_iter()
                .map(|(model_id, bytes)| Lease {
                    model_id,
                    bytes,
                    held: false,
                    calm_since_ms: None,
                    in_flight: Arc::default(),
                    cancel: CancellationToken::new(),
                })
                .collect(),
            policy,
            decisions: VecDeque::new(),
        }
    }

    /// Records that a model was loaded outside `tick` (at start).
    pub fn mark_held(&mut self, model_id: &str, now_ms: u64) {
        if let Some(l) = self.leases.iter_mut().find(|l| l.model_id == model_id) {
            if !l.held {
                l.held = true;
                self.decisions.push_back(LeaseDecision {
                    at_ms: now_ms,
                    model_id: model_id.into(),
                    release: false,
                    reason: "loaded at start".into(),
                });
            }
        }
    }

    pub fn is_held(&self, model_id: &str) -> bool {
        self.leases.iter().any(|l| l.model_id == model_id && l.held)
    }

    pub fn drain_bound(&self) -> Duration {
        self.policy.drain_bound
    }

    /// Decides which leases to take back or return now.
    pub fn tick(&mut self, input: &LeaseInput) -> Vec<LeaseDecision> {
        let free = input
            .memory_total_bytes
            .saturating_sub(input.memory_used_bytes);
        let mib = |b: u64| b >> 20;
        let pressure = if input.post_window {
            Some("PoSt window open: proofs need the GPU".to_string())
        } else if input.c2_running {
            Some("C2 starting: the SNARK needs the GPU's memory".to_string())
        } else if input.memory_total_bytes > 0 && free < self.policy.reserve_bytes {
            Some(format!(
                "memory pressure: {} MiB free, below the {} MiB reserve",
                mib(free),
                mib(self.policy.reserve_bytes)
            ))
        } else {
            None
        };
        let mut out = Vec::new();
        let mut free_after = free;
        for l in &mut self.leases {
            match (&pressure, l.held) {
                (Some(reason), true) => {
                    l.held = false;
                    l.calm_since_ms = None;
                    free_after += l.bytes;
                    out.push(LeaseDecision {
                        at_ms: input.now_ms,
                        model_id: l.model_id.clone(),
                        release: true,
                        reason: reason.clone(),
                    });
                }
                (Some(_), false) => l.calm_since_ms = None,
                (None, true) => {}
                (None, false) => {
                    // On a device without memory readings, only the signals count.
                    let fits = input.memory_total_bytes == 0
                        || free_after >= l.bytes + self.policy.reserve_bytes;
                    if !fits {
                        l.calm_since_ms = None;
                        continue;
                    }
                    let since = *l.calm_since_ms.get_or_insert(input.now_ms);
                    let calm = input.now_ms.saturating_sub(since);
                    if calm >= self.policy.return_after.as_millis() as u64 {
                        l.held = true;
                        l.calm_since_ms = None;
                        free_after = free_after.saturating_sub(l.bytes);
                        out.push(LeaseDecision {
                            at_ms: input.now_ms,
                            model_id: l.model_id.clone(),
                            release: false,
                            reason: format!(
                                "no pressure for {} s and {} MiB free: model fits above the reserve",
                                calm / 1000,
                                mib(free_after + l.bytes)
                            ),
                        });
                    }
                }
            }
        }
        for d in &out {
            self.decisions.push_back(d.clone());
        }
        while self.decisions.len() > KEEP_DECISIONS {
            self.decisions.pop_front();
        }
        out
    }

    /// The token a job on `model_id` is cancelled with when its lease is taken back.
    pub fn job_token(&self, model_id: &str) -> Option<CancellationToken> {
        self.leases
            .iter()
            .find(|l| l.model_id == model_id)
            .map(|l| l.cancel.child_token())
    }

    /// Counts a job on `model_id` until the guard drops.
    pub fn enter(&self, model_id: &str) -> Option<InFlight> {
        let l = self.leases.iter().find(|l| l.model_id == model_id)?;
        l.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(InFlight(l.in_flight.clone()))
    }

    pub fn in_flight(&self, model_id: &str) -> usize {
        self.leases
            .iter()
            .find(|l| l.model_id == model_id)
            .map(|l| l.in_flight.load(Ordering::SeqCst))
            .unwrap_or(0)
    }

    /// Cancels the jobs still running on `model_id` (they answer with an error); later
    /// jobs get a fresh token.
    pub fn cancel_jobs(&mut self, model_id: &str) {
        if let Some(l) = self.leases.iter_mut().find(|l| l.model_id == model_id) {
            l.cancel.cancel();
            l.cancel = CancellationToken::new();
        }
    }

    pub fn decisions(&self) -> Vec<LeaseDecision> {
        self.decisions.iter().cloned().collect()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "models": self.leases.iter().map(|l| serde_json::json!({
                "model_id": l.model_id,
                "vram_bytes": l.bytes,
                "held": l.held,
                "in_flight": l.in_flight.load(Ordering::SeqCst),
            })).collect::<Vec<_>>(),
            "decisions": self.decisions(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::sim::{JobLoad, SimGpu};

    const GIB: u64 = 1 << 30;

    fn policy() -> LeasePolicy {
        LeasePolicy {
            reserve_bytes: 2 * GIB,
            return_after: Duration::from_secs(30),
            drain_bound: Duration::from_secs(5),
        }
    }

    /// A tick's input from the simulated device, whose memory counts the loaded model.
    fn read(sim: &SimGpu, now_ms: u64, post: bool, c2: bool) -> LeaseInput {
        let snap = sim.poll();
        let d = &snap.devices[0];
        LeaseInput {
            now_ms,
            post_window: post,
            c2_running: c2,
            memory_total_bytes: d.memory_total_bytes.unwrap_or(0),
            memory_used_bytes: d.memory_used_bytes.unwrap_or(0),
        }
    }

    #[test]
    fn post_window_and_c2_take_the_lease_back_and_it_returns_after_calm() {
        let sim = SimGpu::from_presets(&["rtx3090"], 1).unwrap();
        let mut leases = Leases::new(vec![("m".into(), 3 * GIB)], policy());
        let mut model = Some(
            sim.start_job(
                0,
                JobLoad::Model {
                    memory_bytes: 3 * GIB,
                },
            )
            .unwrap(),
        );
        leases.mark_held("m", 0);

        for (post, c2, why) in [(true, false, "PoSt window"), (false, true, "C2 starting")] {
            let d = leases.tick(&read(&sim, 1_000, post, c2));
            assert_eq!(d.len(), 1, "{why}");
            assert!(d[0].release && d[0].reason.starts_with(why), "{:?}", d[0]);
            drop(model.take()); // unloaded: the simulated device frees its memory
            assert!(!leases.is_held("m"));
            // Pressure still there: nothing returns, however long.
            assert!(leases.tick(&read(&sim, 100_000, post, c2)).is_empty());
            // Calm, but not for long enough.
            assert!(leases.tick(&read(&sim, 101_000, false, false)).is_empty());
            assert!(leases.tick(&read(&sim, 120_000, false, false)).is_empty());
            let back = leases.tick(&read(&sim, 131_000, false, false));
            assert_eq!(back.len(), 1);
            assert!(!back[0].release, "returned after 30 s of calm");
            let _ = model.replace(
                sim.start_job(
                    0,
                    JobLoad::Model {
                        memory_bytes: 3 * GIB,
                    },
                )
                .unwrap(),
            );
        }
        drop(model);
        assert_eq!(leases.decisions().len(), 5, "start + 2 x (release, return)");
    }

    #[test]
    fn memory_pressure_takes_it_back_and_a_blip_of_calm_does_not_return_it() {
        // rtx3060: 12 GiB. Model 3 GiB + two sealing tasks (8 GiB each in the sim model)
        // leave less than the 2 GiB reserve.
        let sim = SimGpu::from_presets(&["rtx3060"], 2).unwrap();
        let mut leases = Leases::new(vec![("m".into(), 3 * GIB)], policy());
        let model = sim
            .start_job(
                0,
                JobLoad::Model {
                    memory_bytes: 3 * GIB,
                },
            )
            .unwrap();
        leases.mark_held("m", 0);
        assert!(leases.tick(&read(&sim, 500, false, false)).is_empty());
        let sealing = sim.start_job(0, JobLoad::Sealing { sm_pct: 80.0 }).unwrap();
        let d = leases.tick(&read(&sim, 1_000, false, false));
        assert!(
            d[0].release && d[0].reason.contains("memory pressure"),
            "{d:?}"
        );
        drop(model);
        // The sealing task alone leaves room (12 - 0.3 - 8 < 3 + 2 reserve? no: 3.7 GiB free).
        // The model (3 GiB) plus the 2 GiB reserve do not fit: the lease stays released.
        assert!(leases.tick(&read(&sim, 100_000, false, false)).is_empty());
        drop(sealing);
        assert!(leases.tick(&read(&sim, 110_000, false, false)).is_empty());
        // A PoSt blip restarts the calm period.
        assert!(leases.tick(&read(&sim, 120_000, true, false)).is_empty());
        assert!(leases.tick(&read(&sim, 145_000, false, false)).is_empty());
        let back = leases.tick(&read(&sim, 176_000, false, false));
        assert_eq!(back.len(), 1);
        assert!(!back[0].release);
    }

    #[test]
    fn cancel_jobs_fires_running_tokens_and_fresh_jobs_get_a_new_one() {
        let mut leases = Leases::new(vec![("m".into(), GIB)], policy());
        let t = leases.job_token("m").unwrap();
        let g = leases.enter("m").unwrap();
        assert_eq!(leases.in_flight("m"), 1);
        leases.cancel_jobs("m");
        assert!(t.is_cancelled());
        assert!(!leases.job_token("m").unwrap().is_cancelled());
        drop(g);
        assert_eq!(leases.in_flight("m"), 0);
    }
}
