//! Scheduler decisions on the `sim` backend with scripted load traces.

use comine::gpu::{JobLoad, SimGpu, Snapshot};
use comine::post::{Phase, PostWindow};
use comine::sched::{
    Admitter, Config, ControllerStatus, Demand, JobClass, ProofSignal, RejectReason, Scheduler,
    SealAction, SealMode, TickInput,
};

const P720: f64 = 1280.0 * 720.0 * 30.0;

struct Rig {
    sim: SimGpu,
    sched: Scheduler,
    admitter: Admitter,
    now: u64,
    status: ControllerStatus,
    demand: Demand,
    proof: ProofSignal,
    post: PostWindow,
}

impl Rig {
    fn new(presets: &[&str], config: Config) -> Rig {
        Rig {
            sim: SimGpu::from_presets(presets, 42).unwrap(),
            sched: Scheduler::new(config),
            admitter: Admitter::default(),
            now: 0,
            status: ControllerStatus::default(),
            demand: Demand::default(),
            proof: ProofSignal::default(),
            post: PostWindow::default(),
        }
    }

    /// One 500 ms step: poll the sim, decide, apply the sealing action as a perfect controller.
    fn step(&mut self) -> comine::sched::Decision {
        self.now += 500;
        let snapshot: Snapshot = self.sim.poll();
        let input = TickInput {
            now_ms: self.now,
            snapshot,
            demand: self.demand,
            load: self.admitter.loads(),
            proof: self.proof.clone(),
            controller: self.status,
            post: self.post.clone(),
            safe_profile: None,
            models: Vec::new(),
        };
        let d = self.sched.tick(&input);
        self.admitter.update(&d.devices);
        match d.sealing.action {
            SealAction::Disable => self.status.sealing_disabled = true,
            SealAction::Enable => self.status.sealing_disabled = false,
            SealAction::None => {}
        }
        d
    }
}

fn fast_config() -> Config {
    Config {
        seal_sustain_ms: 2_000,
        min_dwell_ms: 10_000,
        // These rigs seal 8 GiB on 16 GiB cards to test other rules; the proof VRAM reserve
        // (which would hold such a card) has its own tests in `sched_proofs`.
        proof_vram_reserve_bytes: 0,
        ..Config::default()
    }
}

#[test]
fn transcode_surge_pauses_sealing_with_hysteresis_and_dwell() {
    let mut rig = Rig::new(&["rtx4090"], fast_config());
    rig.step();
    // Surge: live demand at 70% of the 2.6 Gpx/s rating.
    rig.demand.live_pps = 0.7 * 2.6e9;
    let mut first_disable = None;
    for i in 0..20 {
        let d = rig.step();
        if d.sealing.action == SealAction::Disable {
            first_disable = Some(i);
            assert!(
                d.sealing.reason.contains("high watermark"),
                "{}",
                d.sealing.reason
            );
            break;
        }
    }
    // Sustain 2 s at 500 ms steps: not before the 4th high tick.
    let i = first_disable.expect("sealing never paused under a sustained surge");
    assert!(i >= 4, "paused after {i} ticks, before the sustain time");
    // Demand falls between the watermarks: nothing changes.
    rig.demand.live_pps = 0.45 * 2.6e9;
    for _ in 0..30 {
        assert_eq!(rig.step().sealing.action, SealAction::None);
    }
    assert!(rig.status.sealing_disabled);
    // Demand falls below the low watermark: resumed once sustain and dwell have passed.
    rig.demand.live_pps = 0.1 * 2.6e9;
    let mut resumed = false;
    for _ in 0..30 {
        let d = rig.step();
        if d.sealing.action == SealAction::Enable {
            resumed = true;
            assert_eq!(d.sealing.desired, SealMode::Enabled);
            break;
        }
    }
    assert!(resumed && !rig.status.sealing_disabled);
    // Flapping demand right after a change is held back by the dwell time.
    rig.demand.live_pps = 0.9 * 2.6e9;
    for _ in 0..10 {
        assert_eq!(
            rig.step().sealing.action,
            SealAction::None,
            "dwell not respected"
        );
    }
}

#[test]
fn post_burst_drops_transcoding_to_the_floor_on_that_gpu_only() {
    let mut rig = Rig::new(&["rtx3090", "rtx3090"], fast_config());
    rig.step();
    let before = rig.step();
    let proof = rig
        .sim
        .start_job(1, JobLoad::Proof { sm_pct: 95.0 })
        .unwrap();
    let during = rig.step();
    let (d0, d1) = (&during.devices[0], &during.devices[1]);
    assert!(d1.proof_running && !d0.proof_running);
    assert!(
        (d1.budget_pps - 0.1 * 1.1e9).abs() < 1.0,
        "budget {}",
        d1.budget_pps
    );
    assert_eq!(d1.batch_budget_pps, 0.0, "no batch work next to a proof");
    assert_eq!(d0.budget_pps, before.devices[0].budget_pps);
    // Live jobs land on the GPU without the proof.
    for _ in 0..3 {
        let a = rig.admitter.admit(JobClass::Live, 2.0 * P720).unwrap();
        assert_eq!(a.device, 0);
        std::mem::forget(a.permit);
    }
    // An external proof signal (from the node) works the same way.
    drop(proof);
    rig.proof = ProofSignal {
        running: true,
        devices: Some(vec![0]),
        source: "test".into(),
    };
    let d = rig.step();
    assert!(d.devices[0].proof_running && !d.devices[1].proof_running);
    assert!(d.input.proof.running, "the input is part of the record");
}

#[test]
fn windowpost_plan_drains_then_steps_down_the_proving_gpu_with_a_vram_reserve() {
    let mut rig = Rig::new(&["a5000", "a5000"], fast_config());
    rig.step();
    let before = rig.step();
    let full_sessions = before.devices[1].livepeer_sessions;
    assert!(full_sessions > 2, "{full_sessions}");
    // Drain: the published Livepeer capacity of GPU 1 drops to the floor's, admission does not.
    rig.post = PostWindow {
        phase: Phase::Drain,
        deadline: Some(33),
        devices: Some(vec![1]),
        vram_reserve_bytes: 0,
        reason: "WindowPoSt deadline 33 opens in 13m0s: draining Livepeer sessions".into(),
    };
    let drain = rig.step();
    let d1 = &drain.devices[1];
    assert_eq!(d1.post_phase, Phase::Drain);
    assert_eq!(d1.budget_pps, before.devices[1].budget_pps);
    assert!(d1.livepeer_sessions < full_sessions);
    assert_eq!(drain.devices[0].livepeer_sessions, full_sessions);
    assert!(d1
        .reasons
        .iter()
        .any(|r| r.contains("deadline 33 opens in 13m0s")));
    // Step-down: the floor, no batch, and GPU 1 must keep 20 GiB free; a C2 holds 8 of its 24.
    let _c2 = rig
        .sim
        .start_job(1, JobLoad::Sealing { sm_pct: 90.0 })
        .unwrap();
    rig.post.phase = Phase::StepDown;
    rig.post.vram_reserve_bytes = 20 << 30;
    rig.post.reason = "WindowPoSt deadline 33 opens in 11m40s".into();
    let down = rig.step();
    let (d0, d1) = (&down.devices[0], &down.devices[1]);
    assert!(
        (d1.budget_pps - 0.1 * 1.1e9).abs() < 1.0,
        "{}",
        d1.budget_pps
    );
    assert_eq!(d1.batch_budget_pps, 0.0);
    assert!(
        !d1.admit,
        "the VRAM reserve holds the GPU: {:?}",
        d1.reasons
    );
    assert!(d1
        .reasons
        .iter()
        .any(|r| r == "WindowPoSt deadline 33 opens in 11m40s: transcoding at the proof floor"));
    assert!(d1.reasons.iter().any(|r| r.contains("VRAM reserve")));
    assert_eq!(d0.budget_pps, before.devices[0].budget_pps);
    assert_eq!(
        down.input.post.deadline,
        Some(33),
        "the plan is part of the record"
    );
    // New work goes to the other GPU.
    let a = rig.admitter.admit(JobClass::Live, P720).unwrap();
    assert_eq!(a.device, 0);
    // No schedule at all: the PoSt-safe profile on every GPU.
    rig.post = PostWindow {
        phase: Phase::Safe,
        deadline: None,
        devices: None,
        vram_reserve_bytes: 0,
        reason: "no WindowPoSt schedule yet: PoSt-safe profile".into(),
    };
    let safe = rig.step();
    for d in &safe.devices {
        assert!((d.budget_pps - 0.5 * 1.1e9).abs() < 1.0, "{}", d.budget_pps);
        assert!(d.reasons.iter().any(|r| r.contains("PoSt-safe")));
    }
}

#[test]
fn thermal_throttle_holds_admission_then_recovers() {
    let mut rig = Rig::new(&["a4000"], fast_config());
    // Moderate sealing (below the power cap) in a hot chassis.
    let _seal = rig
        .sim
        .start_job(0, JobLoad::Sealing { sm_pct: 60.0 })
        .unwrap();
    rig.sim.set_thermal_offset(0, 30.0);
    let mut held = None;
    for _ in 0..20 {
        let d = rig.step();
        if !d.devices[0].admit {
            held = Some(d);
            break;
        }
    }
    let d = held.expect("a hot GPU kept admitting");
    assert!(
        d.devices[0]
            .reasons
            .iter()
            .any(|r| r.contains("temperature") || r.contains("thermal")),
        "{:?}",
        d.devices[0].reasons
    );
    let e = rig.admitter.admit(JobClass::Live, P720).unwrap_err();
    assert_eq!(e.reason, RejectReason::Holding);
    assert!(e.retry_after.as_millis() > 0);
    rig.sim.set_thermal_offset(0, -30.0);
    let mut ok = false;
    for _ in 0..20 {
        if rig.step().devices[0].admit {
            ok = true;
            break;
        }
    }
    assert!(ok, "never recovered after cooling");
    assert!(rig.admitter.admit(JobClass::Live, P720).is_ok());
}

#[test]
fn lost_gpu_is_unhealthy_and_the_rest_keep_running() {
    let mut rig = Rig::new(&["rtx3090", "a4000"], fast_config());
    rig.step();
    rig.sim.set_lost(0, true);
    let d = rig.step();
    assert!(!d.devices[0].healthy && !d.devices[0].admit);
    assert_eq!(d.devices[0].budget_pps, 0.0);
    assert!(d.devices[0].reasons[0].contains("fallen off the bus"));
    assert!(d.devices[1].healthy && d.devices[1].admit);
    for _ in 0..4 {
        let a = rig.admitter.admit(JobClass::Live, P720).unwrap();
        assert_eq!(a.device, 1);
        std::mem::forget(a.permit);
    }
    rig.sim.set_lost(1, true);
    rig.step();
    assert_eq!(
        rig.admitter.admit(JobClass::Live, P720).unwrap_err().reason,
        RejectReason::AllUnhealthy
    );
}

#[test]
fn admission_picks_lowest_pixel_load_and_counts_pixels_not_sessions() {
    let mut rig = Rig::new(&["a4000", "a4000"], fast_config());
    rig.step();
    // One big 1080p60 job on one device, then small ones should go to the other device.
    let big = rig
        .admitter
        .admit(JobClass::Live, 1920.0 * 1080.0 * 60.0)
        .unwrap();
    let small1 = rig
        .admitter
        .admit(JobClass::Live, 426.0 * 240.0 * 30.0)
        .unwrap();
    let small2 = rig
        .admitter
        .admit(JobClass::Live, 426.0 * 240.0 * 30.0)
        .unwrap();
    assert_ne!(big.device, small1.device);
    assert_eq!(
        small1.device, small2.device,
        "sessions were counted instead of pixels"
    );
    // A job bigger than any device's remaining budget is refused, with a reason.
    let e = rig.admitter.admit(JobClass::Live, 5e9).unwrap_err();
    assert_eq!(e.reason, RejectReason::OverCapacity);
    assert!(e.message.contains("Mpx/s"));
    // Bad input is refused, not panicked on.
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert_eq!(
            rig.admitter.admit(JobClass::Live, bad).unwrap_err().reason,
            RejectReason::InvalidRequest
        );
    }
    // Dropping a permit gives the capacity back.
    let loads = rig.admitter.loads();
    drop(big);
    let after = rig.admitter.loads();
    assert!(
        after.iter().map(|l| l.live_pps).sum::<f64>()
            < loads.iter().map(|l| l.live_pps).sum::<f64>()
    );
}

#[test]
fn per_gpu_session_limit_on_a_mixed_rig() {
    let mut cfg = fast_config();
    cfg.session_limits.insert("1".into(), 2);
    let mut rig = Rig::new(&["rtx3090", "a4000"], cfg);
    let d = rig.step();
    assert_eq!(d.devices[0].session_limit, Some(5), "GeForce driver cap");
    assert_eq!(
        d.devices[1].session_limit,
        Some(2),
        "configured per-GPU limit"
    );
    let mut per_dev = [0u32; 2];
    let mut permits = Vec::new();
    loop {
        match rig.admitter.admit(JobClass::Live, 1e6) {
            Ok(a) => {
                per_dev[a.device as usize] += 1;
                permits.push(a);
            }
            Err(e) => {
                assert_eq!(e.reason, RejectReason::SessionLimit);
                break;
            }
        }
    }
    assert_eq!(per_dev, [5, 2]);
    // The sim would have refused a 6th session: the scheduler never hit the real cap.
    for a in &permits {
        rig.sim
            .start_job(
                a.device,
                JobLoad::Transcode {
                    pixels_per_sec: 1e6,
                },
            )
            .map(std::mem::forget)
            .unwrap();
    }
}

#[test]
fn batch_goes_last() {
    let mut rig = Rig::new(&["a4000"], fast_config());
    let _seal = rig
        .sim
        .start_job(0, JobLoad::Sealing { sm_pct: 70.0 })
        .unwrap();
    let d = rig.step();
    let dev = &d.devices[0];
    assert!(dev.sealing_active);
    assert!(dev.batch_budget_pps <= dev.budget_pps * 0.2 + 1.0);
    // Batch fills only its share; live still gets in afterwards.
    let mut batch = Vec::new();
    while let Ok(a) = rig.admitter.admit(JobClass::Batch, 2e7) {
        batch.push(a);
        assert!(batch.len() < 1000);
    }
    assert!(!batch.is_empty());
    assert!(rig.admitter.admit(JobClass::Live, 2e7).is_ok());
    // Batch demand alone never pauses sealing.
    rig.demand.batch_pps = 10e9;
    for _ in 0..40 {
        assert_ne!(rig.step().sealing.action, SealAction::Disable);
    }
}

#[test]
fn unreachable_node_keeps_safe_limits_and_never_leaves_sealing_disabled() {
    let mut rig = Rig::new(
        &["rtx4090"],
        Config {
            min_dwell_ms: 600_000,
            ..fast_config()
        },
    );
    rig.demand.live_pps = 0.9 * 2.6e9;
    while rig.step().sealing.action != SealAction::Disable {}
    assert!(rig.status.sealing_disabled);
    rig.status.reachable = false;
    // The apply fails (node down) so sealing_disabled stays true: the core asks to enable
    // every tick, ignoring the dwell, until it works.
    rig.status.sealing_disabled = true;
    let d = rig.step();
    assert_eq!(d.sealing.action, SealAction::Enable);
    assert!(d.sealing.reason.contains("unreachable"));
    rig.status.sealing_disabled = true;
    let d = rig.step();
    assert_eq!(d.sealing.action, SealAction::Enable, "retried");
    assert!(d.devices[0].budget_pps <= 0.5 * 2.6e9 + 1.0);
    assert!(d.devices[0]
        .reasons
        .iter()
        .any(|r| r.contains("unreachable")));
}

#[test]
fn coarse_controller_is_undone_when_a_proof_appears() {
    let mut rig = Rig::new(
        &["rtx4090"],
        Config {
            min_dwell_ms: 600_000,
            ..fast_config()
        },
    );
    rig.status.coarse = true;
    rig.demand.live_pps = 0.9 * 2.6e9;
    while rig.step().sealing.action != SealAction::Disable {}
    let _p = rig
        .sim
        .start_job(0, JobLoad::Proof { sm_pct: 90.0 })
        .unwrap();
    let d = rig.step();
    assert_eq!(
        d.sealing.action,
        SealAction::Enable,
        "cordon must not block a proof"
    );
}

#[test]
fn decisions_are_serialisable_records() {
    let mut rig = Rig::new(&["rtx3090"], fast_config());
    let d = rig.step();
    let v = serde_json::to_value(&d).unwrap();
    for key in [
        "seq",
        "at_ms",
        "input",
        "devices",
        "capacity",
        "sealing",
        "demand_ratio",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["source"], "simulated");
    assert_eq!(v["input"]["snapshot"]["source"], "simulated");
    assert_eq!(v["sealing"]["action"], "none");
    assert!(v["capacity"]["livepeer_sessions"].as_u64().unwrap() >= 1);
    let back: comine::sched::Decision = serde_json::from_value(v).unwrap();
    assert_eq!(back, d);
}

/// lotus #7845: idle lotus-miner / lotus-worker processes keep a CUDA context open. Their
/// presence in NVML's process list is not a proof; their activity is.
#[test]
fn an_idle_prover_context_does_not_hold_transcoding_down_a_busy_one_does() {
    let mut rig = Rig::new(&["rtx3090"], fast_config());
    let _context = rig
        .sim
        .start_job(
            0,
            JobLoad::ProverContext {
                memory_bytes: 400 << 20,
            },
        )
        .unwrap();
    let mut d = rig.step();
    for _ in 0..4 {
        d = rig.step();
    }
    let dev = &d.devices[0];
    assert!(
        !dev.proof_running,
        "an idle context counted as a proof: {:?}",
        dev.reasons
    );
    assert!(dev.budget_pps > dev.rated_pps * 0.5, "{dev:?}");
    assert!(rig.admitter.admit(JobClass::Live, P720).is_ok());

    // The same prover starts proving: SM use and memory rise, transcoding drops to the floor.
    let _proof = rig
        .sim
        .start_job(0, JobLoad::Proof { sm_pct: 85.0 })
        .unwrap();
    let d = rig.step();
    let dev = &d.devices[0];
    assert!(dev.proof_running, "{:?}", dev.reasons);
    let floor = dev.rated_pps * fast_config().proof_floor_fraction;
    assert!(dev.budget_pps <= floor + 1.0, "{dev:?}");
}
