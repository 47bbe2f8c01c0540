//! End to end through the real binary: segments over HTTP, transcoded and stored for
//! real, renditions and ledger checked; auth and bad-input paths.

use crate::common;

use common::{segment, write_config, Daemon};

const LADDER: &str = "P144p30fps16x9,P240p30fps16x9";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_transcode_stores_renditions_and_counts_pixels_once() {
    let root = tempfile::tempdir().unwrap();
    let cfg = write_config(
        root.path(),
        "[ledger]\nprice_per_unit_wei = 3\npixels_per_unit = 2\n",
    );
    let mut d = Daemon::start(root.path(), &cfg);
    let seg = segment(root.path(), "a.ts", "testsrc");

    let r = d
        .submit(
            &format!("profiles={LADDER}&manifest_id=abc&seq=7"),
            seg.clone(),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", d.log());
    let job: serde_json::Value = r.json().await.unwrap();
    assert_eq!(job["state"], "done");
    assert_eq!(job["manifest_id"], "abc");
    assert_eq!(job["seq"], 7);
    let renditions = job["renditions"].as_array().unwrap();
    assert_eq!(renditions.len(), 2);
    let mut sum = 0u64;
    for (r, (w, h)) in renditions.iter().zip([(256u64, 144u64), (320, 180)]) {
        // 320x180 fits inside 426x240 without upscaling: it stays 320x180.
        assert_eq!(
            (r["width"].as_u64().unwrap(), r["height"].as_u64().unwrap()),
            (w, h)
        );
        assert_eq!(r["frames"], 30);
        let pixels = r["pixels"].as_u64().unwrap();
        assert_eq!(pixels, w * h * 30);
        sum += pixels;
        // The stored content is what the CID says.
        let url = r["url"].as_str().unwrap();
        let resp = d.get(url).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "video/mp2t");
        let body = resp.bytes().await.unwrap();
        assert_eq!(body.len() as u64, r["bytes"].as_u64().unwrap());
        // Kubo-identical: what `ipfs add` (CIDv0 defaults) gives for these bytes.
        let want = comine::store::compute_cid(&mut &body[..], &Default::default()).unwrap();
        assert_eq!(r["cid"], want.cid.to_string());
        assert!(r["cid"].as_str().unwrap().starts_with("Qm"));
        assert_eq!(body[0], 0x47, "MPEG-TS sync byte");
    }
    assert_eq!(job["encoded_pixels"].as_u64().unwrap(), sum);
    assert_eq!(job["decoded_pixels"].as_u64().unwrap(), 320 * 180 * 30);
    assert_eq!(job["earnings_wei"], (sum * 3 / 2).to_string());

    // The same (manifest_id, seq, profiles) is the same job and counts nothing.
    let again = d
        .submit(
            &format!("profiles={LADDER}&manifest_id=abc&seq=7"),
            seg.clone(),
        )
        .await;
    assert_eq!(again.status(), 200);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["job_id"], job["job_id"]);

    // Async: a job id at once, done later; headers instead of the query.
    let r = d
        .http
        .post(d.url("/v1/transcode?async=1"))
        .bearer_auth(&d.token)
        .header("X-Comine-Profiles", "P144p30fps16x9")
        .header("X-Comine-Manifest-Id", "abc")
        .header("X-Comine-Seq", "8")
        .header("X-Comine-Duration-Ms", "1000")
        .body(seg.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let accepted: serde_json::Value = r.json().await.unwrap();
    let id = accepted["job_id"].as_str().unwrap().to_string();
    let done = d.wait_job(&id).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["encoded_pixels"].as_u64().unwrap(), 256 * 144 * 30);

    let status = d.get_json("/v1/status").await;
    assert_eq!(status["jobs"]["done"], 2, "{status}");
    assert_eq!(status["pixels_today"]["segments"], 2);
    assert_eq!(
        status["pixels_today"]["encoded_pixels"].as_u64().unwrap(),
        sum + 256 * 144 * 30
    );

    let metrics = d.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("comine_segments_total{result=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "comine_encoded_pixels_total{{profile=\"P144p30fps16x9\"}} {}",
            2 * 256 * 144 * 30
        )),
        "{metrics}"
    );
    assert!(metrics.contains("comine_segment_latency_seconds_count 2"));

    // `comine status` and the ledger export work against the running daemon (API).
    let (ok, out, err) = d.cli(&["status"]);
    assert!(ok, "{err}");
    assert!(out.contains("done 2"), "{out}");
    let (ok, csv, err) = d.cli(&[
        "ledger",
        "export",
        "--since",
        "2000-01-01",
        "--format",
        "csv",
    ]);
    assert!(ok, "{err}");
    assert_eq!(csv.lines().count(), 3, "{csv}");

    // Stopped: the export reads the ledger directly and agrees.
    assert!(d.terminate(), "clean exit on SIGTERM:\n{}", d.log());
    let (ok, json, err) = d.cli(&[
        "ledger",
        "export",
        "--since",
        "2000-01-01",
        "--format",
        "json",
    ]);
    assert!(ok, "{err}");
    let st: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(st["totals"]["segments"], 2);
    assert_eq!(
        st["totals"]["encoded_pixels"].as_u64().unwrap(),
        sum + 256 * 144 * 30
    );
    assert_eq!(st["jobs"].as_array().unwrap().len(), 2);
    let (ok, _, err) = d.cli(&["ledger", "export", "--since", "yesterday"]);
    assert!(!ok && err.contains("not a date"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_no_token_or_wrong_token_is_401() {
    let root = tempfile::tempdir().unwrap();
    let cfg = write_config(root.path(), "");
    let d = Daemon::start(root.path(), &cfg);
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(d.data.join("api-token"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode, 0o600);
    for path in ["/v1/status", "/v1/jobs/x", "/metrics", "/v1/renditions/x"] {
        let r = d.http.get(d.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path} without token");
        let r = d
            .http
            .get(d.url(path))
            .bearer_auth("0".repeat(64))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized");
    }
    let r = d
        .http
        .post(d.url("/v1/transcode"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = d.http.get(d.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(d.get("/v1/status").await.status(), 200);
    assert!(
        d.log().contains("api-token"),
        "the log says where the token is"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_422_413_400_with_reasons_and_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let cfg = write_config(
        root.path(),
        "[api]\nmax_body_bytes = 200000\nbody_timeout_secs = 1\n",
    );
    let d = Daemon::start(root.path(), &cfg);
    let seg = segment(root.path(), "b.ts", "testsrc2");
    assert!(seg.len() < 200_000);

    // Garbage: 422 with the engine's reason; the job is recorded as failed.
    let r = d
        .submit(
            "profiles=P144p30fps16x9",
            b"this is not video at all".repeat(100),
        )
        .await;
    assert_eq!(r.status(), 422);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "bad_input");
    assert!(
        e["error"].as_str().unwrap().contains("not a media file"),
        "{e}"
    );
    let failed = d
        .get_json(&format!("/v1/jobs/{}", e["job_id"].as_str().unwrap()))
        .await;
    assert_eq!(failed["state"], "failed");
    let r = d.submit("profiles=P144p30fps16x9", Vec::new()).await;
    assert_eq!(r.status(), 422);

    // Oversized: 413 (declared length and streamed without length).
    let r = d
        .submit("profiles=P144p30fps16x9", vec![0u8; 300_000])
        .await;
    assert_eq!(r.status(), 413);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "body_too_large");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..30).map(|_| Ok(vec![0u8; 10_000])).collect();
    let r = d
        .http
        .post(d.url("/v1/transcode?profiles=P144p30fps16x9"))
        .bearer_auth(&d.token)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // A stalled upload: 408 after body_timeout_secs, and its queue slot is freed.
    let stalled = futures_util::stream::unfold(0u8, |n| async move {
        if n > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        }
        (n < 2).then(|| (Ok::<_, std::io::Error>(vec![0u8; 100]), n + 1))
    });
    let r = d
        .http
        .post(d.url("/v1/transcode?profiles=P144p30fps16x9"))
        .bearer_auth(&d.token)
        .body(reqwest::Body::wrap_stream(stalled))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 408);

    // Unknown profile: 400 listing the valid ones.
    let r = d.submit("profiles=P240p30fps16x9,P999p", seg.clone()).await;
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "bad_profiles");
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("P999p") && msg.contains("P720p30fps16x9"),
        "{msg}"
    );

    // Malformed headers: 400.
    for (name, value) in [("X-Comine-Seq", "seven"), ("X-Comine-Duration-Ms", "-5")] {
        let r = d
            .http
            .post(d.url("/v1/transcode"))
            .bearer_auth(&d.token)
            .header(name, value)
            .body(seg.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{name}: {value}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["code"], "malformed_header");
    }
    let r = d.submit("seq=1&colour=blue", seg.clone()).await;
    assert_eq!(r.status(), 400);

    // After all that, a good segment still goes through.
    let r = d.submit("profiles=P144p30fps16x9", seg).await;
    assert_eq!(r.status(), 200);
    let status = d.get_json("/v1/status").await;
    assert_eq!(status["jobs"]["done"], 1, "{status}");
    assert_eq!(status["jobs"]["failed"], 1, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_segment_past_four_times_its_duration_fails_with_504() {
    let root = tempfile::tempdir().unwrap();
    let cfg = write_config(root.path(), "");
    let d = Daemon::start(root.path(), &cfg);
    let seg = segment(root.path(), "live.ts", "testsrc");
    // A 1 ms "duration" leaves a 4 ms budget: the transcode cannot make it.
    let r = d
        .submit(
            "profiles=P144p30fps16x9&manifest_id=live&seq=1&class=live&duration_ms=1",
            seg.clone(),
        )
        .await;
    assert_eq!(r.status(), 504);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "deadline_exceeded");
    let job = d
        .get_json(&format!("/v1/jobs/{}", e["job_id"].as_str().unwrap()))
        .await;
    assert_eq!(job["state"], "failed");
    assert_eq!(job["encoded_pixels"], 0, "a missed segment is not counted");
    // With its real duration (4 s budget) the same segment goes through.
    let r = d
        .submit(
            "profiles=P144p30fps16x9&manifest_id=live&seq=2&class=live&duration_ms=1000",
            seg,
        )
        .await;
    assert_eq!(r.status(), 200);
    let metrics = d.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("comine_segments_total{result=\"deadline\"} 1"),
        "{metrics}"
    );
}

/// The data directory and what the daemon creates in it are private to the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_directory_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let cfg = write_config(root.path(), "");
    let d = Daemon::start(root.path(), &cfg);
    for sub in ["", "spool", "work", "store"] {
        let dir = d.data.join(sub);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", dir.display());
    }
    assert_eq!(d.get("/healthz").await.status(), 200);
}

/// Below `[store] min_free_bytes` a job is refused with 507 before its body is read, and
/// nothing reaches the store (a floor above any disk's free space stands in for a full one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_min_free_bytes_new_jobs_get_507_and_nothing_is_stored() {
    let root = tempfile::tempdir().unwrap();
    let cfg = write_config(
        root.path(),
        "[store]\nmin_free_bytes = 9223372036854775807\n",
    );
    let mut d = Daemon::start(root.path(), &cfg);
    let seg = segment(root.path(), "full.ts", "testsrc");
    let r = d
        .submit("profiles=P144p30fps16x9&manifest_id=disk&seq=1", seg)
        .await;
    assert_eq!(r.status(), 507);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "insufficient_storage");
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("min_free_bytes") && msg.contains("bytes are free"),
        "{msg}"
    );
    assert!(d.terminate());
    let (ok, pins, err) = common::comine(
        &[
            "store",
            "pins",
            "--json",
            "--data-dir",
            d.data.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(pins.trim(), "[]", "nothing was stored");
}
