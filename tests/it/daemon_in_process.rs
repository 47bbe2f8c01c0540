//! The daemon assembled in-process with stand-ins behind its two boundaries (admission and
//! the rendition store): concurrency
//! follows the scheduler's capacity, shutdown restores the scheduler, and a store
//! error is retried and counted.

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use comine::config::Config;
use comine::daemon::admission::{
    Admission, Placement, Rejected, SchedulerStatus, SemaphoreAdmission,
};
use comine::daemon::rendition_store::{
    Content, EmbeddedStore, RenditionStore, RenditionStoreError, StoredRef,
};
use comine::daemon::Daemon;
use comine::ledger::JobClass;
use futures_util::future::BoxFuture;
use tokio::sync::watch;

/// A scheduler stand-in: capacity set by the test, restore() counted, demand recorded.
struct TestScheduler {
    inner: SemaphoreAdmission,
    restored: AtomicUsize,
    demand: std::sync::Mutex<Vec<(f64, f64)>>,
}

impl Admission for TestScheduler {
    fn try_admit(&self, class: JobClass, pps: f64) -> Result<Placement, Rejected> {
        self.inner.try_admit(class, pps)
    }
    fn capacity(&self) -> watch::Receiver<usize> {
        self.inner.capacity()
    }
    fn livepeer_sessions(&self) -> watch::Receiver<u32> {
        self.inner.livepeer_sessions()
    }
    fn status(&self) -> SchedulerStatus {
        let mut s = self.inner.status();
        s.sealing.insert("disabled".into(), 1);
        s
    }
    fn set_demand(&self, live: f64, batch: f64) {
        self.demand.lock().unwrap().push((live, batch));
    }
    fn restore(&self) -> BoxFuture<'_, ()> {
        self.restored.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {})
    }
}

/// A store whose first put fails.
struct FlakyStore {
    inner: EmbeddedStore,
    calls: AtomicUsize,
}

impl RenditionStore for FlakyStore {
    fn put<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<StoredRef, RenditionStoreError>> {
        Box::pin(async move {
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(RenditionStoreError::Other("injected failure".into()));
            }
            self.inner.put(path).await
        })
    }
    fn open<'a>(
        &'a self,
        cid: &'a str,
    ) -> BoxFuture<'a, Result<Option<Content>, RenditionStoreError>> {
        self.inner.open(cid)
    }
    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"backend": "flaky-test"})
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_follows_capacity_and_shutdown_restores_the_scheduler() {
    let root = tempfile::tempdir().unwrap();
    let seg = common::segment(root.path(), "s.ts", "testsrc");
    let data = root.path().join("data");
    let mut config = Config::default();
    config.transcode.encoder = "x264".into();
    config.transcode.decoder = "software".into();
    config.transcode.x264_preset = "ultrafast".into();
    let sched = Arc::new(TestScheduler {
        inner: SemaphoreAdmission::new(0),
        restored: AtomicUsize::new(0),
        demand: Default::default(),
    });
    let store = Arc::new(FlakyStore {
        inner: EmbeddedStore::open(&data, None).unwrap(),
        calls: AtomicUsize::new(0),
    });
    let d = Daemon::open(config, data, store.clone(), sched.clone(), "t".repeat(32)).unwrap();
    d.resume().await.unwrap();
    d.spawn_dispatcher();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = comine::daemon::api::router(d.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let http = reqwest::Client::new();
    let token = "t".repeat(32);
    let mut ids = Vec::new();
    for seq in 0..3 {
        let r = http
            .post(format!(
                "{base}/v1/transcode?profiles=P144p30fps16x9&manifest_id=s&seq={seq}&async=1"
            ))
            .bearer_auth(&token)
            .body(seg.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let v: serde_json::Value = r.json().await.unwrap();
        ids.push(v["job_id"].as_str().unwrap().to_string());
    }
    // Capacity 0: nothing runs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let st: serde_json::Value = http
        .get(format!("{base}/v1/status"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(st["queue"]["depth"], 3, "{st}");
    assert_eq!(st["queue"]["capacity"], 0);
    assert_eq!(st["sealing"]["disabled"], 1);
    // The waiting batch jobs were reported as demand: 3 queued × 256x144 at 30 fps.
    let last = *sched
        .demand
        .lock()
        .unwrap()
        .last()
        .expect("demand reported");
    assert_eq!(last, (0.0, 3.0 * 256.0 * 144.0 * 30.0));
    // The scheduler opens capacity: the queue drains.
    sched.inner.set_capacity(1);
    for id in &ids {
        let job = loop {
            let j: serde_json::Value = http
                .get(format!("{base}/v1/jobs/{id}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if j["state"] == "done" || j["state"] == "failed" {
                break j;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(job["state"], "done", "{job}");
    }
    // The injected store failure was retried and counted.
    assert_eq!(store.calls.load(Ordering::SeqCst), 4);
    let metrics = http
        .get(format!("{base}/metrics"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("comine_store_errors_total 1"), "{metrics}");
    assert!(metrics.contains("comine_capacity 1"), "{metrics}");
    // Everything admitted: no demand left waiting.
    assert_eq!(*sched.demand.lock().unwrap().last().unwrap(), (0.0, 0.0));
    assert!(
        metrics.contains("comine_sealing_tasks{state=\"disabled\"} 1"),
        "{metrics}"
    );
    d.shutdown(Duration::from_secs(5)).await;
    assert_eq!(sched.restored.load(Ordering::SeqCst), 1);
}

/// A Livepeer segment caught by a crash: one still transcoding has no spool to resume
/// from (the orchestrator has long reassigned it) and is failed uncounted; one whose
/// renditions were already stored is completed and counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livepeer_jobs_interrupted_by_a_crash_are_failed_or_completed_never_double_counted() {
    use comine::ledger::{Admitted, JobState, NewJob, RenditionRecord};
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let new = |seq: u64| NewJob {
        class: JobClass::Live,
        manifest_id: Some("livepeer:m1".into()),
        seq: Some(seq),
        profiles: vec!["P144p30fps16x9".into()],
        duration_ms: 2000,
        segment_bytes: 1000,
    };
    let open = || {
        Daemon::open(
            Config::default(),
            data.clone(),
            Arc::new(EmbeddedStore::open(&data, None).unwrap()),
            Arc::new(SemaphoreAdmission::new(1)),
            "t".repeat(32),
        )
        .unwrap()
    };
    let (mid, stored) = {
        let d = open();
        let Admitted::New(a) = d.ledger.admit(new(1)).unwrap() else {
            panic!()
        };
        d.ledger.mark_queued(&a.job_id).unwrap();
        d.ledger.mark_transcoding(&a.job_id).unwrap();
        let Admitted::New(b) = d.ledger.admit(new(2)).unwrap() else {
            panic!()
        };
        d.ledger.mark_queued(&b.job_id).unwrap();
        d.ledger.mark_transcoding(&b.job_id).unwrap();
        let rendition = RenditionRecord {
            profile: "P144p30fps16x9".into(),
            cid: "QmWfVY9y3xjsixTgbd9AorQxH7VtMpzfx2HaWtsoUYecaX".into(),
            pixels: 256 * 144 * 60,
            bytes: 5,
            width: 256,
            height: 144,
            frames: 60,
            encoder: "libx264".into(),
            mime: "video/mp2t".into(),
            job_id: String::new(),
        };
        d.ledger
            .mark_stored(&b.job_id, 1, 2.0, 100, vec![rendition])
            .unwrap();
        d.ledger.flush().await.unwrap();
        (a.job_id, b.job_id)
        // Dropped without shutdown: the crash.
    };
    let d = open();
    assert_eq!(d.resume().await.unwrap(), 1, "only the stored one resumes");
    let failed = d.ledger.get(&mid).unwrap().unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(failed.error.unwrap().code, "interrupted");
    d.spawn_dispatcher();
    let done = d.wait_final(&stored).await.unwrap().unwrap();
    assert_eq!(done.state, JobState::Done);
    let counters = d.ledger.source("livepeer:m1").unwrap().unwrap();
    assert_eq!(counters.segments, 1);
    assert_eq!(counters.encoded_pixels, 256 * 144 * 60);
    // The orchestrator retrying segment 2 is a duplicate, not a second count.
    assert!(matches!(
        d.ledger.admit(new(2)).unwrap(),
        Admitted::Duplicate(_)
    ));
    d.shutdown(Duration::from_secs(5)).await;
}

/// A scheduler stand-in that admits every job (as a pixel budget far above the work would)
/// on device 0, publishes a fixed capacity, counts the jobs holding a placement at once and
/// lets the test ask for load to be shed.
struct GreedyScheduler {
    capacity: watch::Sender<usize>,
    sessions: watch::Sender<u32>,
    shed: watch::Sender<Vec<comine::daemon::admission::Shed>>,
    holding: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

/// Decrements the holding count when the job's placement is dropped.
struct Holding(Arc<AtomicUsize>);

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl GreedyScheduler {
    fn new(capacity: usize) -> GreedyScheduler {
        GreedyScheduler {
            capacity: watch::channel(capacity).0,
            sessions: watch::channel(0).0,
            shed: watch::channel(Vec::new()).0,
            holding: Arc::default(),
            peak: Arc::default(),
        }
    }
}

impl Admission for GreedyScheduler {
    fn try_admit(&self, class: JobClass, pps: f64) -> Result<Placement, Rejected> {
        let now = self.holding.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        Ok(Placement {
            device: 0,
            uuid: "GPU-0".into(),
            class,
            pixels_per_sec: pps,
            permit: comine::sched::Permit::from_guard(Holding(self.holding.clone())),
        })
    }
    fn capacity(&self) -> watch::Receiver<usize> {
        self.capacity.subscribe()
    }
    fn livepeer_sessions(&self) -> watch::Receiver<u32> {
        self.sessions.subscribe()
    }
    fn shed(&self) -> watch::Receiver<Vec<comine::daemon::admission::Shed>> {
        self.shed.subscribe()
    }
    fn status(&self) -> SchedulerStatus {
        SchedulerStatus::default()
    }
    fn restore(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

fn fast_config() -> Config {
    let mut config = Config::default();
    config.transcode.encoder = "x264".into();
    config.transcode.decoder = "software".into();
    config.transcode.x264_preset = "ultrafast".into();
    config
}

/// Issue 17: after a restart, 24 spooled jobs ran at once on a host whose capacity was 1.
/// The dispatcher let every job through that admission placed; the pixel budget of a
/// 2-core host fits two dozen small ladders, so a whole backlog started together. Now every
/// job, resumed or new, also waits for the scheduler's published capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_backlog_drains_at_the_capacity_not_all_at_once() {
    use comine::ledger::NewJob;
    let root = tempfile::tempdir().unwrap();
    let seg = common::segment(root.path(), "s.ts", "testsrc");
    let data = root.path().join("data");
    const JOBS: u64 = 6;
    {
        // A first run accepts the jobs (spooled, 2xx given) and is killed before any runs.
        let d = Daemon::open(
            fast_config(),
            data.clone(),
            Arc::new(EmbeddedStore::open(&data, None).unwrap()),
            Arc::new(SemaphoreAdmission::new(0)),
            "t".repeat(32),
        )
        .unwrap();
        for seq in 0..JOBS {
            let slot = d.queue_slots.clone().try_acquire_owned().unwrap();
            let new = NewJob {
                class: JobClass::Batch,
                manifest_id: Some("backlog".into()),
                seq: Some(seq),
                profiles: vec!["P144p30fps16x9".into()],
                duration_ms: 1000,
                segment_bytes: seg.len() as u64,
            };
            d.accept(new, seg.clone().into(), slot, std::time::Instant::now())
                .await
                .unwrap();
        }
    }
    let sched = Arc::new(GreedyScheduler::new(1));
    let d = Daemon::open(
        fast_config(),
        data.clone(),
        Arc::new(EmbeddedStore::open(&data, None).unwrap()),
        sched.clone(),
        "t".repeat(32),
    )
    .unwrap();
    assert_eq!(d.resume().await.unwrap(), JOBS as usize);
    assert_eq!(d.queue_len(), JOBS as usize, "the backlog is visible");
    assert_eq!(d.drain_secs(), None, "no run time measured yet");
    d.spawn_dispatcher();
    let start = std::time::Instant::now();
    // Once a job has run, the expected drain time is the backlog's rounds at capacity 1
    // times the run time: seen while the backlog drains.
    let mut drain_seen = false;
    loop {
        let done = d
            .ledger
            .state_counts()
            .unwrap()
            .get("done")
            .copied()
            .unwrap_or(0);
        if done >= JOBS {
            break;
        }
        if done >= 1 && d.queue_len() >= 1 {
            drain_seen |= d.drain_secs().is_some_and(|s| s > 0.0);
        }
        assert!(start.elapsed() < Duration::from_secs(120), "backlog stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(drain_seen, "no drain time shown while the backlog drained");
    assert_eq!(
        sched.peak.load(Ordering::SeqCst),
        1,
        "resumed jobs ran beyond the capacity of 1"
    );
    assert_eq!(d.drain_secs(), Some(0.0));
    d.shutdown(Duration::from_secs(5)).await;
}

/// A proof needs its GPU back: running batch work is stopped and requeued, not only new work
/// refused; it finishes once the GPU is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_takes_its_gpu_back_from_running_batch_work() {
    use comine::daemon::admission::Shed;
    use comine::ledger::{JobState, NewJob};
    let root = tempfile::tempdir().unwrap();
    // A long segment, so the job is still transcoding when the shed arrives.
    let long = common::generate(
        "long-720p.ts",
        &common::pattern(1280, 720, "30"),
        8.0,
        false,
        &["-c:v", "libx264", "-preset", "ultrafast", "-g", "30"],
    );
    let seg = std::fs::read(long).unwrap();
    let data = root.path().join("data");
    let sched = Arc::new(GreedyScheduler::new(2));
    let d = Daemon::open(
        fast_config(),
        data.clone(),
        Arc::new(EmbeddedStore::open(&data, None).unwrap()),
        sched.clone(),
        "t".repeat(32),
    )
    .unwrap();
    d.resume().await.unwrap();
    d.spawn_dispatcher();
    let slot = d.queue_slots.clone().try_acquire_owned().unwrap();
    let new = NewJob {
        class: JobClass::Batch,
        manifest_id: Some("batch".into()),
        seq: Some(1),
        profiles: vec!["P720p30fps16x9".into(), "P360p30fps16x9".into()],
        duration_ms: 8000,
        segment_bytes: seg.len() as u64,
    };
    let comine::daemon::Accepted::New(job) = d
        .accept(new, seg.into(), slot, std::time::Instant::now())
        .await
        .unwrap()
    else {
        panic!("a new job")
    };
    let start = std::time::Instant::now();
    while d.running_jobs() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "job never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The proof starts on GPU 0 and wants everything back.
    sched.shed.send_replace(vec![Shed {
        device: 0,
        pixels_per_sec: 1.0,
    }]);
    while d.metrics.jobs_preempted.get() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "running batch work was not shed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rec = d.ledger.get(&job.job_id).unwrap().unwrap();
    assert!(!rec.state.is_final(), "preempted, not failed: {rec:?}");
    // The proof ends: the job runs again and finishes, counted once.
    sched.shed.send_replace(Vec::new());
    let done = d.wait_final(&job.job_id).await.unwrap().unwrap();
    assert_eq!(done.state, JobState::Done, "{done:?}");
    assert!(done.attempts >= 2, "{done:?}");
    assert_eq!(d.ledger.state_counts().unwrap().get("done"), Some(&1));
    d.shutdown(Duration::from_secs(5)).await;
}

// ---- The scheduler's decisions reach the work (issue 10, part 1) ----

/// Admission that can refuse a class, and records what it admitted and the demand it heard.
struct ClassScheduler {
    inner: SemaphoreAdmission,
    refuse_batch: std::sync::atomic::AtomicBool,
    admitted: std::sync::Mutex<Vec<JobClass>>,
    demand: std::sync::Mutex<Vec<(f64, f64)>>,
}

impl ClassScheduler {
    fn new(capacity: usize) -> Arc<ClassScheduler> {
        Arc::new(ClassScheduler {
            inner: SemaphoreAdmission::new(capacity),
            refuse_batch: Default::default(),
            admitted: Default::default(),
            demand: Default::default(),
        })
    }
    fn admitted(&self) -> Vec<JobClass> {
        self.admitted.lock().unwrap().clone()
    }
    fn heard_both_classes(&self) -> bool {
        self.demand
            .lock()
            .unwrap()
            .iter()
            .any(|&(live, batch)| live > 0.0 && batch > 0.0)
    }
}

impl Admission for ClassScheduler {
    fn try_admit(&self, class: JobClass, pps: f64) -> Result<Placement, Rejected> {
        if class == JobClass::Batch && self.refuse_batch.load(Ordering::SeqCst) {
            return Err(Rejected {
                reason: comine::sched::RejectReason::OverCapacity,
                message: "batch refused by the test".into(),
                retry_after: Duration::from_millis(50),
            });
        }
        let p = self.inner.try_admit(class, pps)?;
        self.admitted.lock().unwrap().push(class);
        Ok(p)
    }
    fn capacity(&self) -> watch::Receiver<usize> {
        self.inner.capacity()
    }
    fn livepeer_sessions(&self) -> watch::Receiver<u32> {
        self.inner.livepeer_sessions()
    }
    fn status(&self) -> SchedulerStatus {
        self.inner.status()
    }
    fn set_demand(&self, live: f64, batch: f64) {
        self.demand.lock().unwrap().push((live, batch));
    }
    fn restore(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A store whose puts wait until the test opens it (jobs hold their permits meanwhile).
struct GatedStore {
    inner: EmbeddedStore,
    open: watch::Sender<bool>,
    waiting: AtomicUsize,
}

impl GatedStore {
    fn new(data: &Path) -> Arc<GatedStore> {
        Arc::new(GatedStore {
            inner: EmbeddedStore::open(data, None).unwrap(),
            open: watch::channel(false).0,
            waiting: AtomicUsize::new(0),
        })
    }
    async fn wait_for_puts(&self, n: usize) {
        let start = std::time::Instant::now();
        while self.waiting.load(Ordering::SeqCst) < n {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{n} jobs never reached the store together"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl RenditionStore for GatedStore {
    fn put<'a>(&'a self, path: &'a Path) -> BoxFuture<'a, Result<StoredRef, RenditionStoreError>> {
        Box::pin(async move {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let mut rx = self.open.subscribe();
            let _ = rx.wait_for(|open| *open).await;
            self.inner.put(path).await
        })
    }
    fn open<'a>(
        &'a self,
        cid: &'a str,
    ) -> BoxFuture<'a, Result<Option<Content>, RenditionStoreError>> {
        self.inner.open(cid)
    }
    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"backend": "gated-test"})
    }
}

/// An in-process daemon serving its API on a free port: (daemon, base URL).
async fn serve(d: &Arc<Daemon>) -> String {
    d.resume().await.unwrap();
    d.spawn_dispatcher();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = comine::daemon::api::router(d.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

async fn submit(base: &str, query: &str, body: Vec<u8>) -> String {
    let r = reqwest::Client::new()
        .post(format!(
            "{base}/v1/transcode?profiles=P144p30fps16x9&async=1&{query}"
        ))
        .bearer_auth("t".repeat(32))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: serde_json::Value = r.json().await.unwrap();
    v["job_id"].as_str().unwrap().to_string()
}

async fn job(base: &str, id: &str) -> serde_json::Value {
    reqwest::Client::new()
        .get(format!("{base}/v1/jobs/{id}"))
        .bearer_auth("t".repeat(32))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_done(base: &str, id: &str, within: Duration) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let j = job(base, id).await;
        if j["state"] == "done" || j["state"] == "failed" {
            return j;
        }
        assert!(start.elapsed() < within, "job {id} not finished: {j}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A batch job the scheduler refuses sits at the head of the queue; a live segment
/// submitted after it must still be admitted and finish first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_job_at_the_head_does_not_hold_back_live_work() {
    let root = tempfile::tempdir().unwrap();
    let seg = common::segment(root.path(), "s.ts", "testsrc");
    let data = root.path().join("data");
    let sched = ClassScheduler::new(4);
    sched.refuse_batch.store(true, Ordering::SeqCst);
    let store = Arc::new(EmbeddedStore::open(&data, None).unwrap());
    let d = Daemon::open(fast_config(), data, store, sched.clone(), "t".repeat(32)).unwrap();
    let base = serve(&d).await;
    let batch = submit(&base, "class=batch&manifest_id=b&seq=0", seg.clone()).await;
    // Let the dispatcher take the batch job and be refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let live = submit(
        &base,
        "class=live&manifest_id=l&seq=0&duration_ms=10000",
        seg,
    )
    .await;
    let done = wait_done(&base, &live, Duration::from_secs(30)).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(job(&base, &batch).await["state"], "queued");
    assert_eq!(sched.admitted(), vec![JobClass::Live]);
    // The batch job waits, it is not lost: admitted once the scheduler allows.
    sched.refuse_batch.store(false, Ordering::SeqCst);
    let done = wait_done(&base, &batch, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "done", "{done}");
    d.shutdown(Duration::from_secs(5)).await;
}

/// Two simulated GPUs: the second job is placed on the idle one, runs there, and the ledger
/// (job JSON and `comine ledger export`'s source) records which device did each job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_job_lands_on_the_idle_gpu_and_the_ledger_records_the_device() {
    let root = tempfile::tempdir().unwrap();
    let seg = common::segment(root.path(), "s.ts", "testsrc");
    let data = root.path().join("data");
    let mut config = fast_config();
    config.gpu.backend = "sim:rtx3090,rtx3090".into();
    config.gpu.poll_interval_ms = 20;
    config.scheduler.tick_interval_ms = 20;
    let cancel = tokio_util::sync::CancellationToken::new();
    let admission = Arc::new(
        comine::daemon::admission::SchedAdmission::start(&config, &data, 4, cancel.clone())
            .await
            .unwrap(),
    );
    let store = GatedStore::new(&data);
    let d = Daemon::open(config, data, store.clone(), admission, "t".repeat(32)).unwrap();
    let base = serve(&d).await;
    let a = submit(&base, "class=batch&manifest_id=p&seq=0", seg.clone()).await;
    let b = submit(&base, "class=batch&manifest_id=p&seq=1", seg).await;
    // Both transcoded and holding their placement at the same time.
    store.wait_for_puts(2).await;
    store.open.send_replace(true);
    let ja = wait_done(&base, &a, Duration::from_secs(60)).await;
    let jb = wait_done(&base, &b, Duration::from_secs(60)).await;
    assert_eq!(ja["state"], "done", "{ja}");
    assert_eq!(jb["state"], "done", "{jb}");
    let mut devices = vec![
        ja["device"]["index"].as_u64().unwrap_or(99),
        jb["device"]["index"].as_u64().unwrap_or(99),
    ];
    devices.sort();
    assert_eq!(devices, vec![0, 1], "a: {ja}\nb: {jb}");
    for j in [&ja, &jb] {
        let uuid = j["device"]["uuid"].as_str().unwrap_or_default();
        assert!(uuid.starts_with("GPU-sim-"), "{j}");
    }
    // The statement carries the device too.
    let rec = d.ledger.get(a.as_str()).unwrap().unwrap();
    let v = serde_json::to_value(&rec).unwrap();
    assert_eq!(v["device"], ja["device"]);
    d.shutdown(Duration::from_secs(5)).await;
    cancel.cancel();
}

/// With HTTP batch work running and more waiting, a Livepeer segment asks the same
/// admission as class `live`, the scheduler hears both classes' demand, and the segment is
/// admitted before the waiting batch job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn livepeer_segments_are_admitted_ahead_of_waiting_batch_work() {
    use comine::daemon::livepeer::{Attach, EnginePipeline};
    use comine::livepeer::test_orchestrator::{
        SegmentJob, TaskOutcome, TestOrchestrator, TestOrchestratorConfig,
    };
    use comine::livepeer::{CapacityArg, TranscoderConfig};
    let root = tempfile::tempdir().unwrap();
    let seg = common::segment(root.path(), "s.ts", "testsrc");
    let data = root.path().join("data");
    let sched = ClassScheduler::new(1);
    let store = GatedStore::new(&data);
    let d = Daemon::open(
        fast_config(),
        data.clone(),
        store.clone(),
        sched.clone(),
        "t".repeat(32),
    )
    .unwrap();
    let base = serve(&d).await;
    // Batch job A runs (and holds the only slot in the store); B waits for admission.
    let a = submit(&base, "class=batch&manifest_id=h&seq=0", seg.clone()).await;
    store.wait_for_puts(1).await;
    let b = submit(&base, "class=batch&manifest_id=h&seq=1", seg).await;

    let orch = TestOrchestrator::start(TestOrchestratorConfig::default())
        .await
        .unwrap();
    let mut cfg = TranscoderConfig::new(orch.addr(), orch.secret());
    cfg.work_dir = data.join("livepeer-work");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let client = comine::daemon::livepeer::start(
        &d,
        Attach {
            config: cfg,
            capacity: CapacityArg::Fixed(1),
            pipeline: EnginePipeline::new(comine::transcode::EncoderChoice::X264, "ultrafast", 0),
        },
        d.admission.livepeer_sessions(),
        shutdown.clone(),
    );
    orch.wait_for_transcoders(1, Duration::from_secs(30))
        .await
        .unwrap();
    let mut job = SegmentJob::new("lp", 0, common::lp_segment(), vec![common::lp_p144p()]);
    job.duration_ms = 5000;
    let outcome = tokio::spawn({
        let orch_job = job;
        let o = std::sync::Arc::new(orch);
        let o2 = o.clone();
        async move { (o2.transcode(orch_job).await, o) }
    });
    // The scheduler hears the live segment and the waiting batch job together.
    let start = std::time::Instant::now();
    while !sched.heard_both_classes() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "demand never showed live and batch together: {:?}",
            sched.demand.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A finishes; the live segment goes next, then B.
    store.open.send_replace(true);
    let (outcome, orch) = outcome.await.unwrap();
    assert!(matches!(outcome, TaskOutcome::Done { .. }), "{outcome:?}");
    let done = wait_done(&base, &b, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        wait_done(&base, &a, Duration::from_secs(5)).await["state"],
        "done"
    );
    assert_eq!(
        sched.admitted(),
        vec![JobClass::Batch, JobClass::Live, JobClass::Batch]
    );
    shutdown.cancel();
    let _ = client.await;
    drop(orch);
    d.shutdown(Duration::from_secs(5)).await;
}
