//! `comine run --orch-addr …`: the daemon attached to the in-repo test orchestrator.
//! Segments handed out by the orchestrator come back as checked multipart results, their
//! renditions land in the daemon's store byte for byte, and the ledger counts exactly the
//! pixels the orchestrator was sent. Capacity `auto` follows the scheduler; a refused
//! secret stops the daemon with a message that says what to fix.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use comine::livepeer::proto::VideoProfile;
use comine::livepeer::test_orchestrator::{
    SegmentJob, TaskOutcome, TestOrchestrator, TestOrchestratorConfig,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

fn ladder() -> Vec<VideoProfile> {
    vec![
        common::lp_p144p(),
        VideoProfile {
            name: "P96p15".into(),
            width: 170,
            height: 96,
            bitrate: 200_000,
            fps: 15,
            fps_den: 1,
            gop: 1000,
            ..Default::default()
        },
    ]
}

async fn status(d: &common::Daemon) -> Value {
    d.get_json("/v1/status").await
}

/// Polls `/v1/status` until `pred` holds.
async fn wait_status(d: &common::Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let s = status(d).await;
        if pred(&s) {
            return s;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {what}; status: {}",
            s["livepeer"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn secret_file(root: &std::path::Path, secret: &str) -> String {
    let f = root.join("orch-secret");
    std::fs::write(&f, format!("{secret}\n")).unwrap();
    format!("@{}", f.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_attaches_stores_renditions_and_accounts_every_segment_once() {
    let root = tempfile::tempdir().unwrap();
    let orch = TestOrchestrator::start(TestOrchestratorConfig::default())
        .await
        .unwrap();
    // An operator key: every result carries a signed work receipt.
    let key = root.path().join("operator.key");
    let signer = comine::earnings::receipts::OperatorKey::generate(&key)
        .unwrap()
        .address();
    let config = common::write_config(
        root.path(),
        &format!("[earnings]\nkey_file = {:?}\n", key.display().to_string()),
    );
    let secret = secret_file(root.path(), orch.secret());
    let mut d = common::Daemon::start_with(
        root.path(),
        &config,
        &[
            "--orch-addr",
            &orch.addr(),
            "--orch-secret",
            &secret,
            "--capacity",
            "2",
        ],
    );
    orch.wait_for_transcoders(1, WAIT).await.unwrap();
    assert_eq!(orch.capacities(), vec![2]);
    let st = wait_status(&d, "registration", |s| {
        s["livepeer"]["link"]["state"] == "registered"
    })
    .await;
    assert_eq!(st["livepeer"]["capacity_mode"], "2");
    assert_eq!(st["livepeer"]["orch_addr"], orch.addr());

    // Two sessions at once, two segments each, then one session torn down.
    let media = common::lp_segment();
    let run_session = |session: &'static str| {
        let orch = &orch;
        let media = media.clone();
        async move {
            let mut out = Vec::new();
            for seq in 0..2 {
                let mut job = SegmentJob::new(session, seq, media.clone(), ladder());
                job.duration_ms = 1000;
                out.push(orch.transcode(job).await);
            }
            out
        }
    };
    let (a, b) = tokio::join!(run_session("sess-a"), run_session("sess-b"));
    let mut posted_pixels = 0u64;
    let mut posted_parts: Vec<Bytes> = Vec::new();
    let mut receipts = Vec::new();
    for outcome in a.into_iter().chain(b) {
        match outcome {
            TaskOutcome::Done {
                parts,
                decoded_pixels,
                extra_headers,
                ..
            } => {
                assert_eq!(parts.len(), 2);
                // The receipt is a header, not a part, and names exactly the posted pixels.
                let (_, value) = extra_headers
                    .iter()
                    .find(|(n, _)| n == "comine-work-receipt")
                    .unwrap_or_else(|| panic!("no work receipt header: {extra_headers:?}"));
                let r = comine::earnings::receipts::SignedReceipt::from_header(value).unwrap();
                r.verify().unwrap();
                assert_eq!(r.signer, signer);
                assert_eq!(r.receipt.decoded_pixels, decoded_pixels);
                assert_eq!(
                    r.receipt.encoded_pixels,
                    parts.iter().map(|p| p.pixels).sum::<u64>()
                );
                receipts.push(r);
                for p in parts {
                    assert!(p.pixels > 0);
                    posted_pixels += p.pixels;
                    posted_parts.push(p.data);
                }
            }
            other => panic!("segment not transcoded: {other:?}"),
        }
    }
    assert!(orch.end_session("sess-a").await);

    let st = wait_status(&d, "4 segments accounted and a session ended", |s| {
        s["livepeer"]["segments"]["accounted"] == 4
            && s["livepeer"]["segments"]["sessions_ended"] == 1
    })
    .await;
    let seg = &st["livepeer"]["segments"];
    assert_eq!(seg["transcoded"], 4);
    assert_eq!(seg["failed"], 0);
    assert_eq!(seg["encoded_pixels"], posted_pixels);
    assert_eq!(st["pixels_today"]["encoded_pixels"], posted_pixels);
    assert_eq!(st["pixels_today"]["segments"], 4);

    // The ledger lists the four segments under their Livepeer manifests, and every CID
    // serves exactly the bytes the orchestrator received.
    let export = d.get_json("/v1/ledger/export?format=json").await;
    let jobs = export["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 4);
    let mut served = Vec::new();
    for j in jobs {
        let m = j["manifest_id"].as_str().unwrap();
        assert!(
            m == "livepeer:manifest-sess-a" || m == "livepeer:manifest-sess-b",
            "{m}"
        );
        assert_eq!(j["profiles"], "P144p30fps16x9 P96p15");
        for cid in j["cids"].as_str().unwrap().split(' ') {
            let r = d.get(&format!("/v1/renditions/{cid}")).await;
            assert!(
                r.status().is_success(),
                "GET rendition {cid}: {}",
                r.status()
            );
            served.push(r.bytes().await.unwrap());
        }
    }
    assert_eq!(served.len(), posted_parts.len());
    // Each receipt's CIDs (computed before the results were posted) are the ones stored.
    let stored: Vec<&str> = jobs.iter().map(|j| j["cids"].as_str().unwrap()).collect();
    for r in &receipts {
        assert!(
            stored.contains(&r.cids.join(" ").as_str()),
            "{:?} not in {stored:?}",
            r.cids
        );
    }
    for p in &posted_parts {
        assert!(
            served.contains(p),
            "a posted rendition is missing from the store"
        );
    }

    // A corrupt segment is answered with an error part and recorded as failed, not counted.
    let mut bad = SegmentJob::new("sess-c", 0, Bytes::from(vec![0x47u8; 188 * 20]), ladder());
    bad.duration_ms = 1000;
    match orch.transcode(bad).await {
        TaskOutcome::TranscodeError(reason) => assert!(!reason.is_empty()),
        other => panic!("corrupt segment must give an error part, got {other:?}"),
    }
    // The sink counts the failure before the ledger records it: wait for both.
    let st = wait_status(&d, "the failure recorded", |s| {
        s["livepeer"]["segments"]["failed"] == 1 && s["jobs"]["failed"] == 1
    })
    .await;
    assert_eq!(st["pixels_today"]["encoded_pixels"], posted_pixels);
    assert_eq!(st["jobs"]["failed"], 1);

    // /metrics tells the same story: the link is up with 2 sessions offered, 4 segments ok
    // and 1 failed.
    let metrics = d.get("/metrics").await.text().await.unwrap();
    let orch_label = format!("{{orch=\"{}\"}}", orch.addr());
    for want in [
        format!("comine_livepeer_link_up{orch_label} 1"),
        format!("comine_livepeer_capacity_sessions{orch_label} 2"),
        "comine_livepeer_segments_total{result=\"ok\"} 4".to_string(),
    ] {
        assert!(metrics.contains(&want), "no `{want}` in:\n{metrics}");
    }
    assert!(
        metrics.lines().any(
            |l| l.starts_with("comine_livepeer_segments_total{result=\"")
                && !l.contains("\"ok\"")
                && l.ends_with(" 1")
        ),
        "the failed segment is not counted:\n{metrics}"
    );

    // SIGTERM: the client unregisters, the daemon exits cleanly.
    assert!(d.terminate(), "daemon did not stop cleanly");
    let start = Instant::now();
    while orch.live_transcoders() > 0 {
        assert!(start.elapsed() < WAIT, "transcoder still registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_auto_registers_with_the_schedulers_session_count() {
    let root = tempfile::tempdir().unwrap();
    let orch = TestOrchestrator::start(TestOrchestratorConfig::default())
        .await
        .unwrap();
    // The labelled simulated RTX 3090 (5 NVENC sessions, 4 encodes per Livepeer session).
    let config = common::write_config(
        root.path(),
        "[gpu]\nbackend = \"sim:rtx3090\"\npoll_interval_ms = 50\n[scheduler]\ntick_interval_ms = 50\n",
    );
    let mut d = common::Daemon::start_with(
        root.path(),
        &config,
        &["--orch-addr", &orch.addr(), "--orch-secret", orch.secret()],
    );
    orch.wait_for_transcoders(1, WAIT).await.unwrap();
    let st = wait_status(&d, "registration", |s| {
        s["livepeer"]["link"]["state"] == "registered"
    })
    .await;
    assert_eq!(st["livepeer"]["capacity_mode"], "auto");
    let granted = st["livepeer"]["capacity"].as_i64().unwrap();
    assert!(granted > 0, "{}", st["livepeer"]);
    assert_eq!(orch.capacities(), vec![granted]);
    assert_eq!(
        st["livepeer"]["link"]["registered_capacity"].as_i64(),
        Some(granted)
    );
    assert!(d.terminate());
}

/// Below `[store] min_free_bytes` a Livepeer segment is refused before it is transcoded: the
/// orchestrator gets an error part naming the floor (so it hands the segment elsewhere),
/// nothing is accounted and nothing reaches the store. A floor above any disk's free space
/// stands in for a full one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_min_free_bytes_segments_are_refused_and_nothing_is_stored() {
    let root = tempfile::tempdir().unwrap();
    let orch = TestOrchestrator::start(TestOrchestratorConfig::default())
        .await
        .unwrap();
    let config = common::write_config(
        root.path(),
        "[store]\nmin_free_bytes = 9223372036854775807\n",
    );
    let mut d = common::Daemon::start_with(
        root.path(),
        &config,
        &[
            "--orch-addr",
            &orch.addr(),
            "--orch-secret",
            orch.secret(),
            "--capacity",
            "1",
        ],
    );
    orch.wait_for_transcoders(1, WAIT).await.unwrap();
    let mut job = SegmentJob::new("sess-full", 0, common::lp_segment(), ladder());
    job.duration_ms = 1000;
    match orch.transcode(job).await {
        TaskOutcome::TranscodeError(reason) => assert!(
            reason.contains("min_free_bytes") && reason.contains("bytes are free"),
            "{reason}"
        ),
        TaskOutcome::Done { parts, .. } => panic!(
            "a segment below the free-space floor must be refused, but {} renditions came back",
            parts.len()
        ),
        other => panic!("a segment below the free-space floor must be refused, got {other:?}"),
    }
    let st = wait_status(&d, "the refusal recorded", |s| {
        s["livepeer"]["segments"]["failed"] == 1
    })
    .await;
    assert_eq!(st["livepeer"]["segments"]["transcoded"], 0);
    assert_eq!(st["pixels_today"]["encoded_pixels"], 0);
    assert!(d.terminate(), "daemon did not stop cleanly");
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

#[test]
fn a_refused_secret_stops_the_daemon_with_what_to_fix() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let orch = rt
        .block_on(TestOrchestrator::start(TestOrchestratorConfig::default()))
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let config = common::write_config(root.path(), "");
    let out = Command::new(common::BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(root.path().join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .args(["--orch-addr", &orch.addr(), "--orch-secret", "wrong"])
        .args(["--capacity", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid secret") && err.contains("--orch-secret"),
        "{err}"
    );
    assert_eq!(orch.refusals(), vec!["invalid secret".to_string()]);

    // Flags are checked before anything starts.
    let out = Command::new(common::BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(root.path().join("data"))
        .args(["--orch-addr", &orch.addr(), "--orch-secret", "s"])
        .args([
            "--eth-address",
            "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("EIP-55"), "{err}");
    drop(rt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_livepeer_section_of_the_config_attaches_and_flags_win() {
    let root = tempfile::tempdir().unwrap();
    let orch = TestOrchestrator::start(TestOrchestratorConfig::default())
        .await
        .unwrap();
    let secret = secret_file(root.path(), orch.secret());
    let config = common::write_config(
        root.path(),
        &format!(
            "[livepeer]\norch_addr = {:?}\norch_secret = {secret:?}\ncapacity = 3\ncapacity_dwell_secs = 0.5\n",
            orch.addr()
        ),
    );
    // No --orch-addr: the config file alone attaches; --capacity on the command line wins.
    let mut d = common::Daemon::start_with(root.path(), &config, &["--capacity", "2"]);
    orch.wait_for_transcoders(1, WAIT).await.unwrap();
    let st = wait_status(&d, "registration", |s| {
        s["livepeer"]["link"]["state"] == "registered"
    })
    .await;
    assert_eq!(orch.capacities(), vec![2]);
    assert_eq!(st["livepeer"]["capacity_mode"], "2");
    assert!(d.terminate());
}

#[test]
fn an_unknown_key_in_the_livepeer_section_is_refused_by_name() {
    let root = tempfile::tempdir().unwrap();
    let config = common::write_config(
        root.path(),
        "[livepeer]\norch_adress = \"pool.example.com:8935\"\n",
    );
    let mut child = Command::new(common::BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(root.path().join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_exit(&mut child, Duration::from_secs(30));
    let err = common::stderr_of(&mut child);
    let status = status.unwrap_or_else(|| panic!("a misspelt key must stop comine run: {err}"));
    assert!(!status.success());
    assert!(err.contains("orch_adress"), "{err}");
}

/// A new user on a CPU-only machine: `comine run --orch-addr … --orch-secret …` with the
/// default `--capacity auto` must register with what this host can do (at least 1 session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_auto_on_a_cpu_host_registers_at_least_one_session() {
    let root = tempfile::tempdir().unwrap();
    let orch = TestOrchestrator::start(TestOrchestratorConfig::default())
        .await
        .unwrap();
    let config = common::write_config(
        root.path(),
        "[gpu]\nbackend = \"host\"\npoll_interval_ms = 100\n[scheduler]\ntick_interval_ms = 100\n",
    );
    let mut d = common::Daemon::start_with(
        root.path(),
        &config,
        &["--orch-addr", &orch.addr(), "--orch-secret", orch.secret()],
    );
    // Start-up calibration runs a short probe first; allow for a slow shared machine.
    orch.wait_for_transcoders(1, Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("{e}; daemon log:\n{}", d.log()));
    let caps = orch.capacities();
    assert!(caps.iter().all(|&c| c >= 1), "{caps:?}");
    let st = wait_status(&d, "registration", |s| {
        s["livepeer"]["link"]["state"] == "registered"
    })
    .await;
    assert_eq!(st["livepeer"]["capacity_mode"], "auto");
    // The host was rated by what the start-up probe measured, not by a per-core guess.
    let cal: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.path().join("data").join("calibration.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cal["devices"][0]["uuid"], "host", "{cal}");
    assert!(
        cal["devices"][0]["pixels_per_sec"].as_f64().unwrap() > 0.0,
        "{cal}"
    );
    assert!(d.terminate());
}

/// Whatever capacity the scheduler grants, even none, a wrong secret is reported at start.
#[test]
fn a_wrong_secret_is_found_at_once_even_with_no_capacity() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let orch = rt
        .block_on(TestOrchestrator::start(TestOrchestratorConfig::default()))
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    // One Livepeer session needs more than any device here: auto grants 0 sessions.
    let config = common::write_config(
        root.path(),
        "[gpu]\nbackend = \"host\"\n[scheduler]\nsession_pixels_per_sec = 1e15\n",
    );
    let start = Instant::now();
    let out = Command::new(common::BIN)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(root.path().join("data"))
        .args(["--listen", "127.0.0.1:0"])
        .args(["--orch-addr", &orch.addr(), "--orch-secret", "wrong"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = out;
    let status = common::wait_exit(
        &mut child,
        Duration::from_secs(120).saturating_sub(start.elapsed()),
    );
    let err = common::stderr_of(&mut child);
    let status = status.unwrap_or_else(|| panic!("a wrong secret was not reported: {err}"));
    assert!(!status.success());
    assert!(
        err.contains("invalid secret") && err.contains("--orch-secret"),
        "{err}"
    );
    assert_eq!(orch.refusals(), vec!["invalid secret".to_string()]);
    drop(rt);
}

/// Issue 13: the orchestrator's `GetOrchestrator` price (`price_info`), asked at attach on
/// the registration's TLS port with a request signed by the operator key, values the job
/// (`price_source` = `orchestrator`); an orchestrator that refuses the call leaves the
/// configured `[earnings]` price in use (`price_source` = `config`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_orchestrators_price_values_the_job_else_the_configured_price() {
    let o_addr: alloy::primitives::Address = "0x00000000000000000000000000000000000000aa"
        .parse()
        .unwrap();
    for (price_info, source) in [(Some((1200i64, 1000i64)), "orchestrator"), (None, "config")] {
        let root = tempfile::tempdir().unwrap();
        let orch = TestOrchestrator::start(TestOrchestratorConfig {
            price_info,
            eth_address: Some(o_addr),
            ..Default::default()
        })
        .await
        .unwrap();
        let key = root.path().join("operator.key");
        let signer = comine::earnings::receipts::OperatorKey::generate(&key)
            .unwrap()
            .address();
        let config = common::write_config(
            root.path(),
            &format!(
                "[earnings]\nkey_file = {:?}\nprice_per_unit = 7\npixels_per_unit = 1\n",
                key.display().to_string()
            ),
        );
        let secret = secret_file(root.path(), orch.secret());
        let mut d = common::Daemon::start_with(
            root.path(),
            &config,
            &[
                "--orch-addr",
                &orch.addr(),
                "--orch-secret",
                &secret,
                "--capacity",
                "1",
            ],
        );
        orch.wait_for_transcoders(1, WAIT).await.unwrap();
        orch.wait_for_price_requests(1, WAIT).await.unwrap();
        // The request names the operator's address and its signature checks out.
        let (req, refused) = orch.price_requests().remove(0);
        assert_eq!(req.address, signer.to_vec());
        assert_eq!(
            refused.as_deref(),
            price_info.map_or(Some("no price for this sender"), |_| None),
            "{source}"
        );
        let mut job = SegmentJob::new("sess-p", 0, common::lp_segment(), ladder());
        job.duration_ms = 1000;
        let pixels: u64 = match orch.transcode(job).await {
            TaskOutcome::Done { parts, .. } => parts.iter().map(|p| p.pixels).sum(),
            other => panic!("segment not transcoded: {other:?}"),
        };
        assert!(pixels > 0);
        let st = wait_status(&d, "the segment valued", |s| {
            s["earnings"]["today"]["jobs"] == 1
        })
        .await;
        let today = &st["earnings"]["today"];
        assert_eq!(today["price_source"], source, "{today}");
        assert_eq!(today["pixels"], pixels.to_string());
        // Hand-computed: ⌊pixels × 1200 ÷ 1000⌋ from the orchestrator, pixels × 7 configured.
        let gross = match price_info {
            Some(_) => pixels * 1200 / 1000,
            None => pixels * 7,
        };
        assert_eq!(today["gross_wei"], gross.to_string(), "{today}");
        assert!(d.terminate(), "daemon did not stop cleanly");
    }
}
