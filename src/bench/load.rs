//! Transcoding load: source segments and concurrent live streams paced at real time.
//!
//! Each stream receives one segment every `segment_seconds` (as a live broadcaster
//! would) and transcodes it with the engine in [`crate::transcode`]. A segment that
//! finishes after its successor was due has missed its deadline; a segment still
//! queued when the window closes was dropped. The realtime duration ratio of a
//! segment is transcode wall time / media duration (Livepeer's sizing figure).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::suite::TranscodeWorkload;
pub use crate::report::schema::SegmentRecord;
use crate::transcode::{self, EncoderChoice, Input, Options, Profile, Request};

/// Why source segments could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot run the ffmpeg command-line tool to {what}: {source}; install FFmpeg (Debian: apt-get install ffmpeg)")]
    NoFfmpeg {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("ffmpeg failed to {what}: {stderr}")]
    Ffmpeg { what: &'static str, stderr: String },
    #[error("{0}")]
    Input(String),
    #[error("cannot use {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Source segments every stream cycles through.
#[derive(Clone, Debug)]
pub struct Segments {
    pub items: Vec<Bytes>,
    pub seconds: f64,
    /// Human description for the report (`generated 1280x720@30 testsrc2+noise` or the input path).
    pub origin: String,
}

/// Generate segments with realistic entropy: FFmpeg's moving `testsrc2` pattern plus
/// temporal noise, so the encoder cannot coast on static, flat frames.
pub fn generate(t: &TranscodeWorkload, dir: &Path) -> Result<Segments, LoadError> {
    let total = t.segment_seconds * t.segments as f64;
    let gop = ((t.source_fps as f64) * t.segment_seconds).round().max(1.0) as u32;
    let src = format!(
        "testsrc2=size={}x{}:rate={},noise=alls=12:allf=t+u,hue=H=0.6*t",
        t.source_width, t.source_height, t.source_fps
    );
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-hide_banner",
        "-loglevel",
        "error",
        "-nostdin",
        "-y",
        "-f",
        "lavfi",
        "-i",
    ])
    .arg(&src)
    .args([
        "-t",
        &format!("{total}"),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-crf",
        "20",
    ])
    .args([
        "-pix_fmt",
        "yuv420p",
        "-g",
        &gop.to_string(),
        "-keyint_min",
        &gop.to_string(),
    ])
    .args(["-sc_threshold", "0"]);
    let items = segment_with(cmd, t.segment_seconds, dir, "gen", "generate test segments")?;
    Ok(Segments {
        items,
        seconds: t.segment_seconds,
        origin: format!(
            "generated {}x{}@{} testsrc2 + temporal noise + hue motion",
            t.source_width, t.source_height, t.source_fps
        ),
    })
}

/// Cut `--input` (a media file, an HLS playlist or a directory of HLS segments) into segments.
pub fn from_input(input: &Path, t: &TranscodeWorkload, dir: &Path) -> Result<Segments, LoadError> {
    let io = |source| LoadError::Io {
        path: input.display().to_string(),
        source,
    };
    let mut media = input.to_path_buf();
    if input.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(input)
            .map_err(io)?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        if let Some(playlist) = entries
            .iter()
            .find(|p| p.extension().is_some_and(|e| e == "m3u8"))
        {
            media = playlist.clone();
        } else {
            let ts: Vec<&PathBuf> = entries
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "ts"))
                .take(100)
                .collect();
            if ts.is_empty() {
                return Err(LoadError::Input(format!(
                    "--input {} is a directory without an .m3u8 playlist or .ts segments",
                    input.display()
                )));
            }
            let mut items = Vec::new();
            for p in ts {
                items.push(Bytes::from(std::fs::read(p).map_err(io)?));
            }
            return Ok(Segments {
                items,
                seconds: t.segment_seconds,
                origin: format!("HLS segments in {}", input.display()),
            });
        }
    } else if !input.is_file() {
        return Err(LoadError::Input(format!(
            "--input {} does not exist; give a media file, an .m3u8 playlist or an HLS directory",
            input.display()
        )));
    }
    let total = t.segment_seconds * t.segments as f64;
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i"])
        .arg(&media)
        .args([
            "-t",
            &format!("{total}"),
            "-map",
            "0:v:0",
            "-map",
            "0:a:0?",
            "-c:v",
            "libx264",
        ])
        .args([
            "-preset",
            "ultrafast",
            "-crf",
            "18",
            "-c:a",
            "aac",
            "-force_key_frames",
        ])
        .arg(format!("expr:gte(t,n_forced*{})", t.segment_seconds));
    let items = segment_with(
        cmd,
        t.segment_seconds,
        dir,
        "in",
        "cut --input into segments",
    )?;
    Ok(Segments {
        items,
        seconds: t.segment_seconds,
        origin: format!(
            "{} cut into {} s segments",
            input.display(),
            t.segment_seconds
        ),
    })
}

fn segment_with(
    mut cmd: Command,
    seconds: f64,
    dir: &Path,
    prefix: &str,
    what: &'static str,
) -> Result<Vec<Bytes>, LoadError> {
    std::fs::create_dir_all(dir).map_err(|source| LoadError::Io {
        path: dir.display().to_string(),
        source,
    })?;
    cmd.args([
        "-f",
        "segment",
        "-segment_time",
        &format!("{seconds}"),
        "-reset_timestamps",
        "1",
    ])
    .arg(dir.join(format!("{prefix}-%03d.ts")));
    let out = cmd
        .output()
        .map_err(|source| LoadError::NoFfmpeg { what, source })?;
    if !out.status.success() {
        return Err(LoadError::Ffmpeg {
            what,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| LoadError::Io {
            path: dir.display().to_string(),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{prefix}-")) && n.ends_with(".ts"))
        })
        .collect();
    paths.sort();
    let mut items = Vec::new();
    for p in paths {
        let b = std::fs::read(&p).map_err(|source| LoadError::Io {
            path: p.display().to_string(),
            source,
        })?;
        // The segment muxer may leave a last sliver of a few frames; keep only real segments.
        if !b.is_empty() {
            items.push(Bytes::from(b));
        }
    }
    if items.is_empty() {
        return Err(LoadError::Ffmpeg {
            what,
            stderr: "no segment was written".into(),
        });
    }
    Ok(items)
}

/// Pixel counters the sampler turns into rates (and the sim GPU into load).
#[derive(Default)]
pub struct PixelCounters {
    pub encoded: AtomicU64,
    pub decoded: AtomicU64,
}

/// One window of `streams` live streams.
pub struct Window<'a> {
    pub phase: &'a str,
    pub rep: u32,
    pub streams: u32,
    pub duration: Duration,
    pub segments: &'a Segments,
    pub profiles: &'a [Profile],
    pub encoder: EncoderChoice,
    pub x264_preset: &'a str,
    pub work_dir: &'a Path,
    pub clock: Instant,
    pub cancel: &'a CancellationToken,
    pub counters: &'a Arc<PixelCounters>,
    /// Streams allowed to start another segment (a scripted proof's step-down lowers it):
    /// a stream at or above it finishes its segment and stops, as a drained Livepeer session.
    pub allowed: Option<&'a AtomicU32>,
    /// Streams stopped by `allowed`, with when their last segment ended (`None`: none ran).
    pub released: Option<&'a Mutex<Vec<Released>>>,
}

/// A stream a scripted step-down stopped, and when its last segment ended (`None`: none ran).
pub type Released = (u32, Option<Instant>);

/// Run a window; `on_done` sees every finished segment (steering hooks in there).
pub fn run_window(w: &Window<'_>, on_done: &(dyn Fn(&SegmentRecord) + Sync)) -> Vec<SegmentRecord> {
    let start = Instant::now();
    let end = start + w.duration;
    let seg = Duration::from_secs_f64(w.segments.seconds);
    let mut all = Vec::new();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..w.streams)
            .map(|stream| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    let dir = w.work_dir.join(format!("stream-{stream}"));
                    // Stagger streams so they do not all arrive on the same instant.
                    let offset = seg.mul_f64(stream as f64 / w.streams.max(1) as f64);
                    let mut i = 0u32;
                    let mut last_end: Option<Instant> = None;
                    let stopped = |last_end: Option<Instant>| {
                        let over = w
                            .allowed
                            .is_some_and(|a| stream >= a.load(Ordering::Relaxed));
                        if over {
                            if let Some(Ok(mut r)) = w.released.map(|r| r.lock()) {
                                r.push((stream, last_end));
                            }
                        }
                        over
                    };
                    loop {
                        let due = start + offset + seg * i;
                        if due >= end || w.cancel.is_cancelled() || stopped(last_end) {
                            break;
                        }
                        let now = Instant::now();
                        if now < due {
                            std::thread::sleep(due - now);
                        }
                        if stopped(last_end) {
                            break;
                        }
                        let data = w.segments.items
                            [(i as usize + stream as usize) % w.segments.items.len()]
                        .clone();
                        let rec = if Instant::now() >= end {
                            // Queued behind a slow predecessor until the window closed.
                            record(
                                w,
                                stream,
                                due,
                                due,
                                None,
                                Some(
                                    "dropped: the stream fell behind and the window closed".into(),
                                ),
                            )
                        } else {
                            let started = Instant::now();
                            let req = Request {
                                input: Input::Memory(data),
                                profiles: w.profiles.to_vec(),
                                out_dir: dir.clone(),
                                options: Options {
                                    encoder: w.encoder,
                                    x264_preset: w.x264_preset.to_string(),
                                    // Bound a stuck segment; it counts as missed anyway.
                                    deadline: Some(due + seg * 4),
                                    cancel: w.cancel.clone(),
                                    ..Options::default()
                                },
                            };
                            match std::fs::create_dir_all(&dir)
                                .map_err(|e| e.to_string())
                                .and_then(|_| transcode::transcode(&req).map_err(|e| e.to_string()))
                            {
                                Ok(rep) => {
                                    w.counters
                                        .encoded
                                        .fetch_add(rep.encoded_pixels, Ordering::Relaxed);
                                    w.counters
                                        .decoded
                                        .fetch_add(rep.decoded_pixels, Ordering::Relaxed);
                                    record(w, stream, due, started, Some(rep), None)
                                }
                                Err(e) => record(w, stream, due, started, None, Some(e)),
                            }
                        };
                        last_end = Some(Instant::now());
                        on_done(&rec);
                        out.push(rec);
                        i += 1;
                    }
                    out
                })
            })
            .collect();
        for h in handles {
            if let Ok(v) = h.join() {
                all.extend(v);
            }
        }
    });
    all.sort_by(|a, b| a.t_due_s.total_cmp(&b.t_due_s));
    all
}

fn record(
    w: &Window<'_>,
    stream: u32,
    due: Instant,
    started: Instant,
    rep: Option<transcode::Report>,
    error: Option<String>,
) -> SegmentRecord {
    let now = Instant::now();
    let secs = |t: Instant| t.saturating_duration_since(w.clock).as_secs_f64();
    let wall = now.saturating_duration_since(started);
    let media_s = rep
        .as_ref()
        .map(|r| r.media_seconds)
        .filter(|m| *m > 0.0)
        .unwrap_or(w.segments.seconds);
    let deadline = due + Duration::from_secs_f64(w.segments.seconds);
    SegmentRecord {
        phase: w.phase.to_string(),
        rep: w.rep,
        stream,
        streams: w.streams,
        t_due_s: secs(due),
        t_start_s: secs(started),
        t_end_s: secs(now),
        wall_ms: wall.as_millis() as u64,
        media_s,
        ratio: if error.is_some() {
            0.0
        } else {
            wall.as_secs_f64() / media_s
        },
        missed: error.is_some() || now > deadline,
        decoded_pixels: rep.as_ref().map_or(0, |r| r.decoded_pixels),
        encoded_pixels: rep.as_ref().map_or(0, |r| r.encoded_pixels),
        encoder: rep
            .as_ref()
            .and_then(|r| r.renditions.first().map(|x| x.encoder.clone()))
            .unwrap_or_default(),
        error,
    }
}
