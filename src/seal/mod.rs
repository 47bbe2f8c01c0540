//! Sealing controllers: how comine asks the Filecoin side to stop and resume GPU sealing.
//!
//! The scheduler decides *what* to disable; a [`Controller`] carries it out on a lotus-worker
//! (task types over JSON-RPC), a Curio node (cordon), processes (SIGSTOP/SIGCONT, benchmarks
//! only) or nothing. Proof task types can never reach a controller: [`DisableSet::new`] is the
//! only way to build the argument of [`Controller::disable`] and it drops them.

pub mod curio;
pub mod lotus;
pub mod rpc;
pub mod signals;
#[cfg(any(test, feature = "test-utils"))]
pub mod testserver;
pub mod workers;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use curio::Curio;
pub use lotus::LotusWorker;
pub use signals::Signals;
pub use workers::LotusWorkers;

/// Lotus task type of PC2 (tree building).
pub const TT_PC2: &str = "seal/v0/precommit/2";
/// C2 (SNARK).
pub const TT_C2: &str = "seal/v0/commit/2";
pub const TT_REPLICA_UPDATE: &str = "seal/v0/replicaupdate";
pub const TT_PROVE_REPLICA_UPDATE: &str = "seal/v0/provereplicaupdate/2";
pub const TT_WINDOW_POST: &str = "post/v0/windowproof";
pub const TT_WINNING_POST: &str = "post/v0/winningproof";

/// The GPU sealing task types comine may pause.
pub const GPU_SEALING_TASKS: [&str; 4] =
    [TT_PC2, TT_C2, TT_REPLICA_UPDATE, TT_PROVE_REPLICA_UPDATE];

/// Task types that must never be disabled: a missed WindowPoSt faults sectors.
pub const PROTECTED_TASKS: [&str; 2] = [TT_WINDOW_POST, TT_WINNING_POST];

/// True for proof task types (and anything under `post/`).
pub fn is_protected(task_type: &str) -> bool {
    let t = task_type.trim();
    PROTECTED_TASKS.contains(&t) || t.starts_with("post/")
}

/// lotus's short task names (`lotus-miner sealing workers`, `sealing jobs` print them), with
/// the task type each stands for (lotus `storage/sealer/sealtasks/task.go`).
pub const SHORT_NAMES: [(&str, &str); 19] = [
    ("DC", "seal/v0/datacid"),
    ("AP", "seal/v0/addpiece"),
    ("PC1", "seal/v0/precommit/1"),
    ("PC2", TT_PC2),
    ("C1", "seal/v0/commit/1"),
    ("C2", TT_C2),
    ("FIN", "seal/v0/finalize"),
    ("FUS", "seal/v0/finalizeunsealed"),
    ("GET", "seal/v0/fetch"),
    ("UNS", "seal/v0/unseal"),
    ("RU", TT_REPLICA_UPDATE),
    ("PR1", "seal/v0/provereplicaupdate/1"),
    ("PR2", TT_PROVE_REPLICA_UPDATE),
    ("GSK", "seal/v0/regensectorkey"),
    ("FRU", "seal/v0/finalize/replicaupdate"),
    ("DL", "seal/v0/download/sector"),
    ("WDP", TT_WINDOW_POST),
    ("WNP", TT_WINNING_POST),
    ("WINPOST", TT_WINNING_POST),
];

/// A task type as written in the config: lotus's full name (`seal/v0/commit/2`) or its short
/// name as lotus users type it (`C2`, `PC2`, `RU`, `PR2`; any case). Anything else is an error
/// that lists the short names.
pub fn parse_task_type(s: &str) -> Result<String, SealError> {
    let t = s.trim();
    if t.contains('/') {
        return Ok(t.to_string());
    }
    SHORT_NAMES
        .iter()
        .find(|(short, _)| short.eq_ignore_ascii_case(t))
        .map(|(_, full)| full.to_string())
        .ok_or_else(|| {
            SealError::Config(format!(
                "unknown task type {t:?} in seal.task_types: use lotus's name (seal/v0/commit/2) or a short name ({})",
                SHORT_NAMES[..18]
                    .iter()
                    .map(|(s, _)| *s)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

fn task_types_from_config<'de, D>(d: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|t| parse_task_type(t).map_err(serde::de::Error::custom))
        .collect()
}

/// Task types that are safe to disable. The only constructor filters out proofs, so no
/// controller can be asked to disable WindowPoSt or WinningPoSt, whoever calls it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DisableSet(Vec<String>);

impl DisableSet {
    /// Keeps the non-proof task types; every refused one is logged as an error.
    pub fn new<I, S>(task_types: I) -> DisableSet
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out: Vec<String> = Vec::new();
        for t in task_types {
            let t = t.as_ref().trim();
            if is_protected(t) {
                tracing::error!(
                    task_type = t,
                    "refusing to disable proof task type {t}: PoSt must never be delayed"
                );
            } else if !t.is_empty() && !out.iter().any(|o| o == t) {
                out.push(t.to_string());
            }
        }
        DisableSet(out)
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Which controller, in config and persisted state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ControllerKind {
    LotusWorker,
    Curio,
    Signals,
    None,
}

/// What a controller reports about the sealing side.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ControllerState {
    pub reachable: bool,
    /// lotus-worker `Enabled()`.
    pub enabled: Option<bool>,
    /// Task types the worker accepts now (lotus-worker `TaskTypes()`).
    pub task_types: Vec<String>,
    /// Curio: whether the node is cordoned (as far as comine knows).
    pub cordoned: Option<bool>,
    pub detail: Option<String>,
}

/// Controller errors. Messages say what to check.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealing controller unreachable at {url}: {reason}; check that the node runs and the API address is right")]
    Unreachable { url: String, reason: String },
    #[error("sealing controller at {url} refused the token (HTTP {status}); use an admin token (WORKER_API_INFO / CURIO_API_INFO)")]
    Unauthorized { url: String, status: u16 },
    #[error("{method} failed: {message} (JSON-RPC error {code})")]
    Rpc {
        method: String,
        code: i64,
        message: String,
    },
    #[error("unexpected reply from {url}: {reason}")]
    Protocol { url: String, reason: String },
    #[error(
        "bad API info {0:?}: expected TOKEN:/ip4/HOST/tcp/PORT/http (or TOKEN:http://HOST:PORT)"
    )]
    BadApiInfo(String),
    #[error("signal {signal} to pid {pid} failed: {reason}")]
    Signal {
        signal: &'static str,
        pid: i32,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
}

impl SealError {
    /// True when the node could not be reached at all (as opposed to refusing).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, SealError::Unreachable { .. })
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Steers sealing on the Filecoin side.
pub trait Controller: Send + Sync {
    fn kind(&self) -> ControllerKind;

    /// True when disabling also stops proofs from being scheduled (Curio cordons the whole
    /// machine; SIGSTOP freezes whole processes). The scheduler undoes such a disable at once
    /// when a proof shows up.
    fn coarse(&self) -> bool;

    /// Stops new work of these task types. Returns what was actually changed (what comine must
    /// restore): types the node had already disabled are left alone and not returned.
    fn disable<'a>(&'a self, set: &'a DisableSet) -> BoxFuture<'a, Result<Vec<String>, SealError>>;

    /// Re-enables task types comine disabled earlier.
    fn enable<'a>(&'a self, task_types: &'a [String]) -> BoxFuture<'a, Result<(), SealError>>;

    fn state(&self) -> BoxFuture<'_, Result<ControllerState, SealError>>;

    /// Checked once at start: refuses a setup that would endanger proofs (a Curio node that
    /// runs WindowPoSt must never be cordoned). `Ok` when there is nothing to check.
    fn preflight(&self) -> BoxFuture<'_, Result<(), SealError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Does nothing: comine only shapes its own transcoding load.
pub struct NoController;

impl Controller for NoController {
    fn kind(&self) -> ControllerKind {
        ControllerKind::None
    }
    fn coarse(&self) -> bool {
        false
    }
    fn disable<'a>(&'a self, _: &'a DisableSet) -> BoxFuture<'a, Result<Vec<String>, SealError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn enable<'a>(&'a self, _: &'a [String]) -> BoxFuture<'a, Result<(), SealError>> {
        Box::pin(async { Ok(()) })
    }
    fn state(&self) -> BoxFuture<'_, Result<ControllerState, SealError>> {
        Box::pin(async {
            Ok(ControllerState {
                reachable: true,
                detail: Some("no sealing controller configured".into()),
                ..ControllerState::default()
            })
        })
    }
}

/// Controller settings, embeddable in the daemon's TOML config as `[seal]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub controller: ControllerKind,
    /// `TOKEN:/ip4/127.0.0.1/tcp/3456/http`; falls back to `$WORKER_API_INFO` / `$CURIO_API_INFO`.
    pub api_info: Option<String>,
    /// `lotus-worker` only: one API info per lotus-worker on this host (one worker per GPU is
    /// the common layout). Every worker listed is steered together; `api_info` adds one more.
    pub workers: Vec<String>,
    /// Task types to pause when transcoding demand is high (proofs are always filtered out).
    /// lotus's names or its short names (`PC2`, `C2`, `RU`, `PR2`).
    #[serde(deserialize_with = "task_types_from_config")]
    pub task_types: Vec<String>,
    /// PIDs for the `signals` controller.
    pub pids: Vec<i32>,
    /// RPC timeout in milliseconds.
    pub timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            controller: ControllerKind::None,
            api_info: None,
            workers: Vec::new(),
            task_types: GPU_SEALING_TASKS.map(String::from).to_vec(),
            pids: Vec::new(),
            timeout_ms: 5000,
        }
    }
}

/// Builds the configured controller.
pub fn build(config: &Config) -> Result<Arc<dyn Controller>, SealError> {
    let timeout = std::time::Duration::from_millis(config.timeout_ms.max(100));
    let info = |env: &str| {
        config
            .api_info
            .clone()
            .or_else(|| std::env::var(env).ok().filter(|v| !v.trim().is_empty()))
            .ok_or_else(|| SealError::Config(format!("no API info: set {env} or seal.api_info")))
    };
    if !config.workers.is_empty() && config.controller != ControllerKind::LotusWorker {
        return Err(SealError::Config(format!(
            "seal.workers lists lotus-workers but seal.controller = {:?}; set controller = \"lotus-worker\" or remove seal.workers",
            config.controller
        )));
    }
    Ok(match config.controller {
        ControllerKind::None => Arc::new(NoController),
        ControllerKind::LotusWorker if !config.workers.is_empty() => {
            let mut infos: Vec<String> = config.api_info.iter().cloned().collect();
            infos.extend(config.workers.iter().cloned());
            Arc::new(LotusWorkers::from_api_infos(&infos, timeout)?)
        }
        ControllerKind::LotusWorker => Arc::new(LotusWorker::from_api_info(
            &info("WORKER_API_INFO")?,
            timeout,
        )?),
        ControllerKind::Curio => Arc::new(Curio::from_api_info(&info("CURIO_API_INFO")?, timeout)?),
        ControllerKind::Signals => Arc::new(Signals::new(config.pids.clone())?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_can_never_enter_a_disable_set() {
        let s = DisableSet::new([
            TT_C2,
            TT_WINDOW_POST,
            " post/v0/winningproof ",
            TT_PC2,
            TT_C2,
            "post/v0/future-proof",
            "",
        ]);
        assert_eq!(s.as_slice(), &[TT_C2.to_string(), TT_PC2.to_string()]);
        assert!(DisableSet::new(PROTECTED_TASKS).is_empty());
    }

    #[test]
    fn short_task_names_are_accepted_as_lotus_users_type_them() {
        assert_eq!(parse_task_type("PC2").unwrap(), TT_PC2);
        assert_eq!(parse_task_type("c2").unwrap(), TT_C2);
        assert_eq!(parse_task_type(" RU ").unwrap(), TT_REPLICA_UPDATE);
        assert_eq!(parse_task_type("PR2").unwrap(), TT_PROVE_REPLICA_UPDATE);
        assert_eq!(parse_task_type("seal/v0/commit/2").unwrap(), TT_C2);
        let err = parse_task_type("PC3").unwrap_err().to_string();
        assert!(err.contains("PC3") && err.contains("PR2"), "{err}");
        // Through the config, short and full names give the same list.
        let c: Config = toml::from_str("task_types = [\"PC2\", \"C2\", \"RU\", \"PR2\"]").unwrap();
        assert_eq!(c.task_types, Config::default().task_types);
        let err = toml::from_str::<Config>("task_types = [\"C3\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("C3"), "{err}");
        // A short name for a proof still cannot be disabled.
        let c: Config = toml::from_str("task_types = [\"WDP\", \"C2\"]").unwrap();
        assert_eq!(
            DisableSet::new(&c.task_types).as_slice(),
            &[TT_C2.to_string()]
        );
    }

    #[test]
    fn workers_need_the_lotus_worker_controller() {
        let c = Config {
            controller: ControllerKind::Curio,
            workers: vec!["t:/ip4/127.0.0.1/tcp/3456/http".into()],
            ..Config::default()
        };
        let err = build(&c).err().unwrap().to_string();
        assert!(err.contains("seal.workers"), "{err}");
    }
}
