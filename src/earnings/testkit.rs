//! Test doubles for the earnings tests and benchmark (feature `test-utils`): a pool statement
//! server speaking Livepool's `/jobs` and Open Pool's `/pool/events`, a real anvil started on
//! loopback and stopped by PID, and the compiled `LivepeerEarningsDouble` contract deployed on
//! it (bytecode committed in `tests/contracts/`; CI never compiles Solidity).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::network::Ethereum;
use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::sol_types::SolCall;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// The double's compiled ABI and creation bytecode (`scripts/compile-test-contract.sh`).
pub const CONTRACT_JSON: &str = include_str!("../../tests/contracts/LivepeerEarningsDouble.json");

alloy::sol! {
    function setRound(uint256 round);
    function setFeeShare(address transcoder, uint256 feeShare);
    function redeemWinningTicket(address sender, address recipient, uint256 faceValue, uint256 winProb, uint256 senderNonce, uint256 amount);
    function claimEarnings(address delegate, address delegator, uint256 fees);
    function withdrawFees(address delegator, address recipient, uint256 amount);
    function payout(address[] to, uint256[] amounts);
}

// ---- pool statement server ----------------------------------------------------------------

/// What the test pool serves; tests edit it between polls.
#[derive(Debug, Default)]
pub struct PoolData {
    /// Livepool `Job` objects.
    pub livepool_jobs: Vec<Value>,
    /// Open Pool raw events `{ID, Payload, Version, DT}`.
    pub openpool_events: Vec<Value>,
    /// Payout rows for `/payouts`.
    pub payouts: Vec<Value>,
    /// Request paths and queries seen.
    pub requests: Vec<String>,
    /// Answer every request with this status (e.g. 503) when set.
    pub fail_with: Option<u16>,
}

pub struct TestPool {
    pub url: String,
    pub data: Arc<Mutex<PoolData>>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestPool {
    pub async fn start() -> std::io::Result<TestPool> {
        let data = Arc::new(Mutex::new(PoolData::default()));
        let app = Router::new()
            .route("/jobs", get(jobs))
            .route("/pool/events", get(events))
            .route("/payouts", get(payouts))
            .with_state(data.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        Ok(TestPool {
            url: format!("http://{addr}"),
            data,
            stop,
            task: Some(task),
        })
    }

    pub fn edit(&self, f: impl FnOnce(&mut PoolData)) {
        let mut g = self.data.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g);
    }

    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

type Shared = State<Arc<Mutex<PoolData>>>;

fn failing(d: &PoolData) -> Option<(axum::http::StatusCode, Json<Value>)> {
    d.fail_with.map(|s| {
        (
            axum::http::StatusCode::from_u16(s)
                .unwrap_or(axum::http::StatusCode::SERVICE_UNAVAILABLE),
            Json(json!({"error": "test pool failure"})),
        )
    })
}

async fn jobs(
    State(d): Shared,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> (axum::http::StatusCode, Json<Value>) {
    let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
    d.requests.push(format!("/jobs?{q:?}"));
    if let Some(f) = failing(&d) {
        return f;
    }
    let from = q
        .get("from")
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(i64::MIN);
    let to = q
        .get("to")
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(i64::MAX);
    let who = q.get("transcoder").map(|s| s.to_lowercase());
    let out: Vec<Value> = d
        .livepool_jobs
        .iter()
        .filter(|j| {
            let ts = j.get("timestamp").and_then(|t| t.as_i64()).unwrap_or(0);
            let t = j
                .get("transcoder")
                .and_then(|t| t.as_str())
                .map(|s| s.to_lowercase());
            ts >= from && ts <= to && (who.is_none() || t == who)
        })
        .cloned()
        .collect();
    (axum::http::StatusCode::OK, Json(Value::Array(out)))
}

async fn events(
    State(d): Shared,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> (axum::http::StatusCode, Json<Value>) {
    let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
    d.requests.push(format!("/pool/events?{q:?}"));
    if let Some(f) = failing(&d) {
        return f;
    }
    let since = q
        .get("lastCheckTime")
        .and_then(|t| crate::ledger::time::parse_date(t))
        .unwrap_or(0);
    let out: Vec<Value> = d
        .openpool_events
        .iter()
        .filter(|e| {
            e.get("DT")
                .and_then(|t| t.as_str())
                .and_then(crate::ledger::time::parse_date)
                .is_some_and(|t| t >= since)
        })
        .cloned()
        .collect();
    (axum::http::StatusCode::OK, Json(Value::Array(out)))
}

async fn payouts(State(d): Shared) -> (axum::http::StatusCode, Json<Value>) {
    let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
    d.requests.push("/payouts".into());
    if let Some(f) = failing(&d) {
        return f;
    }
    (
        axum::http::StatusCode::OK,
        Json(Value::Array(d.payouts.clone())),
    )
}

/// An Open Pool raw event.
pub fn openpool_event(id: i64, dt_ms: u64, event_type: &str, payload: Value) -> Value {
    json!({
        "ID": id,
        "Payload": json!({"event_type": event_type, "payload": payload}).to_string(),
        "Version": 1,
        "DT": super::rfc3339_secs(dt_ms),
    })
}

// ---- anvil --------------------------------------------------------------------------------

/// Where `scripts/anvil-test-node.sh install` puts anvil.
pub fn anvil_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("COMINE_TEST_ANVIL") {
        let p = PathBuf::from(p);
        return p.exists().then_some(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let p = cache.join("comine/anvil-1.7.1/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    p.exists().then_some(p)
}

/// A running anvil: our own (killed by PID on drop) or the script's shared one.
pub struct Anvil {
    pub url: String,
    child: Option<std::process::Child>,
}

impl Drop for Anvil {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `None` (with a note) when anvil is missing and `CI` is unset; panics in CI, where these
/// tests must run.
fn missing(what: &str) -> Option<Anvil> {
    let msg = format!(
        "anvil is not installed ({what}): run scripts/anvil-test-node.sh install, or set COMINE_TEST_ANVIL"
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set, so this test may not be skipped)");
    }
    eprintln!("skipping: {msg}");
    None
}

impl Anvil {
    /// A fresh anvil of our own on a free loopback port, chain id `chain_id`.
    pub async fn start(chain_id: u64) -> Option<Anvil> {
        let Some(bin) = anvil_binary() else {
            return missing("no binary");
        };
        for _ in 0..5 {
            let port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
                l.local_addr().ok()?.port()
            };
            let child = std::process::Command::new(&bin)
                .args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                    "--chain-id",
                    &chain_id.to_string(),
                    "--silent",
                ])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
            let Ok(child) = child else {
                return missing("cannot execute it");
            };
            let a = Anvil {
                url: format!("http://127.0.0.1:{port}"),
                child: Some(child),
            };
            if a.wait_ready().await {
                return Some(a);
            }
        }
        panic!("anvil did not start on a free port after 5 tries");
    }

    /// The script's shared node when `COMINE_TEST_ANVIL_RPC` is set (tests that do not
    /// rewind the chain), else our own.
    pub async fn shared() -> Option<Anvil> {
        if let Ok(url) = std::env::var("COMINE_TEST_ANVIL_RPC") {
            let a = Anvil { url, child: None };
            if a.wait_ready().await {
                return Some(a);
            }
        }
        Anvil::start(super::config::ARBITRUM_ONE).await
    }

    async fn wait_ready(&self) -> bool {
        let http = reqwest::Client::new();
        for _ in 0..100 {
            let r = http
                .post(&self.url)
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}))
                .timeout(Duration::from_millis(500))
                .send()
                .await;
            if r.is_ok_and(|r| r.status().is_success()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn provider(&self) -> RootProvider<Ethereum> {
        let url =
            reqwest::Url::parse(&self.url).unwrap_or_else(|_| panic!("bad anvil url {}", self.url));
        super::rpc::provider(&url, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("provider: {e}"))
    }
}

/// Anvil's first funded, unlocked account.
pub async fn funded_account(p: &RootProvider<Ethereum>) -> Address {
    let accts: Vec<Address> = p
        .raw_request("eth_accounts".into(), ())
        .await
        .unwrap_or_else(|e| panic!("eth_accounts: {e}"));
    accts[0]
}

/// Sends a transaction from an unlocked anvil account and waits for its receipt; returns
/// (tx hash, contract address if a creation).
pub async fn send(
    p: &RootProvider<Ethereum>,
    from: Address,
    to: Option<Address>,
    data: Bytes,
    value: U256,
) -> (B256, Option<Address>) {
    let mut tx =
        json!({"from": from, "data": data, "value": format!("0x{value:x}"), "gas": "0x989680"});
    if let Some(to) = to {
        tx["to"] = json!(to);
    }
    let hash: B256 = p
        .raw_request("eth_sendTransaction".into(), (tx,))
        .await
        .unwrap_or_else(|e| panic!("eth_sendTransaction: {e}"));
    for _ in 0..100 {
        if let Ok(Some(r)) = p.get_transaction_receipt(hash).await {
            assert!(r.status(), "transaction {hash} reverted");
            return (hash, r.contract_address);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no receipt for {hash}");
}

/// The deployed `LivepeerEarningsDouble`.
pub struct Double {
    pub address: Address,
    pub from: Address,
}

impl Double {
    pub async fn deploy(p: &RootProvider<Ethereum>) -> Double {
        let v: Value =
            serde_json::from_str(CONTRACT_JSON).unwrap_or_else(|e| panic!("contract json: {e}"));
        let code: Bytes = v["bytecode"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .unwrap_or_else(|e| panic!("bytecode: {e}"));
        let from = funded_account(p).await;
        let (_, addr) = send(p, from, None, code, U256::ZERO).await;
        Double {
            address: addr.unwrap_or_else(|| panic!("no contract address")),
            from,
        }
    }

    pub async fn call<C: SolCall>(&self, p: &RootProvider<Ethereum>, call: C, value: U256) -> B256 {
        send(
            p,
            self.from,
            Some(self.address),
            call.abi_encode().into(),
            value,
        )
        .await
        .0
    }

    /// Sends plain ETH from the funded account.
    pub async fn transfer(&self, p: &RootProvider<Ethereum>, to: Address, value: U256) -> B256 {
        send(p, self.from, Some(to), Bytes::new(), value).await.0
    }
}

// ---- a provider with a block-range limit ------------------------------------------------------

/// A JSON-RPC proxy in front of anvil that refuses `eth_getLogs` spanning more than
/// `max_range` blocks (as hosted providers do), and can be taken down to simulate an outage.
pub struct RangeLimitProxy {
    pub url: String,
    pub state: Arc<Mutex<ProxyState>>,
    stop: CancellationToken,
}

#[derive(Debug)]
pub struct ProxyState {
    pub upstream: String,
    pub max_range: u64,
    /// Answer 503 to everything while true.
    pub down: bool,
    /// `eth_getLogs` calls refused for their range.
    pub refused: u64,
    /// `eth_getLogs` calls forwarded.
    pub forwarded: u64,
    /// Go down after this many forwarded `eth_getLogs` calls.
    pub down_after: Option<u64>,
}

impl Drop for RangeLimitProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl RangeLimitProxy {
    pub async fn start(upstream: &str, max_range: u64) -> std::io::Result<RangeLimitProxy> {
        let state = Arc::new(Mutex::new(ProxyState {
            upstream: upstream.to_string(),
            max_range,
            down: false,
            refused: 0,
            forwarded: 0,
            down_after: None,
        }));
        let app = Router::new()
            .route("/", axum::routing::post(proxy))
            .with_state((state.clone(), reqwest::Client::new()));
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        Ok(RangeLimitProxy {
            url: format!("http://{addr}"),
            state,
            stop,
        })
    }

    pub fn edit<T>(&self, f: impl FnOnce(&mut ProxyState) -> T) -> T {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }
}

fn hex_u64(v: &Value) -> Option<u64> {
    v.as_str()
        .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
}

async fn proxy(
    State((state, http)): State<(Arc<Mutex<ProxyState>>, reqwest::Client)>,
    Json(req): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    let upstream = {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        if s.down {
            return (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": "down"})),
            );
        }
        if req.get("method").and_then(|m| m.as_str()) == Some("eth_getLogs") {
            let f = &req["params"][0];
            if let (Some(a), Some(b)) = (hex_u64(&f["fromBlock"]), hex_u64(&f["toBlock"])) {
                if b.saturating_sub(a) + 1 > s.max_range {
                    s.refused += 1;
                    let body = json!({
                        "jsonrpc": "2.0",
                        "id": req.get("id").cloned().unwrap_or(Value::Null),
                        "error": {"code": -32005, "message": format!("query exceeds max block range {}", s.max_range)},
                    });
                    return (axum::http::StatusCode::OK, Json(body));
                }
            }
            s.forwarded += 1;
            if s.down_after.is_some_and(|n| s.forwarded > n) {
                s.down = true;
                return (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"error": "down"})),
                );
            }
        }
        s.upstream.clone()
    };
    match http.post(upstream).json(&req).send().await {
        Ok(r) => match r.json::<Value>().await {
            Ok(v) => (axum::http::StatusCode::OK, Json(v)),
            Err(_) => (
                axum::http::StatusCode::BAD_GATEWAY,
                Json(json!({"error": "bad upstream body"})),
            ),
        },
        Err(_) => (
            axum::http::StatusCode::BAD_GATEWAY,
            Json(json!({"error": "upstream unreachable"})),
        ),
    }
}
