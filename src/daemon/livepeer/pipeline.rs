//! The transcoding side of a Livepeer segment: the orchestrator's profiles mapped onto the
//! engine's, the engine run on a blocking thread within the task's deadline, and its
//! renditions returned in the orchestrator's order. Both `comine run` and the standalone
//! `comine livepeer` use it.

use std::path::PathBuf;
use std::time::Instant;

use crate::livepeer::proto::VideoProfile;
use crate::livepeer::sink::BoxFuture;
use crate::livepeer::{RenditionOutput, SegmentError, SegmentPipeline, SegmentTask, Transcoded};
use crate::transcode::{
    self, DecoderChoice, EncoderChoice, Input, Options, Request, WallBound, WarmSession,
};

use super::profiles;

/// Runs the transcoding engine for each segment.
#[derive(Clone, Debug)]
pub struct EnginePipeline {
    pub encoder: EncoderChoice,
    pub x264_preset: String,
    /// GPU index for NVDEC/NVENC.
    pub gpu: u32,
    /// `(data directory, min_free_bytes)`: below the floor a segment is refused before it is
    /// transcoded, so the orchestrator hands it to another transcoder (`comine run` only).
    pub space_floor: Option<(PathBuf, u64)>,
    /// Keep each session's decoder and encoders open between its segments
    /// (`[transcode] warm_sessions`, on by default).
    pub warm: bool,
    pub decoder: DecoderChoice,
    pub wall_bound: Option<WallBound>,
}

impl EnginePipeline {
    pub fn new(encoder: EncoderChoice, x264_preset: impl Into<String>, gpu: u32) -> Self {
        EnginePipeline {
            encoder,
            x264_preset: x264_preset.into(),
            gpu,
            space_floor: None,
            warm: true,
            decoder: DecoderChoice::Auto,
            wall_bound: Some(WallBound::DEFAULT),
        }
    }

    /// `false` opens a fresh decoder and encoders for every segment (`warm_sessions`).
    pub fn warm(mut self, warm: bool) -> Self {
        self.warm = warm;
        self
    }

    /// The decoder choice and wall-time bound of `[transcode]`.
    pub fn with_decoder(mut self, decoder: DecoderChoice, wall_bound: Option<WallBound>) -> Self {
        self.decoder = decoder;
        self.wall_bound = wall_bound;
        self
    }

    /// Refuses segments while the filesystem of `dir` has fewer than `min` free bytes.
    pub fn with_space_floor(mut self, dir: PathBuf, min: u64) -> Self {
        self.space_floor = Some((dir, min));
        self
    }

    /// Transcodes on device `gpu` (the one the scheduler granted, or the configured one).
    pub async fn run(&self, task: SegmentTask, gpu: u32) -> Result<Transcoded, SegmentError> {
        if let Some((dir, min)) = &self.space_floor {
            match crate::store::free_space::check(dir, *min) {
                Ok(Ok(())) => {}
                Ok(Err(low)) => return Err(SegmentError::ours(low.to_string())),
                Err(e) => {
                    tracing::warn!(error = %e, dir = %dir.display(), "cannot read free space")
                }
            }
        }
        let lp_profiles = task.profiles;
        let engine_profiles = profiles::to_engine(&lp_profiles).map_err(SegmentError::input)?;
        let deadline = task.deadline;
        let request = Request {
            input: Input::Memory(task.data),
            profiles: engine_profiles,
            out_dir: task.work_dir,
            options: Options {
                encoder: self.encoder,
                decoder: self.decoder,
                wall_bound: self.wall_bound,
                x264_preset: self.x264_preset.clone(),
                gpu,
                deadline: Some(deadline),
                cancel: task.cancel,
                media_duration: Some(std::time::Duration::from_millis(task.duration_ms.into())),
                ..Options::default()
            },
        };
        // The session's open decoder and encoders follow the segment to its thread and
        // come back with it (segments of one session arrive one at a time).
        let mut warm = self
            .warm
            .then(|| {
                task.warm
                    .lock()
                    .ok()
                    .and_then(|mut s| s.take())
                    .and_then(|b| b.downcast::<WarmSession>().ok())
                    .map(|b| *b)
            })
            .flatten()
            .unwrap_or_default();
        warm.follow(task.seq);
        let slot = task.warm.clone();
        let keep = self.warm;
        let report = tokio::task::spawn_blocking(move || {
            let r = transcode::transcode_warm(&request, &mut warm);
            if keep {
                if let Ok(mut s) = slot.lock() {
                    *s = Some(Box::new(warm));
                }
            }
            r
        })
        .await
        .map_err(|e| SegmentError::ours(format!("transcode thread failed: {e}")))?
        .map_err(|e| {
            if Instant::now() >= deadline {
                // The segment handler names the deadline; keep the engine's words too.
                SegmentError::ours(e.to_string())
            } else {
                SegmentError {
                    bad_input: e.is_bad_input(),
                    reason: e.to_string(),
                }
            }
        })?;
        let mut renditions = Vec::with_capacity(lp_profiles.len());
        for (i, lp) in lp_profiles.iter().enumerate() {
            // Rendition `i` is named `r{i}` on disk (see `profiles::to_engine`).
            let name = format!("r{i}");
            let Some(r) = report.renditions.iter().find(|r| r.profile == name) else {
                return Err(SegmentError::ours(format!(
                    "rendition {name} missing from the engine's report"
                )));
            };
            renditions.push(RenditionOutput {
                profile: lp.name.clone(),
                path: r.path.clone(),
                mime: r.mime,
                encoder: r.encoder.clone(),
                width: r.width,
                height: r.height,
                frames: r.frames,
                pixels: r.pixels,
                bytes: r.bytes,
            });
        }
        Ok(Transcoded {
            decoded_pixels: report.decoded_pixels,
            encoded_pixels: report.encoded_pixels,
            media_seconds: report.media_seconds,
            renditions,
            fallback_reason: report.fallback_reason,
            device: None,
            result_headers: Vec::new(),
            decoder_reused: report.warm.decoder_reused,
            encoders_reused: report.warm.encoders_reused,
        })
    }
}

impl SegmentPipeline for EnginePipeline {
    fn check(&self, profiles: &[VideoProfile]) -> Result<(), SegmentError> {
        profiles::to_engine(profiles)
            .map(|_| ())
            .map_err(SegmentError::input)
    }

    fn transcode(&self, task: SegmentTask) -> BoxFuture<'_, Result<Transcoded, SegmentError>> {
        Box::pin(self.run(task, self.gpu))
    }
}
