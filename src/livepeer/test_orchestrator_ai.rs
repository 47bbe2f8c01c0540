//! **Test double** of a go-livepeer orchestrator's `AIWorker` side (part of
//! [`super::test_orchestrator::TestOrchestrator`], on the same TLS port).
//!
//! Like go-livepeer it takes registrations on `net.AIWorker/RegisterAIWorker` (refusing a
//! bad secret), picks the first worker whose model has capacity left and holds one unit
//! until the job ends, serves the job's input at `input_url`, and receives `/aiResults`.
//! It checks every header and part, more strictly than go-livepeer: `Authorization`,
//! `Credentials`, `TaskId`, `Pipeline`, the multipart layout (file parts with
//! `Content-Type`, an exact `Content-Length` and `Content-Disposition: attachment;
//! filename=…`, then one `application/json` part), that the JSON's `url` fields are the
//! part file names in order, and for `upscale` that every PNG decodes at exactly 4× the
//! input PNG's size. Any deviation is [`AiOutcome::Invalid`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::body::Body;
use tonic::Status;

use super::ai_proto::{AiJobData, NotifyAiJob, RegisterAiWorkerRequest};
use super::ai_worker::{ai_capability, AI_PROTOCOL_VERSION, AI_WORKER_ERROR_MIME};
use super::multipart;

/// What `input_url` does for a job.
#[derive(Clone, Debug)]
pub enum AiInput {
    /// No `input_url` (JSON pipelines).
    None,
    /// Serves these bytes.
    Bytes(Bytes),
    /// Accepts the request and never answers (an `input_url` that times out).
    Stall,
}

/// One AI job to hand to a worker.
#[derive(Clone, Debug)]
pub struct AiJobSpec {
    pub pipeline: String,
    pub model_id: String,
    /// The ai-runner request body; `model_id` is set from the field above.
    pub request: Value,
    pub input: AiInput,
}

impl AiJobSpec {
    /// An `upscale` job with a PNG input.
    pub fn upscale(model_id: &str, png: Bytes) -> Self {
        AiJobSpec {
            pipeline: "upscale".into(),
            model_id: model_id.into(),
            request: serde_json::json!({"prompt": "", "image": null, "seed": 1}),
            input: AiInput::Bytes(png),
        }
    }
}

/// A result file as received.
#[derive(Clone, Debug)]
pub struct AiResultFile {
    pub name: String,
    pub content_type: String,
    pub data: Bytes,
}

/// How an AI job ended, as the orchestrator saw it.
#[derive(Clone, Debug)]
pub enum AiOutcome {
    /// A well-formed result.
    Done {
        json: Value,
        files: Vec<AiResultFile>,
    },
    /// A `livepeer/ai-worker-error` answer, with its text.
    Error(String),
    /// The answer broke the protocol (why).
    Invalid(String),
    /// No registered worker has capacity for the model.
    NoWorker,
    Timeout,
}

struct Worker {
    id: u64,
    /// (capability, model_id) → capacity left.
    models: HashMap<(u32, String), u32>,
    tx: mpsc::Sender<Result<NotifyAiJob, Status>>,
}

struct Pending {
    tx: oneshot::Sender<AiOutcome>,
    pipeline: String,
    /// Input PNG dimensions, for the 4× check.
    input_dims: Option<(u32, u32)>,
}

/// The AI half of the test orchestrator's state.
pub(super) struct AiSide {
    /// Apart from the transcoder side's, so a test can refuse only the AI link.
    secret: Mutex<String>,
    workers: Mutex<Vec<Worker>>,
    live: watch::Sender<usize>,
    next_worker: AtomicU64,
    pub(super) registrations: Mutex<Vec<RegisterAiWorkerRequest>>,
    inputs: Mutex<HashMap<String, AiInput>>,
    pending: Mutex<HashMap<i64, Pending>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Body::new(Full::new(Bytes::from(msg.to_string()))));
    *r.status_mut() = status;
    r
}

impl AiSide {
    pub(super) fn new(secret: String) -> Self {
        AiSide {
            secret: Mutex::new(secret),
            workers: Mutex::new(Vec::new()),
            live: watch::channel(0).0,
            next_worker: AtomicU64::new(1),
            registrations: Mutex::new(Vec::new()),
            inputs: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn remove(&self, id: u64) {
        let mut ws = lock(&self.workers);
        ws.retain(|w| w.id != id);
        self.live.send_replace(ws.len());
    }

    pub(super) fn register(
        self: &Arc<Self>,
        req: RegisterAiWorkerRequest,
    ) -> Result<AiWorkerStream, Status> {
        lock(&self.registrations).push(req.clone());
        if req.secret != *lock(&self.secret) {
            return Err(Status::unknown("invalid secret"));
        }
        let mut models = HashMap::new();
        if let Some(c) = req
            .capabilities
            .as_ref()
            .and_then(|c| c.constraints.as_ref())
        {
            for (cap, cc) in &c.per_capability {
                for (model, mc) in &cc.models {
                    models.insert((*cap, model.clone()), mc.capacity);
                }
            }
        }
        let id = self.next_worker.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(64);
        let mut ws = lock(&self.workers);
        ws.push(Worker { id, models, tx });
        self.live.send_replace(ws.len());
        Ok(AiWorkerStream {
            rx: ReceiverStream::new(rx),
            _guard: Unregister {
                side: self.clone(),
                id,
            },
        })
    }

    /// `GET /ai-input/<name>`.
    pub(super) async fn input(&self, name: &str) -> Response<Body> {
        let input = lock(&self.inputs).get(name).cloned();
        match input {
            Some(AiInput::Bytes(b)) => Response::new(Body::new(Full::new(b))),
            Some(AiInput::Stall) => {
                std::future::pending::<()>().await;
                text(StatusCode::GATEWAY_TIMEOUT, "never")
            }
            _ => text(StatusCode::NOT_FOUND, "404 page not found"),
        }
    }

    /// `POST /aiResults`, checked strictly.
    pub(super) async fn ai_results(&self, req: Request<Incoming>) -> Response<Body> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if header("Authorization").as_deref() != Some(AI_PROTOCOL_VERSION) {
            return text(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        if header("Credentials") != Some(lock(&self.secret).clone()) {
            return text(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        let Some(task_id) = header("TaskId").and_then(|t| t.parse::<i64>().ok()) else {
            return text(StatusCode::BAD_REQUEST, "Invalid Task ID");
        };
        let pipeline = header("Pipeline");
        let content_type = header("Content-Type").unwrap_or_default();
        let body = match Limited::new(req.into_body(), 512 << 20).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("body: {e}")),
        };
        let Some(pending) = lock(&self.pending).remove(&task_id) else {
            return text(StatusCode::OK, "OK");
        };
        let outcome = check(&pending, pipeline.as_deref(), &content_type, &body);
        let status = match &outcome {
            AiOutcome::Invalid(why) => Err(why.clone()),
            _ => Ok(()),
        };
        let _ = pending.tx.send(outcome);
        match status {
            Ok(()) => text(StatusCode::OK, "OK"),
            Err(why) => text(StatusCode::BAD_REQUEST, &why),
        }
    }

    /// Hands one job to a worker and waits for its answer.
    /// `task_id` reuses a task id (a re-sent task); `None` takes the next one.
    pub(super) async fn run(
        &self,
        addr: &str,
        job: AiJobSpec,
        timeout: Duration,
        task_id: Option<i64>,
    ) -> AiOutcome {
        // An unknown pipeline is sent anyway (to test the worker's refusal) under upscale's id.
        let cap = ai_capability(&job.pipeline).unwrap_or(30);
        self.send(addr, cap, job, timeout, task_id).await
    }

    async fn send(
        &self,
        addr: &str,
        cap: u32,
        job: AiJobSpec,
        timeout: Duration,
        task_id: Option<i64>,
    ) -> AiOutcome {
        static NEXT_TASK: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1);
        let task_id = task_id.unwrap_or_else(|| NEXT_TASK.fetch_add(1, Ordering::Relaxed));
        let key = (cap, job.model_id.clone());
        // The first worker with capacity for the model; any worker for an unknown model
        // (go-livepeer would refuse before, but the worker's own check is under test).
        let (worker, tx, held) = {
            let mut ws = lock(&self.workers);
            let exact = ws
                .iter()
                .position(|w| w.models.get(&key).is_some_and(|c| *c > 0));
            let any =
                || (!ws.is_empty() && !ws.iter().any(|w| w.models.contains_key(&key))).then_some(0);
            let Some(i) = exact.or_else(any) else {
                return AiOutcome::NoWorker;
            };
            let held = exact.is_some();
            if held {
                if let Some(c) = ws[i].models.get_mut(&key) {
                    *c -= 1;
                }
            }
            (ws[i].id, ws[i].tx.clone(), held)
        };
        let mut request = job.request.clone();
        if let Some(obj) = request.as_object_mut() {
            obj.insert("model_id".into(), Value::String(job.model_id.clone()));
        }
        let name = format!("{task_id}.png");
        let input_url = match &job.input {
            AiInput::None => None,
            other => {
                lock(&self.inputs).insert(name.clone(), other.clone());
                Some(format!("https://{addr}/ai-input/{name}"))
            }
        };
        let input_dims = match &job.input {
            AiInput::Bytes(b) => png_dims(b),
            _ => None,
        };
        let data = serde_json::json!({"input_url": input_url, "request": request});
        let (rtx, rrx) = oneshot::channel();
        lock(&self.pending).insert(
            task_id,
            Pending {
                tx: rtx,
                pipeline: job.pipeline.clone(),
                input_dims,
            },
        );
        let notify = NotifyAiJob {
            ai_job_data: Some(AiJobData {
                pipeline: job.pipeline.clone(),
                request_data: data.to_string().into_bytes(),
            }),
            task_id,
        };
        let outcome = if tx.send(Ok(notify)).await.is_err() {
            AiOutcome::NoWorker
        } else {
            match tokio::time::timeout(timeout, rrx).await {
                Ok(Ok(o)) => o,
                _ => AiOutcome::Timeout,
            }
        };
        lock(&self.pending).remove(&task_id);
        lock(&self.inputs).remove(&name);
        if held {
            if let Some(w) = lock(&self.workers).iter_mut().find(|w| w.id == worker) {
                if let Some(c) = w.models.get_mut(&key) {
                    *c += 1;
                }
            }
        }
        outcome
    }

    pub(super) fn set_secret(&self, secret: &str) {
        *lock(&self.secret) = secret.to_string();
    }

    /// The capacity the live workers offer for `model_id` (what the O would hand out).
    pub(super) fn model_capacity(&self, pipeline: &str, model_id: &str) -> u32 {
        let Some(cap) = ai_capability(pipeline) else {
            return 0;
        };
        lock(&self.workers)
            .iter()
            .filter_map(|w| w.models.get(&(cap, model_id.to_string())))
            .sum()
    }

    pub(super) fn live_workers(&self) -> watch::Receiver<usize> {
        self.live.subscribe()
    }
}

fn png_dims(b: &[u8]) -> Option<(u32, u32)> {
    let r = png::Decoder::new(std::io::Cursor::new(b))
        .read_info()
        .ok()?;
    Some((r.info().width, r.info().height))
}

fn check(pending: &Pending, pipeline: Option<&str>, content_type: &str, body: &Bytes) -> AiOutcome {
    if pipeline != Some(pending.pipeline.as_str()) {
        return AiOutcome::Invalid(format!(
            "Pipeline header {pipeline:?}, expected {:?}",
            pending.pipeline
        ));
    }
    if content_type == AI_WORKER_ERROR_MIME {
        let msg = String::from_utf8_lossy(body).into_owned();
        if msg.trim().is_empty() {
            return AiOutcome::Invalid("an error answer with an empty message".into());
        }
        return AiOutcome::Error(msg);
    }
    let Some(boundary) = multipart::boundary_of(content_type) else {
        return AiOutcome::Invalid(format!(
            "Content-Type {content_type:?} is neither multipart/mixed nor {AI_WORKER_ERROR_MIME}"
        ));
    };
    let parts = match multipart::decode(boundary, body) {
        Ok(p) => p,
        Err(e) => return AiOutcome::Invalid(format!("multipart body: {e}")),
    };
    let Some((json_part, file_parts)) = parts.split_last() else {
        return AiOutcome::Invalid("no parts".into());
    };
    if json_part.header("Content-Type") != Some("application/json") {
        return AiOutcome::Invalid(format!(
            "the last part is {:?}, expected application/json",
            json_part.header("Content-Type")
        ));
    }
    let json: Value = match serde_json::from_slice(&json_part.body) {
        Ok(v) => v,
        Err(e) => return AiOutcome::Invalid(format!("JSON part: {e}")),
    };
    let mut files = Vec::new();
    for p in file_parts {
        let Some(ctype) = p.header("Content-Type") else {
            return AiOutcome::Invalid("a file part has no Content-Type".into());
        };
        if p.header("Content-Length") != Some(p.body.len().to_string().as_str()) {
            return AiOutcome::Invalid(format!(
                "a file part's Content-Length {:?} is not its size {}",
                p.header("Content-Length"),
                p.body.len()
            ));
        }
        let Some(name) = p
            .header("Content-Disposition")
            .and_then(|d| d.strip_prefix("attachment; filename="))
            .map(|n| n.trim_matches('"').to_string())
            .filter(|n| !n.is_empty())
        else {
            return AiOutcome::Invalid(format!(
                "a file part's Content-Disposition is {:?}, expected attachment; filename=NAME",
                p.header("Content-Disposition")
            ));
        };
        files.push(AiResultFile {
            name,
            content_type: ctype.to_string(),
            data: p.body.clone(),
        });
    }
    let mut urls = Vec::new();
    collect_urls(&json, &mut urls);
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    if urls != names {
        return AiOutcome::Invalid(format!(
            "the JSON's url fields {urls:?} do not match the part file names {names:?}"
        ));
    }
    if pending.pipeline == "upscale" {
        if files.is_empty() {
            return AiOutcome::Invalid("an upscale result without an image".into());
        }
        for f in &files {
            if f.content_type != "image/png" {
                return AiOutcome::Invalid(format!(
                    "{} is {}, not image/png",
                    f.name, f.content_type
                ));
            }
            let Some((w, h)) = png_dims(&f.data) else {
                return AiOutcome::Invalid(format!("{} does not decode as PNG", f.name));
            };
            if let Some((iw, ih)) = pending.input_dims {
                if (w, h) != (iw * 4, ih * 4) {
                    return AiOutcome::Invalid(format!(
                        "{} is {w}x{h}, expected 4x the {iw}x{ih} input",
                        f.name
                    ));
                }
            }
            // Decode the whole image, not just its header.
            let mut dec = png::Decoder::new(std::io::Cursor::new(&f.data[..]));
            dec.set_transformations(png::Transformations::EXPAND);
            let ok = dec.read_info().ok().and_then(|mut r| {
                let mut buf = vec![0; r.output_buffer_size()?];
                r.next_frame(&mut buf).ok()
            });
            if ok.is_none() {
                return AiOutcome::Invalid(format!("{}'s pixel data does not decode", f.name));
            }
        }
    }
    AiOutcome::Done { json, files }
}

fn collect_urls<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(u)) = m.get("url") {
                out.push(u);
            }
            for (k, child) in m {
                if k != "url" {
                    collect_urls(child, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|c| collect_urls(c, out)),
        _ => {}
    }
}

/// A registered AI worker's job stream; unregisters when dropped.
pub struct AiWorkerStream {
    rx: ReceiverStream<Result<NotifyAiJob, Status>>,
    _guard: Unregister,
}

struct Unregister {
    side: Arc<AiSide>,
    id: u64,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.side.remove(self.id);
    }
}

impl Stream for AiWorkerStream {
    type Item = Result<NotifyAiJob, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

pub(super) struct RegisterAiSvc(pub(super) Arc<AiSide>);

impl tonic::server::ServerStreamingService<RegisterAiWorkerRequest> for RegisterAiSvc {
    type Response = NotifyAiJob;
    type ResponseStream = AiWorkerStream;
    type Future = std::future::Ready<Result<tonic::Response<AiWorkerStream>, Status>>;

    fn call(&mut self, request: tonic::Request<RegisterAiWorkerRequest>) -> Self::Future {
        std::future::ready(
            self.0
                .register(request.into_inner())
                .map(tonic::Response::new),
        )
    }
}
