//! Admission: places a transcoding job on the least-loaded healthy device, counting pixels/s.
//!
//! Like go-livepeer, the device with the lowest sum of w × h × fps wins, but only among devices
//! the last decision lets take work, within their pixel budget and NVENC session limit.
//! A [`Placement`] names the device and holds a [`Permit`]; dropping the permit gives the
//! capacity back. These are the crate's one set of admission types: the daemon's admission
//! boundary (`daemon::admission`) hands them on unchanged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{DeviceCapacity, DeviceLoad};
use crate::gpu::Source;

/// Priority class of a transcoding job (the ledger records it with each job).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobClass {
    /// Must beat its deadline (Livepeer segments, HTTP `class=live`).
    Live,
    /// Goes last, after sealing.
    #[default]
    Batch,
    /// AI jobs (the Livepeer AI worker, `/v1/ai/upscale`). Their model's memory is a VRAM
    /// lease sealing and proofs take back; what they encode shares the batch budget, and
    /// their load never counts as live demand (it must not pause sealing).
    Ai,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The request itself is wrong (pixels/s not positive and finite).
    InvalidRequest,
    /// No decision yet, or no devices at all.
    NoDevices,
    /// Every device is unhealthy.
    AllUnhealthy,
    /// Healthy devices are holding (heat, power, memory, encoder, proof...).
    Holding,
    /// Not enough pixels/s left.
    OverCapacity,
    /// NVENC session limits reached.
    SessionLimit,
}

/// A refusal, with what to do about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("job rejected ({reason:?}): {message}; retry after {retry_after:?}")]
pub struct Rejected {
    pub reason: RejectReason,
    pub message: String,
    pub retry_after: Duration,
}

struct Job {
    device: u32,
    class: JobClass,
    pps: f64,
    sessions: u32,
}

#[derive(Default)]
struct Inner {
    devices: Vec<DeviceCapacity>,
    jobs: HashMap<u64, Job>,
    next_id: u64,
    retry_after: Duration,
}

/// Shared admission state; clones share it.
#[derive(Clone)]
pub struct Admitter {
    inner: Arc<Mutex<Inner>>,
}

/// Capacity held by an admitted job; released on drop.
pub struct Permit(Held);

enum Held {
    /// A job counted by an [`Admitter`].
    Job { id: u64, inner: Arc<Mutex<Inner>> },
    /// Any other admission's guard (e.g. a semaphore permit), released by its own drop.
    Guard(#[allow(dead_code)] Box<dyn Send + Sync>),
}

impl Permit {
    /// A permit that holds `guard` until dropped, for admissions other than [`Admitter`].
    pub fn from_guard(guard: impl Send + Sync + 'static) -> Permit {
        Permit(Held::Guard(Box::new(guard)))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Held::Job { id, inner } = &self.0 {
            lock(inner).jobs.remove(id);
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Held::Job { id, .. } => write!(f, "Permit({id})"),
            Held::Guard(_) => f.write_str("Permit(guard)"),
        }
    }
}

/// A placed job: run it on `device` and keep `permit` alive while it runs.
#[derive(Debug)]
pub struct Placement {
    pub device: u32,
    pub uuid: String,
    pub class: JobClass,
    pub pixels_per_sec: f64,
    pub permit: Permit,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for Admitter {
    fn default() -> Self {
        Self::new(Duration::from_secs(2))
    }
}

impl Admitter {
    pub fn new(retry_after: Duration) -> Self {
        Admitter {
            inner: Arc::new(Mutex::new(Inner {
                retry_after,
                ..Inner::default()
            })),
        }
    }

    /// Installs the per-device limits of the latest decision.
    pub fn update(&self, devices: &[DeviceCapacity]) {
        lock(&self.inner).devices = devices.to_vec();
    }

    /// What is admitted per device (known devices, plus any with jobs).
    pub fn loads(&self) -> Vec<DeviceLoad> {
        let g = lock(&self.inner);
        let mut out: Vec<DeviceLoad> = g
            .devices
            .iter()
            .map(|d| DeviceLoad {
                index: d.index,
                ..DeviceLoad::default()
            })
            .collect();
        for j in g.jobs.values() {
            let l = match out.iter_mut().find(|l| l.index == j.device) {
                Some(l) => l,
                None => {
                    out.push(DeviceLoad {
                        index: j.device,
                        ..DeviceLoad::default()
                    });
                    out.last_mut().expect("just pushed")
                }
            };
            match j.class {
                JobClass::Live => l.live_pps += j.pps,
                JobClass::Batch | JobClass::Ai => l.batch_pps += j.pps,
            }
            l.sessions += j.sessions;
        }
        out
    }

    /// The last resort when nothing of ours runs anywhere, so a refusal would wait forever:
    /// - a job larger than every admitting device's whole budget (1080p ladders on a small
    ///   box) runs alone on the device with the largest budget, counted at that budget;
    /// - on a CPU-only host the "encoder" is the CPU, whose load from sealing or anything
    ///   else keeps it holding; one job at a time still runs there, or the daemon would
    ///   never work on a busy host. GPUs that hold (heat, power, memory, proofs, sessions)
    ///   are respected.
    fn alone(
        g: &Inner,
        class: JobClass,
        pixels_per_sec: f64,
        why: RejectReason,
    ) -> Option<(&DeviceCapacity, f64)> {
        if !g.jobs.is_empty() {
            return None;
        }
        let budget = |d: &DeviceCapacity| match class {
            JobClass::Live => d.budget_pps,
            JobClass::Batch | JobClass::Ai => d.batch_budget_pps,
        };
        let largest = |host_only: bool| {
            g.devices
                .iter()
                .filter(|d| d.healthy && budget(d) > 0.0)
                .filter(|d| {
                    if host_only {
                        d.source == Source::Host
                    } else {
                        d.admit
                    }
                })
                .max_by(|a, b| budget(a).total_cmp(&budget(b)))
        };
        if why == RejectReason::OverCapacity {
            if let Some(d) = largest(false) {
                return Some((d, pixels_per_sec.min(budget(d))));
            }
        }
        if matches!(why, RejectReason::Holding | RejectReason::OverCapacity) {
            if let Some(d) = largest(true) {
                return Some((d, pixels_per_sec.min(budget(d))));
            }
        }
        None
    }

    /// Admits a job using one NVENC session.
    pub fn admit(&self, class: JobClass, pixels_per_sec: f64) -> Result<Placement, Rejected> {
        self.admit_sessions(class, pixels_per_sec, 1)
    }

    /// Admits a job that opens `sessions` NVENC sessions (one per rendition).
    pub fn admit_sessions(
        &self,
        class: JobClass,
        pixels_per_sec: f64,
        sessions: u32,
    ) -> Result<Placement, Rejected> {
        let mut g = lock(&self.inner);
        let reject = |reason, message: String, retry_after| Rejected {
            reason,
            message,
            retry_after,
        };
        if !pixels_per_sec.is_finite() || pixels_per_sec <= 0.0 {
            return Err(reject(
                RejectReason::InvalidRequest,
                format!("pixels/s must be positive, got {pixels_per_sec}"),
                Duration::ZERO,
            ));
        }
        let retry = g.retry_after;
        if g.devices.is_empty() {
            return Err(reject(
                RejectReason::NoDevices,
                "no devices known yet".into(),
                retry,
            ));
        }
        if g.devices.iter().all(|d| !d.healthy) {
            return Err(reject(
                RejectReason::AllUnhealthy,
                "every device is unhealthy".into(),
                retry,
            ));
        }
        let mut admitted: HashMap<u32, (f64, u32)> = HashMap::new();
        for j in g.jobs.values() {
            let e = admitted.entry(j.device).or_default();
            e.0 += j.pps;
            e.1 += j.sessions;
        }
        // Key: (proof running or stepped down for one, pixel load). A GPU at its proof floor
        // is the last resort.
        let mut best: Option<((bool, f64), &DeviceCapacity)> = None;
        let mut why = RejectReason::Holding;
        let mut notes = Vec::new();
        for d in g.devices.iter().filter(|d| d.healthy) {
            if !d.admit {
                notes.push(format!("{}: {}", d.name(), d.reasons.join("; ")));
                continue;
            }
            let (load, ours) = admitted.get(&d.index).copied().unwrap_or_default();
            // NVML's count includes our sessions from the last poll; take the larger view.
            let used = ours.max(d.sessions_used);
            if let Some(limit) = d.session_limit {
                if used + sessions > limit {
                    why = RejectReason::SessionLimit;
                    notes.push(format!("{}: sessions {used}/{limit}", d.name()));
                    continue;
                }
            }
            let cap = match class {
                JobClass::Live => d.budget_pps,
                JobClass::Batch | JobClass::Ai => d.batch_budget_pps,
            };
            if load + pixels_per_sec > cap {
                if why != RejectReason::SessionLimit {
                    why = RejectReason::OverCapacity;
                }
                notes.push(format!(
                    "{}: {:.0} of {:.0} Mpx/s used",
                    d.name(),
                    load / 1e6,
                    cap / 1e6
                ));
                continue;
            }
            let key = (
                d.proof_running || d.post_phase == crate::post::Phase::StepDown,
                load,
            );
            if best.is_none_or(|(k, _)| key < k) {
                best = Some((key, d));
            }
        }
        let (d, pixels_per_sec) = match best {
            Some((_, d)) => (d, pixels_per_sec),
            None => match Self::alone(&g, class, pixels_per_sec, why) {
                Some(placed) => placed,
                None => return Err(reject(why, notes.join(", "), retry)),
            },
        };
        let (device, uuid) = (d.index, d.uuid.clone());
        let id = g.next_id;
        g.next_id += 1;
        g.jobs.insert(
            id,
            Job {
                device,
                class,
                pps: pixels_per_sec,
                sessions,
            },
        );
        Ok(Placement {
            device,
            uuid,
            class,
            pixels_per_sec,
            permit: Permit(Held::Job {
                id,
                inner: self.inner.clone(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(source: Source, admit: bool, budget: f64) -> DeviceCapacity {
        DeviceCapacity {
            index: 0,
            uuid: "d0".into(),
            source,
            healthy: true,
            admit,
            rated_pps: budget,
            budget_pps: budget,
            batch_budget_pps: budget * 0.75,
            admitted_pps: 0.0,
            headroom_pps: budget,
            session_limit: None,
            sessions_used: 0,
            proof_running: false,
            post_phase: crate::post::Phase::None,
            sealing_active: false,
            livepeer_sessions: 0,
            shed_pps: 0.0,
            reasons: if admit {
                Vec::new()
            } else {
                vec!["encoder 97% at threshold: holding".into()]
            },
        }
    }

    #[test]
    fn a_busy_cpu_host_still_runs_one_job_at_a_time() {
        let a = Admitter::default();
        a.update(&[device(Source::Host, false, 40e6)]);
        let first = a.admit(JobClass::Live, 10e6).expect("one job runs alone");
        let second = a.admit(JobClass::Live, 10e6).unwrap_err();
        assert_eq!(second.reason, RejectReason::Holding);
        drop(first);
        assert!(a.admit(JobClass::Live, 10e6).is_ok());
    }

    #[test]
    fn a_job_larger_than_an_idle_device_runs_alone_counted_at_its_budget() {
        let a = Admitter::default();
        a.update(&[device(Source::Nvml, true, 40e6)]);
        let big = a.admit(JobClass::Live, 100e6).expect("runs alone");
        assert_eq!(big.pixels_per_sec, 40e6);
        assert_eq!(a.loads()[0].live_pps, 40e6);
        assert_eq!(
            a.admit(JobClass::Live, 1e6).unwrap_err().reason,
            RejectReason::OverCapacity
        );
    }

    #[test]
    fn a_holding_gpu_is_respected_even_when_idle() {
        let a = Admitter::default();
        a.update(&[device(Source::Nvml, false, 1e9)]);
        assert_eq!(
            a.admit(JobClass::Live, 1e6).unwrap_err().reason,
            RejectReason::Holding
        );
        let sim = Admitter::default();
        sim.update(&[device(Source::Simulated, false, 1e9)]);
        assert!(sim.admit(JobClass::Live, 1e6).is_err());
    }
}
