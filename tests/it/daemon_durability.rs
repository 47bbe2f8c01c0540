//! Kill -9 durability and graceful shutdown: every job that got a 2xx completes exactly
//! once across crashes and restarts, and no pixel is counted twice or lost.

use crate::common;

use std::time::Duration;

use common::{segment, write_config, Daemon};

const PROFILE: &str = "P144p30fps16x9";
const PIXELS: u64 = 256 * 144 * 30;

async fn submit_batch(d: &Daemon, manifest: &str, n: u64, seg: &[u8]) -> Vec<String> {
    let mut ids = Vec::new();
    for seq in 0..n {
        let r = d
            .submit(
                &format!("profiles={PROFILE}&manifest_id={manifest}&seq={seq}&async=1"),
                seg.to_vec(),
            )
            .await;
        assert_eq!(r.status(), 202, "seq {seq}");
        let v: serde_json::Value = r.json().await.unwrap();
        ids.push(v["job_id"].as_str().unwrap().to_string());
    }
    ids
}

async fn check_source(d: &Daemon, manifest: &str, ids: &[String]) {
    for id in ids {
        let j = d.wait_job(id).await;
        assert_eq!(j["state"], "done", "{j}");
        assert_eq!(j["encoded_pixels"].as_u64().unwrap(), PIXELS);
    }
    let st: serde_json::Value = serde_json::from_str(
        &d.get("/v1/ledger/export?format=json")
            .await
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let jobs: Vec<&serde_json::Value> = st["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["manifest_id"] == manifest)
        .collect();
    // Exactly once: each id once in the statement, pixel totals exact.
    assert_eq!(jobs.len(), ids.len(), "{st}");
    for id in ids {
        assert_eq!(
            jobs.iter().filter(|j| j["job_id"] == id.as_str()).count(),
            1
        );
    }
    assert_eq!(
        st["totals"]["encoded_pixels"].as_u64().unwrap(),
        PIXELS * ids.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_batch_then_restart_completes_each_accepted_job_exactly_once() {
    let root = tempfile::tempdir().unwrap();
    let cfg = write_config(root.path(), "[api]\nconcurrency = 1\nqueue_depth = 64\n");
    let seg = segment(root.path(), "k.ts", "testsrc");
    let mut d = Daemon::start(root.path(), &cfg);
    // Enough jobs that a fast machine cannot drain the queue between the first
    // completion and the kill.
    let ids = submit_batch(&d, "k", 40, &seg).await;
    // Let one finish, then kill while others are queued or transcoding.
    d.wait_job(&ids[0]).await;
    d.kill9();
    let spooled = std::fs::read_dir(root.path().join("data/spool"))
        .unwrap()
        .count();
    assert!(spooled > 0, "the kill left accepted work behind to resume");

    let d = Daemon::start(root.path(), &cfg);
    check_source(&d, "k", &ids).await;
    // A resubmission after the crash is still the same job.
    let r = d
        .submit(
            &format!("profiles={PROFILE}&manifest_id=k&seq=3"),
            seg.clone(),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["job_id"], ids[3].as_str());
    let status = d.get_json("/v1/status").await;
    assert_eq!(status["jobs"]["done"], 40, "{status}");
    assert_eq!(
        std::fs::read_dir(root.path().join("data/spool"))
            .unwrap()
            .count(),
        0,
        "spool files are removed once done"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kills_at_random_moments_never_double_count() {
    let root = tempfile::tempdir().unwrap();
    let cfg = write_config(root.path(), "[api]\nconcurrency = 2\nqueue_depth = 64\n");
    let seg = segment(root.path(), "r.ts", "testsrc2");
    let mut d = Daemon::start(root.path(), &cfg);
    let ids = submit_batch(&d, "r", 6, &seg).await;
    for delay_ms in [150u64, 400, 50] {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        d.kill9();
        d = Daemon::start(root.path(), &cfg);
    }
    check_source(&d, "r", &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_checkpoints_running_jobs_and_they_resume() {
    let root = tempfile::tempdir().unwrap();
    // No grace: running transcodes are cancelled and must resume after restart.
    let cfg = write_config(
        root.path(),
        "[api]\nconcurrency = 1\nqueue_depth = 64\nshutdown_grace_secs = 0\n",
    );
    let seg = segment(root.path(), "t.ts", "testsrc");
    let mut d = Daemon::start(root.path(), &cfg);
    let ids = submit_batch(&d, "t", 5, &seg).await;
    assert!(d.terminate(), "clean exit on SIGTERM:\n{}", d.log());
    assert!(d.log().contains("SIGTERM received"));
    assert!(
        !d.data.join("api.addr").exists(),
        "api.addr is removed on clean exit"
    );
    let d = Daemon::start(root.path(), &cfg);
    check_source(&d, "t", &ids).await;
}
