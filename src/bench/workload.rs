//! Sealing workloads the suite drives: built-in (a `seal-worker` child), an external
//! command run over and over, a watched lotus node, or none.
//!
//! Each runs in its own process group so steering can SIGSTOP/SIGCONT it as a whole and
//! per-process CPU can be read from procfs. Everything that happens becomes a
//! timestamped [`SealEvent`]; throughput is computed from those events afterwards.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::seal::WorkerLine;
pub use crate::report::schema::SealEvent;

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
                let info = std::env::var("MINER_API_INFO").unwrap_or_default();
                Some(std::thread::spawn(move || observe_loop(&info, &stop, push)))
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

/// Watch the miner's `Filecoin.WorkerJobs` once a second and time each job from first
/// sight running (`RunWait == 0`) to its disappearance. Read-only: observe never steers.
/// `info` is `MINER_API_INFO` (`TOKEN:/ip4/HOST/tcp/PORT/http`).
fn observe_loop(
    info: &str,
    stop: &AtomicBool,
    push: impl Fn(&str, Option<String>, Option<u64>, Option<String>),
) {
    use crate::seal::rpc::{ApiInfo, RpcClient};
    let Ok(api) = ApiInfo::parse(info) else {
        push(
            "failed",
            None,
            None,
            Some("observe needs MINER_API_INFO=TOKEN:/ip4/HOST/tcp/PORT/http (an admin token of the lotus-miner the worker is attached to)".into()),
        );
        return;
    };
    // The seal controllers' JSON-RPC client (lotus chunks long job lists), on a small
    // runtime of this thread's own.
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            let client = RpcClient::new(api, Duration::from_secs(5)).map_err(|e| e.to_string())?;
            Ok((rt, client))
        });
    let (rt, client) = match setup {
        Ok(x) => x,
        Err(e) => {
            push("failed", None, None, Some(format!("observe: {e}")));
            return;
        }
    };
    let mut running: std::collections::HashMap<String, (String, Instant)> = Default::default();
    let mut last_error = String::new();
    while !stop.load(Ordering::SeqCst) {
        match rt.block_on(client.call("Filecoin.WorkerJobs", serde_json::json!([]))) {
            Ok(v) => {
                last_error.clear();
                let mut seen = std::collections::HashSet::new();
                if let Some(workers) = v.as_object() {
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
                let e = match e {
                    crate::seal::SealError::Unauthorized { url, status } => format!(
                        "{url} refused the token ({status}): MINER_API_INFO needs an admin token (lotus-miner auth api-info --perm admin)"
                    ),
                    other => other.to_string(),
                };
                if e != last_error {
                    push("failed", None, None, Some(format!("observe: {e}")));
                    last_error = e;
                }
            }
        }
        sleep_unless(stop, Duration::from_secs(1));
    }
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

    /// A lotus-miner double: `Filecoin.WorkerJobs` lists one running PC2 job (padded with
    /// assigned jobs so the answer is chunked) for the first polls, then none.
    fn fake_miner(polls_with_job: usize) -> (String, std::thread::JoinHandle<()>) {
        use axum::routing::post;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/rpc/v0",
                    post(move |headers: axum::http::HeaderMap, body: String| {
                        let calls = calls.clone();
                        async move {
                            use axum::response::IntoResponse;
                            if headers.get("authorization").and_then(|h| h.to_str().ok())
                                != Some("Bearer admintoken")
                            {
                                return axum::http::StatusCode::UNAUTHORIZED.into_response();
                            }
                            assert!(body.contains("Filecoin.WorkerJobs"));
                            let n = calls.fetch_add(1, Ordering::SeqCst);
                            let mut jobs: Vec<serde_json::Value> = (0..200)
                                .map(|i| serde_json::json!({"ID": {"Sector": {"Miner": 1000, "Number": i}, "ID": format!("queued-{i}")}, "Task": "seal/v0/precommit/1", "RunWait": 2}))
                                .collect();
                            if n < polls_with_job {
                                jobs.push(serde_json::json!({"ID": {"Sector": {"Miner": 1000, "Number": 7}, "ID": "4a5b-pc2"}, "Task": "seal/v0/precommit/2", "RunWait": 0, "Hostname": "rig1"}));
                            }
                            let v = serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"worker-uuid": jobs}});
                            // Streamed without a length: chunked, as lotus answers large lists.
                            let chunks: Vec<Result<String, std::io::Error>> = v
                                .to_string()
                                .into_bytes()
                                .chunks(1000)
                                .map(|c| Ok(String::from_utf8_lossy(c).into_owned()))
                                .collect();
                            axum::body::Body::from_stream(futures_util::stream::iter(chunks))
                                .into_response()
                        }
                    }),
                );
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let _ = tokio::time::timeout(Duration::from_secs(20), async move {
                    axum::serve(listener, app).await
                })
                .await;
            });
        });
        (format!("/ip4/127.0.0.1/tcp/{}/http", addr.port()), handle)
    }

    #[test]
    fn observe_times_a_job_from_a_chunked_worker_jobs_answer() {
        let (path, _server) = fake_miner(2);
        let stop = Arc::new(AtomicBool::new(false));
        type Event = (String, Option<String>, Option<u64>, Option<String>);
        let events: Arc<Mutex<Vec<Event>>> = Default::default();
        let (ev, st) = (events.clone(), stop.clone());
        let info = format!("admintoken:{path}");
        let t = std::thread::spawn(move || {
            observe_loop(&info, &st, |k, task, ms, msg| {
                ev.lock().unwrap().push((k.to_string(), task, ms, msg));
            })
        });
        let start = Instant::now();
        while !events.lock().unwrap().iter().any(|e| e.0 == "job") {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{:?}",
                events.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap();
        let ev = events.lock().unwrap();
        let jobs: Vec<_> = ev.iter().filter(|e| e.0 == "job").collect();
        // Only the running job is timed; the 200 assigned ones are not.
        assert_eq!(jobs.len(), 1, "{ev:?}");
        assert_eq!(jobs[0].1.as_deref(), Some("seal/v0/precommit/2"));
        // Seen on two polls a second apart: about one second.
        let ms = jobs[0].2.unwrap();
        assert!((500..5_000).contains(&ms), "{ms}");
        assert!(!ev.iter().any(|e| e.0 == "failed"), "{ev:?}");
    }

    #[test]
    fn observe_reports_a_refused_token_and_a_missing_api_info() {
        let (path, _server) = fake_miner(0);
        let stop = Arc::new(AtomicBool::new(false));
        let events: Arc<Mutex<Vec<String>>> = Default::default();
        let (ev, st) = (events.clone(), stop.clone());
        let info = format!("readtoken:{path}");
        let t = std::thread::spawn(move || {
            observe_loop(&info, &st, |k, _, _, msg| {
                ev.lock()
                    .unwrap()
                    .push(format!("{k}: {}", msg.unwrap_or_default()))
            })
        });
        let start = Instant::now();
        while events.lock().unwrap().is_empty() {
            assert!(start.elapsed() < Duration::from_secs(15));
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap();
        let first = events.lock().unwrap()[0].clone();
        assert!(
            first.starts_with("failed") && first.contains("admin token"),
            "{first}"
        );

        let events: Mutex<Vec<String>> = Default::default();
        observe_loop("", &AtomicBool::new(false), |k, _, _, msg| {
            events
                .lock()
                .unwrap()
                .push(format!("{k}: {}", msg.unwrap_or_default()))
        });
        assert!(events.lock().unwrap()[0].contains("MINER_API_INFO"));
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
