//! `comine run --orch-addr …` with `[ai]` models: the real binary registers as a Livepeer
//! AI worker beside the transcoder, on a simulated GPU, runs the real model on CPU, and
//! accounts every job (done and failed) in the ledger as class `ai`, in `/v1/status`,
//! `/metrics` and `comine ledger export`. SIGTERM answers the job in flight, then
//! unregisters. A job is in the ledger from its arrival, so a crash mid-job leaves a
//! record and the same task never counts twice; an orchestrator refusing the AI link's
//! secret stops `comine run` with that error.

use std::time::{Duration, Instant};

use crate::common::ai::{ai_env, test_picture};
use bytes::Bytes;
use comine::ai::image::encode_png;
use comine::livepeer::test_orchestrator::{TestOrchestrator, TestOrchestratorConfig};
use comine::livepeer::test_orchestrator_ai::{AiInput, AiJobSpec, AiOutcome};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);
const MODEL: &str = comine::ai::TEST_MODEL_ID;

async fn wait_status(
    d: &crate::common::Daemon,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let s = d.get_json("/v1/status").await;
        if pred(&s) {
            return s;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {what}; ai: {}",
            s["ai"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `[ai]` with the test model on a simulated GPU.
fn ai_config(root: &std::path::Path, env: &crate::common::ai::AiEnv) -> std::path::PathBuf {
    let ai = format!(
        "[gpu]\nbackend = \"sim:rtx3090\"\n\n[ai]\nonnxruntime_lib = \"{}\"\nthreads = 2\nmax_input_pixels = 4096\ninput_timeout_secs = 120\n\
         [[ai.models]]\npipeline = \"upscale\"\nmodel_id = \"{MODEL}\"\npath = \"{}\"\nvram_mib = 512\n",
        env.lib.display(),
        env.model.display()
    );
    crate::common::write_config(root, &ai)
}

fn start_linked(
    root: &std::path::Path,
    config: &std::path::Path,
    orch: &TestOrchestrator,
) -> crate::common::Daemon {
    let secret = root.join("orch-secret");
    std::fs::write(&secret, orch.secret()).unwrap();
    crate::common::Daemon::start_with(
        root,
        config,
        &[
            "--orch-addr",
            &orch.addr(),
            "--orch-secret",
            &format!("@{}", secret.display()),
            "--capacity",
            "1",
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ai_job_is_in_the_ledger_on_arrival_and_a_crash_never_counts_it_twice() {
    let Some(env) = ai_env() else { return };
    let root = tempfile::tempdir().unwrap();
    let orch = std::sync::Arc::new(
        TestOrchestrator::start(TestOrchestratorConfig::default())
            .await
            .unwrap(),
    );
    let config = ai_config(root.path(), &env);
    let mut d = start_linked(root.path(), &config, &orch);
    orch.wait_for_ai_capacity("upscale", MODEL, |c| c == 1, WAIT)
        .await
        .unwrap();
    // A job whose input never comes: in the ledger (`received`) while it waits for it.
    const TASK: i64 = 7_000_001;
    let stalled = AiJobSpec {
        input: AiInput::Stall,
        ..AiJobSpec::upscale(MODEL, Bytes::new())
    };
    let o = orch.clone();
    let first =
        tokio::spawn(async move { o.ai_job_as(TASK, stalled, Duration::from_secs(15)).await });
    wait_status(&d, "the arriving job in the ledger", |s| {
        s["jobs"]["received"] == 1
    })
    .await;
    // Killed mid-job: the restart fails it as interrupted (not counted).
    d.kill9();
    let mut d = start_linked(root.path(), &config, &orch);
    let st = wait_status(&d, "the interrupted job failed", |s| {
        s["jobs"]["failed"] == 1 && s["jobs"].get("received").is_none()
    })
    .await;
    assert!(st["jobs"].get("done").is_none(), "{}", st["jobs"]);
    assert!(
        d.log().contains("AI job interrupted by the last stop"),
        "{}",
        d.log()
    );
    assert!(
        !matches!(first.await.unwrap(), AiOutcome::Done { .. }),
        "a killed worker answered nothing"
    );
    orch.wait_for_ai_capacity("upscale", MODEL, |c| c == 1, WAIT)
        .await
        .unwrap();
    // The same task id again (go-livepeer's task ids restart with the orchestrator): it
    // runs and is answered, but the ledger keeps its one entry.
    let png = |w, h| Bytes::from(encode_png(&test_picture(w, h, 3)).unwrap());
    let again = orch
        .ai_job_as(TASK, AiJobSpec::upscale(MODEL, png(32, 24)), WAIT)
        .await;
    assert!(matches!(again, AiOutcome::Done { .. }), "{again:?}");
    let st = wait_status(&d, "the re-sent task seen as a duplicate", |s| {
        s["ai"]["jobs"]["duplicates"] == 1
    })
    .await;
    assert_eq!(st["jobs"]["failed"], 1, "{}", st["jobs"]);
    assert!(st["jobs"].get("done").is_none(), "{}", st["jobs"]);
    assert_eq!(st["ai"]["jobs"]["done"], 0);
    // A new task goes received → … → done and is counted once.
    assert!(matches!(
        orch.ai_job(AiJobSpec::upscale(MODEL, png(32, 24)), WAIT)
            .await,
        AiOutcome::Done { .. }
    ));
    let st = wait_status(&d, "the new task done", |s| {
        s["jobs"]["done"] == 1 && s["ai"]["jobs"]["done"] == 1
    })
    .await;
    assert_eq!(st["ai"]["jobs"]["units"], 32 * 24);
    assert!(d.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_refusing_the_ai_link_secret_stops_run_with_the_reason() {
    let Some(env) = ai_env() else { return };
    let root = tempfile::tempdir().unwrap();
    let orch = TestOrchestrator::start(TestOrchestratorConfig::default())
        .await
        .unwrap();
    // The transcoder link is accepted; only the AI side wants another secret.
    orch.set_ai_secret("not-the-transcoders-secret");
    let config = ai_config(root.path(), &env);
    let secret = root.path().join("orch-secret");
    std::fs::write(&secret, orch.secret()).unwrap();
    // Spawned by hand: the refusal can end the daemon before a poll sees its API address.
    let log = root.path().join("daemon.log");
    let mut child = std::process::Command::new(crate::common::BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(root.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--orch-addr", &orch.addr()])
        .arg("--orch-secret")
        .arg(format!("@{}", secret.display()))
        .args(["--capacity", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > WAIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "comine run kept running after the AI link was refused; log:\n{}",
                read_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = read_log();
    // 78: a configuration error, which the systemd unit does not restart.
    assert_eq!(status.code(), Some(78), "log:\n{log}");
    assert!(
        log.contains("the Livepeer AI-worker link was refused")
            && log.contains("rejected our secret")
            && log.contains("--orch-secret"),
        "the error says what failed and what to do; log:\n{log}"
    );
    assert!(
        orch.ai_registrations()
            .iter()
            .any(|r| r.secret == orch.secret()),
        "the worker did try to register"
    );
    assert_eq!(orch.live_ai_workers(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_ai_jobs_accounts_them_and_answers_in_flight_jobs_on_sigterm() {
    let Some(env) = ai_env() else { return };
    let root = tempfile::tempdir().unwrap();
    let orch = TestOrchestrator::start(TestOrchestratorConfig::default())
        .await
        .unwrap();
    let ai = format!(
        "[gpu]\nbackend = \"sim:rtx3090\"\n\n[ai]\nonnxruntime_lib = \"{}\"\nthreads = 2\nmax_input_pixels = 4096\n\
         [[ai.models]]\npipeline = \"upscale\"\nmodel_id = \"{MODEL}\"\npath = \"{}\"\nvram_mib = 512\n\n\
         [earnings.ai]\nprice_per_unit = 3\npixels_per_unit = 2\n[earnings.ai.pipelines.upscale]\nprice_per_unit = 5\n",
        env.lib.display(),
        env.model.display()
    );
    let config = crate::common::write_config(root.path(), &ai);
    let secret = root.path().join("orch-secret");
    std::fs::write(&secret, orch.secret()).unwrap();
    let mut d = crate::common::Daemon::start_with(
        root.path(),
        &config,
        &[
            "--orch-addr",
            &orch.addr(),
            "--orch-secret",
            &format!("@{}", secret.display()),
            "--capacity",
            "1",
        ],
    );
    orch.wait_for_ai_capacity("upscale", MODEL, |c| c == 1, WAIT)
        .await
        .unwrap();
    let reg = orch.ai_registrations().pop().unwrap();
    let gpu = &reg.hardware[0].gpu_info["0"];
    assert!(gpu.name.contains("(simulated)"), "{}", gpu.name);
    assert_eq!(gpu.memory_total, 24 << 30, "the sim preset's memory");
    let m = &reg
        .capabilities
        .unwrap()
        .constraints
        .unwrap()
        .per_capability[&30]
        .models[MODEL];
    assert!(m.warm && m.capacity == 1);

    // One good job, one that is not an image, one above the pixel limit.
    let png = |w, h| Bytes::from(encode_png(&test_picture(w, h, 3)).unwrap());
    assert!(matches!(
        orch.ai_job(AiJobSpec::upscale(MODEL, png(32, 24)), WAIT)
            .await,
        AiOutcome::Done { .. }
    ));
    for (bad, text) in [
        (
            Bytes::from_static(b"\x00\x01 not an image"),
            "not a readable PNG",
        ),
        (png(80, 60), "above the limit"),
    ] {
        match orch.ai_job(AiJobSpec::upscale(MODEL, bad), WAIT).await {
            AiOutcome::Error(msg) => assert!(msg.contains(text), "{msg}"),
            other => panic!("expected an error answer, got {other:?}"),
        }
    }
    // The AI counters move when the answer is sent, the ledger a moment later: wait for both.
    let st = wait_status(&d, "3 AI jobs accounted", |s| {
        s["ai"]["jobs"]["done"] == 1
            && s["ai"]["jobs"]["failed"] == 2
            && s["jobs"]["failed"].as_u64().unwrap_or(0) >= 2
            && s["jobs"]["done"].as_u64().unwrap_or(0) >= 1
            && s["jobs"].get("transcoding").is_none()
    })
    .await;
    assert_eq!(
        st["ai"]["jobs"]["units"],
        32 * 24,
        "upscale bills input h x w"
    );
    assert_eq!(st["ai"]["link"]["state"], "registered");
    assert_eq!(st["ai"]["leases"]["models"][0]["held"], true);
    assert!(
        st["jobs"]["failed"].as_u64().unwrap_or(0) >= 2,
        "{}",
        st["jobs"]
    );

    let export = d.get_json("/v1/ledger/export?format=json").await;
    let jobs: Vec<&Value> = export["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["manifest_id"] == format!("ai:upscale/{MODEL}"))
        .collect();
    assert_eq!(jobs.len(), 1, "one done AI job in the statement");
    assert_eq!(jobs[0]["encoded_pixels"], 32 * 24);
    let metrics = d.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("comine_ai_jobs_total{pipeline=\"upscale\"")
            && metrics.contains("result=\"bad_input\"")
            && metrics.contains("result=\"too_large\""),
        "{metrics}"
    );

    // A video segment through comine's own API: upscaled x4, accounted as class `ai`.
    let seg = std::fs::read(crate::ai_video::tiny_segment()).unwrap();
    let post = |body: Vec<u8>| {
        d.http
            .post(d.url("/v1/ai/upscale"))
            .bearer_auth(&d.token)
            .body(body)
            .send()
    };
    let r = post(seg).await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let h = |k: &str| r.headers()[k].to_str().unwrap().to_string();
    assert_eq!(h("content-type"), "video/mp2t");
    assert_eq!(h("x-comine-output-size"), "192x128");
    let frames: u64 = h("x-comine-frames").parse().unwrap();
    assert_eq!(h("x-comine-units"), (48 * 32 * frames).to_string());
    let video_job = h("x-comine-job-id");
    let out = root.path().join("up.ts");
    std::fs::write(&out, r.bytes().await.unwrap()).unwrap();
    let p = crate::common::probe(&out);
    assert_eq!((p.width, p.height, p.frames), (192, 128, frames));
    assert!(p.has_audio);
    // Not a video: refused with the reason, recorded failed; the daemon keeps serving.
    let r = post(b"garbage, not a segment".to_vec()).await.unwrap();
    let status = r.status();
    let e: Value = r.json().await.unwrap();
    assert_eq!(status, 422, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("not a media file"),
        "{e}"
    );
    let job = d.get_json(&format!("/v1/jobs/{video_job}")).await;
    assert_eq!(job["state"], "done");
    assert_eq!(job["class"], "ai");
    let st = wait_status(&d, "the video jobs accounted", |s| {
        s["ai"]["jobs"]["done"] == 2 && s["ai"]["jobs"]["failed"] == 3
    })
    .await;
    assert_eq!(st["ai"]["jobs"]["units"], 32 * 24 + 48 * 32 * frames);
    // Issue 13: both AI jobs are valued in Livepeer's units at `[earnings.ai]`'s price,
    // hand-computed: upscale 32 × 24 = 768 units × 5 wei = 3840; video-upscale
    // 48 × 32 × frames units × 3 wei ÷ 2 = 2304 × frames. Model `custom` keeps it all.
    let st = wait_status(&d, "the AI jobs valued", |s| {
        s["earnings"]["today"]["classes"]["ai"]["jobs"] == 2
    })
    .await;
    let ai = &st["earnings"]["today"]["classes"]["ai"];
    let gross = 3840 + 2304 * frames;
    assert_eq!(ai["pixels"], (768 + 1536 * frames).to_string(), "{ai}");
    assert_eq!(ai["gross_wei"], gross.to_string(), "{ai}");
    assert_eq!(ai["net_wei"], gross.to_string(), "{ai}");
    assert_eq!(ai["price_source"], "config");
    assert_eq!(st["earnings"]["today"]["gross_wei"], gross.to_string());
    assert!(st["earnings"]["today"]["classes"]
        .get("transcode")
        .is_none());
    let metrics = d.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("comine_ai_jobs_total{pipeline=\"video-upscale\""),
        "{metrics}"
    );

    // SIGTERM with a job in flight: it is answered, then the worker unregisters.
    let big = png(64, 64);
    let job = {
        let orch = std::sync::Arc::new(orch);
        let o = orch.clone();
        let h = tokio::spawn(async move { o.ai_job(AiJobSpec::upscale(MODEL, big), WAIT).await });
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(d.terminate(), "the daemon stops on SIGTERM");
        (h.await.unwrap(), orch)
    };
    match job.0 {
        AiOutcome::Done { .. } | AiOutcome::Error(_) => {}
        other => panic!("the job in flight must be answered, got {other:?}"),
    }
    assert_eq!(job.1.live_ai_workers(), 0);
}
