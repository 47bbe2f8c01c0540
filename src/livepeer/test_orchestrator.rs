//! **Test double** of a go-livepeer orchestrator's remote-transcoder side, for integration
//! tests and benchmarks. Not for production.
//!
//! Like go-livepeer it serves gRPC (`net.Transcoder/RegisterTranscoder`) and HTTPS
//! (`GET /segment/...`, `POST /transcodeResults`) on one TLS port, routing HTTP/2 requests
//! with `content-type: application/grpc` to gRPC, under a fresh self-signed ECDSA P-256
//! certificate per start. It refuses bad secrets with "invalid secret" and capacities below
//! 1 with "zero capacity", hands tasks to the least-loaded transcoder (sticky per session;
//! the load counts segments in flight, or streams as go-livepeer does with `session_load`),
//! waits max(8 s, 4 × duration) for the result and evicts a transcoder that misses it, and
//! checks every header and part of a result as go-livepeer's parser would — more strictly,
//! since any deviation is reported as [`TaskOutcome::Invalid`]. It can restart with a new
//! certificate, drop every connection, or freeze them (stop answering, socket left open).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::Status;

use super::ai_proto::{NotifyAiJob, RegisterAiWorkerRequest, REGISTER_AI_WORKER_PATH};
use super::multipart;
use super::proto::{
    deadline_for, AuthToken, Format, NotifySegment, OrchestratorInfo, OrchestratorRequest,
    PriceInfo, RegisterRequest, SegData, VideoProfile, GET_ORCHESTRATOR_PATH, PROTOCOL_VERSION,
    REGISTER_TRANSCODER_PATH, TRANSCODING_ERROR_MIME,
};
use super::test_orchestrator_ai::{AiJobSpec, AiOutcome, AiSide, RegisterAiSvc};

/// Which `SegData` field carries the profiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProfilesField {
    Full3,
    Full2,
    Full1,
}

/// One segment to hand to a transcoder.
#[derive(Clone, Debug)]
pub struct SegmentJob {
    pub session_id: String,
    pub manifest_id: String,
    pub seq: i64,
    /// Milliseconds (0 = 2 s).
    pub duration_ms: i32,
    pub profiles: Vec<VideoProfile>,
    pub field: ProfilesField,
    /// `None`: the segment URL answers 404.
    pub media: Option<Bytes>,
    pub calc_perceptual_hash: bool,
    pub force_session_reinit: bool,
}

impl SegmentJob {
    pub fn new(session_id: &str, seq: i64, media: Bytes, profiles: Vec<VideoProfile>) -> Self {
        SegmentJob {
            session_id: session_id.to_string(),
            manifest_id: format!("manifest-{session_id}"),
            seq,
            duration_ms: 2000,
            profiles,
            field: ProfilesField::Full3,
            media: Some(media),
            calc_perceptual_hash: false,
            force_session_reinit: false,
        }
    }
}

/// One rendition part as received.
#[derive(Clone, Debug)]
pub struct ResultPart {
    pub content_type: String,
    pub pixels: u64,
    pub data: Bytes,
}

/// What came of a task.
#[derive(Clone, Debug)]
pub enum TaskOutcome {
    /// Renditions in part order, with the request's decoded `Pixels`.
    Done {
        transcoder: u64,
        decoded_pixels: u64,
        parts: Vec<ResultPart>,
        /// The request's `Comine-*` headers (lower-case names), such as the signed work
        /// receipt.
        extra_headers: Vec<(String, String)>,
    },
    /// A `livepeer/transcoding-error` part with this text.
    TranscodeError(String),
    /// The result broke the protocol (header or part); the reason says how.
    Invalid(String),
    /// No result within max(floor, 4 × duration); the transcoder was evicted.
    Timeout,
    /// No registered transcoder had room.
    NoTranscoder,
}

/// Test-orchestrator settings.
#[derive(Clone, Debug)]
pub struct TestOrchestratorConfig {
    pub secret: String,
    /// 0 picks a free port.
    pub port: u16,
    /// Floor of the per-task deadline (go-livepeer: 8 s).
    pub timeout_floor: Duration,
    /// go-livepeer's accounting: a transcoder's load counts the streams bound to it (taken at
    /// a stream's first segment, given back at its teardown or a failed segment), and a
    /// re-registration orphans the streams of the old one, each of which needs room on a
    /// live transcoder at its next segment. Off: the load counts segments in flight.
    pub session_load: bool,
    /// How long a registration takes to reach the transcoder table (a busy orchestrator or
    /// a long link); until then segments cannot be routed to it.
    pub register_delay: Duration,
    /// How long the orchestrator takes to act on a failed segment's answer (a busy
    /// orchestrator or a long link): the stream's slot on the transcoder stays taken until
    /// then, as a refused new stream's does in go-livepeer until the error comes back.
    pub failure_release_delay: Duration,
    /// `GetOrchestrator`'s `price_info` as `(pricePerUnit, pixelsPerUnit)`; `None`: the
    /// call is refused (an orchestrator that gives no price to this transcoder).
    pub price_info: Option<(i64, i64)>,
    /// `OrchestratorInfo.address`.
    pub eth_address: Option<alloy::primitives::Address>,
}

impl Default for TestOrchestratorConfig {
    fn default() -> Self {
        TestOrchestratorConfig {
            secret: "test-secret".into(),
            port: 0,
            timeout_floor: Duration::from_secs(8),
            session_load: false,
            register_delay: Duration::ZERO,
            failure_release_delay: Duration::ZERO,
            price_info: None,
            eth_address: None,
        }
    }
}

struct Transcoder {
    id: u64,
    capacity: i64,
    load: i64,
    frozen: bool,
    tx: mpsc::Sender<Result<NotifySegment, Status>>,
}

struct Pending {
    tx: oneshot::Sender<TaskOutcome>,
    transcoder: u64,
    profiles: Vec<VideoProfile>,
}

/// State of one incarnation (a restart starts afresh, as a real O does).
struct Inner {
    secret: String,
    transcoders: Mutex<Vec<Transcoder>>,
    live: watch::Sender<usize>,
    next_transcoder: AtomicU64,
    sessions: Mutex<HashMap<String, u64>>,
    segments: Mutex<HashMap<String, Bytes>>,
    pending: Mutex<HashMap<i64, Pending>>,
    next_task: AtomicI64,
    registrations: Mutex<Vec<RegisterRequest>>,
    refusals: Mutex<Vec<String>>,
    kill: Mutex<CancellationToken>,
    freeze: Mutex<CancellationToken>,
    /// The `AIWorker` service (same port, same secret).
    ai: Arc<AiSide>,
    price_info: Option<(i64, i64)>,
    eth_address: Option<alloy::primitives::Address>,
    register_delay: Duration,
    /// Every `GetOrchestrator` request, with the answer's error when refused.
    price_requests: Mutex<Vec<(OrchestratorRequest, Option<String>)>>,
}

impl Inner {
    fn new(cfg: &TestOrchestratorConfig) -> Self {
        let secret = cfg.secret.clone();
        let secret_for_ai = secret.clone();
        Inner {
            price_info: cfg.price_info,
            eth_address: cfg.eth_address,
            register_delay: cfg.register_delay,
            price_requests: Mutex::new(Vec::new()),
            secret,
            transcoders: Mutex::new(Vec::new()),
            live: watch::channel(0).0,
            next_transcoder: AtomicU64::new(1),
            sessions: Mutex::new(HashMap::new()),
            segments: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            next_task: AtomicI64::new(1),
            registrations: Mutex::new(Vec::new()),
            refusals: Mutex::new(Vec::new()),
            kill: Mutex::new(CancellationToken::new()),
            freeze: Mutex::new(CancellationToken::new()),
            ai: Arc::new(AiSide::new(secret_for_ai)),
        }
    }

    fn publish_live(&self, transcoders: &[Transcoder]) {
        self.live
            .send_replace(transcoders.iter().filter(|t| !t.frozen).count());
    }

    fn remove_transcoder(&self, id: u64) {
        let mut ts = lock(&self.transcoders);
        ts.retain(|t| t.id != id);
        self.publish_live(&ts);
        lock(&self.sessions).retain(|_, t| *t != id);
    }

    /// `GetOrchestrator` as go-livepeer's `getOrchestrator`: the signature must be the
    /// sender's over its checksummed hex address (an empty one passes, as on an off-chain
    /// orchestrator, whose `VerifySig` checks nothing); then the price for that sender.
    fn get_orchestrator(&self, req: OrchestratorRequest) -> Result<OrchestratorInfo, Status> {
        let answer = (|| {
            if !req.sig.is_empty() {
                if req.address.len() != 20 {
                    return Err("orchestrator req sig check failed".to_string());
                }
                let addr = alloy::primitives::Address::from_slice(&req.address);
                let msg = alloy::primitives::keccak256(addr.to_checksum(None).as_bytes());
                let signer = alloy::primitives::Signature::from_raw(&req.sig)
                    .ok()
                    .and_then(|s| s.recover_address_from_msg(msg.as_slice()).ok());
                if signer != Some(addr) {
                    return Err("orchestrator req sig check failed".to_string());
                }
            }
            let (price, pixels) = self
                .price_info
                .ok_or_else(|| "no price for this sender".to_string())?;
            Ok(OrchestratorInfo {
                transcoder: "https://127.0.0.1".into(),
                price_info: Some(PriceInfo {
                    price_per_unit: price,
                    pixels_per_unit: pixels,
                }),
                address: self.eth_address.map(|a| a.to_vec()).unwrap_or_default(),
            })
        })();
        lock(&self.price_requests).push((req, answer.as_ref().err().cloned()));
        answer.map_err(|why| Status::unknown(format!("Invalid orchestrator request ({why})")))
    }

    fn register(self: &Arc<Self>, req: RegisterRequest) -> Result<TranscoderStream, Status> {
        lock(&self.registrations).push(req.clone());
        // go-livepeer returns plain errors, which gRPC carries as code Unknown.
        if req.secret != self.secret {
            lock(&self.refusals).push("invalid secret".into());
            return Err(Status::unknown("invalid secret"));
        }
        if req.capacity <= 0 {
            lock(&self.refusals).push("zero capacity".into());
            return Err(Status::unknown("zero capacity"));
        }
        if !req.ethereum_address.is_empty() && req.ethereum_address.len() != 20 {
            return Err(Status::unknown("invalid ethereum address"));
        }
        let id = self.next_transcoder.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(64);
        let transcoder = Transcoder {
            id,
            capacity: req.capacity,
            load: 0,
            frozen: false,
            tx,
        };
        let closed = Arc::new(AtomicBool::new(false));
        // Added to the table unless its stream closed first (a delayed registration).
        let add = {
            let (inner, closed) = (self.clone(), closed.clone());
            move || {
                let mut ts = lock(&inner.transcoders);
                if !closed.load(Ordering::SeqCst) {
                    ts.push(transcoder);
                    inner.publish_live(&ts);
                }
            }
        };
        if self.register_delay.is_zero() {
            add();
        } else {
            let delay = self.register_delay;
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                add();
            });
        }
        Ok(TranscoderStream {
            rx: ReceiverStream::new(rx),
            _guard: Unregister {
                inner: self.clone(),
                id,
                closed,
            },
        })
    }

    /// `POST /transcodeResults`, checked as go-livepeer's `TranscodeResults` parses it.
    async fn transcode_results(&self, req: Request<Incoming>) -> Response<Body> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if header("Authorization").as_deref() != Some(PROTOCOL_VERSION) {
            return text(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        if header("Credentials").as_deref() != Some(self.secret.as_str()) {
            return text(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        let Some(content_type) = header("Content-Type") else {
            return text(StatusCode::UNSUPPORTED_MEDIA_TYPE, "no Content-Type");
        };
        let Some(task_id) = header("TaskId").and_then(|t| t.parse::<i64>().ok()) else {
            return text(StatusCode::BAD_REQUEST, "Invalid Task ID");
        };
        let pixels = header("Pixels");
        // go-livepeer ignores headers it does not know; keep comine's own for the tests.
        let extra: Vec<(String, String)> = req
            .headers()
            .iter()
            .filter(|(n, _)| n.as_str().starts_with("comine-"))
            .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let body = match Limited::new(req.into_body(), 512 << 20).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("body: {e}")),
        };
        let Some(pending) = lock(&self.pending).remove(&task_id) else {
            // go-livepeer ignores results for unknown (timed-out) tasks and answers OK.
            return text(StatusCode::OK, "OK");
        };
        let (mut outcome, status) = check_result(&content_type, pixels.as_deref(), &body, &pending);
        if let TaskOutcome::Done { extra_headers, .. } = &mut outcome {
            *extra_headers = extra;
        }
        let _ = pending.tx.send(outcome);
        match status {
            Ok(()) => text(StatusCode::OK, "OK"),
            Err(why) => text(StatusCode::BAD_REQUEST, &why),
        }
    }
}

fn check_result(
    content_type: &str,
    pixels: Option<&str>,
    body: &Bytes,
    pending: &Pending,
) -> (TaskOutcome, Result<(), String>) {
    let invalid = |why: String| (TaskOutcome::Invalid(why.clone()), Err(why));
    let media = content_type.split(';').next().unwrap_or_default().trim();
    if media == TRANSCODING_ERROR_MIME {
        return (
            TaskOutcome::TranscodeError(String::from_utf8_lossy(body).into_owned()),
            Ok(()),
        );
    }
    let Some(decoded_pixels) = pixels.and_then(|p| p.parse::<u64>().ok()) else {
        return invalid(format!("request Pixels header {pixels:?} is not a number"));
    };
    let Some(boundary) = multipart::boundary_of(content_type) else {
        return invalid(format!(
            "Content-Type {content_type:?} is not multipart/mixed with a boundary"
        ));
    };
    let parts = match multipart::decode(boundary, body) {
        Ok(p) => p,
        Err(e) => return invalid(format!("multipart body: {e}")),
    };
    if parts.len() != pending.profiles.len() {
        return invalid(format!(
            "{} parts for {} profiles",
            parts.len(),
            pending.profiles.len()
        ));
    }
    let mut out = Vec::with_capacity(parts.len());
    for (i, (part, profile)) in parts.iter().zip(&pending.profiles).enumerate() {
        let want = match Format::try_from(profile.format) {
            Ok(Format::Mp4) => "video/mp4",
            _ => "video/mp2t",
        };
        let ct = part.header("Content-Type").unwrap_or_default();
        if ct != want {
            return invalid(format!(
                "part {i} Content-Type {ct:?}, profile {} wants {want}",
                profile.name
            ));
        }
        let len = part
            .header("Content-Length")
            .and_then(|l| l.parse::<usize>().ok());
        if len != Some(part.body.len()) {
            return invalid(format!(
                "part {i} Content-Length {len:?} but the part holds {} bytes",
                part.body.len()
            ));
        }
        let Some(px) = part.header("Pixels").and_then(|p| p.parse::<u64>().ok()) else {
            return invalid(format!("part {i} has no numeric Pixels header"));
        };
        if part.body.is_empty() || px == 0 {
            return invalid(format!("part {i} is empty"));
        }
        out.push(ResultPart {
            content_type: ct.to_string(),
            pixels: px,
            data: part.body.clone(),
        });
    }
    (
        TaskOutcome::Done {
            transcoder: pending.transcoder,
            decoded_pixels,
            parts: out,
            extra_headers: Vec::new(),
        },
        Ok(()),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Body::new(Full::new(Bytes::from(msg.to_string()))));
    *r.status_mut() = status;
    r
}

/// The notification stream of one registered transcoder; unregisters it when dropped
/// (the client went away or the connection died).
pub struct TranscoderStream {
    rx: ReceiverStream<Result<NotifySegment, Status>>,
    _guard: Unregister,
}

struct Unregister {
    inner: Arc<Inner>,
    id: u64,
    /// Set before the removal, so a delayed registration is not added after it.
    closed: Arc<AtomicBool>,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        self.inner.remove_transcoder(self.id);
    }
}

impl Stream for TranscoderStream {
    type Item = Result<NotifySegment, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.rx).poll_next(cx)
    }
}

struct RegisterSvc(Arc<Inner>);

struct GetOrchestratorSvc(Arc<Inner>);

impl tonic::server::UnaryService<OrchestratorRequest> for GetOrchestratorSvc {
    type Response = OrchestratorInfo;
    type Future = std::future::Ready<Result<tonic::Response<OrchestratorInfo>, Status>>;

    fn call(&mut self, request: tonic::Request<OrchestratorRequest>) -> Self::Future {
        std::future::ready(
            self.0
                .get_orchestrator(request.into_inner())
                .map(tonic::Response::new),
        )
    }
}

impl tonic::server::ServerStreamingService<RegisterRequest> for RegisterSvc {
    type Response = NotifySegment;
    type ResponseStream = TranscoderStream;
    type Future = std::future::Ready<Result<tonic::Response<TranscoderStream>, Status>>;

    fn call(&mut self, request: tonic::Request<RegisterRequest>) -> Self::Future {
        std::future::ready(
            self.0
                .register(request.into_inner())
                .map(tonic::Response::new),
        )
    }
}

async fn route(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if grpc && req.version() == http::Version::HTTP_2 {
        if req.uri().path() == REGISTER_AI_WORKER_PATH {
            let codec = tonic_prost::ProstCodec::<NotifyAiJob, RegisterAiWorkerRequest>::default();
            return tonic::server::Grpc::new(codec)
                .server_streaming(RegisterAiSvc(inner.ai.clone()), req)
                .await;
        }
        if req.uri().path() == GET_ORCHESTRATOR_PATH {
            let codec = tonic_prost::ProstCodec::<OrchestratorInfo, OrchestratorRequest>::default();
            return tonic::server::Grpc::new(codec)
                .unary(GetOrchestratorSvc(inner), req)
                .await;
        }
        if req.uri().path() != REGISTER_TRANSCODER_PATH {
            return Status::unimplemented("unknown method").into_http();
        }
        let codec = tonic_prost::ProstCodec::<NotifySegment, RegisterRequest>::default();
        return tonic::server::Grpc::new(codec)
            .server_streaming(RegisterSvc(inner), req)
            .await;
    }
    let path = req.uri().path().to_string();
    if let (&Method::GET, Some(name)) = (req.method(), path.strip_prefix("/ai-input/")) {
        return inner.ai.input(name).await;
    }
    if req.method() == Method::POST && path == "/aiResults" {
        return inner.ai.ai_results(req).await;
    }
    match (req.method().clone(), path.strip_prefix("/segment/")) {
        (Method::GET, Some(name)) => match lock(&inner.segments).get(name).cloned() {
            Some(data) => {
                let mut r = Response::new(Body::new(Full::new(data)));
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("video/mp2t"),
                );
                r
            }
            None => text(StatusCode::NOT_FOUND, "404 page not found"),
        },
        (Method::POST, None) if path == "/transcodeResults" => inner.transcode_results(req).await,
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

struct Server {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    cert_der: Vec<u8>,
    cert_pem: String,
}

/// The test orchestrator. See the module documentation.
pub struct TestOrchestrator {
    addr: SocketAddr,
    cfg: TestOrchestratorConfig,
    inner: Arc<Inner>,
    server: Option<Server>,
}

impl TestOrchestrator {
    pub async fn start(cfg: TestOrchestratorConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", cfg.port)).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner::new(&cfg));
        let server = serve(listener, inner.clone())?;
        Ok(TestOrchestrator {
            addr,
            cfg,
            inner,
            server: Some(server),
        })
    }

    /// `127.0.0.1:PORT`, what `--orch-addr` takes.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn secret(&self) -> &str {
        &self.cfg.secret
    }

    /// SHA-256 of the current certificate's DER (for `--orch-cert-sha256`).
    pub fn cert_sha256(&self) -> [u8; 32] {
        super::tls::fingerprint(
            self.server
                .as_ref()
                .map(|s| s.cert_der.as_slice())
                .unwrap_or_default(),
        )
    }

    /// The current certificate in PEM (for `--orch-ca-file`: it is its own issuer).
    pub fn cert_pem(&self) -> String {
        self.server
            .as_ref()
            .map(|s| s.cert_pem.clone())
            .unwrap_or_default()
    }

    /// Every `GetOrchestrator` request this incarnation received, with the refusal's
    /// reason when it was refused.
    pub fn price_requests(&self) -> Vec<(OrchestratorRequest, Option<String>)> {
        lock(&self.inner.price_requests).clone()
    }

    /// Waits until `GetOrchestrator` has been asked `n` times.
    pub async fn wait_for_price_requests(&self, n: usize, timeout: Duration) -> Result<(), String> {
        let start = tokio::time::Instant::now();
        while lock(&self.inner.price_requests).len() < n {
            if start.elapsed() > timeout {
                return Err(format!("GetOrchestrator asked fewer than {n} times"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Every `RegisterRequest` this incarnation received, refused ones included.
    pub fn registrations(&self) -> Vec<RegisterRequest> {
        lock(&self.inner.registrations).clone()
    }

    /// Refusal messages sent ("invalid secret", "zero capacity").
    pub fn refusals(&self) -> Vec<String> {
        lock(&self.inner.refusals).clone()
    }

    /// Live (registered, not frozen) transcoders.
    pub fn live_transcoders(&self) -> usize {
        *self.inner.live.borrow()
    }

    /// The capacity of every registration received, in order (refused ones included).
    pub fn registered_capacities(&self) -> Vec<i64> {
        self.registrations().iter().map(|r| r.capacity).collect()
    }

    /// Capacities of the live transcoders.
    pub fn capacities(&self) -> Vec<i64> {
        lock(&self.inner.transcoders)
            .iter()
            .filter(|t| !t.frozen)
            .map(|t| t.capacity)
            .collect()
    }

    /// Waits until at least `n` transcoders are live.
    pub async fn wait_for_transcoders(&self, n: usize, timeout: Duration) -> Result<(), String> {
        let mut rx = self.inner.live.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|live| *live >= n).await.map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("orchestrator state dropped".into()),
            Err(_) => Err(format!(
                "no {n} transcoder(s) registered within {timeout:?}"
            )),
        }
    }

    /// Waits until a live transcoder registered with exactly `capacity`.
    pub async fn wait_for_capacity(&self, capacity: i64, timeout: Duration) -> Result<(), String> {
        let until = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < until {
            if self.capacities().contains(&capacity) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!(
            "no transcoder with capacity {capacity} within {timeout:?}; live: {:?}",
            self.capacities()
        ))
    }

    /// Every `RegisterAIWorker` request received, refused ones included.
    pub fn ai_registrations(&self) -> Vec<RegisterAiWorkerRequest> {
        lock(&self.inner.ai.registrations).clone()
    }

    /// The capacity live AI workers offer for a model (what jobs can be handed out now).
    pub fn ai_model_capacity(&self, pipeline: &str, model_id: &str) -> u32 {
        self.inner.ai.model_capacity(pipeline, model_id)
    }

    /// Waits until the capacity offered for a model satisfies `pred`.
    pub async fn wait_for_ai_capacity(
        &self,
        pipeline: &str,
        model_id: &str,
        pred: impl Fn(u32) -> bool,
        timeout: Duration,
    ) -> Result<u32, String> {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let c = self.ai_model_capacity(pipeline, model_id);
            if pred(c) {
                return Ok(c);
            }
            if tokio::time::Instant::now() >= until {
                return Err(format!(
                    "capacity for {pipeline}/{model_id} is {c} after {timeout:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Makes the AI side expect another secret than the transcoder side (from now on):
    /// an AI worker with the transcoder's secret is then refused with "invalid secret".
    pub fn set_ai_secret(&self, secret: &str) {
        self.inner.ai.set_secret(secret);
    }

    /// Live AI workers.
    pub fn live_ai_workers(&self) -> usize {
        *self.inner.ai.live_workers().borrow()
    }

    /// Hands one AI job to a worker with capacity for its model and waits for the answer
    /// (up to `timeout`; go-livepeer waits 15 minutes).
    pub async fn ai_job(&self, job: AiJobSpec, timeout: Duration) -> AiOutcome {
        self.inner
            .ai
            .run(&self.addr.to_string(), job, timeout, None)
            .await
    }

    /// Like [`Self::ai_job`] under a given task id: go-livepeer's task ids restart with
    /// the orchestrator, so a worker can see one again.
    pub async fn ai_job_as(&self, task_id: i64, job: AiJobSpec, timeout: Duration) -> AiOutcome {
        self.inner
            .ai
            .run(&self.addr.to_string(), job, timeout, Some(task_id))
            .await
    }

    /// Hands one segment to a transcoder and waits for its result.
    pub async fn transcode(&self, job: SegmentJob) -> TaskOutcome {
        let inner = &self.inner;
        let task_id = inner.next_task.fetch_add(1, Ordering::Relaxed);
        // Pick the session's transcoder, else the least-loaded one with room.
        let (transcoder, tx) = {
            let mut ts = lock(&inner.transcoders);
            let mut sessions = lock(&inner.sessions);
            let sticky = sessions
                .get(&job.session_id)
                .and_then(|id| ts.iter().position(|t| t.id == *id && !t.frozen));
            let pick = sticky.or_else(|| {
                ts.iter()
                    .enumerate()
                    .filter(|(_, t)| !t.frozen && t.load < t.capacity)
                    .min_by_key(|(_, t)| (t.load, std::cmp::Reverse(t.id)))
                    .map(|(i, _)| i)
            });
            let Some(i) = pick else {
                return TaskOutcome::NoTranscoder;
            };
            if !self.cfg.session_load || sticky.is_none() {
                ts[i].load += 1;
            }
            sessions.insert(job.session_id.clone(), ts[i].id);
            (ts[i].id, ts[i].tx.clone())
        };
        let name = format!("{}/{}-{task_id}.ts", job.manifest_id, job.seq);
        if let Some(media) = &job.media {
            lock(&inner.segments).insert(name.clone(), media.clone());
        }
        let (result_tx, result_rx) = oneshot::channel();
        lock(&inner.pending).insert(
            task_id,
            Pending {
                tx: result_tx,
                transcoder,
                profiles: job.profiles.clone(),
            },
        );
        let mut seg = SegData {
            manifest_id: job.manifest_id.clone().into_bytes(),
            seq: job.seq,
            hash: vec![0; 32],
            profiles: b"invalid".to_vec(),
            duration: job.duration_ms,
            auth_token: Some(AuthToken {
                token: b"token".to_vec(),
                session_id: job.session_id.clone(),
                expiration: i64::MAX,
            }),
            calc_perceptual_hash: job.calc_perceptual_hash,
            force_session_reinit: job.force_session_reinit,
            ..Default::default()
        };
        match job.field {
            ProfilesField::Full3 => seg.full_profiles3 = job.profiles.clone(),
            ProfilesField::Full2 => seg.full_profiles2 = job.profiles.clone(),
            ProfilesField::Full1 => seg.full_profiles = job.profiles.clone(),
        }
        let notify = NotifySegment {
            url: format!("https://{}/segment/{name}", self.addr),
            seg_data: Some(seg),
            task_id,
            profiles: b"invalid".to_vec(),
            orch_id: "test-orchestrator".into(),
        };
        let duration = if job.duration_ms > 0 {
            job.duration_ms as u32
        } else {
            2000
        };
        let timeout = deadline_for(duration, self.cfg.timeout_floor);
        let outcome = if tx.send(Ok(notify)).await.is_err() {
            TaskOutcome::NoTranscoder
        } else {
            match tokio::time::timeout(timeout, result_rx).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) | Err(_) => {
                    // go-livepeer treats a late transcoder as failed and drops its stream.
                    inner.remove_transcoder(transcoder);
                    TaskOutcome::Timeout
                }
            }
        };
        lock(&inner.pending).remove(&task_id);
        lock(&inner.segments).remove(&name);
        let failed = !matches!(outcome, TaskOutcome::Done { .. });
        if failed && !self.cfg.failure_release_delay.is_zero() {
            tokio::time::sleep(self.cfg.failure_release_delay).await;
        }
        // Per segment, or (go-livepeer) per stream: a failed segment ends the stream's binding.
        let release = if self.cfg.session_load {
            failed
                && lock(&inner.sessions)
                    .remove(&job.session_id)
                    .is_some_and(|t| t == transcoder)
        } else {
            true
        };
        if release {
            if let Some(t) = lock(&inner.transcoders)
                .iter_mut()
                .find(|t| t.id == transcoder)
            {
                t.load -= 1;
            }
        }
        outcome
    }

    /// Sends the teardown notification (empty URL, session ID) for `session_id`.
    pub async fn end_session(&self, session_id: &str) -> bool {
        let Some(id) = lock(&self.inner.sessions).remove(session_id) else {
            return false;
        };
        let tx = lock(&self.inner.transcoders)
            .iter_mut()
            .find(|t| t.id == id)
            .map(|t| {
                if self.cfg.session_load {
                    t.load -= 1;
                }
                t.tx.clone()
            });
        let Some(tx) = tx else { return false };
        tx.send(Ok(NotifySegment::teardown(session_id)))
            .await
            .is_ok()
    }

    /// Closes every TCP connection abruptly (a network fault).
    pub fn drop_connections(&self) {
        let mut kill = lock(&self.inner.kill);
        kill.cancel();
        *kill = CancellationToken::new();
    }

    /// Stops answering on every current connection but keeps the sockets open (a dead
    /// peer), and routes no more work to the transcoders on them.
    pub fn freeze_connections(&self) {
        let mut freeze = lock(&self.inner.freeze);
        freeze.cancel();
        *freeze = CancellationToken::new();
        let mut ts = lock(&self.inner.transcoders);
        for t in ts.iter_mut() {
            t.frozen = true;
        }
        self.inner.publish_live(&ts);
    }

    /// Stops serving and closes every connection.
    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown.cancel();
            let _ = server.task.await;
        }
        lock(&self.inner.transcoders).clear();
    }

    /// Restarts on the same port with a new certificate and empty state, as a real
    /// orchestrator restart does.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        let mut last = None;
        for _ in 0..50 {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => {
                    self.inner = Arc::new(Inner::new(&self.cfg));
                    self.server = Some(serve(listener, self.inner.clone())?);
                    return Ok(());
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("cannot rebind")))
    }
}

impl Drop for TestOrchestrator {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.shutdown.cancel();
        }
    }
}

fn serve(listener: tokio::net::TcpListener, inner: Arc<Inner>) -> std::io::Result<Server> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(std::io::Error::other)?;
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .and_then(|p| p.self_signed(&key))
            .map_err(std::io::Error::other)?;
    let cert_der = cert.der().to_vec();
    let cert_pem = cert.pem();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .map_err(std::io::Error::other)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (tcp, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(_) => continue,
                },
                _ = stop.cancelled() => break,
            };
            let _ = tcp.set_nodelay(true);
            let kill = lock(&inner.kill).clone();
            let freeze = lock(&inner.freeze).clone();
            conns.spawn(connection(
                tcp,
                acceptor.clone(),
                inner.clone(),
                kill,
                freeze,
                stop.clone(),
            ));
            while conns.try_join_next().is_some() {}
        }
        conns.shutdown().await;
    });
    Ok(Server {
        shutdown,
        task,
        cert_der,
        cert_pem,
    })
}

async fn connection(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    inner: Arc<Inner>,
    kill: CancellationToken,
    freeze: CancellationToken,
    stop: CancellationToken,
) {
    let tls = tokio::select! {
        r = acceptor.accept(tcp) => match r {
            Ok(t) => t,
            Err(_) => return,
        },
        _ = kill.cancelled() => return,
        _ = stop.cancelled() => return,
    };
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let inner = inner.clone();
        async move { Ok::<_, Infallible>(route(inner, req).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = &mut conn => {}
        _ = kill.cancelled() => {}
        _ = stop.cancelled() => {}
        _ = freeze.cancelled() => {
            // Hold the socket without reading or answering until killed.
            tokio::select! {
                _ = kill.cancelled() => {}
                _ = stop.cancelled() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::signers::{local::PrivateKeySigner, SignerSync};

    /// go-livepeer's check: the signature must be the sender's own over keccak256 of its
    /// checksummed hex address (EIP-191); an empty one passes (off-chain).
    #[test]
    fn get_orchestrator_checks_the_senders_signature_and_quotes_the_price() {
        let inner = Inner::new(&TestOrchestratorConfig {
            price_info: Some((1200, 1000)),
            ..Default::default()
        });
        let key = PrivateKeySigner::random();
        let other = PrivateKeySigner::random();
        let msg = alloy::primitives::keccak256(key.address().to_checksum(None).as_bytes());
        let req = |signer: &PrivateKeySigner| OrchestratorRequest {
            address: key.address().to_vec(),
            sig: signer
                .sign_message_sync(msg.as_slice())
                .unwrap()
                .as_bytes()
                .to_vec(),
        };
        let info = inner.get_orchestrator(req(&key)).unwrap();
        assert_eq!(
            info.price_info,
            Some(PriceInfo {
                price_per_unit: 1200,
                pixels_per_unit: 1000
            })
        );
        let refused = inner.get_orchestrator(req(&other)).unwrap_err();
        assert!(
            refused.message().contains("sig check failed"),
            "{refused:?}"
        );
        let unsigned = OrchestratorRequest {
            address: key.address().to_vec(),
            sig: Vec::new(),
        };
        assert!(inner.get_orchestrator(unsigned).is_ok());
        // No price configured: refused, as an orchestrator that gives none.
        let none = Inner::new(&TestOrchestratorConfig::default());
        assert!(none.get_orchestrator(req(&key)).is_err());
    }
}
