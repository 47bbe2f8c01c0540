//! The daemon's HTTP API (axum), versioned under `/v1`; reference in `docs/api.md`.
//! [`auth`] holds the bearer token.
//!
//! Order of checks on `POST /v1/transcode`, cheapest first so a refused request costs
//! little: token (401) → profiles and headers (400) → declared size (413) → free space
//! (507) → a queue slot (503 + Retry-After) → body under the limit (413) → persist (the 2xx
//! promise) →
//! reply now (`?async=1`, 202) or when the job is final.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{json, Value};

pub mod auth;

use super::rendition_store::RenditionStoreError;
use super::{Accepted, Daemon, DaemonError};
use crate::ledger::{export, time, JobClass, JobRecord, JobState, NewJob};
use crate::transcode::Profile;

/// An error reply: `{"error": "...", "code": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
    job_id: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            job_id: None,
        }
    }
    fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
    fn internal(e: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.message, "code": self.code});
        if let Some(id) = &self.job_id {
            body["job_id"] = json!(id);
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of an oversized body may be unread: do not reuse the connection.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> Self {
        match e {
            DaemonError::ShuttingDown => {
                let mut err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "shutting_down",
                    e.to_string(),
                );
                err.retry_after = Some(5);
                err
            }
            DaemonError::InProgress(_) => {
                let mut err = ApiError::new(StatusCode::CONFLICT, "in_progress", e.to_string());
                err.retry_after = Some(1);
                err
            }
            DaemonError::Spool { .. } => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "spool_failed",
                e.to_string(),
            ),
            DaemonError::Ledger(ref l) if matches!(l, crate::ledger::LedgerError::Db(db) if db.is_disk_full()) => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "disk_full", e.to_string())
            }
            DaemonError::Ledger(_) => ApiError::internal(e),
        }
    }
}

type Shared = State<Arc<Daemon>>;

pub fn router(d: Arc<Daemon>) -> Router {
    let auth_layer = middleware::from_fn_with_state(d.clone(), require_token);
    let protected = Router::new()
        .route("/v1/transcode", post(transcode))
        .route("/v1/jobs/{id}", get(job))
        .route("/v1/renditions/{cid}", get(rendition))
        .route("/v1/status", get(status))
        .route("/v1/ledger/export", get(ledger_export))
        .route("/v1/ai/upscale", post(ai_upscale))
        .route_layer(auth_layer.clone());
    let metrics = Router::new().route("/metrics", get(metrics));
    let metrics = if d.config.api.metrics_public {
        metrics
    } else {
        metrics.route_layer(auth_layer)
    };
    Router::new()
        .merge(protected)
        .merge(metrics)
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(d)
}

async fn require_token(State(d): Shared, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if !auth::check(given, &d.token) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token; send `Authorization: Bearer <token>` with the token from <data>/api-token",
        )
        .into_response();
    }
    next.run(req).await
}

/// 200 `ok` when the ledger's database answers (writer and a reader) within
/// `[api] health_timeout_ms`; 503 otherwise. Never waits longer than that bound.
async fn healthz(State(d): Shared) -> Response {
    let bound = std::time::Duration::from_millis(d.config.api.health_timeout_ms.max(1));
    match d.ledger.db().ping(bound).await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check: the ledger did not answer");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ledger_unavailable",
                format!("the ledger did not answer in time: {e}"),
            )
            .into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see docs/api.md",
    )
}

/// Submission parameters from the query string and `X-Comine-*` headers (query wins).
#[derive(Debug)]
struct Submission {
    profiles: Vec<String>,
    manifest_id: Option<String>,
    seq: Option<u64>,
    duration_ms: u64,
    class: JobClass,
    asynchronous: bool,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(|s| Some(s.trim())).map_err(|_| {
            ApiError::bad_request(
                "malformed_header",
                format!("header {name} is not visible ASCII"),
            )
        }),
    }
}

fn parse_u64(value: &str, what: &str) -> Result<u64, ApiError> {
    value.parse().map_err(|_| {
        ApiError::bad_request(
            if what.starts_with("X-") {
                "malformed_header"
            } else {
                "bad_parameter"
            },
            format!("{what} = {value:?} is not a non-negative integer"),
        )
    })
}

fn parse_submission(
    d: &Daemon,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Submission, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| {
            ApiError::bad_request("bad_parameter", format!("malformed query string: {e}"))
        })?;
    let q = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.trim());
    for (k, _) in &pairs {
        if !matches!(
            k.as_str(),
            "profiles" | "manifest_id" | "seq" | "duration_ms" | "class" | "async"
        ) {
            return Err(ApiError::bad_request(
                "bad_parameter",
                format!("unknown query parameter {k:?}; known: profiles, manifest_id, seq, duration_ms, class, async"),
            ));
        }
    }
    let profiles_spec = match q("profiles") {
        Some(p) => p.to_string(),
        None => header_str(headers, "x-comine-profiles")?
            .map(str::to_string)
            .unwrap_or_else(|| d.config.transcode.default_profiles.clone()),
    };
    let parsed = Profile::parse_list(&profiles_spec)
        .map_err(|e| ApiError::bad_request("bad_profiles", e.to_string()))?;
    let _ = parsed;
    let profiles: Vec<String> = profiles_spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();

    let manifest_id = match q("manifest_id") {
        Some(m) => Some(m.to_string()),
        None => header_str(headers, "x-comine-manifest-id")?.map(str::to_string),
    };
    if let Some(m) = &manifest_id {
        if m.is_empty() || m.len() > 256 || m.chars().any(|c| c.is_control()) {
            return Err(ApiError::bad_request(
                "bad_parameter",
                "manifest_id must be 1 to 256 printable characters",
            ));
        }
    }
    let seq = match q("seq") {
        Some(s) => Some(parse_u64(s, "seq")?),
        None => header_str(headers, "x-comine-seq")?
            .map(|s| parse_u64(s, "X-Comine-Seq"))
            .transpose()?,
    };
    let duration_ms = match q("duration_ms") {
        Some(s) => Some(parse_u64(s, "duration_ms")?),
        None => header_str(headers, "x-comine-duration-ms")?
            .map(|s| parse_u64(s, "X-Comine-Duration-Ms"))
            .transpose()?,
    };
    let duration_ms = match duration_ms {
        Some(0) | None => d.config.transcode.default_segment_ms,
        Some(ms) if ms > 600_000 => {
            return Err(ApiError::bad_request(
                "bad_parameter",
                "segment duration above 10 minutes; send shorter segments",
            ))
        }
        Some(ms) => ms,
    };
    let class = match q("class").or(header_str(headers, "x-comine-class")?) {
        None | Some("batch") => JobClass::Batch,
        Some("live") => JobClass::Live,
        Some(other) => {
            return Err(ApiError::bad_request(
                "bad_parameter",
                format!("class {other:?} is not live or batch"),
            ))
        }
    };
    let asynchronous = match q("async") {
        None | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "bad_parameter",
                format!("async = {other:?}; use 1 or 0"),
            ))
        }
    };
    Ok(Submission {
        profiles,
        manifest_id,
        seq,
        duration_ms,
        class,
        asynchronous,
    })
}

/// Reads and discards a refused request's body (bounded), so the client sees our
/// answer instead of a connection reset; nothing is kept in memory.
async fn drain(body: Body) {
    const CAP: usize = 8 << 20;
    let mut body = body;
    let mut seen = 0usize;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map(|d| d.len()).unwrap_or(0);
            if seen > CAP {
                break;
            }
        }
    })
    .await;
}

/// Collects the body up to `max` bytes. Past it, the rest is read and discarded
/// (bounded) so the client receives the 413 rather than a reset.
/// Reads a request body within `[api] body_timeout_secs` and `max` bytes, refusing an empty one:
/// `what` names the upload in the timeout error, `verb` what an empty input leaves nothing to do.
async fn read_upload(
    d: &Daemon,
    body: Body,
    max: usize,
    what: &str,
    verb: &str,
) -> Result<bytes::Bytes, ApiError> {
    let upload = std::time::Duration::from_secs(d.config.api.body_timeout_secs.max(1));
    let bytes = match tokio::time::timeout(upload, read_limited(body, max)).await {
        Ok(read) => read?,
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "{what} took longer than {} s ([api] body_timeout_secs)",
                    upload.as_secs()
                ),
            ))
        }
    };
    if bytes.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_input",
            format!("input is empty (0 bytes): nothing to {verb}"),
        ));
    }
    Ok(bytes)
}

async fn read_limited(mut body: Body, max: usize) -> Result<bytes::Bytes, ApiError> {
    const DRAIN_CAP: usize = 8 << 20;
    let mut buf = bytes::BytesMut::new();
    let mut over = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request("body_read", format!("could not read the request body: {e}"))
        })?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        if over == 0 && buf.len() + data.len() <= max {
            buf.extend_from_slice(data);
        } else {
            over += data.len();
            if over > DRAIN_CAP {
                break;
            }
        }
    }
    if over > 0 {
        return Err(too_large(max as u64));
    }
    Ok(buf.freeze())
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("segment is larger than the limit of {max} bytes ([api] max_body_bytes)"),
    )
}

/// `POST /v1/ai/upscale[?model_id=ID]`: a video segment in, the segment upscaled by an
/// embedded model out (`video/mp2t`, audio kept), accounted as class `ai`. Synchronous.
async fn ai_upscale(
    State(d): Shared,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    use super::ai_video::{self, VideoError};
    let max = d.config.api.max_body_bytes;
    let early = (|| {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query.as_deref().unwrap_or("")).map_err(|e| {
                ApiError::bad_request("bad_parameter", format!("malformed query string: {e}"))
            })?;
        let mut model_id = None;
        for (k, v) in pairs {
            match k.as_str() {
                "model_id" => model_id = Some(v),
                other => {
                    return Err(ApiError::bad_request(
                        "bad_parameter",
                        format!("unknown query parameter {other:?}; known: model_id"),
                    ))
                }
            }
        }
        if let Some(len) = header_str(&headers, "content-length")? {
            if parse_u64(len, "Content-Length")? > max {
                return Err(too_large(max));
            }
        }
        if d.ai.get().is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "ai_disabled",
                VideoError::NotConfigured.to_string(),
            ));
        }
        Ok(model_id)
    })();
    let model_id = match early {
        Ok(m) => m,
        Err(e) => {
            drain(body).await;
            return Err(e);
        }
    };
    let bytes = read_upload(&d, body, max as usize, "the upload", "upscale").await?;
    match ai_video::run(&d, model_id, bytes).await {
        Ok(up) => {
            let r = up.report.renditions.first();
            let mut resp = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "video/mp2t")],
                up.data,
            )
                .into_response();
            let h = resp.headers_mut();
            let mut set = |name: &'static str, v: String| {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(name, v);
                }
            };
            set("x-comine-job-id", up.job_id);
            set("x-comine-model-id", up.model_id);
            set("x-comine-units", up.units.to_string());
            set("x-comine-frames", up.report.decoded_frames.to_string());
            set(
                "x-comine-input-size",
                format!("{}x{}", up.report.input_width, up.report.input_height),
            );
            if let Some(r) = r {
                set("x-comine-output-size", format!("{}x{}", r.width, r.height));
                set("x-comine-encoder", r.encoder.clone());
            }
            Ok(resp)
        }
        Err(e) => {
            let code = e.reason();
            let status = match &e {
                VideoError::NotConfigured => StatusCode::NOT_IMPLEMENTED,
                VideoError::Ai(crate::ai::AiError::UnknownModel { .. }) => StatusCode::NOT_FOUND,
                VideoError::Ai(crate::ai::AiError::Unavailable(_))
                | VideoError::Ai(crate::ai::AiError::OutOfMemory(_)) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                VideoError::Transcode(crate::transcode::TranscodeError::TooLarge { .. }) => {
                    StatusCode::PAYLOAD_TOO_LARGE
                }
                VideoError::Transcode(t) if t.is_bad_input() => StatusCode::UNPROCESSABLE_ENTITY,
                VideoError::Transcode(crate::transcode::TranscodeError::Cancelled) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            let mut err = ApiError::new(status, code, e.to_string());
            if status == StatusCode::SERVICE_UNAVAILABLE {
                err.retry_after = Some(5);
            }
            Err(err)
        }
    }
}

async fn transcode(
    State(d): Shared,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let max = d.config.api.max_body_bytes;
    let early = (|| {
        let sub = parse_submission(&d, query.as_deref(), &headers)?;
        if let Some(len) = header_str(&headers, "content-length")? {
            if parse_u64(len, "Content-Length")? > max {
                return Err(too_large(max));
            }
        }
        low_space(&d)?;
        let slot = d.queue_slots.clone().try_acquire_owned().map_err(|_| {
            d.metrics.rejected.inc();
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "queue_full",
                "the job queue is full; retry after the Retry-After delay",
            );
            e.retry_after = Some(d.retry_after_secs());
            e
        })?;
        Ok((sub, slot))
    })();
    let (sub, slot) = match early {
        Ok(v) => v,
        Err(e) => {
            drain(body).await;
            return Err(e);
        }
    };
    let bytes = read_upload(&d, body, max as usize, "the segment upload", "transcode").await?;
    let new = NewJob {
        class: sub.class,
        manifest_id: sub.manifest_id,
        seq: sub.seq,
        profiles: sub.profiles,
        duration_ms: sub.duration_ms,
        segment_bytes: bytes.len() as u64,
    };
    let job = match d.accept(new, bytes, slot, received).await? {
        Accepted::Duplicate(rec) => {
            let rec = if sub.asynchronous || rec.state.is_final() {
                rec
            } else {
                d.wait_final(&rec.job_id).await?.unwrap_or(rec)
            };
            return Ok((StatusCode::OK, Json(job_json(&rec))).into_response());
        }
        Accepted::New(rec) => rec,
    };
    if sub.asynchronous {
        let body = json!({
            "job_id": job.job_id,
            "state": job.state,
            "url": format!("/v1/jobs/{}", job.job_id),
        });
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    match d.wait_final(&job.job_id).await? {
        Some(rec) => final_response(rec),
        None => {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the daemon is stopping; the job is kept and finishes after restart (GET /v1/jobs/<id>)",
            );
            e.retry_after = Some(5);
            e.job_id = Some(job.job_id);
            Err(e)
        }
    }
}

/// 507 when the data directory's filesystem is below `[store] min_free_bytes`: refusing
/// up front beats a job that fails half-way through writing its renditions.
fn low_space(d: &Daemon) -> Result<(), ApiError> {
    match crate::store::free_space::check(&d.data_dir, d.config.store.min_free_bytes) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(low)) => {
            d.metrics.rejected.inc();
            Err(ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "insufficient_storage",
                low.to_string(),
            ))
        }
        // An unreadable statvfs says nothing about space: let the job through and say so.
        Err(e) => {
            tracing::warn!(error = %e, dir = %d.data_dir.display(), "cannot read free space");
            Ok(())
        }
    }
}

fn final_response(rec: JobRecord) -> Result<Response, ApiError> {
    if rec.state == JobState::Done {
        return Ok((StatusCode::OK, Json(job_json(&rec))).into_response());
    }
    let (code, message) = rec
        .error
        .as_ref()
        .map(|e| (e.code.as_str(), e.message.clone()))
        .unwrap_or(("failed", "job failed".to_string()));
    let (status, code) = match code {
        "bad_input" | "bad_profiles" => (StatusCode::UNPROCESSABLE_ENTITY, "bad_input"),
        "deadline_exceeded" => (StatusCode::GATEWAY_TIMEOUT, "deadline_exceeded"),
        "store_error" => (StatusCode::BAD_GATEWAY, "store_error"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "transcode_failed"),
    };
    let mut e = ApiError::new(status, code, message);
    e.job_id = Some(rec.job_id);
    Err(e)
}

/// The job as the API shows it.
pub fn job_json(r: &JobRecord) -> Value {
    json!({
        "job_id": r.job_id,
        "state": r.state,
        "class": r.class,
        "manifest_id": r.manifest_id,
        "seq": r.seq,
        "profiles": r.profiles,
        "decoded_pixels": r.decoded_pixels,
        "encoded_pixels": r.encoded_pixels,
        "earnings_wei": r.earnings_wei,
        "attempts": r.attempts,
        "device": r.device,
        "received_at": time::rfc3339(r.received_at_ms),
        "finished_at": r.finished_at_ms.map(time::rfc3339),
        "error": r.error,
        "renditions": r.renditions.iter().map(|x| json!({
            "profile": x.profile,
            "cid": x.cid,
            "pixels": x.pixels,
            "bytes": x.bytes,
            "width": x.width,
            "height": x.height,
            "frames": x.frames,
            "encoder": x.encoder,
            "mime": x.mime,
            "url": format!("/v1/renditions/{}", x.cid),
        })).collect::<Vec<_>>(),
    })
}

async fn job(State(d): Shared, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let key = id.clone();
    match d
        .ledger
        .call(move |l| l.get(&key))
        .await
        .map_err(ApiError::internal)?
    {
        Some(rec) => Ok(Json(job_json(&rec))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no job {id}"),
        )),
    }
}

async fn rendition(State(d): Shared, Path(cid): Path<String>) -> Result<Response, ApiError> {
    let content = match d.store.open(&cid).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no content {cid} in the store"),
            ))
        }
        Err(e @ RenditionStoreError::BadCid(_)) => {
            return Err(ApiError::bad_request("bad_cid", e.to_string()))
        }
        Err(e) => {
            d.metrics.store_errors.inc();
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "store_error",
                e.to_string(),
            ));
        }
    };
    let key = cid.clone();
    let mime = d
        .ledger
        .call(move |l| l.rendition(&key))
        .await
        .ok()
        .flatten()
        .map(|r| r.mime)
        .unwrap_or_else(|| "application/octet-stream".into());
    let mut resp = Response::new(Body::from_stream(content.stream));
    if let Ok(v) = HeaderValue::from_str(&mime) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    if let Some(len) = content.len {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok(resp)
}

async fn status(State(d): Shared) -> Result<Json<Value>, ApiError> {
    // The link counters first: each is bumped after its ledger commit, so the ledger's
    // figures read below include at least what they say (a script waiting for `accounted`
    // then reads totals that hold those segments).
    let livepeer = d.livepeer.get().map(|l| l.to_json());
    let ai = d.ai.get().map(|a| a.to_json());
    let sched = d.admission.status();
    let (jobs, today, deals) = d
        .ledger
        .call(|l| {
            let today = l
                .days_since(&time::day_of(time::now_ms()))?
                .into_iter()
                .next()
                .map(|(_, c)| c)
                .unwrap_or_default();
            Ok((l.state_counts()?, today, l.deals()?))
        })
        .await
        .map_err(ApiError::internal)?;
    let store = d.store.clone();
    let store = d
        .ledger
        .db()
        .call(move || store.describe())
        .await
        .map_err(ApiError::internal)?;
    let earnings = earnings_today(&d).await?;
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "listen": d.listen_addr.get().map(|a| a.to_string()),
        "data_dir": d.data_dir.display().to_string(),
        "uptime_secs": d.uptime().as_secs(),
        "queue": {
            "depth": d.queue_len(),
            "max": d.config.api.queue_depth,
            "running": d.metrics.jobs_running.get(),
            "capacity": *d.admission.capacity().borrow(),
            "retry_after_secs": d.retry_after_secs(),
            // Everything accepted and not started (resumed jobs included; `depth` above
            // counts the same jobs, `max` bounds only new submissions).
            "backlog": d.queue_len(),
            "resumed_at_start": d.resumed.load(std::sync::atomic::Ordering::Relaxed),
            // Seconds to run the backlog at the current capacity (null until a job has
            // finished and its run time is known).
            "drain_secs": d.drain_secs(),
        },
        "jobs": jobs,
        "pixels_today": today,
        "price": {
            "price_per_unit_wei": d.config.ledger.price_per_unit_wei,
            "pixels_per_unit": d.config.ledger.pixels_per_unit,
        },
        // Today's (UTC) expected earnings, wei as decimal strings (they outgrow JSON numbers).
        "earnings": {
            "today": earnings,
            "model": d.earnings.model().kind.as_str(),
            "payout_address": d.earnings.payout_address().map(|a| a.to_checksum(None)),
            "receipt_signer": d.earnings.key_address().map(|a| a.to_checksum(None)),
        },
        "scheduler": sched.backend,
        "devices": sched.devices,
        "decisions": sched.decisions,
        "sealing": sched.sealing,
        // The WindowPoSt schedule and the plan the scheduler follows (`comine post status`).
        "post": sched.post,
        // What the controller last confirmed; null with controller "none" (unknown).
        "sealing_paused": sched.sealing_paused,
        // Proof sources, and the PoSt-safe profile's reason when it applies.
        "proofs": sched.proofs,
        "deals": deals,
        "store": store,
        "db": d.ledger.db().stats(),
        // null when `comine run` was not given --orch-addr.
        "livepeer": livepeer,
        // null unless `comine run` registered as a Livepeer AI worker.
        "ai": ai,
    })))
}

async fn ledger_export(State(d): Shared, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
            .map_err(|e| ApiError::bad_request("bad_parameter", e.to_string()))?;
    let q = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let since = match q("since") {
        None => 0,
        Some(s) => match s.parse::<u64>() {
            Ok(secs) => secs * 1000,
            Err(_) => time::parse_date(s).ok_or_else(|| {
                ApiError::bad_request(
                    "bad_parameter",
                    format!("since = {s:?} is not a date (YYYY-MM-DD) or Unix seconds"),
                )
            })?,
        },
    };
    let format = match q("format") {
        None | Some("json") => export::Format::Json,
        Some("csv") => export::Format::Csv,
        Some(other) => {
            return Err(ApiError::bad_request(
                "bad_parameter",
                format!("format {other:?}: use csv or json"),
            ))
        }
    };
    let statement = d
        .ledger
        .call(move |l| export::statement(l, since))
        .await
        .map_err(ApiError::internal)?;
    let ctype = match format {
        export::Format::Csv => "text/csv; charset=utf-8",
        export::Format::Json => "application/json",
    };
    Ok((
        [(header::CONTENT_TYPE, ctype)],
        export::render(&statement, format),
    )
        .into_response())
}

/// Today's expected earnings from the earnings tables (a blocking SQLite read).
async fn earnings_today(d: &Arc<Daemon>) -> Result<crate::earnings::statement::Today, ApiError> {
    let e = d.earnings.clone();
    tokio::task::spawn_blocking(move || e.today())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

async fn metrics(State(d): Shared) -> Response {
    match earnings_today(&d).await {
        Ok(t) => {
            d.metrics
                .earnings_gross_today_wei
                .set(crate::earnings::wei_i64(&t.gross_wei));
            d.metrics
                .earnings_net_today_wei
                .set(crate::earnings::wei_i64(&t.net_wei));
        }
        Err(e) => {
            tracing::warn!(error = %e.message, "cannot read today's expected earnings for /metrics")
        }
    }
    let sched = d.admission.status();
    d.metrics.set_gpus(&sched.devices);
    let sealing: Vec<(String, i64)> = sched.sealing.into_iter().collect();
    d.metrics.set_sealing(&sealing);
    if let Some(post) = &sched.post {
        d.metrics.set_post(post);
    }
    let controller = serde_json::to_value(d.config.seal.controller)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    d.metrics
        .set_sealing_paused(&controller, sched.sealing_paused);
    d.metrics
        .proof_sources
        .set(sched.proofs.sources.len() as i64);
    d.metrics
        .post_safe_profile
        .set(i64::from(sched.proofs.safe_profile.is_some()));
    if let Some(secs) = d.drain_secs() {
        d.metrics.backlog_drain_seconds.set(secs);
    }
    if let Some(lp) = d.livepeer.get() {
        let link = lp.link.get();
        d.metrics.set_livepeer(
            &lp.orch_addr,
            link.state == "registered",
            *lp.capacity.borrow(),
        );
    }
    d.metrics.queue_depth.set(d.queue_len() as i64);
    d.metrics
        .capacity
        .set(*d.admission.capacity().borrow() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        d.metrics.encode(),
    )
        .into_response()
}
