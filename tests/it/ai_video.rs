//! Video-segment upscale with the real model on CPU: `comine ai upscale INPUT --out DIR`
//! decodes a segment, upscales every frame and encodes it with the transcode engine's
//! encoder, audio kept. The output is checked against the model applied to the decoded
//! input frame (and shown closer to it than a bicubic upscale), and bad input is refused
//! with a clear error.

use std::path::Path;
use std::process::Command;

use crate::common::ai::{ai_env, init_runtime};
use crate::common::{comine, generate, pattern, probe};

/// A 48x32, 5-frame H.264 segment with audio: small enough for the model on CPU.
pub fn tiny_segment() -> std::path::PathBuf {
    generate(
        "ai-48x32.ts",
        &pattern(48, 32, "10"),
        0.5,
        true,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ],
    )
}

/// Frame `n` of `path` as packed RGB24, optionally scaled by ffmpeg's bicubic scaler.
fn rgb_frame(path: &Path, scale: Option<(u32, u32)>) -> Vec<u8> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-i"]).arg(path);
    if let Some((w, h)) = scale {
        cmd.args(["-vf", &format!("scale={w}:{h}:flags=bicubic")]);
    }
    let out = cmd
        .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as i32 - *y as i32).unsigned_abs() as f64)
        .sum::<f64>()
        / a.len() as f64
}

fn cli_args<'a>(lib: &'a str, model: &'a str) -> Vec<&'a str> {
    vec![
        "--onnxruntime-lib",
        lib,
        "--model",
        model,
        "--threads",
        "2",
        "--encoder",
        "x264",
    ]
}

#[test]
fn a_segment_is_upscaled_four_times_frame_by_frame_with_audio_kept() {
    let Some(env) = ai_env() else { return };
    let input = tiny_segment();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (lib, model) = (
        env.lib.display().to_string(),
        env.model.display().to_string(),
    );
    let mut args = vec![
        "ai",
        "upscale",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend(cli_args(&lib, &model));
    let (ok, stdout, stderr) = comine(&args, None);
    assert!(ok, "comine ai upscale failed: {stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let src = probe(&input);
    let up = out.join("upscaled.ts");
    let p = probe(&up);
    assert_eq!((p.width, p.height), (4 * src.width, 4 * src.height));
    assert_eq!(p.frames, src.frames, "every frame upscaled, none dropped");
    assert!(src.has_audio && p.has_audio, "the audio is kept");
    assert_eq!(report["decoded_frames"], src.frames);
    assert_eq!(report["renditions"][0]["width"], 4 * src.width);

    // The first frame is the model's output (up to H.264 at 6 Mbit/s), not a plain resize.
    init_runtime(&env);
    let m = comine::ai::Upscaler::load(
        comine::ai::TEST_MODEL_ID,
        &env.model,
        &comine::ai::LoadOptions {
            threads: 2,
            tile: 0,
            provider: comine::ai::Provider::Cpu,
        },
    )
    .unwrap();
    let reference = m
        .upscale(&comine::ai::RgbImage {
            width: src.width,
            height: src.height,
            pixels: rgb_frame(&input, None),
        })
        .unwrap();
    let got = rgb_frame(&up, None);
    let bicubic = rgb_frame(&input, Some((4 * src.width, 4 * src.height)));
    let (d_model, d_bicubic) = (
        mean_abs_diff(&got, &reference.pixels),
        mean_abs_diff(&got, &bicubic),
    );
    assert!(d_model < 6.0, "mean |output - model| = {d_model:.2}");
    assert!(
        d_model < d_bicubic,
        "the output is closer to the model ({d_model:.2}) than to bicubic ({d_bicubic:.2})"
    );
}

#[test]
fn bad_input_to_the_video_upscale_is_a_clear_error() {
    let Some(env) = ai_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.ts");
    std::fs::write(&junk, b"this is not a video segment at all").unwrap();
    let out = dir.path().join("out");
    let (lib, model) = (
        env.lib.display().to_string(),
        env.model.display().to_string(),
    );
    let input = tiny_segment();
    let cases: [(&str, &str, Vec<&str>, &str); 3] = [
        (junk.to_str().unwrap(), &model, vec![], "not a media file"),
        (
            input.to_str().unwrap(),
            &model,
            vec!["--max-input-pixels", "100"],
            "above the ceiling",
        ),
        (
            input.to_str().unwrap(),
            "/nonexistent/model.onnx",
            vec![],
            "/nonexistent/model.onnx",
        ),
    ];
    for (file, model, extra, want) in cases {
        let mut args = vec!["ai", "upscale", file, "--out", out.to_str().unwrap()];
        args.extend(cli_args(&lib, model));
        args.extend(extra);
        let (ok, _, stderr) = comine(&args, None);
        assert!(!ok, "{file} must fail");
        assert!(stderr.contains(want), "{want:?} not in: {stderr}");
        assert!(
            !out.join("upscaled.ts").exists(),
            "no partial output is left behind"
        );
    }
}
