//! The Livepeer AI-worker link against the test orchestrator's `AIWorker` service, with
//! the real model on CPU: registration (warm models, capacity, runner version, hardware),
//! upscale jobs checked part by part, every bad input answered with an error and recorded
//! as failed while the worker keeps serving, re-registration when the offer drops and
//! rises, and shutdown answering jobs in flight before it unregisters.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::ai::{ai_env, test_picture, AiEnv};
use bytes::Bytes;
use comine::ai::image::encode_png;
use comine::ai::{AiError, AiService, Config, ModelConfig, RunnerConfig};
use comine::livepeer::ai_worker::{
    run_ai_worker, AiFailure, AiFile, AiJob, AiJobHandler, AiJobRecord, AiOffer, AiOutput,
    AiWorkerConfig, BoxFuture, GpuDescription, OfferedModel,
};
use comine::livepeer::test_orchestrator::{TestOrchestrator, TestOrchestratorConfig};
use comine::livepeer::test_orchestrator_ai::{AiInput, AiJobSpec, AiOutcome};
use comine::livepeer::TranscoderConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const MODEL: &str = comine::ai::TEST_MODEL_ID;

/// The daemon's role, played in the test: run through [`AiService`], keep every record.
struct Handler {
    svc: Arc<AiService>,
    records: Mutex<Vec<AiJobRecord>>,
    /// Extra time each job takes (to hold jobs in flight).
    delay: Duration,
}

impl AiJobHandler for Handler {
    fn run(
        &self,
        job: AiJob,
        cancel: CancellationToken,
    ) -> BoxFuture<'_, Result<AiOutput, AiFailure>> {
        Box::pin(async move {
            tokio::select! {
                _ = tokio::time::sleep(self.delay) => {}
                _ = cancel.cancelled() => return Err(AiFailure::new("unavailable", "cancelled while waiting")),
            }
            let prefix = job.task_id.to_string();
            self.svc
                .run(
                    &job.pipeline,
                    &job.model_id,
                    &job.request,
                    job.input,
                    &prefix,
                    cancel,
                )
                .await
                .map(|r| AiOutput {
                    json: r.json,
                    units: r.units,
                    files: r
                        .files
                        .into_iter()
                        .map(|f| AiFile {
                            name: f.name,
                            content_type: f.content_type,
                            data: f.data,
                        })
                        .collect(),
                })
                .map_err(|e: AiError| AiFailure::new(e.reason(), e.to_string()))
        })
    }

    fn record(&self, record: AiJobRecord) -> BoxFuture<'_, ()> {
        self.records.lock().unwrap().push(record);
        Box::pin(async {})
    }
}

struct Rig {
    orch: TestOrchestrator,
    handler: Arc<Handler>,
    offer: watch::Sender<AiOffer>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), comine::livepeer::LivepeerError>>,
}

fn offer(capacity: u32) -> AiOffer {
    AiOffer {
        models: vec![OfferedModel {
            pipeline: "upscale".into(),
            model_id: MODEL.into(),
            capacity,
            warm: true,
            runner_version: comine::ai::service::embedded_runner_version(),
        }],
        gpus: vec![GpuDescription {
            id: "sim-0".into(),
            name: "NVIDIA GeForce RTX 3090 (simulated)".into(),
            major: 8,
            minor: 6,
            memory_free: 20 << 30,
            memory_total: 24 << 30,
        }],
    }
}

async fn rig(env: &AiEnv, runners: Vec<RunnerConfig>, delay: Duration, grace: Duration) -> Rig {
    let svc = AiService::new(
        Config {
            onnxruntime_lib: Some(env.lib.clone()),
            threads: 2,
            max_input_pixels: 96 * 96,
            models: vec![ModelConfig {
                pipeline: "upscale".into(),
                model_id: MODEL.into(),
                path: Some(env.model.clone()),
                warm: true,
                vram_mib: 512,
            }],
            runners,
            ..Config::default()
        },
        0,
    )
    .expect("AI service starts");
    svc.load(MODEL).expect("model loads");
    let handler = Arc::new(Handler {
        svc: Arc::new(svc),
        records: Mutex::new(Vec::new()),
        delay,
    });
    let orch = TestOrchestrator::start(TestOrchestratorConfig::default())
        .await
        .unwrap();
    let mut cfg =
        AiWorkerConfig::from_transcoder(&TranscoderConfig::new(orch.addr(), orch.secret()));
    cfg.input_timeout = Duration::from_secs(2);
    cfg.shutdown_grace = grace;
    cfg.offer_dwell = Duration::from_millis(300);
    cfg.backoff_initial = Duration::from_millis(100);
    let (tx, rx) = watch::channel(offer(2));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_ai_worker(
        cfg,
        rx,
        handler.clone() as Arc<dyn AiJobHandler>,
        shutdown.clone(),
    ));
    orch.wait_for_ai_capacity("upscale", MODEL, |c| c == 2, Duration::from_secs(20))
        .await
        .unwrap();
    Rig {
        orch,
        handler,
        offer: tx,
        shutdown,
        task,
    }
}

fn png(w: u32, h: u32) -> Bytes {
    Bytes::from(encode_png(&test_picture(w, h, 9)).unwrap())
}

async fn wait_record(h: &Handler, n: usize) -> AiJobRecord {
    for _ in 0..500 {
        if let Some(rec) = h.records.lock().unwrap().get(n - 1).cloned() {
            return rec;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("record {n} never came");
}

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_warm_models_and_answers_upscale_jobs_with_checked_parts() {
    let Some(env) = ai_env() else { return };
    let r = rig(&env, vec![], Duration::ZERO, Duration::from_secs(20)).await;

    let reg = r.orch.ai_registrations().pop().unwrap();
    let caps = reg.capabilities.unwrap();
    assert_eq!(
        caps.capacities.get(&30),
        Some(&2),
        "upscale is capability 30"
    );
    let m = &caps.constraints.unwrap().per_capability[&30].models[MODEL];
    assert!(m.warm);
    assert_eq!(m.capacity, 2);
    assert!(m.runner_version.starts_with("comine-"));
    let gpu = &reg.hardware[0].gpu_info["0"];
    assert!(gpu.name.contains("simulated"), "{}", gpu.name);
    assert_eq!(gpu.memory_total, 24 << 30);

    // The orchestrator checks headers, parts, url/file-name match and the 4x PNG size.
    match r
        .orch
        .ai_job(AiJobSpec::upscale(MODEL, png(40, 24)), WAIT)
        .await
    {
        AiOutcome::Done { json, files } => {
            assert_eq!(files.len(), 1);
            assert_eq!(json["images"][0]["url"], files[0].name);
            assert_eq!(json["images"][0]["seed"], 1);
        }
        other => panic!("expected a result, got {other:?}"),
    }
    let rec = wait_record(&r.handler, 1).await;
    assert!(rec.outcome.is_ok() && rec.delivered);
    assert_eq!(rec.units, 40 * 24, "upscale bills input h x w");
    r.shutdown.cancel();
    r.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_answered_with_an_error_and_the_worker_keeps_serving() {
    let Some(env) = ai_env() else { return };
    // A runner that answers garbage, for an extra model.
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage_url = format!("http://{}", garbage.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = garbage.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                let _ = s.read(&mut buf).await;
                let body = "<html>bad gateway</html>";
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                            .as_bytes(),
                    )
                    .await;
            });
        }
    });
    let runners = vec![RunnerConfig {
        url: garbage_url,
        token: None,
        pipeline: "upscale".into(),
        model_id: "garbage-model".into(),
    }];
    let r = rig(&env, runners, Duration::ZERO, Duration::from_secs(20)).await;

    let cases: Vec<(&str, AiJobSpec, &str, &str)> = vec![
        (
            "not an image",
            AiJobSpec::upscale(MODEL, Bytes::from_static(b"GIF89a...")),
            "not a readable PNG",
            "bad_input",
        ),
        (
            "above the pixel limit",
            AiJobSpec::upscale(MODEL, png(100, 100)),
            "above the limit",
            "too_large",
        ),
        (
            "unknown model",
            AiJobSpec::upscale("no-such-model", png(8, 8)),
            "is not served here",
            "unknown_model",
        ),
        (
            "unserved pipeline",
            AiJobSpec {
                pipeline: "llm".into(),
                model_id: "meta-llama".into(),
                request: serde_json::json!({"prompt": "hi"}),
                input: AiInput::None,
            },
            "pipeline \"llm\" is not served here",
            "unknown_pipeline",
        ),
        (
            "input_url times out",
            AiJobSpec {
                input: AiInput::Stall,
                ..AiJobSpec::upscale(MODEL, Bytes::new())
            },
            "did not download within",
            "input_timeout",
        ),
        (
            "runner answers garbage",
            AiJobSpec::upscale("garbage-model", png(8, 8)),
            "not JSON",
            "runner_error",
        ),
    ];
    for (i, (what, job, text, reason)) in cases.into_iter().enumerate() {
        match r.orch.ai_job(job, WAIT).await {
            AiOutcome::Error(msg) => assert!(msg.contains(text), "{what}: {msg}"),
            other => panic!("{what}: expected an error answer, got {other:?}"),
        }
        // The record follows the answer.
        let rec = wait_record(&r.handler, i + 1).await;
        let failure = rec.outcome.expect_err(what);
        assert_eq!(failure.reason, reason, "{what}");
        assert!(rec.delivered, "{what}: the error reached the orchestrator");
        assert_eq!(rec.units, 0, "{what}: nothing billed");
    }
    // Still serving.
    assert!(matches!(
        r.orch
            .ai_job(AiJobSpec::upscale(MODEL, png(16, 16)), WAIT)
            .await,
        AiOutcome::Done { .. }
    ));
    r.shutdown.cancel();
    r.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_offer_reregisters_at_once_and_a_restored_one_comes_back() {
    let Some(env) = ai_env() else { return };
    let r = rig(&env, vec![], Duration::ZERO, Duration::from_secs(20)).await;
    r.offer.send_replace(offer(1));
    r.orch
        .wait_for_ai_capacity("upscale", MODEL, |c| c == 1, Duration::from_secs(10))
        .await
        .unwrap();
    r.offer.send_replace(offer(0));
    r.orch
        .wait_for_ai_capacity("upscale", MODEL, |c| c == 0, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(r.orch.live_ai_workers(), 0, "an empty offer unregisters");
    r.offer.send_replace(offer(2));
    r.orch
        .wait_for_ai_capacity("upscale", MODEL, |c| c == 2, Duration::from_secs(10))
        .await
        .unwrap();
    r.shutdown.cancel();
    r.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_jobs_in_flight_before_unregistering() {
    let Some(env) = ai_env() else { return };
    // Jobs take 1.5 s; a 10 s grace lets them finish.
    let r = rig(
        &env,
        vec![],
        Duration::from_millis(1500),
        Duration::from_secs(10),
    )
    .await;
    let orch = Arc::new(r.orch);
    let job = {
        let orch = orch.clone();
        tokio::spawn(async move {
            orch.ai_job(AiJobSpec::upscale(MODEL, png(16, 16)), WAIT)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.shutdown.cancel();
    assert!(
        matches!(job.await.unwrap(), AiOutcome::Done { .. }),
        "the job in flight finishes within the grace"
    );
    r.task.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(orch.live_ai_workers(), 0, "unregistered after answering");

    // With a grace shorter than the job, it is cancelled and answered with an error.
    let r = rig(
        &env,
        vec![],
        Duration::from_secs(30),
        Duration::from_millis(200),
    )
    .await;
    let orch = Arc::new(r.orch);
    let job = {
        let orch = orch.clone();
        tokio::spawn(async move {
            orch.ai_job(AiJobSpec::upscale(MODEL, png(16, 16)), WAIT)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.shutdown.cancel();
    match job.await.unwrap() {
        AiOutcome::Error(msg) => assert!(msg.contains("cancelled"), "{msg}"),
        other => panic!("expected an error answer, got {other:?}"),
    }
    r.task.await.unwrap().unwrap();
}

/// The take-back protocol against the orchestrator: it re-registers without the model
/// (the orchestrator sees capacity 0), a job in flight past the drain bound is cancelled
/// and answered (not dropped), the model is unloaded; loaded and offered again, it is back.
/// (`daemon_ai_leases` runs the same protocol driven by the scheduler's decisions.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_take_back_reregisters_answers_in_flight_jobs_and_returns() {
    use comine::ai::in_flight::InFlightJobs;
    use comine::daemon::ai::{take_back, TakeBack};
    let Some(env) = ai_env() else { return };
    // Jobs take 3 s; the drain bound is 0.5 s, so the one in flight is cancelled and answered.
    let r = rig(
        &env,
        vec![],
        Duration::from_secs(3),
        Duration::from_secs(20),
    )
    .await;
    let jobs = InFlightJobs::default();
    let orch = Arc::new(r.orch);
    let job = {
        let orch = orch.clone();
        tokio::spawn(async move {
            orch.ai_job(AiJobSpec::upscale(MODEL, png(16, 16)), WAIT)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The in-flight job is counted and cancellable through the tracker (as daemon::ai does).
    let (guard, token) = jobs.enter(MODEL);
    let canceller = tokio::spawn(async move {
        token.cancelled().await;
        drop(guard);
    });
    let t = take_back(
        &r.handler.svc,
        &jobs,
        &r.offer,
        MODEL,
        "PoSt window open: a proof needs GPU 0",
        Duration::from_millis(500),
        vec![],
    )
    .await;
    assert_eq!(
        t,
        TakeBack {
            drained: 0,
            cancelled: 1
        },
        "the job past the bound is cancelled"
    );
    orch.wait_for_ai_capacity("upscale", MODEL, |c| c == 0, Duration::from_secs(10))
        .await
        .expect("re-registered without the model");
    assert!(!r.handler.svc.is_loaded(MODEL), "unloaded");
    canceller.await.unwrap();
    // The job in flight ran on the handler's own (un-tracked) path here; it is answered
    // either way — never left to the orchestrator's timeout.
    match job.await.unwrap() {
        AiOutcome::Done { .. } | AiOutcome::Error(_) => {}
        other => panic!("the job in flight must be answered, got {other:?}"),
    }
    // Return: load and offer again.
    r.handler.svc.load(MODEL).unwrap();
    assert!(r.handler.svc.is_loaded(MODEL), "loaded again");
    r.offer.send_replace(offer(2));
    orch.wait_for_ai_capacity("upscale", MODEL, |c| c == 2, Duration::from_secs(10))
        .await
        .expect("offered again");
    r.shutdown.cancel();
    r.task.await.unwrap().unwrap();
}
