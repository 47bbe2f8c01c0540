//! `comine ai upscale INPUT --out DIR`: a video segment upscaled by an embedded model,
//! every frame through the model and encoded by the transcode engine with the audio kept
//! (see `daemon::ai_video`), without a daemon.
// Doc comments on the flags below are clap's `--help` text, written for a terminal.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::ai::{runtime, Config, Upscaler, TEST_MODEL_ID};
use crate::daemon::ai_video::{upscale_segment, DEFAULT_BITRATE};
use crate::transcode::{DecoderChoice, EncoderChoice, Input, Options};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Upscale a video segment with an embedded model (×4 for the test model): decode,
    /// every frame through the model, encode (NVENC or libx264), audio kept.
    Upscale(UpscaleArgs),
}

#[derive(clap::Args, Debug)]
pub struct UpscaleArgs {
    /// Input segment or media file (MPEG-TS, MP4, MKV, …).
    pub input: PathBuf,
    /// Output directory; the segment is written as DIR/upscaled.ts.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Model id; its file defaults to <cache>/models/<ID>.onnx.
    #[arg(long, default_value = TEST_MODEL_ID)]
    pub model_id: String,
    /// The .onnx file (instead of the id's default path).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// libonnxruntime.so (default: the one scripts/ai-setup.sh unpacks).
    #[arg(long)]
    pub onnxruntime_lib: Option<PathBuf>,
    /// `cpu`, or `cuda` (the onnxruntime-gpu library).
    #[arg(long, default_value = "cpu")]
    pub provider: String,
    /// Intra-op threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Tile edge in input pixels for large frames (0: whole frames).
    #[arg(long, default_value_t = 256)]
    pub tile: u32,
    #[arg(long, value_enum, default_value_t = EncoderChoice::Auto)]
    pub encoder: EncoderChoice,
    #[arg(long, value_enum, default_value_t = DecoderChoice::Auto)]
    pub decoder: DecoderChoice,
    /// GPU index (CUDA provider, NVDEC, NVENC).
    #[arg(long, default_value_t = 0)]
    pub gpu: u32,
    /// Video bitrate of the upscaled segment, bits/s.
    #[arg(long, default_value_t = DEFAULT_BITRATE)]
    pub bitrate: u64,
    /// Refuse inputs whose frames exceed this many pixels (the model's work grows with it).
    #[arg(long, default_value_t = 1280 * 720)]
    pub max_input_pixels: u64,
    /// Print the JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Upscale(a) => upscale(a),
    }
}

fn upscale(a: UpscaleArgs) -> anyhow::Result<ExitCode> {
    let cfg = Config {
        onnxruntime_lib: a.onnxruntime_lib.clone(),
        provider: a.provider.clone(),
        threads: a.threads,
        tile: a.tile,
        ..Config::default()
    };
    cfg.validate()?;
    let provider = cfg.provider(a.gpu)?;
    runtime::init(&cfg.library())?;
    let path = a
        .model
        .clone()
        .unwrap_or_else(|| crate::ai::default_model_path(&a.model_id));
    let model = Upscaler::load(&a.model_id, &path, &cfg.load_options(provider))
        .with_context(|| format!("loading model {} from {}", a.model_id, path.display()))?;
    let report = upscale_segment(
        Arc::new(model),
        Input::File(a.input.clone()),
        a.out.clone(),
        a.bitrate,
        Options {
            encoder: a.encoder,
            decoder: a.decoder,
            gpu: a.gpu,
            max_input_pixels: a.max_input_pixels,
            ..Options::default()
        },
    )
    .with_context(|| format!("upscaling {}", a.input.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for r in &report.renditions {
            println!(
                "upscaled {} frames {}x{} -> {}x{} in {} ms ({:.2} frames/s) with {}: {}",
                report.decoded_frames,
                report.input_width,
                report.input_height,
                r.width,
                r.height,
                report.wall_ms,
                report.decoded_frames as f64 * 1000.0 / report.wall_ms.max(1) as f64,
                r.encoder,
                r.path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
