//! Migration of a data directory written by the last sled-based release (the fixture
//! `tests/fixtures/sled-data-dir.tar.xz`, made by `tests/fixtures/make-sled-data-dir.sh` with
//! main at 7a8b631): every job, counter, idempotency key, rendition, pin, queue entry, deal batch
//! and block arrives, nothing is counted twice, a failed or interrupted import starts over
//! cleanly, and the real daemon then finishes the jobs the old one had acknowledged.

use crate::common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use comine::ledger::{Admitted, Counters, JobClass, JobRecord, JobState, Ledger, NewJob, Price};
use comine::store::Store;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/sled-data-dir.tar.xz"
);

fn price() -> Price {
    Price {
        per_unit_wei: 3,
        pixels_per_unit: 2,
    }
}

/// Unpacks the fixture; returns `<root>/data`.
fn unpack(root: &Path) -> PathBuf {
    let st = std::process::Command::new("tar")
        .args(["-xJf", FIXTURE, "-C"])
        .arg(root)
        .status()
        .expect("run tar");
    assert!(st.success(), "unpacking {FIXTURE}");
    root.join("data")
}

/// What the sled trees hold, read with sled itself (the oracle, independent of the import).
struct Sled {
    jobs: BTreeMap<String, JobRecord>,
    idem: BTreeMap<Vec<u8>, String>,
    renditions: usize,
    days: BTreeMap<String, Counters>,
    sources: BTreeMap<String, Counters>,
    done: usize,
    blocks: BTreeMap<Vec<u8>, Vec<u8>>,
    pins: usize,
    queue: usize,
    batches: usize,
}

fn json<T: serde::de::DeserializeOwned>(v: &[u8]) -> T {
    serde_json::from_slice(v).unwrap()
}

fn read_sled(data: &Path) -> Sled {
    let l = sled::open(data.join("ledger")).unwrap();
    let tree = |n: &str| l.open_tree(n).unwrap();
    let text = |v: &[u8]| String::from_utf8(v.to_vec()).unwrap();
    let jobs = tree("jobs")
        .iter()
        .map(|kv| kv.unwrap())
        .map(|(k, v)| (text(&k), json(&v)))
        .collect();
    let idem = tree("idem")
        .iter()
        .map(|kv| kv.unwrap())
        .map(|(k, v)| (k.to_vec(), text(&v)))
        .collect();
    let days = tree("pixels_day")
        .iter()
        .map(|kv| kv.unwrap())
        .map(|(k, v)| (text(&k), json(&v)))
        .collect();
    let sources = tree("pixels_source")
        .iter()
        .map(|kv| kv.unwrap())
        .map(|(k, v)| (text(&k), json(&v)))
        .collect();
    let (renditions, done) = (tree("renditions").len(), tree("done").len());
    drop(l);
    let s = sled::open(data.join("store").join("db")).unwrap();
    let blocks = s
        .open_tree("blocks")
        .unwrap()
        .iter()
        .map(|kv| kv.unwrap())
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    let (pins, queue, batches) = (
        s.open_tree("pins").unwrap().len(),
        s.open_tree("push_queue").unwrap().len(),
        s.open_tree("batches").unwrap().len(),
    );
    Sled {
        jobs,
        idem,
        renditions,
        days,
        sources,
        done,
        blocks,
        pins,
        queue,
        batches,
    }
}

fn check_ledger(l: &Ledger, old: &Sled) {
    for (id, rec) in &old.jobs {
        assert_eq!(l.get(id).unwrap().as_ref(), Some(rec), "job {id}");
    }
    let days: BTreeMap<_, _> = l.days_since("1970-01-01").unwrap().into_iter().collect();
    assert_eq!(days, old.days, "day counters");
    let sources: BTreeMap<_, _> = l.sources().unwrap().into_iter().collect();
    assert_eq!(sources, old.sources, "source counters");
    assert_eq!(l.done_since(0).unwrap().len(), old.done);
    let open = old.jobs.values().filter(|j| !j.state.is_final()).count();
    assert_eq!(l.unfinished().unwrap().len(), open);
    let counts = l.state_counts().unwrap();
    assert_eq!(counts.values().sum::<u64>() as usize, old.jobs.len());
    // Every idempotency key still answers with its job.
    for (key, id) in &old.idem {
        let parts: Vec<&[u8]> = key.split(|b| *b == 0).collect();
        let new = NewJob {
            class: JobClass::Batch,
            manifest_id: Some(String::from_utf8(parts[0].to_vec()).unwrap()),
            seq: std::str::from_utf8(parts[1]).unwrap().parse().ok(),
            profiles: std::str::from_utf8(parts[2])
                .unwrap()
                .split(',')
                .map(str::to_string)
                .collect(),
            duration_ms: 1000,
            segment_bytes: 1,
        };
        match l.admit(new).unwrap() {
            Admitted::Duplicate(j) => assert_eq!(&j.job_id, id),
            Admitted::New(j) => panic!("idempotency key of {id} was lost: new job {}", j.job_id),
        }
    }
}

#[test]
fn a_sled_data_directory_migrates_completely_once() {
    let root = tempfile::tempdir().unwrap();
    let data = unpack(root.path());
    let old = read_sled(&data);
    assert_eq!(
        old.jobs.len(),
        17,
        "the fixture is the one the script describes"
    );
    assert!(
        old.jobs
            .values()
            .filter(|j| j.state == JobState::Queued)
            .count()
            >= 6
    );

    {
        let l = Ledger::open(&data.join("ledger"), 1 << 20, price()).unwrap();
        check_ledger(&l, &old);
        let s = Store::open(&data).unwrap();
        assert_eq!(s.pins().unwrap().len(), old.pins);
        assert_eq!(s.queued().unwrap().len(), old.queue);
        let batches = comine::store::deals::list(&s).unwrap();
        assert_eq!(batches.len(), old.batches);
        assert_eq!(batches[0].state.to_string(), "proposed");
        // Every block is a file that re-hashes to its name.
        for (mh, bytes) in &old.blocks {
            let mh = multihash::Multihash::<64>::from_bytes(mh).unwrap();
            let cid = cid::Cid::new_v1(0x55, mh);
            assert_eq!(&s.get_block(&cid).unwrap(), bytes);
        }
        // The 3-chunk file added with `comine store add` reads back byte for byte.
        let expected: Vec<u8> = (0..26000)
            .flat_map(|i| format!("comine sled fixture line {i:08}\n").into_bytes())
            .collect();
        for cid in [
            "QmaTTungJd7KQAeDP4borKodjZZevEDFpu88cgvCa8ERpQ",
            "bafybeiflyqcsq3ibdbbznypxj7hhe2s5ldkphdqb7vjtddwxs3gjr63t7m",
        ] {
            let mut back = Vec::new();
            s.cat(&comine::store::parse_cid(cid).unwrap())
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert!(back == expected, "{cid} differs after migration");
        }
        // New jobs continue after the old ids.
        let last = old.jobs.keys().max().unwrap().clone();
        let Admitted::New(j) = l
            .admit(NewJob {
                class: JobClass::Batch,
                manifest_id: Some("after".into()),
                seq: Some(1),
                profiles: vec!["P144p30fps16x9".into()],
                duration_ms: 1000,
                segment_bytes: 1,
            })
            .unwrap()
        else {
            panic!("a new key is a new job");
        };
        assert!(j.job_id > last, "{} after {last}", j.job_id);
    }
    let n: i64 = rusqlite::Connection::open(data.join("comine.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM ledger_renditions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n as usize, old.renditions, "every rendition record");
    // The sled copies are kept aside, and opening again imports nothing twice.
    assert!(data.join("ledger.sled-migrated").join("db").is_file());
    assert!(data
        .join("store")
        .join("db.sled-migrated")
        .join("db")
        .is_file());
    assert!(!data.join("ledger").exists() && !data.join("store").join("db").exists());
    let l = Ledger::open(&data.join("ledger"), 1 << 20, price()).unwrap();
    let sources: BTreeMap<_, _> = l.sources().unwrap().into_iter().collect();
    assert_eq!(sources, old.sources, "reopening counted nothing twice");
}

#[test]
fn a_failed_import_leaves_nothing_and_the_next_start_completes_it() {
    let root = tempfile::tempdir().unwrap();
    let data = unpack(root.path());
    let old = read_sled(&data);
    {
        let l = sled::open(data.join("ledger")).unwrap();
        l.open_tree("jobs")
            .unwrap()
            .insert("5a170000000000ff", &b"{not json"[..])
            .unwrap();
        l.flush().unwrap();
    }
    let err = Ledger::open(&data.join("ledger"), 1 << 20, price())
        .err()
        .expect("a damaged record stops the import");
    assert!(err.to_string().contains("5a170000000000ff"), "{err}");
    let n: i64 = rusqlite::Connection::open(data.join("comine.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM ledger_jobs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "the import's transaction was rolled back whole");
    assert!(
        data.join("ledger").join("db").is_file(),
        "the sled copy is untouched"
    );
    {
        let l = sled::open(data.join("ledger")).unwrap();
        l.open_tree("jobs")
            .unwrap()
            .remove("5a170000000000ff")
            .unwrap();
        l.flush().unwrap();
    }
    let l = Ledger::open(&data.join("ledger"), 1 << 20, price()).unwrap();
    check_ledger(&l, &old);
}

#[test]
fn a_crash_between_import_and_retirement_counts_nothing_twice() {
    let root = tempfile::tempdir().unwrap();
    let data = unpack(root.path());
    let old = read_sled(&data);
    drop(Ledger::open(&data.join("ledger"), 1 << 20, price()).unwrap());
    drop(Store::open(&data).unwrap());
    // As if the process died after the import committed but before the renames.
    std::fs::rename(data.join("ledger.sled-migrated"), data.join("ledger")).unwrap();
    std::fs::rename(data.join("store/db.sled-migrated"), data.join("store/db")).unwrap();
    let l = Ledger::open(&data.join("ledger"), 1 << 20, price()).unwrap();
    check_ledger(&l, &old);
    let s = Store::open(&data).unwrap();
    assert_eq!(s.pins().unwrap().len(), old.pins);
    assert_eq!(s.queued().unwrap().len(), old.queue);
    assert!(
        !data.join("ledger").exists(),
        "retired again after re-verifying"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_finishes_what_the_sled_release_acknowledged() {
    let root = tempfile::tempdir().unwrap();
    let data = unpack(root.path());
    let old = read_sled(&data);
    let cfg = common::write_config(
        root.path(),
        "[api]\nconcurrency = 1\n[ledger]\nprice_per_unit_wei = 3\npixels_per_unit = 2\n",
    );
    let d = common::Daemon::start(root.path(), &cfg);
    let mut total_pixels = 0;
    for (id, _) in old.jobs.iter().filter(|(_, j)| !j.state.is_final()) {
        let j = d.wait_job(id).await;
        assert_eq!(j["state"], "done", "{j}");
        total_pixels += j["encoded_pixels"].as_u64().unwrap();
    }
    let st: serde_json::Value = serde_json::from_str(
        &d.get("/v1/ledger/export?format=json")
            .await
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let jobs = st["jobs"].as_array().unwrap();
    let mut ids: Vec<&str> = jobs.iter().map(|j| j["job_id"].as_str().unwrap()).collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "a job appears once in the statement");
    assert_eq!(
        ids.len(),
        old.done + old.jobs.values().filter(|j| !j.state.is_final()).count()
    );
    let old_pixels: u64 = old.sources.values().map(|c| c.encoded_pixels).sum();
    assert_eq!(
        st["totals"]["encoded_pixels"].as_u64().unwrap(),
        old_pixels + total_pixels
    );
    let sum: u64 = jobs
        .iter()
        .map(|j| j["encoded_pixels"].as_u64().unwrap())
        .sum();
    assert_eq!(
        sum,
        old_pixels + total_pixels,
        "counters equal the sum over jobs"
    );
    assert!(d.log().contains("migrated the sled ledger"), "{}", d.log());
}
