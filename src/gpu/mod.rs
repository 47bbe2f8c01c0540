//! GPU telemetry: what the devices are doing right now, from NVML, the host CPU or a simulator.
//!
//! Every backend produces the same [`Snapshot`], labelled with its [`Source`] so a simulated
//! or CPU-only reading can never be mistaken for a real GPU one. [`Poller`] runs a backend at a
//! fixed interval on a blocking thread and publishes the latest snapshot on a `watch` channel.

pub mod cli;
pub mod host;
pub mod nvml;
pub mod poller;
pub mod sim;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use poller::Poller;
pub use sim::{JobLoad, SimDevice, SimGpu, SimJob};

/// Where a reading came from. Serialised as `"nvml"`, `"host"` or `"simulated"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Nvml,
    Host,
    Simulated,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Nvml => "nvml",
            Source::Host => "host",
            Source::Simulated => "simulated",
        })
    }
}

/// Who is using a device, as far as comine can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// WindowPoSt / WinningPoSt: never to be delayed.
    Proof,
    /// Filecoin sealing (PC2, C2, replica update...).
    Sealing,
    /// comine's own transcoding.
    Comine,
    Other,
}

/// One process seen on a device, with its share of the engines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessUse {
    pub pid: u32,
    pub name: String,
    pub role: Role,
    pub sm_pct: Option<u32>,
    pub enc_pct: Option<u32>,
    pub dec_pct: Option<u32>,
    pub memory_bytes: Option<u64>,
}

/// One device (a GPU, or the host CPU for the `host` backend) at one instant.
///
/// Fields a backend cannot read are `None`; nothing is invented.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceSnapshot {
    pub source: Source,
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub driver: Option<String>,
    /// False once the device returned a fatal error (GPU lost, Xid...): admit nothing to it.
    pub healthy: bool,
    /// The last error, when unhealthy or when a reading failed.
    pub error: Option<String>,
    pub gpu_util_pct: Option<f64>,
    pub mem_util_pct: Option<f64>,
    pub encoder_util_pct: Option<f64>,
    pub decoder_util_pct: Option<f64>,
    pub nvenc_sessions: Option<u32>,
    pub nvenc_fps: Option<u32>,
    pub nvenc_latency_us: Option<u32>,
    /// NVML's remaining H.264 encoder capacity, in percent.
    pub encoder_capacity_pct: Option<u32>,
    /// Concurrent NVENC session cap known for this device (driver cap on GeForce), if any.
    pub session_cap: Option<u32>,
    /// Rated encode throughput in pixels/s (simulated presets; `None` for real devices).
    pub encode_pixels_per_sec: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub power_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    /// Energy counter since driver load (GPU) or RAPL counter (host), in joules.
    pub energy_joules: Option<f64>,
    pub temperature_c: Option<f64>,
    /// Active throttle reasons, e.g. `sw_thermal_slowdown`, `sw_power_cap`.
    pub throttle_reasons: Vec<String>,
    pub processes: Vec<ProcessUse>,
    /// Host backend only: 1/5/15-minute load averages and core count.
    pub load_avg: Option<[f64; 3]>,
    pub cpu_cores: Option<u32>,
}

impl DeviceSnapshot {
    /// An empty reading for `index` that backends fill in.
    pub fn new(source: Source, index: u32, uuid: String, name: String) -> Self {
        DeviceSnapshot {
            source,
            index,
            uuid,
            name,
            driver: None,
            healthy: true,
            error: None,
            gpu_util_pct: None,
            mem_util_pct: None,
            encoder_util_pct: None,
            decoder_util_pct: None,
            nvenc_sessions: None,
            nvenc_fps: None,
            nvenc_latency_us: None,
            encoder_capacity_pct: None,
            session_cap: None,
            encode_pixels_per_sec: None,
            memory_used_bytes: None,
            memory_total_bytes: None,
            power_watts: None,
            power_limit_watts: None,
            energy_joules: None,
            temperature_c: None,
            throttle_reasons: Vec::new(),
            processes: Vec::new(),
            load_avg: None,
            cpu_cores: None,
        }
    }

    /// True when a thermal throttle reason is active.
    pub fn thermal_throttled(&self) -> bool {
        self.throttle_reasons.iter().any(|r| r.contains("thermal"))
    }

    /// True when a process with the proof role is listed on this device. Presence is not
    /// activity (an idle prover keeps its CUDA context): the scheduler judges activity.
    pub fn prover_present(&self) -> bool {
        self.processes.iter().any(|p| p.role == Role::Proof)
    }
}

/// All devices of one backend at one instant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub source: Source,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub taken_at_ms: u64,
    pub devices: Vec<DeviceSnapshot>,
}

impl Snapshot {
    pub fn empty(source: Source) -> Self {
        Snapshot {
            source,
            taken_at_ms: crate::util::now_ms(),
            devices: Vec::new(),
        }
    }
}

/// How processes are attributed to proofs, sealing or comine (NVML and host backends).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Attribution {
    /// Process names (as in `/proc/PID/comm`, or NVML's name) that run WindowPoSt/WinningPoSt,
    /// e.g. a dedicated `lotus-worker --windowpost` renamed or wrapped.
    pub proof_process_names: Vec<String>,
    /// PIDs that run proofs.
    pub proof_pids: Vec<u32>,
    /// Process names that run sealing work.
    pub sealing_process_names: Vec<String>,
}

impl Default for Attribution {
    fn default() -> Self {
        Attribution {
            proof_process_names: Vec::new(),
            proof_pids: Vec::new(),
            sealing_process_names: ["lotus-worker", "lotus-miner", "curio", "lotus-bench"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl Attribution {
    /// The role of `pid` named `name`; proof rules win over sealing ones.
    pub fn classify(&self, pid: u32, name: &str) -> Role {
        let base = name.rsplit('/').next().unwrap_or(name);
        if self.proof_pids.contains(&pid) || self.proof_process_names.iter().any(|n| n == base) {
            Role::Proof
        } else if pid == std::process::id() {
            Role::Comine
        } else if self.sealing_process_names.iter().any(|n| n == base) {
            Role::Sealing
        } else {
            Role::Other
        }
    }
}

/// Telemetry settings, embeddable in the daemon's TOML config as `[gpu]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `auto`, `nvml`, `host` or `sim:PRESET[,PRESET...]`.
    pub backend: String,
    /// Poll interval in milliseconds.
    pub poll_interval_ms: u64,
    /// Seed of the simulator's noise.
    pub sim_seed: u64,
    pub attribution: Attribution,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: "auto".into(),
            poll_interval_ms: 500,
            sim_seed: 1,
            attribution: Attribution::default(),
        }
    }
}

impl Config {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(10))
    }
}

/// Which backend to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// NVML if it loads, else the host CPU.
    Auto,
    Nvml,
    Host,
    /// Simulated devices, one per preset name.
    Sim(Vec<String>),
}

impl FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim() {
            "auto" => Ok(BackendChoice::Auto),
            "nvml" => Ok(BackendChoice::Nvml),
            "host" => Ok(BackendChoice::Host),
            "sim" => Ok(BackendChoice::Sim(vec!["rtx3090".into()])),
            other => match other.strip_prefix("sim:") {
                Some(list) => {
                    let presets: Vec<String> = list
                        .split(',')
                        .map(|p| p.trim().to_ascii_lowercase())
                        .filter(|p| !p.is_empty())
                        .collect();
                    for p in &presets {
                        SimDevice::preset(p)?;
                    }
                    if presets.is_empty() {
                        return Err(Error::BadBackend(other.into()));
                    }
                    Ok(BackendChoice::Sim(presets))
                }
                None => Err(Error::BadBackend(other.into())),
            },
        }
    }
}

/// Telemetry errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown telemetry backend {0:?}: use auto, nvml, host or sim:PRESET (presets: {presets})", presets = SimDevice::PRESETS.join(", "))]
    BadBackend(String),
    #[error("unknown simulated GPU preset {0:?}: use one of {presets}", presets = SimDevice::PRESETS.join(", "))]
    UnknownPreset(String),
    #[error("NVML unavailable ({0}): install the NVIDIA driver, or use --backend host")]
    NvmlUnavailable(String),
    #[error("NVML: {0}")]
    Nvml(String),
    #[error("no device with index {0}")]
    NoSuchDevice(u32),
}

/// A telemetry backend. `poll` blocks (NVML calls, procfs reads): run it off the async runtime.
pub enum Telemetry {
    /// Boxed: NVML's symbol table is large.
    Nvml(Box<nvml::NvmlBackend>),
    Host(host::HostBackend),
    Sim(SimGpu),
}

impl Telemetry {
    pub fn source(&self) -> Source {
        match self {
            Telemetry::Nvml(_) => Source::Nvml,
            Telemetry::Host(_) => Source::Host,
            Telemetry::Sim(_) => Source::Simulated,
        }
    }

    /// Reads every device once. Per-device failures are reported in that device's snapshot.
    pub fn poll(&mut self) -> Snapshot {
        match self {
            Telemetry::Nvml(b) => b.poll(),
            Telemetry::Host(b) => b.poll(),
            Telemetry::Sim(s) => s.poll(),
        }
    }
}

/// The line logged when `auto` falls back to host telemetry.
pub fn nvml_fallback_message(reason: &str) -> String {
    format!("NVML unavailable ({reason}): no NVIDIA driver on this host; using host CPU telemetry")
}

/// Opens a backend. `auto` tries NVML and, when it cannot load, says so plainly and uses the host.
pub fn open(choice: &BackendChoice, config: &Config) -> Result<Telemetry, Error> {
    match choice {
        BackendChoice::Nvml => Ok(Telemetry::Nvml(Box::new(nvml::NvmlBackend::open(
            config.attribution.clone(),
        )?))),
        BackendChoice::Host => Ok(Telemetry::Host(host::HostBackend::new(
            config.attribution.clone(),
        ))),
        BackendChoice::Sim(presets) => {
            let devices = presets
                .iter()
                .map(|p| SimDevice::preset(p))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Telemetry::Sim(SimGpu::new(
                devices,
                config.sim_seed,
                config.poll_interval(),
            )))
        }
        BackendChoice::Auto => match nvml::NvmlBackend::open(config.attribution.clone()) {
            Ok(b) => Ok(Telemetry::Nvml(Box::new(b))),
            Err(Error::NvmlUnavailable(reason)) => {
                tracing::warn!("{}", nvml_fallback_message(&reason));
                Ok(Telemetry::Host(host::HostBackend::new(
                    config.attribution.clone(),
                )))
            }
            Err(e) => Err(e),
        },
    }
}
