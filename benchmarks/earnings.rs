//! Earnings benchmarks, each against a peer measured in the same run:
//! - receipt signing per job (EIP-712 digest + secp256k1 signature, then the SQLite insert)
//!   vs the ledger's own per-job work (admit → queued → transcoding → stored → done on sled);
//! - earnings tables growth per 1,000 jobs (price snapshot + signed receipt) vs the sled
//!   ledger's growth for the same jobs;
//! - chain scan rate, blocks/s, against a real anvil (scripts/anvil-test-node.sh install),
//!   vs bare `eth_getLogs` over the same chunks (the scan's overhead: reorg checks, block
//!   hashes, the SQLite commit).
//!
//! `cargo bench --bench earnings`; `COMINE_BENCH_JOBS` (default 5000), `COMINE_BENCH_BLOCKS`
//! (default 20000).

use std::path::Path;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use alloy::rpc::types::Filter;
use comine::earnings::chain::{Chain, ScanTarget};
use comine::earnings::receipts::{renditions_hash, OperatorKey, Receipt};
use comine::earnings::records::Records;
use comine::earnings::testkit::{self, Anvil, Double};
use comine::earnings::{Config, Earnings, ReceiptDraft};
use comine::ledger::{Admitted, JobClass, Ledger, NewJob, Price, RenditionRecord};
use tokio_util::sync::CancellationToken;

fn env_n(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    };
    rd.flatten()
        .map(|e| {
            let m = e.metadata().ok();
            if m.as_ref().is_some_and(|m| m.is_dir()) {
                dir_size(&e.path())
            } else {
                m.map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

fn rendition(id: u64, n: u64) -> RenditionRecord {
    RenditionRecord {
        profile: format!("P{n}"),
        cid: format!("QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPb{id:05}{n}"),
        pixels: 27_648_000,
        bytes: 400_000,
        width: 1280,
        height: 720,
        frames: 60,
        encoder: "libx264".into(),
        mime: "video/mp2t".into(),
        job_id: String::new(),
    }
}

fn per_job(d: Duration, n: u64) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let jobs = env_n("COMINE_BENCH_JOBS", 5000);
    let tmp = tempfile::tempdir().expect("temp dir");

    // ---- receipts: sign only, sign + store, verify; peer: the ledger's per-job work ----
    let key = OperatorKey::generate(&tmp.path().join("k")).expect("key");
    let receipts: Vec<(Receipt, Vec<String>)> = (0..jobs)
        .map(|i| {
            let cids: Vec<String> = (0..4).map(|n| rendition(i, n).cid).collect();
            (
                Receipt {
                    job_id: format!("{i:016x}"),
                    transcoder: Address::repeat_byte(1),
                    orchestrator: Address::repeat_byte(2),
                    manifest_id: "manifest-abcdef".into(),
                    seq: i as i64,
                    decoded_pixels: 55_296_000,
                    encoded_pixels: 110_592_000,
                    renditions_hash: renditions_hash(&cids),
                    completed_at_ms: 1_700_000_000_000 + i,
                },
                cids,
            )
        })
        .collect();
    let t = Instant::now();
    let signed: Vec<_> = receipts
        .iter()
        .map(|(r, c)| key.sign(r.clone(), c.clone(), 42161).expect("sign"))
        .collect();
    let sign = t.elapsed();
    let t = Instant::now();
    for s in &signed {
        s.verify().expect("verify");
    }
    let verify = t.elapsed();

    let cfg = Config {
        key_file: Some(tmp.path().join("k")),
        ..Config::default()
    };
    let edir = tmp.path().join("earn");
    std::fs::create_dir_all(&edir).expect("dir");
    let e = Earnings::open(&cfg, &edir, None).expect("earnings");
    let t = Instant::now();
    for (r, c) in &receipts {
        e.sign_receipt(&ReceiptDraft {
            job_id: r.job_id.clone(),
            orchestrator: Some(r.orchestrator),
            manifest_id: r.manifest_id.clone(),
            seq: Some(r.seq),
            decoded_pixels: r.decoded_pixels,
            encoded_pixels: r.encoded_pixels,
            cids: c.clone(),
            completed_at_ms: r.completed_at_ms,
        })
        .expect("sign_receipt");
    }
    let sign_store = t.elapsed();

    let ldir = tmp.path().join("ledger");
    let ledger = Ledger::open(
        &ldir,
        16 << 20,
        Price {
            per_unit_wei: 1200,
            pixels_per_unit: 1000,
        },
    )
    .expect("ledger");
    let mut done = Vec::with_capacity(jobs as usize);
    let t = Instant::now();
    for i in 0..jobs {
        let Admitted::New(j) = ledger
            .admit(NewJob {
                class: JobClass::Live,
                manifest_id: Some("manifest-abcdef".into()),
                seq: Some(i),
                profiles: vec!["P720p30fps16x9".into(); 4],
                duration_ms: 2000,
                segment_bytes: 1_500_000,
            })
            .expect("admit")
        else {
            panic!("duplicate")
        };
        ledger.mark_queued(&j.job_id).expect("queued");
        ledger.mark_transcoding(&j.job_id).expect("transcoding");
        ledger
            .mark_stored(
                &j.job_id,
                55_296_000,
                2.0,
                300,
                (0..4).map(|n| rendition(i, n)).collect(),
            )
            .expect("stored");
        done.push(ledger.complete(&j.job_id).expect("complete").expect("new"));
    }
    ledger.flush_blocking().expect("flush");
    let ledger_work = t.elapsed();

    // ---- growth per 1,000 jobs: price snapshots + receipts vs the sled ledger ----
    let t = Instant::now();
    for j in &done {
        e.job_done(j, Some(&j.job_id), None).expect("job_done");
    }
    let snapshot_time = t.elapsed();
    e.records().checkpoint().expect("checkpoint");
    let db_bytes = std::fs::metadata(edir.join("comine.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    let sled_bytes = dir_size(&ldir);

    println!("earnings benchmark ({jobs} jobs, 4 renditions each)");
    println!(
        "  receipt: EIP-712 digest + sign       {:>8.1} µs/job",
        per_job(sign, jobs)
    );
    println!(
        "  receipt: sign + SQLite insert         {:>8.1} µs/job",
        per_job(sign_store, jobs)
    );
    println!(
        "  receipt: verify (recover + CID hash)  {:>8.1} µs/job",
        per_job(verify, jobs)
    );
    println!(
        "  price snapshot insert                 {:>8.1} µs/job",
        per_job(snapshot_time, jobs)
    );
    println!(
        "  peer: ledger admit→done (sled)        {:>8.1} µs/job",
        per_job(ledger_work, jobs)
    );
    println!(
        "  ratio: receipt sign+store / ledger    {:>8.2}",
        sign_store.as_secs_f64() / ledger_work.as_secs_f64()
    );
    println!(
        "  growth: earnings tables               {:>8.1} KiB per 1,000 jobs ({} bytes total)",
        db_bytes as f64 / 1024.0 / (jobs as f64 / 1000.0),
        db_bytes
    );
    println!(
        "  peer: sled ledger on disk             {:>8.1} KiB per 1,000 jobs ({} bytes total)",
        sled_bytes as f64 / 1024.0 / (jobs as f64 / 1000.0),
        sled_bytes
    );

    // ---- chain scan rate against anvil ----
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let Some(anvil) = Anvil::start(42161).await else {
            println!("  chain scan: skipped (anvil not installed; scripts/anvil-test-node.sh install)");
            return;
        };
        let blocks = env_n("COMINE_BENCH_BLOCKS", 20_000);
        let p = anvil.provider();
        let d = Double::deploy(&p).await;
        let orch = Address::repeat_byte(0x77);
        let tickets = 200u64;
        for n in 0..tickets {
            d.call(
                &p,
                testkit::redeemWinningTicketCall {
                    sender: d.from,
                    recipient: orch,
                    faceValue: U256::from(1000),
                    winProb: U256::MAX,
                    senderNonce: U256::from(n),
                    amount: U256::from(1000),
                },
                U256::ZERO,
            )
            .await;
            let _: serde_json::Value = p.raw_request("anvil_mine".into(), (blocks / tickets,)).await.expect("mine");
        }
        let head = p.get_block_number().await.expect("head");
        let chain = Chain::connect(&anvil.url, 42161, Duration::from_secs(30)).await.expect("connect");
        for chunk in [5000u64, 500] {
            let records = std::sync::Arc::new(Records::in_memory().expect("records"));
            let target = ScanTarget {
                stream: "bench".into(),
                orchestrator: orch,
                ticket_broker: d.address,
                bonding_manager: d.address,
                start_block: 0,
                chunk_blocks: chunk,
                confirmations: 0,
                keep_checkpoints: 256,
            };
            let t = Instant::now();
            let r = chain.scan(&records, &target, None, &CancellationToken::new()).await.expect("scan");
            let scan = t.elapsed();
            // Peer: the same queries bare, no checks, no storage.
            let t = Instant::now();
            let mut n = 0usize;
            let mut from = 0u64;
            while from <= head {
                let to = (from + chunk - 1).min(head);
                let f = Filter::new().address(d.address).from_block(from).to_block(to);
                n += p.get_logs(&f.clone().topic2(orch.into_word())).await.expect("logs").len();
                n += p.get_logs(&f.topic1(orch.into_word())).await.expect("logs").len();
                from = to + 1;
            }
            let bare = t.elapsed();
            println!(
                "  chain scan, {chunk}-block chunks:     {:>8.0} blocks/s ({} blocks, {} events, {} chunks); bare eth_getLogs {:>8.0} blocks/s ({n} logs); overhead ×{:.2}",
                r.blocks as f64 / scan.as_secs_f64(),
                r.blocks,
                r.events_added,
                r.chunks,
                (head + 1) as f64 / bare.as_secs_f64(),
                scan.as_secs_f64() / bare.as_secs_f64()
            );
        }
    });
}
