//! The `[ai]` config section: the runtime library, threads, tiles, limits, the embedded
//! models (`[[ai.models]]`) and the HTTP runners (`[[ai.runners]]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::upscaler::{LoadOptions, Provider};
use super::AiError;

/// Pipelines comine runs with its own models.
pub const EMBEDDED_PIPELINES: &[&str] = &["upscale"];

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `libonnxruntime.so`; default: the one `scripts/ai-setup.sh` unpacks into the cache.
    pub onnxruntime_lib: Option<PathBuf>,
    /// `cpu`, or `cuda` (needs the onnxruntime-gpu library).
    pub provider: String,
    /// Intra-op threads per model (0: one per core).
    pub threads: usize,
    /// Tile edge in input pixels for large frames (0: whole frames).
    pub tile: u32,
    /// Largest input image, in pixels (width × height).
    pub max_input_pixels: u64,
    /// Seconds to download a job's `input_url`.
    pub input_timeout_secs: u64,
    /// Seconds a job may run before it is answered with an error.
    pub job_timeout_secs: u64,
    /// Moved to `[scheduler] model_reserve_bytes` (the scheduler holds the VRAM leases);
    /// still read, in MiB, and fed to the scheduler with a start-up warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vram_reserve_mib: Option<u64>,
    /// Moved to `[scheduler] model_return_after_ms`; still read, in seconds, and fed to the
    /// scheduler with a start-up warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_return_secs: Option<u64>,
    /// Seconds jobs in flight get when their model's lease is taken back (the daemon
    /// carries the take-back out); the rest are answered with an error.
    pub lease_drain_secs: u64,
    pub models: Vec<ModelConfig>,
    pub runners: Vec<RunnerConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            onnxruntime_lib: None,
            provider: "cpu".into(),
            threads: 0,
            tile: 256,
            max_input_pixels: 2048 * 2048,
            input_timeout_secs: 30,
            job_timeout_secs: 300,
            vram_reserve_mib: None,
            lease_return_secs: None,
            lease_drain_secs: 10,
            models: Vec::new(),
            runners: Vec::new(),
        }
    }
}

/// A model comine runs itself.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `upscale`.
    pub pipeline: String,
    /// The id advertised to the orchestrator, e.g. `realesr-animevideov3-x4`.
    pub model_id: String,
    /// The `.onnx` file; default: `<cache>/models/<model_id>.onnx`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Load as soon as there is headroom and keep it loaded (advertised `warm`).
    #[serde(default = "yes")]
    pub warm: bool,
    /// VRAM the loaded model holds on a GPU, MiB (its lease size).
    #[serde(default = "default_vram_mib")]
    pub vram_mib: u64,
}

fn yes() -> bool {
    true
}
fn default_vram_mib() -> u64 {
    1024
}

/// An ai-runner-compatible HTTP runner (a stock or BYO container).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerConfig {
    /// Base URL, e.g. `http://127.0.0.1:8000`.
    pub url: String,
    /// Bearer token (the container's `AUTH_TOKEN`).
    #[serde(default)]
    pub token: Option<String>,
    pub pipeline: String,
    pub model_id: String,
}

impl Config {
    /// The library to load.
    pub fn library(&self) -> PathBuf {
        self.onnxruntime_lib
            .clone()
            .unwrap_or_else(super::runtime::default_library)
    }

    /// Whether any model or runner is configured (the AI worker registers only then).
    pub fn enabled(&self) -> bool {
        !self.models.is_empty() || !self.runners.is_empty()
    }

    pub fn provider(&self, gpu: u32) -> Result<Provider, AiError> {
        match self.provider.as_str() {
            "cpu" => Ok(Provider::Cpu),
            "cuda" => Ok(Provider::Cuda { device: gpu }),
            other => Err(AiError::Runtime(format!(
                "[ai] provider = {other:?} is not known; use \"cpu\" or \"cuda\""
            ))),
        }
    }

    pub fn load_options(&self, provider: Provider) -> LoadOptions {
        LoadOptions {
            threads: self.threads,
            tile: self.tile,
            provider,
        }
    }

    /// How long jobs in flight get when their model's lease is taken back.
    pub fn drain_bound(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.lease_drain_secs)
    }

    /// Checks what can be checked without loading anything.
    pub fn validate(&self) -> Result<(), AiError> {
        self.provider(0)?;
        if self.tile != 0 && self.tile < 32 {
            return Err(AiError::Runtime(format!(
                "[ai] tile = {} is too small; use 0 (no tiling) or at least 32",
                self.tile
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &self.models {
            if !EMBEDDED_PIPELINES.contains(&m.pipeline.as_str()) {
                return Err(AiError::Runtime(format!(
                    "[[ai.models]] {}: pipeline {:?} is not run by comine's own models (only {}); \
                     use an [[ai.runners]] entry for it",
                    m.model_id,
                    m.pipeline,
                    EMBEDDED_PIPELINES.join(", ")
                )));
            }
            if !seen.insert((m.pipeline.clone(), m.model_id.clone())) {
                return Err(AiError::Runtime(format!(
                    "[[ai.models]] {} for {} is listed twice",
                    m.model_id, m.pipeline
                )));
            }
        }
        for r in &self.runners {
            if !(r.url.starts_with("http://") || r.url.starts_with("https://")) {
                return Err(AiError::Runtime(format!(
                    "[[ai.runners]] url {:?} must start with http:// or https://",
                    r.url
                )));
            }
            if super::runner::capability_of(&r.pipeline).is_none() {
                return Err(AiError::Runtime(format!(
                    "[[ai.runners]] {}: pipeline {:?} is not a Livepeer AI pipeline",
                    r.url, r.pipeline
                )));
            }
        }
        Ok(())
    }
}

impl ModelConfig {
    pub fn path(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| super::default_model_path(&self.model_id))
    }
}
