//! `comine transcode INPUT --out DIR [--profiles LIST] [--encoder auto|nvenc|x264] [--gpu N] [--json]`
// Doc comments on the flags below are clap's `--help` text, written for a terminal
// (`<DIR>`, `[:gop=2s|intra]`), not rustdoc markup.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{
    DecoderChoice, EncoderChoice, Input, Options, Profile, Report, Request, WallBound,
    DEFAULT_LADDER, DEFAULT_MAX_INPUT_PIXELS,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input segment or media file (MPEG-TS, MP4, MKV, …), or `-` for stdin.
    pub input: String,
    /// Directory for the renditions, written as DIR/<profile>.ts (or .mp4).
    #[arg(long, short)]
    pub out: PathBuf,
    /// Comma-separated Livepeer presets (P144p30fps16x9 … P1080p30fps16x9) or custom
    /// rungs name:WxH@FPS:BITRATE[:mp4][:gop=2s|intra][:profile=high].
    #[arg(long, default_value = DEFAULT_LADDER)]
    pub profiles: String,
    #[arg(long, value_enum, default_value_t = EncoderChoice::Auto)]
    pub encoder: EncoderChoice,
    #[arg(long, value_enum, default_value_t = DecoderChoice::Auto)]
    pub decoder: DecoderChoice,
    /// GPU index for NVDEC/NVENC.
    #[arg(long, default_value_t = 0)]
    pub gpu: u32,
    /// Print the JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Refuse inputs whose frames exceed this many pixels.
    #[arg(long, default_value_t = DEFAULT_MAX_INPUT_PIXELS)]
    pub max_input_pixels: u64,
    /// libx264 preset.
    #[arg(long, default_value = "veryfast")]
    pub x264_preset: String,
    /// Give up after this many seconds (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    pub timeout: f64,
    /// The job's own wall-time bound: this many seconds, plus its pixel work at
    /// --wall-min-mpixels.
    #[arg(long, default_value_t = WallBound::DEFAULT.floor.as_secs_f64())]
    pub wall_floor: f64,
    /// The slowest throughput (megapixels per second of decode + output) the wall-time
    /// bound tolerates; 0 disables the bound.
    #[arg(long, default_value_t = WallBound::DEFAULT.min_pixel_rate / 1e6)]
    pub wall_min_mpixels: f64,
    /// The input's duration in seconds, when known; widens the frame and wall-time
    /// bounds (without it they follow the frames decoded).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Largest input accepted on stdin, in bytes (it is held in memory).
    #[arg(long, default_value_t = 2 << 30)]
    pub max_stdin_bytes: u64,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let profiles = Profile::parse_list(&args.profiles)?;
    let input = if args.input == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .lock()
            .take(args.max_stdin_bytes + 1)
            .read_to_end(&mut buf)
            .context("reading the segment from stdin")?;
        if buf.len() as u64 > args.max_stdin_bytes {
            anyhow::bail!(
                "stdin input is larger than --max-stdin-bytes ({} bytes); pass a file path instead",
                args.max_stdin_bytes
            );
        }
        Input::Memory(buf.into())
    } else {
        Input::File(PathBuf::from(&args.input))
    };
    let secs = |flag: &str, v: f64| {
        if v.is_finite() && v >= 0.0 {
            Ok(Duration::from_secs_f64(v))
        } else {
            Err(anyhow::anyhow!(
                "{flag} must be a number of seconds ≥ 0, got {v}"
            ))
        }
    };
    let wall_floor = secs("--wall-floor", args.wall_floor)?;
    if !args.wall_min_mpixels.is_finite() || args.wall_min_mpixels < 0.0 {
        anyhow::bail!(
            "--wall-min-mpixels must be ≥ 0 (0 disables the wall-time bound), got {}",
            args.wall_min_mpixels
        );
    }
    let media_duration = args.duration.map(|d| secs("--duration", d)).transpose()?;
    let deadline =
        (args.timeout > 0.0).then(|| Instant::now() + Duration::from_secs_f64(args.timeout));
    let request = Request {
        input,
        profiles,
        out_dir: args.out,
        options: Options {
            encoder: args.encoder,
            decoder: args.decoder,
            gpu: args.gpu,
            max_input_pixels: args.max_input_pixels,
            x264_preset: args.x264_preset,
            deadline,
            media_duration,
            wall_bound: (args.wall_min_mpixels > 0.0).then_some(WallBound {
                floor: wall_floor,
                min_pixel_rate: args.wall_min_mpixels * 1e6,
            }),
            ..Options::default()
        },
    };
    let report = super::transcode(&request)?;
    if let Some(reason) = &report.fallback_reason {
        tracing::info!(%reason, "hardware path not used");
    }
    tracing::info!(
        renditions = report.renditions.len(),
        encoded_pixels = report.encoded_pixels,
        decode_errors = report.decode_errors,
        timestamp_jumps = report.timestamp_jumps,
        wall_ms = report.wall_ms,
        realtime_factor = format_args!("{:.2}", report.realtime_factor),
        "transcode done"
    );
    if args.json {
        crate::util::outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_human(&report)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_human(r: &Report) -> anyhow::Result<()> {
    crate::util::outln!(
        "decoded {} frames {}x{} ({} px) with {} in {} ms, {:.2}x real time{}",
        r.decoded_frames,
        r.input_width,
        r.input_height,
        r.decoded_pixels,
        r.decoder,
        r.wall_ms,
        r.realtime_factor,
        if r.decode_errors > 0 {
            format!(", {} decode errors", r.decode_errors)
        } else {
            String::new()
        }
    );
    for x in &r.renditions {
        crate::util::outln!(
            "  {:<18} {:>4}x{:<4} {:>5} frames {:>12} px {:>9} B  {}  {}",
            x.profile,
            x.width,
            x.height,
            x.frames,
            x.pixels,
            x.bytes,
            x.encoder,
            x.path.display()
        );
    }
    crate::util::outln!("encoded pixels: {}", r.encoded_pixels);
    Ok(())
}
