//! `cargo bench --bench livepeer`: the remote transcoder against the in-repo test
//! orchestrator on this machine.
//!
//! 1. Per-segment overhead beyond transcoding: the orchestrator's end-to-end latency
//!    (notify → results received) against the transcode time the client measured, and
//!    against the same transcode run directly on the engine in the same run (the peer).
//! 2. Concurrent sessions held at real time: k sessions each submit 2 s segments back to
//!    back; the largest k whose every segment finished within 0.8 × its duration
//!    (Livepeer's sizing rule) is reported.
//!
//! 3. The per-segment fixed cost a warm session saves: consecutive segments of one stream
//!    through the engine cold (every codec opened per segment) and through one
//!    `WarmSession` (the decoder, and NVENC encoders, kept open), in the same run.
//!
//! Env: `COMINE_BENCH_ENCODER` = auto (default) | nvenc | x264; `COMINE_BENCH_SEGMENTS`
//! (segments for parts 1 and 3, default 8); `COMINE_BENCH_MAX_SESSIONS` (default 16);
//! `COMINE_BENCH_WARM=0` runs parts 1 and 2 with `warm_sessions = false` (the before).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use comine::daemon::livepeer::EnginePipeline;
use comine::livepeer::proto::{H264Profile, VideoProfile};
use comine::livepeer::test_orchestrator::{
    SegmentJob, TaskOutcome, TestOrchestrator, TestOrchestratorConfig,
};
use comine::livepeer::{run_transcoder, MemorySink, TranscoderConfig};
use comine::transcode::{self, EncoderChoice, Input, Options, Profile, Request, WarmSession};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const SEGMENT_SECONDS: f64 = 2.0;
const REALTIME_RATIO: f64 = 0.8;

#[path = "../tests/it/common/media.rs"]
mod media;

fn segment() -> Bytes {
    let path = media::generate(
        "livepeer-bench-360p.ts",
        &media::pattern(640, 360, "30"),
        SEGMENT_SECONDS,
        false,
        &["-c:v", "libx264", "-preset", "veryfast", "-g", "60"],
    );
    Bytes::from(std::fs::read(path).expect("read the generated segment"))
}

/// Livepeer's benchmark ladder below the source: 240p and 360p, constrained high, 1 s GOP.
fn ladder() -> Vec<VideoProfile> {
    [
        ("P240p30fps16x9", 426, 240, 250_000),
        ("P360p30fps16x9", 640, 360, 800_000),
    ]
    .into_iter()
    .map(|(name, w, h, bps)| VideoProfile {
        name: name.into(),
        width: w,
        height: h,
        bitrate: bps,
        fps: 0,
        fps_den: 1,
        gop: 1000,
        profile: H264Profile::H264ConstrainedHigh as i32,
        ..Default::default()
    })
    .collect()
}

fn encoder() -> EncoderChoice {
    match std::env::var("COMINE_BENCH_ENCODER").as_deref() {
        Ok("nvenc") => EncoderChoice::Nvenc,
        Ok("x264") => EncoderChoice::X264,
        _ => EncoderChoice::Auto,
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// The peer: the same segment and ladder straight through the engine, no network.
fn direct_ms(seg: &Bytes, runs: usize) -> (f64, String) {
    let profiles: Vec<Profile> =
        comine::daemon::livepeer::profiles::to_engine(&ladder()).expect("ladder maps");
    let mut times = Vec::new();
    let mut encoder_name = String::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = Instant::now();
        let report = transcode::transcode(&Request {
            input: Input::Memory(seg.clone()),
            profiles: profiles.clone(),
            out_dir: dir.path().to_path_buf(),
            options: Options {
                encoder: encoder(),
                ..Options::default()
            },
        })
        .expect("direct transcode");
        times.push(t.elapsed().as_secs_f64() * 1e3);
        encoder_name = report
            .renditions
            .first()
            .map(|r| r.encoder.clone())
            .unwrap_or_default();
    }
    (median(times), encoder_name)
}

/// Part 3: `segments` consecutive segments of one stream, cold then warm, alternating per
/// segment so both see the same machine load. Medians exclude the warm session's first
/// segment (it opens everything, like a cold one).
struct WarmVsCold {
    cold_ms: f64,
    warm_ms: f64,
    cold_setup_ms: f64,
    warm_setup_ms: f64,
    decoder_opens: u64,
    encoder_opens: u64,
    decoder: String,
}

fn warm_vs_cold(segments: usize) -> WarmVsCold {
    let segs = media::stream_segments(
        "livepeer-bench-stream",
        &media::pattern(640, 360, "30"),
        SEGMENT_SECONDS as u32,
        segments.max(2),
        false,
    );
    let profiles: Vec<Profile> =
        comine::daemon::livepeer::profiles::to_engine(&ladder()).expect("ladder maps");
    let request = |seg: &std::path::Path, dir: &std::path::Path| Request {
        input: Input::File(seg.to_path_buf()),
        profiles: profiles.clone(),
        out_dir: dir.to_path_buf(),
        options: Options {
            encoder: encoder(),
            ..Options::default()
        },
    };
    let mut session = WarmSession::new();
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    let (mut cold_setup, mut warm_setup) = (Vec::new(), Vec::new());
    let mut decoder = String::new();
    for (i, seg) in segs.iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = Instant::now();
        let r = transcode::transcode(&request(seg, dir.path())).expect("cold segment");
        let cold_ms = t.elapsed().as_secs_f64() * 1e3;
        decoder = r.decoder;
        session.follow(i as i64);
        let t = Instant::now();
        let w = transcode::transcode_warm(&request(seg, dir.path()), &mut session)
            .expect("warm segment");
        if i > 0 {
            cold.push(cold_ms);
            cold_setup.push(r.setup_us as f64 / 1e3);
            warm.push(t.elapsed().as_secs_f64() * 1e3);
            warm_setup.push(w.setup_us as f64 / 1e3);
        }
    }
    WarmVsCold {
        cold_ms: median(cold),
        warm_ms: median(warm),
        cold_setup_ms: median(cold_setup),
        warm_setup_ms: median(warm_setup),
        decoder_opens: session.decoder_opens(),
        encoder_opens: session.encoder_opens(),
        decoder,
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let seg = segment();
    let segments = env_usize("COMINE_BENCH_SEGMENTS", 8).max(1);
    let max_sessions = env_usize("COMINE_BENCH_MAX_SESSIONS", 16).max(1);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);

    let (direct, encoder_name) = tokio::task::spawn_blocking({
        let seg = seg.clone();
        move || direct_ms(&seg, segments.min(5))
    })
    .await
    .expect("direct runs");

    let o = TestOrchestrator::start(TestOrchestratorConfig::default())
        .await
        .expect("test orchestrator");
    let work = tempfile::tempdir().expect("tempdir");
    let mut cfg = TranscoderConfig::new(o.addr(), o.secret());
    cfg.work_dir = work.path().to_path_buf();
    cfg.capacity_dwell = Duration::from_millis(100);
    let (cap_tx, cap_rx) = watch::channel(1u32);
    let sink = Arc::new(MemorySink::default());
    let shutdown = CancellationToken::new();
    let warm = std::env::var("COMINE_BENCH_WARM").as_deref() != Ok("0");
    let pipeline = Arc::new(EnginePipeline::new(encoder(), "veryfast", 0).warm(warm));
    let client = tokio::spawn(run_transcoder(
        cfg,
        cap_rx,
        pipeline,
        sink.clone(),
        shutdown.clone(),
    ));
    o.wait_for_transcoders(1, Duration::from_secs(30))
        .await
        .expect("registration");

    println!(
        "livepeer bench: {SEGMENT_SECONDS} s 640x360@30 segment ({} KiB), ladder P240p+P360p, encoder {encoder_name}, {cores} cores, warm sessions {}",
        seg.len() / 1024,
        if warm { "on" } else { "off (COMINE_BENCH_WARM=0)" }
    );

    // 1. Sequential segments: overhead beyond transcoding.
    let mut e2e = Vec::new();
    for seq in 0..segments as i64 {
        let t = Instant::now();
        match o
            .transcode(SegmentJob::new("overhead", seq, seg.clone(), ladder()))
            .await
        {
            TaskOutcome::Done { .. } => e2e.push(t.elapsed().as_secs_f64() * 1e3),
            other => panic!("segment {seq} failed: {other:?}"),
        }
    }
    let records = sink.transcoded.lock().expect("sink").clone();
    let tc = median(records.iter().map(|r| r.transcode_ms as f64).collect());
    let dl = median(records.iter().map(|r| r.download_ms as f64).collect());
    let ul = median(records.iter().map(|r| r.upload_ms as f64).collect());
    let total = median(records.iter().map(|r| r.total_ms as f64).collect());
    let end_to_end = median(e2e);
    let overhead = total - tc;
    println!(
        "per-segment (median of {segments}): client total {total:.0} ms = transcode {tc:.0} ms + overhead {overhead:.0} ms (download {dl:.0} ms, upload {ul:.0} ms, rest: session, reading renditions, multipart)"
    );
    println!(
        "  overhead / transcode = {:.3}; orchestrator's end-to-end {end_to_end:.0} ms (adds the test O's own parsing); end-to-end / direct engine (peer, same run: {direct:.0} ms) = {:.3}",
        overhead / tc,
        end_to_end / direct
    );

    // 2. Concurrent sessions at real time: per session, Livepeer's duration ratio is the
    // sum of its segments' latencies over the media they hold; the worst session counts.
    let o = Arc::new(o);
    let rounds = 3;
    let mut held = 0usize;
    for k in 1..=max_sessions {
        cap_tx.send(k as u32).expect("capacity");
        o.wait_for_capacity(k as i64, Duration::from_secs(30))
            .await
            .expect("re-registration");
        let mut jobs = tokio::task::JoinSet::new();
        for s in 0..k {
            let (o, seg) = (o.clone(), seg.clone());
            jobs.spawn(async move {
                let mut busy = 0.0;
                for seq in 0..rounds {
                    let t = Instant::now();
                    let job = SegmentJob::new(&format!("rt-{k}-{s}"), seq, seg.clone(), ladder());
                    match o.transcode(job).await {
                        TaskOutcome::Done { .. } => busy += t.elapsed().as_secs_f64(),
                        // A failed or late segment is as bad as an infinitely slow one.
                        _ => busy += f64::INFINITY,
                    }
                }
                busy / (rounds as f64 * SEGMENT_SECONDS)
            });
        }
        let mut worst = 0.0f64;
        let mut ratios = Vec::new();
        while let Some(r) = jobs.join_next().await {
            let r = r.unwrap_or(f64::INFINITY);
            worst = worst.max(r);
            ratios.push(r);
        }
        println!(
            "  {k} concurrent session(s): duration ratio worst {worst:.3}, median {:.3}",
            median(ratios)
        );
        if worst > REALTIME_RATIO {
            break;
        }
        held = k;
    }
    println!(
        "concurrent sessions held at real time (duration ratio <= {REALTIME_RATIO}): {held} on this machine ({cores} cores, encoder {encoder_name})"
    );

    shutdown.cancel();
    let _ = client.await;

    // 3. The fixed cost a warm session saves, on the engine alone.
    let w = tokio::task::spawn_blocking(move || warm_vs_cold(segments))
        .await
        .expect("warm vs cold");
    println!(
        "warm session (medians of {} consecutive segments after the first, decoder {}): fixed cost (probe + open decoder, encoders, muxers) cold {:.2} ms, warm {:.2} ms (saved {:.2} ms); whole segment cold {:.1} ms, warm {:.1} ms; the session opened {} decoder(s) and {} encoder(s) for {segments} segments",
        segments.max(2) - 1,
        w.decoder,
        w.cold_setup_ms,
        w.warm_setup_ms,
        w.cold_setup_ms - w.warm_setup_ms,
        w.cold_ms,
        w.warm_ms,
        w.decoder_opens,
        w.encoder_opens,
    );
}
