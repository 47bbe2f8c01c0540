//! Simulated GPUs for tests, benchmarks and dry runs.
//!
//! A device model with presets for common miner GPUs: NVENC engines, session cap, encode
//! throughput in pixels/s, idle/peak power, memory. Load comes only from the jobs registered
//! with [`SimGpu::start_job`] (a guard that ends the load on drop). Readings are deterministic
//! for a seed and a sequence of calls, and every snapshot says `"source": "simulated"`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{DeviceSnapshot, Error, ProcessUse, Role, Snapshot, Source};

/// A simulated device model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimDevice {
    pub preset: String,
    pub name: String,
    pub nvenc_engines: u32,
    /// Concurrent NVENC session cap (GeForce driver cap); `None` on pro cards.
    pub session_cap: Option<u32>,
    /// H.264 encode throughput of all engines together, pixels/s (approximate, P1-P3 presets).
    pub encode_pixels_per_sec: f64,
    pub idle_watts: f64,
    pub peak_watts: f64,
    pub memory_bytes: u64,
}

const GIB: u64 = 1 << 30;

impl SimDevice {
    pub const PRESETS: &'static [&'static str] =
        &["rtx3060", "rtx3090", "rtx4090", "a4000", "a5000"];

    /// A preset by name (`rtx3060`, `rtx3090`, `rtx4090`, `a4000`, `a5000`).
    pub fn preset(name: &str) -> Result<SimDevice, Error> {
        let (full, engines, cap, gpx, idle, peak, mem) = match name {
            "rtx3060" => ("NVIDIA GeForce RTX 3060", 1, Some(5), 0.9, 13.0, 170.0, 12),
            "rtx3090" => ("NVIDIA GeForce RTX 3090", 1, Some(5), 1.1, 30.0, 350.0, 24),
            "rtx4090" => ("NVIDIA GeForce RTX 4090", 2, Some(8), 2.6, 25.0, 450.0, 24),
            "a4000" => ("NVIDIA RTX A4000", 1, None, 1.0, 12.0, 140.0, 16),
            "a5000" => ("NVIDIA RTX A5000", 1, None, 1.1, 20.0, 230.0, 24),
            other => return Err(Error::UnknownPreset(other.into())),
        };
        Ok(SimDevice {
            preset: name.into(),
            name: full.into(),
            nvenc_engines: engines,
            session_cap: cap,
            encode_pixels_per_sec: gpx * 1e9,
            idle_watts: idle,
            peak_watts: peak,
            memory_bytes: mem * GIB,
        })
    }
}

/// What a simulated job puts on a device.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobLoad {
    /// An NVENC session encoding this many pixels per second.
    Transcode { pixels_per_sec: f64 },
    /// A sealing task (PC2, C2...) using this share of the SMs.
    Sealing { sm_pct: f64 },
    /// A WindowPoSt/WinningPoSt using this share of the SMs.
    Proof { sm_pct: f64 },
    /// A prover process (lotus-miner, lotus-worker) that keeps a CUDA context open while
    /// idle (lotus #7845): listed by NVML with this much memory and no SM use.
    ProverContext { memory_bytes: u64 },
    /// An AI model loaded by comine: its VRAM lease (device memory, no steady SM load).
    Model { memory_bytes: u64 },
}

/// Why a simulated job could not start.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SimError {
    #[error("simulated device {0} does not exist")]
    NoSuchDevice(u32),
    #[error("simulated device {0} is lost")]
    DeviceLost(u32),
    /// What real GeForce drivers report, unhelpfully, as "Cannot allocate memory".
    #[error("NVENC session cap ({cap}) reached on simulated device {device}")]
    SessionCap { device: u32, cap: u32 },
}

/// xorshift64*: tiny, seeded, deterministic noise.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_f64(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [-a, a].
    fn noise(&mut self, a: f64) -> f64 {
        (self.next_f64() * 2.0 - 1.0) * a
    }
}

struct DevState {
    model: SimDevice,
    temperature_c: f64,
    energy_j: f64,
    thermal_offset_c: f64,
    lost: bool,
}

struct State {
    devices: Vec<DevState>,
    jobs: BTreeMap<u64, (u32, JobLoad)>,
    next_id: u64,
    rng: Rng,
    step: Duration,
    time_ms: u64,
}

/// A set of simulated GPUs. Clones share the same devices.
#[derive(Clone)]
pub struct SimGpu {
    state: Arc<Mutex<State>>,
}

/// A running simulated job; its load ends when dropped.
pub struct SimJob {
    id: u64,
    device: u32,
    state: Arc<Mutex<State>>,
}

impl SimJob {
    pub fn device(&self) -> u32 {
        self.device
    }
}

impl Drop for SimJob {
    fn drop(&mut self) {
        lock(&self.state).jobs.remove(&self.id);
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic elsewhere must not take telemetry down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Temperature above which the simulated driver reports a thermal slowdown.
pub const SIM_SLOWDOWN_C: f64 = 83.0;

impl SimGpu {
    /// Devices in order (index 0..), noise seeded by `seed`, each poll advancing time by `step`.
    pub fn new(devices: Vec<SimDevice>, seed: u64, step: Duration) -> Self {
        let devices = devices
            .into_iter()
            .map(|model| DevState {
                model,
                temperature_c: 35.0,
                energy_j: 0.0,
                thermal_offset_c: 0.0,
                lost: false,
            })
            .collect();
        SimGpu {
            state: Arc::new(Mutex::new(State {
                devices,
                jobs: BTreeMap::new(),
                next_id: 1,
                rng: Rng::new(seed),
                step,
                time_ms: 0,
            })),
        }
    }

    /// Devices from preset names.
    pub fn from_presets(presets: &[&str], seed: u64) -> Result<Self, Error> {
        let devs = presets
            .iter()
            .map(|p| SimDevice::preset(p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(SimGpu::new(devs, seed, Duration::from_millis(500)))
    }

    pub fn models(&self) -> Vec<SimDevice> {
        lock(&self.state)
            .devices
            .iter()
            .map(|d| d.model.clone())
            .collect()
    }

    /// Puts `load` on `device` until the returned guard is dropped.
    pub fn start_job(&self, device: u32, load: JobLoad) -> Result<SimJob, SimError> {
        let mut st = lock(&self.state);
        let dev = st
            .devices
            .get(device as usize)
            .ok_or(SimError::NoSuchDevice(device))?;
        if dev.lost {
            return Err(SimError::DeviceLost(device));
        }
        if let (JobLoad::Transcode { .. }, Some(cap)) = (load, dev.model.session_cap) {
            let sessions = st
                .jobs
                .values()
                .filter(|(d, l)| *d == device && matches!(l, JobLoad::Transcode { .. }))
                .count() as u32;
            if sessions >= cap {
                return Err(SimError::SessionCap { device, cap });
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        st.jobs.insert(id, (device, load));
        Ok(SimJob {
            id,
            device,
            state: self.state.clone(),
        })
    }

    /// Raises the ambient temperature of one device (scripted thermal events).
    pub fn set_thermal_offset(&self, device: u32, celsius: f64) {
        if let Some(d) = lock(&self.state).devices.get_mut(device as usize) {
            d.thermal_offset_c = celsius;
        }
    }

    /// Makes a device fall off the bus (a simulated Xid 79), or brings it back.
    pub fn set_lost(&self, device: u32, lost: bool) {
        if let Some(d) = lock(&self.state).devices.get_mut(device as usize) {
            d.lost = lost;
        }
    }

    /// Advances simulated time by one step and reads every device.
    pub fn poll(&self) -> Snapshot {
        let mut st = lock(&self.state);
        let dt = st.step.as_secs_f64();
        st.time_ms += st.step.as_millis() as u64;
        let mut snap = Snapshot::empty(Source::Simulated);
        let jobs: Vec<(u64, u32, JobLoad)> =
            st.jobs.iter().map(|(id, (d, l))| (*id, *d, *l)).collect();
        let State { devices, rng, .. } = &mut *st;
        for (i, dev) in devices.iter_mut().enumerate() {
            let index = i as u32;
            let m = &dev.model;
            let mut d = DeviceSnapshot::new(
                Source::Simulated,
                index,
                format!("GPU-sim-{index:02}-{}", m.preset),
                format!("{} (simulated)", m.name),
            );
            d.driver = Some("simulated".into());
            d.session_cap = m.session_cap;
            d.encode_pixels_per_sec = Some(m.encode_pixels_per_sec);
            d.memory_total_bytes = Some(m.memory_bytes);
            d.power_limit_watts = Some(m.peak_watts);
            if dev.lost {
                d.healthy = false;
                d.error = Some("GPU has fallen off the bus (simulated Xid 79)".into());
                snap.devices.push(d);
                continue;
            }
            let throttled = dev.temperature_c >= SIM_SLOWDOWN_C;
            // A hot GPU clocks down: the same pixels take more of the encoder.
            let throughput = m.encode_pixels_per_sec * if throttled { 0.7 } else { 1.0 };
            let mut pps = 0.0;
            let mut sm = 0.0;
            let mut sessions = 0u32;
            let mut mem = 300u64 << 20;
            for &(id, _, load) in jobs.iter().filter(|(_, dv, _)| *dv == index) {
                let (role, name, sm_pct, enc_pct, mem_b) = match load {
                    JobLoad::Transcode { pixels_per_sec } => {
                        pps += pixels_per_sec;
                        sessions += 1;
                        let e = pixels_per_sec / throughput * 100.0;
                        (Role::Comine, "comine", e * 0.1, e, 250u64 << 20)
                    }
                    JobLoad::Sealing { sm_pct } => {
                        (Role::Sealing, "lotus-worker", sm_pct, 0.0, 8 * GIB)
                    }
                    JobLoad::Proof { sm_pct } => {
                        (Role::Proof, "lotus-worker-post", sm_pct, 0.0, 4 * GIB)
                    }
                    JobLoad::ProverContext { memory_bytes } => {
                        (Role::Proof, "lotus-miner", 0.0, 0.0, memory_bytes)
                    }
                    JobLoad::Model { memory_bytes } => {
                        (Role::Comine, "comine-ai", 0.0, 0.0, memory_bytes)
                    }
                };
                sm += sm_pct;
                mem += mem_b;
                d.processes.push(ProcessUse {
                    pid: 200_000 + id as u32,
                    name: name.into(),
                    role,
                    sm_pct: Some(sm_pct.clamp(0.0, 100.0).round() as u32),
                    enc_pct: Some(enc_pct.clamp(0.0, 100.0).round() as u32),
                    dec_pct: Some((enc_pct * 0.5).clamp(0.0, 100.0).round() as u32),
                    memory_bytes: Some(mem_b),
                });
            }
            let enc = if pps > 0.0 {
                (pps / throughput * 100.0 + rng.noise(1.0)).clamp(0.0, 100.0)
            } else {
                0.0
            };
            let sm_total =
                (sm + enc * 0.1 + if sm > 0.0 { rng.noise(1.0) } else { 0.0 }).clamp(0.0, 100.0);
            d.encoder_util_pct = Some(enc);
            d.decoder_util_pct = Some(enc * 0.5);
            d.gpu_util_pct = Some(sm_total);
            d.mem_util_pct = Some((sm_total * 0.6).min(100.0));
            d.nvenc_sessions = Some(sessions);
            d.nvenc_fps = Some((pps / (1920.0 * 1080.0)).round() as u32);
            d.nvenc_latency_us = Some(if sessions > 0 {
                (2000.0 * (1.0 + enc / 50.0)) as u32
            } else {
                0
            });
            d.encoder_capacity_pct = Some((100.0 - enc).round().max(0.0) as u32);
            d.memory_used_bytes = Some(mem.min(m.memory_bytes));
            let busy = (sm_total.max(enc * 0.4) / 100.0).min(1.0);
            let mut power = m.idle_watts + (m.peak_watts - m.idle_watts) * busy + rng.noise(0.5);
            if power >= m.peak_watts {
                power = m.peak_watts;
                d.throttle_reasons.push("sw_power_cap".into());
            }
            d.power_watts = Some(power.max(0.0));
            dev.energy_j += power.max(0.0) * dt;
            d.energy_joules = Some(dev.energy_j);
            // First-order thermal model: move halfway to the target every step.
            let target = 30.0 + power / m.peak_watts * 50.0 + dev.thermal_offset_c;
            dev.temperature_c += (target - dev.temperature_c) * 0.5;
            d.temperature_c = Some((dev.temperature_c * 10.0).round() / 10.0);
            if dev.temperature_c >= SIM_SLOWDOWN_C {
                d.throttle_reasons.push("sw_thermal_slowdown".into());
            }
            snap.devices.push(d);
        }
        snap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_readings() {
        let run = |seed| {
            let sim = SimGpu::from_presets(&["rtx3090", "a4000"], seed).unwrap();
            let _j = sim
                .start_job(
                    0,
                    JobLoad::Transcode {
                        pixels_per_sec: 3e8,
                    },
                )
                .unwrap();
            let _s = sim.start_job(1, JobLoad::Sealing { sm_pct: 80.0 }).unwrap();
            (0..5).map(|_| sim.poll().devices).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn load_follows_jobs_and_ends_on_drop() {
        let sim = SimGpu::from_presets(&["rtx3090"], 1).unwrap();
        let idle = sim.poll();
        assert_eq!(idle.devices[0].encoder_util_pct, Some(0.0));
        let job = sim
            .start_job(
                0,
                JobLoad::Transcode {
                    pixels_per_sec: 5.5e8,
                },
            )
            .unwrap();
        let busy = sim.poll();
        let enc = busy.devices[0].encoder_util_pct.unwrap();
        assert!((49.0..=51.0).contains(&enc), "enc {enc}");
        assert_eq!(busy.devices[0].nvenc_sessions, Some(1));
        assert!(busy.devices[0].power_watts.unwrap() > idle.devices[0].power_watts.unwrap());
        drop(job);
        assert_eq!(sim.poll().devices[0].nvenc_sessions, Some(0));
    }

    #[test]
    fn geforce_session_cap_is_enforced_and_every_output_is_labelled() {
        let sim = SimGpu::from_presets(&["rtx3090"], 1).unwrap();
        let jobs: Vec<_> = (0..5)
            .map(|_| {
                sim.start_job(
                    0,
                    JobLoad::Transcode {
                        pixels_per_sec: 1e7,
                    },
                )
                .unwrap()
            })
            .collect();
        let err = sim
            .start_job(
                0,
                JobLoad::Transcode {
                    pixels_per_sec: 1e7,
                },
            )
            .err();
        assert_eq!(err, Some(SimError::SessionCap { device: 0, cap: 5 }));
        assert_eq!(jobs.len(), 5);
        let json = serde_json::to_value(sim.poll()).unwrap();
        assert_eq!(json["source"], "simulated");
        assert_eq!(json["devices"][0]["source"], "simulated");
        assert!(SimDevice::preset("gtx480").is_err());
    }

    #[test]
    fn heat_triggers_thermal_throttle() {
        let sim = SimGpu::from_presets(&["rtx4090"], 1).unwrap();
        let _s = sim
            .start_job(0, JobLoad::Sealing { sm_pct: 100.0 })
            .unwrap();
        sim.set_thermal_offset(0, 20.0);
        let mut last = sim.poll();
        for _ in 0..10 {
            last = sim.poll();
        }
        assert!(last.devices[0].thermal_throttled(), "{:?}", last.devices[0]);
    }
}
