//! NVML backend: reads every NVIDIA device through nvml-wrapper.
//!
//! libnvidia-ml is loaded at run time, so a host without the driver builds and runs; `open`
//! then fails with [`Error::NvmlUnavailable`] and `gpu::open(auto)` falls back to the host.
//! A device that errors mid-run (GPU lost, Xid) is reported unhealthy; the others go on.
//!
//! NVENC session cap: NVIDIA's consumer cards (GeForce, Titan) have a driver-enforced cap on
//! concurrent encode sessions **per system**, shared by every consumer card in it; qualified
//! cards (Quadro/RTX professional, data centre) have none. [`consumer_session_cap`] gives the
//! cap of a driver version, and each consumer device gets its share, so `--capacity auto`
//! never offers sessions the driver would refuse. `[scheduler.session_limits]` overrides it.

use std::collections::{HashMap, HashSet};

use nvml_wrapper::enum_wrappers::device::{Brand, EncoderType, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;

use super::{Attribution, DeviceSnapshot, Error, ProcessUse, Snapshot, Source};

pub struct NvmlBackend {
    nvml: Nvml,
    driver: Option<String>,
    attribution: Attribution,
    /// Last process-utilisation sample timestamp per device, so each poll reads new samples only.
    last_sample: HashMap<u32, u64>,
    /// Devices that fell off the bus: they stay unhealthy until comine restarts.
    lost: HashSet<u32>,
    /// Per-device NVENC session cap from the driver (consumer cards share one per system).
    session_caps: HashMap<u32, u32>,
}

/// The driver's concurrent NVENC session cap on consumer cards (GeForce, Titan), per system,
/// by driver major version: 2 before 2020, 3 from the 440 drivers, 5 from the 530 drivers
/// (March 2023), 8 from the 550 drivers (January 2024). NVIDIA's published limit; a
/// patched or newer driver may allow more, which `[scheduler.session_limits]` can say.
pub fn consumer_session_cap(driver: &str) -> u32 {
    let major: u32 = driver
        .split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(0);
    match major {
        550.. => 8,
        530.. => 5,
        440.. => 3,
        _ => 2,
    }
}

/// True for brands the session cap applies to.
fn capped(brand: &Brand) -> bool {
    matches!(brand, Brand::GeForce | Brand::Titan)
}

/// Each capped device's share of a system-wide `cap` (at least 1).
pub fn split_cap(cap: u32, capped_devices: u32) -> u32 {
    (cap / capped_devices.max(1)).max(1)
}

fn unavailable(e: NvmlError) -> Error {
    match e {
        NvmlError::LibloadingError(l) => Error::NvmlUnavailable(l.to_string()),
        NvmlError::DriverNotLoaded => {
            Error::NvmlUnavailable("the NVIDIA kernel driver is not loaded".into())
        }
        NvmlError::LibraryNotFound => Error::NvmlUnavailable("NVML library not found".into()),
        other => Error::Nvml(other.to_string()),
    }
}

impl NvmlBackend {
    pub fn open(attribution: Attribution) -> Result<Self, Error> {
        let nvml = Nvml::init().map_err(unavailable)?;
        let driver = nvml.sys_driver_version().ok();
        let mut consumer = Vec::new();
        for i in 0..nvml.device_count().unwrap_or(0) {
            if let Ok(brand) = nvml.device_by_index(i).and_then(|d| d.brand()) {
                if capped(&brand) {
                    consumer.push(i);
                }
            }
        }
        let mut session_caps = HashMap::new();
        if !consumer.is_empty() {
            let cap = consumer_session_cap(driver.as_deref().unwrap_or(""));
            let share = split_cap(cap, consumer.len() as u32);
            tracing::info!(
                driver = driver.as_deref().unwrap_or("?"),
                system_cap = cap,
                per_gpu = share,
                gpus = ?consumer,
                "consumer GPUs: the driver caps concurrent NVENC sessions per system"
            );
            for i in consumer {
                session_caps.insert(i, share);
            }
        }
        Ok(NvmlBackend {
            nvml,
            driver,
            attribution,
            last_sample: HashMap::new(),
            lost: HashSet::new(),
            session_caps,
        })
    }

    pub fn poll(&mut self) -> Snapshot {
        let mut snap = Snapshot::empty(Source::Nvml);
        let count = match self.nvml.device_count() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("NVML device count failed: {e}");
                return snap;
            }
        };
        for index in 0..count {
            snap.devices.push(self.read_device(index));
        }
        snap
    }

    fn read_device(&mut self, index: u32) -> DeviceSnapshot {
        let mut d = DeviceSnapshot::new(Source::Nvml, index, format!("gpu-{index}"), String::new());
        d.driver = self.driver.clone();
        d.session_cap = self.session_caps.get(&index).copied();
        if self.lost.contains(&index) {
            d.healthy = false;
            d.error = Some("GPU lost earlier in this run; restart comine after fixing it".into());
            return d;
        }
        let dev = match self.nvml.device_by_index(index) {
            Ok(dev) => dev,
            Err(e) => {
                mark_error(&mut d, &e, &mut self.lost);
                return d;
            }
        };
        // Each reading is optional: older cards lack some counters. A fatal error marks the device.
        macro_rules! read {
            ($e:expr) => {
                match $e {
                    Ok(v) => Some(v),
                    Err(NvmlError::NotSupported) | Err(NvmlError::NoPermission) => None,
                    Err(e) => {
                        mark_error(&mut d, &e, &mut self.lost);
                        None
                    }
                }
            };
        }
        if let Some(n) = read!(dev.name()) {
            d.name = n;
        }
        if let Some(u) = read!(dev.uuid()) {
            d.uuid = u;
        }
        if let Some(u) = read!(dev.utilization_rates()) {
            d.gpu_util_pct = Some(u.gpu as f64);
            d.mem_util_pct = Some(u.memory as f64);
        }
        d.encoder_util_pct = read!(dev.encoder_utilization()).map(|u| u.utilization as f64);
        d.decoder_util_pct = read!(dev.decoder_utilization()).map(|u| u.utilization as f64);
        if let Some(s) = read!(dev.encoder_stats()) {
            d.nvenc_sessions = Some(s.session_count);
            d.nvenc_fps = Some(s.average_fps);
            d.nvenc_latency_us = Some(s.average_latency);
        }
        d.encoder_capacity_pct = read!(dev.encoder_capacity(EncoderType::H264));
        if let Some(m) = read!(dev.memory_info()) {
            d.memory_used_bytes = Some(m.used);
            d.memory_total_bytes = Some(m.total);
        }
        d.power_watts = read!(dev.power_usage()).map(|mw| mw as f64 / 1000.0);
        d.power_limit_watts = read!(dev.enforced_power_limit()).map(|mw| mw as f64 / 1000.0);
        d.energy_joules = read!(dev.total_energy_consumption()).map(|mj| mj as f64 / 1000.0);
        d.temperature_c = read!(dev.temperature(TemperatureSensor::Gpu)).map(|t| t as f64);
        if let Some(r) = read!(dev.current_throttle_reasons()) {
            d.throttle_reasons = r
                .iter_names()
                .map(|(name, _)| name.to_ascii_lowercase())
                .filter(|n| n != "gpu_idle" && n != "none")
                .collect();
        }
        // Per-process attribution: memory from the process lists, engine shares from samples.
        let mut procs: HashMap<u32, ProcessUse> = HashMap::new();
        let lists = [
            read!(dev.running_compute_processes()),
            read!(dev.running_graphics_processes()),
        ];
        for p in lists.into_iter().flatten().flatten() {
            let name = process_name(&self.nvml, p.pid);
            let mem = match p.used_gpu_memory {
                UsedGpuMemory::Used(b) => Some(b),
                UsedGpuMemory::Unavailable => None,
            };
            procs.insert(
                p.pid,
                ProcessUse {
                    pid: p.pid,
                    role: self.attribution.classify(p.pid, &name),
                    name,
                    sm_pct: None,
                    enc_pct: None,
                    dec_pct: None,
                    memory_bytes: mem,
                },
            );
        }
        let since = self.last_sample.get(&index).copied();
        // NVML answers NOT_FOUND when no process used the GPU since `since`: no samples,
        // not an error (seen on an idle H200, where it was reported as the device's error).
        let samples = match dev.process_utilization_stats(since) {
            Err(NvmlError::NotFound) => Ok(Vec::new()),
            other => other,
        };
        if let Some(samples) = read!(samples) {
            for s in samples {
                let entry = procs.entry(s.pid).or_insert_with(|| {
                    let name = process_name(&self.nvml, s.pid);
                    ProcessUse {
                        pid: s.pid,
                        role: self.attribution.classify(s.pid, &name),
                        name,
                        sm_pct: None,
                        enc_pct: None,
                        dec_pct: None,
                        memory_bytes: None,
                    }
                });
                entry.sm_pct = Some(s.sm_util);
                entry.enc_pct = Some(s.enc_util);
                entry.dec_pct = Some(s.dec_util);
                let ts = self.last_sample.entry(index).or_insert(0);
                *ts = (*ts).max(s.timestamp);
            }
        }
        let mut procs: Vec<ProcessUse> = procs.into_values().collect();
        procs.sort_by_key(|p| p.pid);
        d.processes = procs;
        d
    }
}

fn mark_error(d: &mut DeviceSnapshot, e: &NvmlError, lost: &mut HashSet<u32>) {
    let fatal = matches!(
        e,
        NvmlError::GpuLost | NvmlError::Unknown | NvmlError::Uninitialized
    );
    if fatal {
        if matches!(e, NvmlError::GpuLost) {
            lost.insert(d.index);
        }
        d.healthy = false;
        tracing::error!(
            device = d.index,
            "GPU {} unhealthy: {e}; no new work goes to it",
            d.index
        );
    }
    d.error = Some(e.to_string());
}

/// `/proc/PID/comm` first (cheap, no NVML call), then NVML's own lookup.
fn process_name(nvml: &Nvml, pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .or_else(|_| nvml.sys_process_name(pid, 64))
        .unwrap_or_else(|_| format!("pid{pid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_cap_follows_the_driver_and_is_shared_per_system() {
        assert_eq!(consumer_session_cap("535.183.01"), 5);
        assert_eq!(consumer_session_cap("550.54.14"), 8);
        assert_eq!(consumer_session_cap("470.256.02"), 3);
        assert_eq!(consumer_session_cap("418.67"), 2);
        assert_eq!(consumer_session_cap("garbage"), 2);
        // Two GeForce cards on a 550 driver: 8 sessions for the system, 4 each.
        assert_eq!(split_cap(8, 2), 4);
        assert_eq!(split_cap(3, 4), 1);
        assert!(capped(&Brand::GeForce) && !capped(&Brand::Quadro) && !capped(&Brand::Tesla));
    }
}
