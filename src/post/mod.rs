//! Proofs first: the WindowPoSt schedule from the chain, so transcoding has released the GPU
//! before a proof starts.
//!
//! A WindowPoSt that cannot get GPU memory does not fail: it falls back to the CPU and misses its
//! 30-minute window. The schedule is public and exact, so comine reads it from the full node:
//! - [`node`]: JSON-RPC clients for the full node (`ChainHead`, `StateMinerProvingDeadline`,
//!   `StateMinerDeadlines`, `StateMinerPartitions`) and lotus-miner (`ActorAddress`,
//!   `WorkerStats`), over [`crate::seal::rpc`];
//! - [`chain`]: the deadline arithmetic (`Open = PeriodStart + 60·Index`, …), epochs ↔ wall clock;
//! - [`bitfield`]: run-length bitfields as lotus writes them in JSON;
//! - [`schedule`]: what is persisted (period offset, genesis, live-deadline map) so the schedule
//!   can be followed while the node is down;
//! - [`poller`]: the bounded, cancellable loop that keeps a [`Status`] up to date;
//! - [`activity`]: what is proving right now (lotus-miner `WorkerStats`, Curio's `harmony_task`);
//! - [`plan`]: the pure step-down plan the scheduler's `tick` takes as an input;
//! - [`table`]: the operator's view (`comine post status`, `/v1/status`).

pub mod activity;
pub mod bitfield;
pub mod chain;
pub mod cli;
pub mod curio_db;
#[cfg(any(test, feature = "test-utils"))]
pub mod fake_node;
pub mod node;
pub mod plan;
pub mod poller;
pub mod schedule;
pub mod table;

use serde::{Deserialize, Serialize};

pub use bitfield::Bitfield;
pub use chain::{ChainClock, DeadlineInfo};
pub use plan::{evaluate, Phase, Plan, PostWindow, SourceState};
pub use poller::{start, PostHandle};
pub use schedule::Schedule;
pub use table::Report;

/// The full node's API info, as lotus prints it (`lotus auth api-info --perm read`).
pub const ENV_FULLNODE: &str = "FULLNODE_API_INFO";
/// lotus-miner's API info (`lotus-miner auth api-info --perm admin`).
pub const ENV_MINER: &str = "MINER_API_INFO";

/// `[post]` in the daemon's config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Full node `TOKEN:/ip4/HOST/tcp/1234/http` (a read token is enough); else `$FULLNODE_API_INFO`.
    /// With neither, comine does not follow the proof schedule.
    pub fullnode_api_info: Option<String>,
    /// The miner actor's ID address (`f0…`); else asked from lotus-miner (`ActorAddress`).
    pub miner: Option<String>,
    /// lotus-miner `TOKEN:/ip4/HOST/tcp/2345/http`; else `$MINER_API_INFO`. Read is enough for
    /// `ActorAddress`; an admin token also lets comine see running PoSt workers (`WorkerStats`).
    pub miner_api_info: Option<String>,
    /// Curio's HarmonyDB (PostgreSQL wire protocol, e.g. YugabyteDB), to see running
    /// `WdPost`/`WinPost` tasks: `host=127.0.0.1 port=5433 user=yugabyte password=… dbname=yugabyte`
    /// or `postgres://…`.
    pub curio_db: Option<String>,
    /// Schema holding Curio's tables.
    pub curio_schema: String,
    /// Count only Curio tasks owned by this machine (`host_and_port` in `harmony_machines`);
    /// unset: tasks of every machine count.
    pub curio_machine: Option<String>,
    /// Count only lotus-miner PoSt workers on these hosts (`WorkerStats` `Info.Hostname`);
    /// empty: this host's name.
    pub prover_hostnames: Vec<String>,
    /// Step down this many epochs (30 s) before a window opens. lotus-miner starts proving at
    /// `Open − 19`; the rest is time to drain sessions and free VRAM.
    pub lead_epochs: u32,
    /// Seconds before the step-down at which the Livepeer capacity published to the
    /// orchestrator already drops, so segments in flight finish instead of being refused.
    pub drain_secs: u64,
    /// GPU memory kept free on the proving GPUs while stepped down, MiB.
    pub vram_reserve_mib: u64,
    /// After the challenge, step back up once the prover's GPU activity has been quiet this
    /// long, seconds.
    pub quiet_after_secs: u64,
    /// GPUs (by index) that run WindowPoSt; empty: all of them.
    pub devices: Vec<u32>,
    /// `ChainHead` poll interval, ms.
    pub poll_interval_ms: u64,
    /// How often the live-deadline map is refreshed, seconds.
    pub refresh_secs: u64,
    /// How long the cached schedule is followed after the node was last reached, seconds;
    /// after that every deadline counts as live.
    pub cache_max_age_secs: u64,
    /// A head more than this many epochs behind the wall clock is "lagging".
    pub lag_epochs: u32,
    /// `WorkerStats` / Curio poll interval, ms.
    pub activity_interval_ms: u64,
    /// RPC and database timeout, ms.
    pub timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            fullnode_api_info: None,
            miner: None,
            miner_api_info: None,
            curio_db: None,
            curio_schema: "curio".into(),
            curio_machine: None,
            prover_hostnames: Vec::new(),
            lead_epochs: 24,
            drain_secs: 60,
            vram_reserve_mib: 8192,
            quiet_after_secs: 120,
            devices: Vec::new(),
            poll_interval_ms: 10_000,
            refresh_secs: 3600,
            cache_max_age_secs: 3600,
            lag_epochs: 2,
            activity_interval_ms: 5_000,
            timeout_ms: 10_000,
        }
    }
}

/// Where a setting came from, for error messages that name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    /// `[post] fullnode_api_info` or `FULLNODE_API_INFO`.
    pub name: &'static str,
}

impl Config {
    /// The full node's API info and which setting gave it; `None` when neither is set.
    pub fn fullnode(&self) -> Option<Setting> {
        resolve(
            &self.fullnode_api_info,
            "[post] fullnode_api_info",
            ENV_FULLNODE,
        )
    }

    /// lotus-miner's API info and which setting gave it.
    pub fn miner_api(&self) -> Option<Setting> {
        resolve(&self.miner_api_info, "[post] miner_api_info", ENV_MINER)
    }

    /// Checks what can be checked without a network: API info syntax, the miner address.
    pub fn validate(&self) -> Result<(), PostError> {
        if let Some(s) = self.fullnode() {
            node::parse_api_info(&s, "v1")?;
        }
        if let Some(s) = self.miner_api() {
            node::parse_api_info(&s, "v0")?;
        }
        if let Some(m) = &self.miner {
            check_miner(m, "[post] miner")?;
        }
        if self.lead_epochs == 0 || self.lead_epochs > 600 {
            return Err(PostError::Config(format!(
                "[post] lead_epochs = {} is out of range: use 1..=600 epochs (default 24 = 12 minutes)",
                self.lead_epochs
            )));
        }
        if self.poll_interval_ms < 100 || self.activity_interval_ms < 100 {
            return Err(PostError::Config(
                "[post] poll_interval_ms and activity_interval_ms must be at least 100".into(),
            ));
        }
        curio_db::check_schema(&self.curio_schema)?;
        Ok(())
    }

    /// The parts of the config the pure plan needs.
    pub fn plan(&self) -> plan::PlanConfig {
        plan::PlanConfig {
            lead_epochs: self.lead_epochs,
            drain_ms: self.drain_secs.saturating_mul(1000),
            vram_reserve_bytes: self.vram_reserve_mib.saturating_mul(1 << 20),
            quiet_after_ms: self.quiet_after_secs.saturating_mul(1000),
            devices: self.devices.clone(),
            cache_max_age_ms: self.cache_max_age_secs.saturating_mul(1000),
            lag_epochs: self.lag_epochs,
            head_fresh_ms: self.poll_interval_ms.saturating_mul(3).max(60_000),
        }
    }
}

fn resolve(value: &Option<String>, key: &'static str, env: &'static str) -> Option<Setting> {
    if let Some(v) = value.as_ref().filter(|v| !v.trim().is_empty()) {
        return Some(Setting {
            value: v.clone(),
            name: key,
        });
    }
    std::env::var(env)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|value| Setting { value, name: env })
}

/// A miner actor ID address: `f0` (mainnet) or `t0` (test networks) and digits.
pub fn check_miner(addr: &str, setting: &str) -> Result<String, PostError> {
    let a = addr.trim();
    let ok = (a.starts_with("f0") || a.starts_with("t0"))
        && a.len() > 2
        && a.len() <= 22
        && a[2..].bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(a.to_string())
    } else {
        Err(PostError::BadMiner {
            setting: setting.to_string(),
            value: addr.to_string(),
        })
    }
}

/// Partitions proven in one window (`StateMinerDeadlines[index].PostSubmissions`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proven {
    pub index: u64,
    /// Open epoch of the window the submissions belong to.
    pub open: i64,
    pub partitions: Bitfield,
    /// When comine read them, ms since the Unix epoch.
    pub seen_at_ms: u64,
}

/// PoSt running now, as lotus-miner (`WorkerStats`) or Curio (`harmony_task`) report it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningProofs {
    /// WindowPoSt tasks running.
    pub window: u32,
    /// WinningPoSt tasks running.
    pub winning: u32,
    /// Who said so (`lotus-miner WorkerStats`, `curio harmony_task`); empty: no source.
    pub sources: Vec<String>,
    /// When the sources were last read, ms since the Unix epoch.
    pub checked_at_ms: Option<u64>,
    /// The last error of a source, if it failed.
    pub error: Option<String>,
    /// Configured sources that did not answer the last poll: they protect nothing now.
    #[serde(default)]
    pub unreachable: Vec<String>,
}

impl RunningProofs {
    pub fn any(&self) -> bool {
        self.window + self.winning > 0
    }
}

/// What the poller knows; the input of [`plan::evaluate`], published on a `watch` channel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// A full node is configured.
    pub configured: bool,
    pub miner: Option<String>,
    /// The full node's RPC URL (no token).
    pub node_url: Option<String>,
    /// The schedule being followed (from the node, or the cache).
    pub schedule: Option<Schedule>,
    /// The last head read.
    pub head: Option<node::Head>,
    pub head_seen_at_ms: Option<u64>,
    /// The last `StateMinerProvingDeadline` reply.
    pub current: Option<DeadlineInfo>,
    /// Submissions of the window open now.
    pub proven: Option<Proven>,
    /// The last call to the node succeeded.
    pub reachable: bool,
    pub last_error: Option<String>,
    pub running: RunningProofs,
    /// Requests sent to the full node and lotus-miner since start.
    pub requests: u64,
    pub plan: plan::PlanConfig,
}

/// Wall-clock time, injectable so tests can run the schedule on a virtual clock.
pub trait WallClock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::util::now_ms()
    }
}

/// Errors name the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("{setting} is not valid API info ({detail}); use TOKEN:/ip4/HOST/tcp/PORT/http as `lotus auth api-info --perm read` prints it")]
    BadApiInfo { setting: String, detail: String },
    #[error(
        "{what} at {url} refused the token (HTTP {status}); check the token in {setting} ({need})"
    )]
    Unauthorized {
        what: &'static str,
        url: String,
        status: u16,
        setting: String,
        need: &'static str,
    },
    #[error("{setting} = {value:?} is not a miner ID address; use the miner's f0… ID (e.g. f01234, as `lotus-miner info` shows)")]
    BadMiner { setting: String, value: String },
    #[error("no miner address: set [post] miner = \"f0…\", or MINER_API_INFO / [post] miner_api_info so comine can ask lotus-miner (ActorAddress)")]
    NoMiner,
    #[error(
        "{what} unreachable at {url}: {reason}; check that it runs and that {setting} is right"
    )]
    Unreachable {
        what: &'static str,
        url: String,
        reason: String,
        setting: String,
    },
    #[error("{method} failed on {url}: {message} (JSON-RPC error {code})")]
    Rpc {
        method: String,
        url: String,
        code: i64,
        message: String,
    },
    #[error("unexpected reply to {method} from {url}: {reason}")]
    Protocol {
        method: String,
        url: String,
        reason: String,
    },
    #[error("[post] curio_db: {0}")]
    CurioDb(String),
    #[error("{0}")]
    Config(String),
}

impl PostError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, PostError::Unreachable { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miner_must_be_an_id_address_and_the_error_names_the_setting() {
        assert_eq!(check_miner(" f01234 ", "[post] miner").unwrap(), "f01234");
        assert!(check_miner("t01000", "[post] miner").is_ok());
        for bad in ["f3abc", "f1xyz", "f0", "01234", "f0x12", "", "f2aaaa"] {
            let e = check_miner(bad, "[post] miner").unwrap_err().to_string();
            assert!(e.contains("[post] miner") && e.contains("f0"), "{e}");
        }
    }

    #[test]
    fn config_validation_names_the_key() {
        let c = Config {
            fullnode_api_info: Some("secret-only".into()),
            ..Config::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("[post] fullnode_api_info"), "{e}");
        assert!(!e.contains("secret-only"), "token leaked: {e}");
        let c = Config {
            miner: Some("f2abc".into()),
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("[post] miner"));
        let c = Config {
            lead_epochs: 0,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("lead_epochs"));
        Config::default().validate().unwrap();
    }
}
