//! Livepeer remote AI worker: comine registers with an orchestrator's `AIWorker` service
//! on the same TLS port, secret, keep-alive and backoff as the remote-transcoder link.
//!
//! The worker offers what the daemon says is loaded ([`AiOffer`] on a `watch` channel):
//! one bit and one capacity per pipeline, one `ModelConstraint{warm, capacity,
//! runnerVersion}` per model, and the GPUs as `HardwareInformation`. go-livepeer has no
//! message that updates capacity, so a new offer closes the stream and registers again:
//! at once when capacity drops (the VRAM lease is being taken back), after a dwell time
//! when it rises. An empty offer stays unregistered.
//!
//! Each `NotifyAIJob` becomes one task: parse `requestData`, download `input_url` within
//! a timeout, run it through the daemon's [`AiJobHandler`], and `POST /aiResults` —
//! `multipart/mixed` with one part per file and a JSON part whose `url`s name them, or a
//! `livepeer/ai-worker-error` body. Every job is answered: the orchestrator would
//! otherwise wait 15 minutes. On shutdown new jobs are refused with an error, jobs in
//! flight get a grace period, the rest are cancelled and answered, and only then the
//! stream is dropped (which unregisters).
//!
//! This module knows nothing of models or ledgers: the daemon implements [`AiJobHandler`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::ai_proto::{
    AiCapabilities, AiConstraints, AiWorkerClient, CapabilityConstraints, GpuComputeInfo,
    HardwareInformation, ModelConstraint, NotifyAiJob, RegisterAiWorkerRequest,
};
use super::chain;
use super::client::{grpc_channel, https_client, server_name, ChannelError};
use super::proto::capability_bitstring;
use super::{multipart, tls, LinkStatus, LivepeerError, TlsPolicy, TranscoderConfig};

/// `Authorization` header of `/aiResults` posts.
pub const AI_PROTOCOL_VERSION: &str = "Livepeer-AI-Worker-1.0";
/// Content type of an error answer.
pub const AI_WORKER_ERROR_MIME: &str = "livepeer/ai-worker-error";

/// Livepeer capability id of each AI pipeline (go-livepeer `core/capabilities.go`).
pub const AI_PIPELINES: &[(&str, u32)] = &[
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

/// The capability id of an AI pipeline.
pub fn ai_capability(pipeline: &str) -> Option<u32> {
    AI_PIPELINES
        .iter()
        .find(|(p, _)| *p == pipeline)
        .map(|(_, c)| *c)
}

/// One model the worker offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferedModel {
    pub pipeline: String,
    pub model_id: String,
    /// Jobs it takes at once; 0 is not offered.
    pub capacity: u32,
    pub warm: bool,
    pub runner_version: String,
}

/// A GPU as `HardwareInformation.gpu_info` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuDescription {
    pub id: String,
    /// On `sim` the name says so (e.g. "NVIDIA GeForce RTX 3090 (simulated)").
    pub name: String,
    pub major: u32,
    pub minor: u32,
    pub memory_free: i64,
    pub memory_total: i64,
}

/// What the worker registers with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AiOffer {
    pub models: Vec<OfferedModel>,
    pub gpus: Vec<GpuDescription>,
}

impl AiOffer {
    /// Total capacity offered (0: stay unregistered).
    pub fn capacity(&self) -> u32 {
        self.models.iter().map(|m| m.capacity).sum()
    }

    /// Whether `other` offers less of anything (a model removed or its capacity lowered).
    fn lowers(&self, other: &AiOffer) -> bool {
        self.models.iter().any(|m| {
            other
                .models
                .iter()
                .find(|o| o.pipeline == m.pipeline && o.model_id == m.model_id)
                .is_none_or(|o| o.capacity < m.capacity)
        })
    }

    fn offered(&self) -> Vec<&OfferedModel> {
        self.models.iter().filter(|m| m.capacity > 0).collect()
    }

    /// The registration message.
    pub fn to_request(&self, secret: &str, version: &str) -> RegisterAiWorkerRequest {
        let models = self.offered();
        let caps: Vec<u32> = models
            .iter()
            .filter_map(|m| ai_capability(&m.pipeline))
            .collect();
        let mut capacities: HashMap<u32, u32> = HashMap::new();
        let mut per_capability: HashMap<u32, CapabilityConstraints> = HashMap::new();
        for m in &models {
            let Some(cap) = ai_capability(&m.pipeline) else {
                continue;
            };
            *capacities.entry(cap).or_default() += m.capacity;
            per_capability.entry(cap).or_default().models.insert(
                m.model_id.clone(),
                ModelConstraint {
                    warm: m.warm,
                    capacity: m.capacity,
                    runner_version: m.runner_version.clone(),
                    capacity_in_use: 0,
                },
            );
        }
        let gpu_info: HashMap<String, GpuComputeInfo> = self
            .gpus
            .iter()
            .enumerate()
            .map(|(i, g)| {
                (
                    i.to_string(),
                    GpuComputeInfo {
                        id: g.id.clone(),
                        name: g.name.clone(),
                        major: g.major,
                        minor: g.minor,
                        memory_free: g.memory_free,
                        memory_total: g.memory_total,
                    },
                )
            })
            .collect();
        RegisterAiWorkerRequest {
            secret: secret.to_string(),
            capabilities: Some(AiCapabilities {
                bitstring: capability_bitstring(&caps),
                capacities,
                version: version.to_string(),
                constraints: Some(AiConstraints {
                    min_version: String::new(),
                    per_capability,
                }),
                ..Default::default()
            }),
            hardware: models
                .iter()
                .map(|m| HardwareInformation {
                    pipeline: m.pipeline.clone(),
                    model_id: m.model_id.clone(),
                    gpu_info: gpu_info.clone(),
                })
                .collect(),
        }
    }
}

/// A job as the handler sees it.
#[derive(Clone, Debug)]
pub struct AiJob {
    pub task_id: i64,
    pub pipeline: String,
    /// `request.model_id` (empty when the request names none).
    pub model_id: String,
    /// The ai-runner request body (its file field null).
    pub request: Value,
    /// The downloaded `input_url`, for pipelines that take a file.
    pub input: Option<Bytes>,
}

/// A file of a result.
#[derive(Clone, Debug, PartialEq)]
pub struct AiFile {
    pub name: String,
    pub content_type: String,
    pub data: Bytes,
}

/// A finished job: the response JSON (its `url`s name `files`), and its billing units
/// (Livepeer's: upscale = input width × height).
#[derive(Clone, Debug)]
pub struct AiOutput {
    pub json: Value,
    pub files: Vec<AiFile>,
    pub units: u64,
}

/// Why a job failed: a short reason (for ledgers and metrics) and the message sent to
/// the orchestrator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AiFailure {
    pub reason: String,
    pub message: String,
}

impl AiFailure {
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Self {
        AiFailure {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for AiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

/// A job as it arrives, before its input is fetched: what the daemon's ledger needs to
/// record it (the task id is the orchestrator's request id, the idempotency key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AiJobArrival {
    pub task_id: i64,
    pub pipeline: String,
    /// The request's `model_id` (empty when the request names none or is not JSON).
    pub model_id: String,
}

/// The record of one answered job, for the daemon's ledger.
#[derive(Clone, Debug)]
pub struct AiJobRecord {
    pub task_id: i64,
    pub pipeline: String,
    pub model_id: String,
    /// Units billed (0 on failure).
    pub units: u64,
    pub outcome: Result<(), AiFailure>,
    /// Whether the orchestrator accepted the answer.
    pub delivered: bool,
    pub elapsed: Duration,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the daemon implements: run a job, and record every job's outcome.
pub trait AiJobHandler: Send + Sync + 'static {
    /// Runs one job. `cancel` fires when the job must stop (shutdown after the grace
    /// period, or its model's lease is being taken back); the result is then an error.
    fn run(
        &self,
        job: AiJob,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<AiOutput, AiFailure>>;
    /// Called once per job when it arrives, before it runs, so a job cut short by a crash
    /// leaves a record. The default records nothing (the outcome is still recorded).
    fn received(&self, arrival: AiJobArrival) -> BoxFuture<'_, ()> {
        let _ = arrival;
        Box::pin(async {})
    }
    /// Called once per job after the answer was posted (or could not be).
    fn record(&self, record: AiJobRecord) -> BoxFuture<'_, ()>;
}

/// The AI link's settings; [`AiWorkerConfig::from_transcoder`] shares the transcoder's.
#[derive(Clone, Debug)]
pub struct AiWorkerConfig {
    pub orch_addr: String,
    pub secret: String,
    pub tls: TlsPolicy,
    pub version: String,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A higher offer must hold this long before we re-register (a lower one is at once).
    pub offer_dwell: Duration,
    /// Time to download `input_url`.
    pub input_timeout: Duration,
    pub max_input_bytes: u64,
    /// A job running longer is cancelled and answered with an error.
    pub job_timeout: Duration,
    /// Jobs in flight get this long on shutdown before they are cancelled and answered.
    pub shutdown_grace: Duration,
    pub max_in_flight: usize,
    pub link: Arc<LinkStatus>,
}

impl AiWorkerConfig {
    pub fn from_transcoder(t: &TranscoderConfig) -> Self {
        AiWorkerConfig {
            orch_addr: t.orch_addr.clone(),
            secret: t.secret.clone(),
            tls: t.tls.clone(),
            version: t.version.clone(),
            keepalive_interval: t.keepalive_interval,
            keepalive_timeout: t.keepalive_timeout,
            backoff_initial: t.backoff_initial,
            backoff_max: t.backoff_max,
            offer_dwell: t.capacity_dwell,
            input_timeout: Duration::from_secs(30),
            max_input_bytes: 64 << 20,
            job_timeout: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(20),
            max_in_flight: 16,
            link: Arc::default(),
        }
    }
}

struct Shared {
    cfg: AiWorkerConfig,
    handler: Arc<dyn AiJobHandler>,
    in_flight: Arc<Semaphore>,
    /// Fires for jobs in flight once the shutdown grace is over.
    cancel_jobs: CancellationToken,
    draining: std::sync::atomic::AtomicBool,
}

enum Ended {
    Shutdown,
    Fatal(LivepeerError),
    Reoffer,
    Fault(String),
}

/// Runs the AI worker link until `shutdown` (then `Ok`, after answering every job) or a
/// fatal refusal ("invalid secret").
pub async fn run_ai_worker(
    cfg: AiWorkerConfig,
    mut offer: watch::Receiver<AiOffer>,
    handler: Arc<dyn AiJobHandler>,
    shutdown: CancellationToken,
) -> Result<(), LivepeerError> {
    let name = server_name(&cfg.orch_addr)?;
    let grpc_tls = tls::client_config(&cfg.tls, &[b"h2"])?;
    let http_tls = tls::client_config(&cfg.tls, &[b"h2", b"http/1.1"])?;
    let shared = Arc::new(Shared {
        in_flight: Arc::new(Semaphore::new(cfg.max_in_flight.max(1))),
        cfg,
        handler,
        cancel_jobs: CancellationToken::new(),
        draining: Default::default(),
    });
    let tracker = TaskTracker::new();
    let link = shared.cfg.link.clone();
    let mut backoff = shared.cfg.backoff_initial;
    let result = loop {
        let current = offer.borrow_and_update().clone();
        if current.capacity() == 0 {
            link.set_state("waiting_for_capacity");
            tokio::select! {
                r = offer.changed() => if r.is_err() { shutdown.cancelled().await; break Ok(()) } else { continue },
                _ = shutdown.cancelled() => break Ok(()),
            }
        }
        link.update(|s| {
            s.state = "connecting";
            s.registered_capacity = current.capacity();
            s.registrations += 1;
        });
        let started = Instant::now();
        let ended = connection(
            &shared, &current, &mut offer, &tracker, &name, &grpc_tls, &http_tls, &shutdown,
        )
        .await;
        match ended {
            Ended::Shutdown => break Ok(()),
            Ended::Fatal(e) => {
                link.update(|s| {
                    s.state = "fatal";
                    s.last_fault = Some(e.to_string());
                });
                break Err(e);
            }
            Ended::Reoffer => backoff = shared.cfg.backoff_initial,
            Ended::Fault(reason) => {
                if started.elapsed() >= Duration::from_secs(10) {
                    backoff = shared.cfg.backoff_initial;
                }
                tracing::warn!(orch = %shared.cfg.orch_addr, %reason, retry_in_ms = backoff.as_millis() as u64, "AI worker connection lost; reconnecting");
                link.update(|s| {
                    s.state = "backoff";
                    s.last_fault = Some(reason.clone());
                });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => break Ok(()),
                }
                backoff = (backoff * 2).min(shared.cfg.backoff_max);
            }
        }
    };
    // Jobs still running (the connection ended before they did) are answered too.
    drain(&shared, &tracker).await;
    if result.is_ok() {
        link.set_state("stopped");
    }
    result
}

/// Waits for jobs in flight up to the grace period, then cancels the rest (they answer
/// with an error) and waits for their answers.
async fn drain(shared: &Shared, tracker: &TaskTracker) {
    shared
        .draining
        .store(true, std::sync::atomic::Ordering::SeqCst);
    tracker.close();
    if tokio::time::timeout(shared.cfg.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            jobs = tracker.len(),
            "AI jobs still running after the shutdown grace; cancelling and answering them"
        );
        shared.cancel_jobs.cancel();
        tracker.wait().await;
    }
}

/// Resolves when the offer changed in a way that needs a new registration: any decrease
/// at once, an increase once it has held for `dwell`.
async fn wait_reoffer(rx: &mut watch::Receiver<AiOffer>, registered: &AiOffer, dwell: Duration) {
    'outer: loop {
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        let v = rx.borrow_and_update().clone();
        if &v == registered {
            continue;
        }
        if registered.lowers(&v) {
            return;
        }
        let until = tokio::time::Instant::now() + dwell;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return,
                r = rx.changed() => {
                    if r.is_err() {
                        tokio::time::sleep_until(until).await;
                        return;
                    }
                    let v = rx.borrow_and_update().clone();
                    if &v == registered {
                        continue 'outer;
                    }
                    if registered.lowers(&v) {
                        return;
                    }
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    shared: &Arc<Shared>,
    current: &AiOffer,
    offer: &mut watch::Receiver<AiOffer>,
    tracker: &TaskTracker,
    name: &ServerName<'static>,
    grpc_tls: &Arc<rustls::ClientConfig>,
    http_tls: &Arc<rustls::ClientConfig>,
    shutdown: &CancellationToken,
) -> Ended {
    let cfg = &shared.cfg;
    let channel = tokio::select! {
        r = grpc_channel(&cfg.orch_addr, grpc_tls, name, cfg.keepalive_interval, cfg.keepalive_timeout) => match r {
            Ok(c) => c,
            Err(ChannelError::BadAddress(e)) => return Ended::Fatal(e),
            Err(ChannelError::Unreachable(why)) => return Ended::Fault(why),
        },
        _ = shutdown.cancelled() => return Ended::Shutdown,
    };
    let http = match https_client(http_tls) {
        Ok(c) => c,
        Err(e) => return Ended::Fatal(e),
    };
    let request = current.to_request(&cfg.secret, &cfg.version);
    let offered: Vec<String> = current
        .offered()
        .iter()
        .map(|m| format!("{}/{}x{}", m.pipeline, m.model_id, m.capacity))
        .collect();
    tracing::info!(orch = %cfg.orch_addr, models = ?offered, "registering as a remote AI worker");
    let mut client = AiWorkerClient::new(channel);
    let change = wait_reoffer(offer, current, cfg.offer_dwell);
    tokio::pin!(change);
    let mut stream = tokio::select! {
        r = client.register_ai_worker(request) => match r {
            Ok(resp) => resp.into_inner(),
            Err(status) => return classify(&cfg.orch_addr, status),
        },
        _ = &mut change => return Ended::Reoffer,
        _ = shutdown.cancelled() => return Ended::Shutdown,
    };
    cfg.link.set_state("registered");
    tracing::info!(orch = %cfg.orch_addr, "AI job stream open");
    loop {
        tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(n)) => dispatch(shared, n, &http, tracker),
                Ok(None) => return Ended::Fault("the orchestrator ended the AI job stream".into()),
                Err(status) => return classify(&cfg.orch_addr, status),
            },
            _ = &mut change => {
                tracing::info!("the AI offer changed; registering again");
                return Ended::Reoffer;
            }
            _ = shutdown.cancelled() => {
                // Keep the stream (and so the registration) while jobs in flight finish;
                // jobs that still arrive are answered with an error at once.
                cfg.link.set_state("draining");
                let drained = drain(shared, tracker);
                tokio::pin!(drained);
                loop {
                    tokio::select! {
                        _ = &mut drained => return Ended::Shutdown,
                        msg = stream.message() => match msg {
                            Ok(Some(n)) => {
                                let (shared, http) = (shared.clone(), http.clone());
                                tokio::spawn(async move { refuse(&shared, n, &http, "the worker is shutting down").await });
                            }
                            _ => { drained.as_mut().await; return Ended::Shutdown }
                        },
                    }
                }
            }
        }
    }
}

fn classify(addr: &str, status: tonic::Status) -> Ended {
    if status.message() == "invalid secret" {
        return Ended::Fatal(LivepeerError::InvalidSecret {
            addr: addr.to_string(),
        });
    }
    let mut reason = format!("{:?}: {}", status.code(), status.message());
    if let Some(src) = std::error::Error::source(&status) {
        reason.push_str(": ");
        reason.push_str(&chain(src));
    }
    Ended::Fault(reason)
}

fn dispatch(shared: &Arc<Shared>, n: NotifyAiJob, http: &reqwest::Client, tracker: &TaskTracker) {
    let span = tracing::info_span!("ai_job", task_id = n.task_id);
    let Ok(permit) = shared.in_flight.clone().try_acquire_owned() else {
        let (shared, http) = (shared.clone(), http.clone());
        tracker.spawn(
            async move { refuse(&shared, n, &http, "the AI worker is at capacity").await }
                .instrument(span),
        );
        return;
    };
    let (shared, http) = (shared.clone(), http.clone());
    tracker.spawn(
        async move {
            handle(&shared, n, &http).await;
            drop(permit);
        }
        .instrument(span),
    );
}

/// Answers a job we will not run, and records it.
async fn refuse(shared: &Shared, n: NotifyAiJob, http: &reqwest::Client, why: &str) {
    let pipeline = n
        .ai_job_data
        .as_ref()
        .map(|d| d.pipeline.clone())
        .unwrap_or_default();
    let model_id = n
        .ai_job_data
        .as_ref()
        .map(|d| request_model(&d.request_data))
        .unwrap_or_default();
    shared
        .handler
        .received(AiJobArrival {
            task_id: n.task_id,
            pipeline: pipeline.clone(),
            model_id: model_id.clone(),
        })
        .await;
    let failure = AiFailure::new("unavailable", why);
    let delivered = post_result(shared, http, n.task_id, &pipeline, Err(&failure)).await;
    shared
        .handler
        .record(AiJobRecord {
            task_id: n.task_id,
            pipeline,
            model_id,
            units: 0,
            outcome: Err(failure),
            delivered,
            elapsed: Duration::ZERO,
        })
        .await;
}

async fn handle(shared: &Shared, n: NotifyAiJob, http: &reqwest::Client) {
    let started = Instant::now();
    let data = n.ai_job_data.clone().unwrap_or_default();
    let pipeline = data.pipeline.clone();
    let model_id = request_model(&data.request_data);
    // In the ledger before anything can fail or take long: a crash mid-job leaves a record.
    shared
        .handler
        .received(AiJobArrival {
            task_id: n.task_id,
            pipeline: pipeline.clone(),
            model_id: model_id.clone(),
        })
        .await;
    let result = async {
        let parsed: Value = serde_json::from_slice(&data.request_data).map_err(|e| {
            AiFailure::new(
                "bad_request",
                format!("requestData is not JSON ({e}); expected {{\"input_url\", \"request\"}}"),
            )
        })?;
        let request = parsed.get("request").cloned().unwrap_or(Value::Null);
        let input = match parsed.get("input_url").and_then(Value::as_str) {
            Some(url) if !url.is_empty() => Some(download(shared, http, url).await?),
            _ => None,
        };
        let job = AiJob {
            task_id: n.task_id,
            pipeline: pipeline.clone(),
            model_id: model_id.clone(),
            request,
            input,
        };
        let cancel = shared.cancel_jobs.child_token();
        let run = shared.handler.run(job, cancel.clone());
        match tokio::time::timeout(shared.cfg.job_timeout, run).await {
            Ok(r) => r,
            Err(_) => {
                cancel.cancel();
                Err(AiFailure::new(
                    "timeout",
                    format!(
                        "the job did not finish within {} s",
                        shared.cfg.job_timeout.as_secs()
                    ),
                ))
            }
        }
    }
    .await;
    let (delivered, units, outcome) = match result {
        Ok(out) => {
            let delivered = post_result(shared, http, n.task_id, &pipeline, Ok(&out)).await;
            (delivered, out.units, Ok(()))
        }
        Err(f) => {
            tracing::warn!(%pipeline, model_id = %model_id, reason = %f.reason, "AI job failed: {}", f.message);
            let delivered = post_result(shared, http, n.task_id, &pipeline, Err(&f)).await;
            (delivered, 0, Err(f))
        }
    };
    shared
        .handler
        .record(AiJobRecord {
            task_id: n.task_id,
            pipeline,
            model_id,
            units,
            outcome,
            delivered,
            elapsed: started.elapsed(),
        })
        .await;
}

/// The `request.model_id` of a job's `requestData` (empty when there is none).
fn request_model(request_data: &[u8]) -> String {
    serde_json::from_slice::<Value>(request_data)
        .ok()
        .and_then(|v| {
            v.pointer("/request/model_id")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_default()
}

async fn download(shared: &Shared, http: &reqwest::Client, url: &str) -> Result<Bytes, AiFailure> {
    let limit = shared.cfg.max_input_bytes;
    let timeout = shared.cfg.input_timeout;
    let fetch = async {
        let resp = http.get(url).send().await.map_err(|e| {
            AiFailure::new("input_download", format!("GET input_url: {}", chain(&e)))
        })?;
        if !resp.status().is_success() {
            return Err(AiFailure::new(
                "input_download",
                format!("GET input_url answered HTTP {}", resp.status()),
            ));
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                AiFailure::new(
                    "input_download",
                    format!("reading input_url: {}", chain(&e)),
                )
            })?;
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(AiFailure::new(
                    "input_too_large",
                    format!("the input is larger than {limit} bytes"),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .unwrap_or_else(|_| {
            Err(AiFailure::new(
                "input_timeout",
                format!("input_url did not download within {} s", timeout.as_secs()),
            ))
        })
}

/// `POST /aiResults`; returns whether the orchestrator accepted it.
async fn post_result(
    shared: &Shared,
    http: &reqwest::Client,
    task_id: i64,
    pipeline: &str,
    result: Result<&AiOutput, &AiFailure>,
) -> bool {
    let cfg = &shared.cfg;
    let (content_type, body) = match result {
        Ok(out) => {
            let boundary = multipart::boundary();
            let mut parts: Vec<multipart::Part> = out
                .files
                .iter()
                .map(|f| multipart::Part {
                    headers: vec![
                        ("Content-Type".into(), f.content_type.clone()),
                        ("Content-Length".into(), f.data.len().to_string()),
                        (
                            "Content-Disposition".into(),
                            format!("attachment; filename={}", f.name),
                        ),
                    ],
                    body: f.data.clone(),
                })
                .collect();
            let json = Bytes::from(out.json.to_string());
            parts.push(multipart::Part {
                headers: vec![
                    ("Content-Type".into(), "application/json".into()),
                    ("Content-Length".into(), json.len().to_string()),
                ],
                body: json,
            });
            (
                format!("multipart/mixed; boundary={boundary}"),
                multipart::encode(&boundary, &parts),
            )
        }
        Err(f) => (
            AI_WORKER_ERROR_MIME.to_string(),
            f.message.clone().into_bytes(),
        ),
    };
    let url = format!("https://{}/aiResults", cfg.orch_addr);
    for attempt in 0..3u32 {
        let sent = http
            .post(&url)
            .header("Authorization", AI_PROTOCOL_VERSION)
            .header("Credentials", &cfg.secret)
            .header("TaskId", task_id.to_string())
            .header("Pipeline", pipeline)
            .header("Content-Type", &content_type)
            .timeout(Duration::from_secs(60))
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                tracing::error!(task_id, %status, %text, "the orchestrator refused our AI result");
                return false;
            }
            Err(e) => {
                tracing::warn!(task_id, attempt, error = %chain(&e), "posting the AI result failed");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: &str, cap: u32) -> OfferedModel {
        OfferedModel {
            pipeline: "upscale".into(),
            model_id: id.into(),
            capacity: cap,
            warm: true,
            runner_version: "comine-0.1.0".into(),
        }
    }

    #[test]
    fn registration_lists_only_offered_models_with_their_capacity() {
        let offer = AiOffer {
            models: vec![model("a", 2), model("b", 0)],
            gpus: vec![GpuDescription {
                id: "sim-0".into(),
                name: "NVIDIA GeForce RTX 3090 (simulated)".into(),
                major: 8,
                minor: 6,
                memory_free: 1 << 30,
                memory_total: 24 << 30,
            }],
        };
        let req = offer.to_request("s", "0.8.0");
        let caps = req.capabilities.unwrap();
        assert_eq!(caps.bitstring, vec![1 << 30]);
        assert_eq!(caps.capacities.get(&30), Some(&2));
        let models = &caps.constraints.unwrap().per_capability[&30].models;
        assert_eq!(models.len(), 1);
        assert!(models["a"].warm);
        assert_eq!(models["a"].capacity, 2);
        assert_eq!(req.hardware.len(), 1);
        assert_eq!(req.hardware[0].gpu_info["0"].memory_total, 24 << 30);
    }

    #[test]
    fn lowering_is_detected_and_raising_is_not() {
        let a = AiOffer {
            models: vec![model("a", 2)],
            gpus: vec![],
        };
        let less = AiOffer {
            models: vec![model("a", 1)],
            gpus: vec![],
        };
        let gone = AiOffer::default();
        assert!(a.lowers(&less));
        assert!(a.lowers(&gone));
        assert!(!less.lowers(&a));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lower_offer_reregisters_at_once_a_higher_one_after_the_dwell() {
        let one = AiOffer {
            models: vec![model("a", 1)],
            gpus: vec![],
        };
        let (tx, mut rx) = watch::channel(one.clone());
        let registered = one.clone();
        let dwell = Duration::from_secs(10);
        let waiter = tokio::spawn(async move { wait_reoffer(&mut rx, &registered, dwell).await });
        tx.send(AiOffer {
            models: vec![model("a", 2)],
            gpus: vec![],
        })
        .unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished(), "a raise waits for the dwell time");
        tx.send(AiOffer::default()).unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(waiter.is_finished(), "a removal re-registers at once");
    }
}
