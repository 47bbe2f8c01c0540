//! `cargo bench --bench daemon`: what the daemon costs on top of the engine.
//!
//! Same segment, same run, interleaved: the engine called directly
//! (`transcode::transcode`, Input::File like the daemon's spool) versus a sync
//! `POST /v1/transcode` to the real `comine run` binary at nominal load (one request in
//! flight, capacity 1). Reports latency p50/p99 for both, the daemon's overhead per
//! segment (target < 5%), and idle RSS from /proc/<pid>/status (target < 64 MiB).
//!
//! Env: `BENCH_N` (segments, default 30), `BENCH_SIZE` (default 640x360),
//! `BENCH_PRESET` (libx264 preset, default veryfast).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use comine::transcode::{self, EncoderChoice, Input, Options, Profile, Request};

const LADDER: &str = "P144p30fps16x9,P240p30fps16x9";

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[path = "../tests/it/common/media.rs"]
mod media;

fn make_segment(size: &str) -> std::path::PathBuf {
    media::generate(
        &format!("daemon-bench-{size}.ts"),
        &format!("testsrc2=size={size}:rate=30"),
        2.0,
        false,
        &["-c:v", "libx264", "-preset", "veryfast", "-g", "30"],
    )
}

fn main() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let size = std::env::var("BENCH_SIZE").unwrap_or_else(|_| "640x360".into());
    let preset = std::env::var("BENCH_PRESET").unwrap_or_else(|_| "veryfast".into());
    let tmp = tempfile::tempdir().unwrap();
    let seg_path = make_segment(&size);
    let seg = std::fs::read(&seg_path).unwrap();

    // The daemon, with the same encoder settings.
    let data = tmp.path().join("data");
    let cfg = tmp.path().join("comine.toml");
    std::fs::write(
        &cfg,
        format!("[api]\nconcurrency = 1\n[transcode]\nencoder = \"x264\"\ndecoder = \"software\"\nx264_preset = \"{preset}\"\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_comine"))
        .args(["-q", "run", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(data.join("api.addr")) {
            break a.trim().to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = rss_kib(child.id());
    let token = std::fs::read_to_string(data.join("api-token"))
        .unwrap()
        .trim()
        .to_string();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::new();
    let profiles = Profile::parse_list(LADDER).unwrap();
    let mut direct = Vec::new();
    let mut daemon = Vec::new();
    let mut pixels = 0;
    // One warm-up of each, then interleaved measurements.
    for i in 0..=n {
        let out = tmp.path().join(format!("direct-{i}"));
        let t = Instant::now();
        let report = transcode::transcode(&Request {
            input: Input::File(seg_path.clone()),
            profiles: profiles.clone(),
            out_dir: out.clone(),
            options: Options {
                encoder: EncoderChoice::X264,
                decoder: transcode::DecoderChoice::Software,
                x264_preset: preset.clone(),
                ..Options::default()
            },
        })
        .expect("direct transcode");
        let direct_ms = t.elapsed().as_secs_f64() * 1000.0;
        let _ = std::fs::remove_dir_all(&out);

        let t = Instant::now();
        let resp = rt
            .block_on(
                http.post(format!(
                    "http://{addr}/v1/transcode?profiles={LADDER}&manifest_id=bench&seq={i}"
                ))
                .bearer_auth(&token)
                .body(seg.clone())
                .send(),
            )
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = rt.block_on(resp.json()).unwrap();
        let daemon_ms = t.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(
            v["encoded_pixels"].as_u64(),
            Some(report.encoded_pixels),
            "same pixels both ways"
        );
        pixels = report.encoded_pixels;
        if i > 0 {
            direct.push(direct_ms);
            daemon.push(daemon_ms);
        }
    }
    let busy_rss = rss_kib(child.id());
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let _ = child.wait();

    let mut deltas: Vec<f64> = daemon.iter().zip(&direct).map(|(a, b)| a - b).collect();
    direct.sort_by(f64::total_cmp);
    daemon.sort_by(f64::total_cmp);
    deltas.sort_by(f64::total_cmp);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!("daemon benchmark: {n} segments of {size} 2 s H.264 → {LADDER} (libx264 {preset}), {pixels} encoded pixels each");
    println!(
        "  engine direct      p50 {:8.1} ms  p99 {:8.1} ms  mean {:8.1} ms",
        pct(&direct, 0.5),
        pct(&direct, 0.99),
        mean(&direct)
    );
    println!(
        "  daemon (HTTP sync) p50 {:8.1} ms  p99 {:8.1} ms  mean {:8.1} ms",
        pct(&daemon, 0.5),
        pct(&daemon, 0.99),
        mean(&daemon)
    );
    println!(
        "  overhead per segment: median {:.1} ms = {:.1}% of the engine's median (target < 5%); mean {:.1}%",
        pct(&deltas, 0.5),
        100.0 * pct(&deltas, 0.5) / pct(&direct, 0.5),
        100.0 * (mean(&daemon) - mean(&direct)) / mean(&direct)
    );
    println!(
        "  idle RSS {:.1} MiB (target < 64 MiB); after the run {:.1} MiB",
        idle_rss as f64 / 1024.0,
        busy_rss as f64 / 1024.0
    );
}
