//! `comine run` following the chain's WindowPoSt schedule end to end: a fake full node (real
//! clock, genesis placed so that deadline 33 opens about 50 s after the test starts), the daemon
//! on a labelled simulated GPU attached to the in-repo test orchestrator, and live streams
//! arriving all along. The Livepeer capacity published to the orchestrator must reach the proof
//! floor before the step-down (so streams drain instead of being cut), comine's admitted load
//! must be at the floor before `Open`, and no segment of a stream already running may miss
//! its deadline on the way down.
//!
//! Timings are scaled down so the test runs in about half a minute: `lead_epochs = 1` (30 s)
//! and `drain_secs = 12` (with `--capacity-dwell 2`) instead of 24 epochs and 60 s (dwell 10 s).
//! The orchestrator counts load in streams as go-livepeer does (a re-registration orphans
//! them), so the capacity must come down in steps behind the streams still running. The test
//! prints the lead achieved.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use comine::livepeer::test_orchestrator::{
    SegmentJob, TaskOutcome, TestOrchestrator, TestOrchestratorConfig,
};
use comine::post::fake_node::{FakeNode, NodeState};
use comine::post::SystemClock;
use serde_json::Value;

const TOKEN: &str = "e2e-read-token";
const WAIT: Duration = Duration::from_secs(90);
/// Epochs are 30 s.
const EPOCH_MS: u64 = 30_000;
const DRAIN_SECS: u64 = 12;
/// `--capacity-dwell`: how long a capacity change must last before re-registering (10 s by
/// default, well inside the default 60 s drain).
const DWELL_SECS: &str = "2";
/// Segments per stream; each lasts 1 s, so a stream ends well within the drain.
const STREAM_SEGMENTS: i64 = 3;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One live stream: `STREAM_SEGMENTS` segments at real-time cadence. `None` when the
/// orchestrator had no room for a new stream, or comine refused it at its first segment
/// while draining (either way it goes to another transcoder: not a miss).
///
/// Also `None`, counted in `lost_first`, when the stream's first segment timed out: the
/// orchestrator sent it on a registration in the instant comine closed it. go-livepeer's
/// protocol has no way to close a registration without that race (a notification already
/// sent is lost, and go-livepeer waits for it until its timeout); comine closes at the
/// quietest moment of the streams bound there, but a new stream can arrive at any time.
/// The test's sources start a new stream every 200 ms, far more often than live streams
/// arrive, so this is counted and bounded rather than forbidden. A running stream's
/// segments must never miss.
async fn stream(
    orch: &TestOrchestrator,
    id: &str,
    lost_first: &AtomicUsize,
) -> Option<Vec<(i64, TaskOutcome)>> {
    let media = common::lp_segment();
    let mut out = Vec::new();
    for seq in 0..STREAM_SEGMENTS {
        let sent = Instant::now();
        let mut job = SegmentJob::new(id, seq, media.clone(), vec![common::lp_p144p()]);
        job.duration_ms = 1000;
        let outcome = orch.transcode(job).await;
        let refused = match &outcome {
            TaskOutcome::NoTranscoder => true,
            TaskOutcome::TranscodeError(e) => e.contains("transcoder draining"),
            _ => false,
        };
        if seq == 0 && refused {
            return None;
        }
        if seq == 0 && matches!(outcome, TaskOutcome::Timeout) {
            lost_first.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        out.push((seq, outcome));
        tokio::time::sleep_until((sent + Duration::from_secs(1)).into()).await;
    }
    orch.end_session(id).await;
    Some(out)
}

#[derive(Debug, Default)]
struct Seen {
    drain_at: Option<u64>,
    step_down_at: Option<u64>,
    /// The orchestrator holds the floor's capacity.
    capacity_floor_at: Option<u64>,
    /// comine's admitted load on the GPU is within the floor's budget, stepped down.
    load_floor_at: Option<u64>,
    open_ms: Option<u64>,
    planned_step_down_ms: Option<u64>,
    full_capacity: i64,
    floor_capacity: Option<i64>,
    max_admitted_pps_stepped_down: f64,
    floor_budget_pps: f64,
    reason: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn livepeer_capacity_reaches_the_floor_before_open_and_no_live_segment_misses() {
    let root = tempfile::tempdir().unwrap();
    // The ladder's pixel rate is one Livepeer session; the simulated GPU is rated at 15 of
    // them, so its budget (90 %) holds 13 sessions and the proof floor (10 %) one.
    let p = common::lp_p144p();
    let session_pps = f64::from(p.width * p.height) * f64::from(p.fps) / f64::from(p.fps_den);
    let rated = 15.0 * session_pps;

    // Genesis such that the step-down (Open − 1 epoch) of deadline 33 starts 25 s from now
    // (the drain 13 s from now, once the daemon has registered at full capacity).
    let open_epoch = NodeState::FIXTURE_OPEN_33;
    let step_down_s = now_ms() / 1000 + 25;
    let genesis_ts = step_down_s as i64 - 30 * (open_epoch - 1);
    let open_ms = (genesis_ts + 30 * open_epoch) as u64 * 1000;
    let state = NodeState {
        genesis_ts,
        ..NodeState::fixture()
    };
    let node = FakeNode::start(TOKEN, std::sync::Arc::new(SystemClock), state)
        .await
        .unwrap();
    // go-livepeer's accounting: streams bound to a transcoder, orphaned by a re-registration.
    let orch = TestOrchestrator::start(TestOrchestratorConfig {
        session_load: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let config = common::write_config(
        root.path(),
        &format!(
            "[gpu]\nbackend = \"sim:a4000\"\npoll_interval_ms = 50\n\
             [scheduler]\ntick_interval_ms = 50\nsession_pixels_per_sec = {session_pps}\n\
             [scheduler.device_pixels_per_sec]\n\"0\" = {rated}\n\
             [post]\nfullnode_api_info = \"{}\"\nminer = \"f01234\"\nlead_epochs = 1\n\
             drain_secs = {DRAIN_SECS}\nvram_reserve_mib = 4096\npoll_interval_ms = 200\n",
            node.api_info(TOKEN)
        ),
    );
    let mut d = common::Daemon::start_with(
        root.path(),
        &config,
        &[
            "--orch-addr",
            &orch.addr(),
            "--orch-secret",
            orch.secret(),
            "--capacity-dwell",
            DWELL_SECS,
        ],
    );
    orch.wait_for_transcoders(1, WAIT).await.unwrap();

    let stop = AtomicBool::new(false);
    let lost_first = AtomicUsize::new(0);
    let mut seen = Seen::default();
    let monitor = async {
        let start = Instant::now();
        loop {
            let st = d.get_json("/v1/status").await;
            let at = now_ms();
            let plan = &st["post"]["plan"];
            let phase = plan["window"]["phase"].as_str().unwrap_or("").to_string();
            // The newest registration: a capacity change opens it before the old one closes.
            let caps = orch.capacities();
            let cap = caps.last().copied().unwrap_or(-1);
            if phase == "none" && st["post"]["source"] == "ok" {
                seen.full_capacity = seen.full_capacity.max(cap);
            }
            if let Some(row) = plan["rows"].as_array().and_then(|r| r.get(33)) {
                seen.open_ms = row["open_ms"].as_u64();
                seen.planned_step_down_ms = row["step_down_ms"].as_u64();
            }
            if phase == "drain" && seen.drain_at.is_none() {
                seen.drain_at = Some(at);
                seen.reason = plan["window"]["reason"].as_str().unwrap_or("").into();
            }
            if phase == "step_down" && seen.step_down_at.is_none() {
                seen.step_down_at = Some(at);
            }
            let last = st["decisions"]
                .as_array()
                .and_then(|a| a.last())
                .cloned()
                .unwrap_or(Value::Null);
            let dev = &last["devices"][0];
            if phase == "drain" || phase == "step_down" {
                let floor = last["capacity"]["livepeer_sessions"].as_i64();
                if let (Some(f), None) = (floor, seen.floor_capacity) {
                    if cap == f && seen.drain_at.is_some() {
                        seen.floor_capacity = Some(f);
                        seen.capacity_floor_at = Some(at);
                    }
                }
            }
            if dev["post_phase"] == "step_down" {
                let admitted = dev["admitted_pps"].as_f64().unwrap_or(f64::MAX);
                let budget = dev["budget_pps"].as_f64().unwrap_or(0.0);
                seen.floor_budget_pps = budget;
                seen.max_admitted_pps_stepped_down =
                    seen.max_admitted_pps_stepped_down.max(admitted);
                if admitted <= budget && seen.load_floor_at.is_none() {
                    seen.load_floor_at = Some(at);
                }
            }
            let done = seen.load_floor_at.is_some_and(|t| at > t + 2_000)
                && seen.capacity_floor_at.is_some();
            if done || start.elapsed() > WAIT {
                stop.store(true, Ordering::Relaxed);
                return st;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // Three stream sources: a new stream whenever the last one ended, from registration
    // until the monitor is done.
    let source = |k: usize| {
        let (orch, stop, lost_first) = (&orch, &stop, &lost_first);
        async move {
            let mut streams = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("stream-{k}-{n}");
                match stream(orch, &id, lost_first).await {
                    Some(segments) => streams.push((id, segments)),
                    None => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            streams
        }
    };
    let (last_status, a, b, c) = tokio::join!(monitor, source(0), source(1), source(2));

    let s = &seen;
    eprintln!("WindowPoSt e2e: {s:#?}");
    assert!(
        s.step_down_at.is_some() && s.capacity_floor_at.is_some() && s.load_floor_at.is_some(),
        "the daemon did not step down in time: {s:#?}; post status: {}",
        last_status["post"]
    );
    // comine computed the window from the chain's numbers, not from the test's.
    assert_eq!(s.open_ms, Some(open_ms), "{}", last_status["post"]);
    assert_eq!(s.planned_step_down_ms, Some(open_ms - EPOCH_MS));
    assert!(
        s.reason.starts_with("WindowPoSt deadline 33 opens in "),
        "{}",
        s.reason
    );
    let floor = s.floor_capacity.unwrap();
    assert!(
        floor >= 1 && floor < s.full_capacity,
        "capacity must go down to a floor that still serves: full {}, floor {floor}",
        s.full_capacity
    );
    let (cap_at, step_at, load_at) = (
        s.capacity_floor_at.unwrap(),
        s.step_down_at.unwrap(),
        s.load_floor_at.unwrap(),
    );
    // The orchestrator is told before the step-down; the GPU is at the floor before Open.
    assert!(
        cap_at <= step_at,
        "capacity reached the floor {} ms after the step-down",
        cap_at - step_at
    );
    assert!(load_at < open_ms, "load at the floor only after Open");

    let diagnosis = || {
        format!(
            "registrations {:?}; daemon log:\n{}",
            orch.registered_capacities(),
            d.log()
        )
    };
    // Every segment of every stream that started was transcoded in time.
    let streams: Vec<_> = a.into_iter().chain(b).chain(c).collect();
    let mut segments = 0;
    for (id, segs) in &streams {
        for (seq, outcome) in segs {
            segments += 1;
            assert!(
                matches!(outcome, TaskOutcome::Done { .. }),
                "{id} segment {seq} missed: {outcome:?}; {}",
                diagnosis()
            );
        }
    }
    let lost_first = lost_first.load(Ordering::Relaxed);
    assert!(
        lost_first <= 1,
        "{lost_first} new streams lost their first segment in flight at a registration close; {}",
        diagnosis()
    );
    assert!(
        streams.len() >= 3,
        "too few streams to mean anything: {}",
        streams.len()
    );
    assert_eq!(
        last_status["livepeer"]["segments"]["failed"], 0,
        "{}",
        last_status["livepeer"]
    );
    // The capacity went down in steps, never up while draining, and the link says it drains.
    let registered = orch.registered_capacities();
    let full_at = registered
        .iter()
        .rposition(|c| *c == s.full_capacity)
        .unwrap_or(0);
    assert!(
        registered[full_at..].windows(2).all(|w| w[1] <= w[0]),
        "the registered capacity rose while draining: {registered:?}"
    );
    let link = &last_status["livepeer"]["link"];
    assert_eq!(link["draining"], true, "{link}");
    let secs = |ms: u64| ms as f64 / 1000.0;
    eprintln!(
        "WindowPoSt e2e numbers: {} streams, {segments} segments, none missed; registrations {registered:?}, {} new streams refused while draining, {lost_first} lost their first segment at a registration close; capacity at the floor ({floor} of {} sessions) {:.1} s before Open; step-down {:.1} s before Open; GPU load at the floor {:.2} s after the step-down began ({:.1} s before Open; max admitted while stepped down {:.0} px/s, floor budget {:.0} px/s)",
        streams.len(),
        link["streams_refused_draining"],
        s.full_capacity,
        secs(open_ms - cap_at),
        secs(open_ms - step_at),
        secs(load_at.saturating_sub(step_at)),
        secs(open_ms - load_at),
        s.max_admitted_pps_stepped_down,
        s.floor_budget_pps,
    );
    // The operator sees it: gauges, `comine status`, `comine post status`.
    let metrics = d.get("/metrics").await.text().await.unwrap();
    for needle in [
        "comine_post_step_down_active 1",
        "comine_post_source_state{state=\"ok\"} 1",
        "comine_post_source_state{state=\"down\"} 0",
        "comine_post_seconds_to_next_window ",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    let requests: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("comine_post_requests_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(
        requests >= 49.0,
        "ChainHead + 48 partitions at least: {requests}"
    );
    let (ok, out, err) = d.cli(&["status"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("WindowPoSt (f01234): source ok")
            && out.contains("stepped down: WindowPoSt deadline 33"),
        "{out}"
    );
    let (ok, out, err) = d.cli(&["post", "status"]);
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("33 "))
        .unwrap_or_else(|| panic!("no row for deadline 33 in\n{out}"));
    assert!(
        row.contains("3161/3"),
        "live/faulty sectors of deadline 33: {row}"
    );
    assert!(row.contains("STEPPED DOWN"), "{row}");
    assert!(d.terminate(), "daemon did not stop cleanly");
    // The schedule was saved for a restart while the node is down.
    assert!(d.data.join("post-schedule.json").exists());
}
