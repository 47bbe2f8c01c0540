//! Ledger throughput with and without group commit, measured in the same run.
//!
//! Each job is the daemon's transition pattern, every step durable when it returns:
//! admit (job + idempotency key) → queued → transcoding → stored (two renditions) → done (job,
//! renditions, day and source counters in one transaction). `CLIENTS` threads run jobs at once,
//! as the daemon's intake and workers do under load. Grouped: the database's default (up to 256
//! writes per commit); ungrouped: one commit (one fsync) per write.
//!
//! `cargo bench --bench ledger -- [JOBS] [CLIENTS]` (defaults 2000 and 16; 1 client is also run).

use std::time::Instant;

use comine::ledger::{Admitted, JobClass, Ledger, NewJob, Price, RenditionRecord};

fn rendition(cid: String, pixels: u64) -> RenditionRecord {
    RenditionRecord {
        profile: "P240p30fps16x9".into(),
        cid,
        pixels,
        bytes: 100_000,
        width: 426,
        height: 240,
        frames: 60,
        encoder: "libx264".into(),
        mime: "video/mp2t".into(),
        job_id: String::new(),
    }
}

fn one_job(l: &Ledger, client: usize, i: usize) {
    let new = NewJob {
        class: JobClass::Batch,
        manifest_id: Some(format!("bench-{client}")),
        seq: Some(i as u64),
        profiles: vec!["P240p30fps16x9".into(), "P360p30fps16x9".into()],
        duration_ms: 2000,
        segment_bytes: 500_000,
    };
    let Admitted::New(job) = l.admit(new).expect("admit") else {
        panic!("a fresh key was taken as a duplicate");
    };
    let id = job.job_id;
    l.mark_queued(&id).expect("queued");
    l.mark_transcoding(&id).expect("transcoding");
    let r = vec![
        rendition(format!("Qm{client}x{i}a"), 6_144_000),
        rendition(format!("Qm{client}x{i}b"), 13_824_000),
    ];
    l.mark_stored(&id, 27_648_000, 2.0, 400, r).expect("stored");
    l.complete(&id).expect("done").expect("counted once");
}

/// Runs `jobs` jobs from `clients` threads; returns jobs/s and writes per commit.
fn run(jobs: usize, clients: usize, group: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let price = Price {
        per_unit_wei: 1,
        pixels_per_unit: 1,
    };
    let ledger = Ledger::open(&dir.path().join("ledger"), 16 << 20, price).expect("ledger");
    ledger.db().set_max_group(group);
    let per = jobs / clients;
    let before = ledger.db().stats();
    let t = Instant::now();
    std::thread::scope(|s| {
        for c in 0..clients {
            let l = ledger.clone();
            s.spawn(move || {
                for i in 0..per {
                    one_job(&l, c, i);
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    let after = ledger.db().stats();
    // The run counts: every job done once, the counters equal to the sum.
    let total: u64 = ledger
        .sources()
        .expect("sources")
        .iter()
        .map(|(_, c)| c.segments)
        .sum();
    assert_eq!(
        total as usize,
        per * clients,
        "every job counted exactly once"
    );
    let writes = (after.writes - before.writes) as f64;
    let commits = (after.commits - before.commits).max(1) as f64;
    ((per * clients) as f64 / secs, writes / commits)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let jobs = args.first().copied().unwrap_or(2000);
    let clients = args.get(1).copied().unwrap_or(16);
    println!("ledger benchmark: {jobs} jobs, 5 durable writes each (SQLite WAL, synchronous=FULL)");
    for c in [1, clients] {
        let (ungrouped, u_per) = run(jobs, c, 1);
        let (grouped, g_per) = run(jobs, c, comine::db::DEFAULT_GROUP);
        println!(
            "  {c:>3} clients: grouped {grouped:>8.0} jobs/s ({g_per:.1} writes/commit)   ungrouped {ungrouped:>8.0} jobs/s ({u_per:.1} writes/commit)   ratio {:.2}",
            grouped / ungrouped
        );
    }
}
