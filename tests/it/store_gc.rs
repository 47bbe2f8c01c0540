//! Garbage collection of the embedded store: what stays (keep pins, renditions inside the
//! retention window, in the push queue or in a deal that is not active), what goes, shared
//! blocks, orphans left by a crash, dry runs, the CLI, and a GC racing adds.

use crate::common;

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use comine::store::deals::{self, BatchState};
use comine::store::gc::GcOptions;
use comine::store::{AddOptions, PinKind, Store, CHUNK_SIZE};

const DAY: u64 = 86_400;

fn opts() -> AddOptions {
    AddOptions::default()
}

/// Options for a collection `days_later` days from now with a 30-day window.
fn later(days_later: u64, dry_run: bool) -> GcOptions {
    let mut o = GcOptions::new(30, dry_run);
    o.now += days_later * DAY;
    o
}

fn readable(store: &Store, cid: &cid::Cid) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    store
        .cat(cid)
        .map_err(|e| e.to_string())?
        .read_to_end(&mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[test]
fn retention_keep_pins_and_shared_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Two renditions share their first chunk; a third is unrelated; one file is kept.
    let shared = common::data(CHUNK_SIZE, 1);
    let a_data = [shared.clone(), common::data(CHUNK_SIZE, 2)].concat();
    let b_data = [shared.clone(), common::data(CHUNK_SIZE, 3)].concat();
    let a = store
        .add_reader_with(&a_data[..], &opts(), None, PinKind::Retain)
        .unwrap();
    let b = store
        .add_reader_with(&b_data[..], &opts(), None, PinKind::Retain)
        .unwrap();
    let kept = store.add_bytes(&common::data(1000, 4), &opts()).unwrap();

    // Inside the window nothing goes.
    let r = store.gc(later(10, false)).unwrap();
    assert_eq!(
        (r.unpinned, r.blocks_freed, r.bytes_freed),
        (0, 0, 0),
        "{r:?}"
    );

    // b is unpinned by hand; a stays retained: the shared chunk must stay for a.
    assert!(store.unpin(&b.cid).unwrap());
    let r = store.gc(later(10, false)).unwrap();
    assert_eq!(r.roots_dropped, 1, "{r:?}");
    assert_eq!(
        r.blocks_freed, 2,
        "b's own leaf and root go, the shared leaf stays: {r:?}"
    );
    assert_eq!(readable(&store, &a.cid).unwrap(), a_data);
    assert!(readable(&store, &b.cid).is_err());

    // Past the window, a goes too; the keep pin never does.
    let dry = store.gc(later(31, true)).unwrap();
    assert!(
        dry.dry_run && dry.unpinned == 1 && dry.blocks_freed == 3,
        "{dry:?}"
    );
    assert_eq!(
        readable(&store, &a.cid).unwrap(),
        a_data,
        "a dry run deletes nothing"
    );
    let r = store.gc(later(31, false)).unwrap();
    assert_eq!(
        (r.unpinned, r.blocks_freed, r.bytes_freed),
        (dry.unpinned, dry.blocks_freed, dry.bytes_freed),
        "the dry run predicted the real run"
    );
    assert!(r.bytes_freed as usize >= 2 * CHUNK_SIZE, "{r:?}");
    assert!(readable(&store, &a.cid).is_err());
    assert_eq!(readable(&store, &kept.cid).unwrap(), common::data(1000, 4));
    assert_eq!(store.pins().unwrap().len(), 1);
    // Nothing left on disk but the kept file's block.
    let files = walk_files(store.blocks_dir());
    assert_eq!(files, 1, "block files left: {files}");
}

fn walk_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            n += walk_files(&p);
        } else if p.extension().is_some_and(|x| x == "data") {
            n += 1;
        }
    }
    n
}

#[test]
fn push_queue_and_pending_deals_protect_renditions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let queued = store
        .add_reader_with(&common::data(5000, 10)[..], &opts(), None, PinKind::Retain)
        .unwrap();
    store.enqueue_push(&queued.cid, &opts()).unwrap();
    let in_deal = store
        .add_reader_with(
            &common::data(6000, 11)[..],
            &opts(),
            Some("r.ts".into()),
            PinKind::Retain,
        )
        .unwrap();
    // Pack only the deal rendition: take the queued one out of the candidates first.
    store.dequeue_push(&queued.cid).unwrap();
    store.unpin(&queued.cid).unwrap();
    store.enqueue_push(&queued.cid, &opts()).unwrap();
    let batches = deals::pack(&store, deals::DEFAULT_MAX_SIZE).unwrap();
    assert_eq!(batches.len(), 1);
    let batch = &batches[0];
    assert_eq!(batch.state, BatchState::Ready);
    assert!(batch.car_path.exists());

    let r = store.gc(later(400, false)).unwrap();
    assert_eq!(
        r.blocks_freed, 0,
        "queued and in-deal renditions stay: {r:?}"
    );
    assert_eq!(
        readable(&store, &queued.cid).unwrap(),
        common::data(5000, 10)
    );
    assert_eq!(
        readable(&store, &in_deal.cid).unwrap(),
        common::data(6000, 11)
    );

    // Delivered to the node, and the deal went active: both may go, and the CAR with them.
    store.dequeue_push(&queued.cid).unwrap();
    for s in [
        BatchState::Proposed,
        BatchState::Imported,
        BatchState::Active,
    ] {
        deals::set_state(&store, &batch.id, s, None, None).unwrap();
    }
    let r = store.gc(later(400, false)).unwrap();
    assert!(
        r.blocks_freed >= 3,
        "both renditions and the batch directory go: {r:?}"
    );
    assert_eq!(r.car_files, 1, "{r:?}");
    assert!(!batch.car_path.exists());
    assert!(readable(&store, &queued.cid).is_err());
    assert!(readable(&store, &in_deal.cid).is_err());
}

#[test]
fn files_left_by_a_crash_mid_add_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let kept = store.add_bytes(b"kept", &opts()).unwrap();
    // A block file the index never heard of (the add died before its commit) and a temp file.
    let orphan = comine::store::compute_cid(&mut &b"orphan block"[..], &opts())
        .unwrap()
        .cid;
    let blocks = store.blocks_dir().to_path_buf();
    let key = comine::store::blocks::base32(&orphan.hash().to_bytes());
    let shard = blocks.join(&key[key.len() - 3..key.len() - 1]);
    std::fs::create_dir_all(&shard).unwrap();
    std::fs::write(shard.join(format!("{key}.data")), vec![7u8; 4321]).unwrap();
    std::fs::write(blocks.join(".temp").join("123-4-dead"), vec![1u8; 100]).unwrap();
    let r = store.gc(later(0, false)).unwrap();
    assert_eq!(r.orphan_files, 1, "{r:?}");
    assert_eq!(r.orphan_bytes, 4321 + 100, "{r:?}");
    assert!(!shard.join(format!("{key}.data")).exists());
    assert_eq!(readable(&store, &kept.cid).unwrap(), b"kept");
}

#[test]
fn gc_racing_adds_never_deletes_a_block_an_add_needs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Garbage that shares every block with what the adders write: the old DAG is unpinned,
    // so each collection wants those blocks gone while the adds re-reference them.
    let contents: Vec<Vec<u8>> = (0..4)
        .map(|i| common::data(CHUNK_SIZE * 2 + 17, 100 + i))
        .collect();
    for c in &contents {
        let old = store.add_bytes(c, &opts()).unwrap();
        store.unpin(&old.cid).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut runs = 0u32;
            let mut freed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                freed += store.gc(later(0, false)).unwrap().blocks_freed;
                runs += 1;
            }
            (runs, freed)
        })
    };
    let adders: Vec<_> = (0..3)
        .map(|t| {
            let (store, contents) = (store.clone(), contents.clone());
            std::thread::spawn(move || {
                let mut added = Vec::new();
                for round in 0..12 {
                    let c = &contents[(t + round) % contents.len()];
                    let r = store.add_bytes(c, &opts()).unwrap();
                    added.push((r.cid, c.clone()));
                    // Drop it again now and then, so later collections have work to do.
                    if round % 3 == 2 {
                        store.unpin(&r.cid).unwrap();
                        added.pop();
                    }
                }
                added
            })
        })
        .collect();
    let mut pinned = Vec::new();
    for a in adders {
        pinned.extend(a.join().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let (runs, freed) = collector.join().unwrap();
    assert!(
        runs > 1 && freed > 0,
        "the collector ran ({runs}) and freed blocks ({freed})"
    );
    // One more collection after everything settled; every pinned add must still read back.
    store.gc(later(0, false)).unwrap();
    for (cid, data) in pinned {
        if store.pin_info(&cid).unwrap().is_some() {
            assert_eq!(readable(&store, &cid).unwrap(), data, "{cid} lost a block");
        }
    }
}

#[test]
fn cli_gc_and_only_hash() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.bin");
    std::fs::write(&file, common::data(CHUNK_SIZE + 5, 9)).unwrap();
    let data = dir.path().join("data");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_comine"))
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    let f = file.to_str().unwrap();
    let hashed = run(&["store", "add", "-n", "--json", f]);
    assert_eq!(hashed["only_hash"], true);
    assert!(!data.join("store").exists(), "--only-hash stores nothing");
    let added = run(&["store", "add", "--json", f]);
    assert_eq!(hashed["cid"], added["cid"]);
    assert_eq!(hashed["dag_size"], added["dag_size"]);
    let cid = added["cid"].as_str().unwrap();
    let dry = run(&["store", "gc", "--dry-run", "--json"]);
    assert_eq!(
        dry["blocks_freed"], 0,
        "a keep pin is never collected: {dry}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_comine"))
        .args(["store", "unpin", cid, "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let dry = run(&["store", "gc", "--dry-run", "--json"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["blocks_freed"], 3, "{dry}");
    let real = run(&["store", "gc", "--json"]);
    assert_eq!(real["bytes_freed"], dry["bytes_freed"], "{real}");
    let again = run(&["store", "gc", "--json"]);
    assert_eq!(again["bytes_freed"], 0, "{again}");
}
