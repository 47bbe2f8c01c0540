//! Test media generated on the fly with the `ffmpeg` CLI (FFmpeg's lavfi test sources,
//! with noise and motion so encoders do real work), cached per test or benchmark binary
//! under `CARGO_TARGET_TMPDIR`. Shared by `tests/` (through `common`) and `benchmarks/`
//! (through `#[path]`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A directory shared by every test of this binary, removed never (it is a tempdir
/// under target/ so `cargo clean` takes it).
pub fn media_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("media");
        std::fs::create_dir_all(&dir).expect("create media dir");
        dir
    })
}

/// Generates (once per name) a clip with the given lavfi video graph and optional audio.
/// `extra` are output options placed before the file name.
///
/// Tests of one binary run on parallel threads and often ask for the same clip, so
/// generation is serialised by a process-wide lock: without it two threads wrote the
/// same temporary file and one test read a clip the other was still writing. The
/// temporary name carries the pid as well, for test binaries run side by side.
pub fn generate(name: &str, video: &str, seconds: f64, audio: bool, extra: &[&str]) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that panicked while holding the lock left no half-written clip behind
    // (the rename is the last step), so a poisoned lock is safe to take over.
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let path = media_dir().join(name);
    if path.exists() {
        return path;
    }
    let tmp = media_dir().join(format!("{}.{}.part", name, std::process::id()));
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        video,
    ]);
    if audio {
        cmd.args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]);
    }
    cmd.args(["-t", &seconds.to_string()]);
    cmd.args(extra);
    let ext = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("ts");
    let fmt = match ext {
        "ts" => "mpegts",
        "mp4" => "mp4",
        "mkv" => "matroska",
        "m4a" => "ipod",
        other => other,
    };
    cmd.args(["-f", fmt]).arg(&tmp);
    let out = cmd
        .output()
        .expect("run ffmpeg (is the ffmpeg CLI installed?)");
    assert!(
        out.status.success(),
        "ffmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &path).expect("rename media");
    path
}

/// Noisy moving test pattern, the default test source.
pub fn pattern(w: u32, h: u32, rate: &str) -> String {
    format!("testsrc2=size={w}x{h}:rate={rate},noise=alls=20:allf=t+u")
}

/// `count` consecutive MPEG-TS segments of one 30 fps stream, `seconds` each, cut at key
/// frames by the ffmpeg CLI's segment muxer: timestamps continue from one segment to the
/// next, as in a live stream's (Livepeer's) segments. Generated once per name.
pub fn stream_segments(
    name: &str,
    video: &str,
    seconds: u32,
    count: usize,
    audio: bool,
) -> Vec<PathBuf> {
    // The name carries the shape, so asking for more segments never finds a shorter cache.
    let name = &format!("{name}-{seconds}sx{count}");
    let gop = (30 * seconds).to_string();
    let whole = generate(
        &format!("{name}-whole.ts"),
        video,
        f64::from(seconds) * count as f64,
        audio,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            &gop,
            "-keyint_min",
            &gop,
            "-sc_threshold",
            "0",
        ],
    );
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let paths: Vec<PathBuf> = (0..count)
        .map(|i| media_dir().join(format!("{name}-{i:03}.ts")))
        .collect();
    if paths.iter().all(|p| p.exists()) {
        return paths;
    }
    let parts = media_dir().join(format!("{name}.{}.parts", std::process::id()));
    std::fs::create_dir_all(&parts).expect("segment dir");
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
        .arg(&whole)
        .args([
            "-c",
            "copy",
            "-f",
            "segment",
            "-segment_time",
            &seconds.to_string(),
        ])
        .args(["-segment_format", "mpegts"])
        .arg(parts.join("%03d.ts"))
        .output()
        .expect("run ffmpeg (is the ffmpeg CLI installed?)");
    assert!(
        out.status.success(),
        "ffmpeg segmenting failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (i, p) in paths.iter().enumerate() {
        std::fs::rename(parts.join(format!("{i:03}.ts")), p).expect("segment cut");
    }
    let _ = std::fs::remove_dir_all(&parts);
    paths
}
