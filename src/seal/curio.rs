//! Curio controller: `Filecoin.Cordon` / `Filecoin.Uncordon` (admin, API port 12300).
//!
//! Cordoning marks the whole machine unschedulable, PoSt included, so this controller is
//! `coarse`: the scheduler uncordons at once when a proof is detected. Worse, a cordon placed
//! between two WindowPoSt windows keeps the next `WdPost` task off the machine. So comine
//! refuses to cordon a node that proves: `Filecoin.Info` lists the node's harmony tasks and
//! config layers, and a node with `WdPost`/`WinPost` tasks or the `post` layer is refused at
//! start ([`Controller::preflight`]) and checked again before every cordon.

use std::time::Duration;

use serde_json::{json, Value};

use super::rpc::{ApiInfo, RpcClient};
use super::{BoxFuture, Controller, ControllerKind, ControllerState, DisableSet, SealError};

/// What the persisted state records for a cordon.
pub const CORDON_MARK: &str = "curio:cordon";

pub struct Curio {
    rpc: RpcClient,
}

/// What `Filecoin.Info` says about the node's roles (Curio's `harmony_machine_details`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRoles {
    /// Harmony task names this node runs (`WdPost`, `WinPost`, `SDR`, `TreeRC`, …).
    pub tasks: Vec<String>,
    /// Config layers the node was started with (`base`, `post`, `seal`, …).
    pub layers: Vec<String>,
}

impl NodeRoles {
    /// Parses `Filecoin.Info`'s `Tasks`/`Layers`: Go `sql.NullString`s holding comma-joined
    /// lists (`{"String": "WdPost,WinPost", "Valid": true}`); plain strings are accepted too.
    pub fn from_info(v: &Value) -> NodeRoles {
        let list = |key: &str| -> Vec<String> {
            let text = match v.get(key) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(o)) if o.get("Valid") != Some(&Value::Bool(false)) => o
                    .get("String")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                _ => String::new(),
            };
            text.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        NodeRoles {
            tasks: list("Tasks"),
            layers: list("Layers"),
        }
    }

    /// Why this node must not be cordoned, if it proves.
    pub fn proves(&self) -> Option<String> {
        let post_tasks: Vec<&str> = self
            .tasks
            .iter()
            .map(String::as_str)
            .filter(|t| matches!(*t, "WdPost" | "WinPost" | "WdPostRecover"))
            .collect();
        if !post_tasks.is_empty() {
            return Some(format!("it runs {}", post_tasks.join(", ")));
        }
        if self.layers.iter().any(|l| l.eq_ignore_ascii_case("post")) {
            return Some("it was started with the post layer".into());
        }
        None
    }
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

    /// `Filecoin.Info` (read): the node's harmony tasks and layers.
    pub async fn roles(&self) -> Result<NodeRoles, SealError> {
        let v = self.rpc.call("Filecoin.Info", json!([])).await?;
        Ok(NodeRoles::from_info(&v))
    }

    /// Refuses (as a configuration error) when this node proves.
    async fn check_not_proving(&self) -> Result<(), SealError> {
        if let Some(why) = self.roles().await?.proves() {
            return Err(SealError::Config(format!(
                "refusing seal.controller = \"curio\" for the Curio node at {}: {why}. Curio's Cordon stops every new task on the machine, WdPost included, so a cordon could make a WindowPoSt miss its window. Run comine with controller = \"none\" on this node (it still yields to proofs), or move the post layer to another machine",
                self.rpc.url()
            )));
        }
        Ok(())
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
            // Layers change when Curio restarts: check again right before every cordon.
            self.check_not_proving().await?;
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

    fn preflight(&self) -> BoxFuture<'_, Result<(), SealError>> {
        Box::pin(async move {
            match self.check_not_proving().await {
                // Down at start: every cordon checks again, so starting is safe.
                Err(e) if e.is_unreachable() => {
                    tracing::warn!("cannot ask the Curio node whether it runs WindowPoSt ({e}); comine checks again before any cordon");
                    Ok(())
                }
                other => other,
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_come_from_curio_info() {
        // The shape Curio's `Filecoin.Info` returns (sql.NullString fields).
        let v = json!({
            "ID": 3, "CPU": 64, "RAM": 549755813888_i64, "GPU": 2.0, "HostPort": "10.0.0.3:12300",
            "Unschedulable": false,
            "Tasks": {"String": "SDR,TreeRC,WdPost,WinPost", "Valid": true},
            "Layers": {"String": "base,seal", "Valid": true},
            "Miners": {"String": "f01234", "Valid": true}
        });
        let r = NodeRoles::from_info(&v);
        assert_eq!(r.tasks, ["SDR", "TreeRC", "WdPost", "WinPost"]);
        assert!(r.proves().unwrap().contains("WdPost"));
        let sealer = NodeRoles::from_info(&json!({
            "Tasks": {"String": "SDR,TreeD,TreeRC,PoRep", "Valid": true},
            "Layers": {"String": "base,seal", "Valid": true}
        }));
        assert_eq!(sealer.proves(), None);
        let post_layer = NodeRoles::from_info(
            &json!({"Tasks": {"String": "", "Valid": false}, "Layers": "base,post"}),
        );
        assert!(post_layer.proves().unwrap().contains("post layer"));
    }
}
