//! Start-up calibration: what each device can transcode, measured rather than assumed.
//!
//! go-livepeer tests its transcoder at start-up; comine measures it. For every device the
//! telemetry reports (the host CPU, each NVIDIA GPU) a short probe transcodes a synthetic
//! 720p clip to the standard four-rung Livepeer ladder with the configured encoder and
//! records the encoded pixels per second. The scheduler rates the device at that figure, so
//! `--capacity auto` offers what this machine really sustains. Simulated devices carry
//! their own model and are not probed.
//!
//! A GPU is rated by wall-clock time. The host CPU is rated per CPU-second times its cores:
//! the figure describes the hardware (it is cached by hardware), so a probe taken while
//! other work loads the machine does not rate it low for good; the load of the moment is
//! the scheduler's live telemetry's job.
//!
//! Results are cached in `<data>/calibration.json`, keyed by the hardware (CPU model and
//! cores, GPU names and UUIDs), the FFmpeg version and the encoder settings; a change to any
//! of them measures again, and `comine calibrate` forces it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::gpu::{Snapshot, Source};
use crate::transcode::{self, throughput, EncoderChoice, Profile};

/// File name under the data directory.
pub const CACHE_FILE: &str = "calibration.json";

/// The probe's ladder: Livepeer's standard 720p/480p/360p/240p at 30 fps from a 720p source,
/// the ladder `[scheduler] session_pixels_per_sec` describes by default.
/// (There is no 480p preset: that rung is spelled out, 854x480 at 30 fps.)
pub const PROBE_LADDER: &str =
    "P720p30fps16x9,P480p30fps16x9:854x480@30:1600k,P360p30fps16x9,P240p30fps16x9";
const PROBE_SOURCE: (u32, u32, u32) = (1280, 720, 30);
/// Bumped when the probe changes, so older caches are measured again.
// v3: a GPU whose NVENC does not open is rated at the CPU's libx264 rate (v2 left it at
// the configured placeholder), so caches from v2 are measured again.
// v4: the ladder's libx264 encoders share 1.5 threads per core (was 1), which changes the
// rate a CPU sustains.
const PROBE_VERSION: u32 = 4;

/// One device's measured rate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceRate {
    pub index: u32,
    /// NVML UUID, or `host` for the CPU.
    pub uuid: String,
    pub name: String,
    /// The encoder that ran (`libx264`, `h264_nvenc`).
    pub encoder: String,
    /// Encoded pixels per second for the probe ladder, decode included.
    pub pixels_per_sec: f64,
    /// How it was timed: `wall_clock` (GPUs) or `cpu_time` (the host CPU: per CPU-second
    /// times the cores).
    pub basis: String,
    pub measured_at_ms: u64,
}

/// What `<data>/calibration.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Hardware, FFmpeg and encoder settings the figures are valid for.
    pub key: String,
    pub devices: Vec<DeviceRate>,
}

/// The encoder settings a calibration measures.
#[derive(Clone, Debug)]
pub struct ProbeSettings {
    pub encoder: EncoderChoice,
    pub x264_preset: String,
}

impl ProbeSettings {
    /// The settings `[transcode]` runs jobs with.
    pub fn from_config(
        t: &crate::config::TranscodeConfig,
    ) -> Result<Self, crate::config::ConfigError> {
        Ok(ProbeSettings {
            encoder: t.encoder_choice()?,
            x264_preset: t.x264_preset.clone(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("calibration probe on {device}: {source}")]
    Probe {
        device: String,
        #[source]
        source: transcode::TranscodeError,
    },
    #[error("cannot write the calibration cache {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The devices worth probing: the host CPU and real GPUs (simulated ones have a model).
fn probed(snapshot: &Snapshot) -> Vec<&crate::gpu::DeviceSnapshot> {
    snapshot
        .devices
        .iter()
        .filter(|d| d.healthy && matches!(d.source, Source::Host | Source::Nvml))
        .collect()
}

/// What the figures depend on: hardware, FFmpeg, encoder settings and the probe itself.
pub fn cache_key(snapshot: &Snapshot, settings: &ProbeSettings) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let devices: Vec<String> = probed(snapshot)
        .iter()
        .map(|d| format!("{}={}", d.uuid, d.name))
        .collect();
    format!(
        "probe=v{PROBE_VERSION};ladder={PROBE_LADDER};ffmpeg={};encoder={:?};preset={};cpu={}x{cores};devices={}",
        transcode::ffmpeg_version(),
        settings.encoder,
        settings.x264_preset,
        cpu_model(),
        devices.join(",")
    )
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Reads the cache when it matches `key`.
pub fn cached(data_dir: &Path, key: &str) -> Option<Calibration> {
    let text = std::fs::read(data_dir.join(CACHE_FILE)).ok()?;
    let c: Calibration = serde_json::from_slice(&text).ok()?;
    (c.key == key).then_some(c)
}

/// The cached calibration, or a fresh one (measured and cached) when the hardware, FFmpeg
/// or the encoder settings changed, or when `force`. Blocking: run it off the async runtime.
pub fn load_or_measure(
    data_dir: &Path,
    snapshot: &Snapshot,
    settings: &ProbeSettings,
    force: bool,
) -> Result<Calibration, CalibrationError> {
    let key = cache_key(snapshot, settings);
    if !force {
        if let Some(c) = cached(data_dir, &key) {
            return Ok(c);
        }
    }
    let devices = probed(snapshot);
    let mut rates = Vec::with_capacity(devices.len());
    if !devices.is_empty() {
        let work = scratch(data_dir);
        let _ = std::fs::remove_dir_all(&work);
        let probe_err = |device: &str| {
            let device = device.to_string();
            move |source| CalibrationError::Probe { device, source }
        };
        // Private like every directory under the data directory (its parents included).
        crate::paths::create_private_dir(&work).map_err(|e| CalibrationError::Write {
            path: work.display().to_string(),
            source: e,
        })?;
        let clip = work.join("source.ts");
        let (w, h, fps) = PROBE_SOURCE;
        let made =
            throughput::synthetic_clip(w, h, fps, 1, &clip).map_err(probe_err("the probe clip"));
        let ladder = Profile::parse_list(PROBE_LADDER).map_err(|e| CalibrationError::Probe {
            device: "the probe ladder".into(),
            source: transcode::TranscodeError::Profile(e),
        });
        // GPUs whose NVENC does not open, and the CPU's libx264 rate (measured once).
        let mut without_nvenc = Vec::new();
        let mut cpu: Option<f64> = None;
        let result = made.and_then(|()| {
            let ladder = ladder?;
            for d in &devices {
                let encoder = match d.source {
                    // A CPU host encodes with libx264 whatever `auto` would try first.
                    Source::Host => EncoderChoice::X264,
                    _ => settings.encoder,
                };
                // Once the CPU's rate is known, a cheap encoder probe says whether another
                // GPU has NVENC: measuring the same CPU again per GPU would cost seconds each.
                if d.source == Source::Nvml && cpu.is_some() {
                    let opened = transcode::probe::encoder(encoder, d.index, 1, &settings.x264_preset)
                        .map_err(probe_err(&d.uuid))?;
                    if !opened.all_nvenc() {
                        without_nvenc.push(d);
                        continue;
                    }
                }
                let m = throughput::measure(
                    &clip,
                    &ladder,
                    encoder,
                    &settings.x264_preset,
                    d.index,
                    &work,
                )
                .map_err(probe_err(&d.uuid))?;
                if d.source == Source::Nvml && m.encoder != "h264_nvenc" {
                    // NVENC did not open on this GPU (a data-centre card such as the H100
                    // or H200 has none): its segments are encoded by libx264 on the CPU,
                    // so it is rated at the CPU's rate, shared with the other such GPUs
                    // below. A placeholder GPU rate would offer sessions the CPU cannot run.
                    tracing::warn!(gpu = d.index, uuid = %d.uuid, "calibration: NVENC does not open on this GPU; its segments are encoded with libx264 on the CPU, and it is rated at the CPU's rate");
                    cpu.get_or_insert(cpu_rate(&m, d));
                    without_nvenc.push(d);
                    continue;
                }
                let (pixels_per_sec, basis) = match d.source {
                    Source::Host => (cpu_rate(&m, d), "cpu_time"),
                    _ => (m.pixels_per_sec, "wall_clock"),
                };
                tracing::info!(device = d.index, uuid = %d.uuid, encoder = %m.encoder, basis, mpx_per_sec = pixels_per_sec / 1e6, wall_mpx_per_sec = m.pixels_per_sec / 1e6, "calibrated");
                rates.push(DeviceRate {
                    index: d.index,
                    uuid: d.uuid.clone(),
                    name: d.name.clone(),
                    encoder: m.encoder,
                    pixels_per_sec,
                    basis: basis.into(),
                    measured_at_ms: crate::util::now_ms(),
                });
            }
            // The CPU is one: GPUs without NVENC share its libx264 rate.
            let share = without_nvenc.len().max(1) as f64;
            let cpu = cpu.unwrap_or(0.0);
            for d in &without_nvenc {
                rates.push(DeviceRate {
                    index: d.index,
                    uuid: d.uuid.clone(),
                    name: d.name.clone(),
                    encoder: "libx264".into(),
                    pixels_per_sec: cpu / share,
                    basis: "cpu_time".into(),
                    measured_at_ms: crate::util::now_ms(),
                });
            }
            Ok(())
        });
        let _ = std::fs::remove_dir_all(&work);
        result?;
    }
    let calibration = Calibration {
        key,
        devices: rates,
    };
    let path = data_dir.join(CACHE_FILE);
    let json = serde_json::to_vec_pretty(&calibration).unwrap_or_default();
    crate::paths::create_private_dir(data_dir)
        .and_then(|_| crate::util::durable::write_durable(&path, &json))
        .map_err(|source| CalibrationError::Write {
            path: path.display().to_string(),
            source,
        })?;
    Ok(calibration)
}

/// What the CPU encodes with libx264, in pixels per second: per CPU-second of the probe
/// times the cores, never below what the wall clock saw (a probe cannot beat reality).
fn cpu_rate(m: &throughput::Measured, d: &crate::gpu::DeviceSnapshot) -> f64 {
    let cores = d.cpu_cores.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |c| c.max(1) as usize,
    );
    (m.pixels_per_cpu_sec() * cores as f64).max(m.pixels_per_sec)
}

fn scratch(data_dir: &Path) -> PathBuf {
    data_dir.join("work").join("calibration")
}

/// Rates every calibrated device in the scheduler's config, unless the operator rated it
/// (by UUID or index) in `[scheduler] device_pixels_per_sec`.
pub fn apply(calibration: &Calibration, sched: &mut crate::sched::Config) {
    for d in &calibration.devices {
        let rated_by_hand = sched.device_pixels_per_sec.contains_key(&d.uuid)
            || sched
                .device_pixels_per_sec
                .contains_key(&d.index.to_string());
        if !rated_by_hand && d.pixels_per_sec.is_finite() && d.pixels_per_sec > 0.0 {
            sched
                .device_pixels_per_sec
                .insert(d.uuid.clone(), d.pixels_per_sec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calibration(uuid: &str, pps: f64) -> Calibration {
        Calibration {
            key: "k".into(),
            devices: vec![DeviceRate {
                index: 0,
                uuid: uuid.into(),
                name: "host CPU".into(),
                encoder: "libx264".into(),
                pixels_per_sec: pps,
                basis: "cpu_time".into(),
                measured_at_ms: 1,
            }],
        }
    }

    /// A GPU whose NVENC does not open (an H100/H200; here, GPU indices no driver has) is
    /// rated at the CPU's libx264 rate, shared between such GPUs, never left at the
    /// configured placeholder that would offer sessions the CPU cannot run.
    #[test]
    fn gpus_without_nvenc_share_the_cpu_rate() {
        let dir = tempfile::tempdir().unwrap();
        let mut snap = Snapshot::empty(Source::Nvml);
        for i in [98, 99] {
            snap.devices.push(crate::gpu::DeviceSnapshot::new(
                Source::Nvml,
                i,
                format!("GPU-no-nvenc-{i}"),
                "NVIDIA H200".into(),
            ));
        }
        let settings = ProbeSettings {
            encoder: EncoderChoice::Auto,
            x264_preset: "ultrafast".into(),
        };
        let c = load_or_measure(dir.path(), &snap, &settings, true).unwrap();
        assert_eq!(c.devices.len(), 2, "both GPUs rated: {c:?}");
        for d in &c.devices {
            assert_eq!(d.encoder, "libx264");
            assert_eq!(d.basis, "cpu_time");
            assert!(d.pixels_per_sec > 0.0);
        }
        assert_eq!(c.devices[0].pixels_per_sec, c.devices[1].pixels_per_sec);
        let mut sched = crate::sched::Config::default();
        apply(&c, &mut sched);
        let rated = sched.device_pixels_per_sec["GPU-no-nvenc-98"];
        assert!(
            rated < sched.default_gpu_pixels_per_sec,
            "{rated} is the CPU's share, below the GPU placeholder"
        );
    }

    #[test]
    fn calibrated_rates_rate_devices_unless_the_operator_did() {
        let mut c = crate::sched::Config::default();
        apply(&calibration("host", 30e6), &mut c);
        assert_eq!(c.device_pixels_per_sec.get("host"), Some(&30e6));
        let mut by_hand = crate::sched::Config::default();
        by_hand.device_pixels_per_sec.insert("0".into(), 5e6);
        apply(&calibration("host", 30e6), &mut by_hand);
        assert_eq!(by_hand.device_pixels_per_sec.get("host"), None);
    }

    /// The probe measures the ladder `[scheduler] session_pixels_per_sec` describes.
    #[test]
    fn the_probe_ladder_is_one_default_livepeer_session() {
        let ladder = Profile::parse_list(PROBE_LADDER).unwrap();
        assert_eq!(ladder.len(), 4);
        let pps = transcode::ladder_pixels_per_sec(&ladder);
        assert_eq!(pps, crate::sched::Config::default().session_pixels_per_sec);
    }

    #[test]
    fn the_cache_is_used_only_for_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let c = calibration("host", 30e6);
        std::fs::write(dir.path().join(CACHE_FILE), serde_json::to_vec(&c).unwrap()).unwrap();
        assert_eq!(cached(dir.path(), "k"), Some(c));
        assert_eq!(cached(dir.path(), "other hardware"), None);
    }
}
