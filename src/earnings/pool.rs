//! What the pool credited: its statement, fetched and stored.
//!
//! - Livepool (`kind = "livepool"`): `GET {url}/jobs?transcoder=ADDR&from=S&to=S` (Unix
//!   seconds) → `[{timestamp, transcoder, payout, payout_usd, pixels, duration, profiles}]`,
//!   `payout` in wei (a JSON number of any size, or a string).
//! - Open Pool (`kind = "openpool"`): `GET {url}/pool/events?lastCheckTime=RFC3339` →
//!   `[{ID, Payload, Version, DT}]` where `Payload` is a JSON string
//!   `{"event_type": "job-processed", "payload": {computeUnits, pricePerComputeUnit, fees,
//!   ethAddress, …}}`; only our address's `job-processed` events are kept. The credited
//!   amount is `fees × (1 − commission)`, as the pool's loader books it.
//! - CSV (`kind = "csv"`, `comine earnings pool import FILE`): `kind,timestamp,pixels,amount_wei,tx_hash`
//!   with `kind` = `job` or `payout` and `timestamp` RFC 3339 or Unix seconds.
//! - Payouts (`payouts_url`, any kind): `[{txHash, fees|amount|payout, ethAddress?,
//!   createdAt|timestamp}]` (Open Pool's `PoolPayout` rows, or the same shape).
//!
//! Lines are keyed by (source, id) in `earnings_pool_jobs`/`earnings_pool_payouts`, so
//! overlapping polls store each line once.

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::money::{Frac, MoneyError};
use super::records::{PoolJob, PoolPayout, Records, RecordsError};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot reach the pool at {url}: {why}; check [earnings.pool] url (stored statements are kept)")]
    Unreachable { url: String, why: String },
    #[error("the pool at {url} answered HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("the pool's statement from {url} is not in the expected shape: {why}")]
    Shape { url: String, why: String },
    #[error("{file} line {line}: {why}")]
    Csv {
        file: String,
        line: usize,
        why: String,
    },
    #[error(transparent)]
    Records(#[from] RecordsError),
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// A parsed statement: jobs credited and payouts reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Statement {
    pub jobs: Vec<PoolJob>,
    pub payouts: Vec<PoolPayout>,
}

/// A wei amount as JSON: any-size integer number or decimal string.
fn wei_of(v: &Value) -> Option<U256> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .map(U256::from)
            .or_else(|| n.to_string().parse::<U256>().ok()),
        Value::String(s) => super::money::parse_wei(s).ok(),
        _ => None,
    }
}

fn u64_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Parses a Livepool `/jobs` answer. `payout` is a Go `*big.Int`: a bare JSON number that
/// can exceed 2⁶⁴, so the body is read with serde_json's exact u128 path where needed.
pub fn parse_livepool(body: &str, url: &str, ours: Address) -> Result<Statement, PoolError> {
    let shape = |why: String| PoolError::Shape {
        url: url.to_string(),
        why,
    };
    // Big payouts: a number too large for u64 would become a float in `Value`; read them as
    // u128 text first.
    #[derive(Deserialize)]
    struct Job {
        timestamp: i64,
        #[serde(default)]
        transcoder: String,
        payout: BigWei,
        pixels: i64,
        #[serde(default)]
        duration: i64,
        #[serde(default)]
        profiles: Vec<String>,
    }
    let jobs: Vec<Job> = serde_json::from_str(body).map_err(|e| shape(e.to_string()))?;
    let mut out = Statement::default();
    let mut seen: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    for j in jobs {
        if !j.transcoder.is_empty() && j.transcoder.parse::<Address>().ok() != Some(ours) {
            continue;
        }
        if j.timestamp < 0 || j.pixels < 0 {
            return Err(shape(format!(
                "negative timestamp or pixels in {}",
                j.timestamp
            )));
        }
        let key = format!(
            "{}:{}:{}:{}",
            j.timestamp,
            j.pixels,
            j.payout.0,
            j.profiles.join(",")
        );
        let n = seen.entry(key.clone()).or_insert(0);
        *n += 1;
        out.jobs.push(PoolJob {
            source: "livepool".into(),
            ext_id: format!("{key}#{n}"),
            at_ms: j.timestamp as u64 * 1000,
            pixels: j.pixels as u64,
            credited: j.payout.0,
            price_per_pixel: None,
            raw: serde_json::json!({
                "timestamp": j.timestamp, "payout": j.payout.0.to_string(), "pixels": j.pixels,
                "duration_ns": j.duration, "profiles": j.profiles,
            })
            .to_string(),
        });
    }
    Ok(out)
}

/// A wei amount that may be a JSON number beyond u64 (Go's big.Int) or a string.
#[derive(Clone, Copy, Debug)]
struct BigWei(U256);

impl<'de> Deserialize<'de> for BigWei {
    /// serde_json turns an integer beyond u64 into a float before any visitor sees it, so
    /// the amount is read from its raw JSON text: a bare integer of any size, a decimal
    /// string, or null (0).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        let text = raw.get().trim();
        if text == "null" {
            return Ok(BigWei(U256::ZERO));
        }
        let digits = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(text);
        if digits.starts_with('-') {
            return Err(D::Error::custom(format!("a negative amount: {text}")));
        }
        if digits.contains(['.', 'e', 'E']) {
            return Err(D::Error::custom(format!(
                "a fractional amount: {text} (wei are whole numbers)"
            )));
        }
        super::money::parse_wei(digits)
            .map(BigWei)
            .map_err(D::Error::custom)
    }
}

/// Parses Open Pool `/pool/events`: our `job-processed` events, and our `pool-payout`
/// events where a pool publishes them. Returns the statement and the newest event time.
pub fn parse_openpool(
    body: &str,
    url: &str,
    ours: Address,
    commission: Frac,
) -> Result<(Statement, u64), PoolError> {
    let shape = |why: String| PoolError::Shape {
        url: url.to_string(),
        why,
    };
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "ID")]
        id: i64,
        #[serde(rename = "Payload")]
        payload: String,
        #[serde(rename = "DT")]
        dt: String,
    }
    let raws: Vec<Raw> = serde_json::from_str(body).map_err(|e| shape(e.to_string()))?;
    let keep = commission.complement().unwrap_or(Frac::ZERO);
    let mut out = Statement::default();
    let mut newest = 0u64;
    for r in raws {
        let at_ms = crate::ledger::time::parse_date(&r.dt)
            .ok_or_else(|| shape(format!("event {} has DT {:?}, not RFC 3339", r.id, r.dt)))?;
        newest = newest.max(at_ms);
        let p: Value = serde_json::from_str(&r.payload)
            .map_err(|e| shape(format!("event {} payload: {e}", r.id)))?;
        let kind = p.get("event_type").and_then(|v| v.as_str()).unwrap_or("");
        let pl = p.get("payload").cloned().unwrap_or(Value::Null);
        let addr = pl
            .get("ethAddress")
            .and_then(|v| v.as_str())
            .and_then(|a| a.parse::<Address>().ok());
        if addr != Some(ours) {
            continue;
        }
        match kind {
            "job-processed" => {
                let units = pl
                    .get("computeUnits")
                    .and_then(u64_of)
                    .ok_or_else(|| shape(format!("event {} has no computeUnits", r.id)))?;
                let fees = pl
                    .get("fees")
                    .and_then(wei_of)
                    .ok_or_else(|| shape(format!("event {} has no fees", r.id)))?;
                let price = pl.get("pricePerComputeUnit").and_then(wei_of);
                // The pool's loader books fees × (1 − commission) to the worker.
                let credited = Frac::from_wei(fees).checked_mul(keep)?.floor()?;
                out.jobs.push(PoolJob {
                    source: "openpool".into(),
                    ext_id: format!("op:{}", r.id),
                    at_ms,
                    pixels: units,
                    credited,
                    price_per_pixel: price,
                    raw: pl.to_string(),
                });
            }
            "pool-payout" | "PoolPayout" => {
                let amount = pl
                    .get("fees")
                    .and_then(wei_of)
                    .ok_or_else(|| shape(format!("event {} has no fees", r.id)))?;
                let tx = pl
                    .get("txHash")
                    .and_then(|v| v.as_str())
                    .and_then(|t| t.parse::<B256>().ok());
                out.payouts.push(PoolPayout {
                    source: "openpool".into(),
                    ext_id: format!("op:{}", r.id),
                    at_ms,
                    amount,
                    tx_hash: tx,
                    check: None,
                });
            }
            _ => {}
        }
    }
    Ok((out, newest))
}

/// Parses a payouts list (`payouts_url`).
pub fn parse_payouts(
    body: &str,
    url: &str,
    source: &str,
    ours: Address,
) -> Result<Vec<PoolPayout>, PoolError> {
    let shape = |why: String| PoolError::Shape {
        url: url.to_string(),
        why,
    };
    let rows: Vec<Value> = serde_json::from_str(body).map_err(|e| shape(e.to_string()))?;
    let mut out = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if let Some(a) = r
            .get("ethAddress")
            .or_else(|| r.get("transcoder"))
            .and_then(|v| v.as_str())
        {
            if a.parse::<Address>().ok() != Some(ours) {
                continue;
            }
        }
        let amount = ["fees", "amount", "payout"]
            .iter()
            .find_map(|k| r.get(*k).and_then(wei_of))
            .ok_or_else(|| shape(format!("payout {i} has no fees/amount")))?;
        let tx = r
            .get("txHash")
            .or_else(|| r.get("tx_hash"))
            .and_then(|v| v.as_str())
            .map(|t| {
                t.parse::<B256>()
                    .map_err(|_| shape(format!("payout {i} has a malformed txHash {t:?}")))
            })
            .transpose()?;
        let at_ms = match r.get("createdAt").or_else(|| r.get("timestamp")) {
            Some(Value::String(s)) => crate::ledger::time::parse_date(s).unwrap_or(0),
            Some(v) => u64_of(v)
                .map(|s| if s > 10_000_000_000 { s } else { s * 1000 })
                .unwrap_or(0),
            None => 0,
        };
        let id = r
            .get("id")
            .or_else(|| r.get("ID"))
            .map(|v| v.to_string())
            .or_else(|| tx.map(|t| t.to_string()))
            .unwrap_or_else(|| format!("{at_ms}:{amount}:{i}"));
        out.push(PoolPayout {
            source: source.into(),
            ext_id: format!("payout:{id}"),
            at_ms,
            amount,
            tx_hash: tx,
            check: None,
        });
    }
    Ok(out)
}

/// Parses a CSV statement (`kind,timestamp,pixels,amount_wei,tx_hash`).
pub fn parse_csv(text: &str, file: &str) -> Result<Statement, PoolError> {
    let err = |line: usize, why: String| PoolError::Csv {
        file: file.to_string(),
        line,
        why,
    };
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
    let Some((_, header)) = lines.next() else {
        return Ok(Statement::default());
    };
    let cols: Vec<String> = header
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    let idx = |name: &str| cols.iter().position(|c| c == name);
    let (Some(ki), Some(ti), Some(ai)) = (idx("kind"), idx("timestamp"), idx("amount_wei")) else {
        return Err(err(
            1,
            "the header must name kind, timestamp, pixels, amount_wei and tx_hash".into(),
        ));
    };
    let pi = idx("pixels");
    let hi = idx("tx_hash");
    let mut out = Statement::default();
    for (n, line) in lines {
        let ln = n + 1;
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let get = |i: Option<usize>| i.and_then(|i| f.get(i)).copied().unwrap_or("");
        let ts = get(Some(ti));
        let at_ms = if ts.bytes().all(|b| b.is_ascii_digit()) && !ts.is_empty() {
            ts.parse::<u64>()
                .map_err(|e| err(ln, format!("timestamp {ts:?}: {e}")))?
                * 1000
        } else {
            crate::ledger::time::parse_date(ts).ok_or_else(|| {
                err(
                    ln,
                    format!("timestamp {ts:?} is neither RFC 3339 nor Unix seconds"),
                )
            })?
        };
        let amount = super::money::parse_wei(get(Some(ai))).map_err(|e| err(ln, e.to_string()))?;
        let id = format!(
            "csv:{}",
            hex::encode(&Sha256::digest(line.trim().as_bytes())[..12])
        );
        match get(Some(ki)).to_ascii_lowercase().as_str() {
            "job" => {
                let px = get(pi);
                let pixels = px
                    .parse::<u64>()
                    .map_err(|_| err(ln, format!("pixels {px:?} is not a whole number")))?;
                out.jobs.push(PoolJob {
                    source: "csv".into(),
                    ext_id: id,
                    at_ms,
                    pixels,
                    credited: amount,
                    price_per_pixel: None,
                    raw: line.to_string(),
                });
            }
            "payout" => {
                let h = get(hi);
                let tx_hash =
                    if h.is_empty() {
                        None
                    } else {
                        Some(h.parse::<B256>().map_err(|_| {
                            err(ln, format!("tx_hash {h:?} is not a 32-byte hex hash"))
                        })?)
                    };
                out.payouts.push(PoolPayout {
                    source: "csv".into(),
                    ext_id: id,
                    at_ms,
                    amount,
                    tx_hash,
                    check: None,
                });
            }
            other => return Err(err(ln, format!("kind {other:?} is neither job nor payout"))),
        }
    }
    Ok(out)
}

/// Fetches a pool's statement source.
#[derive(Clone, Debug)]
pub struct PoolClient {
    http: reqwest::Client,
    kind: String,
    url: String,
    payouts_url: String,
    ours: Address,
    commission: Frac,
}

/// What one poll stored.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PollReport {
    pub jobs_new: usize,
    pub payouts_new: usize,
    pub newest_ms: u64,
}

impl PoolClient {
    pub fn new(
        kind: &str,
        url: &str,
        payouts_url: &str,
        ours: Address,
        commission: Frac,
        timeout: Duration,
    ) -> Result<PoolClient, PoolError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| PoolError::Unreachable {
                url: url.to_string(),
                why: e.to_string(),
            })?;
        Ok(PoolClient {
            http,
            kind: kind.into(),
            url: url.trim_end_matches('/').to_string(),
            payouts_url: payouts_url.to_string(),
            ours,
            commission,
        })
    }

    async fn get(&self, url: &str, query: &[(&str, String)]) -> Result<String, PoolError> {
        let shown = super::rpc::redact(url);
        let resp =
            self.http
                .get(url)
                .query(query)
                .send()
                .await
                .map_err(|e| PoolError::Unreachable {
                    url: shown.clone(),
                    why: super::error_chain(&e),
                })?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| PoolError::Unreachable {
            url: shown.clone(),
            why: e.to_string(),
        })?;
        if !status.is_success() {
            return Err(PoolError::Status {
                url: shown,
                status: status.as_u16(),
                body: body.chars().take(200).collect(),
            });
        }
        Ok(body)
    }

    /// Fetches what is new since the stored cursor and stores it.
    pub async fn poll(&self, records: &Arc<Records>) -> Result<PollReport, PoolError> {
        let now = crate::util::now_ms();
        let kind = self.kind.clone();
        let cursor = records
            .call(move |r| r.pool_cursor(&kind))
            .await?
            .map(|c| c.0)
            .unwrap_or(0);
        // Re-read an hour before the cursor: a pool may book a job late. Keys make it idempotent.
        let since = cursor.saturating_sub(3_600_000);
        let mut st = match self.kind.as_str() {
            "livepool" => {
                let url = format!("{}/jobs", self.url);
                let body = self
                    .get(
                        &url,
                        &[
                            ("transcoder", self.ours.to_checksum(None)),
                            ("from", (since / 1000).to_string()),
                            ("to", (now / 1000 + 1).to_string()),
                        ],
                    )
                    .await?;
                parse_livepool(&body, &super::rpc::redact(&url), self.ours)?
            }
            "openpool" => {
                let url = format!("{}/pool/events", self.url);
                let body = self
                    .get(&url, &[("lastCheckTime", super::rfc3339_secs(since))])
                    .await?;
                parse_openpool(&body, &super::rpc::redact(&url), self.ours, self.commission)?.0
            }
            _ => Statement::default(),
        };
        if !self.payouts_url.is_empty() {
            let body = self.get(&self.payouts_url, &[]).await?;
            st.payouts.extend(parse_payouts(
                &body,
                &super::rpc::redact(&self.payouts_url),
                &self.kind,
                self.ours,
            )?);
        }
        let newest = st
            .jobs
            .iter()
            .map(|j| j.at_ms)
            .chain(st.payouts.iter().map(|p| p.at_ms))
            .max()
            .unwrap_or(cursor);
        let kind = self.kind.clone();
        let (jobs_new, payouts_new) = records
            .call(move |r| {
                let counts = (
                    r.insert_pool_jobs(&st.jobs)?,
                    r.insert_pool_payouts(&st.payouts)?,
                );
                r.set_pool_cursor(&kind, newest.max(cursor), now, None)?;
                Ok(counts)
            })
            .await?;
        Ok(PollReport {
            jobs_new,
            payouts_new,
            newest_ms: newest,
        })
    }

    /// Polls every `interval` until `shutdown`; failures are logged and stored, never fatal.
    pub async fn run(self, records: Arc<Records>, interval: Duration, shutdown: CancellationToken) {
        loop {
            match self.poll(&records).await {
                Ok(r) if r.jobs_new + r.payouts_new > 0 => {
                    tracing::info!(source = %self.kind, jobs = r.jobs_new, payouts = r.payouts_new, "pool statement updated")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(source = %self.kind, error = %e, "pool statement poll failed; will retry");
                    let (kind, why) = (self.kind.clone(), e.to_string());
                    let _ = records
                        .call(move |r| {
                            let cursor = r
                                .pool_cursor(&kind)
                                .ok()
                                .flatten()
                                .map(|c| c.0)
                                .unwrap_or(0);
                            r.set_pool_cursor(&kind, cursor, crate::util::now_ms(), Some(&why))
                        })
                        .await;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// Imports a CSV statement file into the tables; returns (jobs, payouts) newly stored.
pub fn import_csv(records: &Records, path: &std::path::Path) -> Result<(usize, usize), PoolError> {
    let text = std::fs::read_to_string(path).map_err(|e| PoolError::Csv {
        file: path.display().to_string(),
        line: 0,
        why: format!("cannot read it: {e}"),
    })?;
    let st = parse_csv(&text, &path.display().to_string())?;
    Ok((
        records.insert_pool_jobs(&st.jobs)?,
        records.insert_pool_payouts(&st.payouts)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Address {
        Address::repeat_byte(0xab)
    }

    #[test]
    fn livepool_payouts_keep_every_wei() {
        let body = format!(
            r#"[{{"timestamp":1700000000,"transcoder":"{me}","payout":340282366920938463463374607431768211455,"payout_usd":1,"pixels":1000,"duration":2000000000,"profiles":["P240p30fps16x9"]}},
               {{"timestamp":1700000001,"transcoder":"0x0000000000000000000000000000000000000001","payout":5,"pixels":1,"duration":0,"profiles":[]}},
               {{"timestamp":1700000002,"transcoder":"{me}","payout":"12","pixels":3,"duration":0,"profiles":[]}}]"#,
            me = me()
        );
        let st = parse_livepool(&body, "u", me()).unwrap();
        assert_eq!(st.jobs.len(), 2);
        assert_eq!(st.jobs[0].credited, U256::from(u128::MAX));
        assert_eq!(st.jobs[1].credited, U256::from(12));
        assert!(parse_livepool(r#"[{"timestamp":1,"payout":1.5,"pixels":1}]"#, "u", me()).is_err());
    }

    #[test]
    fn openpool_books_fees_after_commission() {
        let payload = serde_json::json!({"event_type":"job-processed","payload":{"computeUnits":3004,"pricePerComputeUnit":1,"fees":3004,"ethAddress":me().to_string(),"nodeType":"transcode"}}).to_string();
        let other = serde_json::json!({"event_type":"job-processed","payload":{"computeUnits":1,"pricePerComputeUnit":1,"fees":1,"ethAddress":"0x0000000000000000000000000000000000000001"}}).to_string();
        let body = serde_json::json!([
            {"ID": 7, "Payload": payload, "Version": 1, "DT": "2024-02-29T12:00:00Z"},
            {"ID": 8, "Payload": other, "Version": 1, "DT": "2024-02-29T12:00:01Z"},
        ])
        .to_string();
        let (st, newest) = parse_openpool(
            &body,
            "u",
            me(),
            super::super::money::parse_fraction("0.25").unwrap(),
        )
        .unwrap();
        assert_eq!(st.jobs.len(), 1);
        assert_eq!(st.jobs[0].credited, U256::from(2253));
        assert_eq!(st.jobs[0].ext_id, "op:7");
        assert_eq!(newest, 1_709_208_001_000);
    }

    #[test]
    fn csv_errors_name_the_line() {
        let ok = "kind,timestamp,pixels,amount_wei,tx_hash\njob,2024-02-29T12:00:00Z,100,50,\npayout,1709208000,,40,0x1111111111111111111111111111111111111111111111111111111111111111\n";
        let st = parse_csv(ok, "s.csv").unwrap();
        assert_eq!((st.jobs.len(), st.payouts.len()), (1, 1));
        let bad = "kind,timestamp,pixels,amount_wei,tx_hash\njob,2024-02-29T12:00:00Z,100,50,\njob,yesterday,1,1,\n";
        let e = parse_csv(bad, "s.csv").unwrap_err().to_string();
        assert!(e.contains("s.csv line 3") && e.contains("yesterday"), "{e}");
        let e = parse_csv(
            "kind,timestamp,pixels,amount_wei,tx_hash\npayout,1,,1,0x12\n",
            "s.csv",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tx_hash"), "{e}");
    }
}
