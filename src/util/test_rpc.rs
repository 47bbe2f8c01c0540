//! Pieces shared by the test doubles that play Filecoin's JSON-RPC servers (the lotus
//! test server in `seal`, the full node in `post`): a JSON-RPC error reply, and binding
//! the same port again after a simulated outage.

use std::net::SocketAddr;

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// A JSON-RPC 2.0 error reply.
pub fn rpc_error(id: Value, code: i64, msg: &str) -> Response {
    Json(json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": msg}}))
        .into_response()
}

/// Binds `addr` again after its accept loop was aborted: the port is released once the
/// aborted task is dropped, so this retries for up to a second.
pub async fn rebind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for _ in 0..50 {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("bind failed")))
}
