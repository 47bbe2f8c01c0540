//! Ladder benchmark: comine against the `ffmpeg` CLI doing the same ladder with the
//! same encoder settings, alternated in one run so both see the same machine state.
//!
//! Two ladders: `balanced` (a 1080p30 input to 720/576/360/240) and `top-heavy` (a 720p25
//! input to 720/360/240 at 30 fps, the shape of real Livepeer ladders, where the top rung
//! is most of the work). `cargo bench --bench ladder` (env: LADDER_SHAPES=balanced,top-heavy,
//! LADDER_ROUNDS=5, LADDER_SECONDS=4, LADDER_PRESET=veryfast; LADDER_SIZE and
//! LADDER_PROFILES override the balanced ladder; LADDER_BASELINE_BIN=path runs a second
//! comine binary, e.g. the previous build, in the same rounds as "before").
//! Prints each round and, per ladder, the median wall-time ratio (comine / CLI; target
//! ≤ 0.9, stretch 0.75), user+system CPU, cores kept busy (CPU / wall) and peak RSS.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use comine::transcode::{fit_dimensions, Container, Profile};

const DEFAULT_PROFILES: &str = "P720p30fps16x9,P576p30fps16x9,P360p30fps16x9,P240p30fps16x9";
/// A real ladder: the source's own size on top, most of the pixels in the top rung.
const TOP_HEAVY_PROFILES: &str = "P720p30fps16x9,P360p30fps16x9,P240p30fps16x9";

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

struct Run {
    wall_s: f64,
    /// User + system CPU seconds of the process and its threads.
    cpu_s: f64,
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
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Run {
        wall_s,
        cpu_s: secs(usage.ru_utime) + secs(usage.ru_stime),
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

/// One ladder shape: its input and rungs.
struct Shape {
    name: &'static str,
    size: String,
    rate: u32,
    profiles: Vec<Profile>,
}

/// Medians over the rounds of one tool.
#[derive(Default)]
struct Tally {
    walls: Vec<f64>,
    cpus: Vec<f64>,
    rss_kib: i64,
}

impl Tally {
    fn add(&mut self, r: &Run) {
        self.walls.push(r.wall_s);
        self.cpus.push(r.cpu_s);
        self.rss_kib = self.rss_kib.max(r.peak_rss_kib);
    }
    fn line(&mut self, who: &str, cli_wall: f64) -> String {
        let (wall, cpu) = (median(&mut self.walls), median(&mut self.cpus));
        format!(
            "{who:<16} wall {wall:.2}s  ratio {:.3}  CPU {cpu:.2}s  cores busy {:.2}  peak RSS {:.0} MiB",
            wall / cli_wall,
            cpu / wall,
            self.rss_kib as f64 / 1024.0
        )
    }
}

fn comine_cmd(bin: &Path, preset: &str, names: &str, out: &Path, input: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "-q",
        "transcode",
        "--encoder",
        "x264",
        "--x264-preset",
        preset,
    ])
    .args(["--profiles", names, "--out"])
    .arg(out)
    .arg(input);
    c
}

fn run_shape(shape: &Shape, rounds: usize, seconds: f64, preset: &str, bins: &[(String, PathBuf)]) {
    let (w, h) = shape
        .size
        .split_once('x')
        .map(|(a, b)| (a.parse::<u32>().unwrap(), b.parse::<u32>().unwrap()))
        .expect("size WxH");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ladder-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let input = media::generate(
        &format!(
            "ladder-input-{}-{}fps-{seconds}s.ts",
            shape.size, shape.rate
        ),
        &format!(
            "testsrc2=size={}:rate={},noise=alls=16:allf=t+u",
            shape.size, shape.rate
        ),
        seconds,
        true,
        &[
            "-c:v", "libx264", "-preset", "veryfast", "-b:v", "8M", "-g", "60", "-c:a", "aac",
        ],
    );
    let names: Vec<_> = shape.profiles.iter().map(|p| p.name.clone()).collect();
    let names = names.join(",");
    println!(
        "ladder {}: {} at {} fps, {seconds}s input, {} rungs ({names}), libx264 preset {preset}, {rounds} rounds, {} cores",
        shape.name,
        shape.size,
        shape.rate,
        shape.profiles.len(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let out = dir.join("out");
    // Tools: each comine binary, then the CLI (last).
    let tools = bins.len() + 1;
    let mut tallies: Vec<Tally> = (0..tools).map(|_| Tally::default()).collect();
    let mut ratios = Vec::new();
    for round in 0..rounds {
        // Rotate who goes first so no tool always gets the warm cache.
        let mut walls = vec![0.0; tools];
        for k in 0..tools {
            let who = (k + round) % tools;
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out).unwrap();
            let run = if who < bins.len() {
                timed(&mut comine_cmd(&bins[who].1, preset, &names, &out, &input))
            } else {
                timed(Command::new("ffmpeg").args(ffmpeg_cli_args(
                    &input,
                    &out,
                    &shape.profiles,
                    (w, h),
                    preset,
                )))
            };
            walls[who] = run.wall_s;
            tallies[who].add(&run);
        }
        let cli = walls[tools - 1];
        let mut line = format!("round {round}:");
        for (i, (label, _)) in bins.iter().enumerate() {
            line.push_str(&format!(
                " {label} {:.2}s (ratio {:.3})",
                walls[i],
                walls[i] / cli
            ));
        }
        println!("{line}  ffmpeg CLI {cli:.2}s");
        ratios.push(walls[0] / cli);
    }
    let cli_wall = median(&mut tallies[tools - 1].walls.clone());
    for (i, (label, _)) in bins.iter().enumerate() {
        println!("  {}", tallies[i].line(label, cli_wall));
    }
    println!("  {}", tallies[tools - 1].line("ffmpeg CLI", cli_wall));
    println!(
        "  {}: median wall-time ratio comine/ffmpeg-CLI {:.3} (target <= 0.9, stretch 0.75); comine realtime factor {:.2}x",
        shape.name,
        median(&mut ratios),
        seconds / median(&mut tallies[0].walls)
    );
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
    let preset = env_or("LADDER_PRESET", "veryfast");
    let comine_bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/comine");
    assert!(
        comine_bin.exists(),
        "build the release binary first: cargo build --release"
    );
    let mut bins = vec![("comine".to_string(), comine_bin)];
    if let Ok(b) = std::env::var("LADDER_BASELINE_BIN") {
        let b = PathBuf::from(b);
        assert!(
            b.exists(),
            "LADDER_BASELINE_BIN {} does not exist",
            b.display()
        );
        bins.push(("comine (before)".to_string(), b));
    }
    for name in env_or("LADDER_SHAPES", "balanced,top-heavy").split(',') {
        let shape = match name.trim() {
            "balanced" => Shape {
                name: "balanced",
                size: env_or("LADDER_SIZE", "1920x1080"),
                rate: 30,
                profiles: Profile::parse_list(&env_or("LADDER_PROFILES", DEFAULT_PROFILES))
                    .expect("LADDER_PROFILES"),
            },
            "top-heavy" => Shape {
                name: "top-heavy",
                size: "1280x720".into(),
                rate: 25,
                profiles: Profile::parse_list(TOP_HEAVY_PROFILES).expect("profiles"),
            },
            other => panic!("unknown LADDER_SHAPES entry {other:?}: use balanced or top-heavy"),
        };
        run_shape(&shape, rounds, seconds, &preset, &bins);
    }
}
