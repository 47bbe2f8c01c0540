//! Samplers: CPU package energy and host CPU use (read by `gpu::host`, the one host
//! telemetry reader), the GPU telemetry seam, per-process CPU time.
//!
//! Two traits are the seam to the `gpu` module: [`PowerSampler`] for host energy
//! counters and [`GpuSampler`] for per-GPU telemetry. [`NvmlGpu`] reads the `gpu`
//! module's NVML backend; [`SimSampler`] drives its labelled `sim` presets from the
//! benchmark's own load, so the suite runs on any machine and says so.

use std::path::Path;

pub use crate::report::schema::{GpuInfo, GpuReading, GpuSnapshot};

/// Cumulative host energy counter (CPU package), wrap-around handled inside.
pub trait PowerSampler: Send {
    /// Short label for the report (`rapl`).
    fn source(&self) -> &'static str;
    /// Joules consumed since the sampler opened; `None` when a read fails.
    fn energy_joules(&mut self) -> Option<f64>;
}

/// What the benchmark is doing right now; only a simulation needs it.
#[derive(Clone, Debug, Default)]
pub struct LoadHint {
    pub streams: u32,
    /// Encoded pixels per second over the last second.
    pub encode_pixels_per_s: f64,
    pub decode_pixels_per_s: f64,
    pub sealing: bool,
}

/// Per-GPU telemetry at ~1 Hz. The `gpu` module's NVML and `sim` backends implement this.
pub trait GpuSampler: Send {
    fn info(&self) -> GpuInfo;
    fn snapshot(&mut self, load: &LoadHint) -> Option<GpuSnapshot>;
}

/// Host energy from the `gpu` module's RAPL reader (every package domain).
pub struct RaplSampler(crate::gpu::host::Rapl);

impl RaplSampler {
    /// Open every readable package domain, or say why none could be read.
    pub fn open() -> Result<RaplSampler, String> {
        crate::gpu::host::Rapl::open().map(RaplSampler)
    }

    pub fn open_at(root: &Path) -> Result<RaplSampler, String> {
        crate::gpu::host::Rapl::open_at(root).map(RaplSampler)
    }
}

impl PowerSampler for RaplSampler {
    fn source(&self) -> &'static str {
        "rapl"
    }

    fn energy_joules(&mut self) -> Option<f64> {
        self.0.energy_joules()
    }
}

/// The `gpu` module's labelled simulation (a `gpu::sim` preset, the same model the
/// scheduler tests and `comine gpu status --backend sim:…` use), driven by what the
/// benchmark is doing: one simulated NVENC session per live stream (up to the preset's
/// session cap) carrying the measured encoded pixels/s. Its figures are never mixed with
/// measured ones; every report marks them "simulated". Sealing runs on the CPU in the
/// suite, so it puts no load on the simulated GPU.
pub struct SimSampler {
    sim: crate::gpu::SimGpu,
    model: String,
    /// The preset's NVENC session cap (GeForce cards have one).
    session_cap: Option<u32>,
    jobs: Vec<crate::gpu::sim::SimJob>,
}

impl SimSampler {
    /// The preset used when no NVML GPU answers (an RTX 3090, a common miner card).
    pub const DEFAULT_PRESET: &'static str = "rtx3090";

    /// A one-device simulation of `preset` (`rtx3060`, `rtx3090`, `rtx4090`, `a4000`, `a5000`).
    pub fn preset(
        preset: &str,
        step: std::time::Duration,
    ) -> Result<SimSampler, crate::gpu::Error> {
        let model = crate::gpu::sim::SimDevice::preset(preset)?;
        // The report labels the source ("simulated") wherever the model is shown.
        let name = model.name.clone();
        let session_cap = model.session_cap;
        Ok(SimSampler {
            sim: crate::gpu::SimGpu::new(vec![model], 1, step),
            model: name,
            session_cap,
            jobs: Vec::new(),
        })
    }
}

/// No GPU figures at all (the report says "none").
pub struct NoGpu;

impl GpuSampler for NoGpu {
    fn info(&self) -> GpuInfo {
        GpuInfo {
            source: "none".into(),
            ..GpuInfo::default()
        }
    }
    fn snapshot(&mut self, _load: &LoadHint) -> Option<GpuSnapshot> {
        None
    }
}

/// One device's reading from a `gpu` snapshot (NVML or simulated).
fn reading(d: &crate::gpu::DeviceSnapshot) -> GpuReading {
    GpuReading {
        index: d.index,
        power_w: d.power_watts.unwrap_or(0.0),
        energy_j: d.energy_joules,
        util_pct: d.gpu_util_pct.unwrap_or(0.0),
        encoder_pct: d.encoder_util_pct.unwrap_or(0.0),
        decoder_pct: d.decoder_util_pct.unwrap_or(0.0),
        temperature_c: d.temperature_c.unwrap_or(0.0),
        sm_clock_mhz: 0,
        mem_clock_mhz: 0,
    }
}

impl GpuSampler for SimSampler {
    fn info(&self) -> GpuInfo {
        GpuInfo {
            model: self.model.clone(),
            driver: "simulated".into(),
            vbios: "simulated".into(),
            source: "simulated".into(),
        }
    }

    fn snapshot(&mut self, load: &LoadHint) -> Option<GpuSnapshot> {
        // Replace last second's sessions with this second's load.
        self.jobs.clear();
        let pps = load.encode_pixels_per_s.max(0.0);
        let streams = if pps > 0.0 { load.streams.max(1) } else { 0 };
        // One session per stream, as many as the preset's cap allows, sharing the pixels.
        let n = streams.min(self.session_cap.unwrap_or(u32::MAX));
        for _ in 0..n {
            if let Ok(j) = self.sim.start_job(
                0,
                crate::gpu::JobLoad::Transcode {
                    pixels_per_sec: pps / f64::from(n),
                },
            ) {
                self.jobs.push(j);
            }
        }
        let snap = self.sim.poll();
        Some(GpuSnapshot {
            source: "simulated".into(),
            devices: snap.devices.iter().map(reading).collect(),
        })
    }
}

pub use crate::gpu::host::HostCpu;

/// CPU seconds (user + system) a process and its waited-for children used, from `/proc/<pid>/stat`.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 2 (comm) may hold spaces; the rest follows the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After comm: state(3) … utime(14) stime(15) cutime(16) cstime(17); index = field - 3.
    let ticks: u64 = [11usize, 12, 13, 14]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Some(ticks as f64 / hz)
}

/// Real GPU telemetry through the `gpu` module's NVML backend: measured power, the
/// board energy counter, utilisation, encoder and decoder load and temperature.
pub struct NvmlGpu {
    telemetry: crate::gpu::Telemetry,
    info: GpuInfo,
}

impl NvmlGpu {
    /// Opens NVML, or says why not (no driver, no device).
    pub fn open() -> Result<NvmlGpu, String> {
        let mut telemetry = crate::gpu::open(
            &crate::gpu::BackendChoice::Nvml,
            &crate::gpu::Config::default(),
        )
        .map_err(|e| e.to_string())?;
        let first = telemetry.poll();
        let dev = first
            .devices
            .first()
            .ok_or_else(|| "NVML loaded but reports no GPU".to_string())?;
        let mut model = dev.name.clone();
        if first.devices.len() > 1 {
            model = format!("{} x{}", model, first.devices.len());
        }
        let info = GpuInfo {
            model,
            driver: dev.driver.clone().unwrap_or_default(),
            vbios: String::new(),
            source: "nvml".into(),
        };
        Ok(NvmlGpu { telemetry, info })
    }
}

impl GpuSampler for NvmlGpu {
    fn info(&self) -> GpuInfo {
        self.info.clone()
    }

    fn snapshot(&mut self, _load: &LoadHint) -> Option<GpuSnapshot> {
        let snap = self.telemetry.poll();
        let devices: Vec<GpuReading> = snap
            .devices
            .iter()
            .filter(|d| d.healthy)
            .map(reading)
            .collect();
        (!devices.is_empty()).then(|| GpuSnapshot {
            source: "nvml".into(),
            devices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rapl_reads_and_wraps() {
        let dir = tempfile::tempdir().unwrap();
        let zone = dir.path().join("intel-rapl:0");
        std::fs::create_dir_all(&zone).unwrap();
        std::fs::write(zone.join("energy_uj"), "900000\n").unwrap();
        std::fs::write(zone.join("max_energy_range_uj"), "1000000\n").unwrap();
        let mut s = RaplSampler::open_at(dir.path()).unwrap();
        std::fs::write(zone.join("energy_uj"), "950000\n").unwrap();
        assert!((s.energy_joules().unwrap() - 0.05).abs() < 1e-9);
        // Wraps: 50 000 to the top, then 100 000 more.
        std::fs::write(zone.join("energy_uj"), "100000\n").unwrap();
        assert!((s.energy_joules().unwrap() - 0.2).abs() < 1e-9);
    }

    #[test]
    fn rapl_missing_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let err = RaplSampler::open_at(&dir.path().join("nope"))
            .err()
            .unwrap();
        assert!(err.contains("unreadable"), "{err}");
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(process_cpu_seconds(std::process::id()).is_some());
        let mut h = HostCpu::default();
        assert!(h.sample().is_some());
    }

    #[test]
    fn sim_is_the_gpu_modules_preset_labelled_and_follows_load() {
        let step = std::time::Duration::from_secs(1);
        let mut g = SimSampler::preset("rtx3090", step).unwrap();
        assert_eq!(g.info().source, "simulated");
        assert!(g.info().model.contains("RTX 3090"));
        let idle = g.snapshot(&LoadHint::default()).unwrap();
        let busy = g
            .snapshot(&LoadHint {
                streams: 3,
                encode_pixels_per_s: 5.5e8,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(idle.source, "simulated");
        assert_eq!(idle.devices[0].encoder_pct, 0.0);
        // Half the preset's 1.1 Gpx/s NVENC throughput: about 50 % (±1 % noise).
        let enc = busy.devices[0].encoder_pct;
        assert!((48.0..=52.0).contains(&enc), "{enc}");
        assert!(busy.devices[0].power_w > idle.devices[0].power_w);
        // More streams than the GeForce session cap still carry all the pixels.
        let capped = g
            .snapshot(&LoadHint {
                streams: 9,
                encode_pixels_per_s: 5.5e8,
                ..Default::default()
            })
            .unwrap();
        assert!((48.0..=52.0).contains(&capped.devices[0].encoder_pct));
        assert!(SimSampler::preset("gtx9000", step).is_err());
    }
}
