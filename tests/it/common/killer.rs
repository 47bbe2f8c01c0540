//! A kill campaign against the real `comine run` binary, shared by the stress test
//! (`tests/daemon_stress.rs`, a few kills) and the long run (`benchmarks/durability.rs`, 1,000):
//!
//! - clients submit async jobs (manifest `stress`, one idempotency key per sequence number),
//!   resubmit acknowledged ones with the same key now and then, and resubmit every unanswered
//!   one (connection lost, 503) until it is answered, as the client did;
//! - the daemon is SIGKILLed at random moments and restarted at once;
//! - a watcher thread asks `/healthz` every 100 ms over a raw socket and records how long each
//!   answer took while the daemon was up (and `/v1/status`'s running-job count);
//! - at the end the backlog drains and the ledger is checked: every acknowledged job is `done`
//!   exactly once, each key is one job, and the pixel counters equal the sum over jobs.
//!
//! Self-contained (no `common` helpers), so the benchmark can include it with `#[path]`.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const PROFILE: &str = "P144p30fps16x9";
pub const MANIFEST: &str = "stress";

pub struct Plan {
    pub bin: PathBuf,
    pub root: PathBuf,
    pub config: PathBuf,
    /// Segments to submit (distinct media keeps renditions distinct).
    pub segments: Vec<Vec<u8>>,
    pub kills: u32,
    /// Random uptime before each kill, ms.
    pub uptime_ms: (u64, u64),
    /// Concurrent submitting clients.
    pub clients: usize,
    /// Stop submitting new keys beyond this many.
    pub max_keys: u64,
    /// Longest the final drain may take.
    pub drain_limit: Duration,
    /// Print progress every this many kills (0: never).
    pub progress_every: u32,
}

/// What the watcher saw.
#[derive(Debug, Default, Clone)]
pub struct Health {
    pub samples: u64,
    pub ok: u64,
    pub unavailable: u64,
    pub slowest_ms: u64,
    /// Answers that took longer than 1 s.
    pub over_1s: u64,
    /// Most jobs `/v1/status` reported running at once.
    pub peak_running: u64,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub kills: u32,
    pub keys: u64,
    pub submissions: u64,
    pub resubmissions: u64,
    pub acked: u64,
    /// A resubmission answered with another job id than its key's first answer.
    pub id_mismatches: u64,
    pub jobs_done: u64,
    pub drain_secs: f64,
    pub backlog_at_drain: u64,
    pub load_secs: f64,
    pub health: Health,
    pub encoded_pixels: u64,
    pub problems: Vec<String>,
}

struct Running {
    child: Child,
    base: String,
    token: String,
}

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn start(plan: &Plan) -> Running {
    let data = plan.root.join("data");
    let addr_file = data.join("api.addr");
    let _ = std::fs::remove_file(&addr_file);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(plan.root.join("daemon.log"))
        .expect("daemon log");
    let child = Command::new(&plan.bin)
        .arg("run")
        .arg("--config")
        .arg(&plan.config)
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn comine run");
    let t = Instant::now();
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            if !a.trim().is_empty() {
                break a.trim().to_string();
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "daemon did not start; see {}",
            plan.root.join("daemon.log").display()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let token = std::fs::read_to_string(data.join("api-token"))
        .expect("token")
        .trim()
        .to_string();
    Running {
        child,
        base: format!("http://{addr}"),
        token,
    }
}

/// One HTTP/1.1 GET over a fresh socket; (status, body, elapsed). `None` when not reachable.
fn raw_get(
    base: &str,
    path: &str,
    token: &str,
    limit: Duration,
) -> Option<(u16, String, Duration)> {
    let addr = base.trim_start_matches("http://");
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, limit).ok()?;
    s.set_read_timeout(Some(limit * 3)).ok()?;
    s.set_write_timeout(Some(limit)).ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) => {}
        Err(_) if !buf.is_empty() => {}
        Err(_) => return Some((0, String::new(), t.elapsed())),
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body, t.elapsed()))
}

/// The watcher: /healthz every 100 ms (and /v1/status every 5th time) at the current address.
fn watch(
    target: Arc<Mutex<Option<(String, String)>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Health> {
    std::thread::spawn(move || {
        let mut h = Health::default();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let cur = target.lock().unwrap().clone();
            if let Some((base, token)) = cur {
                if let Some((status, _, took)) =
                    raw_get(&base, "/healthz", &token, Duration::from_secs(1))
                {
                    // status 0: the connection broke (a kill landed mid-request), not an answer.
                    if status != 0 {
                        h.samples += 1;
                        let ms = took.as_millis() as u64;
                        h.slowest_ms = h.slowest_ms.max(ms);
                        if took > Duration::from_secs(1) {
                            h.over_1s += 1;
                        }
                        if status == 200 {
                            h.ok += 1;
                        } else {
                            h.unavailable += 1;
                        }
                    }
                }
                if n.is_multiple_of(5) {
                    if let Some((200, body, _)) =
                        raw_get(&base, "/v1/status", &token, Duration::from_secs(2))
                    {
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                            let running = v["queue"]["running"].as_u64().unwrap_or(0);
                            h.peak_running = h.peak_running.max(running);
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        h
    })
}

#[derive(Default)]
struct Book {
    /// key (seq) → job id of its first 2xx.
    acked: BTreeMap<u64, String>,
    /// Keys submitted and not answered yet.
    pending: BTreeSet<u64>,
    next_seq: u64,
    submissions: u64,
    resubmissions: u64,
    mismatches: u64,
}

enum Answer {
    Job(String),
    NotNow,
}

async fn submit(http: &reqwest::Client, base: &str, token: &str, seq: u64, seg: &[u8]) -> Answer {
    let url =
        format!("{base}/v1/transcode?profiles={PROFILE}&manifest_id={MANIFEST}&seq={seq}&async=1");
    match http
        .post(url)
        .bearer_auth(token)
        .body(seg.to_vec())
        .send()
        .await
    {
        Ok(r) if r.status() == 200 || r.status() == 202 => {
            match r.json::<serde_json::Value>().await {
                Ok(v) => v["job_id"]
                    .as_str()
                    .map(|s| Answer::Job(s.to_string()))
                    .unwrap_or(Answer::NotNow),
                Err(_) => Answer::NotNow,
            }
        }
        _ => Answer::NotNow,
    }
}

fn record(book: &Mutex<Book>, seq: u64, answer: Answer) {
    let mut b = book.lock().unwrap();
    if let Answer::Job(id) = answer {
        b.pending.remove(&seq);
        match b.acked.get(&seq) {
            Some(first) if *first != id => b.mismatches += 1,
            Some(_) => {}
            None => {
                b.acked.insert(seq, id);
            }
        }
    }
}

/// Runs the campaign; the caller asserts on the outcome.
pub async fn run(plan: &Plan) -> Outcome {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client");
    let book = Arc::new(Mutex::new(Book::default()));
    let target: Arc<Mutex<Option<(String, String)>>> = Arc::new(Mutex::new(None));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let watcher = watch(target.clone(), stop_watch.clone());
    let mut seed = 0x2545_F491_4F6C_DD1Du64 ^ u64::from(std::process::id());
    let mut out = Outcome::default();
    let load_started = Instant::now();

    let mut daemon = start(plan);
    *target.lock().unwrap() = Some((daemon.base.clone(), daemon.token.clone()));
    let current = Arc::new(Mutex::new((daemon.base.clone(), daemon.token.clone())));
    let loading = Arc::new(AtomicBool::new(true));
    let seq_limit = Arc::new(AtomicU64::new(plan.max_keys));
    let mut clients = Vec::new();
    let max_pending = plan.clients * 4;
    for c in 0..plan.clients {
        let (http, book, current, loading, segs, limit) = (
            http.clone(),
            book.clone(),
            current.clone(),
            loading.clone(),
            plan.segments.clone(),
            seq_limit.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
            while loading.load(Ordering::Relaxed) {
                let (base, token) = current.lock().unwrap().clone();
                let r = xorshift(&mut rng);
                // 1 in 4: resubmit a key (pending first, else an acknowledged one).
                let pick = {
                    let mut b = book.lock().unwrap();
                    // Unanswered keys are retried in turn; a client keeps at most a few keys
                    // unanswered before it sends new ones, as a client with a queue does.
                    let pending = (!b.pending.is_empty())
                        .then(|| {
                            b.pending
                                .iter()
                                .nth((r >> 8) as usize % b.pending.len())
                                .copied()
                        })
                        .flatten();
                    let room = b.pending.len() < max_pending;
                    if r.is_multiple_of(4) && (pending.is_some() || !b.acked.is_empty()) {
                        let seq = pending.unwrap_or_else(|| {
                            let keys: Vec<u64> = b.acked.keys().copied().collect();
                            keys[(r / 4) as usize % keys.len()]
                        });
                        b.resubmissions += 1;
                        Some(seq)
                    } else if room && b.next_seq < limit.load(Ordering::Relaxed) {
                        let seq = b.next_seq;
                        b.next_seq += 1;
                        b.pending.insert(seq);
                        b.submissions += 1;
                        Some(seq)
                    } else if let Some(seq) = pending {
                        b.resubmissions += 1;
                        Some(seq)
                    } else {
                        None
                    }
                };
                let Some(seq) = pick else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let seg = &segs[(seq as usize) % segs.len()];
                let answer = submit(&http, &base, &token, seq, seg).await;
                let not_now = matches!(answer, Answer::NotNow);
                record(&book, seq, answer);
                if not_now {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
            }
        }));
    }

    while out.kills < plan.kills {
        let (lo, hi) = plan.uptime_ms;
        let wait = lo + xorshift(&mut seed) % (hi - lo).max(1);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        // SIGKILL: no shutdown path runs.
        let _ = daemon.child.kill();
        let _ = daemon.child.wait();
        out.kills += 1;
        *target.lock().unwrap() = None;
        daemon = tokio::task::spawn_blocking({
            let plan_root = plan.root.clone();
            let (bin, config) = (plan.bin.clone(), plan.config.clone());
            move || {
                start(&Plan {
                    bin,
                    root: plan_root,
                    config,
                    segments: Vec::new(),
                    kills: 0,
                    uptime_ms: (0, 0),
                    clients: 0,
                    max_keys: 0,
                    drain_limit: Duration::ZERO,
                    progress_every: 0,
                })
            }
        })
        .await
        .expect("restart");
        *current.lock().unwrap() = (daemon.base.clone(), daemon.token.clone());
        *target.lock().unwrap() = Some((daemon.base.clone(), daemon.token.clone()));
        if plan.progress_every > 0 && out.kills.is_multiple_of(plan.progress_every) {
            let b = book.lock().unwrap();
            eprintln!(
                "  {} kills, {:.0} s: {} keys, {} acknowledged, {} pending",
                out.kills,
                load_started.elapsed().as_secs_f64(),
                b.next_seq,
                b.acked.len(),
                b.pending.len()
            );
        }
    }
    // No new keys; the clients keep resubmitting what is unanswered until nothing is.
    seq_limit.store(0, Ordering::Relaxed);
    let answered_by = Instant::now() + Duration::from_secs(600);
    while !book.lock().unwrap().pending.is_empty() && Instant::now() < answered_by {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loading.store(false, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    out.load_secs = load_started.elapsed().as_secs_f64();

    // Drain: the last start resumes the backlog; wait until nothing is unfinished.
    let drain_started = Instant::now();
    let (base, token) = (daemon.base.clone(), daemon.token.clone());
    let unfinished = |v: &serde_json::Value| {
        ["received", "queued", "transcoding", "stored"]
            .iter()
            .map(|s| v["jobs"][s].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let status = |http: reqwest::Client, base: String, token: String| async move {
        http.get(format!("{base}/v1/status"))
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .json::<serde_json::Value>()
            .await
            .ok()
    };
    if let Some(v) = status(http.clone(), base.clone(), token.clone()).await {
        out.backlog_at_drain = unfinished(&v);
    }
    loop {
        if let Some(v) = status(http.clone(), base.clone(), token.clone()).await {
            if unfinished(&v) == 0 {
                break;
            }
        }
        if drain_started.elapsed() > plan.drain_limit {
            out.problems.push(format!(
                "the backlog did not drain within {:?}",
                plan.drain_limit
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    out.drain_secs = drain_started.elapsed().as_secs_f64();
    stop_watch.store(true, Ordering::Relaxed);
    out.health = watcher.join().expect("watcher");

    // The ledger's view.
    // Owned, so no lock is held across the requests below.
    let b = std::mem::take(&mut *book.lock().unwrap());
    out.keys = b.next_seq;
    out.submissions = b.submissions;
    out.resubmissions = b.resubmissions;
    out.acked = b.acked.len() as u64;
    out.id_mismatches = b.mismatches;
    if !b.pending.is_empty() {
        out.problems
            .push(format!("{} keys were never answered", b.pending.len()));
    }
    let text = http
        .get(format!("{base}/v1/ledger/export?format=json"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("export body");
    let st: serde_json::Value = serde_json::from_str(&text).expect("statement JSON");
    let mut by_id: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_seq: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut pixels = 0u64;
    for j in st["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter(|j| j["manifest_id"] == MANIFEST)
    {
        let id = j["job_id"].as_str().unwrap_or_default().to_string();
        *by_id.entry(id.clone()).or_default() += 1;
        by_seq
            .entry(j["seq"].as_u64().unwrap_or(u64::MAX))
            .or_default()
            .insert(id);
        pixels += j["encoded_pixels"].as_u64().unwrap_or(0);
    }
    out.jobs_done = by_id.len() as u64;
    out.encoded_pixels = pixels;
    for (id, n) in &by_id {
        if *n != 1 {
            out.problems
                .push(format!("job {id} is in the statement {n} times"));
        }
    }
    for (seq, ids) in &by_seq {
        if ids.len() != 1 {
            out.problems
                .push(format!("key {seq} became {} done jobs: {ids:?}", ids.len()));
        }
    }
    for (seq, id) in &b.acked {
        if by_id.get(id) != Some(&1) {
            // Say what became of it: its state and error as the API reports them.
            let job = http
                .get(format!("{base}/v1/jobs/{id}"))
                .bearer_auth(&token)
                .send()
                .await
                .ok();
            let job = match job {
                Some(r) => r.text().await.unwrap_or_default(),
                None => String::from("(no answer)"),
            };
            out.problems.push(format!(
                "acknowledged job {id} (key {seq}) is not done exactly once: {job}"
            ));
        }
    }
    let totals = &st["totals"];
    let all_pixels: u64 = st["jobs"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|j| j["encoded_pixels"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    if totals["encoded_pixels"].as_u64() != Some(all_pixels) {
        out.problems.push(format!(
            "pixel totals {} differ from the sum over jobs {all_pixels}",
            totals["encoded_pixels"]
        ));
    }
    let day_pixels: u64 = st["days"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| d["encoded_pixels"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    if day_pixels != all_pixels {
        out.problems.push(format!(
            "the per-day counters hold {day_pixels} pixels, the jobs {all_pixels}"
        ));
    }
    if out.id_mismatches > 0 {
        out.problems.push(format!(
            "{} resubmissions got another job id",
            out.id_mismatches
        ));
    }
    let _ = daemon.child.kill();
    let _ = daemon.child.wait();
    out
}

/// The pixels each P144p job encodes for a segment of `frames` frames.
pub fn p144_pixels(frames: u64) -> u64 {
    256 * 144 * frames
}

pub fn data_dir(root: &Path) -> PathBuf {
    root.join("data")
}
