//! What reached the wallet: read-only checks on Arbitrum One (or any chain id configured).
//!
//! - [`Chain::connect`] refuses an endpoint that does not answer or reports another chain id.
//! - Pool mode: [`Chain::verify_payout`] checks a payout transaction the pool reports (it
//!   succeeded, it paid our address — directly or as an internal transfer found by
//!   `debug_traceTransaction` — and the value matches); [`Chain::snapshot`] records
//!   `(block, balance, nonce)` of the payout address so inflows nobody reported show up.
//! - Own-orchestrator mode: [`Chain::scan`] reads TicketBroker's `WinningTicketRedeemed` /
//!   `WinningTicketTransfer` (the amount credited, not faceValue) and BondingManager's
//!   `WithdrawFees` / `EarningsClaimed` in block chunks. The cursor and a checkpoint per chunk
//!   (block, hash) are committed with the chunk's events in one transaction, so a crash
//!   resumes where it stopped; a cursor whose hash the chain no longer has is a reorg, and the
//!   scan rewinds to the newest checkpoint still on the chain, deleting what came after. A
//!   provider that refuses a block range gets half the range, down to one block.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::consensus::Transaction as _;
use alloy::eips::BlockNumberOrTag;
use alloy::network::Ethereum;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::{Filter, Log, TransactionRequest};
use alloy::sol_types::{SolCall, SolEvent};
use tokio_util::sync::CancellationToken;

use super::records::{BalanceSnapshot, ChainEvent, PayoutCheck, Records, RecordsError};
use super::rpc;

alloy::sol! {
    event WinningTicketRedeemed(address indexed sender, address indexed recipient, uint256 faceValue, uint256 winProb, uint256 senderNonce, uint256 recipientRand, bytes auxData);
    event WinningTicketTransfer(address indexed sender, address indexed recipient, uint256 amount);
    event WithdrawFees(address indexed delegator, address recipient, uint256 amount);
    event EarningsClaimed(address indexed delegate, address indexed delegator, uint256 rewards, uint256 fees, uint256 startRound, uint256 endRound);
    function pendingFees(address _delegator, uint256 _endRound) external view returns (uint256);
    function getTranscoder(address _transcoder) external view returns (uint256 lastRewardRound, uint256 rewardCut, uint256 feeShare, uint256 lastActiveStakeUpdateRound, uint256 activationRound, uint256 deactivationRound, uint256 activeCumulativeRewards, uint256 cumulativeRewards, uint256 cumulativeFees, uint256 lastFeeRound);
    function currentRound() external view returns (uint256);
}

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("cannot reach the JSON-RPC endpoint {url}: {why}; check [earnings.chain] rpc_url and that the node is up (nothing was changed)")]
    Unreachable { url: String, why: String },
    #[error("the JSON-RPC endpoint {url} is on chain id {got}, not {expected}; point [earnings.chain] rpc_url at an Arbitrum One node (42161) or set [earnings.chain] chain_id (nothing was scanned)")]
    WrongChain {
        url: String,
        expected: u64,
        got: u64,
    },
    #[error("[earnings.chain] rpc_url {url:?} is not a usable http(s) URL")]
    BadUrl { url: String },
    #[error("{what} failed at {url}: {why}")]
    Rpc {
        url: String,
        what: String,
        why: String,
    },
    #[error(transparent)]
    Records(#[from] RecordsError),
}

/// A connected, chain-id-checked endpoint.
pub struct Chain {
    provider: RootProvider<Ethereum>,
    url: String,
    chain_id: u64,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chain({}, {})", self.url, self.chain_id)
    }
}

fn short(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    if s.len() > 300 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(300).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s
    }
}

/// What one [`Chain::scan`] did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ScanReport {
    pub from_block: u64,
    pub to_block: u64,
    pub blocks: u64,
    pub chunks: u64,
    pub events_added: usize,
    pub reorgs: u64,
    pub events_removed: usize,
    pub range_halvings: u64,
    pub elapsed_ms: u64,
}

/// What [`Chain::scan`] looks for.
#[derive(Clone, Debug)]
pub struct ScanTarget {
    /// Names the cursor and events (several orchestrators can be scanned side by side).
    pub stream: String,
    pub orchestrator: Address,
    pub ticket_broker: Address,
    pub bonding_manager: Address,
    pub start_block: u64,
    pub chunk_blocks: u64,
    pub confirmations: u64,
    /// Checkpoints kept for finding a fork point.
    pub keep_checkpoints: u64,
}

impl Chain {
    /// Connects and checks the chain id.
    pub async fn connect(
        rpc_url: &str,
        expected_chain_id: u64,
        timeout: Duration,
    ) -> Result<Chain, ChainError> {
        let red = rpc::redact(rpc_url);
        let url = reqwest::Url::parse(rpc_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| ChainError::BadUrl { url: red.clone() })?;
        let provider = rpc::provider(&url, timeout).map_err(|e| ChainError::Unreachable {
            url: red.clone(),
            why: short(e),
        })?;
        let got = provider
            .get_chain_id()
            .await
            .map_err(|e| ChainError::Unreachable {
                url: red.clone(),
                why: short(e),
            })?;
        if got != expected_chain_id {
            return Err(ChainError::WrongChain {
                url: red,
                expected: expected_chain_id,
                got,
            });
        }
        Ok(Chain {
            provider,
            url: red,
            chain_id: got,
        })
    }

    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    pub fn provider(&self) -> &RootProvider<Ethereum> {
        &self.provider
    }

    fn rpc_err(&self, what: impl Into<String>, e: impl std::fmt::Display) -> ChainError {
        ChainError::Rpc {
            url: self.url.clone(),
            what: what.into(),
            why: short(e),
        }
    }

    pub async fn head(&self) -> Result<u64, ChainError> {
        self.provider
            .get_block_number()
            .await
            .map_err(|e| self.rpc_err("eth_blockNumber", e))
    }

    /// (hash, timestamp s) of a block, `None` when the chain has no such block.
    pub async fn block(&self, n: u64) -> Result<Option<(B256, u64)>, ChainError> {
        let b = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(n))
            .await
            .map_err(|e| self.rpc_err(format!("eth_getBlockByNumber({n})"), e))?;
        Ok(b.map(|b| (b.header.hash, b.header.timestamp)))
    }

    async fn call<C: SolCall>(&self, to: Address, call: C) -> Result<C::Return, ChainError> {
        let tx = TransactionRequest::default()
            .to(to)
            .input(call.abi_encode().into());
        let out = self
            .provider
            .call(tx)
            .await
            .map_err(|e| self.rpc_err(format!("eth_call {} on {to}", C::SIGNATURE), e))?;
        C::abi_decode_returns(&out)
            .map_err(|e| self.rpc_err(format!("decoding {} from {to}", C::SIGNATURE), e))
    }

    /// RoundsManager.currentRound().
    pub async fn current_round(&self, rounds_manager: Address) -> Result<u64, ChainError> {
        let r = self.call(rounds_manager, currentRoundCall {}).await?;
        Ok(u64::try_from(r).unwrap_or(u64::MAX))
    }

    /// BondingManager.pendingFees(delegator, round): fees earned and not yet withdrawn.
    pub async fn pending_fees(
        &self,
        bonding_manager: Address,
        delegator: Address,
        round: u64,
    ) -> Result<U256, ChainError> {
        self.call(
            bonding_manager,
            pendingFeesCall {
                _delegator: delegator,
                _endRound: U256::from(round),
            },
        )
        .await
    }

    /// BondingManager.getTranscoder(t).feeShare, parts per million.
    pub async fn fee_share_ppm(
        &self,
        bonding_manager: Address,
        transcoder: Address,
    ) -> Result<u32, ChainError> {
        let t = self
            .call(
                bonding_manager,
                getTranscoderCall {
                    _transcoder: transcoder,
                },
            )
            .await?;
        Ok(u32::try_from(t.feeShare).unwrap_or(u32::MAX))
    }

    /// `(block, hash, balance, nonce)` of `address` at the current head.
    pub async fn snapshot(&self, address: Address) -> Result<BalanceSnapshot, ChainError> {
        let n = self.head().await?;
        let (hash, ts) = self.block(n).await?.ok_or_else(|| {
            self.rpc_err(
                format!("eth_getBlockByNumber({n})"),
                "the head block is missing",
            )
        })?;
        let balance = self
            .provider
            .get_balance(address)
            .number(n)
            .await
            .map_err(|e| self.rpc_err("eth_getBalance", e))?;
        let nonce = self
            .provider
            .get_transaction_count(address)
            .number(n)
            .await
            .map_err(|e| self.rpc_err("eth_getTransactionCount", e))?;
        Ok(BalanceSnapshot {
            address,
            block: n,
            block_hash: hash,
            balance,
            nonce,
            at_ms: ts * 1000,
        })
    }

    /// Checks a payout the pool reports: mined, succeeded, paid `to` (directly, or by an
    /// internal transfer seen in a call trace), and `amount` equals what arrived.
    pub async fn verify_payout(
        &self,
        tx_hash: B256,
        to: Address,
        amount: U256,
    ) -> Result<PayoutCheck, ChainError> {
        let check = |state: &str, detail: String| PayoutCheck {
            state: state.into(),
            detail,
            value: None,
            block: None,
            gas_fee: None,
        };
        let Some(tx) = self
            .provider
            .get_transaction_by_hash(tx_hash)
            .await
            .map_err(|e| self.rpc_err("eth_getTransactionByHash", e))?
        else {
            return Ok(check(
                "not_found",
                format!("no transaction {tx_hash} on chain {}", self.chain_id),
            ));
        };
        let Some(receipt) = self
            .provider
            .get_transaction_receipt(tx_hash)
            .await
            .map_err(|e| self.rpc_err("eth_getTransactionReceipt", e))?
        else {
            return Ok(check(
                "pending",
                format!("transaction {tx_hash} is not mined yet"),
            ));
        };
        let gas_fee = U256::from(receipt.gas_used) * U256::from(receipt.effective_gas_price);
        let block = receipt.block_number;
        if !receipt.status() {
            return Ok(PayoutCheck {
                block,
                gas_fee: Some(gas_fee),
                ..check(
                    "failed",
                    format!("transaction {tx_hash} reverted: nothing was paid"),
                )
            });
        }
        let direct_to = tx.to();
        let (value, how) = if direct_to == Some(to) {
            (tx.value(), "direct transfer")
        } else {
            match self.traced_value_to(tx_hash, to).await {
                Some(v) if !v.is_zero() => (v, "internal transfer"),
                Some(_) => {
                    return Ok(PayoutCheck {
                        block,
                        gas_fee: Some(gas_fee),
                        value: Some(U256::ZERO),
                        ..check(
                            "wrong_recipient",
                            format!(
                                "transaction {tx_hash} went to {} and paid nothing to {to}",
                                direct_to.map(|a| a.to_string()).unwrap_or_else(|| "a contract creation".into())
                            ),
                        )
                    })
                }
                None => {
                    return Ok(PayoutCheck {
                        block,
                        gas_fee: Some(gas_fee),
                        ..check(
                            "wrong_recipient",
                            format!(
                                "transaction {tx_hash} went to {}, not {to}, and the endpoint cannot trace internal transfers; balance snapshots still count what arrived",
                                direct_to.map(|a| a.to_string()).unwrap_or_else(|| "a contract creation".into())
                            ),
                        )
                    })
                }
            }
        };
        if value != amount {
            return Ok(PayoutCheck {
                value: Some(value),
                block,
                gas_fee: Some(gas_fee),
                ..check(
                    "mismatch",
                    format!("{how} of {value} wei, the pool reported {amount} wei"),
                )
            });
        }
        Ok(PayoutCheck {
            value: Some(value),
            block,
            gas_fee: Some(gas_fee),
            ..check(
                "verified",
                format!(
                    "{how} of {value} wei in block {}",
                    block.unwrap_or_default()
                ),
            )
        })
    }

    /// Σ value of the calls to `to` in a transaction's call trace; `None` when the endpoint
    /// does not trace.
    async fn traced_value_to(&self, tx_hash: B256, to: Address) -> Option<U256> {
        let trace: serde_json::Value = self
            .provider
            .raw_request(
                "debug_traceTransaction".into(),
                (tx_hash, serde_json::json!({ "tracer": "callTracer" })),
            )
            .await
            .ok()?;
        fn walk(v: &serde_json::Value, to: &Address, sum: &mut U256) {
            let is_to = v
                .get("to")
                .and_then(|t| t.as_str())
                .and_then(|t| t.parse::<Address>().ok())
                .is_some_and(|a| &a == to);
            let failed = v.get("error").is_some();
            if is_to && !failed {
                if let Some(val) = v.get("value").and_then(|x| x.as_str()) {
                    let val = val.trim_start_matches("0x");
                    if let Ok(x) = U256::from_str_radix(if val.is_empty() { "0" } else { val }, 16)
                    {
                        *sum = sum.saturating_add(x);
                    }
                }
            }
            if !failed {
                for c in v
                    .get("calls")
                    .and_then(|c| c.as_array())
                    .into_iter()
                    .flatten()
                {
                    walk(c, to, sum);
                }
            }
        }
        let mut sum = U256::ZERO;
        walk(&trace, &to, &mut sum);
        Some(sum)
    }

    async fn logs(&self, filter: &Filter) -> Result<Vec<Log>, String> {
        self.provider.get_logs(filter).await.map_err(short)
    }

    /// Scans forward from the stored cursor to `head − confirmations` (at most `max_blocks`
    /// blocks this call), undoing a reorg first.
    pub async fn scan(
        &self,
        records: &Arc<Records>,
        t: &ScanTarget,
        max_blocks: Option<u64>,
        shutdown: &CancellationToken,
    ) -> Result<ScanReport, ChainError> {
        let started = Instant::now();
        let mut rep = ScanReport::default();
        let head = self.head().await?.saturating_sub(t.confirmations);
        let stream = t.stream.clone();
        let cursor = records.call(move |r| r.chain_cursor(&stream)).await?;
        let mut from = match cursor {
            None => t.start_block,
            Some((block, hash)) => {
                let on_chain = self.block(block).await?.map(|(h, _)| h);
                if on_chain == Some(hash) {
                    block + 1
                } else {
                    rep.reorgs += 1;
                    let fork = self.fork_point(records, &t.stream).await?;
                    let (fb, fh) = fork.unwrap_or((t.start_block.saturating_sub(1), B256::ZERO));
                    let stream = t.stream.clone();
                    rep.events_removed += records.call(move |r| r.rewind(&stream, fb, fh)).await?;
                    tracing::warn!(stream = %t.stream, cursor = block, fork = fb, removed = rep.events_removed, "chain reorganised: rescanning from the fork point");
                    fb + 1
                }
            }
        };
        rep.from_block = from;
        let limit = max_blocks
            .map(|m| from.saturating_add(m).saturating_sub(1))
            .unwrap_or(u64::MAX);
        let last = head.min(limit);
        let max_chunk = t.chunk_blocks.max(1);
        let mut chunk = max_chunk;
        let tb_filter = Filter::new()
            .address(t.ticket_broker)
            .event_signature(vec![
                WinningTicketRedeemed::SIGNATURE_HASH,
                WinningTicketTransfer::SIGNATURE_HASH,
            ])
            .topic2(t.orchestrator.into_word());
        let bm_filter = Filter::new()
            .address(t.bonding_manager)
            .event_signature(vec![
                WithdrawFees::SIGNATURE_HASH,
                EarningsClaimed::SIGNATURE_HASH,
            ])
            .topic1(t.orchestrator.into_word());
        while from <= last && !shutdown.is_cancelled() {
            let to = from.saturating_add(chunk - 1).min(last);
            let before = self.block(to).await?;
            let got = async {
                let a = self
                    .logs(&tb_filter.clone().from_block(from).to_block(to))
                    .await?;
                let b = self
                    .logs(&bm_filter.clone().from_block(from).to_block(to))
                    .await?;
                Ok::<_, String>((a, b))
            }
            .await;
            let (tb_logs, bm_logs) = match got {
                Ok(x) => x,
                Err(why) if chunk > 1 && looks_like_range_limit(&why) => {
                    chunk = (chunk / 2).max(1);
                    rep.range_halvings += 1;
                    tracing::debug!(chunk, %why, "provider refused the block range; halving it");
                    continue;
                }
                Err(why) => return Err(self.rpc_err(format!("eth_getLogs({from}..={to})"), why)),
            };
            let after = self.block(to).await?;
            let Some((to_hash, _)) = after.filter(|a| Some(*a) == before) else {
                // The chain moved under us: take the chunk again.
                tracing::debug!(to, "block hash changed during the chunk; retrying it");
                continue;
            };
            let mut times: HashMap<u64, (B256, u64)> = HashMap::new();
            let mut events = Vec::new();
            let mut consistent = true;
            for log in tb_logs.iter().chain(bm_logs.iter()) {
                let (Some(bn), Some(bh), Some(txh), Some(li)) = (
                    log.block_number,
                    log.block_hash,
                    log.transaction_hash,
                    log.log_index,
                ) else {
                    continue; // pending logs carry no position
                };
                let ts = match (log.block_timestamp, times.get(&bn)) {
                    (_, Some((h, ts))) => {
                        consistent &= *h == bh;
                        *ts
                    }
                    (ts, None) => {
                        let (h, t2) = self.block(bn).await?.ok_or_else(|| {
                            self.rpc_err(format!("eth_getBlockByNumber({bn})"), "block missing")
                        })?;
                        consistent &= h == bh;
                        times.insert(bn, (h, t2));
                        ts.unwrap_or(t2)
                    }
                };
                if let Some(ev) = decode(log, &t.stream, t.orchestrator, bn, bh, txh, li, ts) {
                    events.push(ev);
                }
            }
            if !consistent {
                tracing::debug!(from, to, "logs from a replaced block; retrying the chunk");
                continue;
            }
            let (stream, keep) = (t.stream.clone(), t.keep_checkpoints);
            rep.events_added += records
                .call(move |r| r.commit_chunk(&stream, &events, to, to_hash, keep))
                .await?;
            rep.chunks += 1;
            rep.blocks += to - from + 1;
            rep.to_block = to;
            from = to + 1;
            if chunk < max_chunk {
                chunk = (chunk * 2).min(max_chunk);
            }
        }
        rep.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(rep)
    }

    /// The newest checkpoint whose hash the chain still has.
    async fn fork_point(
        &self,
        records: &Arc<Records>,
        stream: &str,
    ) -> Result<Option<(u64, B256)>, ChainError> {
        let s = stream.to_string();
        for (block, hash) in records.call(move |r| r.checkpoints(&s)).await? {
            if self.block(block).await?.map(|(h, _)| h) == Some(hash) {
                return Ok(Some((block, hash)));
            }
        }
        Ok(None)
    }
}

/// Providers word range refusals differently (Alchemy, Infura, QuickNode, Ankr, anvil…).
fn looks_like_range_limit(why: &str) -> bool {
    let w = why.to_ascii_lowercase();
    [
        "range",
        "too many",
        "limit",
        "exceed",
        "10000",
        "max results",
        "response size",
        "too large",
        "timeout",
        "timed out",
    ]
    .iter()
    .any(|k| w.contains(k))
}

#[allow(clippy::too_many_arguments)]
fn decode(
    log: &Log,
    stream: &str,
    orch: Address,
    block: u64,
    block_hash: B256,
    tx: B256,
    li: u64,
    ts: u64,
) -> Option<ChainEvent> {
    let ev =
        |kind: &str, cp: Option<Address>, amount: U256, detail: serde_json::Value| ChainEvent {
            tx_hash: tx,
            log_index: li,
            stream: stream.into(),
            block,
            block_hash,
            at_ms: ts * 1000,
            kind: kind.into(),
            counterparty: cp,
            amount,
            detail: detail.to_string(),
        };
    let topic0 = *log.topic0()?;
    if topic0 == WinningTicketTransfer::SIGNATURE_HASH {
        let e = WinningTicketTransfer::decode_log(&log.inner).ok()?.data;
        (e.recipient == orch).then(|| {
            ev(
                "ticket_transfer",
                Some(e.sender),
                e.amount,
                serde_json::json!({}),
            )
        })
    } else if topic0 == WinningTicketRedeemed::SIGNATURE_HASH {
        let e = WinningTicketRedeemed::decode_log(&log.inner).ok()?.data;
        (e.recipient == orch).then(|| {
            ev(
                "ticket_redeemed",
                Some(e.sender),
                e.faceValue,
                serde_json::json!({ "win_prob": e.winProb.to_string(), "sender_nonce": e.senderNonce.to_string() }),
            )
        })
    } else if topic0 == WithdrawFees::SIGNATURE_HASH {
        let e = WithdrawFees::decode_log(&log.inner).ok()?.data;
        (e.delegator == orch).then(|| {
            ev(
                "withdraw_fees",
                Some(e.recipient),
                e.amount,
                serde_json::json!({}),
            )
        })
    } else if topic0 == EarningsClaimed::SIGNATURE_HASH {
        let e = EarningsClaimed::decode_log(&log.inner).ok()?.data;
        (e.delegator == orch).then(|| {
            ev(
                "earnings_claimed",
                Some(e.delegate),
                e.fees,
                serde_json::json!({ "rewards": e.rewards.to_string(), "start_round": e.startRound.to_string(), "end_round": e.endRound.to_string() }),
            )
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_hashes_are_the_protocols() {
        // keccak256 of the exact signatures (as go-livepeer's bindings compute them).
        assert_eq!(
            WinningTicketTransfer::SIGNATURE,
            "WinningTicketTransfer(address,address,uint256)"
        );
        assert_eq!(
            WinningTicketRedeemed::SIGNATURE,
            "WinningTicketRedeemed(address,address,uint256,uint256,uint256,uint256,bytes)"
        );
        assert_eq!(
            WithdrawFees::SIGNATURE,
            "WithdrawFees(address,address,uint256)"
        );
        assert_eq!(
            EarningsClaimed::SIGNATURE,
            "EarningsClaimed(address,address,uint256,uint256,uint256,uint256)"
        );
        assert_eq!(
            WinningTicketTransfer::SIGNATURE_HASH,
            alloy::primitives::keccak256("WinningTicketTransfer(address,address,uint256)")
        );
    }

    #[test]
    fn range_limit_messages_are_recognised() {
        assert!(looks_like_range_limit(
            "query returned more than 10000 results"
        ));
        assert!(looks_like_range_limit(
            "eth_getLogs block range too large, range: 5000, max: 2000"
        ));
        assert!(!looks_like_range_limit("connection refused"));
    }
}
