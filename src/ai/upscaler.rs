//! A super-resolution model in ONNX Runtime: one session per model per device, run tile by
//! tile so a large frame never needs more than one tile's activations.
//!
//! The model takes `[1, 3, h, w]` in 0–1 and returns `[1, 3, s·h, s·w]`; the scale `s` is
//! measured when the model loads (an 8×8 probe run), which also proves the file is such a
//! model before the first job. Tiles overlap by [`TILE_PAD`] input pixels, more than the
//! receptive radius of the compact Real-ESRGAN network (18 3×3 convolutions), so a tiled
//! result equals the whole-frame one up to float rounding.

use std::path::Path;
use std::sync::Mutex;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use super::image::{Planar, RgbImage};
use super::AiError;

/// Input pixels each tile borrows from its neighbours (≥ the model's receptive radius).
pub const TILE_PAD: u32 = 20;

/// Where a model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Provider {
    Cpu,
    /// ONNX Runtime's CUDA execution provider on this device index (onnxruntime-gpu).
    Cuda {
        device: u32,
    },
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Provider::Cpu => write!(f, "cpu"),
            Provider::Cuda { device } => write!(f, "cuda:{device}"),
        }
    }
}

/// How a model is loaded.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Intra-op threads (0: ONNX Runtime's default, one per core).
    pub threads: usize,
    /// Tile edge in input pixels (0: whole frames).
    pub tile: u32,
    pub provider: Provider,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            threads: 0,
            tile: 256,
            provider: Provider::Cpu,
        }
    }
}

/// A loaded super-resolution model. `run` needs the session exclusively, so jobs on one
/// model queue on its lock; the parallelism is ONNX Runtime's intra-op threads.
pub struct Upscaler {
    model_id: String,
    session: Mutex<Session>,
    input: String,
    scale: u32,
    tile: u32,
    provider: Provider,
}

impl std::fmt::Debug for Upscaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upscaler")
            .field("model_id", &self.model_id)
            .field("scale", &self.scale)
            .field("tile", &self.tile)
            .field("provider", &self.provider)
            .finish()
    }
}

fn ort_err(what: &str) -> impl Fn(ort::Error) -> AiError + '_ {
    move |e| AiError::Model(format!("{what}: {e}"))
}

impl Upscaler {
    /// Loads `path` (ONNX Runtime must be [`super::runtime::init`]ed) and measures its scale.
    pub fn load(model_id: &str, path: &Path, opts: &LoadOptions) -> Result<Upscaler, AiError> {
        if super::runtime::loaded().is_none() {
            return Err(AiError::Runtime(
                "ONNX Runtime is not loaded; call ai::runtime::init first".into(),
            ));
        }
        if !path.is_file() {
            return Err(AiError::Model(format!(
                "model file {} for {model_id} does not exist; run scripts/ai-setup.sh or fix [[ai.models]] path",
                path.display()
            )));
        }
        let what = format!("loading model {model_id} from {}", path.display());
        let mut builder = Session::builder()
            .map_err(ort_err(&what))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(ort_err(&what))?;
        if opts.threads > 0 {
            builder = builder
                .with_intra_threads(opts.threads)
                .map_err(ort_err(&what))?
                .with_inter_threads(1)
                .map_err(ort_err(&what))?;
        }
        if let Provider::Cuda { device } = opts.provider {
            let cuda = ort::execution_providers::CUDAExecutionProvider::default()
                .with_device_id(device as i32)
                .build()
                .error_on_failure();
            builder = builder.with_execution_providers([cuda]).map_err(|e| {
                AiError::Runtime(format!(
                    "{what}: the CUDA execution provider did not start on device {device} ({e}); \
                     use the onnxruntime-gpu {} library with CUDA 12 and cuDNN 9, or [ai] provider = \"cpu\"",
                    super::runtime::ORT_GPU_LIB_VERSION
                ))
            })?;
        }
        let session = builder.commit_from_file(path).map_err(ort_err(&what))?;
        if session.inputs.len() != 1 || session.outputs.len() != 1 {
            return Err(AiError::Model(format!(
                "{what}: expected one input and one output, found {} and {}",
                session.inputs.len(),
                session.outputs.len()
            )));
        }
        let input = session.inputs[0].name.clone();
        let mut up = Upscaler {
            model_id: model_id.to_string(),
            session: Mutex::new(session),
            input,
            scale: 1,
            tile: opts.tile,
            provider: opts.provider,
        };
        // Probe: proves the graph runs and measures the scale from the output shape.
        let probe = Planar {
            width: 8,
            height: 8,
            data: vec![0.5; 3 * 64],
        };
        let (oh, ow, _) = up.run_raw(&probe).map_err(|e| match e {
            AiError::Model(m) => AiError::Model(format!("{what}: probe run failed: {m}")),
            other => other,
        })?;
        if oh != ow || oh % 8 != 0 || oh < 8 {
            return Err(AiError::Model(format!(
                "{what}: an 8x8 input gave {ow}x{oh}; not a super-resolution model"
            )));
        }
        up.scale = (oh / 8) as u32;
        tracing::info!(model_id, scale = up.scale, provider = %up.provider, tile = up.tile, "model loaded");
        Ok(up)
    }

    pub fn model_id(&self) -> &str {
        &self.model_id
    }
    pub fn scale(&self) -> u32 {
        self.scale
    }
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// One session run on a whole planar image: (out_h, out_w, data).
    fn run_raw(&self, img: &Planar) -> Result<(usize, usize, Vec<f32>), AiError> {
        let shape = [1usize, 3, img.height as usize, img.width as usize];
        let tensor = TensorRef::from_array_view((shape, img.data.as_slice()))
            .map_err(ort_err("input tensor"))?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| classify_run_error(&self.model_id, e))?;
        let (shape, data) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(ort_err("reading the output"))?;
        if shape.len() != 4 || shape[0] != 1 || shape[1] != 3 {
            return Err(AiError::Model(format!(
                "model {} returned shape {shape:?}, expected [1, 3, H, W]",
                self.model_id
            )));
        }
        Ok((shape[2] as usize, shape[3] as usize, data.to_vec()))
    }

    /// Upscales a planar image, tile by tile when it is larger than the tile size.
    pub fn upscale_planar(&self, img: &Planar) -> Result<Planar, AiError> {
        let (w, h, s) = (img.width, img.height, self.scale);
        if self.tile == 0 || (w <= self.tile && h <= self.tile) {
            let (oh, ow, data) = self.run_raw(img)?;
            if oh != (h * s) as usize || ow != (w * s) as usize {
                return Err(AiError::Model(format!(
                    "model {} gave {ow}x{oh} for {w}x{h}, expected x{s}",
                    self.model_id
                )));
            }
            return Ok(Planar {
                width: w * s,
                height: h * s,
                data,
            });
        }
        let (ow, oh) = (w * s, h * s);
        let mut out = Planar {
            width: ow,
            height: oh,
            data: vec![0.0; 3 * ow as usize * oh as usize],
        };
        let t = self.tile;
        for ty in (0..h).step_by(t as usize) {
            for tx in (0..w).step_by(t as usize) {
                // The tile proper, and the padded window the model sees.
                let (x1, y1) = ((tx + t).min(w), (ty + t).min(h));
                let (px0, py0) = (tx.saturating_sub(TILE_PAD), ty.saturating_sub(TILE_PAD));
                let (px1, py1) = ((x1 + TILE_PAD).min(w), (y1 + TILE_PAD).min(h));
                let window = crop(img, px0, py0, px1 - px0, py1 - py0);
                let up = self.upscale_planar_whole(&window)?;
                // Copy the tile's own region back.
                let (ww, wh) = (up.width as usize, up.height as usize);
                let (ox, oy) = (((tx - px0) * s) as usize, ((ty - py0) * s) as usize);
                let (cw, ch) = (((x1 - tx) * s) as usize, ((y1 - ty) * s) as usize);
                for c in 0..3 {
                    for row in 0..ch {
                        let src = c * ww * wh + (oy + row) * ww + ox;
                        let dst = c * (ow * oh) as usize
                            + (ty as usize * s as usize + row) * ow as usize
                            + tx as usize * s as usize;
                        out.data[dst..dst + cw].copy_from_slice(&up.data[src..src + cw]);
                    }
                }
            }
        }
        Ok(out)
    }

    fn upscale_planar_whole(&self, img: &Planar) -> Result<Planar, AiError> {
        let (oh, ow, data) = self.run_raw(img)?;
        let s = self.scale as usize;
        if oh != img.height as usize * s || ow != img.width as usize * s {
            return Err(AiError::Model(format!(
                "model {} gave {ow}x{oh} for a {}x{} tile",
                self.model_id, img.width, img.height
            )));
        }
        Ok(Planar {
            width: ow as u32,
            height: oh as u32,
            data,
        })
    }

    /// Upscales an 8-bit RGB image.
    pub fn upscale(&self, img: &RgbImage) -> Result<RgbImage, AiError> {
        Ok(self.upscale_planar(&Planar::from_rgb(img))?.to_rgb())
    }
}

/// A copy of a rectangle of a planar image.
fn crop(img: &Planar, x: u32, y: u32, w: u32, h: u32) -> Planar {
    let (iw, ih) = (img.width as usize, img.height as usize);
    let mut data = Vec::with_capacity(3 * w as usize * h as usize);
    for c in 0..3 {
        for row in y as usize..(y + h) as usize {
            let start = c * iw * ih + row * iw + x as usize;
            data.extend_from_slice(&img.data[start..start + w as usize]);
        }
    }
    Planar {
        width: w,
        height: h,
        data,
    }
}

/// ONNX Runtime reports allocation failures as text; an out-of-memory run is its own error
/// so the caller can answer "out of memory" and the scheduler can react.
fn classify_run_error(model_id: &str, e: ort::Error) -> AiError {
    let msg = e.to_string();
    let lower = msg.to_ascii_lowercase();
    if lower.contains("out of memory")
        || lower.contains("failed to allocate")
        || lower.contains("bad_alloc")
        || lower.contains("cudaerrormemoryallocation")
    {
        AiError::OutOfMemory(format!("model {model_id}: {msg}"))
    } else {
        AiError::Model(format!("model {model_id} failed: {msg}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_takes_the_rectangle_in_every_plane() {
        let img = Planar {
            width: 4,
            height: 3,
            data: (0..36).map(|v| v as f32).collect(),
        };
        let c = crop(&img, 1, 1, 2, 2);
        assert_eq!(
            c.data,
            vec![5., 6., 9., 10., 17., 18., 21., 22., 29., 30., 33., 34.]
        );
    }
}
