//! Earnings end to end: pool models against hand-computed values, a pool statement server
//! with a short payment, a payout below threshold and a payout never reported, on-chain
//! checks on a real anvil (reorg, range limits, resume), own-orchestrator reconciliation,
//! EIP-712 receipts exported and verified offline, and bad input that loses nothing.
//!
//! anvil comes from `scripts/anvil-test-node.sh install`; with `CI` set a missing anvil fails
//! the tests instead of skipping them.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{keccak256, Address, U256};
use alloy::providers::Provider;
use comine::earnings::chain::{Chain, ChainError, ScanTarget};
use comine::earnings::config::WeiValue;
use comine::earnings::pool::PoolClient;
use comine::earnings::reconcile::Status;
use comine::earnings::records::Records;
use comine::earnings::statement::By;
use comine::earnings::testkit::{self, Anvil, Double, RangeLimitProxy, TestPool};
use comine::earnings::{Config, Earnings, EarningsError, ReceiptDraft};
use comine::ledger::{JobClass, JobRecord, JobState, RenditionRecord};
use serde_json::json;
use tokio_util::sync::CancellationToken;

const E15: u64 = 1_000_000_000_000_000;

fn now_ms() -> u64 {
    comine::util::now_ms()
}

/// A fresh address nobody else on a shared anvil uses.
fn fresh_address(tag: &str) -> Address {
    let seed = format!(
        "{tag}-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    );
    Address::from_slice(&keccak256(seed.as_bytes())[12..])
}

fn job(id: &str, finished_ms: u64, pixels: u64) -> JobRecord {
    JobRecord {
        job_id: id.into(),
        state: JobState::Done,
        class: JobClass::Live,
        manifest_id: Some("manifest-1".into()),
        seq: Some(7),
        device: None,
        profiles: vec!["P240p30fps16x9".into()],
        duration_ms: 2000,
        segment_bytes: 1000,
        received_at_ms: finished_ms - 1000,
        updated_at_ms: finished_ms,
        finished_at_ms: Some(finished_ms),
        attempts: 1,
        decoded_pixels: pixels / 2,
        encoded_pixels: pixels,
        media_seconds: 2.0,
        transcode_ms: 300,
        renditions: vec![RenditionRecord {
            profile: "P240p30fps16x9".into(),
            cid: format!("QmRendition{id}"),
            pixels,
            bytes: 100,
            width: 426,
            height: 240,
            frames: 60,
            encoder: "libx264".into(),
            mime: "video/mp2t".into(),
            job_id: id.into(),
        }],
        error: None,
        earnings_wei: None,
    }
}

fn priced(model: &str) -> Config {
    let mut c = Config {
        price_source: "config".into(),
        price_per_unit: WeiValue(U256::from(1200)),
        pixels_per_unit: WeiValue(U256::from(1000)),
        model: model.into(),
        ..Config::default()
    };
    c.commission_bps = 250;
    c.commission = "0.25".into();
    c.fee_share_ppm = Some(250_000);
    c.share = "0.85".into();
    c
}

fn open(cfg: &Config, dir: &Path) -> Earnings {
    Earnings::open(cfg, dir, None).unwrap_or_else(|e| panic!("open: {e}"))
}

// ---- expected earnings -----------------------------------------------------------------------

/// 1200 wei per 1000 pixels, jobs of 1001 and 2003 pixels: gross = 3604.8 wei, rounded once.
#[test]
fn each_pool_model_matches_hand_computed_values() {
    let cases = [
        // model, gross, commission, net, truncation
        ("livepool", "3604", "441", "3163", "0"), // 3604.8 × 0.9 × 0.975 = 3163.212
        ("openpool", "3604", "1351", "2253", "600"), // ⌊1.2⌋ = 1 wei/px: 3004 × 0.75
        ("orchestrator", "3604", "901", "2703", "0"), // × (1 − 250000/10⁶) = 2703.6
        ("custom", "3604", "540", "3064", "0"),   // × 0.85 = 3064.08
    ];
    for (model, gross, commission, net, trunc) in cases {
        let dir = tempfile::tempdir().unwrap();
        let e = open(&priced(model), dir.path());
        let t = now_ms();
        e.job_done(&job("a", t, 1001), None, None).unwrap();
        e.job_done(&job("b", t, 2003), None, None).unwrap();
        // A replayed completion adds nothing.
        e.job_done(&job("a", t, 1001), None, None).unwrap();
        let s = e.statement(0, By::Job).unwrap();
        assert_eq!(s.rows.len(), 2, "{model}");
        let tot = &s.total;
        assert_eq!(
            (
                tot.gross_wei.as_str(),
                tot.commission_wei.as_str(),
                tot.net_wei.as_str(),
                tot.truncation_wei.as_str()
            ),
            (gross, commission, net, trunc),
            "{model}"
        );
        assert_eq!(tot.price_source, "config");
        assert_eq!(
            e.today().unwrap().net_wei,
            net,
            "{model}: today's expected earnings"
        );
    }
}

#[test]
fn earnings_command_prints_the_statement() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("comine.toml");
    std::fs::write(
        &cfg_path,
        "[earnings]\nmodel = \"livepool\"\ncommission_bps = 250\nprice_source = \"config\"\nprice_per_unit = 1200\npixels_per_unit = 1000\n",
    )
    .unwrap();
    let cfg = comine::config::Config::load(Some(&cfg_path)).unwrap();
    {
        let e = open(&cfg.earnings, dir.path());
        e.job_done(&job("a", now_ms(), 1001), None, None).unwrap();
        e.job_done(&job("b", now_ms(), 2003), None, None).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_comine"))
        .args(["earnings", "--by", "day", "--format", "json", "--config"])
        .arg(&cfg_path)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["model"], "livepool");
    assert_eq!(v["by"], "day");
    let row = &v["rows"][0];
    for (k, want) in [
        ("pixels", "3004"),
        ("gross_wei", "3604"),
        ("commission_wei", "441"),
        ("net_wei", "3163"),
        ("price_source", "config"),
        ("class", "transcode"),
    ] {
        assert_eq!(row[k], want, "{k} in {row}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_comine"))
        .args(["earnings", "--by", "job", "--format", "csv", "--config"])
        .arg(&cfg_path)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(
            "job,jobs,pixels,gross_wei,commission_wei,net_wei,truncation_wei,price_source,class\n"
        ),
        "{text}"
    );
    assert_eq!(text.lines().count(), 4, "header, two jobs, total: {text}");
}

// ---- what the pool credited, what reached the wallet -------------------------------------------

/// Open Pool: four jobs, one credited short; a payout verified, one paid less than reported,
/// one internal transfer never reported; what is left is below the payout threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_statement_short_payment_below_threshold_and_unreported_payout() {
    let Some(anvil) = Anvil::shared().await else {
        return;
    };
    let p = anvil.provider();
    let double = Double::deploy(&p).await;
    let pool = TestPool::start().await.unwrap();
    let me = fresh_address("pool");
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        price_source: "config".into(),
        price_per_unit: WeiValue(U256::from(3_000_000_000_000u64)), // 3e12 wei per pixel
        pixels_per_unit: WeiValue(U256::from(1)),
        model: "openpool".into(),
        commission: "0.25".into(),
        payout_address: Some(me.to_checksum(None)),
        ..Config::default()
    };
    cfg.pool.kind = "openpool".into();
    cfg.pool.url = pool.url.clone();
    cfg.chain.rpc_url = anvil.url.clone();
    cfg.chain.snapshot_interval_secs = 0;
    cfg.chain.rounds_manager = double.address.to_checksum(None);
    let e = open(&cfg, dir.path());

    // comine's jobs, two hours ago, a minute apart.
    let t0 = now_ms() - 2 * 3_600_000;
    let pixels = [1000u64, 1000, 1000, 500];
    for (i, px) in pixels.iter().enumerate() {
        e.job_done(
            &job(&format!("j{i}"), t0 + i as u64 * 60_000, *px),
            None,
            None,
        )
        .unwrap();
    }
    // The pool's events: fees = pixels × 3e12, except job 2, booked at 2e15 instead of 3e15.
    let fees = [3 * E15, 3 * E15, 2 * E15, 3 * E15 / 2];
    pool.edit(|d| {
        for (i, (px, fee)) in pixels.iter().zip(fees).enumerate() {
            d.openpool_events.push(testkit::openpool_event(
                100 + i as i64,
                t0 + i as u64 * 60_000 + 5_000,
                "job-processed",
                json!({"computeUnits": px, "pricePerComputeUnit": 3_000_000_000_000u64, "fees": fee, "ethAddress": me.to_checksum(None), "nodeType": "transcode"}),
            ));
        }
    });

    let chain = e.connect_chain().await.unwrap().unwrap();
    let stop = CancellationToken::new();
    let first = e.chain_tick(&chain, None, &stop).await.unwrap();
    assert!(
        first.snapshot.is_some(),
        "a balance snapshot before any payout"
    );

    // Payouts: 5e15 as reported; 9e14 reported as 1e15; 4e14 by a payout contract, unreported.
    let tx_a = double.transfer(&p, me, U256::from(5 * E15)).await;
    let tx_b = double.transfer(&p, me, U256::from(9 * E15 / 10)).await;
    double
        .call(
            &p,
            testkit::payoutCall {
                to: vec![me],
                amounts: vec![U256::from(4 * E15 / 10)],
            },
            U256::from(4 * E15 / 10),
        )
        .await;
    pool.edit(|d| {
        for (id, tx, fee) in [(200, tx_a, 5 * E15), (201, tx_b, E15)] {
            d.openpool_events.push(testkit::openpool_event(
                id,
                now_ms(),
                "pool-payout",
                json!({"ethAddress": me.to_checksum(None), "txHash": tx.to_string(), "fees": fee}),
            ));
        }
    });
    let client = PoolClient::new(
        "openpool",
        &pool.url,
        "",
        me,
        e.model().commission,
        Duration::from_secs(10),
    )
    .unwrap();
    let polled = client.poll(e.records()).await.unwrap();
    assert_eq!((polled.jobs_new, polled.payouts_new), (4, 2));
    // Polling again stores nothing twice.
    let again = client.poll(e.records()).await.unwrap();
    assert_eq!((again.jobs_new, again.payouts_new), (0, 0));
    let second = e.chain_tick(&chain, None, &stop).await.unwrap();
    assert_eq!(second.payouts_checked, 2);

    let r = e
        .reconcile(t0 - 3_600_000, By::Day, now_ms())
        .await
        .unwrap();
    let find = |kind: &str| {
        r.findings
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| (f.effect, f.amount_wei.clone()))
            .collect::<Vec<_>>()
    };
    // Job 2 credited 1.5e15, expected 2.25e15.
    assert_eq!(
        find("short_credit"),
        vec![("short", (75 * E15 / 100).to_string())],
        "{r:#?}"
    );
    // Payout B: 9e14 arrived, 1e15 reported.
    assert_eq!(
        find("payout_short"),
        vec![("short", (E15 / 10).to_string())],
        "{r:#?}"
    );
    // Credited 7.125e15 − reported 6e15 = 1.125e15 < 5e15: waits for the threshold (payout B's
    // 1e14 is flagged once, above, not again here).
    assert_eq!(
        find("below_threshold"),
        vec![("pending", (1125 * E15 / 1000).to_string())],
        "{r:#?}"
    );
    // The internal transfer nobody reported.
    assert_eq!(
        find("unexplained_inflow"),
        vec![("unexplained", (4 * E15 / 10).to_string())],
        "{r:#?}"
    );
    assert!(
        find("not_credited").is_empty() && find("unknown_credit").is_empty(),
        "{r:#?}"
    );
    assert_eq!(r.total.expected_wei, (7875 * E15 / 1000).to_string());
    assert_eq!(r.total.credited_wei, (7125 * E15 / 1000).to_string());
    assert_eq!(r.total.paid_wei, (59 * E15 / 10).to_string());
    assert_eq!(r.total.status, Status::Unexplained);
    assert_eq!(r.paid_source, "chain");
    pool.stop().await;
}

/// Livepool, statement imported from CSV, no chain: the payout is pending − gas, and the gas
/// is explained, so the period is ok.
#[test]
fn livepool_csv_statement_explains_per_payout_gas() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("comine.toml");
    let me = "0x00000000000000000000000000000000000000AA".to_lowercase();
    std::fs::write(
        &cfg_path,
        format!(
            "[earnings]\nmodel = \"livepool\"\ncommission_bps = 250\ngas_price_wei = 100000000\nprice_source = \"config\"\nprice_per_unit = \"3000000000000\"\npayout_address = \"{me}\"\n[earnings.pool]\nkind = \"csv\"\n"
        ),
    )
    .unwrap();
    let cfg = comine::config::Config::load(Some(&cfg_path)).unwrap();
    let t0 = now_ms() - 3 * 3_600_000;
    {
        let e = open(&cfg.earnings, dir.path());
        e.job_done(&job("a", t0, 1000), None, None).unwrap();
        e.job_done(&job("b", t0 + 60_000, 1000), None, None)
            .unwrap();
    }
    // 3e15 × 0.9 × 0.975 = 2.6325e15 each; paid 5.265e15 − 21000 × 1e8.
    let csv = format!(
        "kind,timestamp,pixels,amount_wei,tx_hash\njob,{},1000,2632500000000000,\njob,{},1000,2632500000000000,\npayout,{},,5262900000000000,0x{}\n",
        t0 / 1000 + 3,
        t0 / 1000 + 63,
        t0 / 1000 + 3600,
        "ab".repeat(32)
    );
    let csv_path = dir.path().join("statement.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let bin = env!("CARGO_BIN_EXE_comine");
    let run = |args: &[&str]| {
        Command::new(bin)
            .args(args)
            .arg("--config")
            .arg(&cfg_path)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap()
    };
    let out = run(&["earnings", "pool", "import", csv_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 new job lines and 1 new payouts"));
    let out = run(&["earnings", "reconcile", "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["paid_source"], "pool report (unverified)");
    assert_eq!(v["total"]["expected_wei"], "5265000000000000");
    assert_eq!(v["total"]["credited_wei"], "5265000000000000");
    assert_eq!(v["total"]["paid_wei"], "5262900000000000");
    assert_eq!(v["total"]["status"], "ok", "{v:#}");
    let gas: Vec<_> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "payout_gas")
        .collect();
    assert_eq!(gas.len(), 1);
    assert_eq!(gas[0]["amount_wei"], "2100000000000");
    // A malformed line is refused with its line number, and nothing of the file is stored.
    std::fs::write(
        &csv_path,
        "kind,timestamp,pixels,amount_wei,tx_hash\njob,1700000000,5,5,\njob,1700000001,x,5,\n",
    )
    .unwrap();
    let out = run(&["earnings", "pool", "import", csv_path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("pixels"), "{err}");
    let e = open(&cfg.earnings, dir.path());
    assert_eq!(
        e.records()
            .pool_jobs_between(0, u64::MAX / 2)
            .unwrap()
            .len(),
        2
    );
}

// ---- own orchestrator: scans, reorgs, range limits -------------------------------------------

fn target(double: &Double, orch: Address, chunk: u64) -> ScanTarget {
    ScanTarget {
        stream: format!("orchestrator:{orch}"),
        orchestrator: orch,
        ticket_broker: double.address,
        bonding_manager: double.address,
        start_block: 0,
        chunk_blocks: chunk,
        confirmations: 0,
        keep_checkpoints: 64,
    }
}

fn transfers(r: &Records, stream: &str) -> (usize, U256) {
    let ev = r.chain_events(stream, 0, u64::MAX / 2).unwrap();
    let t: Vec<_> = ev.iter().filter(|e| e.kind == "ticket_transfer").collect();
    (t.len(), t.iter().fold(U256::ZERO, |s, e| s + e.amount))
}

async fn redeem(
    p: &alloy::providers::RootProvider,
    d: &Double,
    orch: Address,
    nonce: u64,
    face: u64,
    amount: u64,
) {
    d.call(
        p,
        testkit::redeemWinningTicketCall {
            sender: d.from,
            recipient: orch,
            faceValue: U256::from(face),
            winProb: U256::MAX / U256::from(100),
            senderNonce: U256::from(nonce),
            amount: U256::from(amount),
        },
        U256::ZERO,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reorg_on_anvil_does_not_double_count() {
    let Some(anvil) = Anvil::start(42161).await else {
        return;
    };
    let p = anvil.provider();
    let d = Double::deploy(&p).await;
    let orch = fresh_address("reorg");
    let records = std::sync::Arc::new(Records::in_memory().unwrap());
    let chain = Chain::connect(&anvil.url, 42161, Duration::from_secs(10))
        .await
        .unwrap();
    let t = target(&d, orch, 2);
    let stop = CancellationToken::new();

    redeem(&p, &d, orch, 1, 1000, 100).await;
    let snap: String = p.raw_request("evm_snapshot".into(), ()).await.unwrap();
    redeem(&p, &d, orch, 2, 1000, 200).await;
    redeem(&p, &d, orch, 3, 1000, 0).await; // a win whose sender could not pay: no transfer
    let _: serde_json::Value = p.raw_request("anvil_mine".into(), (3u64,)).await.unwrap();
    let r1 = chain.scan(&records, &t, None, &stop).await.unwrap();
    assert_eq!(r1.reorgs, 0);
    assert_eq!(
        transfers(&records, &t.stream),
        (2, U256::from(300)),
        "amount, not faceValue"
    );

    // The chain forgets tickets 2 and 3 and grows past the old head with other blocks.
    let reverted: bool = p.raw_request("evm_revert".into(), (snap,)).await.unwrap();
    assert!(reverted);
    redeem(&p, &d, orch, 4, 1000, 40).await;
    let _: serde_json::Value = p.raw_request("anvil_mine".into(), (8u64,)).await.unwrap();
    let r2 = chain.scan(&records, &t, None, &stop).await.unwrap();
    assert_eq!(r2.reorgs, 1, "{r2:?}");
    assert!(r2.events_removed >= 2, "{r2:?}");
    assert_eq!(
        transfers(&records, &t.stream),
        (2, U256::from(140)),
        "ticket 1 + ticket 4, nothing twice"
    );
    // Scanning again adds nothing.
    let r3 = chain.scan(&records, &t, None, &stop).await.unwrap();
    assert_eq!((r3.reorgs, r3.events_added), (0, 0));
    assert_eq!(transfers(&records, &t.stream), (2, U256::from(140)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_survives_range_limits_and_resumes_after_an_outage() {
    let Some(anvil) = Anvil::shared().await else {
        return;
    };
    let p = anvil.provider();
    let d = Double::deploy(&p).await;
    let orch = fresh_address("range");
    for n in 0..6 {
        redeem(&p, &d, orch, n, 1000, 10 + n).await;
        let _: serde_json::Value = p.raw_request("anvil_mine".into(), (5u64,)).await.unwrap();
    }
    let proxy = RangeLimitProxy::start(&anvil.url, 7).await.unwrap();
    // The provider dies after a few queries.
    proxy.edit(|s| s.down_after = Some(6));
    let records = std::sync::Arc::new(Records::in_memory().unwrap());
    let chain = Chain::connect(&proxy.url, 42161, Duration::from_secs(10))
        .await
        .unwrap();
    let t = target(&d, orch, 1000);
    let stop = CancellationToken::new();
    let err = chain.scan(&records, &t, None, &stop).await.unwrap_err();
    assert!(matches!(err, ChainError::Rpc { .. }), "{err}");
    let (_, partial) = transfers(&records, &t.stream);
    let cursor = records.chain_cursor(&t.stream).unwrap();
    assert!(
        cursor.is_some(),
        "what was scanned before the outage is kept"
    );
    assert!(
        proxy.edit(|s| s.refused) > 0,
        "the 1000-block chunk was refused and halved"
    );

    proxy.edit(|s| {
        s.down = false;
        s.down_after = None;
    });
    let r = chain.scan(&records, &t, None, &stop).await.unwrap();
    assert!(r.from_block > 0, "resumed after the cursor: {r:?}");
    let (n, sum) = transfers(&records, &t.stream);
    assert_eq!(n, 6);
    assert_eq!(sum, U256::from((10..16).sum::<u64>()));
    assert!(sum >= partial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_orchestrator_reconciles_with_lottery_noise() {
    let Some(anvil) = Anvil::shared().await else {
        return;
    };
    let p = anvil.provider();
    let d = Double::deploy(&p).await;
    let orch = fresh_address("orch");
    let payee = fresh_address("payee");
    d.call(
        &p,
        testkit::setFeeShareCall {
            transcoder: orch,
            feeShare: U256::from(250_000),
        },
        U256::ZERO,
    )
    .await;
    d.call(
        &p,
        testkit::setRoundCall {
            round: U256::from(4000),
        },
        U256::ZERO,
    )
    .await;
    // Fund the double so it can pay fees out.
    d.transfer(&p, d.address, U256::from(10 * E15)).await;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        price_source: "config".into(),
        price_per_unit: WeiValue(U256::from(1_000_000_000u64)), // 1 gwei per pixel
        model: "orchestrator".into(),
        ..Config::default()
    };
    cfg.chain.rpc_url = anvil.url.clone();
    cfg.chain.mode = "orchestrator".into();
    cfg.chain.orchestrator = orch.to_checksum(None);
    for a in [
        &mut cfg.chain.ticket_broker,
        &mut cfg.chain.bonding_manager,
        &mut cfg.chain.rounds_manager,
    ] {
        *a = d.address.to_checksum(None);
    }
    cfg.chain.start_block = 0;
    cfg.chain.confirmations = 0;
    let e = open(&cfg, dir.path());
    // 16 jobs of 1e6 pixels: gross 1.6e16 wei, expected net 1.2e16 after feeShare 25 %.
    let t0 = now_ms();
    for i in 0..16 {
        e.job_done(&job(&format!("o{i}"), t0 + i, 1_000_000), None, None)
            .unwrap();
    }
    // 16 winning tickets of 1e15 each (EV matches), one paid short: 5e14.
    for n in 0..16u64 {
        redeem(&p, &d, orch, n, E15, if n == 0 { E15 / 2 } else { E15 }).await;
    }
    d.call(
        &p,
        testkit::withdrawFeesCall {
            delegator: orch,
            recipient: payee,
            amount: U256::from(2 * E15),
        },
        U256::ZERO,
    )
    .await;
    let chain = e.connect_chain().await.unwrap().unwrap();
    let tick = e
        .chain_tick(&chain, None, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(tick.fee_share_ppm, Some(250_000));
    assert_eq!(tick.round, Some(4000));
    let r = e.reconcile(t0 - 1000, By::Day, now_ms()).await.unwrap();
    assert_eq!(r.mode, "orchestrator");
    let day = r
        .periods
        .iter()
        .find(|l| l.jobs == 16)
        .unwrap_or_else(|| panic!("{r:#?}"));
    assert_eq!(day.expected_wei, (12 * E15).to_string());
    // Σ amount = 15.5e15; × 0.75 = 11.625e15.
    assert_eq!(day.credited_wei, (11625 * E15 / 1000).to_string());
    assert_eq!(day.paid_wei, (2 * E15).to_string());
    assert_eq!(day.wins, Some(16));
    // Noise ≈ expected / √16 = 3e15: a 3.75e14 gap is luck.
    assert_eq!(
        day.noise_wei.as_deref(),
        Some((3 * E15).to_string().as_str())
    );
    // Not short: the gap is explained as luck; what is left is pendingFees not yet withdrawn.
    assert!(
        r.findings
            .iter()
            .any(|f| f.kind == "lottery" && f.effect == "explained"),
        "{r:#?}"
    );
    assert!(
        r.findings
            .iter()
            .any(|f| f.kind == "pending_fees" && f.amount_wei == (135 * E15 / 10).to_string()),
        "{r:#?}"
    );
    assert_eq!(
        (day.status, day.status_wei.as_str()),
        (Status::Pending, (135 * E15 / 10).to_string().as_str()),
        "{r:#?}"
    );
}

// ---- receipts -------------------------------------------------------------------------------

#[test]
fn receipts_export_verify_offline_and_a_tampered_pixel_count_fails() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("earnings.key");
    let out = Command::new(env!("CARGO_BIN_EXE_comine"))
        .args(["earnings", "key", "new", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let cfg = Config {
        key_file: Some(key.clone()),
        ..Config::default()
    };
    let day_ms = comine::ledger::time::parse_date("2026-03-01").unwrap();
    {
        let e = open(&cfg, dir.path());
        assert_eq!(e.key_address().unwrap().to_string(), addr);
        for i in 0..5u64 {
            let signed = e
                .sign_receipt(&ReceiptDraft {
                    job_id: format!("task-{i}"),
                    orchestrator: Some(Address::repeat_byte(9)),
                    manifest_id: "m".into(),
                    seq: Some(i as i64),
                    decoded_pixels: 1000 + i,
                    encoded_pixels: 2000 + i,
                    cids: vec![format!("QmA{i}"), format!("QmB{i}")],
                    completed_at_ms: day_ms + 1000 * i,
                })
                .unwrap()
                .unwrap();
            signed.verify().unwrap();
        }
        // HTTP jobs get theirs at completion.
        e.job_done(&job("http-1", day_ms + 9000, 500), None, None)
            .unwrap();
    }
    let export = dir.path().join("receipts.json");
    let out = Command::new(env!("CARGO_BIN_EXE_comine"))
        .args(["earnings", "receipts", "--day", "2026-03-01", "--out"])
        .arg(&export)
        .arg("--data-dir")
        .arg(dir.path())
        .env("COMINE_TEST_UNUSED", "1")
        .output()
        .unwrap();
    // The key comes from the config: without one, exporting an unsigned day is refused.
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("key_file"));
    let cfg_path = dir.path().join("comine.toml");
    std::fs::write(
        &cfg_path,
        format!("[earnings]\nkey_file = {:?}\n", key.display().to_string()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_comine"))
        .args(["earnings", "receipts", "--day", "2026-03-01", "--out"])
        .arg(&export)
        .arg("--config")
        .arg(&cfg_path)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(
        !text.contains(std::fs::read_to_string(&key).unwrap().trim()),
        "the key never leaves its file"
    );
    let verify = |path: &Path| {
        Command::new(env!("CARGO_BIN_EXE_comine"))
            .args(["earnings", "verify", "--format", "json"])
            .arg(path)
            .output()
            .unwrap()
    };
    let out = verify(&export);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["receipts"], 6);
    assert_eq!(rep["valid"], 6);
    assert_eq!(rep["root_valid"], true);
    assert_eq!(
        rep["encoded_pixels"],
        2000 + 2001 + 2002 + 2003 + 2004 + 500
    );

    // One encoded pixel more on one receipt: its signature no longer matches.
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let px = v["receipts"][2]["receipt"]["encoded_pixels"]
        .as_u64()
        .unwrap();
    v["receipts"][2]["receipt"]["encoded_pixels"] = json!(px + 1);
    let tampered = dir.path().join("tampered.json");
    std::fs::write(&tampered, serde_json::to_string(&v).unwrap()).unwrap();
    let out = verify(&tampered);
    assert!(!out.status.success());
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["valid"], 5);
    assert_eq!(
        rep["root_valid"], false,
        "the root no longer covers the altered receipt"
    );
    assert!(rep["failures"].to_string().contains("task-2"), "{rep}");
}

// ---- bad input --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gives_clear_errors_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = priced("custom");
    {
        let e = open(&base, dir.path());
        e.job_done(&job("kept", now_ms(), 1000), None, None)
            .unwrap();
    }
    let kept = || {
        Records::open(&dir.path().join("comine.db"))
            .unwrap()
            .job_count()
            .unwrap()
    };

    // Wrong chain id.
    if let Some(anvil) = Anvil::start(1).await {
        let err = Chain::connect(&anvil.url, 42161, Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("chain id 1, not 42161") && err.contains("rpc_url"),
            "{err}"
        );
        let mut cfg = base.clone();
        cfg.chain.rpc_url = anvil.url.clone();
        let e = open(&cfg, dir.path());
        assert!(matches!(
            e.connect_chain().await,
            Err(EarningsError::Chain(ChainError::WrongChain { .. }))
        ));
    }
    // Unreachable endpoint; its API key never reaches the message.
    let err = Chain::connect(
        "http://127.0.0.1:9/v3/SECRET-API-KEY",
        42161,
        Duration::from_secs(3),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cannot reach") && err.contains("127.0.0.1:9") && !err.contains("SECRET"),
        "{err}"
    );

    // A key file group or others can read is refused, naming the fix, never the key.
    let key = dir.path().join("loose.key");
    let secret = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
    std::fs::write(&key, secret).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let cfg = Config {
            key_file: Some(key.clone()),
            ..base.clone()
        };
        let err = Earnings::open(&cfg, dir.path(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600") && !err.contains(secret), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Earnings::open(&cfg, dir.path(), None).is_ok());
    }

    // A malformed address, in the library and through the CLI's config check.
    let cfg = Config {
        payout_address: Some("0x12345".into()),
        ..base.clone()
    };
    let err = Earnings::open(&cfg, dir.path(), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("earnings.payout_address") && err.contains("40 hex digits"),
        "{err}"
    );
    let cfg_path = dir.path().join("bad.toml");
    std::fs::write(&cfg_path, "[earnings.chain]\nrpc_url = \"http://127.0.0.1:8545\"\nmode = \"orchestrator\"\norchestrator = \"0xZZ\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_comine"))
        .args(["earnings", "--config"])
        .arg(&cfg_path)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("earnings.chain.orchestrator") && err.lines().count() == 1,
        "{err}"
    );

    // An unreachable pool: the poll fails, stored lines stay.
    let e = open(&base, dir.path());
    let client = PoolClient::new(
        "livepool",
        "http://127.0.0.1:9",
        "",
        Address::repeat_byte(1),
        e.model().commission,
        Duration::from_secs(3),
    )
    .unwrap();
    let err = client.poll(e.records()).await.unwrap_err().to_string();
    assert!(err.contains("cannot reach the pool"), "{err}");
    drop(e);
    assert_eq!(kept(), 1, "no error above lost the recorded job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_errors_are_kept_and_polling_recovers() {
    let pool = TestPool::start().await.unwrap();
    let me = Address::repeat_byte(0x42);
    let records = Arc::new(Records::in_memory().unwrap());
    pool.edit(|d| {
        d.livepool_jobs.push(json!({"timestamp": now_ms() / 1000, "transcoder": me.to_checksum(None), "payout": 10, "payout_usd": 0, "pixels": 100, "duration": 2_000_000_000u64, "profiles": ["P240p30fps16x9"]}));
        d.fail_with = Some(503);
    });
    let client = PoolClient::new(
        "livepool",
        &pool.url,
        "",
        me,
        comine::earnings::money::Frac::ZERO,
        Duration::from_secs(5),
    )
    .unwrap();
    let err = client.poll(&records).await.unwrap_err().to_string();
    assert!(err.contains("HTTP 503"), "{err}");
    pool.edit(|d| d.fail_with = None);
    let r = client.poll(&records).await.unwrap();
    assert_eq!(r.jobs_new, 1);
    let seen = pool.data.lock().unwrap().requests.clone();
    assert!(seen.iter().any(|q| q.contains("transcoder")), "{seen:?}");
    pool.stop().await;
}

// ---- the daemon ------------------------------------------------------------------------------

/// A job done through `comine run`'s API is valued and signed: `/v1/status` and `/metrics`
/// show today's expected earnings in wei (encoded pixels × price ÷ pixelsPerUnit, the
/// livepool model applied), and the day's receipts export and verify offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_values_done_jobs_and_signs_their_receipts() {
    use comine::daemon::admission::SemaphoreAdmission;
    use comine::daemon::rendition_store::EmbeddedStore;
    use comine::daemon::Daemon;

    let root = tempfile::tempdir().unwrap();
    let seg = crate::common::segment(root.path(), "s.ts", "testsrc");
    let data = root.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let key = root.path().join("operator.key");
    let signer = comine::earnings::receipts::OperatorKey::generate(&key)
        .unwrap()
        .address();
    let mut config = comine::config::Config::default();
    config.transcode.encoder = "x264".into();
    config.transcode.decoder = "software".into();
    config.transcode.x264_preset = "ultrafast".into();
    config.earnings = priced("livepool");
    config.earnings.key_file = Some(key);
    let store = Arc::new(EmbeddedStore::open(&data, None).unwrap());
    let sched = Arc::new(SemaphoreAdmission::new(1));
    let token = "t".repeat(32);
    let d = Daemon::open(config, data.clone(), store, sched, token.clone()).unwrap();
    d.resume().await.unwrap();
    d.spawn_dispatcher();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = comine::daemon::api::router(d.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let http = reqwest::Client::new();
    let done: serde_json::Value = http
        .post(format!(
            "{base}/v1/transcode?profiles=P144p30fps16x9&manifest_id=m&seq=1"
        ))
        .bearer_auth(&token)
        .body(seg)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(done["state"], "done", "{done}");
    let px = done["encoded_pixels"].as_u64().unwrap();
    assert!(px > 0);
    // 1200 wei per 1000 px; livepool keeps 90 %, then 2.5 % commission; rounded once.
    let gross = U256::from(px) * U256::from(1200) / U256::from(1000);
    let net = U256::from(px) * U256::from(1200 * 9 * 9750) / U256::from(1000u64 * 10 * 10_000);
    let st: serde_json::Value = http
        .get(format!("{base}/v1/status"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let today = &st["earnings"]["today"];
    assert_eq!(today["jobs"], 1, "{st}");
    assert_eq!(today["gross_wei"], gross.to_string(), "{st}");
    assert_eq!(today["net_wei"], net.to_string(), "{st}");
    assert_eq!(st["earnings"]["model"], "livepool");
    assert_eq!(st["earnings"]["receipt_signer"], signer.to_checksum(None));
    let metrics = http
        .get(format!("{base}/metrics"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!("comine_earnings_expected_today_net_wei {net}")),
        "{metrics}"
    );
    assert!(!metrics.contains(
        &std::fs::read_to_string(root.path().join("operator.key"))
            .unwrap()
            .trim()
            .to_string()
    ));

    // The receipt names the job's pixels and CIDs, and verifies offline.
    let day = comine::ledger::time::day_of(now_ms());
    let ex = d.earnings.export_day(&day).unwrap();
    assert_eq!(ex.receipts.len(), 1);
    let text = serde_json::to_string(&ex).unwrap();
    let rep = comine::earnings::receipts::verify_export(&text).unwrap();
    assert!(rep.ok(), "{rep:?}");
    assert_eq!(rep.encoded_pixels, u128::from(px));
    assert_eq!(rep.signer, Some(signer));
    d.shutdown(Duration::from_secs(5)).await;
}

/// Issue 17: the pool poller, the chain watcher and reconcile keep SQLite off the runtime's
/// workers. They run here on the daemon's runtime (`db::guard_runtime`), where a blocking
/// database call on a worker thread panics (debug builds), and inside a spawned task, which
/// runs on a worker.
#[test]
fn pool_polling_chain_ticks_and_reconcile_keep_sqlite_off_the_async_workers() {
    let rt = comine::db::guard_runtime(&mut tokio::runtime::Builder::new_multi_thread())
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::spawn(async {
            // A worker is known as one once it has parked: yield to the runtime first.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let Some(anvil) = Anvil::shared().await else {
                return;
            };
            let p = anvil.provider();
            let double = Double::deploy(&p).await;
            let pool = TestPool::start().await.unwrap();
            let me = fresh_address("offworker");
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = Config {
                price_source: "config".into(),
                model: "openpool".into(),
                commission: "0.25".into(),
                payout_address: Some(me.to_checksum(None)),
                ..Config::default()
            };
            cfg.pool.kind = "openpool".into();
            cfg.pool.url = pool.url.clone();
            cfg.chain.rpc_url = anvil.url.clone();
            cfg.chain.snapshot_interval_secs = 0;
            cfg.chain.rounds_manager = double.address.to_checksum(None);
            let d = dir.path().to_path_buf();
            let e = Arc::new(
                tokio::task::spawn_blocking(move || open(&cfg, &d))
                    .await
                    .unwrap(),
            );
            let t0 = now_ms() - 3_600_000;
            pool.edit(|d| {
                d.openpool_events.push(testkit::openpool_event(
                    1,
                    t0,
                    "job-processed",
                    json!({"computeUnits": 1000, "pricePerComputeUnit": 1, "fees": 1000, "ethAddress": me.to_checksum(None), "nodeType": "transcode"}),
                ));
            });
            let chain = e.connect_chain().await.unwrap().unwrap();
            let stop = CancellationToken::new();
            let tick = e.chain_tick(&chain, None, &stop).await.unwrap();
            assert!(tick.snapshot.is_some(), "the balance snapshot was stored");
            let client = PoolClient::new(
                "openpool",
                &pool.url,
                "",
                me,
                e.model().commission,
                Duration::from_secs(10),
            )
            .unwrap();
            let polled = client.poll(e.records()).await.unwrap();
            assert_eq!(polled.jobs_new, 1);
            let r = e.reconcile(t0 - 3_600_000, By::Day, now_ms()).await;
            assert!(r.is_ok(), "{:?}", r.err());
        })
        .await
        .unwrap();
    });
}
