//! The scheduler driver end to end: sim telemetry, lotus-worker double, persisted state.

use std::sync::Arc;
use std::time::Duration;

use comine::gpu::{Poller, SimGpu, Telemetry};
use comine::sched::{self, Config, Demand, SealMode};
use comine::seal::testserver::TestServer;
use comine::seal::{Controller, ControllerKind, LotusWorker, GPU_SEALING_TASKS, TT_C2, TT_PC2};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "tok";

fn cfg() -> Config {
    Config {
        tick_interval_ms: 20,
        seal_sustain_ms: 0,
        min_dwell_ms: 0,
        // 20 ms ticks fill the default 512-decision ring in 10 s; on a loaded machine the
        // decision that explains a pause must still be there when the test looks.
        decision_history: 100_000,
        ..Config::default()
    }
}

fn tasks() -> Vec<String> {
    GPU_SEALING_TASKS.map(String::from).to_vec()
}

/// The sched service on one labelled simulated GPU (`preset`, `seed`), polled every 20 ms,
/// with `controller` and its state in `dir`: the set-up every test here shares.
async fn start_on_sim(
    preset: &str,
    seed: u64,
    controller: Arc<dyn Controller>,
    dir: &std::path::Path,
    cancel: &CancellationToken,
) -> (sched::ServiceHandle, tokio::task::JoinHandle<()>) {
    let sim = SimGpu::from_presets(&[preset], seed).unwrap();
    let (snaps, poller) = Poller::spawn(
        Telemetry::Sim(sim),
        Duration::from_millis(20),
        cancel.clone(),
    );
    let h = sched::start(
        cfg(),
        tasks(),
        snaps,
        controller,
        dir.into(),
        None,
        cancel.clone(),
    )
    .await
    .unwrap();
    (h, poller)
}

async fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..250 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surge_pauses_sealing_and_shutdown_restores_it() {
    let srv = TestServer::start(TOKEN).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let ctl: Arc<dyn Controller> =
        Arc::new(LotusWorker::from_api_info(&srv.api_info(TOKEN), Duration::from_secs(2)).unwrap());
    let (h, poller) = start_on_sim("rtx3090", 3, ctl, dir.path(), &cancel).await;
    let mut cap = h.capacity();
    assert!(
        wait_for(|| cap.borrow_and_update().total_pps > 0.0).await,
        "capacity never published"
    );
    h.set_demand(Demand {
        live_pps: 1.0e9,
        batch_pps: 0.0,
    });
    assert!(
        wait_for(|| srv.state().disabled.len() == 4).await,
        "sealing not paused"
    );
    // The record (a row in the daemon's database, shared in this process) is finalised
    // right after the last TaskDisable returns.
    let store = sched::state::StateStore::open(dir.path()).unwrap();
    let mut on_disk = None;
    for _ in 0..250 {
        on_disk = store.load().await.unwrap();
        if on_disk.as_ref().is_some_and(|s| !s.disabled.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let on_disk = on_disk.expect("no sealing state recorded");
    assert_eq!(on_disk.controller, ControllerKind::LotusWorker);
    assert!(on_disk.disabled.contains(&TT_C2.to_string()));
    let decisions = h.decisions();
    assert!(
        decisions
            .iter()
            .any(|d| d.sealing.desired == SealMode::Disabled
                && d.sealing.reason.contains("high watermark")),
        "no recorded decision explains the pause"
    );
    assert!(!h.decisions().is_empty());
    // Shutdown while paused: everything re-enabled, state file gone.
    cancel.cancel();
    h.join().await;
    let _ = poller.await;
    assert!(
        srv.state().disabled.is_empty(),
        "left disabled after shutdown"
    );
    assert_eq!(
        store.load().await.unwrap(),
        None,
        "state kept after restore"
    );
    assert!(dir.path().join("comine.db").metadata().unwrap().len() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_leftovers_are_restored_at_start() {
    let srv = TestServer::start(TOKEN).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A previous run (a release that kept the state in sched-state.json) died after
    // disabling PC2 and while disabling C2: the file is imported into the database.
    let w = LotusWorker::from_api_info(&srv.api_info(TOKEN), Duration::from_secs(2)).unwrap();
    w.task_disable(TT_PC2).await.unwrap();
    w.task_disable(TT_C2).await.unwrap();
    sched::state::save(
        &dir.path().join("sched-state.json"),
        &sched::state::SealingState {
            controller: ControllerKind::LotusWorker,
            disabled: vec![TT_PC2.into()],
            pending: vec![TT_C2.into()],
            since_ms: 1,
        },
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let (h, _p) = start_on_sim("a4000", 1, Arc::new(w), dir.path(), &cancel).await;
    assert!(
        srv.state().disabled.is_empty(),
        "crash leftovers not restored"
    );
    assert!(!dir.path().join("sched-state.json").exists());
    let store = sched::state::StateStore::open(dir.path()).unwrap();
    assert_eq!(store.load().await.unwrap(), None, "restored state kept");
    cancel.cancel();
    h.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_contact_never_leaves_sealing_disabled() {
    let mut srv = TestServer::start(TOKEN).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let sim = SimGpu::from_presets(&["rtx4090"], 1).unwrap();
    let (snaps, _p) = Poller::spawn(
        Telemetry::Sim(sim),
        Duration::from_millis(20),
        cancel.clone(),
    );
    let ctl: Arc<dyn Controller> = Arc::new(
        LotusWorker::from_api_info(&srv.api_info(TOKEN), Duration::from_millis(500)).unwrap(),
    );
    let h = sched::start(
        cfg(),
        tasks(),
        snaps,
        ctl,
        dir.path().into(),
        None,
        cancel.clone(),
    )
    .await
    .unwrap();
    h.set_demand(Demand {
        live_pps: 2.5e9,
        batch_pps: 0.0,
    });
    assert!(wait_for(|| srv.state().disabled.len() == 4).await);
    srv.down();
    // Demand drops while the node is away; the enable fails, is retried, and succeeds once back.
    h.set_demand(Demand::default());
    assert!(
        wait_for(|| h
            .last_decision()
            .is_some_and(|d| d.sealing.reason.contains("unreachable")))
        .await,
        "loss of contact not noticed"
    );
    let d = h.last_decision().unwrap();
    assert!(
        d.devices[0].budget_pps <= 0.5 * 2.6e9 + 1.0,
        "not within safe limits"
    );
    srv.up().await.unwrap();
    assert!(
        wait_for(|| srv.state().disabled.is_empty()).await,
        "sealing left disabled after contact came back"
    );
    cancel.cancel();
    h.join().await;
}

#[tokio::test]
async fn corrupt_state_is_refused_loudly_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sched-state.json");
    std::fs::write(&path, b"{not json").unwrap();
    let (_tx, rx) =
        tokio::sync::watch::channel(comine::gpu::Snapshot::empty(comine::gpu::Source::Simulated));
    let e = sched::start(
        cfg(),
        tasks(),
        rx,
        Arc::new(comine::seal::NoController),
        dir.path().into(),
        None,
        CancellationToken::new(),
    )
    .await
    .err()
    .expect("corrupt state accepted");
    assert!(e.to_string().contains("by hand"), "{e}");
    assert!(path.exists(), "state file must not be lost");
}

/// A run of this release that died while sealing was paused left its record in the
/// database (not a file): the next start restores it and clears the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_left_in_the_database_is_restored_at_start() {
    let srv = TestServer::start(TOKEN).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let w = LotusWorker::from_api_info(&srv.api_info(TOKEN), Duration::from_secs(2)).unwrap();
    w.task_disable(TT_C2).await.unwrap();
    let store = sched::state::StateStore::open(dir.path()).unwrap();
    store
        .save(&sched::state::SealingState {
            controller: ControllerKind::LotusWorker,
            disabled: vec![TT_C2.into()],
            pending: vec![],
            since_ms: 1,
        })
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let (h, _p) = start_on_sim("a4000", 1, Arc::new(w), dir.path(), &cancel).await;
    assert!(srv.state().disabled.is_empty(), "C2 left disabled");
    assert_eq!(store.load().await.unwrap(), None, "restored state kept");
    cancel.cancel();
    h.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_grants_a_model_lease_and_a_proof_takes_it_back_with_its_reason() {
    let srv = TestServer::start(TOKEN).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let ctl: Arc<dyn Controller> =
        Arc::new(LotusWorker::from_api_info(&srv.api_info(TOKEN), Duration::from_secs(2)).unwrap());
    let (h, poller) = start_on_sim("rtx3090", 3, ctl, dir.path(), &cancel).await;
    let model = vec![sched::ModelLease {
        device: 0,
        model_id: "m".into(),
        bytes: 3 << 30,
    }];
    h.set_models(model.clone());
    let mut cap = h.capacity();
    assert!(
        wait_for(|| cap.borrow_and_update().leases == model).await,
        "the lease was never granted"
    );
    h.set_proof(sched::ProofSignal {
        running: true,
        devices: None,
        source: "test".into(),
    });
    assert!(
        wait_for(|| cap.borrow_and_update().leases.is_empty()).await,
        "the proof did not take the lease back"
    );
    let decisions = h.decisions();
    let leases: Vec<_> = decisions.iter().flat_map(|d| d.leases.iter()).collect();
    assert_eq!(leases.len(), 2, "{leases:?}");
    assert_eq!(leases[0].action, sched::LeaseAction::Grant);
    assert!(leases[0].reason.starts_with("headroom"), "{leases:?}");
    assert_eq!(leases[1].action, sched::LeaseAction::Revoke);
    assert!(
        leases[1].reason.starts_with("PoSt window open"),
        "{leases:?}"
    );
    // The published view the daemon follows: nothing granted, the same decisions in order.
    let view = h.leases().borrow().clone();
    assert!(view.granted.is_empty(), "{view:?}");
    assert_eq!(
        view.decisions,
        leases.into_iter().cloned().collect::<Vec<_>>()
    );
    assert_eq!(
        view.last_for("m").map(|d| d.action),
        Some(sched::LeaseAction::Revoke)
    );
    cancel.cancel();
    h.join().await;
    let _ = poller.await;
}
