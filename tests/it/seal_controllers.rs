//! Controllers against the in-repo JSON-RPC double (lotus-worker and Curio method shapes).

use std::time::Duration;

use comine::seal::testserver::TestServer;
use comine::seal::{
    Controller, ControllerKind, Curio, DisableSet, LotusWorker, LotusWorkers, SealError,
    GPU_SEALING_TASKS, TT_C2, TT_PC2, TT_WINDOW_POST, TT_WINNING_POST,
};

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.admin.sig";
const T: Duration = Duration::from_secs(2);

#[tokio::test]
async fn lotus_worker_disables_and_restores_only_what_it_changed() {
    let srv = TestServer::start(TOKEN).await.unwrap();
    let w = LotusWorker::from_api_info(&srv.api_info(TOKEN), T).unwrap();
    // The operator had already disabled C2: comine must not re-enable it later.
    w.task_disable(TT_C2).await.unwrap();
    let set = DisableSet::new(
        GPU_SEALING_TASKS
            .iter()
            .chain(&[TT_WINDOW_POST, TT_WINNING_POST]),
    );
    let changed = w.disable(&set).await.unwrap();
    assert!(!changed.contains(&TT_C2.to_string()));
    assert!(changed.contains(&TT_PC2.to_string()));
    assert_eq!(changed.len(), 3);
    {
        let st = srv.state();
        assert!(
            st.proof_disable_attempts.is_empty(),
            "a proof task type reached the worker"
        );
        assert!(!st.disabled.contains(TT_WINDOW_POST) && !st.disabled.contains(TT_WINNING_POST));
        assert_eq!(st.disabled.len(), 4);
    }
    let state = w.state().await.unwrap();
    assert_eq!(state.enabled, Some(true));
    assert!(state.task_types.contains(&TT_WINDOW_POST.to_string()));
    assert!(!state.task_types.contains(&TT_PC2.to_string()));
    w.enable(&changed).await.unwrap();
    let st = srv.state();
    assert_eq!(
        st.disabled.iter().collect::<Vec<_>>(),
        vec![TT_C2],
        "only comine's changes undone"
    );
    let methods: Vec<String> = st.calls.iter().map(|(m, _)| m.clone()).collect();
    assert!(methods.contains(&"Filecoin.TaskTypes".to_string()));
    assert!(methods.contains(&"Filecoin.TaskEnable".to_string()));
    assert!(
        !methods.contains(&"Filecoin.SetEnabled".to_string()),
        "SetEnabled would stop PoSt"
    );
}

#[tokio::test]
async fn lotus_worker_enabled_and_set_enabled_shapes() {
    let srv = TestServer::start(TOKEN).await.unwrap();
    let w = LotusWorker::from_api_info(&srv.api_info(TOKEN), T).unwrap();
    assert!(w.enabled().await.unwrap());
    w.set_enabled(false).await.unwrap();
    assert!(!w.enabled().await.unwrap());
    let calls = srv.state().calls.clone();
    assert_eq!(calls[1].0, "Filecoin.SetEnabled");
    assert_eq!(calls[1].1, serde_json::json!([false]));
}

#[tokio::test]
async fn bad_or_missing_token_is_refused_with_a_clear_error() {
    let srv = TestServer::start(TOKEN).await.unwrap();
    let bad = LotusWorker::from_api_info(&srv.api_info("wrong"), T).unwrap();
    let e = bad.task_types().await.unwrap_err();
    assert!(
        matches!(e, SealError::Unauthorized { status: 401, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("admin token"));
    let none =
        LotusWorker::from_api_info(&format!("/ip4/127.0.0.1/tcp/{}/http", srv.addr().port()), T)
            .unwrap();
    assert!(matches!(
        none.enabled().await,
        Err(SealError::Unauthorized { .. })
    ));
    let st = srv.state();
    assert_eq!(st.unauthorized, 2);
    assert!(st.calls.is_empty(), "unauthorised calls must not act");
}

#[tokio::test]
async fn unknown_task_type_is_an_rpc_error_and_nothing_half_done() {
    let srv = TestServer::start(TOKEN).await.unwrap();
    let w = LotusWorker::from_api_info(&srv.api_info(TOKEN), T).unwrap();
    let e = w.task_disable("seal/v0/nope").await.unwrap_err();
    assert!(matches!(e, SealError::Rpc { .. }), "{e}");
    assert!(srv.state().disabled.is_empty());
}

#[tokio::test]
async fn unreachable_worker_is_reported_as_such() {
    let mut srv = TestServer::start(TOKEN).await.unwrap();
    let w = LotusWorker::from_api_info(&srv.api_info(TOKEN), T).unwrap();
    srv.down();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let e = w.task_types().await.unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    assert!(e.to_string().contains("check that the node runs"));
    srv.up().await.unwrap();
    assert!(w.task_types().await.is_ok());
}

#[tokio::test]
async fn curio_cordons_and_uncordons() {
    let srv = TestServer::start(TOKEN).await.unwrap();
    let c = Curio::from_api_info(&srv.api_info(TOKEN), T).unwrap();
    assert!(c.coarse());
    let marks = c.disable(&DisableSet::new([TT_C2])).await.unwrap();
    assert!(srv.state().cordoned);
    c.enable(&marks).await.unwrap();
    assert!(!srv.state().cordoned);
    assert_eq!(
        srv.methods(),
        vec!["Filecoin.Info", "Filecoin.Cordon", "Filecoin.Uncordon"],
        "every cordon first checks that the node does not prove"
    );
    // Nothing to disable (only proofs asked for) means no cordon at all.
    assert!(c
        .disable(&DisableSet::new([TT_WINDOW_POST]))
        .await
        .unwrap()
        .is_empty());
    assert!(!srv.state().cordoned);
    assert!(c.state().await.unwrap().reachable);
}

#[tokio::test]
async fn curio_that_runs_window_post_is_never_cordoned() {
    let srv = TestServer::start(TOKEN).await.unwrap();
    srv.state().curio_tasks = "SDR,TreeRC,WdPost,WdPostSubmit,WinPost".into();
    let c = Curio::from_api_info(&srv.api_info(TOKEN), T).unwrap();
    // Refused at start, as a configuration error that says what to do.
    let err = c.preflight().await.unwrap_err();
    assert!(matches!(err, SealError::Config(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("WdPost") && msg.contains("controller = \"none\""),
        "{msg}"
    );
    // And should the node gain the post layer after start, the cordon itself is refused.
    srv.state().curio_tasks = "SDR".into();
    c.preflight().await.unwrap();
    srv.state().curio_layers = "base,post".into();
    let err = c.disable(&DisableSet::new([TT_C2])).await.unwrap_err();
    assert!(err.to_string().contains("post layer"), "{err}");
    assert!(!srv.state().cordoned, "a proving node was cordoned");
    assert!(!srv.methods().contains(&"Filecoin.Cordon".to_string()));
}

#[tokio::test]
async fn curio_down_at_start_is_checked_again_before_a_cordon() {
    let mut srv = TestServer::start(TOKEN).await.unwrap();
    let c = Curio::from_api_info(&srv.api_info(TOKEN), T).unwrap();
    srv.down();
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.preflight()
        .await
        .expect("unreachable at start is not fatal");
    srv.up().await.unwrap();
    srv.state().curio_tasks = "WdPost".into();
    assert!(c.disable(&DisableSet::new([TT_C2])).await.is_err());
    assert!(!srv.state().cordoned);
}

#[tokio::test]
async fn one_controller_steers_several_lotus_workers() {
    let a = TestServer::start(TOKEN).await.unwrap();
    let b = TestServer::start(TOKEN).await.unwrap();
    // Worker b's operator already disabled C2 there: comine must leave it disabled.
    LotusWorker::from_api_info(&b.api_info(TOKEN), T)
        .unwrap()
        .task_disable(TT_C2)
        .await
        .unwrap();
    // As an operator writes it, with lotus's short task names.
    let config: comine::seal::Config = toml::from_str(&format!(
        "controller = \"lotus-worker\"\nworkers = [\"{}\", \"{}\"]\ntask_types = [\"PC2\", \"C2\"]\n",
        a.api_info(TOKEN),
        b.api_info(TOKEN)
    ))
    .unwrap();
    assert_eq!(config.controller, ControllerKind::LotusWorker);
    let ctl = comine::seal::build(&config).unwrap();
    let changed = ctl
        .disable(&DisableSet::new(&config.task_types))
        .await
        .unwrap();
    assert_eq!(changed.len(), 3, "{changed:?}");
    assert!(a.state().disabled.contains(TT_PC2) && a.state().disabled.contains(TT_C2));
    assert!(b.state().disabled.contains(TT_PC2));
    ctl.enable(&changed).await.unwrap();
    assert!(a.state().disabled.is_empty());
    assert_eq!(b.state().disabled.iter().collect::<Vec<_>>(), vec![TT_C2]);
    // A worker that is down makes the whole disable fail and nothing stays half-disabled.
    let mut b = b;
    b.down();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(ctl.disable(&DisableSet::new([TT_PC2])).await.is_err());
    assert!(a.state().disabled.is_empty(), "worker a left disabled");
    // Duplicate workers are refused.
    let dup = LotusWorkers::from_api_infos(&[a.api_info(TOKEN), a.api_info(TOKEN)], T);
    assert!(dup.err().unwrap().to_string().contains("twice"));
}
