//! The scheduler's proof protections on the `sim` backend: the VRAM reserve a WindowPoSt
//! needs, running work taken back when a proof starts, no Livepeer session offered on a GPU
//! that proves, and the PoSt-safe profile when no proof source is configured.

use comine::gpu::{JobLoad, SimGpu};
use comine::sched::{
    Admitter, Config, ControllerStatus, Decision, Demand, JobClass, ProofSignal, Scheduler,
    TickInput,
};

const P720: f64 = 1280.0 * 720.0 * 30.0;

fn tick(
    sim: &SimGpu,
    sched: &mut Scheduler,
    admitter: &Admitter,
    now: u64,
    safe: Option<&str>,
) -> Decision {
    let input = TickInput {
        now_ms: now,
        snapshot: sim.poll(),
        demand: Demand::default(),
        load: admitter.loads(),
        proof: ProofSignal::default(),
        controller: ControllerStatus::default(),
        safe_profile: safe.map(String::from),
        post: Default::default(),
        models: Vec::new(),
    };
    let d = sched.tick(&input);
    admitter.update(&d.devices);
    d
}

#[test]
fn the_default_reserve_keeps_a_window_post_worth_of_vram_free() {
    // 8 GiB of sealing on a 16 GiB A4000 leaves < 8.5 GiB + headroom: no new transcode there.
    let sim = SimGpu::from_presets(&["a4000", "a5000"], 7).unwrap();
    let _c2_small = sim.start_job(0, JobLoad::Sealing { sm_pct: 50.0 }).unwrap();
    let _c2_big = sim.start_job(1, JobLoad::Sealing { sm_pct: 50.0 }).unwrap();
    let mut sched = Scheduler::new(Config::default());
    let admitter = Admitter::default();
    let d = tick(&sim, &mut sched, &admitter, 0, None);
    assert_eq!(
        Config::default().proof_vram_reserve_bytes,
        17 << 29,
        "8.5 GiB"
    );
    let small = &d.devices[0];
    assert!(!small.admit, "{:?}", small.reasons);
    assert!(
        small
            .reasons
            .iter()
            .any(|r| r.contains("kept for a WindowPoSt")),
        "{:?}",
        small.reasons
    );
    // The 24 GiB A5000 has room for both: it takes the work.
    assert!(d.devices[1].admit, "{:?}", d.devices[1].reasons);
    let placed = admitter.admit(JobClass::Live, P720).unwrap();
    assert_eq!(placed.device, 1);
    // A GPU that never proves can give the reserve up.
    let mut sched = Scheduler::new(Config {
        proof_vram_reserve_bytes: 0,
        ..Config::default()
    });
    let d = tick(&sim, &mut sched, &Admitter::default(), 0, None);
    assert!(d.devices[0].admit, "{:?}", d.devices[0].reasons);
}

#[test]
fn a_proof_takes_running_work_back_and_offers_no_session() {
    // An A5000: no driver session cap, so nine encodes fit.
    let sim = SimGpu::from_presets(&["a5000"], 7).unwrap();
    let mut sched = Scheduler::new(Config::default());
    let admitter = Admitter::default();
    let d = tick(&sim, &mut sched, &admitter, 0, None);
    assert!(d.devices[0].livepeer_sessions > 0, "{:?}", d.devices[0]);
    // Work admitted while the GPU is free: well above any proof floor.
    let held: Vec<_> = (0..6)
        .map(|_| admitter.admit(JobClass::Live, P720).unwrap())
        .chain((0..3).map(|_| admitter.admit(JobClass::Batch, P720).unwrap()))
        .collect();
    let d = tick(&sim, &mut sched, &admitter, 500, None);
    assert_eq!(
        d.devices[0].shed_pps, 0.0,
        "nothing to shed without a proof"
    );
    // A WindowPoSt starts on the GPU.
    let _proof = sim.start_job(0, JobLoad::Proof { sm_pct: 90.0 }).unwrap();
    let d = tick(&sim, &mut sched, &admitter, 1000, None);
    let dev = &d.devices[0];
    assert!(dev.proof_running);
    assert_eq!(dev.livepeer_sessions, 0, "a session offered during a proof");
    assert_eq!(d.capacity.livepeer_sessions, 0);
    let admitted = 9.0 * P720;
    assert!(
        (dev.shed_pps - (admitted - dev.budget_pps)).abs() < 1.0,
        "shed {} of {admitted} admitted, budget {}",
        dev.shed_pps,
        dev.budget_pps
    );
    assert_eq!(d.capacity.devices[0].shed_pps, dev.shed_pps, "published");
    assert!(
        dev.reasons.iter().any(|r| r.contains("shedding")),
        "{:?}",
        dev.reasons
    );
    // Once the load is at the floor, nothing more is shed.
    drop(held);
    let d = tick(&sim, &mut sched, &admitter, 1500, None);
    assert_eq!(d.devices[0].shed_pps, 0.0);
}

#[test]
fn no_proof_source_runs_the_post_safe_profile() {
    let sim = SimGpu::from_presets(&["rtx4090"], 7).unwrap();
    let mut sched = Scheduler::new(Config::default());
    let normal = tick(&sim, &mut sched, &Admitter::default(), 0, None);
    let safe = tick(
        &sim,
        &mut sched,
        &Admitter::default(),
        500,
        Some("no proof source configured"),
    );
    let (n, s) = (&normal.devices[0], &safe.devices[0]);
    assert!(s.budget_pps <= s.rated_pps * 0.5 + 1.0, "{s:?}");
    assert!(s.budget_pps < n.budget_pps);
    assert!(s.livepeer_sessions <= n.livepeer_sessions);
    assert!(
        s.reasons
            .iter()
            .any(|r| r == "PoSt-safe profile (no proof source configured)"),
        "{:?}",
        s.reasons
    );
    // The reason is part of the decision record.
    assert_eq!(
        safe.input.safe_profile.as_deref(),
        Some("no proof source configured")
    );
}
