//! The AI tests' environment: ONNX Runtime's library, the converted test model and the
//! Python venv with the same onnxruntime wheel, all made by `scripts/ai-setup.sh` in the
//! cache. Outside CI a missing piece skips the test with a note; in CI (env `CI` set) it
//! fails, so the real model is never skipped there.

use std::path::PathBuf;

/// Paths of the AI test environment.
pub struct AiEnv {
    pub lib: PathBuf,
    pub model: PathBuf,
    pub python: PathBuf,
}

fn from_env(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or(default)
}

/// The environment, or `None` (outside CI) when `scripts/ai-setup.sh` has not run.
pub fn ai_env() -> Option<AiEnv> {
    let cache = comine::ai::cache_dir();
    let env = AiEnv {
        lib: from_env("COMINE_ORT_LIB", comine::ai::runtime::default_library()),
        model: from_env(
            "COMINE_AI_MODEL",
            comine::ai::default_model_path(comine::ai::TEST_MODEL_ID),
        ),
        python: from_env(
            "COMINE_AI_PYTHON",
            cache
                .join(format!("venv-ort{}", comine::ai::runtime::ORT_LIB_VERSION))
                .join("bin/python"),
        ),
    };
    let missing: Vec<String> = [&env.lib, &env.model, &env.python]
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return Some(env);
    }
    let msg = format!(
        "the AI test environment is missing ({}); run scripts/ai-setup.sh",
        missing.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("CI is set: {msg}. This test never skips in CI.");
    }
    eprintln!("\n*** SKIPPED: {msg} ***\n");
    None
}

/// ONNX Runtime loaded for this test process.
pub fn init_runtime(env: &AiEnv) {
    comine::ai::runtime::init(&env.lib).expect("ONNX Runtime from scripts/ai-setup.sh loads");
}

/// A deterministic test picture: gradients, a checkerboard and seeded noise, so the model
/// has edges, flat areas and texture to work on.
pub fn test_picture(w: u32, h: u32, seed: u64) -> comine::ai::RgbImage {
    let mut img = comine::ai::RgbImage::new(w, h);
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for (i, px) in img.pixels.chunks_exact_mut(3).enumerate() {
        let (x, y) = (i as u32 % w, i as u32 / w);
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let noise = (s % 24) as u32;
        let check = if (x / 8 + y / 8) % 2 == 0 { 180 } else { 40 };
        px[0] = (x * 255 / w.max(1)).min(231) as u8 + noise as u8;
        px[1] = (y * 255 / h.max(1)).min(231) as u8 + noise as u8;
        px[2] = (check + noise).min(255) as u8;
    }
    img
}
