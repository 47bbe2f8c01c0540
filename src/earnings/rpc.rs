//! alloy's JSON-RPC transport over the project's own reqwest 0.12 client (rustls with ring).
//!
//! alloy 2.5's `reqwest` feature brings reqwest 0.13, a second HTTP stack beside ours, and its
//! TLS features bring aws-lc (C) or native-tls. A transport is any
//! `tower::Service<RequestPacket>`, so this ~40-line one keeps one reqwest, one TLS stack.

use std::task::{Context, Poll};
use std::time::Duration;

use alloy::network::Ethereum;
use alloy::providers::RootProvider;
use alloy::rpc::client::RpcClient;
use alloy::rpc::json_rpc::{RequestPacket, ResponsePacket};
use alloy::transports::{TransportError, TransportErrorKind, TransportFut};

#[derive(Clone, Debug)]
pub struct HttpTransport {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl HttpTransport {
    pub fn new(client: reqwest::Client, url: reqwest::Url) -> HttpTransport {
        HttpTransport { client, url }
    }
}

impl tower::Service<RequestPacket> for HttpTransport {
    type Response = ResponsePacket;
    type Error = TransportError;
    type Future = TransportFut<'static>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: RequestPacket) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let resp = this
                .client
                .post(this.url)
                .json(&req)
                .send()
                .await
                // reqwest names the URL in its errors; ours may carry an API key.
                .map_err(|e| TransportErrorKind::custom(e.without_url()))?;
            let status = resp.status();
            let body = resp
                .bytes()
                .await
                .map_err(|e| TransportErrorKind::custom(e.without_url()))?;
            if !status.is_success() {
                return Err(TransportErrorKind::http_error(
                    status.as_u16(),
                    String::from_utf8_lossy(&body).chars().take(512).collect(),
                ));
            }
            serde_json::from_slice(&body)
                .map_err(|e| TransportError::deser_err(e, String::from_utf8_lossy(&body)))
        })
    }
}

/// A read-only provider for `url` over reqwest with rustls (ring) and webpki roots.
pub fn provider(
    url: &reqwest::Url,
    timeout: Duration,
) -> Result<RootProvider<Ethereum>, reqwest::Error> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .build()?;
    let is_local = url
        .host_str()
        .is_some_and(|h| h == "localhost" || h.starts_with("127.") || h == "[::1]");
    Ok(RootProvider::new(RpcClient::new(
        HttpTransport::new(client, url.clone()),
        is_local,
    )))
}

/// `scheme://host[:port]` of a URL: RPC URLs often carry an API key in the path or query,
/// which must not reach logs or errors.
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("?");
            match u.port() {
                Some(p) => format!("{}://{host}:{p}", u.scheme()),
                None => format!("{}://{host}", u.scheme()),
            }
        }
        Err(_) => "<invalid URL>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_drops_paths_and_keys() {
        assert_eq!(
            redact("https://arb-mainnet.example.com/v2/SECRETKEY?x=1"),
            "https://arb-mainnet.example.com"
        );
        assert_eq!(
            redact("http://user:pw@127.0.0.1:8545/"),
            "http://127.0.0.1:8545"
        );
    }
}
