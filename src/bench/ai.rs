//! The AI phase of `comine bench`: the embedded upscale model (ONNX Runtime through
//! `ai::upscaler`) on synthetic frames, alone and then beside the sealing workload, in
//! frames/s and Livepeer's billing units/s (upscale: input width × height per frame).
//!
//! The phase needs ONNX Runtime and a model (`scripts/ai-setup.sh` puts both in the
//! cache); without them, or without an `[ai]` section in the suite, the report says the
//! phase was skipped and why instead of failing the run.

use std::path::PathBuf;
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::ai::{LoadOptions, Provider, RgbImage, Upscaler};
use crate::report::schema::{AiFigures, AiPhaseReport, AiWorkload};

/// A loaded model and the frame it upscales.
pub struct AiBench {
    upscaler: Upscaler,
    frame: RgbImage,
    report: AiPhaseReport,
}

/// The report of a phase that did not run.
pub fn skipped(reason: impl Into<String>) -> AiPhaseReport {
    AiPhaseReport {
        status: "skipped".into(),
        skip_reason: Some(reason.into()),
        ..AiPhaseReport::default()
    }
}

impl AiBench {
    /// Loads ONNX Runtime and the model; `Err` is why the phase is skipped (see [`skipped`]).
    pub fn prepare(w: Option<&AiWorkload>) -> Result<AiBench, String> {
        let Some(w) = w else {
            return Err(
                "the suite has no [ai] section (add frame_width, frame_height and seconds to run the AI phase)".into(),
            );
        };
        let lib = w
            .onnxruntime_lib
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(crate::ai::runtime::default_library);
        let model = w
            .model
            .as_ref()
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::ai::default_model_path(crate::ai::TEST_MODEL_ID));
        if !lib.is_file() {
            return Err(format!(
                "ONNX Runtime is not available ({} does not exist): run scripts/ai-setup.sh or set [ai] onnxruntime_lib in the suite",
                lib.display()
            ));
        }
        if !model.is_file() {
            return Err(format!(
                "no upscale model ({} does not exist): run scripts/ai-setup.sh or set [ai] model in the suite",
                model.display()
            ));
        }
        let info = crate::ai::runtime::init(&lib)
            .map_err(|e| format!("ONNX Runtime did not load: {e}"))?;
        let model_id = model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| crate::ai::TEST_MODEL_ID.to_string());
        let opts = LoadOptions {
            threads: w.threads as usize,
            // Whole frames: the suite's frames are small, and tiling is measured elsewhere.
            tile: 0,
            provider: Provider::Cpu,
        };
        let upscaler = Upscaler::load(&model_id, &model, &opts)
            .map_err(|e| format!("the model did not load: {e}"))?;
        let report = AiPhaseReport {
            status: "ran".into(),
            skip_reason: None,
            model: model_id,
            runtime: format!("onnxruntime {} {}", info.version, upscaler.provider()),
            threads: w.threads,
            frame_width: w.frame_width,
            frame_height: w.frame_height,
            ..AiPhaseReport::default()
        };
        Ok(AiBench {
            frame: frame(w.frame_width, w.frame_height),
            upscaler,
            report,
        })
    }

    /// Upscales the frame back to back for `seconds` (at least one frame, so a window
    /// always has a figure; a cancel ends it early).
    pub fn window(&self, seconds: f64, cancel: &CancellationToken) -> Result<AiFigures, String> {
        let start = Instant::now();
        let mut frames = 0u64;
        loop {
            let out = self
                .upscaler
                .upscale(&self.frame)
                .map_err(|e| format!("upscale failed: {e}"))?;
            if out.width != self.frame.width * self.upscaler.scale() {
                return Err(format!(
                    "the model answered {}x{} for a {}x{} frame at x{}",
                    out.width,
                    out.height,
                    self.frame.width,
                    self.frame.height,
                    self.upscaler.scale()
                ));
            }
            frames += 1;
            if cancel.is_cancelled() || start.elapsed().as_secs_f64() >= seconds {
                break;
            }
        }
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let units = frames * self.frame.area();
        Ok(AiFigures {
            seconds: secs,
            frames,
            frames_per_s: frames as f64 / secs,
            units,
            units_per_s: units as f64 / secs,
        })
    }

    /// The report so far (model, runtime, frame size); the caller adds the figures.
    pub fn report(&self) -> AiPhaseReport {
        self.report.clone()
    }
}

/// A deterministic frame with edges and gradients (a flat frame would be unrealistic).
fn frame(w: u32, h: u32) -> RgbImage {
    let mut img = RgbImage::new(w, h);
    for (i, px) in img.pixels.chunks_exact_mut(3).enumerate() {
        let (x, y) = (i as u32 % w, i as u32 / w);
        px[0] = (x * 255 / w.max(1)) as u8;
        px[1] = (y * 255 / h.max(1)) as u8;
        px[2] = if (x / 8 + y / 8) % 2 == 0 { 200 } else { 40 };
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> AiWorkload {
        AiWorkload {
            model: None,
            onnxruntime_lib: None,
            frame_width: 64,
            frame_height: 64,
            seconds: 1.0,
            threads: 1,
        }
    }

    fn reason(r: Result<AiBench, String>) -> String {
        let Err(why) = r else {
            panic!("expected a skipped phase")
        };
        let r = skipped(why.clone());
        assert_eq!(r.status, "skipped");
        assert_eq!(r.skip_reason.as_deref(), Some(why.as_str()));
        why
    }

    #[test]
    fn without_an_ai_section_the_phase_is_skipped_with_its_reason() {
        assert!(reason(AiBench::prepare(None)).contains("no [ai] section"));
    }

    #[test]
    fn a_missing_runtime_or_model_skips_the_phase_and_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let w = AiWorkload {
            onnxruntime_lib: Some(dir.path().join("nope.so").display().to_string()),
            ..workload()
        };
        let why = reason(AiBench::prepare(Some(&w)));
        assert!(
            why.contains("ONNX Runtime is not available") && why.contains("nope.so"),
            "{why}"
        );
        let lib = dir.path().join("lib.so");
        std::fs::write(&lib, b"x").unwrap();
        let w = AiWorkload {
            onnxruntime_lib: Some(lib.display().to_string()),
            model: Some(dir.path().join("none.onnx").display().to_string()),
            ..workload()
        };
        let why = reason(AiBench::prepare(Some(&w)));
        assert!(
            why.contains("no upscale model") && why.contains("scripts/ai-setup.sh"),
            "{why}"
        );
    }
}
