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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use curio::Curio;
pub use lotus::LotusWorker;
pub use signals::Signals;

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
    /// Task types to pause when transcoding demand is high (proofs are always filtered out).
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
            .or_else(|| std::env::var(env).ok())
            .ok_or_else(|| SealError::Config(format!("no API info: set {env} or seal.api_info")))
    };
    Ok(match config.controller {
        ControllerKind::None => Arc::new(NoController),
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
}
