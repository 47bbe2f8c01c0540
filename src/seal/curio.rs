//! Curio controller: `Filecoin.Cordon` / `Filecoin.Uncordon` (admin, API port 12300).
//!
//! Cordoning marks the whole machine unschedulable, PoSt included, so this controller is
//! `coarse`: the scheduler uncordons at once when a proof is detected.

use std::time::Duration;

use serde_json::json;

use super::rpc::{ApiInfo, RpcClient};
use super::{BoxFuture, Controller, ControllerKind, ControllerState, DisableSet, SealError};

/// What the persisted state records for a cordon.
pub const CORDON_MARK: &str = "curio:cordon";

pub struct Curio {
    rpc: RpcClient,
}

impl Curio {
    /// From `CURIO_API_INFO` syntax: `TOKEN:/ip4/127.0.0.1/tcp/12300/http`.
    pub fn from_api_info(api_info: &str, timeout: Duration) -> Result<Self, SealError> {
        Ok(Curio {
            rpc: RpcClient::new(ApiInfo::parse(api_info)?, timeout)?,
        })
    }

    pub async fn cordon(&self) -> Result<(), SealError> {
        self.rpc
            .call("Filecoin.Cordon", json!([]))
            .await
            .map(|_| ())
    }

    pub async fn uncordon(&self) -> Result<(), SealError> {
        self.rpc
            .call("Filecoin.Uncordon", json!([]))
            .await
            .map(|_| ())
    }
}

impl Controller for Curio {
    fn kind(&self) -> ControllerKind {
        ControllerKind::Curio
    }

    fn coarse(&self) -> bool {
        true
    }

    fn disable<'a>(&'a self, set: &'a DisableSet) -> BoxFuture<'a, Result<Vec<String>, SealError>> {
        Box::pin(async move {
            if set.is_empty() {
                return Ok(Vec::new());
            }
            self.cordon().await?;
            Ok(vec![CORDON_MARK.to_string()])
        })
    }

    fn enable<'a>(&'a self, task_types: &'a [String]) -> BoxFuture<'a, Result<(), SealError>> {
        Box::pin(async move {
            if task_types.is_empty() {
                return Ok(());
            }
            self.uncordon().await
        })
    }

    fn state(&self) -> BoxFuture<'_, Result<ControllerState, SealError>> {
        Box::pin(async move {
            let v = self.rpc.call("Filecoin.Version", json!([])).await?;
            Ok(ControllerState {
                reachable: true,
                detail: Some(format!("curio at {} version {v}", self.rpc.url())),
                ..ControllerState::default()
            })
        })
    }
}
