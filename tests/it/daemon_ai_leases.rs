//! The VRAM lease of an AI model, end to end on a simulated GPU: the daemon assembled
//! in-process with the real scheduler (sim telemetry, so the test can start a C2 or a proof
//! on the device) and its AI worker linked to the test orchestrator, running the real model
//! on CPU. The scheduler is the only lease policy; the daemon carries its decisions out.
//!
//! A scripted C2 start and a PoSt each take the lease back with the scheduler's reason: the
//! worker re-registers without the model (the orchestrator sees its capacity drop), the job
//! in flight is answered with an error (not dropped), the model is unloaded and its memory
//! leaves the simulated device. When the pressure ends the lease returns after
//! `model_return_after_ms`, and the model is loaded and offered again. The model's memory is
//! on the simulated device exactly once: its own 6 GiB on a 12 GiB GPU never makes the
//! scheduler take it back (counted twice, it would).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::ai::{ai_env, test_picture};
use bytes::Bytes;
use comine::ai::image::encode_png;
use comine::config::Config;
use comine::daemon::admission::{Admission, SchedAdmission};
use comine::daemon::rendition_store::EmbeddedStore;
use comine::daemon::Daemon;
use comine::gpu::{JobLoad, SimGpu};
use comine::livepeer::test_orchestrator::{TestOrchestrator, TestOrchestratorConfig};
use comine::livepeer::test_orchestrator_ai::{AiJobSpec, AiOutcome};
use comine::livepeer::TranscoderConfig;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const MODEL: &str = comine::ai::TEST_MODEL_ID;
const WAIT: Duration = Duration::from_secs(60);
const MODEL_MIB: u64 = 6 << 10;

fn leases(d: &Daemon) -> Value {
    d.ai.get().expect("the AI side started").leases.to_json()
}

async fn wait_leases(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let l = leases(d);
        if pred(&l) {
            return l;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {what}; leases: {l:#}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The model's memory on the simulated GPU: (processes, bytes) of `comine-ai`.
fn sim_models(sim: &SimGpu) -> (usize, u64) {
    let snap = sim.poll();
    let ours: Vec<_> = snap.devices[0]
        .processes
        .iter()
        .filter(|p| p.name == "comine-ai")
        .collect();
    (
        ours.len(),
        ours.iter().filter_map(|p| p.memory_bytes).sum::<u64>(),
    )
}

/// The daemon in-process on `sim:rtx3060` (12 GiB) with the real scheduler and the test
/// model declared at `vram_mib`, its AI worker linked to a test orchestrator.
struct Rig {
    d: Arc<Daemon>,
    sim: SimGpu,
    orch: Arc<TestOrchestrator>,
    stop: CancellationToken,
    link: tokio::task::JoinHandle<Result<(), comine::livepeer::LivepeerError>>,
    cancel: CancellationToken,
    _root: tempfile::TempDir,
}

async fn rig(env: &crate::common::ai::AiEnv, vram_mib: u64) -> Rig {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut config = Config::default();
    config.gpu.backend = "sim:rtx3060".into();
    config.gpu.poll_interval_ms = 50;
    config.scheduler.tick_interval_ms = 50;
    config.scheduler.model_return_after_ms = 1_500;
    config.transcode.calibrate = false;
    config.ai = comine::ai::Config {
        onnxruntime_lib: Some(env.lib.clone()),
        threads: 1,
        max_input_pixels: 256 * 256,
        // A job still running at the take-back is cancelled at once, and answered.
        lease_drain_secs: 0,
        models: vec![comine::ai::ModelConfig {
            pipeline: "upscale".into(),
            model_id: MODEL.into(),
            path: Some(env.model.clone()),
            warm: true,
            vram_mib,
        }],
        ..comine::ai::Config::default()
    };
    let cancel = CancellationToken::new();
    let adm = SchedAdmission::start(&config, &data, 2, cancel.clone())
        .await
        .unwrap();
    let sim = adm.sim().expect("sim telemetry gives the test its devices");
    let d = Daemon::open(
        config,
        data.clone(),
        Arc::new(EmbeddedStore::open(&data, None).unwrap()),
        Arc::new(adm),
        "t".repeat(32),
    )
    .unwrap();
    let orch = Arc::new(
        TestOrchestrator::start(TestOrchestratorConfig::default())
            .await
            .unwrap(),
    );
    let mut tcfg = TranscoderConfig::new(orch.addr(), orch.secret());
    tcfg.capacity_dwell = Duration::from_millis(200);
    let stop = CancellationToken::new();
    let link = comine::daemon::ai::start(&d, Some(&tcfg), stop.clone())
        .await
        .unwrap()
        .expect("linked to the orchestrator");
    Rig {
        d,
        sim,
        orch,
        stop,
        link,
        cancel,
        _root: root,
    }
}

impl Rig {
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.link.await;
        self.d.shutdown(Duration::from_secs(5)).await;
        self.cancel.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_c2_and_a_post_each_take_the_lease_back_jobs_are_answered_and_it_returns() {
    let Some(env) = ai_env() else { return };
    // The model declares 6 GiB of the 12: counted twice, it would leave less than the
    // 2 GiB reserve and the scheduler would take it back for its own memory.
    let r = rig(&env, MODEL_MIB).await;
    let (d, sim, orch) = (&r.d, &r.sim, &r.orch);
    orch.wait_for_ai_capacity("upscale", MODEL, |c| c == 1, WAIT)
        .await
        .expect("the granted model is offered");
    let l = leases(d);
    assert_eq!(l["policy"], "scheduler", "{l:#}");
    assert_eq!(l["models"][0]["held"], true, "{l:#}");
    assert_eq!(l["decisions"][0]["action"], "grant", "{l:#}");
    assert!(
        l["decisions"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("headroom"),
        "{l:#}"
    );
    assert_eq!(
        sim_models(sim),
        (1, MODEL_MIB << 20),
        "the loaded model is on the simulated GPU once"
    );

    let png = Bytes::from(encode_png(&test_picture(256, 256, 5)).unwrap());
    for (i, pressure) in ["c2", "post"].into_iter().enumerate() {
        // A job in flight when the pressure starts.
        let job = {
            let (o, png) = (orch.clone(), png.clone());
            tokio::spawn(async move { o.ai_job(AiJobSpec::upscale(MODEL, png), WAIT).await })
        };
        wait_leases(d, "the job in flight", |l| l["models"][0]["in_flight"] == 1).await;
        let load = match pressure {
            "c2" => JobLoad::Sealing { sm_pct: 90.0 },
            _ => JobLoad::Proof { sm_pct: 90.0 },
        };
        let scripted = sim.start_job(0, load).unwrap();
        let taken = i + 1;
        let l = wait_leases(d, "the take-back carried out", |l| {
            l["carried_out"]
                .as_array()
                .is_some_and(|c| c.iter().filter(|c| c["action"] == "unloaded").count() == taken)
        })
        .await;
        let revoke = l["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find(|d| d["action"] == "revoke")
            .unwrap();
        let want = if pressure == "c2" {
            "C2 starting: sealing process lotus-worker"
        } else {
            "PoSt window open: a proof needs GPU 0"
        };
        assert!(
            revoke["reason"].as_str().unwrap().starts_with(want),
            "{pressure}: {l:#}"
        );
        assert_eq!(revoke["release"], true);
        let done = l["carried_out"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            done["reason"], revoke["reason"],
            "the scheduler's reason: {l:#}"
        );
        assert_eq!(done["cancelled"], 1, "{l:#}");
        assert_eq!(l["models"][0]["held"], false);
        // Re-registered without the model: the orchestrator sees its capacity drop.
        orch.wait_for_ai_capacity("upscale", MODEL, |c| c == 0, WAIT)
            .await
            .expect("re-registered without the model");
        // The job in flight is answered with an error, not left to time out.
        match job.await.unwrap() {
            AiOutcome::Error(msg) => assert!(msg.contains("cancelled"), "{msg}"),
            other => panic!(
                "{pressure}: the job in flight must be answered with an error, got {other:?}"
            ),
        }
        assert_eq!(
            sim_models(sim),
            (0, 0),
            "unloaded: the memory is free again"
        );
        // While the pressure lasts, nothing comes back.
        tokio::time::sleep(Duration::from_millis(2_000)).await;
        assert_eq!(leases(d)["models"][0]["held"], false);
        // It ends: the lease returns (after model_return_after_ms), the model is loaded and
        // offered again.
        drop(scripted);
        let ended = Instant::now();
        let l = wait_leases(d, "the lease back", |l| l["models"][0]["held"] == true).await;
        assert!(
            ended.elapsed() >= Duration::from_millis(1_400),
            "returned after {:?}, before the calm period",
            ended.elapsed()
        );
        let grant = l["decisions"].as_array().unwrap().last().unwrap();
        assert_eq!(grant["action"], "grant", "{l:#}");
        assert!(
            grant["reason"]
                .as_str()
                .unwrap()
                .starts_with("no pressure for"),
            "{l:#}"
        );
        orch.wait_for_ai_capacity("upscale", MODEL, |c| c == 1, WAIT)
            .await
            .expect("offered again");
        assert_eq!(sim_models(sim), (1, MODEL_MIB << 20));
    }
    // Its own memory never took the lease back: the only revocations were the two above.
    let l = leases(d);
    let revokes: Vec<&Value> = l["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["action"] != "grant")
        .collect();
    assert_eq!(revokes.len(), 2, "{l:#}");
    // A job after the return is served.
    let small = Bytes::from(encode_png(&test_picture(16, 16, 1)).unwrap());
    assert!(matches!(
        orch.ai_job(AiJobSpec::upscale(MODEL, small), WAIT).await,
        AiOutcome::Done { .. }
    ));
    r.stop().await;
}

/// Loaded at start to validate it, a model the scheduler does not grant (it does not fit
/// above the reserve) is unloaded with the scheduler's reason and never offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_does_not_fit_is_denied_at_start_and_unloaded_with_the_reason() {
    let Some(env) = ai_env() else { return };
    // 11 GiB + the 2 GiB reserve on a 12 GiB GPU.
    let r = rig(&env, 11 << 10).await;
    let l = wait_leases(&r.d, "the model unloaded", |l| {
        l["models"][0]["loaded"] == false
    })
    .await;
    assert_eq!(l["decisions"][0]["action"], "deny", "{l:#}");
    assert!(
        l["decisions"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("no headroom"),
        "{l:#}"
    );
    assert_eq!(l["carried_out"][0]["action"], "unloaded", "{l:#}");
    assert_eq!(l["carried_out"][0]["reason"], l["decisions"][0]["reason"]);
    assert_eq!(
        sim_models(&r.sim),
        (0, 0),
        "its memory left the simulated GPU"
    );
    assert!(
        r.d.ai.get().unwrap().offer.borrow().models.is_empty(),
        "never offered"
    );
    r.stop().await;
}
