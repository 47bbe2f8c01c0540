//! A test double for lotus-worker and Curio JSON-RPC: it speaks only the method *shapes*
//! comine uses (`Filecoin.TaskTypes/TaskDisable/TaskEnable/Enabled/SetEnabled`,
//! `Filecoin.Cordon/Uncordon/Version/Info`), checks the bearer token, keeps task state and records
//! every call. It can go down and come back on the same port to simulate an unreachable node.
//! It is not a lotus implementation.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::util::test_rpc::rpc_error;

/// Task state and call log of the double.
#[derive(Debug, Default)]
pub struct WorkerState {
    pub enabled: bool,
    /// Every task type the worker knows.
    pub all: BTreeSet<String>,
    pub disabled: BTreeSet<String>,
    pub cordoned: bool,
    /// `(method, params)` of every authorised call, in order.
    pub calls: Vec<(String, Value)>,
    /// Requests refused for a bad or missing token.
    pub unauthorized: u32,
    /// Task types someone asked to disable although they are proofs (must stay empty).
    pub proof_disable_attempts: Vec<String>,
    /// Curio `Filecoin.Info`: harmony task names and config layers, comma-joined.
    pub curio_tasks: String,
    pub curio_layers: String,
}

struct Shared {
    token: String,
    state: Mutex<WorkerState>,
}

pub struct TestServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

const DEFAULT_TASKS: [&str; 9] = [
    "seal/v0/addpiece",
    "seal/v0/precommit/1",
    "seal/v0/precommit/2",
    "seal/v0/commit/1",
    "seal/v0/commit/2",
    "seal/v0/replicaupdate",
    "seal/v0/provereplicaupdate/2",
    "post/v0/windowproof",
    "post/v0/winningproof",
];

impl TestServer {
    /// Starts on 127.0.0.1 (random port) accepting `Authorization: Bearer <token>`.
    pub async fn start(token: &str) -> std::io::Result<TestServer> {
        let shared = Arc::new(Shared {
            token: token.into(),
            state: Mutex::new(WorkerState {
                enabled: true,
                all: DEFAULT_TASKS.iter().map(|s| s.to_string()).collect(),
                curio_tasks: "SDR,TreeD,TreeRC,PoRep".into(),
                curio_layers: "base,seal".into(),
                ..WorkerState::default()
            }),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut s = TestServer {
            shared,
            addr,
            task: None,
        };
        s.serve(listener);
        Ok(s)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/rpc/v0", post(handle))
            .with_state(self.shared.clone());
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `TOKEN:/ip4/127.0.0.1/tcp/PORT/http` for this server with `token`.
    pub fn api_info(&self, token: &str) -> String {
        format!("{token}:/ip4/127.0.0.1/tcp/{}/http", self.addr.port())
    }

    pub fn state(&self) -> MutexGuard<'_, WorkerState> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Names of the methods called so far.
    pub fn methods(&self) -> Vec<String> {
        self.state().calls.iter().map(|(m, _)| m.clone()).collect()
    }

    /// Stops listening: connections are refused until [`TestServer::up`].
    pub fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn up(&mut self) -> std::io::Result<()> {
        if self.task.is_some() {
            return Ok(());
        }
        let l = crate::util::test_rpc::rebind(self.addr).await?;
        self.serve(l);
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.down();
    }
}

async fn handle(State(sh): State<Arc<Shared>>, headers: HeaderMap, body: Json<Value>) -> Response {
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let mut st = sh.state.lock().unwrap_or_else(|p| p.into_inner());
    if auth != Some(sh.token.as_str()) {
        st.unauthorized += 1;
        return (StatusCode::UNAUTHORIZED, "missing or bad token").into_response();
    }
    let id = body.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = body.get("method").and_then(Value::as_str).map(String::from) else {
        return rpc_error(id, -32600, "invalid request");
    };
    let params = body.get("params").cloned().unwrap_or(json!([]));
    st.calls.push((method.clone(), params.clone()));
    let arg = params.get(0).cloned().unwrap_or(Value::Null);
    let result = match method.as_str() {
        "Filecoin.TaskTypes" => {
            let m: serde_json::Map<String, Value> = st
                .all
                .iter()
                .filter(|t| !st.disabled.contains(*t))
                .map(|t| (t.clone(), json!({})))
                .collect();
            Value::Object(m)
        }
        "Filecoin.TaskDisable" | "Filecoin.TaskEnable" => {
            let Some(tt) = arg.as_str().map(String::from) else {
                return rpc_error(id, -32602, "expected a task type string");
            };
            if !st.all.contains(&tt) {
                return rpc_error(id, 1, &format!("unknown task type {tt}"));
            }
            if method.ends_with("Disable") {
                if tt.starts_with("post/") {
                    st.proof_disable_attempts.push(tt.clone());
                }
                st.disabled.insert(tt);
            } else {
                st.disabled.remove(&tt);
            }
            Value::Null
        }
        "Filecoin.Enabled" => json!(st.enabled),
        "Filecoin.SetEnabled" => match arg.as_bool() {
            Some(b) => {
                st.enabled = b;
                Value::Null
            }
            None => return rpc_error(id, -32602, "expected a bool"),
        },
        "Filecoin.Cordon" => {
            st.cordoned = true;
            Value::Null
        }
        "Filecoin.Uncordon" => {
            st.cordoned = false;
            Value::Null
        }
        "Filecoin.Version" => json!([1, 28, 0]),
        // Curio's shape: sql.NullString fields.
        "Filecoin.Info" => json!({
            "ID": 1, "CPU": 32, "RAM": 274877906944_i64, "GPU": 1.0,
            "HostPort": "127.0.0.1:12300", "Unschedulable": st.cordoned,
            "Tasks": {"String": st.curio_tasks, "Valid": true},
            "Layers": {"String": st.curio_layers, "Valid": true},
            "Miners": {"String": "f01000", "Valid": true},
        }),
        other => return rpc_error(id, -32601, &format!("method {other} not found")),
    };
    Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}
