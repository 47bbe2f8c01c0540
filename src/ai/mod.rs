//! AI video jobs: the models comine runs itself and the ai-runner containers it drives.
//!
//! - [`runtime`]: ONNX Runtime, loaded once per process from a chosen `libonnxruntime.so`,
//!   with a clear error for a missing or mismatched library.
//! - [`upscaler`]: a super-resolution model (the test model is Real-ESRGAN's compact
//!   `realesr-animevideov3-x4`), tiled, on CPU or CUDA.
//! - [`models`]: the loaded models, at most one copy of a model per device.
//! - [`image`]: PNG in and out, the pixel limit, the planar float layout.
//! - [`runner`]: the client for ai-runner-compatible HTTP runners (BYO models).
//! - [`in_flight`]: the jobs running on each model, drained when the scheduler takes the
//!   model's VRAM lease back (`sched::lease` decides; `daemon::ai` carries it out).
//! - [`config`]: the `[ai]` config section.
//!
//! `docs/ai.md` describes the worker as a whole; `scripts/ai-setup.sh` fetches the runtime
//! and converts the test model into [`cache_dir`].

pub mod cli;
pub mod config;
pub mod image;
pub mod in_flight;
pub mod models;
pub mod runner;
pub mod runtime;
pub mod service;
pub mod upscaler;

use std::path::PathBuf;

pub use config::{Config, ModelConfig, RunnerConfig};
pub use image::RgbImage;
pub use models::Models;
pub use service::{AiResult, AiService};
pub use upscaler::{LoadOptions, Provider, Upscaler};

/// The id of the test model `scripts/ai-setup.sh` converts.
pub const TEST_MODEL_ID: &str = "realesr-animevideov3-x4";

/// Where `scripts/ai-setup.sh` keeps the runtime, the venv and the converted models:
/// `${XDG_CACHE_HOME:-$HOME/.cache}/comine/ai`, outside any clone.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("comine").join("ai")
}

/// The converted test model's path in the cache.
pub fn default_model_path(model_id: &str) -> PathBuf {
    cache_dir().join("models").join(format!("{model_id}.onnx"))
}

/// Why an AI job or a model failed. Every variant says what to do; the worker sends the
/// text back to the orchestrator as `livepeer/ai-worker-error`.
#[derive(Debug, thiserror::Error)]
pub enum AiError {
    /// The ONNX Runtime library is missing, too old, or would not start.
    #[error("{0}")]
    Runtime(String),
    /// The model file is missing or is not what it claims.
    #[error("{0}")]
    Model(String),
    /// The job's input cannot be used.
    #[error("bad input: {0}")]
    BadInput(String),
    #[error("the image is {width}x{height} = {} pixels, above the limit of {max_pixels}; send a smaller image", *width as u64 * *height as u64)]
    TooLarge {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error("model {model_id:?} is not served here (served: {served}); ask for one of those")]
    UnknownModel { model_id: String, served: String },
    #[error("pipeline {pipeline:?} is not served here (served: {served})")]
    UnknownPipeline { pipeline: String, served: String },
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// An HTTP runner failed or answered something that is not the ai-runner API.
    #[error("runner {url}: {why}")]
    Runner { url: String, why: String },
    /// The model's VRAM was taken back for sealing or a proof, or the worker is stopping.
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AiError {
    /// A short machine-readable reason for ledgers and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AiError::Runtime(_) => "runtime",
            AiError::Model(_) => "model_error",
            AiError::BadInput(_) => "bad_input",
            AiError::TooLarge { .. } => "too_large",
            AiError::UnknownModel { .. } => "unknown_model",
            AiError::UnknownPipeline { .. } => "unknown_pipeline",
            AiError::OutOfMemory(_) => "out_of_memory",
            AiError::Runner { .. } => "runner_error",
            AiError::Unavailable(_) => "unavailable",
            AiError::Internal(_) => "internal",
        }
    }
}
