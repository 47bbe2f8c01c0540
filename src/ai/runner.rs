//! Client for ai-runner-compatible HTTP runners: the stock `livepeer/ai-runner` containers
//! and bring-your-own models that implement the same API.
//!
//! A runner serves one pipeline and one model. [`HttpRunner::health`] maps `/health`
//! (`LOADING` is not ready); [`HttpRunner::run`] posts a job (multipart for pipelines with
//! a file input, JSON otherwise) and checks that the answer is the API's response shape.
//! Files a runner returns as `data:` URLs are taken out of the JSON by
//! [`extract_data_urls`], so the worker can upload them as parts named in the JSON.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde_json::Value;

use super::config::RunnerConfig;
use super::AiError;

/// Livepeer capability ids of the AI pipelines (go-livepeer `core/capabilities.go`).
pub const PIPELINES: &[(&str, u32)] = &[
    ("text-to-image", 27),
    ("image-to-image", 28),
    ("image-to-video", 29),
    ("upscale", 30),
    ("audio-to-text", 31),
    ("segment-anything-2", 32),
    ("llm", 33),
    ("image-to-text", 34),
    ("live-video-to-video", 35),
    ("text-to-speech", 36),
];

/// The capability id of a pipeline name.
pub fn capability_of(pipeline: &str) -> Option<u32> {
    PIPELINES
        .iter()
        .find(|(p, _)| *p == pipeline)
        .map(|(_, c)| *c)
}

/// The pipeline name of a capability id.
pub fn pipeline_of(capability: u32) -> Option<&'static str> {
    PIPELINES
        .iter()
        .find(|(_, c)| *c == capability)
        .map(|(p, _)| *p)
}

/// The multipart field that carries a pipeline's input file (None: a JSON pipeline).
pub fn file_field(pipeline: &str) -> Option<&'static str> {
    match pipeline {
        "upscale" | "image-to-image" | "image-to-video" | "segment-anything-2"
        | "image-to-text" => Some("image"),
        "audio-to-text" => Some("audio"),
        _ => None,
    }
}

/// `/health` states (ai-runner's `HealthCheck.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    Loading,
    Ok,
    Idle,
    Error,
}

impl Health {
    /// Whether the runner takes jobs (`OK` or `IDLE`).
    pub fn ready(self) -> bool {
        matches!(self, Health::Ok | Health::Idle)
    }
}

/// A runner's answer: the response JSON and the raw bytes it came as.
#[derive(Clone, Debug)]
pub struct RunnerOutput {
    pub json: Value,
}

/// A file taken out of a response's `data:` URL.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputFile {
    pub name: String,
    pub content_type: String,
    pub data: Bytes,
}

/// One ai-runner-compatible runner.
#[derive(Clone, Debug)]
pub struct HttpRunner {
    cfg: RunnerConfig,
    base: String,
    client: reqwest::Client,
}

impl HttpRunner {
    pub fn new(cfg: RunnerConfig, timeout: Duration) -> Result<HttpRunner, AiError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| AiError::Internal(format!("HTTP client: {e}")))?;
        let base = cfg.url.trim_end_matches('/').to_string();
        Ok(HttpRunner { cfg, base, client })
    }

    pub fn config(&self) -> &RunnerConfig {
        &self.cfg
    }

    fn err(&self, why: impl Into<String>) -> AiError {
        AiError::Runner {
            url: self.cfg.url.clone(),
            why: why.into(),
        }
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(t) = &self.cfg.token {
            req = req.bearer_auth(t);
        }
        req
    }

    async fn get_json(&self, path: &str) -> Result<Value, AiError> {
        let resp = self
            .get(path)
            .send()
            .await
            .map_err(|e| self.err(format!("GET {path}: {e}")))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.err(format!("GET {path}: {e}")))?;
        if !status.is_success() {
            return Err(self.err(format!("GET {path}: HTTP {status}: {}", snippet(&body))));
        }
        serde_json::from_slice(&body).map_err(|_| {
            self.err(format!(
                "GET {path} did not answer JSON (got {:?}); is this an ai-runner?",
                snippet(&body)
            ))
        })
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health, AiError> {
        let v = self.get_json("/health").await?;
        match v.get("status").and_then(Value::as_str) {
            Some("LOADING") => Ok(Health::Loading),
            Some("OK") => Ok(Health::Ok),
            Some("IDLE") => Ok(Health::Idle),
            Some("ERROR") => Ok(Health::Error),
            _ => Err(self.err(format!(
                "/health answered {v}, expected {{\"status\": \"LOADING\"|\"OK\"|\"IDLE\"|\"ERROR\"}}"
            ))),
        }
    }

    /// `GET /version`: the runner's version string (advertised as `runnerVersion`).
    pub async fn version(&self) -> Result<String, AiError> {
        let v = self.get_json("/version").await?;
        v.get("version")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| {
                self.err(format!(
                    "/version answered {v}, expected a \"version\" field"
                ))
            })
    }

    /// `GET /hardware/info`, as the runner sends it.
    pub async fn hardware(&self) -> Result<Value, AiError> {
        self.get_json("/hardware/info").await
    }

    /// Runs one job: `request` is the ai-runner request body (its file field null),
    /// `input` the downloaded file for pipelines that take one.
    pub async fn run(
        &self,
        request: &Value,
        input: Option<(&str, Bytes)>,
    ) -> Result<RunnerOutput, AiError> {
        let pipeline = self.cfg.pipeline.as_str();
        let url = format!("{}/{pipeline}", self.base);
        let mut req = self.client.post(&url);
        if let Some(t) = &self.cfg.token {
            req = req.bearer_auth(t);
        }
        // The model id is the runner's, whatever the request said (it refuses others).
        let mut fields: Vec<(String, String)> = Vec::new();
        if let Some(obj) = request.as_object() {
            for (k, v) in obj {
                match v {
                    Value::Null => {}
                    Value::String(s) => fields.push((k.clone(), s.clone())),
                    other => fields.push((k.clone(), other.to_string())),
                }
            }
        }
        fields.retain(|(k, _)| k != "model_id");
        fields.push(("model_id".into(), self.cfg.model_id.clone()));
        req = match file_field(pipeline) {
            Some(field) => {
                let (filename, data) = input.ok_or_else(|| {
                    AiError::BadInput(format!("pipeline {pipeline} needs an input file"))
                })?;
                let boundary = boundary();
                let body = form_data(&boundary, &fields, field, filename, &data);
                req.header(
                    "Content-Type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(body)
            }
            None => {
                let mut body = serde_json::Map::new();
                for (k, v) in fields {
                    let parsed = request.get(&k).cloned().unwrap_or(Value::String(v));
                    body.insert(k, parsed);
                }
                body.insert("model_id".into(), Value::String(self.cfg.model_id.clone()));
                req.json(&body)
            }
        };
        let resp = req
            .send()
            .await
            .map_err(|e| self.err(format!("POST /{pipeline}: {e}")))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.err(format!("POST /{pipeline}: {e}")))?;
        let json: Value = serde_json::from_slice(&body).map_err(|_| {
            self.err(format!(
                "POST /{pipeline} answered HTTP {status} with something that is not JSON ({:?})",
                snippet(&body)
            ))
        })?;
        if !status.is_success() {
            // ai-runner errors are HTTPError{detail:{msg}}.
            let msg = json
                .pointer("/detail/msg")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| json.to_string());
            return Err(self.err(format!("POST /{pipeline}: HTTP {status}: {msg}")));
        }
        check_shape(pipeline, &json).map_err(|why| self.err(format!("POST /{pipeline}: {why}")))?;
        Ok(RunnerOutput { json })
    }
}

/// Checks a response against the ai-runner response type of its pipeline.
fn check_shape(pipeline: &str, json: &Value) -> Result<(), String> {
    let images = |key: &str| -> Result<(), String> {
        let list = json
            .get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("the response has no \"{key}\" list: {}", snip_json(json)))?;
        if list.is_empty() {
            return Err(format!("the response's \"{key}\" list is empty"));
        }
        for item in list {
            if item.get("url").and_then(Value::as_str).is_none() {
                return Err(format!(
                    "an item of \"{key}\" has no url: {}",
                    snip_json(item)
                ));
            }
        }
        Ok(())
    };
    match pipeline {
        "text-to-image" | "image-to-image" | "upscale" => images("images"),
        "image-to-video" => images("images"),
        "audio-to-text" | "image-to-text" => json
            .get("text")
            .and_then(Value::as_str)
            .map(|_| ())
            .ok_or_else(|| format!("the response has no \"text\": {}", snip_json(json))),
        _ => json
            .as_object()
            .map(|_| ())
            .ok_or_else(|| "the response is not a JSON object".into()),
    }
}

/// Replaces every `"url": "data:<type>;base64,<data>"` in `json` by a file name
/// `<prefix>_<n>.<ext>` and returns the decoded files, in order.
pub fn extract_data_urls(json: &mut Value, prefix: &str) -> Result<Vec<OutputFile>, AiError> {
    let mut files = Vec::new();
    walk(json, prefix, &mut files)?;
    Ok(files)
}

fn walk(v: &mut Value, prefix: &str, files: &mut Vec<OutputFile>) -> Result<(), AiError> {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(url)) = map.get_mut("url") {
                if let Some(rest) = url.strip_prefix("data:").map(str::to_string) {
                    let (meta, data) = rest.split_once(',').ok_or_else(|| {
                        AiError::BadInput("a data: URL in the runner's answer has no comma".into())
                    })?;
                    let ctype = meta.strip_suffix(";base64").ok_or_else(|| {
                        AiError::BadInput("a data: URL in the runner's answer is not base64".into())
                    })?;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(data.trim())
                        .map_err(|e| {
                            AiError::BadInput(format!(
                                "a data: URL in the runner's answer is not valid base64: {e}"
                            ))
                        })?;
                    let ext = match ctype {
                        "image/png" => "png",
                        "image/jpeg" => "jpg",
                        "video/mp4" => "mp4",
                        "audio/wav" | "audio/x-wav" => "wav",
                        _ => "bin",
                    };
                    let name = format!("{prefix}_{}.{ext}", files.len());
                    *url = name.clone();
                    files.push(OutputFile {
                        name,
                        content_type: ctype.to_string(),
                        data: Bytes::from(bytes),
                    });
                }
            }
            for (_, child) in map.iter_mut() {
                walk(child, prefix, files)?;
            }
        }
        Value::Array(items) => {
            for child in items {
                walk(child, prefix, files)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A fresh boundary (std's per-process random hasher keys; no RNG dependency).
fn boundary() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("comine-{:016x}", h.finish())
}

/// A `multipart/form-data` body: text fields, then the file.
fn form_data(
    boundary: &str,
    fields: &[(String, String)],
    file_field: &str,
    filename: &str,
    data: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 256 * (fields.len() + 1));
    let quote = |s: &str| s.replace(['"', '\r', '\n'], "_");
    for (k, v) in fields {
        out.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\n{v}\r\n",
                quote(k)
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{file_field}\"; filename=\"{}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n",
            quote(filename)
        )
        .as_bytes(),
    );
    out.extend_from_slice(data);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(&body[..body.len().min(120)]).into_owned();
    if body.len() > 120 {
        format!("{s}…")
    } else {
        s
    }
}

fn snip_json(v: &Value) -> String {
    snippet(v.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_ids_follow_go_livepeer() {
        assert_eq!(capability_of("upscale"), Some(30));
        assert_eq!(capability_of("audio-to-text"), Some(31));
        assert_eq!(pipeline_of(27), Some("text-to-image"));
        assert_eq!(capability_of("frame-interpolation"), None);
    }

    #[test]
    fn data_urls_become_named_files() {
        let mut v = serde_json::json!({"images": [
            {"url": "data:image/png;base64,iVBORw==", "seed": 1, "nsfw": false},
            {"url": "https://example.invalid/x.png"}
        ]});
        let files = extract_data_urls(&mut v, "7").unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].name, "7_0.png");
        assert_eq!(files[0].content_type, "image/png");
        assert_eq!(&files[0].data[..], &[0x89, b'P', b'N', b'G']);
        assert_eq!(v["images"][0]["url"], "7_0.png");
        assert_eq!(v["images"][1]["url"], "https://example.invalid/x.png");
    }

    #[test]
    fn a_bad_data_url_is_an_error_not_a_panic() {
        let mut v = serde_json::json!({"images": [{"url": "data:image/png;base64,@@@"}]});
        assert!(extract_data_urls(&mut v, "x").is_err());
    }

    #[test]
    fn shapes_are_checked_per_pipeline() {
        assert!(check_shape("upscale", &serde_json::json!({"images": [{"url": "a"}]})).is_ok());
        assert!(check_shape("upscale", &serde_json::json!({"images": []})).is_err());
        assert!(check_shape("upscale", &serde_json::json!({"text": "hi"})).is_err());
        assert!(check_shape(
            "audio-to-text",
            &serde_json::json!({"text": "hi", "chunks": []})
        )
        .is_ok());
    }
}
