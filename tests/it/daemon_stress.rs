//! Stress against the real binary, bounded in time: concurrent clients submit async jobs and
//! resubmit with the same idempotency keys while the daemon is SIGKILLed and restarted; a
//! watcher thread checks that `/healthz` answers within 1 s throughout. At the end every
//! acknowledged job is `done` exactly once and the pixel counters equal the sum over jobs.
//! The long version (1,000 kills and a drain) is `cargo bench --bench durability`.

use crate::common;

use std::time::Duration;

use common::killer::{self, Plan};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_and_resubmissions_never_lose_or_double_count_and_healthz_keeps_answering() {
    let root = tempfile::tempdir().unwrap();
    let cfg = common::write_config(root.path(), "[api]\nqueue_depth = 64\n");
    let segments = ["testsrc", "testsrc2", "smptebars"]
        .iter()
        .enumerate()
        .map(|(i, p)| common::segment(root.path(), &format!("s{i}.ts"), p))
        .collect();
    let plan = Plan {
        bin: common::BIN.into(),
        root: root.path().to_path_buf(),
        config: cfg,
        segments,
        kills: 6,
        uptime_ms: (300, 2500),
        clients: 6,
        max_keys: 120,
        drain_limit: Duration::from_secs(300),
        progress_every: 0,
    };
    let out = killer::run(&plan).await;
    eprintln!("{out:#?}");
    assert!(out.problems.is_empty(), "{:#?}", out.problems);
    assert_eq!(out.kills, 6);
    assert!(out.acked > 10, "load reached the daemon: {out:?}");
    assert!(out.resubmissions > 0, "resubmissions were exercised");
    assert_eq!(
        out.jobs_done, out.acked,
        "every acknowledged key is one done job"
    );
    assert!(out.encoded_pixels > 0);
    let h = &out.health;
    assert!(h.samples > 20, "the watcher ran: {h:?}");
    assert_eq!(
        h.over_1s, 0,
        "/healthz answered within 1 s every time: {h:?}"
    );
    assert!(
        h.ok * 10 >= h.samples * 9,
        "/healthz was healthy almost always: {h:?}"
    );
}
