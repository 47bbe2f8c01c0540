//! Upscale throughput: comine's embedded model (ort over libonnxruntime) against Python
//! onnxruntime from the same wheel, on the same model, frames and thread count, in the
//! same run. Target: time per frame ratio ort / Python ≤ 1.05.
//!
//! Rounds alternate the two so machine load drifts hit both; each side times only the
//! session runs on pre-converted float frames (Python's interpreter start and imports are
//! outside its timer, as our process start is outside ours). The headline is the ratio of
//! medians of the per-round means.
//!
//! `cargo bench --bench ai [-- --size 256 --frames 6 --rounds 5 --threads 2]`
//! Needs `scripts/ai-setup.sh` (or COMINE_ORT_LIB, COMINE_AI_MODEL, COMINE_AI_PYTHON).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use comine::ai::image::{Planar, RgbImage};
use comine::ai::{LoadOptions, Models, Provider};

fn arg(name: &str, default: u32) -> u32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_path(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or(default)
}

fn frame(size: u32, seed: u64) -> Planar {
    let mut img = RgbImage::new(size, size);
    let mut s = seed | 1;
    for (i, px) in img.pixels.chunks_exact_mut(3).enumerate() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let (x, y) = (i as u32 % size, i as u32 / size);
        px[0] = (x * 255 / size) as u8 ^ (s as u8 & 15);
        px[1] = (y * 255 / size) as u8;
        px[2] = if (x / 16 + y / 16) % 2 == 0 { 200 } else { 30 };
    }
    Planar::from_rgb(&img)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let size = arg("--size", 256);
    let frames = arg("--frames", 6) as usize;
    let rounds = arg("--rounds", 5) as usize;
    let threads = arg("--threads", 2) as usize;
    let cache = comine::ai::cache_dir();
    let lib = env_path("COMINE_ORT_LIB", comine::ai::runtime::default_library());
    let model = env_path(
        "COMINE_AI_MODEL",
        comine::ai::default_model_path(comine::ai::TEST_MODEL_ID),
    );
    let python = env_path(
        "COMINE_AI_PYTHON",
        cache.join(format!(
            "venv-ort{}/bin/python",
            comine::ai::runtime::ORT_LIB_VERSION
        )),
    );
    for p in [&lib, &model, &python] {
        anyhow::ensure!(
            p.exists(),
            "{} is missing: run scripts/ai-setup.sh",
            p.display()
        );
    }
    let rt = comine::ai::runtime::init(&lib)?;
    let up = Models::new().load(
        comine::ai::TEST_MODEL_ID,
        &model,
        &LoadOptions {
            threads,
            tile: 0,
            provider: Provider::Cpu,
        },
    )?;

    // The same frames for both sides, as raw little-endian float32 [n, 3, s, s].
    let inputs: Vec<Planar> = (0..frames)
        .map(|i| frame(size, 0x5EED + i as u64))
        .collect();
    let dir = tempfile::tempdir()?;
    let raw = dir.path().join("frames.f32");
    let bytes: Vec<u8> = inputs
        .iter()
        .flat_map(|p| p.data.iter().flat_map(|v| v.to_le_bytes()))
        .collect();
    std::fs::write(&raw, bytes)?;
    let script = format!(
        "import time, numpy as np, onnxruntime as ort\n\
         o = ort.SessionOptions(); o.intra_op_num_threads = {threads}; o.inter_op_num_threads = 1\n\
         s = ort.InferenceSession(r'{model}', o, providers=['CPUExecutionProvider'])\n\
         x = np.fromfile(r'{raw}', dtype='<f4').reshape({frames}, 1, 3, {size}, {size})\n\
         s.run(None, {{'input': x[0]}})\n\
         t = time.perf_counter()\n\
         for f in x: s.run(None, {{'input': f}})\n\
         print((time.perf_counter() - t) / {frames})\n",
        model = model.display(),
        raw = raw.display(),
    );

    println!(
        "ai upscale: {} {size}x{size} -> {}x{}, {frames} frames x {rounds} rounds, {threads} threads, ONNX Runtime {}",
        comine::ai::TEST_MODEL_ID,
        size * 4,
        size * 4,
        rt.version
    );
    up.upscale_planar(&inputs[0])?; // warm-up, as Python's first run
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let t = Instant::now();
        for f in &inputs {
            std::hint::black_box(up.upscale_planar(f)?);
        }
        let o = t.elapsed().as_secs_f64() / frames as f64;
        let out = Command::new(&python).arg("-c").arg(&script).output()?;
        anyhow::ensure!(
            out.status.success(),
            "python onnxruntime failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let p: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        println!(
            "  round {round}: ort {:.1} ms/frame, python onnxruntime {:.1} ms/frame",
            o * 1e3,
            p * 1e3
        );
        ours.push(o);
        theirs.push(p);
    }
    let (o, p) = (median(&mut ours), median(&mut theirs));
    let ratio = o / p;
    println!(
        "ort {:.1} ms/frame ({:.2} frames/s), python onnxruntime {:.1} ms/frame ({:.2} frames/s)",
        o * 1e3,
        1.0 / o,
        p * 1e3,
        1.0 / p
    );
    println!(
        "ratio ort/python = {ratio:.3} (target <= 1.05): {}",
        if ratio <= 1.05 { "PASS" } else { "MISS" }
    );
    Ok(())
}
