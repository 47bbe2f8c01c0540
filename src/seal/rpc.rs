//! Minimal JSON-RPC 2.0 client for lotus-style APIs (`Filecoin.*` methods over HTTP POST).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};

use super::SealError;

/// A parsed `TOKEN:MULTIADDR` API info string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiInfo {
    pub token: Option<String>,
    /// `http://HOST:PORT/rpc/v0`
    pub url: String,
}

impl ApiInfo {
    /// Parses `TOKEN:/ip4/127.0.0.1/tcp/3456/http`, `TOKEN:/dns/host/tcp/1234/ws`, a bare
    /// multiaddr, or `TOKEN:http://host:port[/rpc/v0]`, for an API served at `/rpc/v0`
    /// (lotus-worker, lotus-miner, Curio).
    pub fn parse(s: &str) -> Result<ApiInfo, SealError> {
        Self::parse_versioned(s, "v0")
    }

    /// Like [`ApiInfo::parse`] for an API at `/rpc/{version}` (a lotus full node: `v1`). A URL
    /// that already ends in `/rpc/v0` or `/rpc/v1` is kept as given.
    pub fn parse_versioned(s: &str, version: &str) -> Result<ApiInfo, SealError> {
        let bad = || SealError::BadApiInfo(redact(s));
        let s = s.trim();
        let (token, addr) = if s.starts_with('/') || s.starts_with("http") {
            (None, s)
        } else {
            let (t, a) = s.split_once(':').ok_or_else(bad)?;
            if t.is_empty() {
                return Err(bad());
            }
            (Some(t.to_string()), a)
        };
        let url = if let Some(rest) = addr
            .strip_prefix("http://")
            .or_else(|| addr.strip_prefix("https://"))
        {
            if rest.is_empty() {
                return Err(bad());
            }
            let base = addr.trim_end_matches('/');
            if base.ends_with("/rpc/v0") || base.ends_with("/rpc/v1") {
                base.to_string()
            } else {
                format!("{base}/rpc/{version}")
            }
        } else {
            let parts: Vec<&str> = addr.split('/').collect();
            // ["", proto, host, "tcp", port, ("http"|"ws")?]
            if parts.len() < 5 || !parts[0].is_empty() || parts[3] != "tcp" {
                return Err(bad());
            }
            let host = match parts[1] {
                "ip4" | "dns" | "dns4" | "dns6" => parts[2].to_string(),
                "ip6" => format!("[{}]", parts[2]),
                _ => return Err(bad()),
            };
            let port: u16 = parts[4].parse().map_err(|_| bad())?;
            let scheme = match parts.get(5).copied() {
                Some("https") | Some("wss") => "https",
                _ => "http",
            };
            format!("{scheme}://{host}:{port}/rpc/{version}")
        };
        Ok(ApiInfo { token, url })
    }
}

/// The token part never goes into logs or error messages.
fn redact(s: &str) -> String {
    match s.split_once(':') {
        Some((_, rest)) if !s.starts_with('/') && !s.starts_with("http") => {
            format!("<token>:{rest}")
        }
        _ => s.to_string(),
    }
}

pub struct RpcClient {
    http: reqwest::Client,
    info: ApiInfo,
    next_id: AtomicU64,
}

impl RpcClient {
    pub fn new(info: ApiInfo, timeout: Duration) -> Result<Self, SealError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Calls are rare; a fresh connection each time notices a restarted node at once.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| SealError::Config(format!("HTTP client: {e}")))?;
        Ok(RpcClient {
            http,
            info,
            next_id: AtomicU64::new(1),
        })
    }

    pub fn url(&self) -> &str {
        &self.info.url
    }

    /// Calls `method` (e.g. `Filecoin.TaskDisable`) and returns its `result`.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, SealError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id});
        let mut req = self.http.post(&self.info.url).json(&body);
        if let Some(t) = &self.info.token {
            req = req.bearer_auth(t);
        }
        let url = self.info.url.clone();
        let resp = req.send().await.map_err(|e| SealError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(SealError::Unauthorized {
                url,
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(SealError::Protocol {
                url,
                reason: format!("HTTP {status}"),
            });
        }
        let v: Value = resp.json().await.map_err(|e| SealError::Protocol {
            url: url.clone(),
            reason: format!("not JSON-RPC: {e}"),
        })?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            return Err(SealError::Rpc {
                method: method.into(),
                code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: err
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .into(),
            });
        }
        Ok(v.get("result").cloned().unwrap_or(Value::Null))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_worker_api_info_forms() {
        let a = ApiInfo::parse("eyJhbGc.x.y:/ip4/127.0.0.1/tcp/3456/http").unwrap();
        assert_eq!(a.token.as_deref(), Some("eyJhbGc.x.y"));
        assert_eq!(a.url, "http://127.0.0.1:3456/rpc/v0");
        let b = ApiInfo::parse("tok:/dns/worker.lan/tcp/12300/ws").unwrap();
        assert_eq!(b.url, "http://worker.lan:12300/rpc/v0");
        let c = ApiInfo::parse("tok:http://10.0.0.2:3456").unwrap();
        assert_eq!(c.url, "http://10.0.0.2:3456/rpc/v0");
        let d = ApiInfo::parse("/ip6/::1/tcp/3456/http").unwrap();
        assert_eq!(d.token, None);
        assert_eq!(d.url, "http://[::1]:3456/rpc/v0");
        let full = ApiInfo::parse_versioned("tok:/ip4/127.0.0.1/tcp/1234/http", "v1").unwrap();
        assert_eq!(full.url, "http://127.0.0.1:1234/rpc/v1");
        let kept = ApiInfo::parse_versioned("tok:http://node:1234/rpc/v1/", "v1").unwrap();
        assert_eq!(kept.url, "http://node:1234/rpc/v1");
    }

    #[test]
    fn rejects_bad_api_info_without_leaking_the_token() {
        for bad in [
            "",
            "secret",
            "secret:/ip4/1.2.3.4/udp/1/http",
            "secret:/ip4/1.2.3.4/tcp/x/http",
            ":/ip4/1.2.3.4/tcp/1/http",
        ] {
            let e = ApiInfo::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected TOKEN:"), "{e}");
            assert!(!e.contains("secret:"), "token leaked: {e}");
        }
    }
}
