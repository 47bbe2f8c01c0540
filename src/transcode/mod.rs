//! Transcoding engine: one decode feeding many encodes, with exact pixel accounting.
//!
//! A segment is demuxed and decoded once (NVDEC when a CUDA device opens, FFmpeg's
//! frame-threaded software decoder otherwise). Every decoded frame is shared by
//! reference with one worker thread per rendition, which owns its own filter graph
//! (fps → scale → yuv420p), encoder (`h264_nvenc` where NVENC opens, libx264
//! otherwise) and muxer. Audio packets are copied through to every rendition.
//!
//! [`transcode`] is blocking and meant for a dedicated thread (`spawn_blocking` in
//! the daemon); it honours a deadline and a cancellation token, and writes each
//! rendition to a temporary name that is renamed only once the whole ladder succeeded,
//! so a failed or cancelled segment never leaves half-written renditions behind.

pub mod avlog;
pub mod cli;
mod encoder;
mod engine;
mod input;
pub mod probe;
pub mod profile;
pub mod throughput;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use engine::{transcode, transcode_warm, WarmSession, WarmUse};
pub use profile::{
    fit_dimensions, preset_names, Container, Gop, H264Profile, Profile, ProfileError, VideoCodec,
    DEFAULT_LADDER,
};

/// Where the segment comes from.
#[derive(Clone, Debug)]
pub enum Input {
    /// A file FFmpeg can demux (MPEG-TS first, MP4, MKV, …).
    File(PathBuf),
    /// An in-memory segment, as the daemon and the Livepeer client receive them.
    Memory(bytes::Bytes),
}

/// Which video encoder to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EncoderChoice {
    /// NVENC where it opens, libx264 otherwise (the reason is reported).
    #[default]
    Auto,
    /// NVENC only; fail with the real cause if it cannot open.
    Nvenc,
    /// libx264 on the CPU only.
    X264,
}

/// Which video decoder to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DecoderChoice {
    /// NVDEC where a CUDA device opens, software otherwise.
    #[default]
    Auto,
    /// NVDEC only.
    Nvdec,
    /// FFmpeg's software decoder only.
    Software,
}

impl EncoderChoice {
    /// The one parse of an encoder name (config files, suites; clap uses the same names):
    /// `auto`, `nvenc` or `x264`, any case. Anything else is an error saying what is valid.
    pub fn parse(s: &str) -> Result<EncoderChoice, String> {
        <EncoderChoice as clap::ValueEnum>::from_str(s.trim(), true)
            .map_err(|_| format!("unknown encoder {s:?}: use auto, nvenc or x264"))
    }
}

impl DecoderChoice {
    /// `auto`, `nvdec` or `software`, any case; anything else is an error.
    pub fn parse(s: &str) -> Result<DecoderChoice, String> {
        <DecoderChoice as clap::ValueEnum>::from_str(s.trim(), true)
            .map_err(|_| format!("unknown decoder {s:?}: use auto, nvdec or software"))
    }
}

/// The pixel rate a ladder asks for: Σ w × h × fps over its rungs (30 fps when a rung keeps
/// the source's rate, 1 pixel a side when it keeps the source's size). What the scheduler
/// admits jobs and Livepeer segments by.
pub fn ladder_pixels_per_sec(profiles: &[Profile]) -> f64 {
    profiles
        .iter()
        .map(|p| p.width.max(1) as f64 * p.height.max(1) as f64 * p.fps().unwrap_or(30.0))
        .sum()
}

/// The FFmpeg (libavutil) version this process runs with, e.g. `5.1.6-0+deb12u1`.
pub fn ffmpeg_version() -> String {
    // SAFETY: av_version_info returns a static NUL-terminated string.
    unsafe {
        let p = ffmpeg_next::ffi::av_version_info();
        if p.is_null() {
            return "unknown".into();
        }
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// A picture transform run on every decoded frame before the renditions encode it (the AI
/// video upscale): packed RGB24 in, packed RGB24 out at [`FrameTransform::output_size`].
/// Renditions scale from its output; a profile of 0×0 keeps that size. Input limits
/// (`max_input_pixels`) apply to the decoded frames, before the transform.
pub trait FrameTransform: Send + Sync {
    /// The output size for a `width`×`height` input.
    fn output_size(&self, width: u32, height: u32) -> (u32, u32);
    /// `rgb` holds `width × height × 3` bytes, rows packed top to bottom.
    fn apply(&self, width: u32, height: u32, rgb: Vec<u8>) -> Result<Vec<u8>, String>;
}

/// A shared [`FrameTransform`] in [`Options`].
#[derive(Clone)]
pub struct Transform(pub std::sync::Arc<dyn FrameTransform>);

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transform")
    }
}

/// Default ceiling on input frame size: 4096×2304 (a little above DCI 4K).
pub const DEFAULT_MAX_INPUT_PIXELS: u64 = 4096 * 2304;

/// Knobs of one transcode.
#[derive(Clone, Debug)]
pub struct Options {
    pub encoder: EncoderChoice,
    pub decoder: DecoderChoice,
    /// CUDA/NVENC device index.
    pub gpu: u32,
    /// Frames larger than this many pixels are refused before decoding.
    pub max_input_pixels: u64,
    /// libx264 preset; the same value must be given to a CLI peer for a fair comparison.
    pub x264_preset: String,
    /// Decoder threads; 0 lets libavcodec pick one per core.
    pub decoder_threads: usize,
    /// Cores shared by the ladder's libx264 encoders; 0 uses every core. The encoders
    /// share 1.5 threads per core, each in proportion to its share of the output pixels:
    /// the ladder already runs its rungs in parallel, and libx264's default of 1.5 threads
    /// per core *per encoder* oversubscribes the CPU and multiplies the frames held in memory.
    pub encode_cores: usize,
    /// Absolute deadline; past it the transcode stops with [`TranscodeError::DeadlineExceeded`].
    pub deadline: Option<Instant>,
    pub cancel: CancellationToken,
    /// Run on every decoded frame before encoding (none for transcoding).
    pub transform: Option<Transform>,
    /// The segment's duration as the caller declares it (Livepeer's segment duration,
    /// HTTP `duration_ms`). It widens the frame and wall-time bounds; without it they
    /// follow the frames decoded, never the container's timestamps, which are exactly
    /// what a poison segment corrupts.
    pub media_duration: Option<Duration>,
    /// The job's own wall-time bound, whatever the caller's deadline; `None` disables it.
    pub wall_bound: Option<WallBound>,
}

/// A wall-time bound derived from the media and the ladder: `floor` plus the time the
/// job's pixel work (decode + every rung's output) takes at `min_pixel_rate`. It grows
/// as frames are decoded, so a long film is not cut short while a job that stops making
/// progress is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WallBound {
    pub floor: Duration,
    /// Pixels per second the slowest acceptable host still sustains (decode + encode).
    pub min_pixel_rate: f64,
}

impl WallBound {
    /// 30 s plus 2 Mpx/s: a 2 s 720p30 segment to a 720/360/240 ladder gets about 70 s,
    /// some 30 times what a loaded 2-core host needs.
    pub const DEFAULT: WallBound = WallBound {
        floor: Duration::from_secs(30),
        min_pixel_rate: 2e6,
    };
}

impl Default for Options {
    fn default() -> Self {
        Options {
            encoder: EncoderChoice::Auto,
            decoder: DecoderChoice::Auto,
            gpu: 0,
            max_input_pixels: DEFAULT_MAX_INPUT_PIXELS,
            x264_preset: "veryfast".to_string(),
            decoder_threads: 0,
            encode_cores: 0,
            deadline: None,
            cancel: CancellationToken::new(),
            transform: None,
            media_duration: None,
            wall_bound: Some(WallBound::DEFAULT),
        }
    }
}

/// One transcode job.
#[derive(Clone, Debug)]
pub struct Request {
    pub input: Input,
    pub profiles: Vec<Profile>,
    /// Renditions are written as `out_dir/<profile name>.<ts|mp4>`.
    pub out_dir: PathBuf,
    pub options: Options,
}

/// What one rendition came out as.
#[derive(Clone, Debug, Serialize)]
pub struct RenditionReport {
    pub profile: String,
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    /// Encoded video frames.
    pub frames: u64,
    /// width × height × frames: what Livepeer pays for.
    pub pixels: u64,
    pub bytes: u64,
    /// `h264_nvenc` or `libx264`.
    pub encoder: String,
    pub format: Container,
    pub mime: &'static str,
}

/// The outcome of a transcode (`comine transcode --json` prints it).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Σ width × height over every decoded input frame.
    pub decoded_pixels: u64,
    pub decoded_frames: u64,
    /// Packets or frames the decoder rejected; non-zero on truncated or damaged input.
    pub decode_errors: u64,
    /// `h264` or `h264 (nvdec)`.
    pub decoder: String,
    pub input_width: u32,
    pub input_height: u32,
    /// Seconds of video decoded.
    pub media_seconds: f64,
    pub wall_ms: u64,
    /// Microseconds from the start to the first packet decoded: probing the input and opening
    /// the decoder, the encoders and the muxers (the fixed cost a warm session cuts).
    pub setup_us: u64,
    /// Media seconds per wall second (> 1 is faster than real time).
    pub realtime_factor: f64,
    /// Σ pixels over the renditions.
    pub encoded_pixels: u64,
    /// Timestamp discontinuities (jumps over 10 s, either way) that were closed instead
    /// of filled with frames.
    pub timestamp_jumps: u64,
    /// Why NVENC (or NVDEC) was not used under `auto`, taken from libav's own log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
    pub renditions: Vec<RenditionReport>,
    /// What this segment reused of its stream's open decoder and encoders (all false
    /// for a one-off transcode).
    pub warm: WarmUse,
}

/// Every way a transcode can fail. [`TranscodeError::is_bad_input`] separates the
/// client's fault (HTTP 4xx, Livepeer error part) from ours.
#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("input is empty (0 bytes): nothing to transcode")]
    EmptyInput,
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("input is not a media file FFmpeg can demux ({0})")]
    NotMedia(String),
    #[error("input has no video stream (found: {0}); comine transcodes video")]
    NoVideo(String),
    #[error("input video codec {0} cannot be decoded by this FFmpeg build")]
    NoDecoder(String),
    #[error("input is {width}x{height} ({pixels} pixels per frame), above the ceiling of {max} pixels; raise max_input_pixels (--max-input-pixels) if this is intended")]
    TooLarge {
        width: u32,
        height: u32,
        pixels: u64,
        max: u64,
    },
    #[error("no frame could be decoded ({decode_errors} decode errors): the segment is corrupt or cut before its first complete frame")]
    NoFrames { decode_errors: u64 },
    #[error("profile {profile} asks for {codec:?}; comine encodes H.264 only")]
    UnsupportedCodec { profile: String, codec: VideoCodec },
    #[error("NVENC session limit reached on GPU {gpu}: the NVIDIA driver caps concurrent encode sessions (GeForce drivers allow 3 to 8); lower per-GPU sessions or capacity, or use --encoder auto to fall back to libx264 (libav: {detail})")]
    NvencSessionCap { gpu: u32, detail: String },
    #[error("NVENC cannot open on GPU {gpu}: {reason}; use --encoder auto or x264 on hosts without NVENC")]
    NvencUnavailable { gpu: u32, reason: String },
    #[error("NVDEC cannot open on GPU {gpu}: {reason}; use --decoder auto or software")]
    NvdecUnavailable { gpu: u32, reason: String },
    #[error("{encoder} could not open for profile {profile}: {reason}")]
    EncoderOpen {
        encoder: String,
        profile: String,
        reason: String,
    },
    #[error("transcode cancelled")]
    Cancelled,
    #[error("deadline exceeded after {elapsed_ms} ms")]
    DeadlineExceeded { elapsed_ms: u64 },
    #[error("transcode stopped at its wall-time bound ({bound_ms} ms, from the media decoded and the ladder's pixel count) after {elapsed_ms} ms: the host is far slower than the bound allows or the job stopped progressing; lower the load, or raise the bound (transcode.wall_floor_secs, transcode.wall_min_mpixels_per_sec; --wall-floor, --wall-min-mpixels)")]
    WallBound { elapsed_ms: u64, bound_ms: u64 },
    #[error("the input's timestamps jump far ahead of its frames: rendition {profile} would need more than {bound} frames for {frames_in} input frames (about {seconds:.1} s of video); re-mux the segment with continuous timestamps")]
    TimestampGap {
        profile: String,
        frames_in: u64,
        bound: u64,
        seconds: f64,
    },
    #[error("cannot write rendition {path}: {reason}")]
    Output { path: String, reason: String },
    #[error("the muxer refused the input's data for rendition {profile} ({reason}): its audio or timestamps are corrupt; re-mux the segment (or drop its audio) and send it again")]
    MuxRefused { profile: String, reason: String },
    #[error("the frame transform failed: {0}")]
    Transform(String),
    #[error("FFmpeg failed while {what}: {reason}")]
    Ffmpeg { what: &'static str, reason: String },
}

impl TranscodeError {
    /// True when the request itself is at fault (bad media, bad profile, too large).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            TranscodeError::Profile(_)
                | TranscodeError::EmptyInput
                | TranscodeError::NotMedia(_)
                | TranscodeError::NoVideo(_)
                | TranscodeError::NoDecoder(_)
                | TranscodeError::TooLarge { .. }
                | TranscodeError::NoFrames { .. }
                | TranscodeError::UnsupportedCodec { .. }
                | TranscodeError::TimestampGap { .. }
                | TranscodeError::MuxRefused { .. }
        )
    }
}
