//! Ladder benchmark: comine against the `ffmpeg` CLI doing the same ladder with the
//! same encoder settings, alternated in one run so both see the same machine state.
//!
//! `cargo bench --bench ladder` (env: LADDER_ROUNDS=5, LADDER_SECONDS=4,
//! LADDER_SIZE=1920x1080, LADDER_PRESET=veryfast, LADDER_PROFILES=…).
//! Prints each round, the median wall-time ratio (comine / CLI; target ≤ 1.0, stretch
//! 0.9), comine's realtime factor and both tools' peak RSS.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use comine::transcode::{fit_dimensions, Container, Profile};

const DEFAULT_PROFILES: &str = "P720p30fps16x9,P576p30fps16x9,P360p30fps16x9,P240p30fps16x9";

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

struct Run {
    wall_s: f64,
    peak_rss_kib: i64,
}

/// Runs a command to completion and reads its peak RSS from wait4's rusage.
// The child is reaped by wait4 below, which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn timed(cmd: &mut Command) -> Run {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain syscall on our own child; rusage is a valid out-pointer.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall_s = start.elapsed().as_secs_f64();
    assert_eq!(r, pid, "wait4");
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let mut err = String::new();
        if let Some(mut e) = child.stderr {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        panic!("{cmd:?} failed: {err}");
    }
    Run {
        wall_s,
        peak_rss_kib: usage.ru_maxrss,
    }
}

#[path = "../tests/it/common/media.rs"]
mod media;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn ffmpeg_cli_args(
    input: &Path,
    out: &Path,
    profiles: &[Profile],
    src: (u32, u32),
    preset: &str,
) -> Vec<String> {
    let mut graph = format!("[0:v]split={}", profiles.len());
    for i in 0..profiles.len() {
        graph.push_str(&format!("[s{i}]"));
    }
    for (i, p) in profiles.iter().enumerate() {
        let (w, h) = fit_dimensions(src.0, src.1, (1, 1), p.width, p.height);
        graph.push_str(&format!(
            ";[s{i}]fps=fps={}/{},scale={w}:{h},format=yuv420p,setsar=1[o{i}]",
            p.fps_num, p.fps_den
        ));
    }
    let mut args: Vec<String> = ["-hide_banner", "-loglevel", "error", "-y", "-i"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(input.display().to_string());
    args.push("-filter_complex".into());
    args.push(graph);
    for (i, p) in profiles.iter().enumerate() {
        let keyint = (p.fps_num as f64 / p.fps_den as f64).round() as u32;
        for a in [
            "-map".to_string(),
            format!("[o{i}]"),
            "-map".into(),
            "0:a?".into(),
            "-c:v".into(),
            "libx264".into(),
            "-preset".into(),
            preset.into(),
            "-b:v".into(),
            p.bitrate.to_string(),
            "-g".into(),
            keyint.to_string(),
            "-forced-idr".into(),
            "1".into(),
            "-c:a".into(),
            "copy".into(),
            "-copyts".into(),
            "-f".into(),
            if p.format == Container::Mp4 {
                "mp4"
            } else {
                "mpegts"
            }
            .into(),
            out.join(format!("cli-{}", p.file_name()))
                .display()
                .to_string(),
        ] {
            args.push(a);
        }
    }
    args
}

fn main() {
    // `cargo test --benches` runs benches in test mode with `--bench` absent; keep it quick.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = env_or("LADDER_ROUNDS", "5").parse().expect("LADDER_ROUNDS");
    let seconds: f64 = env_or("LADDER_SECONDS", "4")
        .parse()
        .expect("LADDER_SECONDS");
    let size = env_or("LADDER_SIZE", "1920x1080");
    let preset = env_or("LADDER_PRESET", "veryfast");
    let profiles =
        Profile::parse_list(&env_or("LADDER_PROFILES", DEFAULT_PROFILES)).expect("profiles");
    let (w, h) = size
        .split_once('x')
        .map(|(a, b)| (a.parse::<u32>().unwrap(), b.parse::<u32>().unwrap()))
        .expect("LADDER_SIZE=WxH");

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ladder-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let input = media::generate(
        &format!("ladder-input-{size}-{seconds}s.ts"),
        &format!("testsrc2=size={size}:rate=30,noise=alls=16:allf=t+u"),
        seconds,
        true,
        &[
            "-c:v", "libx264", "-preset", "veryfast", "-b:v", "8M", "-g", "60", "-c:a", "aac",
        ],
    );
    let comine_bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/comine");
    assert!(
        comine_bin.exists(),
        "build the release binary first: cargo build --release"
    );
    let names: Vec<_> = profiles.iter().map(|p| p.name.clone()).collect();
    println!(
        "ladder: {size} {seconds}s input, {} rungs ({}), libx264 preset {preset}, {rounds} rounds, {} cores",
        profiles.len(),
        names.join(","),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let out = dir.join("out");
    let mut ratios = Vec::new();
    let mut comine_walls = Vec::new();
    let (mut comine_rss, mut cli_rss) = (0, 0);
    for round in 0..rounds {
        // Alternate who goes first so neither always gets the warm cache.
        let mut results = [None, None];
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for who in order {
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out).unwrap();
            let run = if who == 0 {
                timed(
                    Command::new(&comine_bin)
                        .args([
                            "-q",
                            "transcode",
                            "--encoder",
                            "x264",
                            "--x264-preset",
                            &preset,
                            "--profiles",
                        ])
                        .arg(names.join(","))
                        .arg("--out")
                        .arg(&out)
                        .arg(&input),
                )
            } else {
                timed(Command::new("ffmpeg").args(ffmpeg_cli_args(
                    &input,
                    &out,
                    &profiles,
                    (w, h),
                    &preset,
                )))
            };
            results[who] = Some(run);
        }
        let (c, f) = (results[0].take().unwrap(), results[1].take().unwrap());
        let ratio = c.wall_s / f.wall_s;
        println!(
            "round {round}: comine {:.2}s ({} MiB)  ffmpeg CLI {:.2}s ({} MiB)  ratio {:.3}",
            c.wall_s,
            c.peak_rss_kib / 1024,
            f.wall_s,
            f.peak_rss_kib / 1024,
            ratio
        );
        ratios.push(ratio);
        comine_walls.push(c.wall_s);
        comine_rss = comine_rss.max(c.peak_rss_kib);
        cli_rss = cli_rss.max(f.peak_rss_kib);
    }
    let ratio = median(&mut ratios);
    let wall = median(&mut comine_walls);
    println!("median wall-time ratio comine/ffmpeg-CLI: {ratio:.3} (target <= 1.0, stretch 0.9)");
    println!(
        "comine realtime factor: {:.2}x (media seconds per wall second)",
        seconds / wall
    );
    println!(
        "peak RSS: comine {:.0} MiB (target < 300 MB), ffmpeg CLI {:.0} MiB",
        comine_rss as f64 / 1024.0,
        cli_rss as f64 / 1024.0
    );
}
