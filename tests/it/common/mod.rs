//! Shared test helpers: media generated on the fly with the `ffmpeg` CLI (FFmpeg's
//! lavfi test sources with noise and motion so encoders do real work), and ffprobe
//! readings used as the independent check of what comine wrote.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use comine::store::KuboClient;

pub mod ai;
pub mod killer;
pub mod kubo;
pub mod media;
pub mod mutate;
pub use media::{generate, pattern};
use serde_json::Value;

/// A 1 s 640x360 30 fps MPEG-TS segment with AAC audio.
pub fn segment_360p() -> PathBuf {
    generate(
        "seg360.ts",
        &pattern(640, 360, "30"),
        1.0,
        true,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-c:a",
            "aac",
        ],
    )
}

/// The Livepeer tests' segment: 1 s, 320x180, 30 fps H.264 MPEG-TS, no audio.
pub fn lp_segment() -> bytes::Bytes {
    let path = generate(
        "lp180.ts",
        &pattern(320, 180, "30"),
        1.0,
        false,
        &["-c:v", "libx264", "-preset", "ultrafast", "-g", "30"],
    );
    bytes::Bytes::from(std::fs::read(path).expect("read the generated segment"))
}

/// Livepeer's P144p30fps16x9 rung as an orchestrator sends it (constrained high, 1 s GOP).
pub fn lp_p144p() -> comine::livepeer::proto::VideoProfile {
    use comine::livepeer::proto::{H264Profile, VideoProfile};
    VideoProfile {
        name: "P144p30fps16x9".into(),
        width: 256,
        height: 144,
        bitrate: 400_000,
        fps: 30,
        fps_den: 1,
        gop: 1000,
        profile: H264Profile::H264ConstrainedHigh as i32,
        ..Default::default()
    }
}

/// What ffprobe says about the first video stream of `path`.
#[derive(Debug)]
pub struct Probe {
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    pub start_time: f64,
    pub has_audio: bool,
    pub first_pict_type: String,
    pub first_key: bool,
}

pub fn probe(path: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
        ])
        .arg("stream=width,height,nb_read_frames,start_time")
        .args(["-of", "default=nw=1"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(out.status.success(), "ffprobe failed on {}", path.display());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("ffprobe gave no {k} for {}: {text}", path.display()))
            .to_string()
    };
    let frames_out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-read_intervals",
            "%+#1",
        ])
        .args([
            "-show_entries",
            "frame=pict_type,key_frame",
            "-of",
            "default=nw=1",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    let ftext = String::from_utf8_lossy(&frames_out.stdout).to_string();
    let audio = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "a",
            "-show_entries",
            "stream=index",
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    Probe {
        width: get("width").parse().unwrap(),
        height: get("height").parse().unwrap(),
        frames: get("nb_read_frames").parse().unwrap(),
        start_time: get("start_time").parse().unwrap_or(0.0),
        has_audio: !String::from_utf8_lossy(&audio.stdout).trim().is_empty(),
        first_pict_type: ftext
            .lines()
            .find_map(|l| l.strip_prefix("pict_type="))
            .unwrap_or("")
            .to_string(),
        first_key: ftext.lines().any(|l| l == "key_frame=1"),
    }
}

/// Runs the real binary; returns (exit success, stdout, stderr).
pub fn comine(args: &[&str], stdin: Option<&[u8]>) -> (bool, String, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_comine"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn comine");
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let out = child.wait_with_output().expect("wait comine");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

// ---- storage helpers ----

/// Deterministic, incompressible-looking test data (xorshift).
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The shared Kubo node (see [`kubo::node`]).
pub fn node() -> Option<KuboClient> {
    kubo::node()
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A TCP server that answers every request with `reply` (to test garbage answers).
pub fn garbage_server(reply: &'static [u8]) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 65536];
            let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(reply);
        }
    });
    format!("http://{addr}")
}

// ---- daemon helpers ----
pub const BIN: &str = env!("CARGO_BIN_EXE_comine");

/// A 320x180, 1 s, 30 fps H.264 MPEG-TS segment of lavfi source `pattern` (real media,
/// tiny), generated once and copied to `dir/name`.
pub fn segment(dir: &Path, name: &str, pattern: &str) -> Vec<u8> {
    let cached = generate(
        &format!("seg320-{pattern}.ts"),
        &format!("{pattern}=size=320x180:rate=30"),
        1.0,
        false,
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
        ],
    );
    let bytes = std::fs::read(&cached).expect("read the generated segment");
    std::fs::write(dir.join(name), &bytes).expect("copy the test segment");
    bytes
}

pub struct Daemon {
    pub child: Option<Child>,
    pub data: PathBuf,
    pub config: PathBuf,
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

/// Config for fast tests: libx264 ultrafast, random port, plus `extra` TOML.
/// Waits up to `limit` for `child` to exit (polling every 50 ms); past it, kills the child
/// and answers `None`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a child wrote on its piped stderr (empty when stderr was not piped).
pub fn stderr_of(child: &mut Child) -> String {
    use std::io::Read;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    err
}

pub fn write_config(root: &Path, extra: &str) -> PathBuf {
    let path = root.join("comine.toml");
    let text = format!(
        "{extra}\n[transcode]\nencoder = \"x264\"\ndecoder = \"software\"\nx264_preset = \"ultrafast\"\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

impl Daemon {
    pub fn start(root: &Path, config: &Path) -> Daemon {
        Self::start_with(root, config, &[])
    }

    /// `comine run` with extra flags (e.g. `--orch-addr …`).
    pub fn start_with(root: &Path, config: &Path, extra: &[&str]) -> Daemon {
        let data = root.join("data");
        let addr_file = data.join("api.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("daemon.log"))
            .unwrap();
        let mut child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "comine=debug,info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn comine run");
        let start = Instant::now();
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                if !a.trim().is_empty() {
                    break a.trim().to_string();
                }
            }
            // A daemon that stops at once (a refused link) may write api.addr and remove it
            // again between two looks: its exit is for the test to check, not a hang.
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!(
                    "comine run exited ({status}) before it could be reached; log:\n{}",
                    std::fs::read_to_string(root.join("daemon.log")).unwrap_or_default()
                );
                break String::new();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "daemon did not start; log:\n{}",
                std::fs::read_to_string(root.join("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let token = std::fs::read_to_string(data.join("api-token"))
            .unwrap_or_default()
            .trim()
            .to_string();
        Daemon {
            child: Some(child),
            data,
            config: config.to_path_buf(),
            base: format!("http://{addr}"),
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn submit(&self, query: &str, body: Vec<u8>) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/transcode?{query}")))
            .bearer_auth(&self.token)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Polls a job until it is done or failed.
    pub async fn wait_job(&self, id: &str) -> Value {
        let start = Instant::now();
        loop {
            let j = self.get_json(&format!("/v1/jobs/{id}")).await;
            if j["state"] == "done" || j["state"] == "failed" {
                return j;
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "job {id} stuck: {j}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status success.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        wait_exit(&mut c, Duration::from_secs(60)).is_some_and(|s| s.success())
    }

    /// `comine <args>` against this daemon's data dir and config; stdout.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.parent().unwrap().join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
