//! Expected, credited, paid: one line per period, and every difference explained or flagged.
//!
//! Pool mode matches the pool's statement to comine's jobs by time window and pixel count
//! (pools name no segment), then explains each gap: the model's commission and whole-wei
//! price truncation are already out of `expected`; a pool flooring each job's credit to
//! whole wei (< 1 wei per job); a different pixel count; per-payout gas (Livepool pays
//! pending − gas); a balance below the payout threshold (pending). What remains is `short`
//! (with its amount). Payouts are checked on chain, and balance snapshots of the payout
//! address expose inflows nobody reported (`unexplained`, with the amount).
//!
//! Own-orchestrator mode compares expected fees with `WinningTicketTransfer` amounts (after
//! feeShare) and shows the lottery's noise, expected ÷ √wins, next to the difference: a gap
//! within twice that is luck, not theft.

use std::collections::BTreeMap;

use alloy::primitives::U256;
use serde::Serialize;

use super::model::PoolModel;
use super::money::{Frac, MoneyError};
use super::records::{BalanceSnapshot, ChainEvent, JobEarning, PoolJob, PoolPayout};
use super::statement::{round_of, By};
use crate::ledger::time;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Pending,
    Short,
    Unexplained,
}

/// One explained or flagged difference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `whole_wei_truncation`, `pixel_mismatch`, `short_credit`, `not_credited`,
    /// `not_yet_credited`, `unknown_credit`, `payout_gas`, `below_threshold`, `unpaid`,
    /// `payout_short`, `payout_failed`, `payout_missing`, `payout_unverified`,
    /// `unexplained_inflow`, `balance_unattributable`, `lottery`.
    pub kind: &'static str,
    pub period: String,
    /// What the finding does to the period: `explained` (accounted for), or the status it sets.
    pub effect: &'static str,
    pub amount_wei: String,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct PeriodLine {
    pub period: String,
    pub jobs: u64,
    pub pixels: String,
    pub expected_wei: String,
    pub credited_wei: String,
    pub paid_wei: String,
    /// expected − credited (negative: the pool credited more).
    pub difference_wei: String,
    pub status: Status,
    /// The status's amount: what is short, pending or unexplained.
    pub status_wei: String,
    /// Own-orchestrator mode: winning tickets and the lottery's expected noise (expected ÷ √wins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wins: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_wei: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Reconciliation {
    pub mode: &'static str,
    pub by: By,
    pub model: &'static str,
    /// Where `paid` comes from: `chain` (verified transactions and balances) or
    /// `pool report (unverified)` when no chain endpoint is configured.
    pub paid_source: &'static str,
    pub periods: Vec<PeriodLine>,
    pub total: PeriodLine,
    pub findings: Vec<Finding>,
}

/// Everything reconciliation reads.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub jobs: Vec<JobEarning>,
    pub pool_jobs: Vec<PoolJob>,
    pub payouts: Vec<PoolPayout>,
    pub snapshots: Vec<BalanceSnapshot>,
    pub chain_events: Vec<ChainEvent>,
    /// (round, first seen ms), for `By::Round`.
    pub rounds: Vec<(u64, u64)>,
    /// Whether payouts were checked on chain (false: no `[earnings.chain]`).
    pub chain_checked: bool,
    /// Own-orchestrator mode: BondingManager.pendingFees now, when read.
    pub pending_fees: Option<U256>,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub by: By,
    /// A pool job matches a comine job finished within this many ms of it.
    pub match_window_ms: u64,
    /// Jobs younger than this are not yet expected on the pool's statement.
    pub credit_grace_ms: u64,
    /// Credit above the threshold older than this should have been paid.
    pub payout_grace_ms: u64,
    pub now_ms: u64,
}

#[derive(Default)]
struct Acc {
    jobs: u64,
    pixels: u128,
    expected: Frac,
    credited: U256,
    paid: U256,
    wins: u64,
    short: U256,
    pending: U256,
    unexplained: U256,
}

fn w(x: U256) -> String {
    x.to_string()
}

fn signed(a: U256, b: U256) -> String {
    if a >= b {
        (a - b).to_string()
    } else {
        format!("-{}", b - a)
    }
}

struct Periods<'a> {
    by: By,
    rounds: &'a [(u64, u64)],
}

impl Periods<'_> {
    fn of(&self, ms: u64) -> String {
        match self.by {
            By::Round => round_of(self.rounds, ms)
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
            _ => time::day_of(ms),
        }
    }
}

/// Pool mode.
pub fn reconcile_pool(
    model: &PoolModel,
    inp: &Inputs,
    s: &Settings,
) -> Result<Reconciliation, MoneyError> {
    let per = Periods {
        by: s.by,
        rounds: &inp.rounds,
    };
    let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
    let mut findings = Vec::new();
    let mut find = |kind: &'static str,
                    period: &str,
                    effect: &'static str,
                    amount: U256,
                    detail: String,
                    acc: &mut BTreeMap<String, Acc>| {
        let a = acc.entry(period.to_string()).or_default();
        match effect {
            "short" => a.short = a.short.saturating_add(amount),
            "pending" => a.pending = a.pending.saturating_add(amount),
            "unexplained" => a.unexplained = a.unexplained.saturating_add(amount),
            _ => {}
        }
        findings.push(Finding {
            kind,
            period: period.to_string(),
            effect,
            amount_wei: w(amount),
            detail,
        });
    };

    // Expected per job and per period.
    let mut expected_of = Vec::with_capacity(inp.jobs.len());
    for j in &inp.jobs {
        let v = model.value(j.encoded_pixels, &j.price)?;
        let a = acc.entry(per.of(j.finished_ms)).or_default();
        a.jobs += 1;
        a.pixels += u128::from(j.encoded_pixels);
        a.expected = a.expected.checked_add(v.net)?;
        expected_of.push(v.net);
    }

    // Match pool lines to jobs: same pixels and nearest in time first, then nearest in time.
    let mut order: Vec<usize> = (0..inp.jobs.len()).collect();
    order.sort_by_key(|&i| inp.jobs[i].finished_ms);
    let mut taken = vec![false; inp.jobs.len()];
    let mut pool: Vec<&PoolJob> = inp.pool_jobs.iter().collect();
    pool.sort_by_key(|p| p.at_ms);
    let mut unmatched_pool = Vec::new();
    let mut total_credited = U256::ZERO;
    for pj in &pool {
        total_credited = total_credited.saturating_add(pj.credited);
        let a = acc.entry(per.of(pj.at_ms)).or_default();
        a.credited = a.credited.saturating_add(pj.credited);
        let near = |i: usize| inp.jobs[i].finished_ms.abs_diff(pj.at_ms);
        let candidates = order
            .iter()
            .copied()
            .filter(|&i| !taken[i] && near(i) <= s.match_window_ms);
        let best = candidates
            .clone()
            .filter(|&i| inp.jobs[i].encoded_pixels == pj.pixels)
            .min_by_key(|&i| near(i))
            .or_else(|| {
                candidates
                    .min_by_key(|&i| (inp.jobs[i].encoded_pixels.abs_diff(pj.pixels), near(i)))
            });
        let Some(i) = best else {
            unmatched_pool.push(*pj);
            continue;
        };
        taken[i] = true;
        let j = &inp.jobs[i];
        let period = per.of(j.finished_ms);
        // The value of what the pool counted, at our price and model.
        let at_pool_pixels = model.value(pj.pixels, &j.price)?.net;
        if pj.pixels != j.encoded_pixels {
            let ours = expected_of[i];
            let (diff, more) = match ours.checked_sub(at_pool_pixels) {
                Some(d) => (d, false),
                None => (at_pool_pixels.checked_sub(ours).unwrap_or(Frac::ZERO), true),
            };
            find(
                "pixel_mismatch",
                &period,
                if more { "explained" } else { "short" },
                diff.floor()?,
                format!(
                    "job {}: the pool counted {} pixels, comine encoded {} ({} wei {})",
                    j.job_id,
                    pj.pixels,
                    j.encoded_pixels,
                    diff.floor()?,
                    if more {
                        "in your favour"
                    } else {
                        "not credited"
                    }
                ),
                &mut acc,
            );
        }
        let credited = Frac::from_wei(pj.credited);
        match at_pool_pixels.checked_sub(credited) {
            Some(gap) if gap.is_zero() => {}
            Some(gap) if gap.floor()?.is_zero() => find(
                "whole_wei_truncation",
                &period,
                "explained",
                U256::ZERO,
                format!(
                    "job {}: the pool credits whole wei ({} of a wei dropped)",
                    j.job_id, gap
                ),
                &mut acc,
            ),
            Some(gap) => find(
                "short_credit",
                &period,
                "short",
                gap.floor()?,
                format!(
                    "job {}: credited {} wei, the {} model expects {} wei",
                    j.job_id,
                    pj.credited,
                    model.kind.as_str(),
                    at_pool_pixels.floor()?
                ),
                &mut acc,
            ),
            None => find(
                "over_credit",
                &period,
                "explained",
                credited
                    .checked_sub(at_pool_pixels)
                    .unwrap_or(Frac::ZERO)
                    .floor()?,
                format!(
                    "job {}: the pool credited more than the model expects",
                    j.job_id
                ),
                &mut acc,
            ),
        }
    }
    for pj in unmatched_pool {
        find(
            "unknown_credit",
            &per.of(pj.at_ms),
            "explained",
            pj.credited,
            format!(
                "the pool credited {} pixels at {} that match no comine job within {} s",
                pj.pixels,
                time::rfc3339(pj.at_ms),
                s.match_window_ms / 1000
            ),
            &mut acc,
        );
    }
    for (i, j) in inp.jobs.iter().enumerate() {
        if taken[i] {
            continue;
        }
        let amount = expected_of[i].floor()?;
        if s.now_ms.saturating_sub(j.finished_ms) < s.credit_grace_ms {
            find(
                "not_yet_credited",
                &per.of(j.finished_ms),
                "pending",
                amount,
                format!(
                    "job {} finished recently; the pool's statement may not list it yet",
                    j.job_id
                ),
                &mut acc,
            );
        } else {
            find(
                "not_credited",
                &per.of(j.finished_ms),
                "short",
                amount,
                format!(
                    "job {} ({} pixels at {}) is on no pool statement line",
                    j.job_id,
                    j.encoded_pixels,
                    time::rfc3339(j.finished_ms)
                ),
                &mut acc,
            );
        }
    }

    // Payouts: verified on chain, or taken from the pool's report when no chain is set.
    // What the pool says it paid: a payout short on chain is flagged on its own, so the
    // balance still owed is counted from the pool's own view and nothing is flagged twice.
    let mut total_reported = U256::ZERO;
    let mut gas_explained = U256::ZERO;
    let mut verified_by_block: Vec<(u64, U256)> = Vec::new();
    let mut last_payout_ms = 0u64;
    for p in &inp.payouts {
        let period = per.of(p.at_ms);
        last_payout_ms = last_payout_ms.max(p.at_ms);
        let tx = p
            .tx_hash
            .map(|h| h.to_string())
            .unwrap_or_else(|| "(no transaction hash)".into());
        let (value, effect_kind) = match (&p.check, inp.chain_checked) {
            (Some(c), _) => match c.state.as_str() {
                "verified" => (c.value.unwrap_or(p.amount), None),
                "mismatch" => {
                    let v = c.value.unwrap_or_default();
                    (
                        v,
                        (v < p.amount).then_some(("payout_short", p.amount - v, c.detail.clone())),
                    )
                }
                "pending" => (U256::ZERO, None),
                "failed" => (
                    U256::ZERO,
                    Some(("payout_failed", p.amount, c.detail.clone())),
                ),
                "not_found" => (
                    U256::ZERO,
                    Some(("payout_missing", p.amount, c.detail.clone())),
                ),
                _ => (
                    U256::ZERO,
                    Some(("payout_unverified", p.amount, c.detail.clone())),
                ),
            },
            (None, true) => (
                U256::ZERO,
                Some((
                    "payout_unverified",
                    p.amount,
                    format!("payout {tx} has not been checked on chain yet"),
                )),
            ),
            (None, false) => (p.amount, None),
        };
        if let Some((kind, amount, detail)) = effect_kind {
            find(
                kind,
                &period,
                "short",
                amount,
                format!("payout {tx} of {} wei: {detail}", p.amount),
                &mut acc,
            );
        }
        if let Some(c) = &p.check {
            if c.state == "pending" {
                find(
                    "payout_pending",
                    &period,
                    "pending",
                    p.amount,
                    format!("payout {tx}: {}", c.detail),
                    &mut acc,
                );
            }
            if let (Some(b), true) = (c.block, matches!(c.state.as_str(), "verified" | "mismatch"))
            {
                verified_by_block.push((b, value));
            }
            if model.gas_per_payout > U256::ZERO
                && matches!(c.state.as_str(), "verified" | "mismatch")
            {
                let gas = c.gas_fee.unwrap_or(model.gas_per_payout);
                gas_explained = gas_explained.saturating_add(gas);
                find(
                    "payout_gas",
                    &period,
                    "explained",
                    gas,
                    format!("payout {tx}: the pool deducts the transfer's gas"),
                    &mut acc,
                );
            }
        } else if !inp.chain_checked && model.gas_per_payout > U256::ZERO {
            gas_explained = gas_explained.saturating_add(model.gas_per_payout);
            find(
                "payout_gas",
                &period,
                "explained",
                model.gas_per_payout,
                format!("payout {tx}: the pool deducts the transfer's gas (model estimate)"),
                &mut acc,
            );
        }
        total_reported = total_reported.saturating_add(p.amount);
        let a = acc.entry(period).or_default();
        a.paid = a.paid.saturating_add(value);
    }

    // Balance snapshots: inflows between two snapshots beyond the verified payouts.
    for pair in inp.snapshots.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if b.block <= a.block {
            continue;
        }
        let period = per.of(b.at_ms);
        let verified: U256 = verified_by_block
            .iter()
            .filter(|(blk, _)| *blk > a.block && *blk <= b.block)
            .fold(U256::ZERO, |s, (_, v)| s.saturating_add(*v));
        if b.nonce != a.nonce {
            find(
                "balance_unattributable",
                &period,
                "explained",
                U256::ZERO,
                format!(
                    "blocks {}..{}: the payout address sent {} transaction(s), so its balance change cannot be split into inflows and spending",
                    a.block + 1,
                    b.block,
                    b.nonce.saturating_sub(a.nonce)
                ),
                &mut acc,
            );
            continue;
        }
        let delta = b.balance.saturating_sub(a.balance);
        if delta > verified {
            let extra = delta - verified;
            find(
                "unexplained_inflow",
                &period,
                "unexplained",
                extra,
                format!(
                    "blocks {}..{}: the balance rose by {} wei, verified payouts explain {} wei; {} wei arrived that no pool reported (an internal transfer from a payout contract?)",
                    a.block + 1,
                    b.block,
                    delta,
                    verified,
                    extra
                ),
                &mut acc,
            );
        }
    }

    // What the pool still owes: credited − reported payouts − gas. Below the threshold it waits.
    let owed = total_credited
        .saturating_sub(total_reported)
        .saturating_sub(gas_explained);
    if !owed.is_zero() {
        let period = per.of(s.now_ms);
        let threshold = model.payout_threshold;
        let oldest_unpaid = pool
            .iter()
            .map(|p| p.at_ms)
            .filter(|&t| t > last_payout_ms)
            .min()
            .unwrap_or(s.now_ms);
        match threshold {
            Some(t) if owed < t => find(
                "below_threshold",
                &period,
                "pending",
                owed,
                format!("{owed} wei credited and not paid yet: below the pool's payout threshold of {t} wei"),
                &mut acc,
            ),
            _ if s.now_ms.saturating_sub(oldest_unpaid) < s.payout_grace_ms => find(
                "unpaid",
                &period,
                "pending",
                owed,
                format!("{owed} wei credited and awaiting the pool's next payout"),
                &mut acc,
            ),
            _ => find(
                "unpaid",
                &period,
                "short",
                owed,
                format!(
                    "{owed} wei credited since {} and above the payout threshold, but not paid",
                    time::rfc3339(oldest_unpaid)
                ),
                &mut acc,
            ),
        }
    }
    finish(
        "pool",
        model,
        s.by,
        if inp.chain_checked {
            "chain"
        } else {
            "pool report (unverified)"
        },
        acc,
        findings,
    )
}

/// Own-orchestrator mode.
pub fn reconcile_orchestrator(
    model: &PoolModel,
    inp: &Inputs,
    s: &Settings,
) -> Result<Reconciliation, MoneyError> {
    let per = Periods {
        by: s.by,
        rounds: &inp.rounds,
    };
    let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
    let mut findings = Vec::new();
    for j in &inp.jobs {
        let v = model.value(j.encoded_pixels, &j.price)?;
        let a = acc.entry(per.of(j.finished_ms)).or_default();
        a.jobs += 1;
        a.pixels += u128::from(j.encoded_pixels);
        a.expected = a.expected.checked_add(v.net)?;
    }
    let mut redeemed: BTreeMap<String, u64> = BTreeMap::new();
    for e in &inp.chain_events {
        let p = per.of(e.at_ms);
        match e.kind.as_str() {
            "ticket_transfer" => {
                // What the orchestrator keeps of a ticket's credit: 1 − feeShare.
                let kept = Frac::from_wei(e.amount)
                    .checked_mul(model.fee_share)?
                    .floor()?;
                let a = acc.entry(p).or_default();
                a.credited = a.credited.saturating_add(kept);
                a.wins += 1;
            }
            "ticket_redeemed" => *redeemed.entry(p).or_default() += 1,
            "withdraw_fees" => {
                let a = acc.entry(p).or_default();
                a.paid = a.paid.saturating_add(e.amount);
            }
            _ => {}
        }
    }
    for (p, n) in redeemed {
        let a = acc.entry(p).or_default();
        a.wins = a.wins.max(n);
    }
    let mut noise: BTreeMap<String, U256> = BTreeMap::new();
    for (p, a) in acc.iter_mut() {
        let expected = a.expected.floor()?;
        // Relative error of a lottery with n wins ≈ 1/√n: noise ≈ expected / √n.
        let nz = if a.wins == 0 {
            expected
        } else {
            expected / U256::from(a.wins).root(2).max(U256::from(1))
        };
        noise.insert(p.clone(), nz);
        let diff = expected.saturating_sub(a.credited);
        let bound = nz.saturating_mul(U256::from(2));
        let relative = if a.wins == 0 {
            "no wins".to_string()
        } else {
            format!("1/√{} ≈ {:.1} %", a.wins, 100.0 / (a.wins as f64).sqrt())
        };
        if !diff.is_zero() && diff > bound {
            a.short = diff - bound;
            findings.push(Finding {
                kind: "lottery",
                period: p.clone(),
                effect: "short",
                amount_wei: w(diff),
                detail: format!(
                    "{diff} wei less than expected, beyond twice the lottery's noise ({nz} wei, {relative}); check the orchestrator's ticket redemption"
                ),
            });
        } else if expected != a.credited {
            findings.push(Finding {
                kind: "lottery",
                period: p.clone(),
                effect: "explained",
                amount_wei: signed(expected, a.credited),
                detail: format!("within the lottery's noise of {nz} wei ({relative})"),
            });
        }
    }
    if let Some(pf) = inp.pending_fees.filter(|p| !p.is_zero()) {
        let period = per.of(s.now_ms);
        acc.entry(period.clone()).or_default().pending = pf;
        findings.push(Finding {
            kind: "pending_fees",
            period,
            effect: "pending",
            amount_wei: w(pf),
            detail: "BondingManager.pendingFees: earned and not yet withdrawn".into(),
        });
    }
    let mut rec = finish("orchestrator", model, s.by, "chain", acc, findings)?;
    let mut total_noise_sq = U256::ZERO;
    for l in rec.periods.iter_mut() {
        if let Some(n) = noise.get(&l.period) {
            total_noise_sq = total_noise_sq.saturating_add(n.saturating_mul(*n));
            l.noise_wei = Some(w(*n));
        }
    }
    rec.total.noise_wei = Some(w(total_noise_sq.root(2)));
    Ok(rec)
}

fn finish(
    mode: &'static str,
    model: &PoolModel,
    by: By,
    paid_source: &'static str,
    acc: BTreeMap<String, Acc>,
    findings: Vec<Finding>,
) -> Result<Reconciliation, MoneyError> {
    let mut total = Acc::default();
    let own = mode == "orchestrator";
    let line = |period: String, a: &Acc| -> Result<PeriodLine, MoneyError> {
        let expected = a.expected.floor()?;
        let (status, amount) = if !a.unexplained.is_zero() {
            (Status::Unexplained, a.unexplained)
        } else if !a.short.is_zero() {
            (Status::Short, a.short)
        } else if !a.pending.is_zero() {
            (Status::Pending, a.pending)
        } else {
            (Status::Ok, U256::ZERO)
        };
        Ok(PeriodLine {
            period,
            jobs: a.jobs,
            pixels: a.pixels.to_string(),
            expected_wei: w(expected),
            credited_wei: w(a.credited),
            paid_wei: w(a.paid),
            difference_wei: signed(expected, a.credited),
            status,
            status_wei: w(amount),
            wins: own.then_some(a.wins),
            noise_wei: None,
        })
    };
    let mut periods = Vec::new();
    for (p, a) in &acc {
        periods.push(line(p.clone(), a)?);
        total.jobs += a.jobs;
        total.pixels += a.pixels;
        total.expected = total.expected.checked_add(a.expected)?;
        total.credited = total.credited.saturating_add(a.credited);
        total.paid = total.paid.saturating_add(a.paid);
        total.wins += a.wins;
        total.short = total.short.saturating_add(a.short);
        total.pending = total.pending.saturating_add(a.pending);
        total.unexplained = total.unexplained.saturating_add(a.unexplained);
    }
    Ok(Reconciliation {
        mode,
        by,
        model: model.kind.as_str(),
        paid_source,
        periods,
        total: line("total".into(), &total)?,
        findings,
    })
}

pub fn render(r: &Reconciliation, format: super::statement::Format) -> String {
    use super::statement::Format;
    match format {
        Format::Json => serde_json::to_string_pretty(r).unwrap_or_default() + "\n",
        Format::Csv => {
            let mut out = String::from("period,jobs,pixels,expected_wei,credited_wei,paid_wei,difference_wei,status,status_wei,wins,noise_wei\n");
            for l in r.periods.iter().chain(std::iter::once(&r.total)) {
                out.push_str(&format!(
                    "{},{},{},{},{},{},{},{},{},{},{}\n",
                    l.period,
                    l.jobs,
                    l.pixels,
                    l.expected_wei,
                    l.credited_wei,
                    l.paid_wei,
                    l.difference_wei,
                    serde_json::to_value(l.status)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    l.status_wei,
                    l.wins.map(|x| x.to_string()).unwrap_or_default(),
                    l.noise_wei.clone().unwrap_or_default()
                ));
            }
            out
        }
        Format::Table => {
            let own = r.mode == "orchestrator";
            let mut out = format!(
                "mode: {}   model: {}   paid from: {}\n",
                r.mode, r.model, r.paid_source
            );
            let mut rows = vec![vec![
                "period".to_string(),
                "expected (wei)".into(),
                "credited (wei)".into(),
                "paid (wei)".into(),
                "difference".into(),
                if own {
                    "noise ±".into()
                } else {
                    String::new()
                },
                "status".into(),
            ]];
            for l in r.periods.iter().chain(std::iter::once(&r.total)) {
                let st = match l.status {
                    Status::Ok => "ok".to_string(),
                    Status::Pending => format!("pending ({} wei)", l.status_wei),
                    Status::Short => format!("short ({} wei)", l.status_wei),
                    Status::Unexplained => format!("unexplained ({} wei)", l.status_wei),
                };
                rows.push(vec![
                    l.period.clone(),
                    l.expected_wei.clone(),
                    l.credited_wei.clone(),
                    l.paid_wei.clone(),
                    l.difference_wei.clone(),
                    if own {
                        l.noise_wei.clone().unwrap_or_default()
                    } else {
                        String::new()
                    },
                    st,
                ]);
            }
            let widths: Vec<usize> = (0..7)
                .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
                .collect();
            for row in &rows {
                let cells: Vec<String> = row
                    .iter()
                    .enumerate()
                    .filter(|(c, _)| own || *c != 5)
                    .map(|(c, v)| {
                        if c == 0 || c == 6 {
                            format!("{v:<w$}", w = widths[c])
                        } else {
                            format!("{v:>w$}", w = widths[c])
                        }
                    })
                    .collect();
                out.push_str(cells.join("  ").trim_end());
                out.push('\n');
            }
            if !r.findings.is_empty() {
                out.push_str("\nfindings:\n");
                for f in &r.findings {
                    out.push_str(&format!(
                        "  {} [{}] {}: {}\n",
                        f.period, f.effect, f.kind, f.detail
                    ));
                }
            }
            out
        }
    }
}
