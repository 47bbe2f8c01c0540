//! The embedded AI runtime and model against independent references: Python onnxruntime
//! from the same wheel (the model's float output), and an ai-runner-compatible Python
//! server (`tests/it/common/ai_runner.py`) for the HTTP-runner backend.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::ai::{ai_env, init_runtime, test_picture, AiEnv};
use comine::ai::image::{decode_png, encode_png, Planar};
use comine::ai::runner::{extract_data_urls, Health, HttpRunner};
use comine::ai::{AiError, LoadOptions, Models, Provider, RunnerConfig};

fn load(env: &AiEnv, tile: u32) -> Arc<comine::ai::Upscaler> {
    init_runtime(env);
    // A fresh registry per call: tile sizes differ, and the registry would share one copy.
    Models::new()
        .load(
            comine::ai::TEST_MODEL_ID,
            &env.model,
            &LoadOptions {
                threads: 2,
                tile,
                provider: Provider::Cpu,
            },
        )
        .expect("the converted test model loads")
}

fn write_f32(path: &Path, data: &[f32]) {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Python onnxruntime's output for `input` (same model, same thread count).
fn python_reference(env: &AiEnv, input: &Planar, dir: &Path) -> (String, Vec<f32>) {
    let (inp, out) = (dir.join("in.f32"), dir.join("out.f32"));
    write_f32(&inp, &input.data);
    let script = format!(
        "import numpy as np, onnxruntime as ort\n\
         o = ort.SessionOptions(); o.intra_op_num_threads = 2\n\
         s = ort.InferenceSession(r'{model}', o, providers=['CPUExecutionProvider'])\n\
         x = np.fromfile(r'{inp}', dtype='<f4').reshape(1, 3, {h}, {w})\n\
         y = s.run(None, {{'input': x}})[0]\n\
         assert y.shape == (1, 3, {h4}, {w4}), y.shape\n\
         y.astype('<f4').tofile(r'{out}')\n\
         print(ort.__version__)\n",
        model = env.model.display(),
        inp = inp.display(),
        out = out.display(),
        h = input.height,
        w = input.width,
        h4 = input.height * 4,
        w4 = input.width * 4,
    );
    let res = Command::new(&env.python)
        .arg("-c")
        .arg(script)
        .output()
        .expect("run the venv's python");
    assert!(
        res.status.success(),
        "python onnxruntime failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let version = String::from_utf8_lossy(&res.stdout).trim().to_string();
    (version, read_f32(&out))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn real_model_on_cpu_matches_python_onnxruntime() {
    let Some(env) = ai_env() else { return };
    let up = load(&env, 0);
    assert_eq!(up.scale(), 4, "realesr-animevideov3-x4 is a x4 model");
    let img = test_picture(64, 64, 1);
    let input = Planar::from_rgb(&img);
    let ours = up.upscale_planar(&input).unwrap();
    assert_eq!((ours.width, ours.height), (256, 256));

    let dir = tempfile::tempdir().unwrap();
    let (py_version, reference) = python_reference(&env, &input, dir.path());
    let loaded = comine::ai::runtime::loaded().unwrap();
    assert_eq!(
        py_version, loaded.version,
        "the reference must run the same onnxruntime release as comine"
    );
    let diff = max_abs_diff(&ours.data, &reference);
    assert!(
        diff <= 1e-4,
        "comine's output differs from Python onnxruntime by {diff}"
    );
    // The model really upscales: the output is close to, but not, the nearest-neighbour copy.
    let nearest: f32 = (0..ours.data.len())
        .map(|i| {
            let (c, rem) = (i / (256 * 256), i % (256 * 256));
            let (y, x) = (rem / 256 / 4, rem % 256 / 4);
            (ours.data[i] - input.data[c * 64 * 64 + y * 64 + x]).abs()
        })
        .sum::<f32>()
        / ours.data.len() as f32;
    assert!(
        nearest > 0.005 && nearest < 0.2,
        "mean difference from a nearest-neighbour upscale is {nearest}"
    );
}

#[test]
fn tiled_upscale_equals_the_whole_frame() {
    let Some(env) = ai_env() else { return };
    let whole = load(&env, 0);
    let tiled = load(&env, 32);
    // 100x70: tiles of 32 with ragged right and bottom edges.
    let input = Planar::from_rgb(&test_picture(100, 70, 2));
    let a = whole.upscale_planar(&input).unwrap();
    let b = tiled.upscale_planar(&input).unwrap();
    assert_eq!((b.width, b.height), (400, 280));
    let diff = max_abs_diff(&a.data, &b.data);
    assert!(diff <= 1e-4, "tiled output differs by {diff}");
}

#[test]
fn png_in_png_out_is_four_times_the_input() {
    let Some(env) = ai_env() else { return };
    let up = load(&env, 256);
    let png = encode_png(&test_picture(48, 32, 3)).unwrap();
    let img = decode_png(&png, 1 << 20).unwrap();
    let out = encode_png(&up.upscale(&img).unwrap()).unwrap();
    let back = decode_png(&out, 1 << 30).unwrap();
    assert_eq!((back.width, back.height), (192, 128));
}

#[test]
fn one_model_is_loaded_once_per_device() {
    let Some(env) = ai_env() else { return };
    init_runtime(&env);
    let models = Models::new();
    let opts = LoadOptions {
        threads: 1,
        tile: 64,
        provider: Provider::Cpu,
    };
    let a = models.load("m", &env.model, &opts).unwrap();
    let b = models.load("m", &env.model, &opts).unwrap();
    assert!(
        Arc::ptr_eq(&a, &b),
        "the second load must return the loaded copy"
    );
    assert_eq!(models.list(), vec![("cpu".to_string(), "m".to_string())]);
    assert!(models.unload("m", Provider::Cpu));
    let c = models.load("m", &env.model, &opts).unwrap();
    assert!(!Arc::ptr_eq(&a, &c), "after unload a load is a new copy");
}

#[test]
fn a_missing_or_foreign_library_is_a_clear_error() {
    let err = comine::ai::runtime::probe(Path::new("/nonexistent/libonnxruntime.so")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("does not exist") && msg.contains("ai-setup.sh"),
        "{msg}"
    );

    // A real shared library that is not ONNX Runtime.
    let libz = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("zlib is installed");
    let msg = comine::ai::runtime::probe(Path::new(libz))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("is not ONNX Runtime"), "{msg}");

    // A file that is not a library at all.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not an ELF file").unwrap();
    let msg = comine::ai::runtime::probe(&fake).unwrap_err().to_string();
    assert!(msg.contains("cannot load ONNX Runtime library"), "{msg}");
}

#[test]
fn a_file_that_is_not_a_model_is_refused_at_load() {
    let Some(env) = ai_env() else { return };
    init_runtime(&env);
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, b"definitely not protobuf").unwrap();
    let err = Models::new()
        .load("bad", &bad, &LoadOptions::default())
        .unwrap_err();
    assert!(matches!(err, AiError::Model(_)), "{err:?}");
    let err = Models::new()
        .load(
            "gone",
            &dir.path().join("gone.onnx"),
            &LoadOptions::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

/// The Python ai-runner double, stopped on drop.
struct PyRunner {
    child: Child,
    url: String,
}

impl Drop for PyRunner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_runner(env: &AiEnv, extra: &[&str], token: Option<&str>) -> PyRunner {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/common/ai_runner.py");
    let mut cmd = Command::new(&env.python);
    cmd.arg(script)
        .arg(&env.model)
        .arg(comine::ai::TEST_MODEL_ID)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(t) = token {
        cmd.env("AUTH_TOKEN", t);
    }
    let mut child = cmd.spawn().expect("start the Python ai-runner");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("PORT ")
        .unwrap_or_else(|| panic!("ai_runner.py said {line:?}"));
    PyRunner {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

fn runner_client(url: &str, token: Option<&str>) -> HttpRunner {
    HttpRunner::new(
        RunnerConfig {
            url: url.into(),
            token: token.map(str::to_string),
            pipeline: "upscale".into(),
            model_id: comine::ai::TEST_MODEL_ID.into(),
        },
        Duration::from_secs(60),
    )
    .unwrap()
}

#[tokio::test]
async fn http_runner_backend_against_an_independent_ai_runner() {
    let Some(env) = ai_env() else { return };
    let runner = start_runner(&env, &["--load-delay", "1.5"], Some("s3cret"));
    let client = runner_client(&runner.url, Some("s3cret"));

    // LOADING first, then OK: LOADING is not ready.
    let first = client.health().await.unwrap();
    assert_eq!(first, Health::Loading);
    assert!(!first.ready());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = client.health().await.unwrap();
        if h.ready() {
            break;
        }
        assert!(Instant::now() < deadline, "runner never left {h:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(client.version().await.unwrap(), "0.14.1-comine-test");
    assert_eq!(
        client.hardware().await.unwrap()["model_id"],
        comine::ai::TEST_MODEL_ID
    );

    // One upscale: the runner's PNG is 4x and matches comine's own run of the same model.
    let picture = test_picture(40, 24, 4);
    let png = encode_png(&picture).unwrap();
    let out = client
        .run(
            &serde_json::json!({"prompt": "", "seed": 7, "image": null}),
            Some(("in.png", bytes::Bytes::from(png))),
        )
        .await
        .unwrap();
    let mut json = out.json;
    let files = extract_data_urls(&mut json, "42").unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(json["images"][0]["url"], "42_0.png");
    assert_eq!(json["images"][0]["seed"], 7);
    let theirs = decode_png(&files[0].data, 1 << 30).unwrap();
    assert_eq!((theirs.width, theirs.height), (160, 96));
    let ours = load(&env, 0).upscale(&picture).unwrap();
    let worst = ours
        .pixels
        .iter()
        .zip(&theirs.pixels)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        worst <= 1,
        "runner and embedded model differ by {worst} levels"
    );

    // Without the token: a clear refusal, not a panic.
    let anon = runner_client(&runner.url, None);
    let err = anon.health().await.unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
}

#[tokio::test]
async fn a_runner_that_answers_garbage_is_a_runner_error() {
    let Some(env) = ai_env() else { return };
    let runner = start_runner(&env, &["--garbage"], None);
    let client = runner_client(&runner.url, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.health().await.unwrap().ready() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let png = encode_png(&test_picture(16, 16, 5)).unwrap();
    let err = client
        .run(
            &serde_json::json!({}),
            Some(("in.png", bytes::Bytes::from(png))),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, AiError::Runner { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("not JSON") && msg.contains("502 upstream"),
        "{msg}"
    );

    // Nothing listening at all.
    let dead = runner_client("http://127.0.0.1:9", None);
    assert!(matches!(
        dead.health().await.unwrap_err(),
        AiError::Runner { .. }
    ));
}
