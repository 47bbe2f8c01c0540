//! The WindowPoSt schedule end to end against the fake full node: the poller reads the chain,
//! the pure plan decides, on a virtual clock.

use std::sync::Arc;
use std::time::Duration;

use comine::post::fake_node::{FakeNode, NodeState, VirtualClock};
use comine::post::plan::RowState;
use comine::post::{self, Bitfield, Config, Phase, PostHandle, SourceState, Status, WallClock};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "read-token";
const HEAD: i64 = NodeState::FIXTURE_HEAD;
const OPEN33: i64 = NodeState::FIXTURE_OPEN_33;

fn ms(epoch: i64) -> u64 {
    VirtualClock::epoch_ms(epoch)
}

fn config(node: &FakeNode) -> Config {
    Config {
        fullnode_api_info: Some(node.api_info(TOKEN)),
        miner: Some("f01234".into()),
        poll_interval_ms: 100,
        activity_interval_ms: 100,
        timeout_ms: 2_000,
        ..Config::default()
    }
}

struct Rig {
    clock: Arc<VirtualClock>,
    node: FakeNode,
    cancel: CancellationToken,
}

impl Rig {
    async fn new(epoch: i64, state: NodeState) -> Rig {
        let clock = VirtualClock::at(ms(epoch));
        let node = FakeNode::start(TOKEN, clock.clone(), state).await.unwrap();
        Rig {
            clock,
            node,
            cancel: CancellationToken::new(),
        }
    }

    fn start(&self, cfg: &Config, data: Option<&std::path::Path>) -> PostHandle {
        post::start(
            cfg,
            data.map(|d| d.to_path_buf()),
            self.clock.clone(),
            self.cancel.child_token(),
        )
        .unwrap()
    }

    fn plan(&self, h: &PostHandle) -> post::Plan {
        post::evaluate(&h.status(), self.clock.now_ms(), None)
    }
}

/// Waits until the poller's status satisfies `f` (10 s at most).
async fn wait_for(h: &PostHandle, what: &str, f: impl Fn(&Status) -> bool) -> Status {
    let mut rx = h.subscribe();
    let r = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            {
                let s = rx.borrow_and_update();
                if f(&s) {
                    return s.clone();
                }
            }
            if rx.changed().await.is_err() {
                panic!("poller stopped while waiting for {what}");
            }
        }
    })
    .await;
    match r {
        Ok(s) => s,
        Err(_) => panic!("timed out waiting for {what}: {:?}", h.status()),
    }
}

fn at_height(e: i64) -> impl Fn(&Status) -> bool {
    move |s| {
        s.head.is_some_and(|h| h.height == e)
            && s.schedule.as_ref().is_some_and(|s| s.has_live_map())
    }
}

#[tokio::test]
async fn no_step_down_at_open_minus_25_then_step_down_at_open_minus_24() {
    let rig = Rig::new(OPEN33 - 25, NodeState::fixture()).await;
    let h = rig.start(&config(&rig.node), None);
    wait_for(&h, "the live map", at_height(OPEN33 - 25)).await;
    let p = rig.plan(&h);
    assert_eq!(p.source, SourceState::Ok);
    assert!(!p.step_down_active, "{:?}", p.window);
    assert_ne!(p.window.phase, Phase::StepDown);
    let row = &p.rows[33];
    assert_eq!(
        (row.partitions, row.live_sectors, row.faulty_sectors),
        (Some(2), Some(3161), Some(3))
    );
    assert_eq!(row.step_down_ms, Some(ms(OPEN33 - 24)));

    rig.clock.set(ms(OPEN33 - 24));
    wait_for(&h, "the next height", at_height(OPEN33 - 24)).await;
    let p = rig.plan(&h);
    assert!(p.step_down_active);
    assert_eq!(p.window.phase, Phase::StepDown);
    assert_eq!(p.window.deadline, Some(33));
    assert_eq!(p.window.reason, "WindowPoSt deadline 33 opens in 12m0s");
    rig.cancel.cancel();
    h.join().await;
}

#[tokio::test]
async fn opens_in_1m30s_at_open_minus_3_and_the_reply_is_the_fixtures() {
    let rig = Rig::new(HEAD, NodeState::fixture()).await;
    let h = rig.start(&config(&rig.node), None);
    let s = wait_for(&h, "the live map", at_height(HEAD)).await;
    // The fake node computed dline from the height: it must equal the fixture reply.
    let fixture: post::DeadlineInfo = serde_json::from_str(r#"{"CurrentEpoch":5000011,"PeriodStart":4998034,"Index":32,"Open":4999954,"Close":5000014,"Challenge":4999934,"FaultCutoff":4999884,"WPoStPeriodDeadlines":48,"WPoStProvingPeriod":2880,"WPoStChallengeWindow":60,"WPoStChallengeLookback":20,"FaultDeclarationCutoff":70}"#).unwrap();
    assert_eq!(s.current, Some(fixture));
    let sched = s.schedule.unwrap();
    assert_eq!(
        (sched.period_offset, sched.genesis_ts),
        (1234, 1_598_306_400)
    );
    let p = rig.plan(&h);
    assert_eq!(p.window.reason, "WindowPoSt deadline 33 opens in 1m30s");
    assert_eq!(p.seconds_to_next_window, Some(90.0));
    assert_eq!(p.next_deadline, Some(33));
    rig.cancel.cancel();
    h.join().await;
}

#[tokio::test]
async fn an_empty_deadline_causes_no_step_down() {
    let mut state = NodeState::fixture();
    state.partitions.clear();
    let rig = Rig::new(HEAD, state).await;
    let h = rig.start(&config(&rig.node), None);
    wait_for(&h, "the live map", at_height(HEAD)).await;
    let p = rig.plan(&h);
    assert_eq!(p.window.phase, Phase::None, "{:?}", p.window);
    assert!(p.rows.iter().all(|r| r.state == RowState::Empty));
    // The node was asked about all 48 deadlines.
    assert_eq!(rig.node.state().count("Filecoin.StateMinerPartitions"), 48);
    rig.cancel.cancel();
    h.join().await;
}

#[tokio::test]
async fn steps_up_when_every_live_partition_is_proven() {
    let rig = Rig::new(OPEN33 + 5, NodeState::fixture()).await;
    rig.node
        .state()
        .submissions
        .insert(33, Bitfield(vec![0, 1]));
    let h = rig.start(&config(&rig.node), None);
    wait_for(&h, "the first proof", |s| {
        at_height(OPEN33 + 5)(s) && s.proven.is_some()
    })
    .await;
    let p = rig.plan(&h);
    assert_eq!(p.window.phase, Phase::StepDown);
    assert!(
        p.window
            .reason
            .starts_with("WindowPoSt deadline 33 open, closes in 27m30s: 1 of 2 partitions proven"),
        "{}",
        p.window.reason
    );
    // The second partition lands one epoch later.
    rig.node
        .state()
        .submissions
        .insert(33, Bitfield(vec![0, 2]));
    rig.clock.set(ms(OPEN33 + 6));
    wait_for(&h, "both proofs", |s| {
        s.proven.as_ref().is_some_and(|p| p.partitions.count() == 2)
    })
    .await;
    let p = rig.plan(&h);
    assert_eq!(p.window.phase, Phase::None, "{:?}", p.window);
    assert_eq!(p.rows[33].state, RowState::Proven);
    rig.cancel.cancel();
    h.join().await;
}

#[tokio::test]
async fn node_refusing_connections_the_cached_schedule_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::new(OPEN33 - 120, NodeState::fixture()).await;
    let cfg = config(&rig.node);
    let h = rig.start(&cfg, Some(dir.path()));
    wait_for(&h, "the live map", at_height(OPEN33 - 120)).await;
    // The node goes away while comine runs: the schedule is still followed.
    rig.node.down();
    rig.clock.set(ms(OPEN33 - 24));
    let s = wait_for(&h, "the failure", |s| !s.reachable).await;
    assert!(s.last_error.unwrap().contains("unreachable"));
    let p = rig.plan(&h);
    assert_eq!(p.source, SourceState::Stale);
    assert_eq!(p.window.phase, Phase::StepDown);
    assert!(
        p.window
            .reason
            .starts_with("WindowPoSt deadline 33 opens in 12m0s ("),
        "{}",
        p.window.reason
    );
    assert!(
        p.window.reason.contains("cached schedule"),
        "{}",
        p.window.reason
    );
    rig.cancel.cancel();
    h.join().await;

    // comine restarts while the node is still down: the persisted schedule is followed.
    rig.cancel = CancellationToken::new();
    let h = rig.start(&cfg, Some(dir.path()));
    let p = rig.plan(&h);
    assert_eq!(p.source, SourceState::Stale, "{}", p.source_detail);
    assert_eq!(p.window.phase, Phase::StepDown);
    assert_eq!(p.rows[33].live_sectors, Some(3161));
    assert!(p.rows.iter().filter(|r| r.live).count() == 1);
    rig.cancel.cancel();
    h.join().await;
}

#[tokio::test]
async fn a_cache_older_than_an_hour_makes_every_deadline_live() {
    let dir = tempfile::tempdir().unwrap();
    let mut rig = Rig::new(OPEN33 - 300, NodeState::fixture()).await;
    let cfg = config(&rig.node);
    let h = rig.start(&cfg, Some(dir.path()));
    wait_for(&h, "the live map", at_height(OPEN33 - 300)).await;
    rig.cancel.cancel();
    h.join().await;
    rig.node.down();
    // 61 minutes later, node still down; deadline 33 is still 2 hours away.
    rig.clock.set(ms(OPEN33 - 300) + 61 * 60 * 1000);
    rig.cancel = CancellationToken::new();
    let h = rig.start(&cfg, Some(dir.path()));
    wait_for(&h, "the failure", |s| s.last_error.is_some()).await;
    let p = rig.plan(&h);
    assert_eq!(p.source, SourceState::Down, "{}", p.source_detail);
    assert_eq!(p.source.gauge(), "down");
    assert!(p.rows.iter().all(|r| r.live));
    // Deadline 14 opens at OPEN33-300+(…): every deadline counts, so some window is near.
    assert_eq!(p.window.phase, Phase::StepDown, "{:?}", p.window);
    assert!(
        p.window.reason.contains("every deadline counts as live"),
        "{}",
        p.window.reason
    );
    rig.cancel.cancel();
    h.join().await;
}

#[tokio::test]
async fn a_stalled_head_is_lagging_and_the_wall_clock_still_rules() {
    let rig = Rig::new(OPEN33 - 24, NodeState::fixture()).await;
    rig.node.state().stalled_at = Some(OPEN33 - 27);
    let h = rig.start(&config(&rig.node), None);
    wait_for(&h, "the live map", at_height(OPEN33 - 27)).await;
    let p = rig.plan(&h);
    assert_eq!(p.source, SourceState::Lagging, "{}", p.source_detail);
    assert_eq!(p.source.gauge(), "stale");
    assert!(
        p.source_detail.contains("3 epochs behind"),
        "{}",
        p.source_detail
    );
    assert_eq!(p.window.phase, Phase::StepDown);
    assert!(p.window.reason.contains("lagging"));
    rig.cancel.cancel();
    h.join().await;
}

#[tokio::test]
async fn error_replies_keep_the_schedule_and_assume_every_deadline_live() {
    let mut state = NodeState::fixture();
    state.errors.insert(
        "Filecoin.StateMinerPartitions".into(),
        (1, "loading tipset {}: ...".into()),
    );
    let rig = Rig::new(HEAD, state).await;
    let h = rig.start(&config(&rig.node), None);
    let s = wait_for(&h, "the error", |s| {
        s.last_error.is_some() && s.schedule.is_some()
    })
    .await;
    let e = s.last_error.unwrap();
    assert!(
        e.contains("Filecoin.StateMinerPartitions") && e.contains("loading tipset"),
        "{e}"
    );
    // Offset and genesis are known, the live map is not: every deadline counts as live.
    let p = rig.plan(&h);
    assert!(p.rows.iter().all(|r| r.assumed_live));
    assert_eq!(p.window.phase, Phase::StepDown);
    rig.cancel.cancel();
    h.join().await;
}

#[tokio::test]
async fn bad_input_names_the_setting() {
    let rig = Rig::new(HEAD, NodeState::fixture()).await;
    // Unparseable API info.
    let mut cfg = config(&rig.node);
    cfg.fullnode_api_info = Some("tokenwithoutaddress".into());
    let e = post::start(&cfg, None, rig.clock.clone(), CancellationToken::new())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("[post] fullnode_api_info"), "{e}");
    assert!(!e.contains("tokenwithoutaddress"), "token leaked: {e}");
    // Not an f0 ID address.
    let mut cfg = config(&rig.node);
    cfg.miner = Some(
        "f3vvmn62lofvhjd2ugzca6sof2j2ubwok6cj4xxbfzz4yuxfkgobpihhd2thlanmsh3w2ptld2gqkn2jvlss4a"
            .into(),
    );
    let e = post::start(&cfg, None, rig.clock.clone(), CancellationToken::new())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("[post] miner") && e.contains("f0"), "{e}");
    // A wrong token: the node answers 401.
    let mut cfg = config(&rig.node);
    cfg.fullnode_api_info = Some(rig.node.api_info("wrong-token"));
    let h = rig.start(&cfg, None);
    let s = wait_for(&h, "the 401", |s| s.last_error.is_some()).await;
    let e = s.last_error.unwrap();
    assert!(
        e.contains("401") && e.contains("[post] fullnode_api_info"),
        "{e}"
    );
    assert!(!e.contains("wrong-token"), "token leaked: {e}");
    assert!(rig.node.state().unauthorized > 0);
    assert_eq!(
        post::evaluate(&h.status(), rig.clock.now_ms(), None)
            .window
            .phase,
        Phase::Safe
    );
    rig.cancel.cancel();
    h.join().await;
}

#[tokio::test]
async fn the_miner_address_comes_from_lotus_miner_and_must_be_an_id() {
    let mut state = NodeState::fixture();
    state.worker_stats = serde_json::json!({
        "u1": {"Info": {"Hostname": "prover-host"}, "TaskCounts": {"8:post/v0/windowproof": 1}}
    });
    let rig = Rig::new(HEAD, state).await;
    let mut cfg = config(&rig.node);
    cfg.miner = None;
    cfg.miner_api_info = Some(rig.node.api_info(TOKEN));
    cfg.prover_hostnames = vec!["prover-host".into()];
    let h = rig.start(&cfg, None);
    let s = wait_for(&h, "miner and proofs", |s| {
        s.miner.is_some() && s.running.window == 1
    })
    .await;
    assert_eq!(s.miner.as_deref(), Some("f01234"));
    assert_eq!(
        s.running.sources,
        vec!["lotus-miner WorkerStats".to_string()]
    );
    rig.cancel.cancel();
    h.join().await;

    // A non-ID ActorAddress is refused, naming where it came from.
    let rig = Rig::new(HEAD, NodeState::fixture()).await;
    rig.node.state().miner = "f2abcdefgh".into();
    let mut cfg = config(&rig.node);
    cfg.miner = None;
    cfg.miner_api_info = Some(rig.node.api_info(TOKEN));
    let h = rig.start(&cfg, None);
    let s = wait_for(&h, "the refusal", |s| s.last_error.is_some()).await;
    let e = s.last_error.unwrap();
    assert!(e.contains("ActorAddress") && e.contains("f0"), "{e}");
    rig.cancel.cancel();
    h.join().await;
}

#[tokio::test]
async fn no_full_node_configured_does_nothing() {
    let clock = VirtualClock::at(ms(HEAD));
    let h = post::start(
        &Config {
            fullnode_api_info: None,
            ..Config::default()
        },
        None,
        clock.clone(),
        CancellationToken::new(),
    )
    .unwrap();
    let p = post::evaluate(&h.status(), clock.now_ms(), None);
    assert_eq!(p.source, SourceState::Off, "is FULLNODE_API_INFO set?");
    assert_eq!(p.window.phase, Phase::None);
    h.join().await;
}

/// The PostgreSQL server of `scripts/pg-test-node.sh`; required when `CI` is set.
fn pg() -> Option<String> {
    match std::env::var("COMINE_TEST_PG").ok().filter(|v| !v.is_empty()) {
        Some(c) => Some(c),
        None if std::env::var_os("CI").is_some() => panic!(
            "CI is set but COMINE_TEST_PG is not: run the tests through scripts/pg-test-node.sh run … (scripts/test.sh does)"
        ),
        None => {
            eprintln!("\n*** SKIPPED: no PostgreSQL (set COMINE_TEST_PG; see scripts/pg-test-node.sh). CI fails here.\n");
            None
        }
    }
}

/// Curio's tables (harmony schema, as Curio creates them) in a schema of their own.
async fn curio_tables(conn: &str) -> String {
    let schema = format!(
        "curio_test_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    post::curio_db::execute_batch(
        conn,
        &format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.harmony_machines (
                 id SERIAL PRIMARY KEY NOT NULL,
                 last_contact TIMESTAMP NOT NULL DEFAULT current_timestamp,
                 host_and_port varchar(300) NOT NULL,
                 cpu INTEGER NOT NULL, ram BIGINT NOT NULL, gpu FLOAT NOT NULL);
             CREATE TABLE {schema}.harmony_task (
                 id SERIAL PRIMARY KEY NOT NULL,
                 initiated_by INTEGER,
                 update_time TIMESTAMP NOT NULL DEFAULT current_timestamp,
                 posted_time TIMESTAMP NOT NULL,
                 owner_id INTEGER REFERENCES {schema}.harmony_machines (id) ON DELETE SET NULL,
                 added_by INTEGER NOT NULL,
                 previous_task INTEGER,
                 name varchar(16) NOT NULL);
             INSERT INTO {schema}.harmony_machines (host_and_port, cpu, ram, gpu)
                 VALUES ('10.0.0.1:12300', 32, 274877906944, 1), ('10.0.0.2:12300', 32, 274877906944, 1);"
        ),
    )
    .await
    .unwrap();
    schema
}

#[tokio::test]
async fn curio_post_tasks_are_read_from_a_real_postgres() {
    let Some(conn) = pg() else { return };
    let schema = curio_tables(&conn).await;
    let t = Duration::from_secs(5);
    let db = post::curio_db::CurioDb::new(&conn, &schema, None, t).unwrap();
    assert_eq!(db.running().await.unwrap(), Default::default());
    // Running = owned by a machine; a posted task nobody took yet does not count, nor SDR.
    post::curio_db::execute_batch(
        &conn,
        &format!(
            "INSERT INTO {schema}.harmony_task (posted_time, owner_id, added_by, name) VALUES
                 (now(), 1, 1, 'WdPost'), (now(), 2, 1, 'WdPost'), (now(), NULL, 1, 'WdPost'),
                 (now(), 1, 1, 'WinPost'), (now(), 1, 1, 'SDR'), (now(), 2, 1, 'WdPostSubmit');"
        ),
    )
    .await
    .unwrap();
    let all = db.running().await.unwrap();
    assert_eq!((all.window, all.winning), (2, 1));
    let mine = post::curio_db::CurioDb::new(&conn, &schema, Some("10.0.0.2:12300".into()), t)
        .unwrap()
        .running()
        .await
        .unwrap();
    assert_eq!((mine.window, mine.winning), (1, 0));

    // Through the poller: the activity loop reports them in the status.
    let rig = Rig::new(HEAD, NodeState::fixture()).await;
    let mut cfg = config(&rig.node);
    cfg.curio_db = Some(conn.clone());
    cfg.curio_schema = schema.clone();
    let h = rig.start(&cfg, None);
    let s = wait_for(&h, "Curio's proofs", |s| s.running.window == 2).await;
    assert_eq!(s.running.sources, vec!["curio harmony_task".to_string()]);
    assert_eq!(s.running.winning, 1);
    // The proofs finish: the tasks are released.
    post::curio_db::execute_batch(
        &conn,
        &format!("UPDATE {schema}.harmony_task SET owner_id = NULL;"),
    )
    .await
    .unwrap();
    wait_for(&h, "the proofs' end", |s| {
        !s.running.any() && s.running.checked_at_ms.is_some()
    })
    .await;
    rig.cancel.cancel();
    h.join().await;

    // A wrong schema and a closed port say what to check.
    let e = post::curio_db::CurioDb::new(&conn, "no_such_schema", None, t)
        .unwrap()
        .running()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[post] curio_db") && e.contains("curio_schema"),
        "{e}"
    );
    let e = post::curio_db::CurioDb::new("host=127.0.0.1 port=1 user=x", "curio", None, t)
        .unwrap()
        .running()
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot connect to 127.0.0.1:1"), "{e}");
    post::curio_db::execute_batch(&conn, &format!("DROP SCHEMA {schema} CASCADE;"))
        .await
        .unwrap();
}
