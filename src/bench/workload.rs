//! Sealing workloads the suite drives: built-in (a `seal-worker` child), an external
//! command run over and over, a watched lotus node, or none.
//!
//! Each runs in its own process group so steering can SIGSTOP/SIGCONT it as a whole and
//! per-process CPU can be read from procfs. Everything that happens becomes a
//! timestamped [`SealEvent`]; throughput is computed from those events afterwards.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::seal::WorkerLine;

/// `--seal builtin|cmd:'…'|observe|none`.
#[derive(Clone, Debug, PartialEq)]
pub enum SealMode {
    Builtin,
    Cmd(String),
    Observe,
    None,
}

impl FromStr for SealMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "builtin" => Ok(SealMode::Builtin),
            "observe" => Ok(SealMode::Observe),
            "none" => Ok(SealMode::None),
            _ => match s.strip_prefix("cmd:") {
                Some(cmd) if !cmd.trim().is_empty() => Ok(SealMode::Cmd(cmd.trim().to_string())),
                Some(_) => Err("cmd: needs a command, e.g. cmd:'lotus-bench prove c2.json'".into()),
                None => Err(format!(
                    "unknown seal workload {s:?}: use builtin, cmd:'COMMAND', observe or none"
                )),
            },
        }
    }
}

impl SealMode {
    pub fn label(&self) -> &'static str {
        match self {
            SealMode::Builtin => "builtin",
            SealMode::Cmd(_) => "cmd",
            SealMode::Observe => "observe",
            SealMode::None => "none",
        }
    }
    /// Whether the benchmark controls (and so can steer) the workload.
    pub fn steerable(&self) -> bool {
        matches!(self, SealMode::Builtin | SealMode::Cmd(_))
    }
}

/// Something the sealing workload did, seconds after the run started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SealEvent {
    pub t_s: f64,
    /// `phase` (one built-in phase), `sector` (a built-in sector), `run` (an external
    /// command succeeded), `job` (an observed job finished), `failed`, `note`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A running sealing workload.
pub struct SealRunner {
    pgid: Arc<AtomicI32>,
    paused: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    events: Arc<Mutex<Vec<SealEvent>>>,
}

impl SealRunner {
    /// Start `mode`; `None` gives a runner that does nothing.
    pub fn start(
        mode: &SealMode,
        sector_size: &str,
        work_dir: &Path,
        clock: Instant,
        events: Arc<Mutex<Vec<SealEvent>>>,
    ) -> std::io::Result<SealRunner> {
        let pgid = Arc::new(AtomicI32::new(0));
        let paused = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        // A killed worker leaves its sector's layers behind; PC1 would reuse them.
        let _ = std::fs::remove_dir_all(work_dir);
        std::fs::create_dir_all(work_dir)?;
        let push = {
            let events = events.clone();
            move |kind: &str, phase: Option<String>, ms: Option<u64>, message: Option<String>| {
                if let Ok(mut ev) = events.lock() {
                    ev.push(SealEvent {
                        t_s: clock.elapsed().as_secs_f64(),
                        kind: kind.to_string(),
                        phase,
                        ms,
                        message,
                    });
                }
            }
        };
        let thread = match mode {
            SealMode::None => None,
            SealMode::Builtin => {
                let exe = std::env::current_exe()?;
                let log = std::fs::File::create(work_dir.join("seal-worker.log"))?;
                let mut child = spawn_group(
                    Command::new(exe)
                        .args([
                            "bench",
                            "seal-worker",
                            "--sector-size",
                            sector_size,
                            "--dir",
                        ])
                        .arg(work_dir)
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(log),
                )?;
                pgid.store(child.id() as i32, Ordering::SeqCst);
                let stdout = child.stdout.take();
                let stop = stop.clone();
                let log_path = work_dir.join("seal-worker.log");
                Some(std::thread::spawn(move || {
                    if let Some(out) = stdout {
                        for line in BufReader::new(out).lines() {
                            let Ok(line) = line else { break };
                            match serde_json::from_str::<WorkerLine>(&line) {
                                Ok(WorkerLine::Phase { phase, ms, .. }) => {
                                    push("phase", Some(phase), Some(ms), None)
                                }
                                Ok(WorkerLine::Sector { ms, .. }) => {
                                    push("sector", None, Some(ms), None)
                                }
                                Ok(WorkerLine::Note { message }) => {
                                    push("note", None, None, Some(message))
                                }
                                Ok(WorkerLine::Failed { message }) => {
                                    push("failed", None, None, Some(message))
                                }
                                Err(_) => {}
                            }
                        }
                    }
                    let status = child.wait();
                    if !stop.load(Ordering::SeqCst) {
                        let tail = log_tail(&log_path);
                        push(
                            "failed",
                            None,
                            None,
                            Some(format!(
                                "seal worker exited unexpectedly ({}): {tail}",
                                status
                                    .map(|s| s.to_string())
                                    .unwrap_or_else(|e| e.to_string())
                            )),
                        );
                    }
                }))
            }
            SealMode::Cmd(cmd) => {
                let cmd = cmd.clone();
                let (pgid, paused, stop) = (pgid.clone(), paused.clone(), stop.clone());
                let log_path = work_dir.join("seal-cmd.log");
                Some(std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if paused.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                        let started = Instant::now();
                        let result = std::fs::File::create(&log_path).and_then(|log| {
                            let err = log.try_clone()?;
                            spawn_group(
                                Command::new("sh")
                                    .arg("-c")
                                    .arg(&cmd)
                                    .stdin(Stdio::null())
                                    .stdout(log)
                                    .stderr(err),
                            )
                        });
                        let mut child = match result {
                            Ok(c) => c,
                            Err(e) => {
                                push(
                                    "failed",
                                    None,
                                    None,
                                    Some(format!("cannot start `{cmd}`: {e}")),
                                );
                                sleep_unless(&stop, Duration::from_secs(1));
                                continue;
                            }
                        };
                        pgid.store(child.id() as i32, Ordering::SeqCst);
                        let status = child.wait();
                        pgid.store(0, Ordering::SeqCst);
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let ms = started.elapsed().as_millis() as u64;
                        match status {
                            Ok(s) if s.success() => push("run", Some("cmd".into()), Some(ms), None),
                            Ok(s) => {
                                push(
                                    "failed",
                                    Some("cmd".into()),
                                    Some(ms),
                                    Some(format!("`{cmd}` failed ({s}): {}", log_tail(&log_path))),
                                );
                                // A command that fails at once must not spin the CPU.
                                sleep_unless(&stop, Duration::from_millis(500));
                            }
                            Err(e) => push(
                                "failed",
                                None,
                                Some(ms),
                                Some(format!("waiting for `{cmd}`: {e}")),
                            ),
                        }
                    }
                }))
            }
            SealMode::Observe => {
                let stop = stop.clone();
                Some(std::thread::spawn(move || observe_loop(&stop, push)))
            }
        };
        Ok(SealRunner {
            pgid,
            paused,
            stop,
            thread,
            events,
        })
    }

    /// Process id of the sealing process (group leader), for per-process CPU accounting.
    pub fn pid(&self) -> Option<u32> {
        match self.pgid.load(Ordering::SeqCst) {
            0 => None,
            p => Some(p as u32),
        }
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// SIGSTOP the sealing process group (steering).
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT the sealing process group.
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        let pg = self.pgid.load(Ordering::SeqCst);
        if pg > 0 {
            // SAFETY: kill(2) on our own child's process group; a stale id just fails.
            unsafe {
                libc::kill(-pg, sig);
            }
        }
    }

    /// Events recorded so far (shared with the caller).
    pub fn events(&self) -> Arc<Mutex<Vec<SealEvent>>> {
        self.events.clone()
    }

    /// Stop the workload: the sector or command in flight is killed and not counted.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGKILL);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SealRunner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn spawn_group(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0).spawn()
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Last few hundred bytes of a log, on one line, for failure messages.
fn log_tail(path: &PathBuf) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let t = text.trim();
    let start = t.len().saturating_sub(300);
    let start = (start..t.len())
        .find(|&i| t.is_char_boundary(i))
        .unwrap_or(t.len());
    let tail = t[start..].replace('\n', " | ");
    if tail.is_empty() {
        "no output".into()
    } else {
        tail
    }
}

/// `TOKEN:/ip4/HOST/tcp/PORT/http` → (token, host:port).
pub fn parse_api_info(info: &str) -> Option<(String, String)> {
    let (token, addr) = info.split_once(':')?;
    let parts: Vec<&str> = addr.split('/').collect();
    // ["", "ip4", HOST, "tcp", PORT, "http"]
    let host = parts.get(2)?;
    let port = parts.get(4)?;
    Some((token.to_string(), format!("{host}:{port}")))
}

/// Watch the miner's `Filecoin.WorkerJobs` once a second and time each job from first
/// sight to disappearance. Read-only: observe never steers.
fn observe_loop(
    stop: &AtomicBool,
    push: impl Fn(&str, Option<String>, Option<u64>, Option<String>),
) {
    let info = std::env::var("MINER_API_INFO").unwrap_or_default();
    let Some((token, addr)) = parse_api_info(&info) else {
        push(
            "failed",
            None,
            None,
            Some("observe needs MINER_API_INFO=TOKEN:/ip4/HOST/tcp/PORT/http (an admin token of the lotus-miner the worker is attached to)".into()),
        );
        return;
    };
    let mut running: std::collections::HashMap<String, (String, Instant)> = Default::default();
    let mut last_error = String::new();
    while !stop.load(Ordering::SeqCst) {
        match rpc(&addr, &token, "Filecoin.WorkerJobs") {
            Ok(v) => {
                let mut seen = std::collections::HashSet::new();
                if let Some(workers) = v.get("result").and_then(|r| r.as_object()) {
                    for jobs in workers.values().filter_map(|j| j.as_array()) {
                        for job in jobs {
                            let running_now =
                                job.get("RunWait").and_then(|r| r.as_i64()) == Some(0);
                            let id = job
                                .pointer("/ID/ID")
                                .map(|x| x.to_string())
                                .unwrap_or_default();
                            let task = job.get("Task").and_then(|t| t.as_str()).unwrap_or("?");
                            if running_now && !id.is_empty() {
                                seen.insert(id.clone());
                                running
                                    .entry(id)
                                    .or_insert_with(|| (task.to_string(), Instant::now()));
                            }
                        }
                    }
                }
                let done: Vec<String> = running
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for id in done {
                    if let Some((task, since)) = running.remove(&id) {
                        push(
                            "job",
                            Some(task),
                            Some(since.elapsed().as_millis() as u64),
                            None,
                        );
                    }
                }
            }
            Err(e) => {
                if e != last_error {
                    push("failed", None, None, Some(format!("observe: {e}")));
                    last_error = e;
                }
            }
        }
        sleep_unless(stop, Duration::from_secs(1));
    }
}

/// Minimal JSON-RPC over plain HTTP/1.1 to a local lotus API (no TLS there).
fn rpc(addr: &str, token: &str, method: &str) -> Result<serde_json::Value, String> {
    use std::net::TcpStream;
    let body = format!(r#"{{"jsonrpc":"2.0","method":"{method}","params":[],"id":1}}"#);
    let mut s = TcpStream::connect(addr).map_err(|e| format!("cannot reach {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let req = format!(
        "POST /rpc/v0 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.take(64 << 20)
        .read_to_string(&mut resp)
        .map_err(|e| e.to_string())?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "{addr} answered {}",
            head.lines().next().unwrap_or("")
        ));
    }
    // lotus answers without chunking for small bodies; take the JSON object.
    let start = body.find('{').ok_or("no JSON in response")?;
    let end = body.rfind('}').ok_or("no JSON in response")?;
    serde_json::from_str(&body[start..=end]).map_err(|e| format!("bad JSON-RPC answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes() {
        assert_eq!("builtin".parse::<SealMode>(), Ok(SealMode::Builtin));
        assert_eq!(
            "cmd:lotus-bench prove c2.json".parse::<SealMode>(),
            Ok(SealMode::Cmd("lotus-bench prove c2.json".into()))
        );
        assert!("cmd:".parse::<SealMode>().is_err());
        assert!("bogus".parse::<SealMode>().unwrap_err().contains("builtin"));
    }

    #[test]
    fn parses_api_info() {
        assert_eq!(
            parse_api_info("abc.def:/ip4/127.0.0.1/tcp/2345/http"),
            Some(("abc.def".into(), "127.0.0.1:2345".into()))
        );
    }

    #[test]
    fn failing_command_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let r = SealRunner::start(
            &SealMode::Cmd("echo boom >&2; exit 3".into()),
            "2KiB",
            dir.path(),
            Instant::now(),
            events.clone(),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        r.stop();
        let ev = events.lock().unwrap();
        let failed = ev
            .iter()
            .find(|e| e.kind == "failed")
            .expect("a failure event");
        let msg = failed.message.as_deref().unwrap();
        assert!(msg.contains("boom") && msg.contains('3'), "{msg}");
    }
}
