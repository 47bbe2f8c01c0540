//! lotus-worker controller: pauses GPU task types with `TaskDisable` / `TaskEnable`.
//!
//! `TaskDisable` never preempts: running tasks finish, new ones of that type are not taken.
//! comine never calls `SetEnabled(false)`, which would stop proofs too; it is exposed only for
//! operators' tooling.

use std::time::Duration;

use serde_json::{json, Value};

use super::rpc::{ApiInfo, RpcClient};
use super::{BoxFuture, Controller, ControllerKind, ControllerState, DisableSet, SealError};

pub struct LotusWorker {
    rpc: RpcClient,
}

impl LotusWorker {
    /// From `WORKER_API_INFO` syntax: `TOKEN:/ip4/127.0.0.1/tcp/3456/http`.
    pub fn from_api_info(api_info: &str, timeout: Duration) -> Result<Self, SealError> {
        Ok(LotusWorker {
            rpc: RpcClient::new(ApiInfo::parse(api_info)?, timeout)?,
        })
    }

    pub fn url(&self) -> &str {
        self.rpc.url()
    }

    /// `Filecoin.TaskTypes`: the task types the worker accepts now.
    pub async fn task_types(&self) -> Result<Vec<String>, SealError> {
        let v = self.rpc.call("Filecoin.TaskTypes", json!([])).await?;
        // Go encodes map[TaskType]struct{} as an object; accept a list too.
        let mut out: Vec<String> = match v {
            Value::Object(m) => m.keys().cloned().collect(),
            Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect(),
            Value::Null => Vec::new(),
            other => {
                return Err(SealError::Protocol {
                    url: self.rpc.url().into(),
                    reason: format!("TaskTypes returned {other}"),
                })
            }
        };
        out.sort();
        Ok(out)
    }

    pub async fn task_disable(&self, task_type: &str) -> Result<(), SealError> {
        self.rpc
            .call("Filecoin.TaskDisable", json!([task_type]))
            .await
            .map(|_| ())
    }

    pub async fn task_enable(&self, task_type: &str) -> Result<(), SealError> {
        self.rpc
            .call("Filecoin.TaskEnable", json!([task_type]))
            .await
            .map(|_| ())
    }

    pub async fn enabled(&self) -> Result<bool, SealError> {
        let v = self.rpc.call("Filecoin.Enabled", json!([])).await?;
        v.as_bool().ok_or_else(|| SealError::Protocol {
            url: self.rpc.url().into(),
            reason: format!("Enabled returned {v}"),
        })
    }

    /// `Filecoin.SetEnabled`. Disabling the whole worker would also stop PoSt: comine never
    /// calls this with `false` itself.
    pub async fn set_enabled(&self, enabled: bool) -> Result<(), SealError> {
        self.rpc
            .call("Filecoin.SetEnabled", json!([enabled]))
            .await
            .map(|_| ())
    }
}

impl Controller for LotusWorker {
    fn kind(&self) -> ControllerKind {
        ControllerKind::LotusWorker
    }

    fn coarse(&self) -> bool {
        false
    }

    fn disable<'a>(&'a self, set: &'a DisableSet) -> BoxFuture<'a, Result<Vec<String>, SealError>> {
        Box::pin(async move {
            let accepted = self.task_types().await?;
            let mut changed: Vec<String> = Vec::new();
            for tt in set.as_slice() {
                // Leave alone what the operator already disabled: comine restores only its own changes.
                if !accepted.contains(tt) {
                    continue;
                }
                if let Err(e) = self.task_disable(tt).await {
                    // Undo the part that went through, so nothing stays half-disabled.
                    for done in &changed {
                        let _ = self.task_enable(done).await;
                    }
                    return Err(e);
                }
                changed.push(tt.to_string());
            }
            Ok(changed)
        })
    }

    fn enable<'a>(&'a self, task_types: &'a [String]) -> BoxFuture<'a, Result<(), SealError>> {
        Box::pin(async move {
            let mut first_err = None;
            for tt in task_types {
                if let Err(e) = self.task_enable(tt).await {
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
                enabled: Some(self.enabled().await?),
                task_types: self.task_types().await?,
                cordoned: None,
                detail: Some(format!("lotus-worker at {}", self.rpc.url())),
            })
        })
    }
}
