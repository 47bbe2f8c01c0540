//! The AI jobs comine serves: which pipelines and models, where each runs (an embedded
//! model or an HTTP runner), the input limits, and Livepeer's billing units.
//!
//! [`AiService::run`] is what the Livepeer AI-worker link and comine's own API call. It
//! never panics on input: a job that cannot run is an [`AiError`] whose text tells the
//! client what to change.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::config::{Config, ModelConfig, EMBEDDED_PIPELINES};
use super::image::{decode_png, encode_png, png_dimensions};
use super::runner::{extract_data_urls, Health, HttpRunner, OutputFile};
use super::upscaler::Provider;
use super::{AiError, Models};

/// A finished job: the response JSON (its `url`s name `files`) and the billing units.
#[derive(Clone, Debug)]
pub struct AiResult {
    pub json: Value,
    pub files: Vec<OutputFile>,
    pub units: u64,
}

/// Where a model is served from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Embedded,
    Runner { url: String },
}

/// A model as the worker would advertise it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ServedModel {
    pub pipeline: String,
    pub model_id: String,
    pub backend: Backend,
    /// Loaded (embedded) or healthy (runner).
    pub ready: bool,
    pub runner_version: String,
}

/// comine's AI service.
pub struct AiService {
    cfg: Config,
    provider: Provider,
    models: Models,
    runners: Vec<HttpRunner>,
}

/// The version advertised as `runnerVersion` for embedded models.
pub fn embedded_runner_version() -> String {
    format!("comine-{}", env!("CARGO_PKG_VERSION"))
}

impl AiService {
    /// Validates the config and, when it lists embedded models, loads ONNX Runtime (so a
    /// bad library is an error now, not at the first job). Loads no model yet.
    pub fn new(cfg: Config, gpu: u32) -> Result<AiService, AiError> {
        cfg.validate()?;
        let provider = cfg.provider(gpu)?;
        if !cfg.models.is_empty() {
            super::runtime::init(&cfg.library())?;
        }
        let timeout = Duration::from_secs(cfg.job_timeout_secs.max(1));
        let runners = cfg
            .runners
            .iter()
            .map(|r| HttpRunner::new(r.clone(), timeout))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(AiService {
            cfg,
            provider,
            models: Models::new(),
            runners,
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Loads an embedded model (a no-op when it is loaded). Blocking: call it off the
    /// async runtime.
    pub fn load(&self, model_id: &str) -> Result<(), AiError> {
        let m = self.model_config(model_id)?;
        self.models
            .load(
                &m.model_id,
                &m.path(),
                &self.cfg.load_options(self.provider),
            )
            .map(|_| ())
    }

    /// The loaded upscale model for a video job: a warm model must be loaded (its VRAM
    /// lease held), any other is loaded now (blocking: call it off the async runtime).
    pub fn upscaler(&self, model_id: &str) -> Result<Arc<super::Upscaler>, AiError> {
        let m = self.model_config(model_id)?;
        if m.pipeline != "upscale" {
            return Err(AiError::UnknownModel {
                model_id: model_id.into(),
                served: self.served_list(),
            });
        }
        if let Some(u) = self.models.get(model_id, self.provider) {
            return Ok(u);
        }
        if m.warm {
            return Err(AiError::Unavailable(format!(
                "model {model_id} is unloaded: sealing or proofs took its VRAM lease back; retry once it returns (see /v1/status ai.leases)"
            )));
        }
        self.models.load(
            &m.model_id,
            &m.path(),
            &self.cfg.load_options(self.provider),
        )
    }

    /// Unloads an embedded model; jobs already running on it finish first.
    pub fn unload(&self, model_id: &str) -> bool {
        self.models.unload(model_id, self.provider)
    }

    pub fn is_loaded(&self, model_id: &str) -> bool {
        self.models.get(model_id, self.provider).is_some()
    }

    fn model_config(&self, model_id: &str) -> Result<&ModelConfig, AiError> {
        self.cfg
            .models
            .iter()
            .find(|m| m.model_id == model_id)
            .ok_or_else(|| AiError::UnknownModel {
                model_id: model_id.into(),
                served: self.served_list(),
            })
    }

    /// The embedded models in the config.
    pub fn embedded(&self) -> &[ModelConfig] {
        &self.cfg.models
    }

    fn served_list(&self) -> String {
        let mut v: Vec<String> = self
            .cfg
            .models
            .iter()
            .map(|m| format!("{}/{}", m.pipeline, m.model_id))
            .chain(
                self.cfg
                    .runners
                    .iter()
                    .map(|r| format!("{}/{}", r.pipeline, r.model_id)),
            )
            .collect();
        v.sort();
        v.dedup();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }

    /// Every configured model with its readiness (runners are asked for `/health` and
    /// `/version`; `LOADING` is not ready).
    pub async fn served(&self) -> Vec<ServedModel> {
        let mut out: Vec<ServedModel> = self
            .cfg
            .models
            .iter()
            .map(|m| ServedModel {
                pipeline: m.pipeline.clone(),
                model_id: m.model_id.clone(),
                backend: Backend::Embedded,
                ready: self.is_loaded(&m.model_id),
                runner_version: embedded_runner_version(),
            })
            .collect();
        for r in &self.runners {
            let health = r.health().await;
            let ready = matches!(health, Ok(h) if h.ready());
            let version = if ready {
                r.version().await.unwrap_or_default()
            } else {
                String::new()
            };
            if let Ok(Health::Loading) = health {
                tracing::debug!(url = %r.config().url, "runner still LOADING");
            }
            out.push(ServedModel {
                pipeline: r.config().pipeline.clone(),
                model_id: r.config().model_id.clone(),
                backend: Backend::Runner {
                    url: r.config().url.clone(),
                },
                ready,
                runner_version: version,
            });
        }
        out
    }

    /// Runs one job. `name_prefix` names the output files (`<prefix>_<n>.png`).
    pub async fn run(
        &self,
        pipeline: &str,
        model_id: &str,
        request: &Value,
        input: Option<Bytes>,
        name_prefix: &str,
        cancel: CancellationToken,
    ) -> Result<AiResult, AiError> {
        let embedded = self
            .cfg
            .models
            .iter()
            .filter(|m| m.pipeline == pipeline)
            .find(|m| model_id.is_empty() || m.model_id == model_id);
        if let Some(m) = embedded {
            return self
                .run_embedded(m, request, input, name_prefix, cancel)
                .await;
        }
        let runner = self
            .runners
            .iter()
            .filter(|r| r.config().pipeline == pipeline)
            .find(|r| model_id.is_empty() || r.config().model_id == model_id);
        if let Some(r) = runner {
            return run_runner(r, pipeline, request, input, name_prefix, cancel).await;
        }
        let pipelines: Vec<&str> = self
            .cfg
            .models
            .iter()
            .map(|m| m.pipeline.as_str())
            .chain(self.cfg.runners.iter().map(|r| r.pipeline.as_str()))
            .collect();
        if pipelines.contains(&pipeline) {
            Err(AiError::UnknownModel {
                model_id: model_id.into(),
                served: self.served_list(),
            })
        } else {
            let mut served: Vec<&str> = pipelines;
            served.sort();
            served.dedup();
            Err(AiError::UnknownPipeline {
                pipeline: pipeline.into(),
                served: if served.is_empty() {
                    "none".into()
                } else {
                    served.join(", ")
                },
            })
        }
    }

    async fn run_embedded(
        &self,
        m: &ModelConfig,
        request: &Value,
        input: Option<Bytes>,
        name_prefix: &str,
        cancel: CancellationToken,
    ) -> Result<AiResult, AiError> {
        debug_assert!(EMBEDDED_PIPELINES.contains(&m.pipeline.as_str()));
        let Some(model) = self.models.get(&m.model_id, self.provider) else {
            return Err(AiError::Unavailable(format!(
                "model {} is not loaded now (its memory is lent to sealing or proofs); retry later",
                m.model_id
            )));
        };
        let input = input.ok_or_else(|| {
            AiError::BadInput("upscale needs an input image (input_url was empty)".into())
        })?;
        let max = self.cfg.max_input_pixels;
        let seed = request.get("seed").and_then(Value::as_i64).unwrap_or(0);
        let work = tokio::task::spawn_blocking(move || {
            let img = decode_png(&input, max)?;
            let out = model.upscale(&img)?;
            Ok::<_, AiError>((img.area(), encode_png(&out)?))
        });
        let (units, png) = tokio::select! {
            r = work => r.map_err(|e| AiError::Internal(format!("upscale task: {e}")))??,
            _ = cancel.cancelled() => return Err(AiError::Unavailable(
                "the job was cancelled (shutdown, or the model's memory was taken back for sealing)".into())),
        };
        let name = format!("{name_prefix}_0.png");
        Ok(AiResult {
            json: serde_json::json!({"images": [{"url": name, "seed": seed, "nsfw": false}]}),
            files: vec![OutputFile {
                name,
                content_type: "image/png".into(),
                data: Bytes::from(png),
            }],
            units,
        })
    }
}

async fn run_runner(
    r: &HttpRunner,
    pipeline: &str,
    request: &Value,
    input: Option<Bytes>,
    name_prefix: &str,
    cancel: CancellationToken,
) -> Result<AiResult, AiError> {
    let dims = input.as_deref().and_then(|b| png_dimensions(b).ok());
    let units = units_for(pipeline, request, dims);
    let name = match pipeline {
        "audio-to-text" => "input.wav",
        _ => "input.png",
    };
    let out = tokio::select! {
        r = r.run(request, input.map(|b| (name, b))) => r?,
        _ = cancel.cancelled() => return Err(AiError::Unavailable("the job was cancelled".into())),
    };
    let mut json = out.json;
    let files = extract_data_urls(&mut json, name_prefix).map_err(|e| AiError::Runner {
        url: r.config().url.clone(),
        why: e.to_string(),
    })?;
    Ok(AiResult { json, files, units })
}

/// Livepeer's billing units for a job (what the orchestrator debits; see
/// `docs/ai.md`): input h×w for image inputs, h×w×images for text-to-image, h×w×25 for
/// image-to-video, 1000 × characters for text-to-speech, `max_tokens` for llm.
/// Audio-to-text (seconds × 1000) needs the audio's duration, which comine does not
/// decode: 0.
pub fn units_for(pipeline: &str, request: &Value, input_dims: Option<(u32, u32)>) -> u64 {
    let area = input_dims.map(|(w, h)| w as u64 * h as u64).unwrap_or(0);
    let num = |k: &str, d: u64| request.get(k).and_then(Value::as_u64).unwrap_or(d);
    match pipeline {
        "upscale" | "image-to-image" | "segment-anything-2" | "image-to-text" => area,
        "image-to-video" => area * 25,
        "text-to-image" => {
            num("width", 1024) * num("height", 1024) * num("num_images_per_prompt", 1)
        }
        "text-to-speech" => {
            1000 * request
                .get("text")
                .and_then(Value::as_str)
                .map(|t| t.chars().count() as u64)
                .unwrap_or(0)
        }
        "llm" => num("max_tokens", 256),
        _ => 0,
    }
}

/// A shared service handle.
pub type SharedAiService = Arc<AiService>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_units_follow_livepeer() {
        let r = serde_json::json!({});
        assert_eq!(units_for("upscale", &r, Some((64, 48))), 64 * 48);
        assert_eq!(units_for("image-to-video", &r, Some((10, 10))), 2500);
        let t2i = serde_json::json!({"width": 512, "height": 256, "num_images_per_prompt": 2});
        assert_eq!(units_for("text-to-image", &t2i, None), 512 * 256 * 2);
        let tts = serde_json::json!({"text": "héllo"});
        assert_eq!(units_for("text-to-speech", &tts, None), 5000);
        assert_eq!(
            units_for("llm", &serde_json::json!({"max_tokens": 77}), None),
            77
        );
    }

    #[tokio::test]
    async fn unknown_pipeline_and_model_are_named_with_what_is_served() {
        let svc = AiService::new(
            Config {
                runners: vec![super::super::RunnerConfig {
                    url: "http://127.0.0.1:9".into(),
                    token: None,
                    pipeline: "upscale".into(),
                    model_id: "x4".into(),
                }],
                ..Config::default()
            },
            0,
        )
        .unwrap();
        let cancel = CancellationToken::new();
        let err = svc
            .run("llm", "", &Value::Null, None, "t", cancel.clone())
            .await
            .unwrap_err();
        assert!(matches!(err, AiError::UnknownPipeline { .. }), "{err:?}");
        assert!(err.to_string().contains("served: upscale"), "{err}");
        let err = svc
            .run("upscale", "nope", &Value::Null, None, "t", cancel)
            .await
            .unwrap_err();
        assert!(matches!(err, AiError::UnknownModel { .. }), "{err:?}");
        assert!(err.to_string().contains("upscale/x4"), "{err}");
    }
}
