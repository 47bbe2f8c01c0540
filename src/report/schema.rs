//! The versioned `report.json` schema shared by `comine bench` and `comine report`.
//!
//! Bump [`SCHEMA_VERSION`] on any incompatible change; readers refuse other versions
//! with a message rather than misreading them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const SCHEMA_ID: &str = "comine.bench.report";
pub const SCHEMA_VERSION: u32 = 1;

/// Everything one `comine bench` run measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    pub schema: String,
    pub schema_version: u32,
    pub created_unix_s: u64,
    pub duration_s: f64,
    pub fingerprint: Fingerprint,
    pub suite: Suite,
    /// SHA-256 of the suite text: reports are comparable when this matches.
    pub suite_hash: String,
    pub config: RunConfig,
    pub power: PowerSources,
    /// Every sample, in time order.
    pub samples: Vec<Sample>,
    pub seal_events: Vec<SealEvent>,
    pub segments: Vec<SegmentRecord>,
    pub steering: Vec<SteeringEvent>,
    /// Measurement windows: one per phase repetition.
    pub windows: Vec<WindowSpan>,
    pub phases: Vec<PhaseSummary>,
    pub transcode_steps: Vec<StepSummary>,
    pub results: Results,
    pub warnings: Vec<String>,
    /// The AI upscale phase: its throughput, or why it was skipped (absent in reports
    /// from before it existed).
    #[serde(default)]
    pub ai: AiPhaseReport,
}

/// The AI phase: the embedded upscale model alone, then beside the sealing workload.
#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq)]
pub struct AiPhaseReport {
    /// `ran` or `skipped` (empty in reports from before the phase existed).
    pub status: String,
    /// Why it was skipped, and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_reason: Option<String>,
    #[serde(default)]
    pub model: String,
    /// ONNX Runtime's version and execution provider (`1.22.1 cpu`).
    #[serde(default)]
    pub runtime: String,
    #[serde(default)]
    pub threads: u32,
    #[serde(default)]
    pub frame_width: u32,
    #[serde(default)]
    pub frame_height: u32,
    /// The model alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alone: Option<AiFigures>,
    /// Beside the sealing workload (absent without sealing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with_seal: Option<AiFigures>,
    /// Sealing's effect on AI: `with_seal.frames_per_s / alone.frames_per_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with_seal_ratio: Option<f64>,
}

/// Upscale throughput over one window. Units are Livepeer's billing units for upscale:
/// input width × height per frame.
#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq)]
pub struct AiFigures {
    pub seconds: f64,
    pub frames: u64,
    pub frames_per_s: f64,
    pub units: u64,
    pub units_per_s: f64,
}

/// The machine, so reports from different rigs can be told apart and compared.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct Fingerprint {
    pub hostname: String,
    pub cpu_model: String,
    pub cpu_cores: u32,
    pub ram_bytes: u64,
    pub kernel: String,
    pub gpu: GpuInfo,
    pub comine_version: String,
    pub ffmpeg_version: String,
    pub filecoin_proofs_api: String,
}

/// How the run was set up.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct RunConfig {
    /// `builtin`, `cmd`, `observe` or `none`.
    pub seal_mode: String,
    pub seal_detail: String,
    /// What one unit of sealing throughput is.
    pub seal_unit: String,
    pub sector_size: String,
    /// `ran` or why C2 was skipped.
    pub c2: String,
    pub input: String,
    pub ladder: String,
    pub encoder: String,
    pub steering_policy: String,
}

/// Where power figures come from.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct PowerSources {
    /// `rapl`, or `not measured: <why>`.
    pub cpu: String,
    /// `nvml`, `simulated` or `none`.
    pub gpu: String,
    /// True when `power_w` figures exist (RAPL and/or NVML).
    pub measured: bool,
    /// True when simulated GPU figures are present (always labelled as such).
    pub simulated: bool,
}

/// One sampler tick.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub t_s: f64,
    /// `idle`, `seal`, `transcode`, `combined_steered`, `combined_unsteered` or `between`.
    pub phase: String,
    pub rep: u32,
    pub cpu_util_pct: f64,
    /// CPU used by the benchmark process itself (the transcoder), in % of one core.
    pub bench_cpu_pct: f64,
    /// CPU used by the sealing process group leader and its reaped children, % of one core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal_cpu_pct: Option<f64>,
    /// CPU package power from RAPL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_power_w: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuSnapshot>,
    /// Measured power: RAPL + NVML where present; absent when nothing is measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_w: Option<f64>,
    /// Simulated GPU power; never added to `power_w`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sim_power_w: Option<f64>,
    pub streams: u32,
    /// `running`, `paused` or `off`.
    pub sealing: String,
}

/// A steering decision.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SteeringEvent {
    pub t_s: f64,
    pub action: String,
    pub realtime_ratio: f64,
    /// The policy's own reason (the scheduler core's decision text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One measurement window (phase repetition).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WindowSpan {
    pub phase: String,
    pub rep: u32,
    pub start_s: f64,
    pub end_s: f64,
    pub streams: u32,
}

/// Median and spread of one metric over a phase's repetitions.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// (max − min) / |median| in percent; for metrics that are themselves percentages
    /// (names ending in `_pct`) it is max − min in percentage points.
    pub spread_pct: f64,
    pub n: u32,
    /// Spread above 10 %: repeat on a quieter machine or with longer phases.
    pub noisy: bool,
}

impl Stat {
    /// The statistic for metric `key`: relative spread, or points for `*_pct` metrics.
    pub fn for_metric(key: &str, values: &[f64]) -> Option<Stat> {
        let mut s = Stat::of(values)?;
        if key.ends_with("_pct") {
            s.spread_pct = s.max - s.min;
            s.noisy = s.n > 1 && s.spread_pct > 10.0;
        }
        Some(s)
    }

    pub fn of(values: &[f64]) -> Option<Stat> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        let (min, max) = (v[0], v[n - 1]);
        let spread_pct = if median.abs() > 1e-12 {
            100.0 * (max - min) / median.abs()
        } else if max - min > 1e-12 {
            100.0
        } else {
            0.0
        };
        Some(Stat {
            median,
            min,
            max,
            spread_pct,
            n: n as u32,
            noisy: n > 1 && spread_pct > 10.0,
        })
    }
}

/// One repetition's figures.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RepSummary {
    pub rep: u32,
    pub start_s: f64,
    pub end_s: f64,
    /// Metric name → value; a metric that could not be measured is absent.
    pub metrics: BTreeMap<String, f64>,
}

/// A phase: its repetitions and the median/spread of each metric.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PhaseSummary {
    pub name: String,
    pub label: String,
    pub reps: Vec<RepSummary>,
    pub stats: BTreeMap<String, Stat>,
}

/// One step of the stream step-up.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepSummary {
    pub streams: u32,
    pub realtime_ratio: f64,
    pub segments: u64,
    pub missed: u64,
    pub pixels_per_s: f64,
    pub within_target: bool,
}

/// Headline figures (medians over repetitions); `None` means not measured.
#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq)]
pub struct Results {
    pub idle_power_w: Option<f64>,
    pub seal_throughput_per_h: Option<f64>,
    pub seal_power_w: Option<f64>,
    pub streams_at_realtime: u32,
    pub transcode_realtime_ratio: Option<f64>,
    pub transcode_pixels_per_s: Option<f64>,
    pub transcode_power_w: Option<f64>,
    pub steered: Option<CombinedResult>,
    pub unsteered: Option<CombinedResult>,
    /// Median host CPU use during the idle baseline, in % of all cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_cpu_pct: Option<f64>,
    /// Set when the run's figures cannot be compared with other runs (the idle
    /// baseline was not idle): why, in words the report shows first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_comparable: Option<String>,
}

/// What co-mining cost, for one combined variant.
#[derive(Clone, Debug, Serialize, Deserialize, Default, PartialEq)]
pub struct CombinedResult {
    pub streams: u32,
    pub seal_throughput_per_h: Option<f64>,
    pub seal_drop_pct: Option<f64>,
    pub realtime_ratio: Option<f64>,
    pub missed_deadlines: u64,
    pub segments: u64,
    pub power_w: Option<f64>,
    pub power_delta_pct: Option<f64>,
    pub energy_per_segment_j: Option<f64>,
    pub energy_per_sector_j: Option<f64>,
    /// Simulated GPU figures, kept apart from measured ones.
    pub sim_power_delta_pct: Option<f64>,
    pub sim_energy_per_segment_j: Option<f64>,
    pub sealing_paused_s: f64,
}

/// Why a report file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a comine bench report: {why}")]
    NotReport { path: String, why: String },
    #[error("{path} uses report schema version {found}; this comine reads version {SCHEMA_VERSION}; use the comine that wrote it or re-run the suite")]
    Version { path: String, found: u64 },
}

/// Read and check a `report.json`.
pub fn load(path: &std::path::Path) -> Result<BenchReport, SchemaError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
        path: p.clone(),
        source,
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| SchemaError::NotReport {
        path: p.clone(),
        why: e.to_string(),
    })?;
    if v.get("schema").and_then(|s| s.as_str()) != Some(SCHEMA_ID) {
        return Err(SchemaError::NotReport {
            path: p,
            why: format!("missing \"schema\": \"{SCHEMA_ID}\""),
        });
    }
    let found = v
        .get("schema_version")
        .and_then(|s| s.as_u64())
        .unwrap_or(0);
    if found != SCHEMA_VERSION as u64 {
        return Err(SchemaError::Version { path: p, found });
    }
    serde_json::from_value(v).map_err(|e| SchemaError::NotReport {
        path: p,
        why: e.to_string(),
    })
}

// ---- Records the benchmark writes into the report (`bench` fills them) ----

/// One transcoded (or dropped) segment.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SegmentRecord {
    pub phase: String,
    pub rep: u32,
    pub stream: u32,
    /// Concurrent streams in this window.
    pub streams: u32,
    /// When the segment was due (arrived), started and finished, seconds since run start.
    pub t_due_s: f64,
    pub t_start_s: f64,
    pub t_end_s: f64,
    pub wall_ms: u64,
    pub media_s: f64,
    /// wall / media; the Livepeer realtime duration ratio.
    pub ratio: f64,
    /// Finished after the next segment was due (or never ran).
    pub missed: bool,
    pub decoded_pixels: u64,
    pub encoded_pixels: u64,
    pub encoder: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One GPU's reading.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GpuReading {
    pub index: u32,
    pub power_w: f64,
    /// Board energy counter in joules, where the driver keeps one.
    pub energy_j: Option<f64>,
    pub util_pct: f64,
    pub encoder_pct: f64,
    pub decoder_pct: f64,
    pub temperature_c: f64,
    pub sm_clock_mhz: u32,
    pub mem_clock_mhz: u32,
}

/// All GPUs at one instant, labelled by where the figures come from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GpuSnapshot {
    /// `nvml`, `host` or `simulated`.
    pub source: String,
    pub devices: Vec<GpuReading>,
}

/// Static facts for the hardware fingerprint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct GpuInfo {
    pub model: String,
    pub driver: String,
    pub vbios: String,
    /// `nvml`, `simulated` or `none`.
    pub source: String,
}

/// Something the sealing workload did, seconds after the run started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SealEvent {
    pub t_s: f64,
    /// `phase` (one built-in phase), `sector` (a built-in sector), `run` (an external
    /// command succeeded), `job` (an observed job finished), `failed`, `note`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

// ---- The suite a report was measured with (`bench::suite` parses and validates it) ----

/// One benchmark suite: workloads and phase lengths.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    pub name: String,
    /// Sampler period in milliseconds (1000 = the 1 Hz the issue asks for).
    #[serde(default = "default_interval")]
    pub sample_interval_ms: u64,
    pub seal: SealWorkload,
    pub transcode: TranscodeWorkload,
    pub phases: Phases,
    /// The AI phase's workload; without it the phase is skipped (and says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ai: Option<AiWorkload>,
}

/// The AI phase: the embedded upscale model on synthetic frames.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AiWorkload {
    /// The ONNX model (default: the test model `scripts/ai-setup.sh` converts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// `libonnxruntime.so` (default: the one `scripts/ai-setup.sh` unpacks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnxruntime_lib: Option<String>,
    pub frame_width: u32,
    pub frame_height: u32,
    /// Length of each window (alone, and beside sealing).
    pub seconds: f64,
    /// Intra-op threads (0: one per core).
    #[serde(default)]
    pub threads: u32,
}

fn default_interval() -> u64 {
    1000
}

/// Built-in sealing workload parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SealWorkload {
    /// `2KiB`, `8MiB`, `512MiB`, `32GiB` or `64GiB`.
    pub sector_size: String,
}

/// Transcoding workload parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TranscodeWorkload {
    /// Comma-separated Livepeer presets or custom rungs (see `comine transcode --help`).
    pub ladder: String,
    /// Generated source frame size and rate (ignored with `--input`).
    pub source_width: u32,
    pub source_height: u32,
    pub source_fps: u32,
    /// Segment length in seconds (Livepeer uses 2 s).
    #[serde(default = "default_segment")]
    pub segment_seconds: f64,
    /// Distinct generated segments cycled through by every stream.
    #[serde(default = "default_segments")]
    pub segments: u32,
    /// `auto`, `nvenc` or `x264`.
    #[serde(default = "default_encoder")]
    pub encoder: String,
    #[serde(default = "default_preset")]
    pub x264_preset: String,
}

fn default_segment() -> f64 {
    2.0
}
fn default_segments() -> u32 {
    3
}
fn default_encoder() -> String {
    "auto".into()
}
fn default_preset() -> String {
    "veryfast".into()
}

/// Lengths and repetitions of the four phases.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Phases {
    pub idle: TimedPhase,
    pub seal: TimedPhase,
    pub transcode: TranscodePhase,
    pub combined: CombinedPhase,
}

/// A phase that runs `repeats` windows of `seconds`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TimedPhase {
    pub seconds: f64,
    pub repeats: u32,
}

/// The stream step-up: each step runs `step_seconds` with one more stream.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TranscodePhase {
    pub step_seconds: f64,
    pub max_streams: u32,
    /// Livepeer's sizing rule: streams count as real time while the ratio stays at or below this.
    #[serde(default = "default_target")]
    pub target_ratio: f64,
    /// Repetitions at the chosen stream count.
    pub repeats: u32,
}

fn default_target() -> f64 {
    0.8
}

/// Sealing plus transcoding, with and without steering.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CombinedPhase {
    pub seconds: f64,
    pub repeats: u32,
    /// Steering pauses sealing when the realtime ratio rises above this…
    #[serde(default = "default_pause")]
    pub pause_above: f64,
    /// …and resumes it once the ratio falls below this.
    #[serde(default = "default_resume")]
    pub resume_below: f64,
    /// The scheduler acts only when the ratio has stayed past a watermark this long, ms.
    #[serde(default = "default_sustain")]
    pub sustain_ms: u64,
    /// Minimum time between two sealing changes, ms (the daemon's default is 60 000;
    /// suites use less so short windows see the policy act).
    #[serde(default = "default_dwell")]
    pub min_dwell_ms: u64,
}

fn default_sustain() -> u64 {
    1_000
}
fn default_dwell() -> u64 {
    5_000
}

fn default_pause() -> f64 {
    0.8
}
fn default_resume() -> f64 {
    0.6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_median_and_spread() {
        let s = Stat::of(&[10.0, 12.0, 11.0]).unwrap();
        assert_eq!(s.median, 11.0);
        assert!((s.spread_pct - 18.18).abs() < 0.01);
        assert!(s.noisy);
        let s = Stat::of(&[10.0, 10.5]).unwrap();
        assert_eq!(s.median, 10.25);
        assert!(!s.noisy);
        assert!(Stat::of(&[f64::NAN]).is_none());
    }
}
