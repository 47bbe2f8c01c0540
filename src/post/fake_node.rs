//! A fake lotus full node (and lotus-miner) for tests: JSON-RPC over HTTP on loopback, driven by
//! a virtual clock.
//!
//! It serves `ChainHead`, `StateMinerProvingDeadline`, `StateMinerDeadlines` and
//! `StateMinerPartitions` (plus lotus-miner's `ActorAddress` and `WorkerStats`). The head height
//! follows the virtual clock (`(now − genesis) / 30`) unless stalled; `dline.Info` is computed
//! from the height with the miner actor's formulas. The only canned data are the fixture
//! examples (miner f01234, period offset 1234, the two partitions of deadline 33). It checks the
//! bearer token, can answer methods with JSON-RPC errors, and can stop listening to simulate a
//! node that refuses connections. It is not a lotus implementation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::util::test_rpc::rpc_error;

use super::bitfield::Bitfield;
use super::chain::{DeadlineInfo, EPOCH_SECS, MAINNET_GENESIS_TS, PERIOD_DEADLINES};
use super::node::Partition;
use super::WallClock;

/// A settable clock that can also run faster than real time.
pub struct VirtualClock {
    inner: Mutex<(u64, std::time::Instant, f64)>,
}

impl VirtualClock {
    /// Stopped at `ms` (Unix ms).
    pub fn at(ms: u64) -> Arc<VirtualClock> {
        Arc::new(VirtualClock {
            inner: Mutex::new((ms, std::time::Instant::now(), 0.0)),
        })
    }

    /// Starts at `ms` and advances `speed` virtual ms per real ms (1.0: real time).
    pub fn running(ms: u64, speed: f64) -> Arc<VirtualClock> {
        Arc::new(VirtualClock {
            inner: Mutex::new((ms, std::time::Instant::now(), speed)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, (u64, std::time::Instant, f64)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set(&self, ms: u64) {
        let mut g = self.lock();
        *g = (ms, std::time::Instant::now(), g.2);
    }

    pub fn advance(&self, ms: u64) {
        let now = self.now_ms();
        self.set(now + ms);
    }

    /// Wall-clock ms of the start of `epoch` with the fixture genesis.
    pub fn epoch_ms(epoch: i64) -> u64 {
        ((MAINNET_GENESIS_TS + EPOCH_SECS * epoch) * 1000) as u64
    }
}

impl WallClock for VirtualClock {
    fn now_ms(&self) -> u64 {
        let g = self.lock();
        g.0 + (g.1.elapsed().as_secs_f64() * 1000.0 * g.2) as u64
    }
}

/// The node's chain and miner state; tests change it through [`FakeNode::state`].
pub struct NodeState {
    pub miner: String,
    pub period_offset: i64,
    pub genesis_ts: i64,
    /// Partitions per deadline (missing: none).
    pub partitions: BTreeMap<u64, Vec<Partition>>,
    /// `PostSubmissions` per deadline (missing: empty).
    pub submissions: BTreeMap<u64, Bitfield>,
    /// The head stays at this height (a stalled node).
    pub stalled_at: Option<i64>,
    /// Methods answered with a JSON-RPC error `(code, message)`.
    pub errors: BTreeMap<String, (i64, String)>,
    /// lotus-miner `WorkerStats` reply.
    pub worker_stats: Value,
    /// Method names of authorised calls, in order.
    pub calls: Vec<String>,
    pub unauthorized: u32,
}

impl NodeState {
    /// The fixture scenario: miner f01234, offset 1234, mainnet genesis; deadline 33 holds the
    /// two fixture partitions (2349 + 812 live sectors, 3 faulty), every other deadline is empty.
    pub fn fixture() -> NodeState {
        let parts: Vec<Partition> = serde_json::from_value(json!([
            {"AllSectors":[100000,2349],"FaultySectors":[0],"RecoveringSectors":[0],"LiveSectors":[100000,2349],"ActiveSectors":[100000,2349]},
            {"AllSectors":[102349,812],"FaultySectors":[102349,3],"RecoveringSectors":[0],"LiveSectors":[102349,812],"ActiveSectors":[102352,809]}
        ]))
        .unwrap_or_default();
        NodeState {
            miner: "f01234".into(),
            period_offset: 1234,
            genesis_ts: MAINNET_GENESIS_TS,
            partitions: BTreeMap::from([(33, parts)]),
            submissions: BTreeMap::new(),
            stalled_at: None,
            errors: BTreeMap::new(),
            worker_stats: json!({}),
            calls: Vec::new(),
            unauthorized: 0,
        }
    }

    /// Epoch of the fixture scenario's head: deadline 33 opens 3 epochs later.
    pub const FIXTURE_HEAD: i64 = 5_000_011;
    /// Open epoch of deadline 33 in the fixture scenario.
    pub const FIXTURE_OPEN_33: i64 = 5_000_014;

    /// Calls of `method` so far.
    pub fn count(&self, method: &str) -> usize {
        self.calls.iter().filter(|m| m.as_str() == method).count()
    }
}

struct Shared {
    token: String,
    clock: Arc<dyn WallClock>,
    state: Mutex<NodeState>,
    requests: AtomicU64,
}

/// The running double.
pub struct FakeNode {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl FakeNode {
    /// Starts on 127.0.0.1 (random port), accepting `Authorization: Bearer <token>`.
    pub async fn start(
        token: &str,
        clock: Arc<dyn WallClock>,
        state: NodeState,
    ) -> std::io::Result<FakeNode> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut n = FakeNode {
            shared: Arc::new(Shared {
                token: token.into(),
                clock,
                state: Mutex::new(state),
                requests: AtomicU64::new(0),
            }),
            addr,
            task: None,
        };
        n.serve(listener);
        Ok(n)
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/rpc/v0", post(handle))
            .route("/rpc/v1", post(handle))
            .with_state(self.shared.clone());
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `TOKEN:/ip4/127.0.0.1/tcp/PORT/http`.
    pub fn api_info(&self, token: &str) -> String {
        format!("{token}:/ip4/127.0.0.1/tcp/{}/http", self.addr.port())
    }

    pub fn state(&self) -> MutexGuard<'_, NodeState> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every request received (authorised or not).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Stops listening: connections are refused until [`FakeNode::up`].
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

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.down();
    }
}

async fn handle(State(sh): State<Arc<Shared>>, headers: HeaderMap, body: Json<Value>) -> Response {
    sh.requests.fetch_add(1, Ordering::Relaxed);
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let now_ms = sh.clock.now_ms() as i64;
    let mut st = sh.state.lock().unwrap_or_else(|p| p.into_inner());
    if auth != Some(sh.token.as_str()) {
        st.unauthorized += 1;
        return (StatusCode::UNAUTHORIZED, "401 - Unauthorized").into_response();
    }
    let id = body.get("id").cloned().unwrap_or(Value::Null);
    let Some(method) = body.get("method").and_then(Value::as_str).map(String::from) else {
        return rpc_error(id, -32600, "invalid request");
    };
    st.calls.push(method.clone());
    if let Some((code, msg)) = st.errors.get(&method) {
        return rpc_error(id, *code, msg);
    }
    let params = body.get("params").cloned().unwrap_or(json!([]));
    let height = st
        .stalled_at
        .unwrap_or_else(|| (now_ms / 1000 - st.genesis_ts).div_euclid(EPOCH_SECS));
    let miner_ok = || params.get(0).and_then(Value::as_str) == Some(st.miner.as_str());
    let result = match method.as_str() {
        "Filecoin.ChainHead" => json!({
            "Cids": [{"/": format!("bafy2bzacefake{height}")}],
            "Blocks": [{"Miner": "f01000", "Height": height,
                        "Timestamp": st.genesis_ts + EPOCH_SECS * height, "ParentBaseFee": "100"}],
            "Height": height,
        }),
        "Filecoin.StateMinerProvingDeadline" if miner_ok() => {
            json!(DeadlineInfo::at(st.period_offset, height))
        }
        "Filecoin.StateMinerDeadlines" if miner_ok() => {
            let all: Vec<Value> = (0..PERIOD_DEADLINES)
                .map(|i| {
                    json!({
                        "PostSubmissions": st.submissions.get(&i).cloned().unwrap_or_else(|| Bitfield(vec![0])),
                        "DisputableProofCount": 0,
                        "DailyFee": "0",
                    })
                })
                .collect();
            json!(all)
        }
        "Filecoin.StateMinerPartitions" if miner_ok() => {
            let Some(idx) = params.get(1).and_then(Value::as_u64) else {
                return rpc_error(id, 1, "expected a deadline index");
            };
            if idx >= PERIOD_DEADLINES {
                return rpc_error(id, 1, &format!("invalid deadline {idx}"));
            }
            json!(st.partitions.get(&idx).cloned().unwrap_or_default())
        }
        "Filecoin.StateMinerProvingDeadline"
        | "Filecoin.StateMinerDeadlines"
        | "Filecoin.StateMinerPartitions" => {
            return rpc_error(id, 1, "resolution lookup failed: actor not found")
        }
        "Filecoin.ActorAddress" => json!(st.miner),
        "Filecoin.WorkerStats" => st.worker_stats.clone(),
        other => return rpc_error(id, -32601, &format!("method '{other}' not found")),
    };
    Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}
