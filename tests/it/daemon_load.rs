//! Load: many more concurrent submissions than capacity. The overflow gets 503 with
//! Retry-After, nothing crashes, every accepted job completes, memory stays bounded.

use crate::common;

use common::{rss_kib, segment, write_config, Daemon};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_gives_503_with_retry_after_and_loses_no_accepted_job() {
    let root = tempfile::tempdir().unwrap();
    let cfg = write_config(root.path(), "[api]\nconcurrency = 1\nqueue_depth = 3\n");
    let seg = segment(root.path(), "l.ts", "testsrc");
    let d = std::sync::Arc::new(Daemon::start(root.path(), &cfg));
    // 40 simultaneous submissions against room for 1 running + 3 queued.
    let mut tasks = Vec::new();
    for seq in 0..40u64 {
        let d = d.clone();
        let seg = seg.clone();
        tasks.push(tokio::spawn(async move {
            let r = d
                .submit(
                    &format!("profiles=P144p30fps16x9&manifest_id=load&seq={seq}&async=1"),
                    seg,
                )
                .await;
            let status = r.status().as_u16();
            let retry = r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body: serde_json::Value = r.json().await.unwrap();
            (status, retry, body)
        }));
    }
    let mut accepted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        let (status, retry, body) = t.await.unwrap();
        match status {
            202 => accepted.push(body["job_id"].as_str().unwrap().to_string()),
            503 => {
                refused += 1;
                assert!(retry.unwrap_or(0) >= 1, "503 without Retry-After: {body}");
                assert_eq!(body["code"], "queue_full");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(refused > 0, "overload must be refused");
    assert!(
        accepted.len() >= 3,
        "at least the queue's worth is accepted"
    );
    let peak = rss_kib(d.pid());
    for id in &accepted {
        let j = d.wait_job(id).await;
        assert_eq!(j["state"], "done", "{j}");
    }
    let status = d.get_json("/v1/status").await;
    assert_eq!(
        status["jobs"]["done"].as_u64().unwrap(),
        accepted.len() as u64
    );
    let metrics = d.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(&format!("comine_intake_rejected_total {refused}")),
        "{metrics}"
    );
    // Once drained, intake accepts again.
    let r = d
        .submit(
            "profiles=P144p30fps16x9&manifest_id=load&seq=1000&async=1",
            seg.clone(),
        )
        .await;
    assert_eq!(r.status(), 202);
    // Bounded memory: refused bodies are never buffered beyond the queue.
    assert!(peak < 512 * 1024, "RSS {peak} KiB under overload");
}
