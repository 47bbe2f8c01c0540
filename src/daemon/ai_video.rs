//! Video-segment upscale (`POST /v1/ai/upscale`, `comine ai upscale INPUT --out DIR`):
//! the transcode engine decodes the segment, an embedded super-resolution model upscales
//! every frame (a [`FrameTransform`] between decode and encode), and the engine's own
//! encoders (NVENC where it opens, libx264 otherwise) write it back, audio copied.
//! Upstream Livepeer has no video upscale; this one is comine's. `ai` and `transcode`
//! share a layer and do not know each other; this is where they meet.

use std::path::PathBuf;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::ai::{RgbImage, Upscaler};
use crate::transcode::{
    self, Container, FrameTransform, Gop, H264Profile, Input, Options, Profile, Report, Request,
    TranscodeError, Transform, VideoCodec,
};

/// The output rendition's name: the file is `<out>/upscaled.ts`.
pub const PROFILE_NAME: &str = "upscaled";

/// Default video bitrate of the upscaled segment, bits/s.
pub const DEFAULT_BITRATE: u64 = 6_000_000;

/// Every frame through the model.
struct UpscaleFrames {
    model: Arc<Upscaler>,
    cancel: CancellationToken,
}

impl FrameTransform for UpscaleFrames {
    fn output_size(&self, width: u32, height: u32) -> (u32, u32) {
        let s = self.model.scale();
        (width.saturating_mul(s), height.saturating_mul(s))
    }

    fn apply(&self, width: u32, height: u32, rgb: Vec<u8>) -> Result<Vec<u8>, String> {
        // A frame takes long on a CPU: a cancelled job stops between frames.
        if self.cancel.is_cancelled() {
            return Err("cancelled".into());
        }
        self.model
            .upscale(&RgbImage {
                width,
                height,
                pixels: rgb,
            })
            .map(|img| img.pixels)
            .map_err(|e| e.to_string())
    }
}

/// The single rung: the model's output size, the source frame rate, H.264 in MPEG-TS.
pub fn upscaled_profile(bitrate: u64) -> Profile {
    Profile {
        name: PROFILE_NAME.into(),
        // 0×0: no box, so the rendition keeps the upscaled size.
        width: 0,
        height: 0,
        fps_num: 0,
        fps_den: 0,
        bitrate,
        gop: Gop::Default,
        format: Container::MpegTs,
        h264_profile: H264Profile::Default,
        codec: VideoCodec::H264,
    }
}

/// Upscales one segment into `out_dir/upscaled.ts`. Blocking: run it on its own thread.
/// `options.max_input_pixels` bounds the *input* frames (the model's cost grows with it).
pub fn upscale_segment(
    model: Arc<Upscaler>,
    input: Input,
    out_dir: PathBuf,
    bitrate: u64,
    mut options: Options,
) -> Result<Report, TranscodeError> {
    // The engine's wall-time bound assumes a transcode's pixel rate; a model on a CPU is
    // far slower. The caller's deadline (`[ai] job_timeout_secs`) bounds it instead.
    options.wall_bound = None;
    options.transform = Some(Transform(Arc::new(UpscaleFrames {
        model,
        cancel: options.cancel.clone(),
    })));
    transcode::transcode(&Request {
        input,
        profiles: vec![upscaled_profile(bitrate)],
        out_dir,
        options,
    })
}

/// The `/v1/ai/upscale` job's pipeline name in the ledger (`ai:video-upscale/<model>`) and
/// in `/metrics`.
pub const PIPELINE: &str = "video-upscale";

/// A finished video upscale.
#[derive(Debug)]
pub struct Upscaled {
    pub job_id: String,
    pub model_id: String,
    /// The MPEG-TS segment.
    pub data: Vec<u8>,
    pub report: Report,
    /// Livepeer's upscale unit per frame (input h × w), summed over the frames.
    pub units: u64,
}

/// Why a video upscale did not run or failed.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error(
        "no [[ai.models]] upscale model is configured; add one (docs/ai.md) to use /v1/ai/upscale"
    )]
    NotConfigured,
    #[error(transparent)]
    Ai(#[from] crate::ai::AiError),
    #[error(transparent)]
    Transcode(#[from] TranscodeError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl VideoError {
    /// The ledger's reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            VideoError::NotConfigured => "not_configured",
            VideoError::Ai(e) => e.reason(),
            VideoError::Transcode(e) if e.is_bad_input() => "bad_input",
            VideoError::Transcode(TranscodeError::Cancelled) => "cancelled",
            VideoError::Transcode(TranscodeError::DeadlineExceeded { .. }) => "timeout",
            VideoError::Transcode(_) => "upscale_failed",
            VideoError::Internal(_) => "internal",
        }
    }
}

/// A sequence number unique to this request (ms since the epoch × 1024 + a counter).
fn next_seq() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1024;
    crate::util::now_ms().saturating_mul(1024).saturating_add(n)
}

fn internal(e: impl std::fmt::Display) -> VideoError {
    VideoError::Internal(e.to_string())
}

/// Runs one video upscale for the API: the model's lease must be held (its jobs are
/// counted in flight and cancelled with it), and the job goes through the ledger's state
/// machine as class `ai` (received → queued → transcoding while it runs → stored →
/// completed, or failed with its reason), with counters in `/v1/status` and `/metrics`.
pub async fn run(
    d: &Arc<super::Daemon>,
    model_id: Option<String>,
    input: bytes::Bytes,
) -> Result<Upscaled, VideoError> {
    use crate::ledger::{Admitted, JobClass, NewJob, RenditionRecord};
    use std::sync::atomic::Ordering;

    let state = d.ai.get().ok_or(VideoError::NotConfigured)?;
    let model_id = match model_id {
        Some(m) => m,
        None => state
            .service
            .embedded()
            .iter()
            .find(|m| m.pipeline == "upscale")
            .map(|m| m.model_id.clone())
            .ok_or(VideoError::NotConfigured)?,
    };
    let new = NewJob {
        class: JobClass::Ai,
        manifest_id: Some(format!(
            "{}{PIPELINE}/{model_id}",
            super::ai::MANIFEST_PREFIX
        )),
        // No client idempotency key here: each request is its own job.
        seq: Some(next_seq()),
        profiles: vec![format!("ai:{PIPELINE}")],
        duration_ms: 0,
        segment_bytes: input.len() as u64,
    };
    // Every ledger call runs off the runtime's workers (`Ledger::call`).
    let job = match d
        .ledger
        .call(move |l| l.admit(new))
        .await
        .map_err(internal)?
    {
        Admitted::New(j) => j,
        Admitted::Duplicate(j) => {
            return Err(internal(format!(
                "sequence number {:?} was already used by job {}",
                j.seq, j.job_id
            )))
        }
    };
    let id = job.job_id.clone();
    let key = id.clone();
    d.ledger
        .call(move |l| l.mark_queued(&key))
        .await
        .map_err(internal)?;
    let started = std::time::Instant::now();
    let result = async {
        let svc = state.service.clone();
        let m = model_id.clone();
        let model = tokio::task::spawn_blocking(move || svc.upscaler(&m))
            .await
            .map_err(|e| VideoError::Internal(e.to_string()))??;
        // Counted in flight on the model's lease; a take-back cancels the job.
        let (_in_flight, lease_cancel) = state.leases.jobs.enter(&model_id);
        let cancel = d.hard_stop.child_token();
        {
            let c = cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = lease_cancel.cancelled() => c.cancel(),
                    _ = c.cancelled() => {}
                }
            });
        }
        let key = id.clone();
        d.ledger
            .call(move |l| l.mark_transcoding(&key))
            .await
            .map_err(internal)?;
        let cfg = &d.config.transcode;
        let options = Options {
            encoder: cfg.encoder_choice().map_err(internal)?,
            decoder: cfg.decoder_choice().map_err(internal)?,
            gpu: cfg.gpu,
            max_input_pixels: state.service.config().max_input_pixels,
            x264_preset: cfg.x264_preset.clone(),
            deadline: Some(
                std::time::Instant::now()
                    + std::time::Duration::from_secs(
                        state.service.config().job_timeout_secs.max(1),
                    ),
            ),
            cancel: cancel.clone(),
            ..Options::default()
        };
        let out_dir = d.work_dir(&id);
        let dir = out_dir.clone();
        let report = tokio::task::spawn_blocking(move || {
            upscale_segment(model, Input::Memory(input), dir, DEFAULT_BITRATE, options)
        })
        .await
        .map_err(|e| VideoError::Internal(e.to_string()))?;
        cancel.cancel(); // ends the lease watcher
        let report = report?;
        let r = report
            .renditions
            .first()
            .ok_or_else(|| VideoError::Internal("no upscaled rendition".into()))?;
        let data = std::fs::read(&r.path)
            .map_err(|e| VideoError::Internal(format!("reading {}: {e}", r.path.display())))?;
        let _ = std::fs::remove_dir_all(&out_dir);
        Ok::<_, VideoError>((report, data))
    }
    .await;
    let c = &state.counters;
    match result {
        Ok((report, data)) => {
            let units = report.decoded_pixels;
            let rendition = report.renditions.first().map(|r| RenditionRecord {
                profile: format!("ai:{PIPELINE}"),
                cid: String::new(),
                pixels: units,
                bytes: r.bytes,
                width: r.width,
                height: r.height,
                frames: r.frames,
                encoder: format!("{model_id}+{}", r.encoder),
                mime: r.mime.to_string(),
                job_id: String::new(),
            });
            let (key, media_seconds, ms) = (
                id.clone(),
                report.media_seconds,
                started.elapsed().as_millis() as u64,
            );
            let done = d
                .ledger
                .call(move |l| {
                    l.mark_stored(
                        &key,
                        units,
                        media_seconds,
                        ms,
                        rendition.into_iter().collect(),
                    )?;
                    l.complete(&key)
                })
                .await
                .map_err(internal)?;
            if let Some(done) = &done {
                c.done.fetch_add(1, Ordering::Relaxed);
                c.units.fetch_add(units, Ordering::Relaxed);
                d.metrics.ai_job(PIPELINE, &model_id, "ok", units);
                // Valued in Livepeer's upscale units: input height × width per frame.
                d.account_earnings(done, None).await;
            }
            Ok(Upscaled {
                job_id: id,
                model_id,
                data,
                report,
                units,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(d.work_dir(&id));
            let (key, code, message) = (id.clone(), e.reason(), e.to_string());
            if let Err(le) = d.ledger.call(move |l| l.fail(&key, code, &message)).await {
                tracing::error!(job_id = %id, error = %le, "recording a failed video upscale");
            }
            c.failed.fetch_add(1, Ordering::Relaxed);
            d.metrics.ai_job(PIPELINE, &model_id, e.reason(), 0);
            Err(e)
        }
    }
}
