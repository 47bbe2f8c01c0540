//! JSON-RPC clients for what the proof schedule needs: the lotus full node (read permission) and
//! lotus-miner (`ActorAddress`: read; `WorkerStats`: admin). Built on [`crate::seal::rpc`]; every
//! error names the setting the operator has to fix, and the token never appears in one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::bitfield::Bitfield;
use super::chain::DeadlineInfo;
use super::{PostError, Setting};
use crate::seal::rpc::{ApiInfo, RpcClient};
use crate::seal::SealError;

/// Parses API info for `/rpc/{version}`; the error names the setting, never the token.
pub fn parse_api_info(s: &Setting, version: &str) -> Result<ApiInfo, PostError> {
    ApiInfo::parse_versioned(&s.value, version).map_err(|_| {
        let v = s.value.trim();
        let detail = if v.starts_with('/') || v.starts_with("http") || v.contains(':') {
            "the address is not /ip4|/ip6|/dns/HOST/tcp/PORT/http or http://HOST:PORT"
        } else {
            "no TOKEN: part and no address"
        };
        PostError::BadApiInfo {
            setting: s.name.to_string(),
            detail: detail.into(),
        }
    })
}

/// The head tipset, as far as the schedule needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub height: i64,
    /// Unix seconds of the head's blocks.
    pub timestamp: i64,
}

/// One partition of a deadline (`StateMinerPartitions`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Partition {
    #[serde(rename = "AllSectors")]
    pub all: Bitfield,
    #[serde(rename = "FaultySectors")]
    pub faulty: Bitfield,
    #[serde(rename = "RecoveringSectors")]
    pub recovering: Bitfield,
    #[serde(rename = "LiveSectors")]
    pub live: Bitfield,
    #[serde(rename = "ActiveSectors")]
    pub active: Bitfield,
}

/// One entry of `StateMinerDeadlines` (`DailyFee` only on newer nodes; unknown keys ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeadlineSubmissions {
    #[serde(rename = "PostSubmissions")]
    pub post_submissions: Bitfield,
    #[serde(rename = "DisputableProofCount")]
    pub disputable_proof_count: u64,
}

/// What a client is talking to, for messages.
#[derive(Clone, Copy)]
enum Peer {
    FullNode,
    Miner,
}

impl Peer {
    fn what(self) -> &'static str {
        match self {
            Peer::FullNode => "the lotus full node",
            Peer::Miner => "lotus-miner",
        }
    }
}

struct Rpc {
    rpc: RpcClient,
    setting: &'static str,
    peer: Peer,
    requests: Arc<AtomicU64>,
}

impl Rpc {
    fn new(
        s: &Setting,
        version: &str,
        peer: Peer,
        timeout: Duration,
        requests: Arc<AtomicU64>,
    ) -> Result<Rpc, PostError> {
        let info = parse_api_info(s, version)?;
        let rpc = RpcClient::new(info, timeout).map_err(|e| PostError::Config(e.to_string()))?;
        Ok(Rpc {
            rpc,
            setting: s.name,
            peer,
            requests,
        })
    }

    async fn call(
        &self,
        method: &str,
        params: Value,
        need: &'static str,
    ) -> Result<Value, PostError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let url = self.rpc.url().to_string();
        self.rpc.call(method, params).await.map_err(|e| match e {
            SealError::Unauthorized { status, .. } => PostError::Unauthorized {
                what: self.peer.what(),
                url,
                status,
                setting: self.setting.into(),
                need,
            },
            SealError::Unreachable { reason, .. } => PostError::Unreachable {
                what: self.peer.what(),
                url,
                reason,
                setting: self.setting.into(),
            },
            SealError::Rpc { code, message, .. } => PostError::Rpc {
                method: method.into(),
                url,
                code,
                message,
            },
            other => PostError::Protocol {
                method: method.into(),
                url,
                reason: other.to_string(),
            },
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        v: Value,
    ) -> Result<T, PostError> {
        serde_json::from_value(v).map_err(|e| PostError::Protocol {
            method: method.into(),
            url: self.rpc.url().into(),
            reason: e.to_string(),
        })
    }
}

const READ: &str = "a read token is enough: `lotus auth api-info --perm read`";

/// The lotus full node's read API.
pub struct FullNode {
    rpc: Rpc,
}

impl FullNode {
    /// `requests` counts every call (the poller's cost).
    pub fn new(
        s: &Setting,
        timeout: Duration,
        requests: Arc<AtomicU64>,
    ) -> Result<Self, PostError> {
        Ok(FullNode {
            rpc: Rpc::new(s, "v1", Peer::FullNode, timeout, requests)?,
        })
    }

    pub fn url(&self) -> &str {
        self.rpc.rpc.url()
    }

    /// `Filecoin.ChainHead`: height and timestamp.
    pub async fn chain_head(&self) -> Result<Head, PostError> {
        const M: &str = "Filecoin.ChainHead";
        let v = self.rpc.call(M, json!([]), READ).await?;
        let height = v.get("Height").and_then(Value::as_i64);
        let ts = v
            .get("Blocks")
            .and_then(|b| b.get(0))
            .and_then(|b| b.get("Timestamp"))
            .and_then(Value::as_i64);
        match (height, ts) {
            (Some(height), Some(timestamp)) if height >= 0 && timestamp > 0 => {
                Ok(Head { height, timestamp })
            }
            _ => Err(PostError::Protocol {
                method: M.into(),
                url: self.url().into(),
                reason: "no Height or Blocks[0].Timestamp in the tipset".into(),
            }),
        }
    }

    /// `Filecoin.StateMinerProvingDeadline [miner, null]`: the deadline open now.
    pub async fn proving_deadline(&self, miner: &str) -> Result<DeadlineInfo, PostError> {
        const M: &str = "Filecoin.StateMinerProvingDeadline";
        let v = self.rpc.call(M, json!([miner, null]), READ).await?;
        self.rpc.decode(M, v)
    }

    /// `Filecoin.StateMinerDeadlines [miner, null]`: the 48 deadlines' proof submissions.
    pub async fn deadlines(&self, miner: &str) -> Result<Vec<DeadlineSubmissions>, PostError> {
        const M: &str = "Filecoin.StateMinerDeadlines";
        let v = self.rpc.call(M, json!([miner, null]), READ).await?;
        self.rpc.decode(M, v)
    }

    /// `Filecoin.StateMinerPartitions [miner, index, null]`.
    pub async fn partitions(&self, miner: &str, index: u64) -> Result<Vec<Partition>, PostError> {
        const M: &str = "Filecoin.StateMinerPartitions";
        let v = self.rpc.call(M, json!([miner, index, null]), READ).await?;
        if v.is_null() {
            return Ok(Vec::new());
        }
        self.rpc.decode(M, v)
    }
}

/// PoSt tasks lotus-miner's PoSt workers run now (`WorkerStats` `TaskCounts`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerPost {
    pub window: u32,
    pub winning: u32,
    /// Hostnames of the workers counted.
    pub hosts: Vec<String>,
}

/// lotus-miner's API.
pub struct Miner {
    rpc: Rpc,
}

impl Miner {
    pub fn new(
        s: &Setting,
        timeout: Duration,
        requests: Arc<AtomicU64>,
    ) -> Result<Self, PostError> {
        Ok(Miner {
            rpc: Rpc::new(s, "v0", Peer::Miner, timeout, requests)?,
        })
    }

    /// `Filecoin.ActorAddress`: the miner's ID address, checked to be `f0…`.
    pub async fn actor_address(&self) -> Result<String, PostError> {
        const M: &str = "Filecoin.ActorAddress";
        let v = self.rpc.call(M, json!([]), READ).await?;
        let a = v.as_str().ok_or_else(|| PostError::Protocol {
            method: M.into(),
            url: self.rpc.rpc.url().into(),
            reason: format!("expected an address string, got {v}"),
        })?;
        super::check_miner(a, "lotus-miner's ActorAddress")
    }

    /// `Filecoin.WorkerStats` (admin): PoSt tasks running on workers whose hostname is in
    /// `hosts` (every worker when `hosts` is empty).
    pub async fn worker_post(&self, hosts: &[String]) -> Result<WorkerPost, PostError> {
        const M: &str = "Filecoin.WorkerStats";
        let v = self
            .rpc
            .call(
                M,
                json!([]),
                "WorkerStats needs an admin token: `lotus-miner auth api-info --perm admin`",
            )
            .await?;
        Ok(count_worker_post(&v, hosts))
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WorkerStat {
    #[serde(rename = "Info")]
    info: WorkerInfo,
    #[serde(rename = "TaskCounts")]
    task_counts: BTreeMap<String, i64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WorkerInfo {
    #[serde(rename = "Hostname")]
    hostname: String,
}

/// Sums `post/v0/windowproof` and `post/v0/winningproof` over the matching workers. Keys look
/// like `8:post/v0/windowproof` (proof type, task type); entries that do not parse are skipped.
pub fn count_worker_post(v: &Value, hosts: &[String]) -> WorkerPost {
    let mut out = WorkerPost::default();
    let Some(map) = v.as_object() else {
        return out;
    };
    for stat in map.values() {
        let Ok(w) = serde_json::from_value::<WorkerStat>(stat.clone()) else {
            continue;
        };
        if !hosts.is_empty() && !hosts.iter().any(|h| h == &w.info.hostname) {
            continue;
        }
        let mut any = false;
        for (key, n) in &w.task_counts {
            let tt = key.split_once(':').map_or(key.as_str(), |(_, t)| t);
            let n = u32::try_from(*n).unwrap_or(0);
            match tt {
                crate::seal::TT_WINDOW_POST => out.window += n,
                crate::seal::TT_WINNING_POST => out.winning += n,
                _ => continue,
            }
            any |= n > 0;
        }
        if any && !out.hosts.contains(&w.info.hostname) {
            out.hosts.push(w.info.hostname);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_replies_decode() {
        let p: Vec<Partition> = serde_json::from_str(r#"[{"AllSectors":[100000,2349],"FaultySectors":[0],"RecoveringSectors":[0],"LiveSectors":[100000,2349],"ActiveSectors":[100000,2349]},{"AllSectors":[102349,812],"FaultySectors":[102349,3],"RecoveringSectors":[0],"LiveSectors":[102349,812],"ActiveSectors":[102352,809]}]"#).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].live.count(), 812);
        assert_eq!(p[1].faulty.count(), 3);
        let d: DeadlineSubmissions = serde_json::from_str(
            r#"{"PostSubmissions":[0,2],"DisputableProofCount":1,"DailyFee":"0"}"#,
        )
        .unwrap();
        assert_eq!(d.post_submissions.count(), 2);
        // Older nodes have no DailyFee.
        let d: DeadlineSubmissions =
            serde_json::from_str(r#"{"PostSubmissions":[0],"DisputableProofCount":0}"#).unwrap();
        assert!(d.post_submissions.is_empty());
    }

    #[test]
    fn worker_stats_count_post_tasks_of_matching_hosts() {
        let v = json!({
            "a1": {"Info": {"Hostname": "prover"}, "TaskCounts": {"8:post/v0/windowproof": 2, "8:seal/v0/commit/2": 1}, "GpuUsed": 1.0},
            "b2": {"Info": {"Hostname": "other"}, "TaskCounts": {"3:post/v0/winningproof": 1}},
            "c3": {"Info": {"Hostname": "prover"}, "TaskCounts": {}},
            "bad": "not an object"
        });
        let all = count_worker_post(&v, &[]);
        assert_eq!((all.window, all.winning), (2, 1));
        let mine = count_worker_post(&v, &["prover".to_string()]);
        assert_eq!((mine.window, mine.winning), (2, 0));
        assert_eq!(mine.hosts, vec!["prover".to_string()]);
        assert_eq!(count_worker_post(&json!(null), &[]), WorkerPost::default());
    }

    #[test]
    fn bad_api_info_names_the_setting_and_hides_the_token() {
        for (v, name) in [
            ("sekrit", super::super::ENV_FULLNODE),
            ("sekrit:/ip4/1.2.3.4/udp/1/http", "[post] fullnode_api_info"),
        ] {
            let e = parse_api_info(
                &Setting {
                    value: v.into(),
                    name,
                },
                "v1",
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(name), "{e}");
            assert!(!e.contains("sekrit"), "token leaked: {e}");
        }
    }
}
