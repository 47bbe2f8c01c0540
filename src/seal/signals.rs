//! Signals controller: SIGSTOP/SIGCONT of configured PIDs. For benchmarks only.
//!
//! Freezing a process freezes everything in it, proofs included, and a GPU kernel in flight
//! keeps its memory. It is loud on purpose, and `coarse` so proofs undo it at once.

use super::{BoxFuture, Controller, ControllerKind, ControllerState, DisableSet, SealError};

pub struct Signals {
    pids: Vec<i32>,
}

fn mark(pid: i32) -> String {
    format!("pid:{pid}")
}

impl Signals {
    pub fn new(pids: Vec<i32>) -> Result<Self, SealError> {
        let me = std::process::id() as i32;
        if let Some(p) = pids.iter().find(|p| **p <= 1 || **p == me) {
            return Err(SealError::Config(format!(
                "signals controller: refusing pid {p} (init, a process group, or comine itself)"
            )));
        }
        if pids.is_empty() {
            return Err(SealError::Config(
                "signals controller needs at least one pid (seal.pids)".into(),
            ));
        }
        tracing::warn!(
            ?pids,
            "SIGNALS SEALING CONTROLLER: comine will SIGSTOP these processes under load. \
             This freezes proofs too; use it for benchmarks, never on a production miner"
        );
        Ok(Signals { pids })
    }

    fn send(pid: i32, sig: libc::c_int, name: &'static str) -> Result<(), SealError> {
        // SAFETY: kill(2) with a positive pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, sig) };
        if rc != 0 {
            return Err(SealError::Signal {
                signal: name,
                pid,
                reason: std::io::Error::last_os_error().to_string(),
            });
        }
        Ok(())
    }
}

impl Controller for Signals {
    fn kind(&self) -> ControllerKind {
        ControllerKind::Signals
    }

    fn coarse(&self) -> bool {
        true
    }

    fn disable<'a>(&'a self, set: &'a DisableSet) -> BoxFuture<'a, Result<Vec<String>, SealError>> {
        Box::pin(async move {
            if set.is_empty() {
                return Ok(Vec::new());
            }
            let mut stopped = Vec::new();
            for &pid in &self.pids {
                tracing::warn!(
                    pid,
                    "SIGSTOP sent to pid {pid} (signals sealing controller)"
                );
                if let Err(e) = Self::send(pid, libc::SIGSTOP, "SIGSTOP") {
                    for &p in &stopped {
                        let _ = Self::send(p, libc::SIGCONT, "SIGCONT");
                    }
                    return Err(e);
                }
                stopped.push(pid);
            }
            Ok(stopped.into_iter().map(mark).collect())
        })
    }

    fn enable<'a>(&'a self, task_types: &'a [String]) -> BoxFuture<'a, Result<(), SealError>> {
        Box::pin(async move {
            let mut first_err = None;
            for pid in task_types
                .iter()
                .filter_map(|m| m.strip_prefix("pid:").and_then(|p| p.parse::<i32>().ok()))
                .filter(|p| *p > 1)
            {
                tracing::warn!(pid, "SIGCONT sent to pid {pid}");
                if let Err(e) = Self::send(pid, libc::SIGCONT, "SIGCONT") {
                    first_err.get_or_insert(e);
                }
            }
            first_err.map_or(Ok(()), Err)
        })
    }

    fn state(&self) -> BoxFuture<'_, Result<ControllerState, SealError>> {
        Box::pin(async move {
            Ok(ControllerState {
                reachable: true,
                detail: Some(format!("signals controller for pids {:?}", self.pids)),
                ..ControllerState::default()
            })
        })
    }
}
