//! Earnings: what the work earned, what the pool credited, what reached the wallet.
//!
//! - **Expected** (local, exact): every completed job gets a price snapshot
//!   ([`price::PriceBoard`]: the orchestrator's `GetOrchestrator` quote, `[earnings]
//!   price_per_unit`, or the pool's); a pool model ([`model`]) turns gross into net; sums stay
//!   exact fractions ([`money`]) and are rounded once per statement ([`statement`]).
//! - **Credited**: the pool's statement (Livepool `/jobs`, Open Pool `/pool/events`, CSV),
//!   polled and stored ([`pool`]), matched to comine's jobs and explained ([`reconcile`]).
//! - **Paid**: read-only chain checks with alloy ([`chain`] over [`rpc`]): payout
//!   transactions verified, balance snapshots, or TicketBroker/BondingManager scans.
//! - **Signed work receipts** ([`receipts`]): EIP-712 per job, a daily Merkle root signed
//!   EIP-191, export with proofs and offline verification.
//!
//! Everything persistent lives in the `earnings_*` tables ([`records`]) of
//! `<data_dir>/comine.db`. [`Earnings`] is the service the daemon holds.

pub mod chain;
pub mod cli;
pub mod config;
pub mod model;
pub mod money;
pub mod pool;
pub mod price;
pub mod receipts;
pub mod reconcile;
pub mod records;
pub mod rpc;
pub mod statement;
#[cfg(any(test, feature = "test-utils"))]
pub mod testkit;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use alloy::primitives::{Address, U256};
use tokio_util::sync::CancellationToken;

pub use config::Config;
use config::{parse_address, ConfigValueError};
use model::PoolModel;
use price::PriceBoard;
use receipts::{KeyError, OperatorKey, Receipt, ReceiptError, SignedReceipt};
use records::{JobEarning, Records, RecordsError, StoredReceipt};

/// The database file every module's tables share.
pub const DB_FILE: &str = crate::db::FILE;

#[derive(Debug, thiserror::Error)]
pub enum EarningsError {
    #[error(transparent)]
    Config(#[from] ConfigValueError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error("earnings arithmetic: {0}")]
    Money(#[from] money::MoneyError),
    #[error(transparent)]
    Receipt(#[from] ReceiptError),
    #[error(transparent)]
    Chain(#[from] chain::ChainError),
    #[error(transparent)]
    Pool(#[from] pool::PoolError),
    #[error("no operator key: set [earnings] key_file (create one with `comine earnings key new --out FILE`, mode 0600)")]
    NoKey,
    #[error("no payout address: set [earnings] payout_address or [livepeer] eth_address")]
    NoPayoutAddress,
}

/// The joined `source` chain of an error, on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// RFC 3339 with whole seconds (`2024-02-29T12:00:00Z`), as Go's `time.RFC3339` writes it.
pub fn rfc3339_secs(ms: u64) -> String {
    let full = crate::ledger::time::rfc3339(ms);
    match full.split_once('.') {
        Some((head, _)) => format!("{head}Z"),
        None => full,
    }
}

/// A job's facts for its receipt.
#[derive(Clone, Debug)]
pub struct ReceiptDraft {
    pub job_id: String,
    pub orchestrator: Option<Address>,
    pub manifest_id: String,
    pub seq: Option<i64>,
    pub decoded_pixels: u64,
    pub encoded_pixels: u64,
    pub cids: Vec<String>,
    pub completed_at_ms: u64,
}

/// The earnings service: price board, model, tables, key and background work.
pub struct Earnings {
    cfg: Config,
    records: Arc<Records>,
    board: Arc<PriceBoard>,
    model: RwLock<PoolModel>,
    key: Option<Arc<OperatorKey>>,
    payout: Option<Address>,
    chain_id: u64,
    last_snapshot_ms: Mutex<u64>,
}

impl std::fmt::Debug for Earnings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Earnings")
            .field("model", &self.model().kind)
            .field("payout", &self.payout)
            .field("key", &self.key.as_ref().map(|k| k.address()))
            .finish()
    }
}

impl Earnings {
    /// Opens the tables in `data_dir/comine.db`, loads the key (refused unless mode 0600)
    /// and settles the payout address (`[earnings] payout_address`, else `fallback` —
    /// `[livepeer] eth_address` — else the key's address).
    pub fn open(
        cfg: &Config,
        data_dir: &Path,
        fallback_payout: Option<Address>,
    ) -> Result<Earnings, EarningsError> {
        // The daemon's one database (shared with the ledger's handle in this process).
        let db = crate::db::Db::open(data_dir).map_err(RecordsError::from)?;
        let records = Records::with_db(db)?;
        Earnings::with_records(cfg, Arc::new(records), fallback_payout)
    }

    pub fn with_records(
        cfg: &Config,
        records: Arc<Records>,
        fallback_payout: Option<Address>,
    ) -> Result<Earnings, EarningsError> {
        cfg.validate()?;
        let key = cfg
            .key_file
            .as_deref()
            .map(OperatorKey::load)
            .transpose()?
            .map(Arc::new);
        let payout = match &cfg.payout_address {
            Some(a) => Some(parse_address("earnings.payout_address", a)?),
            None => fallback_payout.or_else(|| key.as_ref().map(|k| k.address())),
        };
        Ok(Earnings {
            board: Arc::new(PriceBoard::new(
                cfg.price_preference()?,
                cfg.price_per_unit.0,
                cfg.pixels_per_unit.0,
            )),
            model: RwLock::new(cfg.pool_model(None)?),
            cfg: cfg.clone(),
            records,
            key,
            payout,
            chain_id: cfg.chain.chain_id,
            last_snapshot_ms: Mutex::new(0),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
    pub fn records(&self) -> &Arc<Records> {
        &self.records
    }
    pub fn board(&self) -> &Arc<PriceBoard> {
        &self.board
    }
    pub fn model(&self) -> PoolModel {
        self.model
            .read()
            .map(|m| m.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }
    pub fn key_address(&self) -> Option<Address> {
        self.key.as_ref().map(|k| k.address())
    }
    pub fn payout_address(&self) -> Option<Address> {
        self.payout
    }

    /// `(address, signature)` for go-livepeer's `GetOrchestrator` (a sender signs its own
    /// address); `None` without a key.
    pub fn orchestrator_request(&self) -> Option<(Address, Vec<u8>)> {
        let k = self.key.as_ref()?;
        k.orchestrator_request_sig().ok().map(|s| (k.address(), s))
    }

    /// Signs and keeps a receipt; `None` without a key.
    pub fn sign_receipt(&self, d: &ReceiptDraft) -> Result<Option<SignedReceipt>, EarningsError> {
        let Some(key) = &self.key else {
            return Ok(None);
        };
        let receipt = Receipt {
            job_id: d.job_id.clone(),
            transcoder: self.payout.unwrap_or(key.address()),
            orchestrator: d.orchestrator.unwrap_or(Address::ZERO),
            manifest_id: d.manifest_id.clone(),
            seq: d.seq.unwrap_or(-1),
            decoded_pixels: d.decoded_pixels,
            encoded_pixels: d.encoded_pixels,
            renditions_hash: receipts::renditions_hash(&d.cids),
            completed_at_ms: d.completed_at_ms,
        };
        let signed = key.sign(receipt, d.cids.clone(), self.chain_id)?;
        self.records.insert_receipt(&StoredReceipt {
            job_id: d.job_id.clone(),
            ledger_job_id: None,
            day: crate::ledger::time::day_of(d.completed_at_ms),
            completed_ms: d.completed_at_ms,
            digest: signed.receipt.digest(self.chain_id),
            signer: key.address(),
            body: serde_json::to_string(&signed).unwrap_or_default(),
        })?;
        Ok(Some(signed))
    }

    /// A job reached `done` in the ledger: keep its price snapshot (the first one stands),
    /// and sign its receipt unless one was signed when its results were posted
    /// (`receipt_job_id`, Livepeer), which is linked to the ledger's id instead.
    pub fn job_done(
        &self,
        job: &crate::ledger::JobRecord,
        receipt_job_id: Option<&str>,
        orchestrator: Option<Address>,
    ) -> Result<(), EarningsError> {
        let finished = job.finished_at_ms.unwrap_or(job.updated_at_ms);
        let ai = job.class == crate::ledger::JobClass::Ai;
        let mut price = if ai {
            self.ai_price(job)
        } else {
            self.board.current()
        };
        if price.orchestrator.is_none() {
            price.orchestrator = orchestrator;
        }
        self.records.record_job(&JobEarning {
            job_id: job.job_id.clone(),
            finished_ms: finished,
            manifest_id: job.manifest_id.clone(),
            seq: job.seq.and_then(|s| i64::try_from(s).ok()),
            decoded_pixels: job.decoded_pixels,
            encoded_pixels: job.encoded_pixels,
            price,
            round: self.board.round(),
            class: if ai {
                records::CLASS_AI
            } else {
                records::CLASS_TRANSCODE
            }
            .into(),
        })?;
        // A receipt signed when the results were posted (Livepeer) is linked; otherwise,
        // or when that signing failed, the job is signed now.
        let linked = match receipt_job_id {
            Some(rid) => self.records.link_receipt(rid, &job.job_id)?,
            None => false,
        };
        if !linked {
            self.sign_receipt(&ReceiptDraft {
                job_id: job.job_id.clone(),
                orchestrator,
                manifest_id: job.manifest_id.clone().unwrap_or_default(),
                seq: job.seq.and_then(|s| i64::try_from(s).ok()),
                decoded_pixels: job.decoded_pixels,
                encoded_pixels: job.encoded_pixels,
                cids: job.renditions.iter().map(|r| r.cid.clone()).collect(),
                completed_at_ms: finished,
            })?;
        }
        Ok(())
    }

    /// An AI job's price: `[earnings.ai]` for its pipeline (named by its `ai:PIPELINE`
    /// profile), source `config`; `none` (worth 0) when no price is set. Its units
    /// (`encoded_pixels`) are Livepeer's AI billing units.
    fn ai_price(&self, job: &crate::ledger::JobRecord) -> price::PriceSnapshot {
        let pipeline = job
            .profiles
            .iter()
            .find_map(|p| p.strip_prefix("ai:"))
            .unwrap_or_default();
        let (price_per_unit, pixels_per_unit) = self.cfg.ai.price_of(pipeline);
        if price_per_unit.is_zero() {
            return price::PriceSnapshot::none();
        }
        price::PriceSnapshot {
            price_per_unit,
            pixels_per_unit,
            source: price::PriceSource::Config,
            at_ms: crate::util::now_ms(),
            orchestrator: None,
        }
    }

    /// Today's (UTC) expected earnings.
    pub fn today(&self) -> Result<statement::Today, EarningsError> {
        let now = crate::util::now_ms();
        let start = now - now % 86_400_000;
        let jobs = self.records.jobs_between(start, start + 86_400_000)?;
        Ok(statement::today(
            &jobs,
            &self.model(),
            &crate::ledger::time::day_of(now),
        )?)
    }

    /// `comine earnings` rows.
    pub fn statement(
        &self,
        since_ms: u64,
        by: statement::By,
    ) -> Result<statement::EarningsStatement, EarningsError> {
        let jobs = self.records.jobs_between(since_ms, u64::MAX / 2)?;
        let rounds = self.records.rounds()?;
        Ok(statement::build(
            &jobs,
            &self.model(),
            by,
            since_ms,
            &rounds,
        )?)
    }

    /// Signs the Merkle root of every finished day that has receipts and no root yet.
    pub fn sign_due_roots(&self, now_ms: u64) -> Result<Vec<String>, EarningsError> {
        if self.key.is_none() {
            return Ok(Vec::new());
        }
        let due_before =
            crate::ledger::time::day_of(now_ms.saturating_sub(self.cfg.root_delay_secs * 1000));
        let mut out = Vec::new();
        for day in self.records.days_without_root(&due_before)? {
            self.day_root(&day, true)?;
            out.push(day);
        }
        Ok(out)
    }

    /// The day's signed root, (re)signing it when missing or when the day's receipts changed.
    fn day_root(
        &self,
        day: &str,
        sign: bool,
    ) -> Result<(records::DailyRoot, Vec<SignedReceipt>), EarningsError> {
        let stored = self.records.receipts_of_day(day)?;
        let mut signed = Vec::with_capacity(stored.len());
        for r in &stored {
            let s: SignedReceipt =
                serde_json::from_str(&r.body).map_err(|_| RecordsError::Corrupt {
                    what: "earnings_receipts.body",
                    value: r.job_id.clone(),
                })?;
            signed.push(s);
        }
        let leaves: Vec<_> = signed
            .iter()
            .map(|s| receipts::leaf(&s.receipt.digest(s.chain_id)))
            .collect();
        let root = receipts::merkle_root(&leaves);
        if let Some(r) = self.records.root(day)? {
            if r.root == root && r.count == signed.len() as u64 {
                return Ok((r, signed));
            }
        }
        let key = match (&self.key, sign) {
            (Some(k), true) => k,
            _ => return Err(EarningsError::NoKey),
        };
        let message = receipts::root_message(day, signed.len() as u64, &root);
        let r = records::DailyRoot {
            day: day.into(),
            root,
            count: signed.len() as u64,
            signer: key.address(),
            signature: key.sign_message(message.as_bytes())?,
            message,
            made_ms: crate::util::now_ms(),
        };
        self.records.put_root(&r)?;
        Ok((r, signed))
    }

    /// `comine earnings receipts --day DATE`.
    pub fn export_day(&self, day: &str) -> Result<receipts::Export, EarningsError> {
        let (root, signed) = self.day_root(day, true)?;
        Ok(receipts::build_export(
            day,
            root.signer,
            self.chain_id,
            signed,
            root.message,
            root.signature,
        ))
    }

    /// Connects to `[earnings.chain]` (chain id checked); `None` when no rpc_url is set.
    pub async fn connect_chain(&self) -> Result<Option<chain::Chain>, EarningsError> {
        let c = &self.cfg.chain;
        if c.rpc_url.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            chain::Chain::connect(
                &c.rpc_url,
                c.chain_id,
                Duration::from_secs(c.timeout_secs.max(1)),
            )
            .await?,
        ))
    }

    /// The own-orchestrator scan target.
    pub fn scan_target(&self) -> Result<chain::ScanTarget, EarningsError> {
        let c = &self.cfg.chain;
        let orch = parse_address("earnings.chain.orchestrator", &c.orchestrator)?;
        Ok(chain::ScanTarget {
            stream: format!("orchestrator:{}", orch.to_checksum(None)),
            orchestrator: orch,
            ticket_broker: parse_address("earnings.chain.ticket_broker", &c.ticket_broker)?,
            bonding_manager: parse_address("earnings.chain.bonding_manager", &c.bonding_manager)?,
            start_block: c.start_block,
            chunk_blocks: c.chunk_blocks,
            confirmations: c.confirmations,
            keep_checkpoints: 256,
        })
    }

    /// One pass of chain work: round, fee share and scan (orchestrator mode), or payout
    /// checks and a balance snapshot when due (pool mode).
    pub async fn chain_tick(
        &self,
        chain: &chain::Chain,
        max_blocks: Option<u64>,
        shutdown: &CancellationToken,
    ) -> Result<ChainTick, EarningsError> {
        let c = &self.cfg.chain;
        let mut tick = ChainTick::default();
        let rounds = parse_address("earnings.chain.rounds_manager", &c.rounds_manager)?;
        match chain.current_round(rounds).await {
            Ok(r) => {
                self.board.set_round(r);
                let head = chain.head().await.unwrap_or_default();
                let now = crate::util::now_ms();
                self.records
                    .call(move |rec| rec.saw_round(r, now, head))
                    .await?;
                tick.round = Some(r);
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the current round"),
        }
        if c.mode == "orchestrator" {
            let t = self.scan_target()?;
            let bm = t.bonding_manager;
            if self.cfg.fee_share_ppm.is_none() && self.cfg.model == "orchestrator" {
                if let Ok(ppm) = chain.fee_share_ppm(bm, t.orchestrator).await {
                    let m = self.cfg.pool_model(Some(ppm))?;
                    if let Ok(mut g) = self.model.write() {
                        *g = m;
                    }
                    tick.fee_share_ppm = Some(ppm);
                }
            }
            tick.scan = Some(chain.scan(&self.records, &t, max_blocks, shutdown).await?);
            return Ok(tick);
        }
        let Some(me) = self.payout else {
            return Err(EarningsError::NoPayoutAddress);
        };
        for p in self.records.call(|r| r.pool_payouts()).await? {
            let recheck = p
                .check
                .as_ref()
                .is_none_or(|c| matches!(c.state.as_str(), "pending" | "not_found"));
            let (Some(tx), true) = (p.tx_hash, recheck) else {
                continue;
            };
            let check = chain.verify_payout(tx, me, p.amount).await?;
            let (source, ext_id) = (p.source.clone(), p.ext_id.clone());
            self.records
                .call(move |r| r.set_payout_check(&source, &ext_id, &check))
                .await?;
            tick.payouts_checked += 1;
        }
        let now = crate::util::now_ms();
        let due = {
            let last = self.last_snapshot_ms.lock().map(|g| *g).unwrap_or(0);
            now.saturating_sub(last) >= c.snapshot_interval_secs * 1000
        };
        if due {
            let s = chain.snapshot(me).await?;
            let block = self
                .records
                .call(move |r| r.add_snapshot(&s).map(|()| s.block))
                .await?;
            if let Ok(mut g) = self.last_snapshot_ms.lock() {
                *g = now;
            }
            tick.snapshot = Some(block);
        }
        Ok(tick)
    }

    /// Reconciles from `since_ms` on, reading the chain for pendingFees when configured.
    pub async fn reconcile(
        &self,
        since_ms: u64,
        by: statement::By,
        now_ms: u64,
    ) -> Result<reconcile::Reconciliation, EarningsError> {
        let window = self.cfg.match_window_secs * 1000;
        let (jobs, rounds) = self
            .records
            .call(move |r| Ok((r.jobs_between(since_ms, u64::MAX / 2)?, r.rounds()?)))
            .await?;
        let mut inp = reconcile::Inputs {
            jobs,
            rounds,
            chain_checked: !self.cfg.chain.rpc_url.is_empty(),
            ..Default::default()
        };
        let settings = reconcile::Settings {
            by,
            match_window_ms: window,
            credit_grace_ms: (self.cfg.pool.poll_interval_secs * 1000).max(window) * 2,
            payout_grace_ms: 48 * 3_600_000,
            now_ms,
        };
        let model = self.model();
        if self.cfg.chain.mode == "orchestrator" && !self.cfg.chain.rpc_url.is_empty() {
            let t = self.scan_target()?;
            let stream = t.stream.clone();
            inp.chain_events = self
                .records
                .call(move |r| r.chain_events(&stream, since_ms, u64::MAX / 2))
                .await?;
            if let Ok(Some(chain)) = self.connect_chain().await {
                let rm = parse_address(
                    "earnings.chain.rounds_manager",
                    &self.cfg.chain.rounds_manager,
                )?;
                if let Ok(round) = chain.current_round(rm).await {
                    inp.pending_fees = chain
                        .pending_fees(t.bonding_manager, t.orchestrator, round)
                        .await
                        .ok();
                }
            }
            return Ok(reconcile::reconcile_orchestrator(&model, &inp, &settings)?);
        }
        let payout = self.payout;
        (inp.pool_jobs, inp.payouts, inp.snapshots) = self
            .records
            .call(move |r| {
                Ok((
                    r.pool_jobs_between(since_ms.saturating_sub(window), u64::MAX / 2)?,
                    r.pool_payouts()?,
                    match payout {
                        Some(me) => r.snapshots(me)?,
                        None => Vec::new(),
                    },
                ))
            })
            .await?;
        Ok(reconcile::reconcile_pool(&model, &inp, &settings)?)
    }

    /// Background work until `shutdown`: the pool poller, the chain watcher and the daily
    /// root signer. Failures are logged and retried; none stops the daemon.
    pub fn spawn(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let p = &self.cfg.pool;
        if matches!(p.kind.as_str(), "livepool" | "openpool") {
            match (self.payout, self.model().commission) {
                (Some(me), commission) => match pool::PoolClient::new(&p.kind, &p.url, &p.payouts_url, me, commission, Duration::from_secs(p.timeout_secs.max(1))) {
                    Ok(client) => tasks.push(tokio::spawn(client.run(
                        self.records.clone(),
                        Duration::from_secs(p.poll_interval_secs.max(1)),
                        shutdown.clone(),
                    ))),
                    Err(e) => tracing::error!(error = %e, "pool statement polling is off"),
                },
                (None, _) => tracing::warn!("pool statement polling is off: no payout address ([earnings] payout_address or [livepeer] eth_address)"),
            }
        }
        if !self.cfg.chain.rpc_url.is_empty() {
            let me = self.clone();
            let stop = shutdown.clone();
            tasks.push(tokio::spawn(async move { me.watch_chain(stop).await }));
        }
        let me = self.clone();
        let stop = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                // SQLite and signing: off the async workers.
                let m = me.clone();
                match tokio::task::spawn_blocking(move || m.sign_due_roots(crate::util::now_ms()))
                    .await
                {
                    Ok(Ok(days)) if !days.is_empty() => {
                        tracing::info!(?days, "signed daily receipt roots")
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "signing daily receipt roots failed; will retry")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the receipt root task failed; will retry")
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(300)) => {}
                }
            }
        }));
        tasks
    }

    async fn watch_chain(&self, shutdown: CancellationToken) {
        let interval = Duration::from_secs(self.cfg.chain.poll_interval_secs.max(1));
        let mut chain: Option<chain::Chain> = None;
        loop {
            if chain.is_none() {
                match self.connect_chain().await {
                    Ok(c) => chain = c,
                    Err(e) => {
                        tracing::warn!(error = %e, "earnings chain checks are waiting for the endpoint")
                    }
                }
            }
            if let Some(c) = &chain {
                match self.chain_tick(c, Some(100_000), &shutdown).await {
                    Ok(t) => tracing::debug!(?t, "earnings chain tick"),
                    Err(e) => {
                        tracing::warn!(error = %e, "earnings chain tick failed; will retry");
                        if matches!(
                            e,
                            EarningsError::Chain(chain::ChainError::Unreachable { .. })
                        ) {
                            chain = None;
                        }
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// What one [`Earnings::chain_tick`] did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ChainTick {
    pub round: Option<u64>,
    pub fee_share_ppm: Option<u32>,
    pub scan: Option<chain::ScanReport>,
    pub payouts_checked: usize,
    pub snapshot: Option<u64>,
}

/// The default key path: `<data_dir>/earnings.key`.
pub fn default_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("earnings.key")
}

/// Wei as a decimal string, saturating into `i64` for Prometheus gauges.
pub fn wei_i64(s: &str) -> i64 {
    s.parse::<U256>()
        .ok()
        .and_then(|v| i64::try_from(v).ok())
        .unwrap_or(i64::MAX)
}
