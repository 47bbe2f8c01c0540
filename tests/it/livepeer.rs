//! Integration tests of the Livepeer remote transcoder against the in-repo test
//! orchestrator (gRPC + HTTPS on one TLS port, fresh self-signed certificate).

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use comine::daemon::livepeer::EnginePipeline;
use comine::livepeer::proto::{Format, VideoProfile};
use comine::livepeer::test_orchestrator::{
    ProfilesField, SegmentJob, TaskOutcome, TestOrchestrator, TestOrchestratorConfig,
};
use comine::livepeer::{run_transcoder, LivepeerError, MemorySink, TlsPolicy, TranscoderConfig};
use comine::transcode::EncoderChoice;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);
const SRC_W: u64 = 320;
const SRC_H: u64 = 180;
const SRC_FRAMES: u64 = 30;

fn ladder() -> Vec<VideoProfile> {
    vec![
        common::lp_p144p(),
        // Source size, half the frame rate, intra-only, MP4.
        VideoProfile {
            name: "source-mp4".into(),
            width: 0,
            height: 0,
            bitrate: 600_000,
            fps: 15,
            fps_den: 1,
            gop: -1,
            format: Format::Mp4 as i32,
            ..Default::default()
        },
    ]
}

/// libx264 ultrafast: the engine as `comine livepeer --encoder x264` runs it.
fn pipeline() -> Arc<EnginePipeline> {
    Arc::new(EnginePipeline::new(EncoderChoice::X264, "ultrafast", 0))
}

fn config(o: &TestOrchestrator, work: &tempfile::TempDir) -> TranscoderConfig {
    let mut cfg = TranscoderConfig::new(o.addr(), o.secret());
    cfg.work_dir = work.path().to_path_buf();
    cfg.capacity_dwell = Duration::from_millis(200);
    cfg.backoff_initial = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);
    cfg
}

struct Client {
    task: JoinHandle<Result<(), LivepeerError>>,
    shutdown: CancellationToken,
    sink: Arc<MemorySink>,
    capacity: watch::Sender<u32>,
    _work: tempfile::TempDir,
}

impl Client {
    fn start(
        o: &TestOrchestrator,
        capacity: u32,
        tweak: impl FnOnce(&mut TranscoderConfig),
    ) -> Client {
        let work = tempfile::tempdir().unwrap();
        let mut cfg = config(o, &work);
        tweak(&mut cfg);
        let (tx, rx) = watch::channel(capacity);
        let sink = Arc::new(MemorySink::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_transcoder(
            cfg,
            rx,
            pipeline(),
            sink.clone(),
            shutdown.clone(),
        ));
        Client {
            task,
            shutdown,
            sink,
            capacity: tx,
            _work: work,
        }
    }

    async fn stop(self) -> Result<(), LivepeerError> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("client stops")
            .expect("client task")
    }
}

async fn orchestrator() -> TestOrchestrator {
    TestOrchestrator::start(TestOrchestratorConfig::default())
        .await
        .unwrap()
}

/// Frames × width × height of a rendition, counted by ffprobe decoding it: the check
/// pools run to re-verify pixel counts.
fn probe_pixels(data: &[u8], ext: &str) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("r.{ext}"));
    std::fs::write(&path, data).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height,nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(&path)
        .output()
        .expect("ffprobe is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    // MPEG-TS lists the stream under its program too: the first line is enough.
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .expect("ffprobe output");
    let nums: Vec<u64> = line.split(',').map(|v| v.trim().parse().unwrap()).collect();
    nums[0] * nums[1] * nums[2]
}

/// Polls `cond` until it holds (the sink runs after the upload, so it trails the O's view).
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let until = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn expect_done(
    outcome: TaskOutcome,
) -> (u64, Vec<comine::livepeer::test_orchestrator::ResultPart>) {
    match outcome {
        TaskOutcome::Done {
            decoded_pixels,
            parts,
            ..
        } => (decoded_pixels, parts),
        other => panic!("expected renditions, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_secret_capacity_capabilities_and_eth_address() {
    let o = orchestrator().await;
    let address = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
    let client = Client::start(&o, 3, |cfg| {
        cfg.eth_address = Some(comine::livepeer::args::parse_eth_address(address).unwrap());
    });
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    let reg = o.registrations().remove(0);
    assert_eq!(reg.secret, o.secret());
    assert_eq!(reg.capacity, 3);
    let caps = reg.capabilities.expect("capabilities are sent");
    for bit in [0, 1, 2, 12] {
        assert!(
            caps.bitstring[0] & (1 << bit) != 0,
            "capability {bit} advertised"
        );
    }
    assert!(
        caps.bitstring[0] & (1 << 14) == 0,
        "no MPEG-7 signatures claimed"
    );
    let parts: Vec<&str> = caps.version.split('.').collect();
    assert_eq!(parts.len(), 3, "semver version, got {:?}", caps.version);
    assert_eq!(
        hex::encode(&reg.ethereum_address),
        address[2..].to_lowercase()
    );
    client.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcodes_a_stream_of_segments_with_exact_pixels() {
    let o = orchestrator().await;
    let client = Client::start(&o, 2, |_| {});
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    for seq in 0..3 {
        let (decoded, parts) = expect_done(
            o.transcode(SegmentJob::new("s1", seq, common::lp_segment(), ladder()))
                .await,
        );
        assert_eq!(
            decoded,
            SRC_W * SRC_H * SRC_FRAMES,
            "decoded pixels of segment {seq}"
        );
        assert_eq!(parts.len(), 2, "one part per profile");
        assert_eq!(parts[0].content_type, "video/mp2t");
        assert_eq!(parts[1].content_type, "video/mp4");
        assert_eq!(
            parts[0].pixels,
            probe_pixels(&parts[0].data, "ts"),
            "P144p pixels are exact"
        );
        assert_eq!(
            parts[1].pixels,
            probe_pixels(&parts[1].data, "mp4"),
            "source-size pixels are exact"
        );
        assert_eq!(parts[0].pixels, 256 * 144 * 30);
        assert_eq!(parts[1].pixels, SRC_W * SRC_H * 15, "15 fps at source size");
    }
    eventually("3 segments in the sink", || {
        client.sink.transcoded.lock().unwrap().len() == 3
    })
    .await;
    let records = client.sink.transcoded.lock().unwrap().clone();
    assert!(records.iter().all(|r| r.accepted && r.session_id == "s1"));
    // The session's decoder stays open: only its first segment opened one.
    let reused: Vec<bool> = records.iter().map(|r| r.decoder_reused).collect();
    assert_eq!(reused, [false, true, true]);
    assert_eq!(records[0].renditions[0].profile, "P144p30fps16x9");
    assert_eq!(
        records[0].encoded_pixels,
        256 * 144 * 30 + SRC_W * SRC_H * 15
    );
    client.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_fall_back_to_full_profiles2_then_1() {
    let o = orchestrator().await;
    let client = Client::start(&o, 1, |_| {});
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    for (seq, field) in [(0, ProfilesField::Full2), (1, ProfilesField::Full1)] {
        let mut job = SegmentJob::new("fb", seq, common::lp_segment(), ladder()[..1].to_vec());
        job.field = field;
        let (_, parts) = expect_done(o.transcode(job).await);
        assert_eq!(parts[0].pixels, 256 * 144 * 30, "{field:?}");
    }
    client.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_concurrent_sessions() {
    let o = orchestrator().await;
    let client = Client::start(&o, 3, |_| {});
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    let jobs = ["a", "b", "c"]
        .map(|s| SegmentJob::new(s, 0, common::lp_segment(), ladder()[..1].to_vec()));
    let [a, b, c] = jobs;
    let (ra, rb, rc) = tokio::join!(o.transcode(a), o.transcode(b), o.transcode(c));
    for r in [ra, rb, rc] {
        let (_, parts) = expect_done(r);
        assert_eq!(parts[0].pixels, 256 * 144 * 30);
    }
    eventually("3 segments in the sink", || {
        client.sink.transcoded.lock().unwrap().len() == 3
    })
    .await;
    let sessions: std::collections::HashSet<_> = client
        .sink
        .transcoded
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.session_id.clone())
        .collect();
    assert_eq!(sessions.len(), 3);
    client.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teardown_ends_the_session_and_releases_its_state() {
    let o = orchestrator().await;
    let client = Client::start(&o, 1, |_| {});
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    for seq in 0..2 {
        expect_done(
            o.transcode(SegmentJob::new(
                "td",
                seq,
                common::lp_segment(),
                ladder()[..1].to_vec(),
            ))
            .await,
        );
    }
    assert!(o.end_session("td").await, "teardown sent");
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let ended = client.sink.ended.lock().unwrap().clone();
        if !ended.is_empty() {
            assert_eq!(
                ended,
                vec![("td".to_string(), 2)],
                "session ended after its 2 segments"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "teardown never reached the client"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The stream stays up: a new session is served after the teardown.
    expect_done(
        o.transcode(SegmentJob::new(
            "td2",
            0,
            common::lp_segment(),
            ladder()[..1].to_vec(),
        ))
        .await,
    );
    client.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_dropped_connection() {
    let o = orchestrator().await;
    let client = Client::start(&o, 1, |_| {});
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    o.drop_connections();
    let until = tokio::time::Instant::now() + WAIT;
    while o.registrations().len() < 2 {
        assert!(
            tokio::time::Instant::now() < until,
            "client never re-registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    expect_done(
        o.transcode(SegmentJob::new(
            "r",
            0,
            common::lp_segment(),
            ladder()[..1].to_vec(),
        ))
        .await,
    );
    client.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_an_orchestrator_restart_with_a_new_certificate() {
    let mut o = orchestrator().await;
    let client = Client::start(&o, 1, |_| {});
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    expect_done(
        o.transcode(SegmentJob::new(
            "x",
            0,
            common::lp_segment(),
            ladder()[..1].to_vec(),
        ))
        .await,
    );
    let before = o.cert_sha256();
    o.restart().await.unwrap();
    assert_ne!(
        before,
        o.cert_sha256(),
        "the restarted orchestrator has a new certificate"
    );
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    expect_done(
        o.transcode(SegmentJob::new(
            "x",
            1,
            common::lp_segment(),
            ladder()[..1].to_vec(),
        ))
        .await,
    );
    client.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detects_a_dead_stream_and_reconnects() {
    let o = orchestrator().await;
    let client = Client::start(&o, 1, |cfg| {
        cfg.keepalive_interval = Duration::from_millis(300);
        cfg.keepalive_timeout = Duration::from_millis(300);
    });
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    // The orchestrator stops answering but keeps the socket open: only PINGs can tell.
    o.freeze_connections();
    assert_eq!(o.live_transcoders(), 0);
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    assert!(
        o.registrations().len() >= 2,
        "re-registered on a new connection"
    );
    expect_done(
        o.transcode(SegmentJob::new(
            "d",
            0,
            common::lp_segment(),
            ladder()[..1].to_vec(),
        ))
        .await,
    );
    client.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_secret_is_fatal_and_says_what_to_fix() {
    let o = orchestrator().await;
    let work = tempfile::tempdir().unwrap();
    let mut cfg = config(&o, &work);
    cfg.secret = "wrong".into();
    let (_tx, rx) = watch::channel(1);
    let result = tokio::time::timeout(
        WAIT,
        run_transcoder(
            cfg,
            rx,
            pipeline(),
            Arc::new(MemorySink::default()),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("an invalid secret ends the client instead of retrying");
    let err = result.unwrap_err();
    assert!(
        matches!(err, LivepeerError::InvalidSecret { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("--orch-secret"), "{err}");
    assert_eq!(
        o.refusals(),
        vec!["invalid secret".to_string()],
        "tried exactly once"
    );
}

/// With no capacity granted yet the client still checks its secret (a registration with
/// capacity 0 answers "invalid secret" before "zero capacity", as go-livepeer does), so a
/// typo is fatal at once; with the right secret it waits for capacity instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_fatal_at_once_even_at_capacity_zero() {
    let o = orchestrator().await;
    let work = tempfile::tempdir().unwrap();
    let mut cfg = config(&o, &work);
    cfg.secret = "wrong".into();
    let (_tx, rx) = watch::channel(0);
    let result = tokio::time::timeout(
        WAIT,
        run_transcoder(
            cfg,
            rx,
            pipeline(),
            Arc::new(MemorySink::default()),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("a wrong secret must be found while waiting for capacity");
    assert!(
        matches!(result, Err(LivepeerError::InvalidSecret { .. })),
        "{result:?}"
    );

    // The right secret at capacity 0: checked, not fatal, and it registers once granted.
    let client = Client::start(&o, 0, |_| {});
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!client.task.is_finished(), "capacity 0 is not an error");
    assert!(o.refusals().contains(&"zero capacity".to_string()));
    client.capacity.send(1).unwrap();
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    assert!(client.stop().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_url_404_returns_an_error_part() {
    let o = orchestrator().await;
    let client = Client::start(&o, 1, |_| {});
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    let mut job = SegmentJob::new("nf", 0, common::lp_segment(), ladder());
    job.media = None;
    match o.transcode(job).await {
        TaskOutcome::TranscodeError(reason) => assert!(reason.contains("404"), "{reason}"),
        other => panic!("expected an error part, got {other:?}"),
    }
    eventually("the failure in the sink", || {
        client.sink.failed.lock().unwrap().len() == 1
    })
    .await;
    client.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_segment_returns_an_error_part() {
    let o = orchestrator().await;
    let client = Client::start(&o, 1, |_| {});
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    let garbage: Vec<u8> = (0..50_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    match o
        .transcode(SegmentJob::new("bad", 0, Bytes::from(garbage), ladder()))
        .await
    {
        TaskOutcome::TranscodeError(reason) => assert!(!reason.is_empty()),
        other => panic!("expected an error part, got {other:?}"),
    }
    // A perceptual-hash request (capability we do not advertise) is refused the same way.
    let mut job = SegmentJob::new("ph", 0, common::lp_segment(), ladder());
    job.calc_perceptual_hash = true;
    match o.transcode(job).await {
        TaskOutcome::TranscodeError(reason) => {
            assert!(reason.contains("perceptual hash"), "{reason}")
        }
        other => panic!("expected an error part, got {other:?}"),
    }
    eventually("2 failures in the sink", || {
        client.sink.failed.lock().unwrap().len() == 2
    })
    .await;
    let failed = client.sink.failed.lock().unwrap().clone();
    assert!(failed.iter().all(|f| f.bad_input), "{failed:?}");
    // The transcoder is still registered and works.
    expect_done(
        o.transcode(SegmentJob::new(
            "ok",
            0,
            common::lp_segment(),
            ladder()[..1].to_vec(),
        ))
        .await,
    );
    client.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_deadline_returns_an_error_part() {
    let o = TestOrchestrator::start(TestOrchestratorConfig {
        timeout_floor: Duration::from_secs(5),
        ..Default::default()
    })
    .await
    .unwrap();
    // No floor on our side: a 1 ms segment gets a 4 ms deadline, which no transcode meets.
    let client = Client::start(&o, 1, |cfg| cfg.deadline_floor = Duration::ZERO);
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    let mut job = SegmentJob::new("late", 0, common::lp_segment(), ladder());
    job.duration_ms = 1;
    match o.transcode(job).await {
        TaskOutcome::TranscodeError(reason) => assert!(reason.contains("deadline"), "{reason}"),
        other => panic!("expected a deadline error part, got {other:?}"),
    }
    client.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_changes_re_register_after_the_dwell_time() {
    let o = orchestrator().await;
    let client = Client::start(&o, 2, |_| {});
    o.wait_for_capacity(2, WAIT).await.unwrap();
    client.capacity.send(1).unwrap();
    o.wait_for_capacity(1, WAIT).await.unwrap();
    // The new registration is made before the old one closes (a handover).
    eventually("the old registration is gone", || o.capacities() == vec![1]).await;
    // Capacity 0: the scheduler wants the GPU back; unregister instead of sending 0.
    client.capacity.send(0).unwrap();
    let until = tokio::time::Instant::now() + WAIT;
    while o.live_transcoders() > 0 {
        assert!(
            tokio::time::Instant::now() < until,
            "still registered at capacity 0"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.capacity.send(3).unwrap();
    o.wait_for_capacity(3, WAIT).await.unwrap();
    assert!(
        o.registrations().iter().all(|r| r.capacity > 0),
        "never registered with 0"
    );
    client.stop().await.unwrap();
}

/// A live stream of `segments` half-second segments at real-time cadence, then its teardown:
/// each segment's outcome.
async fn live_stream(o: &TestOrchestrator, id: &str, segments: i64) -> Vec<(i64, TaskOutcome)> {
    let mut outcomes = Vec::new();
    for seq in 0..segments {
        let sent = tokio::time::Instant::now();
        let mut job = SegmentJob::new(id, seq, common::lp_segment(), ladder()[..1].to_vec());
        job.duration_ms = 500;
        outcomes.push((seq, o.transcode(job).await));
        tokio::time::sleep_until(sent + Duration::from_millis(500)).await;
    }
    o.end_session(id).await;
    outcomes
}

/// A capacity change is a new registration (go-livepeer fixes capacity at registration), and
/// closing the old one orphans its streams. Against an orchestrator that takes 400 ms to
/// add a registration, closing first lost a segment of a running stream at nearly every
/// change (no transcoder for it in the gap); the handover opens the new registration first
/// and closes the old one between the streams' segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capacity_changes_hand_over_without_losing_a_running_stream() {
    let o = TestOrchestrator::start(TestOrchestratorConfig {
        session_load: true,
        register_delay: Duration::from_millis(400),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = Client::start(&o, 3, |_| {});
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    let stream = |id| live_stream(&o, id, 16);
    // Never below the two streams running; each change lasts past the 200 ms dwell.
    let changes = async {
        for cap in [4, 2, 3, 2] {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            client.capacity.send(cap).unwrap();
        }
    };
    let (a, b, ()) = tokio::join!(stream("a"), stream("b"), changes);
    for (id, outcomes) in [("a", a), ("b", b)] {
        for (seq, outcome) in outcomes {
            assert!(
                matches!(outcome, TaskOutcome::Done { .. }),
                "stream {id} segment {seq} was lost at a capacity change: {outcome:?}; registrations {:?}",
                o.registered_capacities()
            );
        }
    }
    let registered = o.registered_capacities();
    assert!(
        registered.len() >= 4 && registered[0] == 3,
        "every lasting change re-registers: {registered:?}"
    );
    eventually("one registration left, at the last capacity", || {
        o.capacities() == vec![2]
    })
    .await;
    client.stop().await.unwrap();
}

/// A drain's handover leaves room for a refused new stream. After the handover the
/// orchestrator counts each new stream against the new registration until comine's refusal
/// comes back, while the running streams, orphaned by the old registration's close, rebind
/// there at their next segment. Registered at exactly the running streams, a refusal in
/// flight left one of them no room (NoTranscoder mid-stream); the drain registers one more.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_leaves_room_for_a_refused_new_stream_while_running_streams_move() {
    let o = TestOrchestrator::start(TestOrchestratorConfig {
        session_load: true,
        register_delay: Duration::from_millis(200),
        failure_release_delay: Duration::from_millis(400),
        ..Default::default()
    })
    .await
    .unwrap();
    let client = Client::start(&o, 4, |_| {});
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    let stream = |id| live_stream(&o, id, 12);
    let draining = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    // The grant falls to 1 (a proof coming) with two streams running: a drain.
    let drain = async {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        client.capacity.send(1).unwrap();
        // The client follows the grant within 250 ms; from then on a new stream is refused.
        tokio::time::sleep(Duration::from_millis(400)).await;
        draining.store(true, Ordering::Relaxed);
    };
    // New streams keep arriving one after another while draining; each is refused.
    let newcomers = async {
        let mut k = 0;
        let mut refused = 0;
        while !done.load(Ordering::Relaxed) {
            if !draining.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            k += 1;
            let id = format!("new-{k}");
            let mut job = SegmentJob::new(&id, 0, common::lp_segment(), ladder()[..1].to_vec());
            job.duration_ms = 500;
            match o.transcode(job).await {
                TaskOutcome::TranscodeError(e) if e.contains("transcoder draining") => refused += 1,
                TaskOutcome::NoTranscoder => tokio::time::sleep(Duration::from_millis(20)).await,
                other => panic!("a new stream while draining must be refused: {other:?}"),
            }
            o.end_session(&id).await;
        }
        refused
    };
    let streams = async {
        let out = tokio::join!(stream("a"), stream("b"));
        done.store(true, Ordering::Relaxed);
        out
    };
    let ((a, b), (), refused) = tokio::join!(streams, drain, newcomers);
    let registered = o.registered_capacities();
    let cut: Vec<String> = [("a", a), ("b", b)]
        .into_iter()
        .flat_map(|(id, outcomes)| {
            outcomes
                .into_iter()
                .filter(|(_, o)| !matches!(o, TaskOutcome::Done { .. }))
                .map(move |(seq, o)| format!("{id} segment {seq}: {o:?}"))
        })
        .collect();
    assert!(
        cut.is_empty(),
        "running streams were cut while draining: {cut:?}; registrations {registered:?}; {refused} new streams refused"
    );
    assert!(refused >= 3, "new streams kept arriving: {refused} refused");
    assert_eq!(
        registered.get(..2),
        Some(&[4, 3][..]),
        "the drain registers the two running streams and one more: {registered:?}"
    );
    eventually(
        "the capacity reaches the grant once the streams end",
        || o.capacities() == vec![1],
    )
    .await;
    client.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_pin_accepts_the_right_certificate_only() {
    let o = orchestrator().await;
    let pin = o.cert_sha256();
    let good = Client::start(&o, 1, |cfg| cfg.tls = TlsPolicy::PinSha256(pin));
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    expect_done(
        o.transcode(SegmentJob::new(
            "pin",
            0,
            common::lp_segment(),
            ladder()[..1].to_vec(),
        ))
        .await,
    );
    good.stop().await.unwrap();

    let o2 = orchestrator().await;
    let wrong = Client::start(&o2, 1, |cfg| cfg.tls = TlsPolicy::PinSha256(pin));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        o2.registrations().is_empty(),
        "a mismatched pin never registers"
    );
    assert!(
        !wrong.task.is_finished(),
        "a pin mismatch is retried, not fatal"
    );
    wrong.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reports_invalid_secret_zero_capacity_and_bad_address() {
    let o = orchestrator().await;
    let bin = env!("CARGO_BIN_EXE_comine");
    let run = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(bin)
            .arg("livepeer")
            .args(args)
            .env(
                "COMINE_DATA_DIR",
                std::env::temp_dir().join("comine-livepeer-cli-test"),
            )
            .output()
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let addr = o.addr();
    let (ok, err) = run(vec![
        "--orch-addr".into(),
        addr.clone(),
        "--orch-secret".into(),
        "nope".into(),
        "--capacity".into(),
        "1".into(),
    ])
    .await;
    assert!(
        !ok && err.contains("invalid secret") && err.contains("--orch-secret"),
        "{err}"
    );
    let (ok, err) = run(vec![
        "--orch-addr".into(),
        addr.clone(),
        "--orch-secret".into(),
        "x".into(),
        "--capacity".into(),
        "0".into(),
    ])
    .await;
    assert!(!ok && err.contains("zero capacity"), "{err}");
    let (ok, err) = run(vec![
        "--orch-addr".into(),
        addr,
        "--orch-secret".into(),
        "x".into(),
        "--capacity".into(),
        "1".into(),
        "--eth-address".into(),
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD".into(),
    ])
    .await;
    assert!(!ok && err.contains("checksum"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_file_verifies_the_orchestrator_certificate() {
    let o = orchestrator().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, o.cert_pem()).unwrap();
    let good = Client::start(&o, 1, |cfg| cfg.tls = TlsPolicy::CaFile(ca.clone()));
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    expect_done(
        o.transcode(SegmentJob::new(
            "ca",
            0,
            common::lp_segment(),
            ladder()[..1].to_vec(),
        ))
        .await,
    );
    good.stop().await.unwrap();

    // Another orchestrator's certificate does not chain to that CA.
    let other = orchestrator().await;
    let wrong = Client::start(&other, 1, |cfg| cfg.tls = TlsPolicy::CaFile(ca.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        other.registrations().is_empty(),
        "an unverifiable certificate never registers"
    );
    wrong.stop().await.unwrap();
}

/// `--orch-addr a,b`: when the first orchestrator refuses the connection, the client moves
/// to the next at once (no backoff while addresses remain), and says which one it uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_next_orchestrator_in_the_list() {
    let o = orchestrator().await;
    // A port nothing listens on: bound, then released.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let started = std::time::Instant::now();
    let mut link = None;
    let client = Client::start(&o, 2, |cfg| {
        cfg.fallback_addrs = vec![cfg.orch_addr.clone()];
        cfg.orch_addr = dead.clone();
        // A long backoff: failing over must not wait for it.
        cfg.backoff_initial = Duration::from_secs(30);
        link = Some(cfg.link.clone());
    });
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "failover waited for the backoff"
    );
    let snap = link.unwrap().get();
    assert_eq!(snap.orch_addr, o.addr(), "{snap:?}");
    assert!(snap.registrations >= 2, "{snap:?}");
    assert!(
        snap.last_fault.as_deref().unwrap_or("").contains(&dead),
        "{snap:?}"
    );
    assert_eq!(o.registrations()[0].capacity, 2);
    client.stop().await.unwrap();
}

/// A session's warm decoder is the session's own: `ForceSessionReinit`, a teardown or a gap
/// in the sequence starts the next segment cold; another session never shares it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_its_decoder_warm_until_reinit_teardown_or_a_gap() {
    let o = orchestrator().await;
    let client = Client::start(&o, 2, |_| {});
    o.wait_for_transcoders(1, WAIT).await.unwrap();
    let job = |session: &str, seq: i64| {
        SegmentJob::new(session, seq, common::lp_segment(), ladder()[..1].to_vec())
    };
    let mut reinit = job("w", 2);
    reinit.force_session_reinit = true;
    let jobs = vec![
        job("w", 0),
        job("w", 1),
        job("other", 0),
        reinit,
        job("w", 3),
        job("w", 5),
    ];
    for j in jobs {
        expect_done(o.transcode(j).await);
    }
    assert!(o.end_session("w").await, "teardown sent");
    eventually("the teardown", || {
        !client.sink.ended.lock().unwrap().is_empty()
    })
    .await;
    expect_done(o.transcode(job("w", 6)).await);
    eventually("7 segments in the sink", || {
        client.sink.transcoded.lock().unwrap().len() == 7
    })
    .await;
    let records = client.sink.transcoded.lock().unwrap().clone();
    let seen: Vec<(&str, i64, bool)> = records
        .iter()
        .map(|r| (r.session_id.as_str(), r.seq, r.decoder_reused))
        .collect();
    assert_eq!(
        seen,
        [
            ("w", 0, false),
            ("w", 1, true),
            ("other", 0, false),
            ("w", 2, false),
            ("w", 3, true),
            ("w", 5, false),
            ("w", 6, false),
        ]
    );
    client.stop().await.unwrap();
}
