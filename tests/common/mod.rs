//! Shared harness for `tests/daemon_*.rs`: runs the real `comine` binary on a temp
//! data directory with a random port, and makes tiny real segments with ffmpeg.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_comine");

/// A 320x180, 1 s, 30 fps H.264 MPEG-TS segment (real media, tiny).
pub fn segment(dir: &Path, name: &str, pattern: &str) -> Vec<u8> {
    let out = dir.join(name);
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("{pattern}=size=320x180:rate=30"))
        .args([
            "-t",
            "1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
            "-pix_fmt",
            "yuv420p",
            "-f",
            "mpegts",
        ])
        .arg(&out)
        .status()
        .expect("ffmpeg CLI is installed");
    assert!(status.success(), "ffmpeg could not make a test segment");
    std::fs::read(&out).unwrap()
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
        let data = root.join("data");
        let addr_file = data.join("api.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(root.join("daemon.log"))
            .unwrap();
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0"])
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
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "daemon did not start; log:\n{}",
                std::fs::read_to_string(root.join("daemon.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let token = std::fs::read_to_string(data.join("api-token"))
            .unwrap()
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
        let start = Instant::now();
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.success();
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
