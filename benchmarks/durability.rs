//! The long kill run of issue 17: the real `comine run` (release build) under a steady stream
//! of async submissions with resubmissions, SIGKILLed at random moments `KILLS` times, then
//! started once more to drain the whole backlog. Checks, as the stress test does: every
//! acknowledged job `done` exactly once, one job per idempotency key, pixel counters equal to
//! the sum over jobs, `/healthz` answering within 1 s throughout. Reports the figures and the
//! drain time.
//!
//! `cargo bench --bench durability -- [KILLS]` (default 1000; `COMINE_BENCH_KILLS` also works).
//! Env: `BENCH_UPTIME_MS=lo,hi` (random uptime before each kill, default 200,1500),
//! `BENCH_CLIENTS` (default 8), `BENCH_KEYS` (most keys submitted, default 100000).

use std::time::{Duration, Instant};

#[path = "../tests/it/common/killer.rs"]
mod killer;
#[path = "../tests/it/common/media.rs"]
mod media;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let kills = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<u32>().ok())
        .unwrap_or(env_num("COMINE_BENCH_KILLS", 1000) as u32);
    let (lo, hi) = std::env::var("BENCH_UPTIME_MS")
        .ok()
        .and_then(|v| {
            let (a, b) = v.split_once(',')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .unwrap_or((200, 1500));
    let root = tempfile::tempdir().expect("temp dir");
    let cfg = root.path().join("comine.toml");
    std::fs::write(
        &cfg,
        "[api]\nqueue_depth = 256\n[transcode]\nencoder = \"x264\"\ndecoder = \"software\"\nx264_preset = \"ultrafast\"\n",
    )
    .expect("config");
    let segments: Vec<Vec<u8>> = ["testsrc", "testsrc2", "smptebars"]
        .iter()
        .map(|p| {
            let path = media::generate(
                &format!("durability-{p}.ts"),
                &format!("{p}=size=320x180:rate=30"),
                1.0,
                false,
                &[
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                    "-g",
                    "30",
                    "-pix_fmt",
                    "yuv420p",
                ],
            );
            std::fs::read(path).expect("segment")
        })
        .collect();
    let plan = killer::Plan {
        bin: env!("CARGO_BIN_EXE_comine").into(),
        root: root.path().to_path_buf(),
        config: cfg,
        segments,
        kills,
        uptime_ms: (lo, hi),
        clients: env_num("BENCH_CLIENTS", 8) as usize,
        max_keys: env_num("BENCH_KEYS", 100_000),
        drain_limit: Duration::from_secs(4 * 3600),
        progress_every: 50,
    };
    println!(
        "durability run: {kills} SIGKILLs, uptime {lo}..{hi} ms before each, {} clients",
        plan.clients
    );
    let t = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let out = rt.block_on(killer::run(&plan));
    let h = &out.health;
    println!("  kills                 {}", out.kills);
    println!(
        "  keys submitted        {} ({} submissions, {} resubmissions)",
        out.keys, out.submissions, out.resubmissions
    );
    println!("  acknowledged jobs     {}", out.acked);
    println!(
        "  done in the ledger    {} (exactly once each: {})",
        out.jobs_done,
        out.problems.is_empty()
    );
    println!("  encoded pixels        {}", out.encoded_pixels);
    println!("  load phase            {:.0} s", out.load_secs);
    println!("  backlog at the drain  {} jobs", out.backlog_at_drain);
    println!("  drain time            {:.1} s", out.drain_secs);
    println!(
        "  /healthz              {} answers, {} ok, {} unavailable, slowest {} ms, {} over 1 s",
        h.samples, h.ok, h.unavailable, h.slowest_ms, h.over_1s
    );
    println!(
        "  peak running jobs     {} (from /v1/status)",
        h.peak_running
    );
    println!("  wall time             {:.0} s", t.elapsed().as_secs_f64());
    if !out.problems.is_empty() {
        for p in &out.problems {
            println!("  PROBLEM: {p}");
        }
        std::process::exit(1);
    }
    if h.over_1s > 0 {
        println!(
            "  PROBLEM: /healthz took longer than 1 s {} times",
            h.over_1s
        );
        std::process::exit(1);
    }
}
