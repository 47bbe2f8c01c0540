//! The robustness harness, bounded: mutated real segments (seeded, so every case replays)
//! through the engine and through the daemon, and the field's poison pattern (a 13-hour
//! PTS jump in a 2 s 720p segment). The long run is `cargo bench --bench mutate`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use comine::transcode::{
    transcode, EncoderChoice, Input, Options, Profile, Request, TranscodeError, WallBound,
};

use crate::common::{self, mutate};
use crate::common::{generate, pattern, write_config, Daemon};

/// The fixed seed of the suite's run.
const SEED: u64 = 0xC0FF_EE11;
/// A case not answered in this long is a hang (the engine's own bounds are far tighter
/// for a 1 s 320x180 segment; this is generous for a busy 2-core CI machine).
const HANG: Duration = Duration::from_secs(90);

/// A 2 s 1280x720 30 fps H.264 MPEG-TS with AAC, the shape of the field's segments.
fn segment_720p() -> Vec<u8> {
    let path = generate(
        "seg720-2s.ts",
        &pattern(1280, 720, "30"),
        2.0,
        true,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "60",
            "-c:a",
            "aac",
        ],
    );
    std::fs::read(path).expect("read the 720p segment")
}

/// The poison segment, written once beside the other generated media.
fn poison_720p() -> std::path::PathBuf {
    // Tests run on parallel threads of one process and share the `.part` name: one at a time.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let path = common::media::media_dir().join("poison-13h-720p.ts");
    if !path.exists() {
        // Unique per thread too: two tests of this binary may write it at once.
        let tmp = path.with_extension(format!(
            "{}-{:?}.part",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&tmp, mutate::poison_13h(&segment_720p())).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// PTS of the video packets, in seconds, as ffprobe reads them.
fn video_pts(path: &std::path::Path) -> Vec<f64> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect()
}

#[test]
fn pes_timestamps_round_trip_and_the_poison_jumps_13_hours() {
    let mut b = [0x21u8, 0, 1, 0, 1];
    for v in [
        0u64,
        1,
        90_000,
        mutate::THIRTEEN_HOURS as u64,
        mutate::TS_WRAP as u64 - 1,
    ] {
        mutate::write_ts(&mut b, v);
        assert_eq!(mutate::read_ts(&b), v);
        assert_eq!(b[0] & 0xF0, 0x20, "prefix kept");
        assert_eq!(b[4] & 1, 1, "marker bit kept");
    }
    // The poison really is what the field saw: half the frames ~13 h after the rest.
    let pts = video_pts(&poison_720p());
    assert_eq!(pts.len(), 60, "{pts:?}");
    let (lo, hi) = pts
        .iter()
        .fold((f64::MAX, 0.0f64), |(l, h), &p| (l.min(p), h.max(p)));
    assert!(hi - lo > 46_000.0 && hi - lo < 47_000.0, "span {lo}..{hi}");
    // And a case is the same bytes every time.
    let seg = segment_720p();
    assert_eq!(
        mutate::case(&seg, 7, 3).bytes,
        mutate::case(&seg, 7, 3).bytes
    );
    assert_ne!(
        mutate::case(&seg, 7, 3).bytes,
        mutate::case(&seg, 7, 4).bytes
    );
}

/// `comine transcode` on the poison answers, with a clear reason, and never fills the gap.
#[test]
fn poison_segment_is_answered_within_its_bound() {
    let src = poison_720p();
    let out = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_comine"))
        .args([
            "transcode",
            "--json",
            "--encoder",
            "x264",
            "--x264-preset",
            "ultrafast",
        ])
        .args([
            "--profiles",
            "P720p30fps16x9,P360p30fps16x9,P240p30fps16x9",
            "--out",
        ])
        .arg(out.path())
        .arg(&src)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_exit(&mut child, HANG).unwrap_or_else(|| {
        panic!("comine transcode still running on the poison segment after {HANG:?}")
    });
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("timestamp") && stderr.contains("jump"),
        "the reason names the timestamp jump: {stderr}"
    );
    if status.success() {
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        for r in report["renditions"].as_array().unwrap() {
            let frames = r["frames"].as_u64().unwrap();
            assert!(frames <= 2 * 60 + 30, "gap not filled: {r}");
            assert_eq!(
                common::probe(std::path::Path::new(r["path"].as_str().unwrap())).frames,
                frames
            );
        }
    }
}

/// The daemon answers the poison (both classes) and keeps serving good segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_answers_the_poison_and_keeps_serving() {
    let root = tempfile::tempdir().unwrap();
    let cfg = write_config(root.path(), "");
    let d = Daemon::start(root.path(), &cfg);
    let poison = std::fs::read(poison_720p()).unwrap();
    for class in ["batch", "live"] {
        let r = d
            .http
            .post(d.url(&format!(
                "/v1/transcode?profiles=P360p30fps16x9&class={class}&duration_ms=2000"
            )))
            .bearer_auth(&d.token)
            .timeout(HANG)
            .body(poison.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{class}: the poison was not answered: {e}\n{}", d.log()));
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        match status {
            200 => {
                for r in body["renditions"].as_array().unwrap() {
                    assert!(r["frames"].as_u64().unwrap() <= 150, "gap not filled: {r}");
                }
            }
            422 => assert!(
                body["error"].as_str().unwrap().contains("timestamp"),
                "the reason names the timestamps: {body}"
            ),
            // A live segment's deadline (4 × 2 s) is a bound too, on a busy machine.
            504 if class == "live" => {}
            other => panic!("{class}: HTTP {other}: {body}"),
        }
    }
    let good = common::segment(root.path(), "good.ts", "testsrc");
    let r = d.submit("profiles=P144p30fps16x9", good).await;
    assert_eq!(r.status(), 200, "{}", d.log());
}

/// Mutated segments through warm sessions: besides the engine run's guarantees, a clean
/// segment after each damaged one through the same session comes out exactly as it does
/// cold, and the warm decoder is reused where the damaged segment succeeded.
#[test]
fn bounded_mutation_run_through_warm_sessions() {
    let before = mutate::panics();
    let sources = mutate::sources();
    let tally = mutate::run_engine_warm(SEED, 0..48, &sources, HANG, |_, _| {});
    println!(
        "warm: {} ({} clean segments reused the warm decoder)",
        tally.summary(),
        tally.warm_reused
    );
    assert_eq!(mutate::panics(), before, "no panic anywhere: {tally:?}");
    assert!(tally.hangs.is_empty(), "{:?}", tally.hangs);
    assert!(tally.overfilled.is_empty(), "{:?}", tally.overfilled);
    assert!(tally.leaked.is_empty(), "{:?}", tally.leaked);
    assert!(
        tally.warm_mismatches.is_empty(),
        "{:?}",
        tally.warm_mismatches
    );
    assert!(
        tally.warm_reused > 0,
        "the warm decoder was never reused: {tally:?}"
    );
    assert!(
        tally.done > 0 && tally.refused + tally.failed > 0,
        "the mutations bite: {tally:?}"
    );
}

#[test]
fn bounded_mutation_run_through_the_engine() {
    let before = mutate::panics();
    let sources = mutate::sources();
    let tally = mutate::run_engine(SEED, 0..48, &sources, HANG, |_, _| {});
    println!("engine: {}", tally.summary());
    assert_eq!(mutate::panics(), before, "no panic anywhere: {tally:?}");
    assert!(tally.hangs.is_empty(), "{:?}", tally.hangs);
    assert!(tally.overfilled.is_empty(), "{:?}", tally.overfilled);
    assert!(tally.leaked.is_empty(), "{:?}", tally.leaked);
    assert!(
        tally.done > 0 && tally.refused + tally.failed > 0,
        "the mutations bite: {tally:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_mutation_run_through_the_daemon() {
    let root = tempfile::tempdir().unwrap();
    let cfg = write_config(root.path(), "");
    let d = Daemon::start(root.path(), &cfg);
    let sources = mutate::sources();
    let tally = mutate::run_daemon(&d, SEED, 1000..1024, &sources, 2, HANG, |_, _| {}).await;
    println!("daemon: {}", tally.summary());
    assert!(tally.hangs.is_empty(), "{:?}\n{}", tally.hangs, d.log());
    assert!(tally.overfilled.is_empty(), "{:?}", tally.overfilled);
    assert!(
        tally.leaked.is_empty(),
        "spool or work files left: {:?}",
        tally.leaked
    );
    assert!(!d.log().contains("panicked"), "{}", d.log());
    assert_eq!(d.get("/healthz").await.status(), 200);
}

/// A 2 s 1280x720 30 fps video-only MPEG-TS whose timestamps jump 9 s ahead after its
/// fourth frame: under the 10 s rebase limit, so the frame-rate filter fills the gap
/// (270 frames per rendition) unless the frame bound refuses it.
fn gap_9s_720p() -> Vec<u8> {
    let path = generate(
        "seg720-2s-video.ts",
        &pattern(1280, 720, "30"),
        2.0,
        false,
        &["-c:v", "libx264", "-preset", "ultrafast", "-g", "60"],
    );
    let mut bytes = std::fs::read(path).unwrap();
    // Video only: PES number n is frame n.
    assert!(mutate::shift_timestamps(&mut bytes, 4, 9 * 90_000, false) > 50);
    bytes
}

fn slow_720p(input: Vec<u8>, out: &std::path::Path, options: Options) -> Request {
    Request {
        input: Input::Memory(input.into()),
        profiles: Profile::parse_list("P720p30fps16x9").unwrap(),
        out_dir: out.to_path_buf(),
        options: Options {
            encoder: EncoderChoice::X264,
            // Slow on purpose: each filled frame costs real encoder time.
            x264_preset: "medium".into(),
            ..options
        },
    }
}

/// Without a declared duration, a gap the rebasing lets through is refused by the frame
/// bound, quickly and as bad input naming the timestamps; nothing is left behind.
#[test]
fn a_gap_beyond_the_frame_bound_is_refused() {
    let out = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = transcode(&slow_720p(gap_9s_720p(), out.path(), Options::default())).unwrap_err();
    assert!(
        matches!(err, TranscodeError::TimestampGap { .. }),
        "{err} after {:?}",
        started.elapsed()
    );
    assert!(err.is_bad_input());
    let msg = err.to_string();
    assert!(msg.contains("timestamps jump"), "{msg}");
    assert!(
        std::fs::read_dir(out.path()).unwrap().next().is_none(),
        "no partial rendition left"
    );
}

/// A cancel that lands while the frame-rate filter is filling a gap (the caller declared
/// 20 s, so the fill is legitimate) stops the job within 1 s: the filter drain and the
/// encoder drain ask the stop rule per frame, not per input frame.
#[test]
fn cancel_stops_a_job_within_one_second_even_mid_fill() {
    let out = tempfile::tempdir().unwrap();
    let options = Options {
        media_duration: Some(Duration::from_secs(20)),
        ..Options::default()
    };
    let cancel = options.cancel.clone();
    let request = slow_720p(gap_9s_720p(), out.path(), options);
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let r = transcode(&request);
        let _ = tx.send(Instant::now());
        r
    });
    // Four frames in, then 270 filled ones at preset medium: far more than 1.5 s of work.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        rx.try_recv().is_err(),
        "the job ended before the cancel; the test needs a longer job"
    );
    let cancelled_at = Instant::now();
    cancel.cancel();
    let ended_at = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the cancelled job never ended");
    let took = ended_at.duration_since(cancelled_at);
    let result = worker.join().unwrap();
    assert!(
        matches!(result, Err(TranscodeError::Cancelled)),
        "{:?}",
        result.map(|r| r.renditions.len())
    );
    assert!(
        took < Duration::from_secs(1),
        "stopped {took:?} after the cancel"
    );
    assert!(std::fs::read_dir(out.path()).unwrap().next().is_none());
}

/// The job's own wall-time bound stops a job the host cannot finish in time, whatever
/// its caller's deadline (here none), and says which bound and how to raise it.
#[test]
fn the_wall_time_bound_stops_a_job_without_a_deadline() {
    let out = tempfile::tempdir().unwrap();
    let options = Options {
        media_duration: Some(Duration::from_secs(20)),
        // 0.5 s plus the 20 s of declared media at 10 Gpx/s (about 1.3 s in all):
        // preset medium at 720p on a CPU needs far longer.
        wall_bound: Some(WallBound {
            floor: Duration::from_millis(500),
            min_pixel_rate: 1e10,
        }),
        ..Options::default()
    };
    let started = Instant::now();
    let err = transcode(&slow_720p(gap_9s_720p(), out.path(), options)).unwrap_err();
    let took = started.elapsed();
    let TranscodeError::WallBound { bound_ms, .. } = err else {
        panic!("{err}");
    };
    assert!(bound_ms < 2_000, "{bound_ms}");
    assert!(
        took < Duration::from_millis(bound_ms + 1_000),
        "stopped {took:?} in, bound {bound_ms} ms"
    );
    assert!(
        err.to_string().contains("wall_min_mpixels_per_sec"),
        "{err}"
    );
    assert!(std::fs::read_dir(out.path()).unwrap().next().is_none());
}

/// SIGTERM with no grace: the running job (a legitimate fill at preset medium) is
/// checkpointed within 1 s and the daemon exits promptly, not when the job would end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_running_job_promptly() {
    let root = tempfile::tempdir().unwrap();
    let cfg = root.path().join("comine.toml");
    std::fs::write(
        &cfg,
        "[api]\nshutdown_grace_secs = 0\n[transcode]\nencoder = \"x264\"\ndecoder = \"software\"\nx264_preset = \"medium\"\n",
    )
    .unwrap();
    let mut d = Daemon::start(root.path(), &cfg);
    let r = d
        .http
        .post(
            d.url("/v1/transcode?profiles=P720p30fps16x9&class=batch&duration_ms=20000&async=true"),
        )
        .bearer_auth(&d.token)
        .body(gap_9s_720p())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", d.log());
    let url = r.json::<serde_json::Value>().await.unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    loop {
        let job = d.get_json(&url).await;
        match job["state"].as_str() {
            Some("transcoding") => break,
            Some("queued") | Some("received") => {}
            other => panic!("job state {other:?} before SIGTERM: {job}\n{}", d.log()),
        }
        assert!(
            started.elapsed() < HANG,
            "the job never started\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Instant::now();
    assert!(d.terminate(), "the daemon exited cleanly\n{}", d.log());
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "SIGTERM took {took:?} to stop the daemon\n{}",
        d.log()
    );
    assert!(
        d.log().contains("checkpointing running jobs"),
        "the job was running and was checkpointed\n{}",
        d.log()
    );
}

/// Found by the 10,000-case run (seed 0xC0FFEE11): a corrupt AAC stream copied into the
/// MPEG-TS muxer made it refuse the next interleaved write ("Invalid data found when
/// processing input"), which was answered as an internal error (HTTP 500). It is the
/// input's data at fault, so it is refused as bad input, with the reason.
#[test]
fn the_muxer_refusing_the_inputs_data_is_bad_input() {
    let sources = mutate::sources();
    for case in [1319, 2301, 7220] {
        let tally = mutate::run_engine(0xC0FF_EE11, case..case + 1, &sources, HANG, |_, _| {});
        assert_eq!(tally.failed, 0, "case {case}: {:?}", tally.failures);
        assert_eq!(tally.refused, 1, "case {case}: {tally:?}");
        assert!(
            tally.reasons.keys().any(|r| r.contains("muxer refused")),
            "case {case}: {:?}",
            tally.reasons
        );
    }
}
